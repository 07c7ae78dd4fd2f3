//! Event time: reading `@timestamp` (or the configured field) as milliseconds since the epoch.
//!
//! Accepted: RFC 3339 / ISO 8601 strings as ECS writes them (`2026-11-01T08:15:30.123Z`,
//! offsets `+01:00`, a space instead of `T`, any number of fraction digits), and numbers or
//! numeric strings of epoch milliseconds (values below 10^11 are taken as seconds, which is how
//! Zeek writes `ts`). Written by hand because it runs on every event and needs no allocation.

use crate::fields::{Event, FieldId};

/// Milliseconds since the Unix epoch of the timestamp in `field`, if it can be read.
pub fn epoch_ms(event: &Event<'_>, field: FieldId) -> Option<i64> {
    match event.str(field) {
        Some(text) => {
            parse_rfc3339_ms(text).or_else(|| text.trim().parse().ok().and_then(number_ms))
        }
        None => event.number(field).and_then(number_ms),
    }
}

/// Epoch seconds or milliseconds as milliseconds: below 10^11 the number is seconds.
fn number_ms(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < 1e11 { n * 1000.0 } else { n };
    (ms < 1e15).then_some(ms.round() as i64)
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fff...](Z|±HH:MM|±HHMM)`; a missing offset means UTC.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    // Surrounding whitespace is rare: trim (which walks the text as chars) only if there is some.
    let b = if b.first().is_some_and(u8::is_ascii_whitespace)
        || b.last().is_some_and(u8::is_ascii_whitespace)
    {
        text.trim().as_bytes()
    } else {
        b
    };
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = b.get(range)?;
        slice.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                5 if rest[2] == b':' => (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?),
                4 => (digits(i + 1..i + 3)?, digits(i + 3..i + 5)?),
                2 => (digits(i + 1..i + 3)?, 0),
                _ => return None,
            };
            let secs = h * 3600 + m * 60;
            if sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Scanner, SchemaBuilder};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn rfc3339_variants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-01T08:15:30.123Z"),
            Some(1_793_520_930_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-01T08:15:30.1234567Z"),
            Some(1_793_520_930_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-01T09:15:30.1+01:00"),
            Some(1_793_520_930_100)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-01 08:15:30"),
            Some(1_793_520_930_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00-0130"),
            Some(1_709_170_200_000)
        );
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-01T00:00:00Zjunk"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

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
