//! Per-alert accounting: which events a detector flagged become alerts (one per detector, key and
//! bucket), which episodes they caught and how fast, and how many alerts were false; plus the two
//! simple rules a team would otherwise write, run on the same events.

use std::collections::{BTreeMap, HashMap};

/// An attack episode's id (its events carry it).
pub type EpisodeId = u16;

/// One event as one detector judged it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// The value the detector keys on (interned): a country, a destination IP.
    pub key: u32,
    /// The detector's bucket of the event (any number that is equal within one bucket).
    pub bucket: i64,
    /// Whether the detector flagged the event.
    pub flagged: bool,
    /// The episode the event belongs to, if it is an attack event.
    pub episode: Option<EpisodeId>,
    /// The detector's score of the event, when it has scores.
    pub score: Option<f64>,
}

/// One alert: the first flagged event of a key in a bucket, and the flagged events it covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alert {
    /// Key of the alert.
    pub key: u32,
    /// Bucket of the alert.
    pub bucket: i64,
    /// Time of the first flagged event.
    pub time_ms: i64,
    /// Flagged events in the group (the alert and its followers).
    pub events: u32,
    /// The episode of the first flagged attack event in the group: the alert is about that
    /// episode. `None`: every flagged event of the group is benign, a false alert.
    pub episode: Option<EpisodeId>,
}

/// Groups flagged events into alerts, one per key and bucket, in time order of their first event.
pub fn alerts(decisions: &[Decision]) -> Vec<Alert> {
    let mut index: HashMap<(u32, i64), usize> = HashMap::new();
    let mut out: Vec<Alert> = Vec::new();
    for d in decisions.iter().filter(|d| d.flagged) {
        match index.get(&(d.key, d.bucket)) {
            Some(&i) => {
                let a = &mut out[i];
                a.events += 1;
                if a.episode.is_none() {
                    a.episode = d.episode;
                }
            }
            None => {
                index.insert((d.key, d.bucket), out.len());
                out.push(Alert {
                    key: d.key,
                    bucket: d.bucket,
                    time_ms: d.time_ms,
                    events: 1,
                    episode: d.episode,
                });
            }
        }
    }
    out
}

/// How a detector did on one episode.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EpisodeResult {
    /// Time of the first flagged event of the episode.
    pub first_flag_ms: Option<i64>,
    /// Highest score the detector gave an event of the episode (detectors with scores).
    pub max_score: Option<f64>,
}

/// Per episode: when it was first flagged and its highest score.
pub fn episodes(decisions: &[Decision]) -> BTreeMap<EpisodeId, EpisodeResult> {
    let mut out: BTreeMap<EpisodeId, EpisodeResult> = BTreeMap::new();
    for d in decisions {
        let Some(ep) = d.episode else {
            continue;
        };
        let r = out.entry(ep).or_default();
        if d.flagged && r.first_flag_ms.is_none_or(|t| d.time_ms < t) {
            r.first_flag_ms = Some(d.time_ms);
        }
        if let Some(s) = d.score {
            r.max_score = Some(r.max_score.map_or(s, |m: f64| m.max(s)));
        }
    }
    out
}

/// False alerts (no attack event in the group) at or after `from_ms`.
pub fn false_alerts(alerts: &[Alert], from_ms: i64) -> usize {
    alerts
        .iter()
        .filter(|a| a.episode.is_none() && a.time_ms >= from_ms)
        .count()
}

/// An event as a simple rule reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// The value (interned).
    pub key: u32,
    /// The number summed by a sum rule (bytes).
    pub value: f64,
    /// The episode of an attack event.
    pub episode: Option<EpisodeId>,
}

/// "A value not seen in the last `window_ms`" (Elastic's *new terms* rule): flags the first event
/// of such a value, from `warmup_end_ms` on (earlier events only build history). Events must be
/// in time order. Buckets are `bucket_ms` long, so alerts group as the model's do.
pub fn new_value_rule(
    events: &[Seen],
    window_ms: i64,
    warmup_end_ms: i64,
    bucket_ms: i64,
) -> Vec<Decision> {
    let mut last_seen: HashMap<u32, i64> = HashMap::new();
    events
        .iter()
        .map(|e| {
            let new = last_seen
                .get(&e.key)
                .is_none_or(|&t| e.time_ms - t > window_ms);
            last_seen.insert(e.key, e.time_ms);
            Decision {
                time_ms: e.time_ms,
                key: e.key,
                bucket: e.time_ms.div_euclid(bucket_ms),
                flagged: new && e.time_ms >= warmup_end_ms,
                episode: e.episode,
                score: None,
            }
        })
        .collect()
}

/// "At least `threshold` summed per key per `bucket_ms` bucket": flags the event that takes the
/// sum to the threshold and every later one of that key in that bucket, from `warmup_end_ms` on.
pub fn fixed_sum_rule(
    events: &[Seen],
    bucket_ms: i64,
    threshold: f64,
    warmup_end_ms: i64,
) -> Vec<Decision> {
    let mut sums: HashMap<(u32, i64), f64> = HashMap::new();
    events
        .iter()
        .map(|e| {
            let bucket = e.time_ms.div_euclid(bucket_ms);
            let sum = sums.entry((e.key, bucket)).or_default();
            *sum += e.value;
            Decision {
                time_ms: e.time_ms,
                key: e.key,
                bucket,
                flagged: *sum >= threshold && e.time_ms >= warmup_end_ms,
                episode: e.episode,
                score: None,
            }
        })
        .collect()
}

/// Strings to small numbers, so decisions are plain data.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    /// The number of `text`, assigned on first sight.
    pub fn id(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(text.to_owned(), id);
        self.names.push(text.to_owned());
        id
    }

    /// The text of a number.
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    /// Every text and its number.
    pub fn names(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ids.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const DAY: i64 = 86_400_000;

    fn d(time_ms: i64, key: u32, bucket: i64, flagged: bool, episode: Option<u16>) -> Decision {
        Decision {
            time_ms,
            key,
            bucket,
            flagged,
            episode,
            score: Some(if flagged { 90.0 } else { 10.0 }),
        }
    }

    #[test]
    fn one_alert_per_key_and_bucket_and_an_attack_anywhere_in_it_claims_it() {
        let ds = [
            d(0, 1, 0, true, None),     // alert: key 1, bucket 0 (benign so far)
            d(1, 1, 0, true, Some(7)),  // follower, attack: the alert is about episode 7
            d(2, 2, 0, true, None),     // alert: key 2, bucket 0 (false)
            d(3, 1, 1, false, Some(7)), // not flagged
            d(4, 1, 1, true, Some(7)),  // alert: key 1, bucket 1
            d(5, 2, 0, true, None),     // follower
        ];
        let a = alerts(&ds);
        assert_eq!(a.len(), 3);
        assert_eq!((a[0].events, a[0].episode), (2, Some(7)));
        assert_eq!((a[1].key, a[1].events, a[1].episode), (2, 2, None));
        assert_eq!((a[2].bucket, a[2].time_ms), (1, 4));
        assert_eq!(false_alerts(&a, 0), 1);
        assert_eq!(false_alerts(&a, 3), 0);
        let e = episodes(&ds);
        assert_eq!(e[&7].first_flag_ms, Some(1));
        assert_eq!(e[&7].max_score, Some(90.0));
    }

    #[test]
    fn episode_never_flagged_has_its_best_score_and_no_time() {
        let ds = [d(0, 1, 0, false, Some(3)), d(1, 1, 0, false, Some(3))];
        let e = episodes(&ds);
        assert_eq!(e[&3].first_flag_ms, None);
        assert_eq!(e[&3].max_score, Some(10.0));
        assert!(alerts(&ds).is_empty());
    }

    fn seen(time_ms: i64, key: u32, value: f64) -> Seen {
        Seen {
            time_ms,
            key,
            value,
            episode: None,
        }
    }

    #[test]
    fn new_value_rule_flags_first_sight_and_return_after_the_window_only() {
        let ev = [
            seen(0, 1, 0.0),                 // warm-up
            seen(DAY, 2, 0.0),               // new after warm-up: flagged
            seen(DAY + MIN, 2, 0.0),         // seen a minute ago
            seen(2 * DAY, 1, 0.0),           // seen 2 days ago
            seen(9 * DAY + MIN, 2, 0.0),     // 8 days later: new again
            seen(9 * DAY + 2 * MIN, 2, 0.0), // and then known
        ];
        let flagged: Vec<bool> = new_value_rule(&ev, 7 * DAY, DAY, 15 * MIN)
            .iter()
            .map(|d| d.flagged)
            .collect();
        assert_eq!(flagged, [false, true, false, false, true, false]);
    }

    #[test]
    fn fixed_sum_rule_flags_from_the_crossing_event_within_its_bucket() {
        let h3 = 3 * 3600 * 1000;
        let ev = [
            seen(0, 1, 6e6),
            seen(MIN, 1, 6e6),     // 12 MB: crosses 10 MB
            seen(2 * MIN, 1, 1.0), // still over in the bucket
            seen(2 * MIN, 2, 9e6), // another key
            seen(h3, 1, 6e6),      // next bucket starts from 0
        ];
        let ds = fixed_sum_rule(&ev, h3, 10e6, 0);
        let flagged: Vec<bool> = ds.iter().map(|d| d.flagged).collect();
        assert_eq!(flagged, [false, true, true, false, false]);
        assert_eq!(alerts(&ds).len(), 1);
        // Nothing is flagged during warm-up, though the sums count.
        assert!(fixed_sum_rule(&ev, h3, 10e6, MIN + 1)[1..2]
            .iter()
            .all(|d| !d.flagged));
    }
}
