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

use crate::fields::grammar::{non_digits, ONES};
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
    #[inline]
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

/// Bytes of `:MM:SS.mmmZ`: the minutes on of a timestamp as ECS writes it.
const ECS_TAIL: usize = 11;

/// `:MM:SS.mmmZ` (or `,` for `.`, `z` for `Z`) read as its milliseconds after the hour with a
/// few word operations; `None` for any other text, which [`within_hour_general`] then reads.
/// Its first eight bytes are one word: the separators are checked under one mask, the five
/// digits at once, and each two-digit number is made in one multiply (a byte times ten plus
/// the byte after it). The digits are checked with the scanner's [`non_digits`], which must
/// stay exact in every byte, not only the lowest (its neighbours `zero_bytes` and
/// `bytes_below` are not): this module's tests check every byte value in each digit place.
#[inline]
fn ecs_tail_ms(tail: &[u8; ECS_TAIL]) -> Option<i64> {
    // Bytes 1, 2, 4, 5 and 7 are digits; 0 and 3 colons; 6 a dot or a comma (0x2e, 0x2c:
    // the same under 0xfd).
    const DIGITS: u64 = 0xff00_ffff_00ff_ff00;
    const SEPARATORS: u64 = 0x00fd_0000_ff00_00ff;
    const SEPARATOR_VALUES: u64 = 0x002c_0000_3a00_003a;
    let (head, rest) = tail.split_first_chunk::<8>()?;
    let word = u64::from_le_bytes(*head);
    if word & SEPARATORS != SEPARATOR_VALUES {
        return None;
    }
    if non_digits(word) & DIGITS != 0 {
        return None;
    }
    // The digits become their values.
    let values = (word ^ (ONES * 0x30)) & DIGITS;
    // Byte i of `pairs`: digit i times ten plus digit i + 1 (at most 99: no carry between
    // bytes), so the minute is byte 1 and the second byte 4.
    let pairs = values * 10 + (values >> 8);
    let (minute, second) = ((pairs >> 8) & 0xff, (pairs >> 32) & 0xff);
    let &[tens, ones, zone] = rest else {
        return None;
    };
    let (tens, ones) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
    if minute > 59 || second > 60 || tens > 9 || ones > 9 || !matches!(zone, b'Z' | b'z') {
        return None;
    }
    let millis = (values >> 56) * 100 + u64::from(tens) * 10 + u64::from(ones);
    // At most 3,600,999: the conversion cannot fail.
    i64::try_from((minute * 60 + second) * 1000 + millis).ok()
}

/// The milliseconds after its hour of a timestamp whose minutes on are `:MM:SS`, an optional
/// fraction (`.` or `,` and at least one digit, the first three read) and an optional `Z`, and
/// nothing else: exactly what [`time::parse_rfc3339_ms`] reads the same way in UTC. `None` for
/// anything else (an offset, white space, a bad minute), which the full parser then reads.
#[inline]
fn within_hour_ms(b: &[u8]) -> Option<i64> {
    match b.get(HOUR..).and_then(|tail| tail.try_into().ok()) {
        Some(tail) => ecs_tail_ms(tail).or_else(|| within_hour_general(b)),
        None => within_hour_general(b),
    }
}

/// [`within_hour_ms`] for any form.
fn within_hour_general(b: &[u8]) -> Option<i64> {
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
#[inline]
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

    /// The word reading of `:MM:SS.mmmZ` against the general one: every byte of a tail
    /// replaced by each of the 256 values, then tails with several bytes replaced at random.
    /// Where the word reading answers it agrees, and it answers every tail ending in `Z`.
    #[test]
    fn the_word_reading_of_the_minutes_agrees_with_the_general_one() {
        let check = |tail: &[u8; ECS_TAIL]| {
            let mut text = b"2026-11-01T08".to_vec();
            text.extend_from_slice(tail);
            let general = within_hour_general(&text);
            let fast = ecs_tail_ms(tail);
            if fast.is_some() || matches!(tail[10], b'Z' | b'z') {
                assert_eq!(fast, general, "{:?}", String::from_utf8_lossy(tail));
            }
            fast.is_some()
        };
        let base = *b":34:56.789Z";
        assert_eq!(ecs_tail_ms(&base), Some((34 * 60 + 56) * 1000 + 789));
        let mut read = 0;
        for at in 0..ECS_TAIL {
            for byte in 0..=255u8 {
                let mut tail = base;
                tail[at] = byte;
                read += usize::from(check(&tail));
            }
        }
        // Read: the colons as they are (1 + 1), the tens of the minute and second up to 5
        // (6 + 6), the other digits' ten values (4 x 10), both separators (2) and zones (2).
        assert_eq!(read, 68);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"0123456789:.,Zz/ \\x";
        for _ in 0..200_000 {
            let mut tail = base;
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % ECS_TAIL as u64) as usize;
                tail[at] = alphabet[((seed >> 8) % alphabet.len() as u64) as usize];
            }
            check(&tail);
        }
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
