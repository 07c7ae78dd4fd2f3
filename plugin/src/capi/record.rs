//! The event written from the caller's values: the field list ([`Entry`]), its paths as a
//! tree ([`Segment`]), and the JSON object [`Shape`] writes from the values (nested where the
//! record has an object, dotted keys below anything else).

use super::boundary::{text, Failure};
use super::{
    EwValue, EW_ABSENT, EW_ARRAY, EW_BLOCKED, EW_BOOL, EW_ERR_INVALID, EW_ERR_TOO_LARGE,
    EW_FIELD_GROUP, EW_FIELD_NODE, EW_FIELD_VALUE, EW_MAX_EVENT_BYTES, EW_MAX_VALUE_BYTES, EW_NULL,
    EW_NUMBER, EW_OBJECT, EW_STRING,
};
use crate::Detector;

/// One entry of the field list.
pub(super) struct Entry {
    pub(super) path: String,
    pub(super) kind: u32,
}

/// The field list's paths as a tree of their segments: the shape the event is written in.
pub(super) struct Segment {
    /// The segment alone (for a dotted key below a parent that is not an object).
    name: String,
    /// `"name":`, as written in the event text.
    key: String,
    /// The field list entry with this path, if any.
    entry: Option<usize>,
    children: Vec<usize>,
}

/// Builds the tree of `entries`' paths; segment 0 is the root (the event object).
pub(super) fn segments(entries: &[Entry]) -> Vec<Segment> {
    let mut tree = vec![Segment {
        name: String::new(),
        key: String::new(),
        entry: None,
        children: Vec::new(),
    }];
    for (i, entry) in entries.iter().enumerate() {
        let mut at = 0;
        for name in entry.path.split('.') {
            let found = tree[at]
                .children
                .iter()
                .copied()
                .find(|&c| tree[c].name == name);
            at = match found {
                Some(c) => c,
                None => {
                    let mut key = String::new();
                    write_string(&mut key, name);
                    key.push(':');
                    tree.push(Segment {
                        name: name.to_owned(),
                        key,
                        entry: None,
                        children: Vec::new(),
                    });
                    let c = tree.len() - 1;
                    tree[at].children.push(c);
                    c
                }
            };
        }
        tree[at].entry = Some(i);
    }
    tree
}

/// The field list: every path the detector reads (and the alert groups), then the parents of
/// those paths that are not fields themselves, whose kind (object or not) decides where alert
/// fields may go.
pub(super) fn entries(detector: &Detector) -> Vec<Entry> {
    let scanner = detector.scanner();
    let schema = scanner.schema();
    let mut list: Vec<(String, u32)> = schema
        .fields()
        .map(|(path, group)| {
            let kind = if group {
                EW_FIELD_GROUP
            } else {
                EW_FIELD_VALUE
            };
            (path.to_owned(), kind)
        })
        .collect();
    let mut nodes: Vec<String> = Vec::new();
    for (path, _) in &list {
        let mut end = 0;
        while let Some(dot) = path[end..].find('.') {
            end += dot;
            let parent = &path[..end];
            if !nodes.iter().any(|n| n == parent) && !list.iter().any(|(p, _)| p == parent) {
                nodes.push(parent.to_owned());
            }
            end += 1;
        }
    }
    list.extend(nodes.into_iter().map(|n| (n, EW_FIELD_NODE)));
    list.into_iter()
        .map(|(path, kind)| Entry { path, kind })
        .collect()
}

/// Writes `n` as JSON: integers as integers, other finite numbers in their shortest form,
/// and `null` for what JSON cannot hold.
pub(super) fn write_number(out: &mut String, n: f64) {
    use std::fmt::Write as _;
    if !n.is_finite() {
        out.push_str("null");
    } else if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        let _ = write!(out, "{}", n as i64);
    } else if let Some(number) = serde_json::Number::from_f64(n) {
        let _ = write!(out, "{number}");
    } else {
        out.push_str("null");
    }
}

/// Writes `s` as a JSON string.
pub(super) fn write_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Writes one value; `nested` for array elements (whose own arrays are written empty).
///
/// # Safety
/// String pointers in `v` must be valid for their lengths.
unsafe fn write_value(
    out: &mut String,
    v: &EwValue,
    all: &[EwValue],
    first_item: usize,
    nested: bool,
    what: &str,
) -> Result<(), Failure> {
    match v.kind {
        EW_NULL => out.push_str("null"),
        EW_BOOL => out.push_str(if v.num != 0.0 { "true" } else { "false" }),
        EW_NUMBER => write_number(out, v.num),
        EW_STRING => {
            // SAFETY: forwarded from the caller.
            let s = unsafe { text(v.str, v.len, EW_MAX_VALUE_BYTES, what)? };
            write_string(out, s);
        }
        EW_OBJECT => out.push_str("{}"),
        EW_ARRAY if nested => out.push_str("[]"),
        EW_ARRAY => {
            let count = v.count as usize;
            let start = v.len;
            let end = start.saturating_add(count);
            if start < first_item || end > all.len() {
                return Err(Failure::new(
                    EW_ERR_INVALID,
                    format!(
                        "{what}: array elements {start}..{end} are outside the values after \
                         the fields ({first_item}..{})",
                        all.len()
                    ),
                ));
            }
            out.push('[');
            for (i, item) in all[start..end].iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // SAFETY: forwarded from the caller.
                unsafe { write_value(out, item, all, first_item, true, what)? };
            }
            out.push(']');
        }
        kind => {
            return Err(Failure::new(
                EW_ERR_INVALID,
                format!("{what}: value kind {kind} is not allowed here"),
            ))
        }
    }
    Ok(())
}

/// What one call writes: the field tree and the caller's values.
pub(super) struct Shape<'a> {
    pub(super) tree: &'a [Segment],
    pub(super) entries: &'a [Entry],
    pub(super) values: &'a [EwValue],
}

impl Shape<'_> {
    /// Writes the members below segment `at` into `out`: nested in an object where the record
    /// has an object (or nothing: the object is made), as dotted keys after `prefix` below a
    /// parent that is something else. `first` says whether `out`'s object is still empty.
    ///
    /// # Safety
    /// String pointers in the values must be valid for their lengths.
    pub(super) unsafe fn members(
        &self,
        out: &mut String,
        at: usize,
        prefix: &str,
        first: &mut bool,
    ) -> Result<(), Failure> {
        for &c in &self.tree[at].children {
            let seg = &self.tree[c];
            let given = seg
                .entry
                .map(|i| (i, &self.values[i]))
                .filter(|(_, v)| v.kind != EW_ABSENT);
            if given.is_none() && seg.children.is_empty() {
                continue;
            }
            let mark = (out.len(), *first);
            if !*first {
                out.push(',');
            }
            *first = false;
            if prefix.is_empty() {
                out.push_str(&seg.key);
            } else {
                write_string(out, &format!("{prefix}{}", seg.name));
                out.push(':');
            }
            match given {
                Some((i, v)) if v.kind != EW_OBJECT => {
                    if v.kind == EW_BLOCKED {
                        out.push('0');
                    } else {
                        let fields = self.entries.len();
                        let path = &self.entries[i].path;
                        // SAFETY: forwarded from the caller.
                        unsafe { write_value(out, v, self.values, fields, false, path)? };
                    }
                    if out.len() > EW_MAX_EVENT_BYTES {
                        return Err(too_large());
                    }
                    if !seg.children.is_empty() {
                        let deeper = format!("{prefix}{}.", seg.name);
                        // SAFETY: forwarded from the caller.
                        unsafe { self.members(out, c, &deeper, first)? };
                    }
                }
                _ => {
                    out.push('{');
                    let mut inner_first = true;
                    // SAFETY: forwarded from the caller.
                    unsafe { self.members(out, c, "", &mut inner_first)? };
                    if inner_first && given.is_none() {
                        // Nothing below and nothing here: the record has no such object.
                        out.truncate(mark.0);
                        *first = mark.1;
                    } else {
                        out.push('}');
                    }
                }
            }
        }
        Ok(())
    }
}

fn too_large() -> Failure {
    Failure::new(
        EW_ERR_TOO_LARGE,
        format!("the event's values are over {EW_MAX_EVENT_BYTES} bytes as JSON"),
    )
}
