//! Event time: reading `@timestamp` (or the configured field) as milliseconds since the epoch.
//!
//! Accepted: RFC 3339 strings as ECS writes them (`2026-11-01T08:15:30.123Z`; the forms and the
//! strictness are [`egresswatch_common::time`]'s, shared with replay), and numbers or numeric
//! strings of epoch seconds or milliseconds ([`time::epoch_number_ms`]). Runs on every event
//! and allocates nothing.

use egresswatch_common::time;

use crate::fields::{Event, FieldId};

/// Milliseconds since the Unix epoch of the timestamp in `field`, if it can be read.
pub fn epoch_ms(event: &Event<'_>, field: FieldId) -> Option<i64> {
    match event.str(field) {
        Some(text) => time::parse_rfc3339_ms(text)
            .or_else(|| text.trim().parse().ok().and_then(time::epoch_number_ms)),
        None => event.number(field).and_then(time::epoch_number_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Scanner, SchemaBuilder};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn numbers_are_seconds_or_milliseconds() {
        let mut schema = SchemaBuilder::new();
        let t = schema.field("t");
        let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
        let mut at = |v: serde_json::Value| {
            let line = json!({ "t": v }).to_string();
            epoch_ms(&scanner.scan(&line).unwrap(), t)
        };
        assert_eq!(at(json!(1_793_520_930)), Some(1_793_520_930_000));
        assert_eq!(at(json!(1_793_520_930_123_i64)), Some(1_793_520_930_123));
        assert_eq!(at(json!("1331901000.000000")), Some(1_331_901_000_000));
        assert_eq!(
            at(json!("2026-11-01T08:15:30.123Z")),
            Some(1_793_520_930_123)
        );
        assert_eq!(at(json!(-5)), None);
        assert_eq!(at(json!(true)), None);
    }
}
