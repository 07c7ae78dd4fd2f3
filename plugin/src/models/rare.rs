//! `rare`: how unusual it is for a value to appear in a bucket at all.
//!
//! Reproduces Elastic's `rare` function `by` a field (e.g. `destination.geo.country_name`, 15m
//! buckets), optionally `over` a population field and `partition`ed.
//!
//! # What it learns
//! Per partition: the decayed number of past buckets with any data (`T`), and the decayed number
//! of buckets in which a value never seen before appeared after learning (`D`, at most one per
//! bucket, so a spray of new values in one bucket counts once). Per value: the decayed number of
//! buckets it appeared in (`c`), counted once per bucket however many events carry it. With
//! `over`, the unit is the entity-bucket: `T` counts (entity, bucket) pairs with data and `c` the
//! entity-buckets in which the value appeared, i.e. rarity across the population.
//!
//! # Score
//! `p = (c + 1/2 + D) / (T + 1)`, scored by [`score_from_log10_p`] on `-log10 p`. `c` and `T`
//! exclude the event's own bucket, so every event of a value in one bucket scores alike.
//! - `c + 1/2` over `T + 1` is the Jeffreys-smoothed share of buckets with the value: a value never
//!   seen is not impossible, just `1/(2(T+1))` likely.
//! - `+ D` compares against the other values: where new values turn up often, a new value is less
//!   surprising (Good-Turing's "the chance of something new is the rate of new things seen").
//!   `D` fades with its own, shorter half-life (`novelty_half_life_buckets`, one day of 15m
//!   buckets): the countries a network discovers while its baseline forms stop excusing a new
//!   one a few days later, while the baseline itself (`c`, `T`) is kept for weeks.
//!
//! Calibration with the default half-life of 2,880 buckets (30 days of 15m buckets; after 30 days
//! of data `T` is ~2,078, settling at ~4,156): never seen after 30 buckets (tested) ->
//! p = 0.016, score 76; never seen after 30 days (tested) -> p = 2.4e-4, score 93.7; a value in 1 bucket of
//! 10 or more -> under 20; a value in every bucket -> 0. Adaptation: a new value that then appears
//! in every bucket drops below 75 once `c + 1/2 + D >= 0.02 (T + 1)`: after 30 days of steady
//! history that is after 41 buckets with it, i.e. from its 42nd bucket (~10 h of 15m buckets).
//!
//! # Configuration
//! `bucket_span_secs` (900), `learning_buckets` (20), `half_life_buckets` (2880),
//! `novelty_half_life_buckets` (96),
//! `lateness_buckets` (1), `max_entities` (100,000 tracked values), `max_partitions` (10,000),
//! `hash_seed` (0). See [`RareConfig`].
//!
//! # On an event
//! A [`Scored`] with [`Detail::Rare`]: `buckets_with_value`, `buckets_total`, `first_seen_ms`; the
//! reason reads "destination country North Korea seen in 0 of 2,880 15m buckets over
//! 30 days".
//!
//! # Example
//! ```
//! # use egresswatch_plugin::models::{Model, Observation, RareConfig};
//! let mut rare = RareConfig::default().build().unwrap();
//! let obs = Observation { time_ms: 1_700_000_000_000, by: Some("France"), over: None,
//!                         partition: None, value: 0.0 };
//! let scored = rare.observe(&obs).unwrap();
//! assert!(scored.learning); // nothing is flagged before 20 buckets of history
//! ```

use serde::{Deserialize, Serialize};

use super::engine::{
    decode_state, encode_state, map_bytes, mix, score_from_log10_p, Clock, Decay, Decayed,
    KeyHasher, KeyMap, KeyTable, Kind, ModelConfig, Slot, Tracked,
};
use super::{ConfigProblem, Detail, Model, ModelError, ModelStatus, Observation, Scored};

const SALT_TOTAL: u64 = 0x746f_7461_6c00_0001;
const SALT_BUCKET: u64 = 0x6275_636b_6574_0002;

/// Configuration of a `rare` model.
#[derive(Debug, Clone, PartialEq)]
pub struct RareConfig {
    /// Time grid, learning, forgetting and memory, as for every model.
    pub model: ModelConfig,
    /// Half-life, in buckets, of the rate at which never-seen values turn up (`D`). Shorter than
    /// `half_life_buckets`, so that the burst of discoveries while a baseline forms is forgotten
    /// within days while the baseline itself is kept for weeks.
    pub novelty_half_life_buckets: f64,
}

impl Default for RareConfig {
    fn default() -> Self {
        RareConfig {
            model: ModelConfig {
                bucket_span_secs: 900,
                learning_buckets: 20,
                half_life_buckets: 2880.0,
                lateness_buckets: 1,
                max_entities: 100_000,
                max_partitions: 10_000,
                hash_seed: 0,
            },
            novelty_half_life_buckets: 96.0,
        }
    }
}

/// The registry's entry for `rare` (see [`super::REGISTRY`]).
pub const REGISTRATION: super::Registration = super::Registration {
    function: crate::catalog::Function::Rare,
    defaults: || RareConfig::default().model,
    build: |model| {
        let config = RareConfig {
            model,
            ..RareConfig::default()
        };
        Ok(Box::new(config.build()?))
    },
};

impl RareConfig {
    /// Checks every key; reports all problems at once.
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut problems = self.model.problems();
        if !(self.novelty_half_life_buckets >= 1.0 && self.novelty_half_life_buckets.is_finite()) {
            problems.push(ConfigProblem {
                field: "novelty_half_life_buckets",
                message: "must be a finite number of at least 1".to_string(),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Config(problems))
        }
    }

    /// Builds the model.
    pub fn build(&self) -> Result<Rare, ModelError> {
        self.validate()?;
        Ok(Rare {
            decay: Decay::new(self.model.half_life_buckets),
            novelty_decay: Decay::new(self.novelty_half_life_buckets),
            state: RareState::new(self),
            config: self.clone(),
        })
    }
}

/// Per-value history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ValueEntry {
    /// Decayed buckets with the value, valid at `at`.
    count: f32,
    at: i32,
    /// Buckets with the value, not decayed.
    raw: u32,
    first: i32,
    last: i32,
}

impl ValueEntry {
    fn decayed(&self, now: i32, decay: &Decay) -> f64 {
        f64::from(self.count) * decay.factor(i64::from(now) - i64::from(self.at))
    }
}

impl Tracked for ValueEntry {
    fn weight(&self, now: i32, decay: &Decay) -> f64 {
        self.decayed(now, decay)
    }
    fn last_bucket(&self) -> i32 {
        self.last
    }
    fn promotable(&self) -> bool {
        self.raw >= 2
    }
}

/// Keys already counted in one open bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OpenBucket {
    bucket: i32,
    seen: KeyMap<()>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Partition {
    /// Decayed units (buckets, or entity-buckets with `over`) with data.
    total: Decayed,
    raw_total: u64,
    /// Buckets with data, not decayed (learning progress).
    buckets: u64,
    /// Decayed buckets in which a new value appeared after learning.
    novel: Decayed,
    novel_last: Option<i32>,
    /// Decayed count of the most common value (for `typical`).
    top: Decayed,
    first_bucket: i32,
    open: Vec<OpenBucket>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RareState {
    bucket_span_ms: i64,
    hasher: KeyHasher,
    clock: Clock,
    partitions: KeyMap<Partition>,
    values: KeyTable<ValueEntry>,
    open_keys: usize,
    far_late: u64,
    unscored: u64,
}

impl RareState {
    fn new(c: &RareConfig) -> Self {
        RareState {
            bucket_span_ms: i64::from(c.model.bucket_span_secs) * 1000,
            hasher: KeyHasher::new(c.model.hash_seed),
            clock: Clock::new(c.model.bucket_span_secs, c.model.lateness_buckets),
            partitions: KeyMap::default(),
            values: KeyTable::new(c.model.max_entities),
            open_keys: 0,
            far_late: 0,
            unscored: 0,
        }
    }
}

/// A running `rare` model (built from [`RareConfig`]).
#[derive(Debug, Clone)]
pub struct Rare {
    config: RareConfig,
    decay: Decay,
    novelty_decay: Decay,
    state: RareState,
}

impl Rare {
    /// The configuration the model was built from.
    pub fn config(&self) -> &RareConfig {
        &self.config
    }

    fn close_before(&mut self, oldest_open: i32) {
        let st = &mut self.state;
        let mut removed = 0;
        for p in st.partitions.values_mut() {
            p.open.retain(|o| {
                let keep = o.bucket >= oldest_open;
                if !keep {
                    removed += o.seen.len();
                }
                keep
            });
        }
        st.open_keys = st.open_keys.saturating_sub(removed);
        if let Some(h) = st.clock.head() {
            st.values.maintain(h, &self.decay);
        }
    }
}

/// Inserts `key` into the open set unless the job-wide cap is reached. True if it was inserted.
fn mark(open: &mut OpenBucket, open_keys: &mut usize, cap: usize, key: u64) -> bool {
    if *open_keys >= cap {
        return false;
    }
    open.seen.insert(key, ());
    *open_keys += 1;
    true
}

impl Model for Rare {
    fn observe(&mut self, obs: &Observation<'_>) -> Option<Scored> {
        let Some(value) = obs.by else {
            self.state.unscored += 1;
            return None;
        };
        let Some((slot, close)) = self.state.clock.place(obs.time_ms) else {
            self.state.unscored += 1;
            return None;
        };
        if let Some(oldest_open) = close {
            self.close_before(oldest_open);
        }
        let decay = self.decay;
        let novelty_decay = self.novelty_decay;
        let learning_buckets = u64::from(self.config.model.learning_buckets);
        let cap = self.config.model.max_entities;
        let st = &mut self.state;
        let now = st.clock.head()?;
        let part_key = st.hasher.key(&[obs.partition]);
        let value_key = st.hasher.key(&[obs.partition, Some(value)]);
        let over_key = obs.over.map(|o| st.hasher.key(&[Some(o)]));
        let bucket_key = part_key ^ SALT_BUCKET;
        let total_key = over_key.map_or(bucket_key, |o| mix(part_key ^ SALT_TOTAL, o));
        let unit_key = over_key.map_or(value_key, |o| mix(value_key, o));

        if !st.partitions.contains_key(&part_key) {
            if st.partitions.len() >= self.config.model.max_partitions {
                st.unscored += 1;
                return None;
            }
            let first_bucket = match slot {
                Slot::Open(b) | Slot::FarLate(b) => b,
            };
            st.partitions.insert(
                part_key,
                Partition {
                    first_bucket,
                    ..Partition::default()
                },
            );
        }
        let part = st.partitions.get_mut(&part_key)?;
        let (bucket, open_idx) = match slot {
            Slot::Open(b) => {
                let idx = match part.open.iter().position(|o| o.bucket == b) {
                    Some(i) => i,
                    None => {
                        part.open.push(OpenBucket {
                            bucket: b,
                            seen: KeyMap::default(),
                        });
                        part.open.len() - 1
                    }
                };
                (b, Some(idx))
            }
            Slot::FarLate(b) => {
                st.far_late += 1;
                (b, None)
            }
        };
        let age_w = decay.factor(i64::from(now) - i64::from(bucket));
        let (total_seen, bucket_seen, unit_seen) = match open_idx {
            Some(i) => {
                let seen = &part.open[i].seen;
                (
                    seen.contains_key(&total_key),
                    seen.contains_key(&bucket_key),
                    seen.contains_key(&unit_key),
                )
            }
            None => (false, false, false),
        };
        let entry = st.values.get(value_key).copied();
        // History, excluding this bucket's own contribution.
        let t_hist = (part.total.get(now, &decay) - if total_seen { age_w } else { 0.0 }).max(0.0);
        let raw_total_hist = part.raw_total - u64::from(total_seen);
        let buckets_hist = part.buckets - u64::from(bucket_seen);
        let c_hist = entry.map_or(0.0, |e| {
            (e.decayed(now, &decay) - if unit_seen { age_w } else { 0.0 }).max(0.0)
        });
        let raw_hist = entry.map_or(0, |e| u64::from(e.raw) - u64::from(unit_seen));
        let novel_hist = (part.novel.get(now, &novelty_decay)
            - if part.novel_last == Some(bucket) {
                novelty_decay.factor(i64::from(now) - i64::from(bucket))
            } else {
                0.0
            })
        .max(0.0);
        let p = ((c_hist + 0.5 + novel_hist) / (t_hist + 1.0)).min(1.0);
        let score = score_from_log10_p(-p.log10());
        let learning = buckets_hist < learning_buckets;
        let scored = Scored {
            score,
            learning,
            far_late: open_idx.is_none(),
            bucket_start_ms: st.clock.start_ms(bucket),
            bucket_span_ms: st.clock.span_ms(),
            actual: if t_hist > 0.0 { c_hist / t_hist } else { 0.0 },
            typical: if t_hist > 0.0 {
                (part.top.get(now, &decay) / t_hist).min(1.0)
            } else {
                0.0
            },
            detail: Detail::Rare {
                buckets_with_value: raw_hist,
                buckets_total: raw_total_hist,
                first_seen_ms: entry.map(|e| st.clock.start_ms(e.first)),
                history_start_ms: st.clock.start_ms(part.first_bucket),
                population: obs.over.is_some(),
            },
        };

        // Learn (open buckets only).
        let Some(i) = open_idx else {
            return Some(scored);
        };
        let open = &mut part.open[i];
        if !bucket_seen && mark(open, &mut st.open_keys, cap, bucket_key) {
            part.buckets += 1;
            part.first_bucket = part.first_bucket.min(bucket);
            if total_key == bucket_key {
                part.total.add(1.0, bucket, now, &decay);
                part.raw_total += 1;
            }
        }
        if total_key != bucket_key && !total_seen && mark(open, &mut st.open_keys, cap, total_key) {
            part.total.add(1.0, bucket, now, &decay);
            part.raw_total += 1;
        }
        if !unit_seen && mark(open, &mut st.open_keys, cap, unit_key) {
            if entry.is_none() && !learning && part.novel_last != Some(bucket) {
                part.novel.add(1.0, bucket, now, &novelty_decay);
                part.novel_last = Some(bucket);
            }
            let e = st.values.entry(value_key, now, &decay, || ValueEntry {
                count: 0.0,
                at: now,
                raw: 0,
                first: bucket,
                last: bucket,
            });
            let c = e.decayed(now, &decay) + age_w;
            e.count = c as f32;
            e.at = now;
            e.raw = e.raw.saturating_add(1);
            e.first = e.first.min(bucket);
            e.last = e.last.max(bucket);
            if c > part.top.get(now, &decay) {
                part.top = Decayed { value: c, at: now };
            }
        }
        Some(scored)
    }

    fn status(&self) -> ModelStatus {
        let st = &self.state;
        let buckets_seen = st.partitions.values().map(|p| p.buckets).max().unwrap_or(0);
        let open_bytes: usize = st
            .partitions
            .values()
            .flat_map(|p| p.open.iter())
            .map(|o| map_bytes(&o.seen))
            .sum();
        ModelStatus {
            learning: buckets_seen < u64::from(self.config.model.learning_buckets),
            buckets_seen,
            learning_buckets: u64::from(self.config.model.learning_buckets),
            partitions: st.partitions.len(),
            tracked_entities: st.values.established_len(),
            probationary_entities: st.values.probation_len(),
            approx_bytes: st.values.approx_bytes() + map_bytes(&st.partitions) + open_bytes,
            evictions: st.values.evictions(),
            far_late_events: st.far_late,
            unscored_events: st.unscored,
        }
    }

    fn save(&self) -> Result<Vec<u8>, ModelError> {
        encode_state(Kind::Rare, &self.state)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let mut state: RareState = decode_state(Kind::Rare, bytes)?;
        self.config.model.check_saved_span(state.bucket_span_ms)?;
        state.values.set_cap(self.config.model.max_entities);
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: i64 = 900_000;
    const T0: i64 = 1_700_000_000_000 / SPAN * SPAN;
    const BASE: [&str; 5] = [
        "France",
        "Germany",
        "United States",
        "Ireland",
        "Netherlands",
    ];

    fn at(bucket: i64, offset_ms: i64) -> i64 {
        T0 + bucket * SPAN + offset_ms
    }

    fn see(m: &mut Rare, bucket: i64, value: &str) -> Scored {
        let obs = Observation {
            time_ms: at(bucket, 1000),
            by: Some(value),
            over: None,
            partition: None,
            value: 0.0,
        };
        m.observe(&obs).expect("scored")
    }

    /// Every bucket: each baseline country a few times.
    fn baseline(m: &mut Rare, buckets: std::ops::Range<i64>) {
        for b in buckets {
            for c in BASE {
                for _ in 0..3 {
                    see(m, b, c);
                }
            }
        }
    }

    #[test]
    fn never_seen_country_is_critical_and_routine_is_low() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..30);
        let new = see(&mut m, 30, "North Korea");
        let routine = see(&mut m, 30, "France");
        println!(
            "after 30 buckets: new {:.1}, routine {:.1}",
            new.score, routine.score
        );
        assert!(!new.learning);
        assert!(new.score >= 75.0, "{}", new.score);
        assert!(routine.score < 25.0, "{}", routine.score);
        // Second event of the same value in the same bucket scores like the first.
        assert_eq!(see(&mut m, 30, "North Korea").score, new.score);
        assert_eq!(
            new.reason("destination country", "North Korea"),
            "destination country North Korea seen in 0 of 30 15m buckets over 7.5h"
        );
    }

    #[test]
    fn month_of_history_scores_about_95_then_adapts() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..2880);
        let first = see(&mut m, 2880, "North Korea");
        println!("0 of 2880: {:.1}", first.score);
        assert!(first.score >= 90.0, "{}", first.score);
        assert_eq!(
            first.reason("destination country", "North Korea"),
            "destination country North Korea seen in 0 of 2,880 15m buckets over 30 days"
        );
        assert_eq!(
            first.extra()[..2],
            [
                ("buckets_with_value", super::super::ExtraValue::Int(0)),
                ("buckets_total", super::super::ExtraValue::Int(2880)),
            ]
        );
        // A new partner country that keeps appearing every bucket.
        let mut below = None;
        for k in 0..200 {
            baseline(&mut m, 2880 + k..2881 + k);
            let s = see(&mut m, 2880 + k, "Portugal").score;
            if s < 75.0 {
                below = Some(k);
                break;
            }
        }
        println!("adaptation: below 75 after {below:?} buckets of history with the value");
        assert_eq!(below, Some(41));
    }

    #[test]
    fn nothing_flaggable_while_learning() {
        let mut m = RareConfig::default().build().unwrap();
        for b in 0..20 {
            baseline(&mut m, b..b + 1);
            let s = see(&mut m, b, &format!("new-{b}"));
            assert!(s.learning, "bucket {b}");
        }
        assert!(m.status().learning || m.status().buckets_seen == 20);
        assert!(!see(&mut m, 20, "Chad").learning);
    }

    #[test]
    fn late_event_within_lateness_lands_in_its_bucket() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..30);
        see(&mut m, 31, "France"); // head is now 31; bucket 30 is still open
        let late = see(&mut m, 30, "Chile");
        assert!(!late.far_late);
        assert_eq!(late.bucket_start_ms, at(30, 0));
        let later = see(&mut m, 32, "Chile");
        match later.detail {
            Detail::Rare {
                buckets_with_value,
                first_seen_ms,
                ..
            } => {
                assert_eq!(buckets_with_value, 1);
                assert_eq!(first_seen_ms, Some(at(30, 0)));
            }
            Detail::HighSum { .. } => unreachable!(),
        }
    }

    #[test]
    fn far_late_event_changes_nothing() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..30);
        see(&mut m, 40, "France");
        let mut twin = m.clone();
        let late = see(&mut m, 35, "Chile");
        assert!(late.far_late);
        assert!(late.score >= 75.0);
        for (b, v) in [(40, "Chile"), (41, "France"), (41, "Chile")] {
            assert_eq!(see(&mut m, b, v), see(&mut twin, b, v));
        }
        assert_eq!(m.status().far_late_events, 1);
    }

    #[test]
    fn save_load_round_trip_gives_identical_scores() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..25);
        see(&mut m, 24, "Chile");
        let bytes = m.save().unwrap();
        let mut restored = RareConfig::default().build().unwrap();
        restored.load(&bytes).unwrap();
        for (b, v) in [(24, "Chile"), (25, "Chile"), (25, "Peru"), (26, "France")] {
            assert_eq!(see(&mut m, b, v), see(&mut restored, b, v));
        }
        let mut other = RareConfig::default();
        other.model.bucket_span_secs = 3600;
        let mut wrong = other.build().unwrap();
        assert!(matches!(
            wrong.load(&bytes),
            Err(ModelError::Mismatch { .. })
        ));
        assert!(restored.load(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn memory_cap_holds_and_baseline_survives_a_spray() {
        let mut cfg = RareConfig::default();
        cfg.model.max_entities = 10_000;
        let mut m = cfg.build().unwrap();
        baseline(&mut m, 0..100);
        let mut name = String::new();
        for i in 0..1_000_000u32 {
            name.clear();
            use std::fmt::Write;
            let _ = write!(name, "spray-{i}");
            see(&mut m, 100, &name);
        }
        let st = m.status();
        println!("after 1M-value spray: {st:?}");
        assert!(st.tracked_entities + st.probationary_entities <= 10_000);
        baseline(&mut m, 101..102);
        for c in BASE {
            match see(&mut m, 101, c).detail {
                Detail::Rare {
                    buckets_with_value, ..
                } => assert_eq!(buckets_with_value, 100, "{c} lost its history"),
                Detail::HighSum { .. } => unreachable!(),
            }
        }
        assert!(see(&mut m, 101, "France").score < 25.0);
        let new = see(&mut m, 101, "North Korea").score;
        println!("new country after spray: {new:.1}");
        assert!(new >= 75.0);
    }

    #[test]
    fn population_and_partitions_are_separate() {
        let mut m = RareConfig::default().build().unwrap();
        for b in 0..40 {
            for host in ["a", "b", "c", "d"] {
                let obs = Observation {
                    time_ms: at(b, 0),
                    by: Some("France"),
                    over: Some(host),
                    partition: Some("site1"),
                    value: 0.0,
                };
                assert!(m.observe(&obs).is_some());
            }
        }
        let obs = |value, partition| Observation {
            time_ms: at(40, 0),
            by: Some(value),
            over: Some("a"),
            partition: Some(partition),
            value: 0.0,
        };
        assert!(m.observe(&obs("France", "site1")).unwrap().score < 25.0);
        let s = m.observe(&obs("Chile", "site1")).unwrap();
        assert!(s.score >= 75.0);
        assert!(s
            .reason("country", "Chile")
            .contains("0 of 160 15m entity-buckets"));
        // A new partition learns on its own.
        assert!(m.observe(&obs("France", "site2")).unwrap().learning);
        let mut bad = RareConfig::default();
        bad.model.bucket_span_secs = 1;
        bad.model.max_entities = 0;
        assert!(bad
            .validate()
            .is_err_and(|e| e.to_string().contains("bucket_span_secs")
                && e.to_string().contains("max_entities")));
    }
}
