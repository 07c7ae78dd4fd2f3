//! [`Inner`]: what one handle holds (the detector, its field list, the buffers a call returns
//! pointers into), and one evaluation from values to alert nodes.

use std::collections::hash_map::RandomState;
use std::ffi::CString;
use std::hash::BuildHasher;

use serde_json::Value;

use super::boundary::Failure;
use super::record::{Entry, Segment, Shape};
use super::{
    EwNode, EwValue, EwVerdict, EW_ABSENT, EW_ARRAY, EW_BLOCKED, EW_BOOL, EW_ERR_CONFIG,
    EW_ERR_INVALID, EW_ERR_TOO_LARGE, EW_FIELD_NODE, EW_MAX_ITEMS, EW_NULL, EW_NUMBER, EW_OBJECT,
    EW_STRING,
};
use crate::Detector;

pub(super) struct Inner {
    pub(super) detector: Detector,
    pub(super) entries: Vec<Entry>,
    /// The entries' paths as a tree.
    pub(super) tree: Vec<Segment>,
    /// The event text of the current call.
    pub(super) line: String,
    /// The current alert: fields by path, with their values.
    pub(super) alert: Vec<(&'static str, String)>,
    pub(super) values: Vec<(&'static str, Value)>,
    /// The current alert as nodes (pointing into `values`).
    pub(super) nodes: Vec<EwNode>,
    pub(super) route: String,
    pub(super) metrics: String,
    /// Message of the last failed call.
    pub(super) error: CString,
    /// Test hook: the next evaluation panics inside the detector's guard.
    #[cfg(test)]
    pub(super) panic_next: bool,
}

/// The configuration text as the detector's JSON: JSON or YAML, either the `detector:`
/// section itself or a whole egresswatch configuration holding one (its other keys are the
/// host's, and ignored here).
pub(super) fn detector_json(config: &str) -> Result<String, Failure> {
    let value: Value = if config.trim_start().starts_with('{') {
        serde_json::from_str(config)
            .map_err(|e| Failure::new(EW_ERR_CONFIG, format!("configuration (JSON): {e}")))?
    } else {
        serde_yaml_ng::from_str(config)
            .map_err(|e| Failure::new(EW_ERR_CONFIG, format!("configuration (YAML): {e}")))?
    };
    let section = match value {
        Value::Object(mut map) if map.contains_key("detector") => {
            map.remove("detector").unwrap_or_default()
        }
        Value::Null => Value::Object(serde_json::Map::new()),
        other => other,
    };
    Ok(section.to_string())
}

/// A hash seed drawn from the operating system's randomness (std seeds `RandomState` from
/// it), as the host draws one per start.
pub(super) fn random_seed() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

impl Inner {
    /// Writes the event the values describe into `self.line`.
    ///
    /// # Safety
    /// String pointers in `values` must be valid for their lengths.
    pub(super) unsafe fn write_event(&mut self, values: &[EwValue]) -> Result<(), Failure> {
        let fields = self.entries.len();
        if values.len() < fields || values.len() - fields > EW_MAX_ITEMS {
            return Err(Failure::new(
                if values.len() < fields {
                    EW_ERR_INVALID
                } else {
                    EW_ERR_TOO_LARGE
                },
                format!(
                    "{} values given: the {fields} fields, then at most {EW_MAX_ITEMS} array \
                     elements",
                    values.len()
                ),
            ));
        }
        for (entry, v) in self.entries.iter().zip(values) {
            let node = entry.kind == EW_FIELD_NODE;
            if v.kind != EW_ABSENT
                && node != matches!(v.kind, EW_OBJECT | EW_BLOCKED)
                && (node || v.kind == EW_BLOCKED)
            {
                return Err(Failure::new(
                    EW_ERR_INVALID,
                    format!("{}: value kind {} is not allowed here", entry.path, v.kind),
                ));
            }
        }
        self.line.clear();
        self.line.push('{');
        let mut first = true;
        let shape = Shape {
            tree: &self.tree,
            entries: &self.entries,
            values,
        };
        // SAFETY: forwarded from the caller.
        unsafe { shape.members(&mut self.line, 0, "", &mut first)? };
        self.line.push('}');
        Ok(())
    }

    /// Evaluates the event in `self.line`; fills `out`.
    pub(super) fn evaluate(&mut self, now_ms: i64, out: &mut EwVerdict) -> Result<(), Failure> {
        #[cfg(test)]
        if std::mem::take(&mut self.panic_next) {
            panic!("test hook: panic inside the detector");
        }
        self.alert.clear();
        let (verdict, flagged) =
            self.detector
                .evaluate_to_fields(&self.line, now_ms, &mut self.alert);
        if verdict.status == egresswatch_plugin_api::EventStatus::UNREADABLE {
            return Err(Failure::new(
                EW_ERR_INVALID,
                "the values do not make a readable event",
            ));
        }
        self.values.clear();
        for (path, json) in self.alert.drain(..) {
            let value = serde_json::from_str(&json)
                .map_err(|e| Failure::new(EW_ERR_INVALID, format!("alert field {path}: {e}")))?;
            self.values.push((path, value));
        }
        self.nodes.clear();
        for (path, value) in &self.values {
            flatten(path, value, &mut self.nodes);
        }
        self.route.clear();
        if let abi_stable::std_types::ROption::RSome(route) = &verdict.route {
            self.route.push_str(route.as_str());
        }
        *out = EwVerdict {
            flagged: i32::from(flagged),
            node_count: u32::try_from(self.nodes.len()).unwrap_or(u32::MAX),
            nodes: if self.nodes.is_empty() {
                std::ptr::null()
            } else {
                self.nodes.as_ptr()
            },
            route: if self.route.is_empty() {
                std::ptr::null()
            } else {
                self.route.as_ptr().cast()
            },
            route_len: self.route.len(),
        };
        Ok(())
    }
}

/// Appends `value` under `key` and its subtree, in pre-order.
fn flatten(key: &str, value: &Value, out: &mut Vec<EwNode>) {
    let mut node = EwNode {
        kind: EW_NULL,
        count: 0,
        key: key.as_ptr().cast(),
        key_len: key.len(),
        str: std::ptr::null(),
        len: 0,
        num: 0.0,
    };
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            node.kind = EW_BOOL;
            node.num = f64::from(u8::from(*b));
        }
        Value::Number(n) => {
            node.kind = EW_NUMBER;
            node.num = n.as_f64().unwrap_or(f64::NAN);
        }
        Value::String(s) => {
            node.kind = EW_STRING;
            node.str = s.as_ptr().cast();
            node.len = s.len();
        }
        Value::Array(items) => {
            node.kind = EW_ARRAY;
            node.count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.push(node);
            for item in items {
                flatten("", item, out);
            }
            return;
        }
        Value::Object(members) => {
            node.kind = EW_OBJECT;
            node.count = u32::try_from(members.len()).unwrap_or(u32::MAX);
            out.push(node);
            for (k, v) in members {
                flatten(k, v, out);
            }
            return;
        }
    }
    out.push(node);
}
