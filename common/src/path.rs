//! Dotted field paths (`destination.geo.country_name`) on JSON values, read the way the
//! detector's field scanner reads events, so that replay's presets, the quality harness and
//! the detector agree on what a field holds.
//!
//! **Lookup order.** A path names one field however the event spells it: nested objects,
//! dotted keys, or a mix. When an event holds several spellings, the most nested one wins: at
//! each level a single-segment key is tried before a dotted one, so for `a.b.c` the order is
//! `{"a":{"b":{"c"}}}`, `{"a":{"b.c"}}`, `{"a.b":{"c"}}`, `{"a.b.c"}`. This is the order of
//! `egresswatch_plugin::fields` (and of Vector's paths, Logstash field references and
//! Elasticsearch's ingest processors). Arrays are not descended into: ECS paths do not index
//! arrays. Of a repeated key, serde_json keeps the last, as the scanner reads it.
//!
//! **Writing** ([`set`]) creates the nested form.

use serde_json::{Map, Value};

/// The value of the field at `path` in `value`, in the lookup order above.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let map = value.as_object()?;
    let mut from = 0;
    while let Some(dot) = path[from..].find('.').map(|i| from + i) {
        if let Some(found) = map.get(&path[..dot]).and_then(|v| get(v, &path[dot + 1..])) {
            return Some(found);
        }
        from = dot + 1;
    }
    map.get(path)
}

/// Sets the field at `path` to `new` in the nested form, creating the objects on the way (a
/// value that is not an object and stands in the way is replaced by one).
pub fn set(value: &mut Value, path: &str, new: Value) {
    let mut cur = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else {
            return;
        };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), new);
            return;
        }
        cur = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Removes the field at `path` in its nested form, if it is there.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    let mut cur = value;
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        cur = cur.get_mut(part)?;
    }
    cur.as_object_mut()?.remove(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_spelling_is_read() {
        let want = Some(&json!("Chile"));
        for event in [
            json!({"destination": {"geo": {"country_name": "Chile"}}}),
            json!({"destination": {"geo.country_name": "Chile"}}),
            json!({"destination.geo": {"country_name": "Chile"}}),
            json!({"destination.geo.country_name": "Chile"}),
        ] {
            assert_eq!(get(&event, "destination.geo.country_name"), want, "{event}");
        }
        assert_eq!(get(&json!({"a": 1}), "a.b"), None);
        assert_eq!(get(&json!({"a": [{"b": 1}]}), "a.b"), None);
        assert_eq!(get(&json!([1]), "a"), None);
    }

    #[test]
    fn the_most_nested_spelling_wins_whatever_the_order() {
        let forms = [
            ("{\"a\":{\"b\":{\"c\":1}}}", 1),
            ("{\"a\":{\"b.c\":2}}", 2),
            ("{\"a.b\":{\"c\":3}}", 3),
            ("{\"a.b.c\":4}", 4),
        ];
        // Every pair of spellings, in both orders: the more nested one (lower number) wins.
        for (i, (x, nx)) in forms.iter().enumerate() {
            for (y, ny) in &forms[i + 1..] {
                for (first, second) in [(x, y), (y, x)] {
                    let mut merged: Value = serde_json::from_str(first).unwrap();
                    let other: Value = serde_json::from_str(second).unwrap();
                    merge(&mut merged, other);
                    assert_eq!(get(&merged, "a.b.c"), Some(&json!(nx.min(ny))), "{merged}");
                }
            }
        }
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }

    #[test]
    fn set_writes_the_nested_form_and_remove_takes_it_out() {
        let mut event = json!({"source": 5});
        set(&mut event, "destination.geo.country_name", json!("Chile"));
        set(&mut event, "source.ip", json!("10.0.0.1"));
        assert_eq!(
            event,
            json!({"source": {"ip": "10.0.0.1"}, "destination": {"geo": {"country_name": "Chile"}}})
        );
        assert_eq!(
            remove(&mut event, "destination.geo.country_name"),
            Some(json!("Chile"))
        );
        assert_eq!(remove(&mut event, "destination.nothing.here"), None);
        assert_eq!(
            event,
            json!({"source": {"ip": "10.0.0.1"}, "destination": {"geo": {}}})
        );
    }
}
