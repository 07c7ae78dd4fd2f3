//! Alert suppression: which flagged events are alerts and which are followers of one.
//!
//! As Elastic Security's rules suppress alerts, a rule raises **one alert per key and bucket**
//! by default: the first flagged event of an episode is the alert (`event.kind: alert`, the rule
//! fields, `egresswatch.alert.id`); the later flagged events of the same episode keep their
//! `egresswatch` object with `egresswatch.alert.id` naming the alert they belong to,
//! `egresswatch.alert.suppressed: true` and `egresswatch.alert.count` (events of the episode so
//! far, this one included), but are not new alerts. The *key* is the job's `by`, `over` and
//! `partition` values on the event (the country; the destination IP), as Elastic's job writes
//! one anomaly record per value and bucket.
//!
//! Per rule (`actions.*.suppress`): `bucket` (the default: an episode is the key's flagged
//! events in one bucket of the job), a window (`"30m"`, `"2h"`, `"1d"`, or seconds: an episode
//! runs that long from its alert's event time), or `off` (every flagged event is an alert).
//!
//! The alert id is 16 hex digits derived from the rule, the key and the episode's start, so the
//! same episode gets the same id after a restart (a SIEM can use it as the document id) and
//! episodes of other rules or keys never share one. An event older than the key's current
//! episode (a late event) is an alert of its own past episode and leaves the current one alone.
//! Memory is bounded: at most [`MAX_EPISODES`] open episodes per rule; ended ones go first, then
//! the oldest half.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

/// Open episodes kept per rule.
pub const MAX_EPISODES: usize = 10_000;
/// Longest window accepted (a week).
const MAX_WINDOW_SECS: u64 = 7 * 86_400;

/// How a rule groups its flagged events into alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suppress {
    /// One alert per key and bucket of the job (the default).
    #[default]
    Bucket,
    /// One alert per key and window of this many seconds from the alert's event time.
    Window(u64),
    /// Every flagged event is an alert.
    Off,
}

impl Suppress {
    /// Parses `bucket`, `off`, or a duration: whole seconds, or a number with `s`, `m`, `h` or
    /// `d` (at most a week).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "bucket" => return Ok(Suppress::Bucket),
            "off" => return Ok(Suppress::Off),
            _ => {}
        }
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => text.split_at(i),
            None => (text, "s"),
        };
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        let secs = digits
            .parse::<u64>()
            .ok()
            .filter(|_| scale > 0)
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| {
                format!("`{text}` is not `bucket`, `off` or a duration such as 30m, 2h, 1d")
            })?;
        if secs == 0 || secs > MAX_WINDOW_SECS {
            return Err(format!(
                "a suppression window must be from 1s to 7d, got `{text}`"
            ));
        }
        Ok(Suppress::Window(secs))
    }
}

impl<'de> Deserialize<'de> for Suppress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Suppress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`bucket`, `off`, or a duration such as 30m, 2h, 1d or seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Suppress, E> {
                Suppress::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Suppress, E> {
                Suppress::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Suppress, E> {
                // YAML's `off` arrives as `false` once converted to JSON.
                if v {
                    Err(E::custom(
                        "`true` is not a suppression; use `bucket` or a window",
                    ))
                } else {
                    Ok(Suppress::Off)
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Where a flagged event stands in its rule's alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRef {
    /// The alert's id (the event's own when it is the alert).
    pub id: u64,
    /// Flagged events of the episode so far, this one included (1 for the alert).
    pub count: u64,
    /// True for a follower: the event belongs to the alert `id` and is not a new alert.
    pub suppressed: bool,
}

impl AlertRef {
    /// The id as written on events: 16 lowercase hex digits.
    pub fn id_text(&self) -> String {
        format!("{:016x}", self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Episode {
    id: u64,
    start_ms: i64,
    end_ms: i64,
    count: u64,
}

/// One rule's open episodes as saved in the detector's state (a restart must not raise a
/// second alert for an episode already alerted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedEpisodes {
    open: Vec<(u64, Episode)>,
    raised: u64,
}

/// One rule's open episodes.
#[derive(Debug, Clone)]
pub struct Episodes {
    mode: Suppress,
    /// The rule's part of every key and id.
    salt: u64,
    open: HashMap<u64, Episode>,
    /// Alerts raised with suppression off (keeps their ids distinct).
    raised: u64,
}

impl Episodes {
    /// The episodes of the rule `rule_id`, grouped as `mode` says.
    pub fn new(rule_id: &str, mode: Suppress) -> Self {
        Episodes {
            mode,
            salt: hash(0, &[rule_id.as_bytes()]),
            open: HashMap::new(),
            raised: 0,
        }
    }

    /// Places a flagged event: `key` its job's values (by, over, partition), `time_ms` its event
    /// time, `bucket_start_ms` / `bucket_span_ms` its job bucket.
    pub fn place(
        &mut self,
        key: &[Option<&str>],
        time_ms: i64,
        bucket_start_ms: i64,
        bucket_span_ms: i64,
    ) -> AlertRef {
        let parts: Vec<&[u8]> = key
            .iter()
            .map(|p| p.map_or(&[0xfe_u8][..], str::as_bytes))
            .collect();
        let key = hash(self.salt, &parts);
        let (start_ms, end_ms) = match self.mode {
            Suppress::Off => {
                self.raised += 1;
                let id = hash(key, &[&time_ms.to_le_bytes(), &self.raised.to_le_bytes()]);
                return AlertRef {
                    id,
                    count: 1,
                    suppressed: false,
                };
            }
            Suppress::Bucket => (
                bucket_start_ms,
                bucket_start_ms.saturating_add(bucket_span_ms),
            ),
            Suppress::Window(secs) => {
                let w = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                (time_ms, time_ms.saturating_add(w))
            }
        };
        let at = match self.mode {
            Suppress::Bucket => bucket_start_ms,
            _ => time_ms,
        };
        if let Some(e) = self.open.get_mut(&key) {
            if at >= e.start_ms && at < e.end_ms {
                e.count += 1;
                return AlertRef {
                    id: e.id,
                    count: e.count,
                    suppressed: true,
                };
            }
            if at < e.start_ms {
                // A late event of an earlier episode: its own alert; the current one stays.
                return AlertRef {
                    id: hash(key, &[&start_ms.to_le_bytes()]),
                    count: 1,
                    suppressed: false,
                };
            }
        } else if self.open.len() >= MAX_EPISODES {
            self.shed(at);
        }
        let id = hash(key, &[&start_ms.to_le_bytes()]);
        self.open.insert(
            key,
            Episode {
                id,
                start_ms,
                end_ms,
                count: 1,
            },
        );
        AlertRef {
            id,
            count: 1,
            suppressed: false,
        }
    }

    /// The open episodes, to save.
    pub fn save(&self) -> SavedEpisodes {
        let mut open: Vec<(u64, Episode)> = self.open.iter().map(|(k, e)| (*k, *e)).collect();
        open.sort_unstable_by_key(|(k, _)| *k);
        SavedEpisodes {
            open,
            raised: self.raised,
        }
    }

    /// Replaces the open episodes with saved ones, each checked first (nothing changes on
    /// error): at most [`MAX_EPISODES`], each with a count of at least 1 and a start before its
    /// end.
    pub fn restore(&mut self, saved: SavedEpisodes) -> Result<(), String> {
        if saved.open.len() > MAX_EPISODES {
            return Err(format!(
                "{} open episodes, more than {MAX_EPISODES}",
                saved.open.len()
            ));
        }
        if let Some((_, e)) = saved
            .open
            .iter()
            .find(|(_, e)| e.count == 0 || e.start_ms >= e.end_ms)
        {
            return Err(format!(
                "an episode from {} to {} with {} events is out of range",
                e.start_ms, e.end_ms, e.count
            ));
        }
        self.open = saved.open.into_iter().collect();
        self.raised = saved.raised;
        Ok(())
    }

    /// Makes room: drops ended episodes, then the older half of the rest.
    fn shed(&mut self, now_ms: i64) {
        self.open.retain(|_, e| e.end_ms > now_ms);
        if self.open.len() >= MAX_EPISODES {
            let mut starts: Vec<i64> = self.open.values().map(|e| e.start_ms).collect();
            let mid = starts.len() / 2;
            let (_, &mut cut, _) = starts.select_nth_unstable(mid);
            self.open.retain(|_, e| e.start_ms > cut);
        }
    }

    /// Open episodes held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

/// SipHash-1-3 of byte strings, each followed by a separator, keyed by `seed`.
fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher13::new_with_keys(seed, 0x616c_6572_7469_6421);
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: i64 = 900_000;
    const B: i64 = 1_700_000_100_000 / SPAN * SPAN;

    #[test]
    fn the_first_event_of_a_bucket_alerts_and_the_rest_reference_it() {
        let mut e = Episodes::new("rule-1", Suppress::Bucket);
        let key = [Some("Algeria"), None, None];
        let first = e.place(&key, B + 5_000, B, SPAN);
        assert!(!first.suppressed);
        assert_eq!(first.count, 1);
        for n in 2..=237 {
            let f = e.place(&key, B + 5_000 + n, B, SPAN);
            assert!(f.suppressed);
            assert_eq!((f.id, f.count), (first.id, n as u64));
        }
        // Another key, or the next bucket, is a new alert.
        let other = e.place(&[Some("Iran"), None, None], B + 6_000, B, SPAN);
        assert!(!other.suppressed && other.id != first.id);
        let next = e.place(&key, B + SPAN + 1, B + SPAN, SPAN);
        assert!(!next.suppressed && next.id != first.id);
        // A late event of the first bucket is not a follower of the second.
        let late = e.place(&key, B + 10, B, SPAN);
        assert!(!late.suppressed);
        assert_eq!(late.id, first.id, "the same episode keeps its id");
        assert!(e.place(&key, B + SPAN + 2, B + SPAN, SPAN).suppressed);
        // Ids depend on the rule: another rule's episode is another alert.
        let mut other_rule = Episodes::new("rule-2", Suppress::Bucket);
        assert_ne!(other_rule.place(&key, B + 5_000, B, SPAN).id, first.id);
        assert_eq!(first.id_text().len(), 16);
    }

    #[test]
    fn a_window_spans_buckets_and_off_makes_every_event_an_alert() {
        let mut e = Episodes::new("r", Suppress::parse("1h").unwrap());
        let key = [Some("203.0.113.7"), None, None];
        let first = e.place(&key, B, B, SPAN);
        let in_window = e.place(&key, B + 3_599_000, B + 3 * SPAN, SPAN);
        assert!(in_window.suppressed && in_window.id == first.id && in_window.count == 2);
        let after = e.place(&key, B + 3_600_000, B + 4 * SPAN, SPAN);
        assert!(!after.suppressed && after.id != first.id);
        let mut off = Episodes::new("r", Suppress::Off);
        let a = off.place(&key, B, B, SPAN);
        let b = off.place(&key, B, B, SPAN);
        assert!(!a.suppressed && !b.suppressed && a.id != b.id);
    }

    #[test]
    fn settings_parse_and_bad_ones_say_why() {
        assert_eq!(Suppress::parse("bucket"), Ok(Suppress::Bucket));
        assert_eq!(Suppress::parse("off"), Ok(Suppress::Off));
        assert_eq!(Suppress::parse("30m"), Ok(Suppress::Window(1800)));
        assert_eq!(Suppress::parse("2h"), Ok(Suppress::Window(7200)));
        assert_eq!(Suppress::parse("90"), Ok(Suppress::Window(90)));
        assert!(Suppress::parse("0s").unwrap_err().contains("1s to 7d"));
        assert!(Suppress::parse("8d").unwrap_err().contains("1s to 7d"));
        assert!(Suppress::parse("soon").unwrap_err().contains("duration"));
        let v: Suppress = serde_json::from_str("false").unwrap();
        assert_eq!(v, Suppress::Off);
        let v: Suppress = serde_json::from_str("600").unwrap();
        assert_eq!(v, Suppress::Window(600));
    }

    #[test]
    fn saved_episodes_resume_and_bad_ones_are_refused() {
        let mut e = Episodes::new("r", Suppress::Bucket);
        let key = [Some("Algeria"), None, None];
        let first = e.place(&key, B + 1, B, SPAN);
        let mut resumed = Episodes::new("r", Suppress::Bucket);
        resumed.restore(e.save()).unwrap();
        let next = resumed.place(&key, B + 2, B, SPAN);
        assert!(next.suppressed && next.id == first.id && next.count == 2);
        let mut bad = e.save();
        bad.open[0].1.count = 0;
        assert!(resumed.restore(bad).unwrap_err().contains("out of range"));
        let mut bad = e.save();
        bad.open[0].1.end_ms = bad.open[0].1.start_ms;
        assert!(resumed.restore(bad).is_err());
        assert_eq!(resumed.len(), 1, "a refused state changes nothing");
    }

    #[test]
    fn open_episodes_stay_bounded() {
        let mut e = Episodes::new("r", Suppress::Bucket);
        for i in 0..(3 * MAX_EPISODES as i64) {
            let key = format!("10.0.{}.{}", i / 256, i % 256);
            e.place(&[Some(key.as_str())], B + i, B, SPAN);
        }
        assert!(e.len() <= MAX_EPISODES, "{}", e.len());
    }
}
