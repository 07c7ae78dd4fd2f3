//! The generator's validated options and its calendar: timestamps written once per second,
//! weekdays, and the diurnal weight of each UTC hour.

use std::io;

use super::{GenerateArgs, Scenario};
use egresswatch_common::time::{DAY_MS, HOUR_MS};

/// Validated options.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) hosts: u32,
    pub(super) seed: u64,
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) rate: f64,
    pub(super) scenario: Scenario,
    pub(super) with_geo: bool,
}

impl Config {
    pub(super) fn new(args: &GenerateArgs) -> io::Result<Config> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if args.hosts == 0 {
            return Err(invalid("--hosts must be at least 1".into()));
        }
        if args.days == 0 {
            return Err(invalid("--days must be at least 1".into()));
        }
        let rate = args.events_per_host_per_hour;
        if !rate.is_finite() || rate < 0.0 {
            return Err(invalid(format!(
                "--events-per-host-per-hour must be a finite number >= 0, not {rate}"
            )));
        }
        let start = parse_rfc3339(&args.start).map_err(invalid)?;
        Ok(Config {
            hosts: args.hosts,
            seed: args.seed,
            start,
            end: start + i64::from(args.days) * DAY_MS,
            rate,
            scenario: args.scenario,
            with_geo: args.with_geo,
        })
    }

    pub(super) fn duration(&self) -> i64 {
        self.end - self.start
    }
}

/// Parses an RFC 3339 timestamp into Unix milliseconds, with a message for `--start`.
pub(super) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    egresswatch_common::time::parse_rfc3339_ms(s)
        .ok_or_else(|| format!("not an RFC 3339 timestamp: {s:?} (e.g. 2026-11-01T00:00:00Z)"))
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, caching the date and hour.
#[derive(Default)]
pub(super) struct TsCache {
    pub(super) hour: Option<i64>,
    pub(super) text: [u8; 24],
}

impl TsCache {
    pub(super) fn format(&mut self, ms: i64) -> &str {
        let hour = ms.div_euclid(HOUR_MS);
        if self.hour != Some(hour) {
            let (y, m, d) = egresswatch_common::time::civil_from_days(ms.div_euclid(DAY_MS));
            let hh = hour.rem_euclid(24);
            let head = format!("{y:04}-{m:02}-{d:02}T{hh:02}:00:00.000Z");
            self.text.copy_from_slice(&head.as_bytes()[..24]);
            self.hour = Some(hour);
        }
        let in_hour = ms.rem_euclid(HOUR_MS);
        let (mi, rest) = (in_hour / 60_000, in_hour % 60_000);
        let (ss, milli) = (rest / 1000, rest % 1000);
        let t = &mut self.text;
        t[14] = b'0' + (mi / 10) as u8;
        t[15] = b'0' + (mi % 10) as u8;
        t[17] = b'0' + (ss / 10) as u8;
        t[18] = b'0' + (ss % 10) as u8;
        t[20] = b'0' + (milli / 100) as u8;
        t[21] = b'0' + (milli / 10 % 10) as u8;
        t[22] = b'0' + (milli % 10) as u8;
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.text).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

/// Day of the week of a Unix millisecond time: 0 = Monday … 6 = Sunday.
pub(super) fn weekday(ms: i64) -> i64 {
    (ms.div_euclid(DAY_MS) + 3).rem_euclid(7)
}

/// Relative activity by UTC hour on a working day.
pub(super) const DIURNAL: [f64; 24] = [
    0.15, 0.12, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 1.4, 2.0, 2.1, 2.0, 1.5, 1.9, 2.0, 2.0, 1.8, 1.3,
    0.8, 0.5, 0.4, 0.35, 0.3, 0.2,
];
/// Weekend activity relative to a working day.
pub(super) const WEEKEND: f64 = 0.3;

/// The diurnal weight of the hour starting at `ms`, normalised to a weekly mean of 1.
pub(super) fn diurnal(ms: i64) -> f64 {
    let day_sum: f64 = DIURNAL.iter().sum();
    let week_mean = day_sum * (5.0 + 2.0 * WEEKEND) / 168.0;
    let h = ms.div_euclid(HOUR_MS).rem_euclid(24) as usize;
    let we = if weekday(ms) >= 5 { WEEKEND } else { 1.0 };
    DIURNAL[h] * we / week_mean
}

// ---------------------------------------------------------------------------------------------
