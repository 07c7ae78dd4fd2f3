//! Event time: reading `@timestamp` (or the configured field) as milliseconds since the epoch.
//!
//! Accepted: RFC 3339 strings as ECS writes them (`2026-11-01T08:15:30.123Z`; the forms and the
//! strictness are [`egresswatch_common::time`]'s, shared with replay), and numbers or numeric
//! strings of epoch seconds or milliseconds ([`time::epoch_number_ms`]). Runs on every event
//! and allocates nothing.
//!
//! Events of a stream mostly share their date and hour with the event before them, so a
//! [`TimeMemo`] keeps the hour of the last timestamp read: a timestamp of that hour in UTC
//! (`...T08:15:30.123Z`, or without the `Z`) is read from its minutes on, and anything else
//! goes to the full parser. Both give the same milliseconds (tested against each other).

use egresswatch_common::time;

use crate::fields::{Event, FieldId};

/// Bytes of `YYYY-MM-DDTHH`: what two timestamps of one hour share.
const HOUR: usize = 13;

/// The hour of the last timestamp read (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct TimeMemo {
    /// `YYYY-MM-DDTHH` of the last timestamp read in UTC, as written; empty before one.
    hour: [u8; HOUR],
    /// Its milliseconds since the epoch at minute 0.
    hour_ms: i64,
    /// Whether `hour` holds one.
    set: bool,
}

impl TimeMemo {
    /// Milliseconds since the epoch of the timestamp `text`: [`time::parse_rfc3339_ms`]'s
    /// answer, from the memo when `text` falls in its hour.
    pub fn parse(&mut self, text: &str) -> Option<i64> {
        let b = text.as_bytes();
        if self.set && b.get(..HOUR) == Some(&self.hour[..]) {
            if let Some(within) = within_hour_ms(b) {
                return Some(self.hour_ms + within);
            }
        }
        let ms = time::parse_rfc3339_ms(text)?;
        if let (Some(within), Some(hour)) = (within_hour_ms(b), b.get(..HOUR)) {
            self.hour.copy_from_slice(hour);
            self.hour_ms = ms - within;
            self.set = true;
        }
        Some(ms)
    }
}

/// The milliseconds after its hour of a timestamp whose minutes on are `:MM:SS`, an optional
/// fraction (`.` or `,` and at least one digit, the first three read) and an optional `Z`, and
/// nothing else: exactly what [`time::parse_rfc3339_ms`] reads the same way in UTC. `None` for
/// anything else (an offset, white space, a bad minute), which the full parser then reads.
#[inline]
fn within_hour_ms(b: &[u8]) -> Option<i64> {
    let head: &[u8; 6] = b.get(HOUR..HOUR + 6)?.try_into().ok()?;
    if head[0] != b':' || head[3] != b':' {
        return None;
    }
    let two = |i: usize| -> Option<i64> {
        let (high, low) = (head[i].wrapping_sub(b'0'), head[i + 1].wrapping_sub(b'0'));
        (high < 10 && low < 10).then_some(i64::from(high) * 10 + i64::from(low))
    };
    let (minute, second) = (two(1)?, two(4)?);
    if minute > 59 || second > 60 {
        return None;
    }
    let within = (minute * 60 + second) * 1000;
    let digit = |c: u8| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then_some(i64::from(d))
    };
    match &b[HOUR + 6..] {
        [] | [b'Z' | b'z'] => Some(within),
        // Milliseconds, as ECS writes them.
        [b'.' | b',', a, b, c, b'Z' | b'z'] => {
            Some(within + digit(*a)? * 100 + digit(*b)? * 10 + digit(*c)?)
        }
        [b'.' | b',', fraction @ ..] => {
            let fraction = match fraction {
                [digits @ .., b'Z' | b'z'] => digits,
                digits => digits,
            };
            if fraction.is_empty() {
                return None;
            }
            let mut millis = 0;
            for (i, &c) in fraction.iter().enumerate() {
                let d = digit(c)?;
                if i < 3 {
                    millis = millis * 10 + d;
                }
            }
            for _ in fraction.len()..3 {
                millis *= 10;
            }
            Some(within + millis)
        }
        _ => None,
    }
}

/// Milliseconds since the Unix epoch of the timestamp in `field`, if it can be read.
pub fn epoch_ms(event: &Event<'_>, field: FieldId, memo: &mut TimeMemo) -> Option<i64> {
    match event.str(field) {
        Some(text) => memo
            .parse(text)
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
            epoch_ms(&scanner.scan(&line).unwrap(), t, &mut TimeMemo::default())
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

    /// A stream of timestamps (most in the hour before them, as in a stream; some with offsets,
    /// white space, other separators, bad minutes or seconds, a byte changed): read through one
    /// memo, each gives exactly what the full parser gives.
    #[test]
    fn the_memo_reads_every_timestamp_as_the_full_parser() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut memo = TimeMemo::default();
        let (mut day, mut hour) = (1, 8);
        let mut hits = 0;
        for _ in 0..200_000 {
            if next(50) == 0 {
                hour = next(25);
                day = 1 + next(31);
            }
            let sep = [b'T', b't', b' ', b'T', b'T', b'T'][next(6) as usize] as char;
            let mut text = format!(
                "2024-02-{day:02}{sep}{hour:02}:{:02}:{:02}",
                next(62),
                next(63)
            );
            match next(4) {
                0 => {}
                n => {
                    text.push(if n == 3 { ',' } else { '.' });
                    for _ in 0..next(8) {
                        text.push(char::from(b'0' + next(10) as u8));
                    }
                }
            }
            let suffixes = [
                "", "Z", "Z", "Z", "z", "+01:00", "-0130", "+02", " ", "Zx", "ZZ", "zZ", "Zz",
            ];
            text.push_str(suffixes[next(suffixes.len() as u64) as usize]);
            if next(20) == 0 {
                let at = next(text.len() as u64) as usize;
                let byte = [b'0', b'9', b':', b'.', b' ', b'Z', b'x'][next(7) as usize];
                text.replace_range(at..=at, &char::from(byte).to_string());
            }
            if next(40) == 0 {
                text.insert(0, ' ');
            }
            let before = memo.set.then_some(memo.hour);
            assert_eq!(memo.parse(&text), time::parse_rfc3339_ms(&text), "{text:?}");
            if before.is_some_and(|h| text.as_bytes().get(..HOUR) == Some(&h[..])) {
                hits += 1;
            }
        }
        assert!(hits > 50_000, "the memo answered {hits} times");
    }
}
