//! Field access on ECS events held as [`serde_json::Value`].
//!
//! ECS events reach us in two shapes, often mixed in one document:
//!
//! ```json
//! {"destination": {"geo": {"country_name": "Iran"}}}
//! {"destination.geo.country_name": "Iran"}
//! {"destination": {"geo.country_name": "Iran"}}
//! ```
//!
//! Every function here takes an ECS field path (`destination.geo.country_name`) and finds the field
//! whatever mixture of nesting and dotted keys the event uses, at any level.
//!
//! Lookup order, when a document holds the same field in more than one shape: at each object, the
//! whole remaining path as one key is tried first, then each split point from left to right (the
//! shortest prefix key first), descending into the first branch that yields the field. Arrays are
//! not descended into: ECS paths do not index arrays.
//!
//! The read path ([`get`], [`get_str`], [`get_f64`], [`contains_str`]) does not allocate: it slices
//! the path and looks keys up by `&str`. [`insert`] is the write path, used when annotating the rare
//! flagged event; it allocates freely.

use serde_json::{Map, Value};
use thiserror::Error;

/// Why [`insert`] could not write a field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InsertError {
    /// The event itself is not a JSON object, so it cannot hold fields.
    #[error("cannot write `{path}`: the event is not a JSON object")]
    NotAnObject {
        /// The field that was being written.
        path: String,
    },
    /// A prefix of the path already holds a value that is not an object (for example writing
    /// `destination.geo.name` when `destination` is a string); replacing it would lose data.
    #[error("cannot write `{path}`: `{blocked_by}` already holds a non-object value")]
    Blocked {
        /// The field that was being written.
        path: String,
        /// The existing key (as written in the event) that holds a non-object value.
        blocked_by: String,
    },
    /// The path is empty or has an empty segment (`a..b`, `.a`, `a.`).
    #[error("invalid field path `{path}`")]
    InvalidPath {
        /// The offending path.
        path: String,
    },
}

/// Returns the value at the ECS field `path`, following nested objects and dotted keys.
///
/// `None` when the field is absent. A JSON `null` is returned as `Some(&Value::Null)`; use
/// [`get_present`] to treat it as absent.
pub fn get<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    match event {
        Value::Object(map) => get_in(map, path),
        _ => None,
    }
}

/// Like [`get`], but a JSON `null` counts as absent (as in Elasticsearch's `exists` query).
pub fn get_present<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    get(event, path).filter(|v| !v.is_null())
}

/// Returns the field as a string slice when it is a JSON string.
pub fn get_str<'a>(event: &'a Value, path: &str) -> Option<&'a str> {
    get(event, path).and_then(Value::as_str)
}

/// Returns the field as a finite `f64` when it is a JSON number or a string holding a number
/// (`"1024"`, `" 3.5 "`). Non-finite results (`"NaN"`, `"inf"`) are `None`.
pub fn get_f64(event: &Value, path: &str) -> Option<f64> {
    let n = match get(event, path)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// True when the field is the string `needle`, or an array containing the string `needle`
/// (as ECS `event.category` is). Comparison is exact (ECS categorisation values are lowercase).
pub fn contains_str(event: &Value, path: &str, needle: &str) -> bool {
    match get(event, path) {
        Some(Value::String(s)) => s == needle,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(needle)),
        _ => false,
    }
}

fn get_in<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = map.get(path) {
        return Some(v);
    }
    for (i, _) in path.match_indices('.') {
        let (head, tail) = (&path[..i], &path[i + 1..]);
        if let Some(Value::Object(child)) = map.get(head) {
            if let Some(v) = get_in(child, tail) {
                return Some(v);
            }
        }
    }
    None
}

/// Writes `value` at the ECS field `path` and returns the value it replaced, if any.
///
/// - If the field already exists in any shape (nested, dotted, or a mix), it is replaced where it
///   is, keeping its position in key order.
/// - Otherwise the deepest existing object on the path (reached through nested or dotted keys) is
///   extended with nested objects for the rest of the path, appended after existing keys.
/// - Nothing else is removed or renamed. When a prefix of the path holds a non-object value the
///   write is refused with [`InsertError::Blocked`] rather than overwriting it.
pub fn insert(event: &mut Value, path: &str, value: Value) -> Result<Option<Value>, InsertError> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(InsertError::InvalidPath {
            path: path.to_owned(),
        });
    }
    let Value::Object(root) = event else {
        return Err(InsertError::NotAnObject {
            path: path.to_owned(),
        });
    };
    // Existing field: replace in place.
    if let Some(keys) = locate_leaf(root, path, 0) {
        let slot = walk_mut(root, path, &keys[..keys.len() - 1]);
        let (s, e) = keys[keys.len() - 1];
        return Ok(slot.insert(path[s..e].to_owned(), value));
    }
    // New field: descend through the deepest existing object, then create the rest.
    let mut keys = Vec::new();
    let consumed = deepest_object(root, path, 0, &mut keys);
    let container = walk_mut(root, path, &keys);
    let rest = &path[consumed..];
    // A dotted key on the way that holds a scalar (`{"a.b": 1}` when writing `a.b.c`) blocks too.
    for (i, _) in rest.match_indices('.') {
        if matches!(container.get(&rest[..i]), Some(v) if !v.is_object()) {
            return Err(InsertError::Blocked {
                path: path.to_owned(),
                blocked_by: rest[..i].to_owned(),
            });
        }
    }
    let mut segments = rest.split('.').peekable();
    let mut current = container;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            return Ok(current.insert(segment.to_owned(), value));
        }
        let next = current
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        match next {
            Value::Object(child) => current = child,
            _ => {
                return Err(InsertError::Blocked {
                    path: path.to_owned(),
                    blocked_by: segment.to_owned(),
                })
            }
        }
    }
    // `rest` is never empty: a full match would have been found by `locate_leaf`.
    Err(InsertError::InvalidPath {
        path: path.to_owned(),
    })
}

/// Key spans (byte ranges into the full path) from `map` to an existing leaf at `path[offset..]`,
/// in the same order as [`get_in`] searches.
fn locate_leaf(map: &Map<String, Value>, path: &str, offset: usize) -> Option<Vec<(usize, usize)>> {
    let rest = &path[offset..];
    if map.contains_key(rest) {
        return Some(vec![(offset, path.len())]);
    }
    for (i, _) in rest.match_indices('.') {
        let key_end = offset + i;
        if let Some(Value::Object(child)) = map.get(&path[offset..key_end]) {
            if let Some(mut keys) = locate_leaf(child, path, key_end + 1) {
                keys.insert(0, (offset, key_end));
                return Some(keys);
            }
        }
    }
    None
}

/// Finds the deepest existing object along `path[offset..]`, pushing the key spans that lead to it
/// into `keys`, and returns the byte offset in `path` where the unconsumed rest begins.
fn deepest_object(
    map: &Map<String, Value>,
    path: &str,
    offset: usize,
    keys: &mut Vec<(usize, usize)>,
) -> usize {
    let rest = &path[offset..];
    let mut best = offset;
    let mut best_keys: Vec<(usize, usize)> = Vec::new();
    for (i, _) in rest.match_indices('.') {
        let key_end = offset + i;
        if let Some(Value::Object(child)) = map.get(&path[offset..key_end]) {
            let mut sub = vec![(offset, key_end)];
            let reached = deepest_object(child, path, key_end + 1, &mut sub);
            if reached > best {
                best = reached;
                best_keys = sub;
            }
        }
    }
    keys.extend(best_keys);
    best
}

fn walk_mut<'a>(
    mut map: &'a mut Map<String, Value>,
    path: &str,
    keys: &[(usize, usize)],
) -> &'a mut Map<String, Value> {
    for &(s, e) in keys {
        // The spans were computed on this same map just before, each naming an object.
        match map.get_mut(&path[s..e]) {
            Some(Value::Object(child)) => map = child,
            _ => unreachable!("span computed from an object key"),
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shapes() -> Vec<Value> {
        vec![
            json!({"destination": {"geo": {"country_name": "Iran"}}}),
            json!({"destination.geo.country_name": "Iran"}),
            json!({"destination": {"geo.country_name": "Iran"}}),
            json!({"destination.geo": {"country_name": "Iran"}}),
        ]
    }

    #[test]
    fn get_understands_every_shape() {
        for ev in shapes() {
            assert_eq!(
                get_str(&ev, "destination.geo.country_name"),
                Some("Iran"),
                "{ev}"
            );
            assert_eq!(get(&ev, "destination.geo.country_iso_code"), None, "{ev}");
        }
    }

    #[test]
    fn get_backtracks_when_first_branch_lacks_field() {
        let ev = json!({"destination": {"ip": "1.2.3.4"}, "destination.port": 443});
        assert_eq!(get(&ev, "destination.port"), Some(&json!(443)));
        assert_eq!(get_str(&ev, "destination.ip"), Some("1.2.3.4"));
    }

    #[test]
    fn get_on_non_object_and_arrays() {
        assert_eq!(get(&json!("x"), "a"), None);
        let ev = json!({"a": [{"b": 1}]});
        assert_eq!(get(&ev, "a.b"), None);
        assert_eq!(get(&ev, "a"), Some(&json!([{"b": 1}])));
    }

    #[test]
    fn get_present_treats_null_as_absent() {
        let ev = json!({"a": null});
        assert_eq!(get(&ev, "a"), Some(&Value::Null));
        assert_eq!(get_present(&ev, "a"), None);
    }

    #[test]
    fn get_f64_numbers_and_numeric_strings() {
        let ev = json!({"source": {"bytes": 1024, "f": 2.5, "s": " 77 ", "bad": "x",
                        "nan": "NaN", "b": true}});
        assert_eq!(get_f64(&ev, "source.bytes"), Some(1024.0));
        assert_eq!(get_f64(&ev, "source.f"), Some(2.5));
        assert_eq!(get_f64(&ev, "source.s"), Some(77.0));
        assert_eq!(get_f64(&ev, "source.bad"), None);
        assert_eq!(get_f64(&ev, "source.nan"), None);
        assert_eq!(get_f64(&ev, "source.b"), None);
        assert_eq!(get_f64(&ev, "source.missing"), None);
    }

    #[test]
    fn contains_str_string_or_array() {
        let a = json!({"event": {"category": ["network", "process"]}});
        let s = json!({"event.category": "network"});
        let n = json!({"event": {"category": ["file"]}});
        assert!(contains_str(&a, "event.category", "network"));
        assert!(contains_str(&s, "event.category", "network"));
        assert!(!contains_str(&n, "event.category", "network"));
        assert!(!contains_str(&json!({}), "event.category", "network"));
    }

    #[test]
    fn insert_replaces_existing_field_in_its_shape() {
        let mut ev = json!({"a": 1, "event.kind": "event", "z": 2});
        let old = insert(&mut ev, "event.kind", json!("alert")).unwrap();
        assert_eq!(old, Some(json!("event")));
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"a":1,"event.kind":"alert","z":2}"#
        );

        let mut ev = json!({"event": {"kind": "event", "id": "x"}});
        insert(&mut ev, "event.kind", json!("alert")).unwrap();
        assert_eq!(ev, json!({"event": {"kind": "alert", "id": "x"}}));

        let mut ev = json!({"event": {"kind.x": 1}});
        insert(&mut ev, "event.kind.x", json!(2)).unwrap();
        assert_eq!(ev, json!({"event": {"kind.x": 2}}));
    }

    #[test]
    fn insert_extends_existing_nested_object() {
        let mut ev = json!({"event": {"category": ["network"]}, "b": 1});
        assert_eq!(insert(&mut ev, "event.kind", json!("alert")).unwrap(), None);
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":{"category":["network"],"kind":"alert"},"b":1}"#
        );
    }

    #[test]
    fn insert_extends_dotted_key_object() {
        let mut ev = json!({"destination.geo": {"country_name": "Iran"}});
        insert(&mut ev, "destination.geo.country_iso_code", json!("IR")).unwrap();
        assert_eq!(
            ev,
            json!({"destination.geo": {"country_name": "Iran", "country_iso_code": "IR"}})
        );
    }

    #[test]
    fn insert_creates_nested_objects_when_absent() {
        let mut ev = json!({"event.category": ["network"]});
        insert(&mut ev, "event.kind", json!("alert")).unwrap();
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event.category":["network"],"event":{"kind":"alert"}}"#
        );
        assert_eq!(get_str(&ev, "event.kind"), Some("alert"));
        assert!(contains_str(&ev, "event.category", "network"));
    }

    #[test]
    fn insert_then_get_roundtrip_all_shapes() {
        for mut ev in shapes() {
            insert(&mut ev, "destination.geo.country_name", json!("Iraq")).unwrap();
            insert(&mut ev, "egresswatch.score", json!(91)).unwrap();
            assert_eq!(get_str(&ev, "destination.geo.country_name"), Some("Iraq"));
            assert_eq!(get(&ev, "egresswatch.score"), Some(&json!(91)));
            // Still a single country field: nothing duplicated.
            assert_eq!(ev.to_string().matches("Ira").count(), 1, "{ev}");
        }
    }

    #[test]
    fn insert_refuses_to_clobber_scalars() {
        let mut ev = json!({"destination": "somewhere"});
        let err = insert(&mut ev, "destination.ip", json!("1.2.3.4")).unwrap_err();
        assert!(matches!(err, InsertError::Blocked { .. }));
        assert_eq!(ev, json!({"destination": "somewhere"}));
        let mut ev = json!({"a.b": 1});
        let err = insert(&mut ev, "a.b.c", json!(2)).unwrap_err();
        assert!(matches!(err, InsertError::Blocked { ref blocked_by, .. } if blocked_by == "a.b"));
        assert_eq!(ev, json!({"a.b": 1}));
    }

    #[test]
    fn insert_errors() {
        let mut s = json!("not an object");
        assert!(matches!(
            insert(&mut s, "a", json!(1)),
            Err(InsertError::NotAnObject { .. })
        ));
        let mut ev = json!({});
        for bad in ["", "a..b", ".a", "a."] {
            assert!(matches!(
                insert(&mut ev, bad, json!(1)),
                Err(InsertError::InvalidPath { .. })
            ));
        }
    }
}
