//! Reading the few fields the jobs need without building the whole event.
//!
//! Parsing every event into a `serde_json::Value` costs an allocation per key and value and a
//! hash per lookup, most of it for fields no job reads. [`FlatEvent::scan`] instead walks the
//! JSON once with serde's borrowing deserializer and keeps only the wanted fields, by their
//! flattened path, so that nested objects and dotted keys are the same thing:
//! `{"destination":{"geo":{"country_name":"X"}}}`, `{"destination.geo.country_name":"X"}` and
//! `{"destination":{"geo.country_name":"X"}}` all give `destination.geo.country_name = X`.
//! Strings without escapes are borrowed from the line; everything not wanted is skipped (and
//! still validated: a line that is not a JSON object is rejected). When the same field appears
//! twice, the first one wins, as in [`crate::event::get`].
//!
//! Only a flagged event, rare by design, is parsed in full (to annotate it).
//!
//! [`Fields`] is what filters and models read through; it is implemented both for
//! [`FlatEvent`] and for a full `serde_json::Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::event;

/// Read access to an event's fields by dotted path.
pub trait Fields {
    /// The field as a string, when it is one.
    fn get_str(&self, path: &str) -> Option<&str>;
    /// The field as a finite number: a JSON number or a numeric string.
    fn get_f64(&self, path: &str) -> Option<f64>;
    /// Whether the field is the string `needle` or an array containing it.
    fn contains_str(&self, path: &str, needle: &str) -> bool;
    /// Whether the field is present and not null.
    fn is_present(&self, path: &str) -> bool;
}

impl Fields for Value {
    fn get_str(&self, path: &str) -> Option<&str> {
        event::get_str(self, path)
    }
    fn get_f64(&self, path: &str) -> Option<f64> {
        event::get_f64(self, path)
    }
    fn contains_str(&self, path: &str, needle: &str) -> bool {
        event::contains_str(self, path, needle)
    }
    fn is_present(&self, path: &str) -> bool {
        event::get_present(self, path).is_some()
    }
}

/// A wanted field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// A string (borrowed from the line unless it had escapes).
    Str(Cow<'a, str>),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// An array; its string elements are kept.
    StrList(Vec<Cow<'a, str>>),
    /// An object, or an array of something else.
    Other,
}

/// The set of flattened paths a detector reads, fixed at construction.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    paths: Vec<String>,
    /// Every proper prefix of a wanted path that ends before a `.` (`destination`,
    /// `destination.geo` for `destination.geo.country_name`), so that deciding whether to
    /// descend into a key is an equality test, which compares lengths before bytes.
    prefixes: Vec<String>,
}

impl Wanted {
    /// A set from paths; duplicates are dropped.
    pub fn new<'p>(paths: impl IntoIterator<Item = &'p str>) -> Self {
        let mut wanted = Wanted::default();
        for path in paths {
            if !wanted.paths.iter().any(|p| p == path) {
                wanted.paths.push(path.to_owned());
            }
            for (i, _) in path.match_indices('.') {
                let prefix = &path[..i];
                if !wanted.prefixes.iter().any(|p| p == prefix) {
                    wanted.prefixes.push(prefix.to_owned());
                }
            }
        }
        wanted
    }

    fn index(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    /// Whether `path` is wanted itself, or leads to a wanted path.
    fn classify(&self, path: &str) -> Match {
        if let Some(i) = self.index(path) {
            Match::Exact(i)
        } else if self.prefixes.iter().any(|p| p == path) {
            Match::Prefix
        } else {
            Match::None
        }
    }
}

enum Match {
    Exact(usize),
    Prefix,
    None,
}

/// The wanted fields of one event.
#[derive(Debug)]
pub struct FlatEvent<'w, 'a> {
    wanted: &'w Wanted,
    values: Vec<Option<Scalar<'a>>>,
}

impl<'w, 'a> FlatEvent<'w, 'a> {
    /// Scans one line. Fails when the line is not a JSON object.
    pub fn scan(line: &'a str, wanted: &'w Wanted) -> Result<Self, serde_json::Error> {
        let mut values = vec![None; wanted.paths.len()];
        let mut path = String::with_capacity(64);
        let mut de = serde_json::Deserializer::from_str(line);
        Walk {
            wanted,
            path: &mut path,
            values: &mut values,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(FlatEvent { wanted, values })
    }

    fn value(&self, path: &str) -> Option<&Scalar<'a>> {
        self.wanted
            .index(path)
            .and_then(|i| self.values[i].as_ref())
    }

    /// Sets a wanted field (enrichment); paths that are not wanted are ignored.
    pub fn set(&mut self, path: &str, value: Scalar<'a>) {
        if let Some(i) = self.wanted.index(path) {
            self.values[i] = Some(value);
        }
    }
}

impl Fields for FlatEvent<'_, '_> {
    fn get_str(&self, path: &str) -> Option<&str> {
        match self.value(path)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    fn get_f64(&self, path: &str) -> Option<f64> {
        let n = match self.value(path)? {
            Scalar::Num(n) => *n,
            Scalar::Str(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        n.is_finite().then_some(n)
    }

    fn contains_str(&self, path: &str, needle: &str) -> bool {
        match self.value(path) {
            Some(Scalar::Str(s)) => s == needle,
            Some(Scalar::StrList(list)) => list.iter().any(|s| s == needle),
            _ => false,
        }
    }

    fn is_present(&self, path: &str) -> bool {
        !matches!(self.value(path), None | Some(Scalar::Null))
    }
}

/// Walks an object, extending `path` with each key.
struct Walk<'w, 'p, 'a> {
    wanted: &'w Wanted,
    path: &'p mut String,
    values: &'p mut Vec<Option<Scalar<'a>>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let len = self.path.len();
            if len > 0 {
                self.path.push('.');
            }
            self.path.push_str(&key.0);
            match self.wanted.classify(self.path) {
                Match::Exact(i) => {
                    let value = map.next_value_seed(ScalarSeed)?;
                    if self.values[i].is_none() {
                        self.values[i] = Some(value);
                    }
                }
                Match::Prefix => map.next_value_seed(Nested(Walk {
                    wanted: self.wanted,
                    path: self.path,
                    values: self.values,
                }))?,
                Match::None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            self.path.truncate(len);
        }
        Ok(())
    }
}

/// A value under a wanted prefix: walked when it is an object, skipped otherwise.
struct Nested<'w, 'p, 'a>(Walk<'w, 'p, 'a>);

impl<'de> DeserializeSeed<'de> for Nested<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A string, borrowed when the input allows.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Reads a wanted field's value.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scalar<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(n as f64))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(n as f64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(n))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        let mut list = Vec::new();
        while let Some(item) = seq.next_element::<Element<'de>>()? {
            if let Element(Some(text)) = item {
                list.push(text);
            }
        }
        Ok(Scalar::StrList(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// An array element: kept when it is a string.
struct Element<'a>(Option<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match ScalarSeed.deserialize(deserializer)? {
            Scalar::Str(s) => Ok(Element(Some(s))),
            _ => Ok(Element(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted::new([
            "destination.geo.country_name",
            "destination.ip",
            "event.category",
            "source.bytes",
            "process.name",
        ])
    }

    #[test]
    fn nested_dotted_and_mixed_shapes_read_the_same() {
        let w = wanted();
        for line in [
            r#"{"destination":{"geo":{"country_name":"Chile"},"ip":"1.2.3.4"},"source":{"bytes":12}}"#,
            r#"{"destination.geo.country_name":"Chile","destination.ip":"1.2.3.4","source.bytes":"12"}"#,
            r#"{"destination":{"geo.country_name":"Chile","ip":"1.2.3.4"},"source.bytes":12.0}"#,
        ] {
            let e = FlatEvent::scan(line, &w).unwrap();
            assert_eq!(
                e.get_str("destination.geo.country_name"),
                Some("Chile"),
                "{line}"
            );
            assert_eq!(e.get_str("destination.ip"), Some("1.2.3.4"));
            assert_eq!(e.get_f64("source.bytes"), Some(12.0));
            assert!(!e.is_present("process.name"));
        }
    }

    #[test]
    fn arrays_escapes_nulls_and_unwanted_fields() {
        let w = wanted();
        let line = r#"{"event":{"category":["network",3,"web"]},"x":{"y":[1,{"z":2}]},"process":{"name":"a\"b"},"destination":{"ip":null}}"#;
        let e = FlatEvent::scan(line, &w).unwrap();
        assert!(e.contains_str("event.category", "network"));
        assert!(e.contains_str("event.category", "web"));
        assert!(!e.contains_str("event.category", "process"));
        assert_eq!(e.get_str("process.name"), Some("a\"b"));
        assert!(!e.is_present("destination.ip"));
    }

    #[test]
    fn the_first_of_two_shapes_wins_and_set_overrides() {
        let w = wanted();
        let line = r#"{"destination.ip":"1.1.1.1","destination":{"ip":"2.2.2.2"}}"#;
        let mut e = FlatEvent::scan(line, &w).unwrap();
        assert_eq!(e.get_str("destination.ip"), Some("1.1.1.1"));
        e.set("destination.geo.country_name", Scalar::Str("Peru".into()));
        e.set("not.wanted", Scalar::Null);
        assert_eq!(e.get_str("destination.geo.country_name"), Some("Peru"));
    }

    #[test]
    fn only_json_objects_are_accepted() {
        let w = wanted();
        for bad in [
            "[1,2]",
            "\"text\"",
            "{\"a\":1",
            "{\"a\":1} trailing",
            "",
            "{\"a\":[1,}",
        ] {
            assert!(FlatEvent::scan(bad, &w).is_err(), "{bad}");
        }
        assert!(FlatEvent::scan("  {\"a\" : {\"b\": [true, null]}}  ", &w).is_ok());
    }

    #[test]
    fn agrees_with_the_full_parse() {
        let w = wanted();
        let line = r#"{"event":{"category":"network"},"destination":{"ip":"9.9.9.9","geo":{"country_name":"Switzerland"}},"source":{"bytes":"77"},"process.name":"curl"}"#;
        let flat = FlatEvent::scan(line, &w).unwrap();
        let full: Value = serde_json::from_str(line).unwrap();
        for path in [
            "destination.geo.country_name",
            "destination.ip",
            "process.name",
        ] {
            assert_eq!(flat.get_str(path), full.get_str(path), "{path}");
        }
        assert_eq!(flat.get_f64("source.bytes"), full.get_f64("source.bytes"));
        assert_eq!(
            flat.contains_str("event.category", "network"),
            full.contains_str("event.category", "network")
        );
    }
}
