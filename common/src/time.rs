//! Event time: RFC 3339 timestamps and epoch numbers as milliseconds since the Unix epoch.
//!
//! Accepted text: `YYYY-MM-DD[T ]HH:MM:SS[.f…][Z|±HH:MM|±HHMM|±HH]`, the forms ECS, Zeek,
//! Suricata and Argus logs write. Beyond RFC 3339, and on purpose: a space (or lower-case `t`)
//! between date and time, a `,` before the fraction, offsets without a colon or without
//! minutes, and no offset at all, which means UTC. Strict where RFC 3339 is: the date must
//! exist (`2026-02-31` is an error, `2024-02-29` is not), hours 0-23, minutes 0-59, seconds
//! 0-60 (a leap second counts as the next second), offsets at most 23:59, a fraction has at
//! least one digit (digits past the third are read and dropped), nothing may follow.
//! Surrounding white space is ignored.
//!
//! Written by hand rather than on `jiff`: the detector reads `@timestamp` on every event, and
//! under callgrind this parser takes about 285 instructions per timestamp of the bundled sample
//! where `jiff::Timestamp`'s parser takes 727 (ARCHITECTURE.md says how it was measured).
//! Neither allocates.

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Epoch numbers below this are seconds, at or above it milliseconds: 10^11 seconds is the
/// year 5138, 10^11 milliseconds is March 1973, so no real event time is ambiguous. Zeek writes
/// `ts` in seconds, ECS pipelines often milliseconds.
pub const EPOCH_SECONDS_BELOW: f64 = 1e11;

/// Latest epoch milliseconds accepted from a number (the year 33658): anything larger is junk.
const EPOCH_MS_LIMIT: f64 = 1e15;

/// Milliseconds of an epoch number: seconds below [`EPOCH_SECONDS_BELOW`], milliseconds from
/// it on; `None` for negative, non-finite or absurdly large values.
pub fn epoch_number_ms(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < EPOCH_SECONDS_BELOW {
        n * 1000.0
    } else {
        n
    };
    (ms < EPOCH_MS_LIMIT).then_some(ms.round() as i64)
}

/// Parses a timestamp (see the module's documentation for the accepted forms) into epoch
/// milliseconds; `None` when the text is not one, or names a date or offset that cannot be.
#[inline]
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    // Surrounding white space is rare: trim (which walks the text as chars) only if there is some.
    let b = if b.first().is_some_and(u8::is_ascii_whitespace)
        || b.last().is_some_and(u8::is_ascii_whitespace)
    {
        text.trim().as_bytes()
    } else {
        b
    };
    // `YYYY-MM-DDTHH:MM:SS` as an array: constant indices, no bounds checks.
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    if head[4] != b'-'
        || head[7] != b'-'
        || !matches!(head[10], b'T' | b't' | b' ')
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let two = |i: usize| -> Option<u32> {
        let (high, low) = (head[i].wrapping_sub(b'0'), head[i + 1].wrapping_sub(b'0'));
        (high < 10 && low < 10).then_some(u32::from(high) * 10 + u32::from(low))
    };
    let (year, month, day) = (two(0)? * 100 + two(2)?, two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if !(1..=12).contains(&month)
        || day == 0
        || (day > 28 && day > days_in_month(year, month))
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if matches!(b.get(i), Some(b'.' | b',')) {
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
            let digits = |range: std::ops::Range<usize>| -> Option<i64> {
                b.get(range)?.iter().try_fold(0i64, |acc, &c| {
                    c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
                })
            };
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                5 if rest[2] == b':' => (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?),
                4 => (digits(i + 1..i + 3)?, digits(i + 3..i + 5)?),
                2 => (digits(i + 1..i + 3)?, 0),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
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
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Some(secs * 1000 + millis)
}

/// `2026-11-01T08:15:30.123Z`: RFC 3339 in UTC with milliseconds.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / HOUR_MS,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// `2026-11-01 08:15` (UTC), for tables and plots.
pub fn format_minutes(ms: i64) -> String {
    let s = format_rfc3339_ms(ms);
    format!("{} {}", &s[..10], &s[11..16])
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Days in `month` (1-12) of `year`, proleptic Gregorian.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date of the years 0 to 9999 (what four
/// digits hold), by Howard Hinnant's algorithm in unsigned arithmetic: the years are shifted by
/// one 400-year era so that January and February of year 0 stay non-negative.
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year + 399 } else { year + 400 };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i64::from(era) * 146_097 + i64::from(doe) - 719_468 - 146_097
}

/// The date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
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
        assert_eq!(
            parse_rfc3339_ms("2021-06-06T15:57:37,272281+02"),
            parse_rfc3339_ms("2021-06-06T13:57:37.272Z")
        );
        assert_eq!(
            parse_rfc3339_ms("  2019-04-04 16:23:00.325010\n"),
            parse_rfc3339_ms("2019-04-04T16:23:00.325Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2016-12-31T23:59:60Z"),
            parse_rfc3339_ms("2017-01-01T00:00:00Z")
        );
    }

    #[test]
    fn impossible_dates_offsets_and_junk_are_errors() {
        for bad in [
            "2026-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01T08:60:00Z",
            "2026-11-01T08:15:61Z",
            "2026-11-01T08:15:30+99:99",
            "2026-11-01T08:15:30+24:00",
            "2026-11-01T08:15:30+01:60",
            "2026-11-01T08:15:30.Z",
            "2026-11-01T08:15:30.",
            "2026-11-01T00:00:00Zjunk",
            "2026-11-01T00:00:00+1",
            "2026-11-01",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        assert!(parse_rfc3339_ms("2000-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn formatting_round_trips() {
        for text in [
            "1970-01-01T00:00:22.335Z",
            "2024-02-29T23:59:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "2026-11-01T08:15:30.123Z",
        ] {
            assert_eq!(format_rfc3339_ms(parse_rfc3339_ms(text).unwrap()), text);
        }
        assert_eq!(
            format_minutes(parse_rfc3339_ms("2024-02-29T23:59:00Z").unwrap()),
            "2024-02-29 23:59"
        );
        // 0000-01-01, 0000-03-01, the epoch and its eve, 9999-12-31.
        for day in [-719_528, -719_468, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(day);
            let [y, m, d] = [y, m, d].map(|v| u32::try_from(v).unwrap());
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn epoch_numbers_are_seconds_or_milliseconds() {
        assert_eq!(epoch_number_ms(1_793_520_930.0), Some(1_793_520_930_000));
        assert_eq!(epoch_number_ms(1_331_901_000.123), Some(1_331_901_000_123));
        assert_eq!(
            epoch_number_ms(1_793_520_930_123.0),
            Some(1_793_520_930_123)
        );
        assert_eq!(epoch_number_ms(-5.0), None);
        assert_eq!(epoch_number_ms(f64::NAN), None);
        assert_eq!(epoch_number_ms(1e16), None);
    }
}
