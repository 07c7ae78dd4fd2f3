//! `rare`: how unusual it is for a value to appear at all, and to keep appearing.
//!
//! Reproduces Elastic's `rare` function `by` a field (e.g. `destination.geo.country_name`, 15m
//! buckets), optionally `over` a population field and `partition`ed.
//!
//! # What it learns
//! Per partition: the decayed number of buckets with any data (`T`) and of days with data (`D`);
//! per day of the last week, how many of its buckets brought a never-seen value. Per value: the
//! decayed number of buckets (`c`) and of days (`n`) it appeared in, counted once per bucket or
//! day however many events carry it; its current *session* (a run of buckets with the value,
//! gaps of at most `session_gap_buckets`) and the longest session it had before (`L`). With
//! `over`, the unit is the entity-bucket: `T` counts (entity, bucket) pairs and `c` the
//! entity-buckets with the value, i.e. rarity across the population.
//!
//! # Score
//! The score of an event is [`score_from_log10_p`] of `-log10 p`, the smaller of two
//! probabilities. Every event of a value in one bucket scores alike.
//! - **Rarity and persistence**: `p = π · min(1, (L / k)^a)`. `π = (n + 1/2) / (D + 1)` is how
//!   likely the value is to show up on a day, from the days it did before today (how often, and
//!   through the decay, how long ago). `k` is the length of its current session in buckets and
//!   `L` (at least 1) its longest before: a session longer than any the value had is evidence of
//!   a new, persistent channel, with a Pareto tail of exponent `a` (`session_exponent`, 3). A
//!   value seen on one of five days that now shows up in 4 buckets in a row scores
//!   `0.3 · (1/4)^3`; one that often has long sessions does not. A session's persistence is
//!   reported once: from the bucket after the one whose score reached the rules' threshold
//!   ([`ModelConfig::alert_score`]), the rest of that session is scored by `π` alone, so a
//!   persistent value is one alert, not one per bucket. Sessions that began while the model was
//!   learning are not evidence.
//! - **Novelty** (a value never seen): `p = max(ν, 1/2 / (T + 1))`, where `ν` is the share of
//!   buckets that brought a never-seen value, per day, over the last 7 days before today
//!   (the lower median, so no single day, and nothing done today, moves it). A network that meets
//!   new values all the time (an internet-facing server) is not alarmed by one more; a quiet one
//!   is, after as little as 20 buckets of history. On the first day, before a whole day is
//!   history, `ν` is the share of the buckets since learning ended (everything is new while
//!   learning), before this one: a quiet new deployment flags a never-seen value once learning
//!   ends, but decoys touched that same first day do raise it (from the second day on they
//!   cannot).
//!
//! Nothing any other value does lowers a value's first probability below what its own history
//! and the partition's past days say: contacting decoy values first cannot hide the next one.
//!
//! Calibration (tests): a never-seen value after a month with no new values scores over 90; a
//! value seen in 4 consecutive buckets after one sighting days before scores over 75 at the 4th;
//! a value that returns once every few days for a bucket or two stays under 50.
//!
//! # Configuration
//! `bucket_span_secs` (900), `learning_buckets` (20), `half_life_buckets` (2880: 30 days of
//! 15m buckets, for `T`, `c`, `D` and `n` alike), `lateness_buckets` (1), `max_entities` (100,000
//! tracked values), `max_partitions` (10,000), `hash_seed`, `alert_score` (75);
//! `session_gap_buckets` (4), `session_exponent` (3). See [`RareConfig`].
//!
//! # On an event
//! A [`Scored`] with [`Detail::Rare`]; the reason reads "destination country North Korea seen in
//! 0 of 2,880 15m buckets over 30 days", or for a persistent value "destination country Algeria
//! seen in 1 of 420 15m buckets over 5 days; now 4 buckets in a row (longest before: 1)".
//!
//! # Example
//! ```
//! # use egresswatch_plugin::models::{Model, Observation, RareConfig};
//! let mut rare = RareConfig::default().build().unwrap();
//! let obs = Observation { time_ms: 1_700_000_000_000, arrival_ms: 1_700_000_000_000,
//!                         by: Some("France"), over: None, partition: None, value: 0.0 };
//! let scored = rare.observe(&obs).unwrap();
//! assert!(scored.learning); // nothing is flagged before 20 buckets of history
//! ```

use serde::{Deserialize, Serialize};

use super::engine::{
    check_weight, decode_state, encode_state, floor_probability, invalid, map_bytes, mix,
    score_from_log10_p, Clock, Decay, Decayed, KeyHasher, KeyMap, KeyTable, Kind, ModelConfig,
    Slot, Tracked,
};
use super::{ConfigProblem, Detail, Model, ModelError, ModelStatus, Observation, Scored};

const SALT_TOTAL: u64 = 0x746f_7461_6c00_0001;
const SALT_BUCKET: u64 = 0x6275_636b_6574_0002;
/// Days of novelty history behind `ν`.
const NOVELTY_DAYS: usize = 7;
/// One day in ms.
const DAY_MS: i64 = 86_400_000;

/// Configuration of a `rare` model.
#[derive(Debug, Clone, PartialEq)]
pub struct RareConfig {
    /// Time grid, learning, forgetting and memory, as for every model.
    pub model: ModelConfig,
    /// Buckets without the value that end its session (more than this many).
    pub session_gap_buckets: u32,
    /// Tail exponent of session lengths: how much each bucket beyond a value's longest session
    /// counts.
    pub session_exponent: f64,
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
                alert_score: 75.0,
                score_floor: 0.0,
            },
            session_gap_buckets: 4,
            session_exponent: 3.0,
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
        if self.session_gap_buckets > 96 {
            problems.push(ConfigProblem {
                field: "session_gap_buckets",
                message: format!("must be at most 96, got {}", self.session_gap_buckets),
            });
        }
        if !(self.session_exponent.is_finite() && (0.5..=10.0).contains(&self.session_exponent)) {
            problems.push(ConfigProblem {
                field: "session_exponent",
                message: format!(
                    "must be a number from 0.5 to 10, got {}",
                    self.session_exponent
                ),
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
        let span = i64::from(self.model.bucket_span_secs) * 1000;
        let buckets_per_day = (DAY_MS / span).max(1);
        Ok(Rare {
            decay: Decay::new(self.model.half_life_buckets),
            day_decay: Decay::new(self.model.half_life_buckets / buckets_per_day as f64),
            buckets_per_day,
            floor_p: floor_probability(self.model.score_floor),
            state: RareState::new(self),
            config: self.clone(),
        })
    }
}

/// No bucket: the marker of "never" in bucket fields.
const NEVER: i32 = i32::MIN;

/// Per-value history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ValueEntry {
    /// Decayed buckets with the value, valid at bucket `at`.
    count: f32,
    at: i32,
    /// Buckets with the value, not decayed.
    raw: u32,
    first: i32,
    last: i32,
    /// Decayed days with the value (today included once it appeared), valid at day `day`, the
    /// last day it appeared.
    days: f32,
    day: i32,
    /// Buckets in the current session.
    session: u16,
    /// Longest session before the current one, in buckets.
    longest: u16,
    /// Bucket at which the current session's persistence was reported ([`NEVER`]: not yet).
    reported: i32,
}

impl ValueEntry {
    fn decayed(&self, now: i32, decay: &Decay) -> f64 {
        f64::from(self.count) * decay.factor(i64::from(now) - i64::from(self.at))
    }

    /// Decayed days with the value before `today`.
    fn days_before(&self, today: i32, day_decay: &Decay) -> f64 {
        let d = f64::from(self.days) * day_decay.factor(i64::from(today) - i64::from(self.day));
        if self.day >= today {
            (d - 1.0).max(0.0)
        } else {
            d
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        check_weight("value.count", f64::from(self.count))?;
        check_weight("value.days", f64::from(self.days))?;
        if self.first > self.last {
            return Err(invalid("value.first", self.first));
        }
        Ok(())
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

/// One day's novelty: buckets with data, and buckets that brought a never-seen value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct DayNovelty {
    buckets: u32,
    novel: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Partition {
    /// Decayed units (buckets, or entity-buckets with `over`) with data.
    total: Decayed,
    raw_total: u64,
    /// Buckets with data, not decayed (learning progress).
    buckets: u64,
    /// Decayed count of the most common value (for `typical`).
    top: Decayed,
    first_bucket: i32,
    open: Vec<OpenBucket>,
    /// Decayed days with data before `day` (in days).
    days: Decayed,
    /// The current day, and its novelty so far.
    day: i32,
    today: DayNovelty,
    /// Last bucket counted as novel (one per bucket).
    novel_bucket: i32,
    /// The previous days' novelty, oldest first, at most [`NOVELTY_DAYS`].
    history: Vec<DayNovelty>,
    /// `ν` for today (1 until a day has been seen: the novelty path is off).
    novelty: f64,
    /// Buckets since learning ended and those that brought a never-seen value, while no whole
    /// day is history yet (the first day's `ν`).
    settled: DayNovelty,
}

impl Partition {
    fn new(first_bucket: i32, day: i32) -> Self {
        Partition {
            total: Decayed::default(),
            raw_total: 0,
            buckets: 0,
            top: Decayed::default(),
            first_bucket,
            open: Vec::new(),
            days: Decayed {
                value: 0.0,
                at: day,
            },
            day,
            today: DayNovelty::default(),
            novel_bucket: NEVER,
            history: Vec::new(),
            novelty: 1.0,
            settled: DayNovelty::default(),
        }
    }

    /// Moves to a later day: today's novelty joins the history and `ν` is recomputed.
    fn roll_to(&mut self, day: i32, day_decay: &Decay) {
        if day <= self.day {
            return;
        }
        if self.today.buckets > 0 {
            self.days.add(1.0, self.day, day, day_decay);
            if self.history.len() >= NOVELTY_DAYS {
                self.history.remove(0);
            }
            self.history.push(self.today);
        }
        self.days.add(0.0, day, day, day_decay);
        self.day = day;
        self.today = DayNovelty::default();
        self.novelty = lower_median_rate(&self.history);
    }

    fn check(&self) -> Result<(), ModelError> {
        self.total.check("partition.total")?;
        self.top.check("partition.top")?;
        self.days.check("partition.days")?;
        if self.history.len() > NOVELTY_DAYS {
            return Err(invalid("partition.history", self.history.len()));
        }
        if self
            .history
            .iter()
            .chain([&self.today, &self.settled])
            .any(|d| d.novel > d.buckets)
        {
            return Err(invalid("partition.history.novel", "more than its buckets"));
        }
        if !(0.0..=1.0).contains(&self.novelty) {
            return Err(invalid("partition.novelty", self.novelty));
        }
        Ok(())
    }
}

/// `ν` on the partition's first day, before any whole day is history: the share of the buckets
/// since learning ended, before this one, that brought a never-seen value (while learning,
/// everything is new). 1 (no novelty path) before such a bucket.
fn first_day_novelty(part: &Partition, bucket: i32, counted: bool) -> f64 {
    let buckets = part.settled.buckets.saturating_sub(u32::from(counted));
    let novel =
        (part.settled.novel).saturating_sub(u32::from(counted && part.novel_bucket == bucket));
    if buckets == 0 {
        1.0
    } else {
        f64::from(novel.min(buckets)) / f64::from(buckets)
    }
}

/// The lower median of the days' novel share (1 without days: no novelty path).
fn lower_median_rate(days: &[DayNovelty]) -> f64 {
    let mut rates: Vec<f64> = days
        .iter()
        .filter(|d| d.buckets > 0)
        .map(|d| f64::from(d.novel) / f64::from(d.buckets))
        .collect();
    if rates.is_empty() {
        return 1.0;
    }
    rates.sort_by(f64::total_cmp);
    rates[(rates.len() - 1) / 2]
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

    /// Every field in range for this configuration, before the state may replace a running one.
    fn check(&self, config: &RareConfig) -> Result<(), ModelError> {
        config.model.check_saved_span(self.bucket_span_ms)?;
        self.clock.check(&config.model)?;
        if self.partitions.len() > config.model.max_partitions {
            return Err(invalid("partitions", self.partitions.len()));
        }
        for p in self.partitions.values() {
            p.check()?;
            if p.open.len() > 17 {
                return Err(invalid("partition.open", p.open.len()));
            }
        }
        let open: usize = self
            .partitions
            .values()
            .flat_map(|p| p.open.iter())
            .map(|o| o.seen.len())
            .sum();
        if open != self.open_keys {
            return Err(invalid("open_keys", self.open_keys));
        }
        self.values.check(ValueEntry::check)
    }
}

/// A running `rare` model (built from [`RareConfig`]).
#[derive(Debug, Clone)]
pub struct Rare {
    config: RareConfig,
    decay: Decay,
    /// The same half-life, in days.
    day_decay: Decay,
    buckets_per_day: i64,
    /// [`floor_probability`] of the configured score floor.
    floor_p: Option<f64>,
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

    fn day_of(&self, bucket: i32) -> i32 {
        i32::try_from(i64::from(bucket).div_euclid(self.buckets_per_day)).unwrap_or(NEVER)
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

/// A value's session as it stands at `bucket`: its length counting `bucket`, and whether it is
/// a new one.
fn session_at(entry: Option<&ValueEntry>, bucket: i32, gap: u32) -> (u16, bool) {
    match entry {
        None => (1, true),
        Some(e) if bucket <= e.last => (e.session.max(1), false),
        Some(e) if i64::from(bucket) - i64::from(e.last) > i64::from(gap) => (1, true),
        Some(e) => (e.session.saturating_add(1), false),
    }
}

impl Model for Rare {
    fn observe(&mut self, obs: &Observation<'_>) -> Option<Scored> {
        let Some(value) = obs.by else {
            self.state.unscored += 1;
            return None;
        };
        let Some((slot, close)) = self.state.clock.place(obs.time_ms, obs.arrival_ms) else {
            self.state.unscored += 1;
            return None;
        };
        if let Some(oldest_open) = close {
            self.close_before(oldest_open);
        }
        let bucket = match slot {
            Slot::Open(b) | Slot::FarLate(b) => b,
        };
        let today = self.day_of(bucket);
        let (decay, day_decay) = (self.decay, self.day_decay);
        let learning_buckets = u64::from(self.config.model.learning_buckets);
        let cap = self.config.model.max_entities;
        let gap = self.config.session_gap_buckets;
        let exponent = self.config.session_exponent;
        let alert_score = self.config.model.alert_score;
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
            st.partitions
                .insert(part_key, Partition::new(bucket, today));
        }
        let part = st.partitions.get_mut(&part_key)?;
        let open_idx = match slot {
            Slot::Open(b) => {
                part.roll_to(today, &day_decay);
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
                Some(idx)
            }
            Slot::FarLate(_) => {
                st.far_late += 1;
                None
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
        // History, excluding this bucket's own contribution. Saturating: a loaded state whose
        // counts disagree with its open buckets' seen sets (a corrupt but parseable file) must
        // score, not panic.
        let t_hist = (part.total.get(now, &decay) - if total_seen { age_w } else { 0.0 }).max(0.0);
        let raw_total_hist = part.raw_total.saturating_sub(u64::from(total_seen));
        let buckets_hist = part.buckets.saturating_sub(u64::from(bucket_seen));
        let c_hist = entry.map_or(0.0, |e| {
            (e.decayed(now, &decay) - if unit_seen { age_w } else { 0.0 }).max(0.0)
        });
        let raw_hist = entry.map_or(0, |e| u64::from(e.raw).saturating_sub(u64::from(unit_seen)));
        let learning = buckets_hist < learning_buckets;
        // Never seen before this bucket.
        let never = raw_hist == 0;

        // Rarity and persistence.
        let days_total = part.days.get(today, &day_decay);
        let days_with = entry.map_or(0.0, |e| e.days_before(today, &day_decay));
        let pi = ((days_with + 0.5) / (days_total + 1.0)).min(1.0);
        let (session, new_session) = session_at(entry.as_ref(), bucket, gap);
        let longest = entry.map_or(1, |e| e.longest.max(1));
        let reported =
            entry.is_some_and(|e| !new_session && e.reported != NEVER && e.reported < bucket);
        let mut p = if reported || session <= longest {
            pi
        } else {
            pi * (f64::from(longest) / f64::from(session)).powf(exponent)
        };
        // Novelty of a never-seen value.
        if never {
            let novelty = if part.history.is_empty() {
                first_day_novelty(part, bucket, bucket_seen && today == part.day && !learning)
            } else {
                part.novelty
            };
            p = p.min(novelty.max(0.5 / (t_hist + 1.0)));
        }
        // An event that cannot alert (learning, or `p` too high to reach the floor) is reported
        // at 0 without the logarithm; the floor is at most `alert_score`, so `crossed` is
        // unchanged.
        let score = if self.floor_p.is_some_and(|f| learning || p >= f) {
            0.0
        } else {
            score_from_log10_p(-p.min(1.0).log10())
        };
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
                days_with_value: days_with.round() as u64,
                days_total: days_total.round() as u64,
                session_buckets: u64::from(session),
                longest_session: if never { 0 } else { u64::from(longest) },
            },
        };

        // Learn (open buckets only).
        let Some(i) = open_idx else {
            return Some(scored);
        };
        let same_day = today == part.day;
        let open = &mut part.open[i];
        if !bucket_seen && mark(open, &mut st.open_keys, cap, bucket_key) {
            part.buckets += 1;
            part.first_bucket = part.first_bucket.min(bucket);
            if same_day {
                part.today.buckets += 1;
                if !learning && part.history.is_empty() {
                    part.settled.buckets += 1;
                }
            }
            if total_key == bucket_key {
                part.total.add(1.0, bucket, now, &decay);
                part.raw_total += 1;
            }
        }
        if total_key != bucket_key && !total_seen && mark(open, &mut st.open_keys, cap, total_key) {
            part.total.add(1.0, bucket, now, &decay);
            part.raw_total += 1;
        }
        let crossed = !learning && score >= alert_score;
        if !unit_seen && mark(open, &mut st.open_keys, cap, unit_key) {
            if entry.is_none() && same_day && part.novel_bucket != bucket {
                part.today.novel = (part.today.novel + 1).min(part.today.buckets);
                if !learning && part.history.is_empty() {
                    part.settled.novel = (part.settled.novel + 1).min(part.settled.buckets);
                }
                part.novel_bucket = bucket;
            }
            let e = st.values.entry(value_key, now, &decay, || ValueEntry {
                count: 0.0,
                at: now,
                raw: 0,
                first: bucket,
                last: bucket,
                days: 0.0,
                day: today,
                session: 0,
                longest: 0,
                reported: NEVER,
            });
            let c = e.decayed(now, &decay) + age_w;
            e.count = c as f32;
            e.at = now;
            e.raw = e.raw.saturating_add(1);
            e.first = e.first.min(bucket);
            if today > e.day || e.days == 0.0 {
                let before =
                    f64::from(e.days) * day_decay.factor(i64::from(today) - i64::from(e.day));
                e.days = (before + 1.0) as f32;
                e.day = today;
            }
            if bucket > e.last || e.session == 0 {
                if new_session {
                    e.longest = e.longest.max(e.session);
                    e.session = 1;
                    e.reported = if learning { bucket } else { NEVER };
                } else {
                    e.session = session;
                }
                e.last = bucket;
            }
            if crossed && e.reported == NEVER {
                e.reported = bucket;
            }
            if c > part.top.get(now, &decay) {
                part.top = Decayed { value: c, at: now };
            }
        } else if crossed {
            if let Some(e) = st.values.get_mut(value_key) {
                if e.reported == NEVER {
                    e.reported = bucket;
                }
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
            future_events: st.clock.future_events(),
            unscored_events: st.unscored,
        }
    }

    fn save(&self) -> Result<Vec<u8>, ModelError> {
        encode_state(Kind::Rare, &self.state)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let mut state: RareState = decode_state(Kind::Rare, bytes)?;
        state.check(&self.config)?;
        state.values.set_cap(self.config.model.max_entities);
        if let Some(h) = state.clock.head() {
            state.values.enforce_cap(h, &self.decay);
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: i64 = 900_000;
    const T0: i64 = 1_700_000_000_000 / DAY_MS * DAY_MS;
    const DAY: i64 = 96;
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
        let t = at(bucket, 1000);
        let obs = Observation {
            time_ms: t,
            arrival_ms: t,
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

    /// A session of `len` buckets of `value` from `start`, with the baseline around it; returns
    /// the scores of its buckets.
    fn session(m: &mut Rare, start: i64, len: i64, value: &str) -> Vec<f64> {
        (start..start + len)
            .map(|b| {
                baseline(m, b..b + 1);
                see(m, b, value).score
            })
            .collect()
    }

    #[test]
    fn never_seen_after_a_quiet_month_is_critical_and_routine_is_low() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..30 * DAY);
        let new = see(&mut m, 30 * DAY, "North Korea");
        let routine = see(&mut m, 30 * DAY, "France");
        println!(
            "after 30 quiet days: new {:.1}, routine {:.1}",
            new.score, routine.score
        );
        assert!(!new.learning);
        assert!(new.score >= 90.0, "{}", new.score);
        assert!(routine.score < 5.0, "{}", routine.score);
        // A second event of the value in the same bucket scores like the first.
        assert_eq!(see(&mut m, 30 * DAY, "North Korea").score, new.score);
        assert_eq!(
            new.reason("destination country", "North Korea"),
            "destination country North Korea seen in 0 of 2,880 15m buckets over 30 days"
        );
    }

    #[test]
    fn recency_aware_rarity_a_value_seen_days_ago_returns_quietly_and_persistence_alerts() {
        // A value seen for one bucket on day 1 of a quiet month, returning on day 30 - `ago`.
        let returning = |ago: i64| -> (f64, Vec<f64>) {
            let mut m = RareConfig::default().build().unwrap();
            let first = DAY + 40;
            baseline(&mut m, 0..first);
            session(&mut m, first, 1, "Algeria");
            let back = first + ago * DAY;
            baseline(&mut m, first + 1..back);
            let run = session(&mut m, back, 4, "Algeria");
            (run[0], run)
        };
        let (yesterday, _) = returning(1);
        let (week, _) = returning(7);
        let (weeks, run) = returning(25);
        println!("seen once, back after 1 / 7 / 25 days: {yesterday:.1} / {week:.1} / {weeks:.1}");
        // By how long ago: the older the one sighting, the rarer the value now.
        assert!(
            yesterday < week && week < weeks,
            "{yesterday} {week} {weeks}"
        );
        // A single return is not alarming, however long ago (it is not never-seen) ...
        assert!(weeks < 75.0, "{weeks}");
        // ... but staying for longer than it ever did is: persistence alerts.
        assert!(run.iter().any(|&x| x >= 75.0), "{run:?}");
        // And by how often: a value seen on several days scores lower than one seen once.
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..DAY);
        for d in 1..8 {
            session(&mut m, d * DAY + 40, 1, "Spain");
            baseline(&mut m, d * DAY + 41..(d + 1) * DAY);
        }
        let often = session(&mut m, 8 * DAY + 40, 1, "Spain")[0];
        println!("seen on 7 of 8 days, back: {often:.1}");
        assert!(often < yesterday, "{often} {yesterday}");
        // A value whose sessions run 8 buckets is not flagged for 8, nor for 10.
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..DAY);
        for d in 1..6 {
            let s = session(&mut m, d * DAY + 30, 8, "Spain");
            assert!(d == 1 || s.iter().all(|&x| x < 75.0), "day {d}: {s:?}");
            baseline(&mut m, d * DAY + 38..(d + 1) * DAY + 30);
        }
        let long = session(&mut m, 6 * DAY + 30, 10, "Spain");
        println!("10 buckets of a value whose sessions run 8: {long:?}");
        assert!(long.iter().all(|&s| s < 75.0));
    }

    #[test]
    fn scores_out_of_reach_of_the_floor_are_skipped_and_nothing_else_changes() {
        let mut exact = RareConfig::default().build().unwrap();
        let mut config = RareConfig::default();
        config.model.score_floor = 60.0;
        let mut floored = config.build().unwrap();
        let (mut skipped, mut alerts) = (0, 0);
        let mut both = |b: i64, value: &str| {
            let full = see(&mut exact, b, value);
            let fast = see(&mut floored, b, value);
            if fast.score == full.score {
                alerts += usize::from(full.score >= 60.0 && !full.learning);
            } else {
                // Skipped: only an event that could not alert, and only its score.
                assert!(full.learning || full.score < 60.0, "{value} {b}: {full:?}");
                assert_eq!(fast, Scored { score: 0.0, ..full });
                skipped += usize::from(full.score > 0.0);
            }
        };
        // Routine values, one that returns now and then, persistent sessions (reported once at
        // the alert score, 75, which the floor must not disturb) and never-seen values.
        for b in 0..6 * DAY {
            for c in BASE {
                both(b, c);
            }
            if b % 37 == 0 {
                both(b, "Spain");
            }
            if (3 * DAY..3 * DAY + 6).contains(&b) || (5 * DAY..5 * DAY + 3).contains(&b) {
                both(b, "Algeria");
            }
            if b % DAY == 50 {
                both(b, &format!("Nowhere {b}"));
            }
        }
        println!("{alerts} alerts, {skipped} scores above 0 skipped");
        assert!(alerts >= 3 && skipped >= 20, "{alerts} {skipped}");
    }

    #[test]
    fn a_quiet_new_deployment_flags_a_never_seen_value_on_its_first_day() {
        // 60 buckets (15 h) of three countries, then one never seen: learning is over, no whole
        // day is history yet.
        let mut m = RareConfig::default().build().unwrap();
        for b in 0..60 {
            see(&mut m, b, BASE[b as usize % 3]);
        }
        let new = see(&mut m, 60, "North Korea");
        println!("first day, after 60 buckets: {:.1}", new.score);
        assert!(!new.learning && new.score >= 75.0, "{new:?}");
        // The learning buckets, where every value was new, did not count; a second new value in
        // the next bucket counts this one's bucket as novel (1 of 41 since learning ended).
        let next = see(&mut m, 61, "Cuba");
        assert!(next.score < new.score, "{} {}", next.score, new.score);
    }

    #[test]
    fn a_value_that_often_has_long_sessions_is_not_flagged_for_one() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..DAY);
        for d in 1..6 {
            let s = session(&mut m, d * DAY + 30, 8, "Spain");
            assert!(d == 1 || s.iter().all(|&x| x < 75.0), "day {d}: {s:?}");
            baseline(&mut m, d * DAY + 38..(d + 1) * DAY + 30);
        }
        let long = session(&mut m, 6 * DAY + 30, 10, "Spain");
        println!("10 buckets of a value whose sessions run 8: {long:?}");
        assert!(long.iter().all(|&s| s < 75.0));
    }

    #[test]
    fn decoys_do_not_lower_the_next_never_seen_value() {
        let run = |decoys: usize| -> (f64, f64) {
            let mut m = RareConfig::default().build().unwrap();
            baseline(&mut m, 0..20 * DAY);
            let start = 20 * DAY;
            for i in 0..decoys {
                see(&mut m, start + i as i64 * 2, &format!("decoy-{i}"));
                baseline(&mut m, start + i as i64 * 2..start + i as i64 * 2 + 2);
            }
            let t = start + 48;
            baseline(&mut m, start + 2 * decoys as i64..t);
            let first = see(&mut m, t, "Iran").score;
            let run = session(&mut m, t + 1, 3, "Iran");
            (first, run.into_iter().fold(first, f64::max))
        };
        let (clean_first, clean_max) = run(0);
        println!("no decoys: first {clean_first:.1}, max {clean_max:.1}");
        assert!(clean_first >= 75.0);
        for n in [1, 5, 9, 20] {
            let (first, max) = run(n);
            println!("{n} decoys: first {first:.1}, max {max:.1}");
            assert_eq!(first, clean_first, "{n} decoys changed the first score");
            assert!(max >= 75.0);
        }
    }

    #[test]
    fn a_network_that_meets_new_values_every_day_is_not_alarmed_by_one_more() {
        let mut m = RareConfig::default().build().unwrap();
        let mut n = 0;
        let mut worst: f64 = 0.0;
        for d in 0..10 {
            for b in d * DAY..(d + 1) * DAY {
                baseline(&mut m, b..b + 1);
                if b % 8 == 0 {
                    let s = see(&mut m, b, &format!("scanner-{n}")).score;
                    n += 1;
                    if d >= 2 {
                        worst = worst.max(s);
                    }
                }
            }
        }
        println!("one new value every 2 h for 10 days: worst {worst:.1}");
        assert!(worst < 75.0);
        // Yet one of them persisting for an hour is reported.
        let run = session(&mut m, 10 * DAY, 4, "Algeria");
        println!("persistent new value there: {run:?}");
        assert!(run.iter().any(|&s| s >= 75.0));
    }

    #[test]
    fn nothing_flaggable_while_learning() {
        let mut m = RareConfig::default().build().unwrap();
        for b in 0..20 {
            baseline(&mut m, b..b + 1);
            let s = see(&mut m, b, &format!("new-{b}"));
            assert!(s.learning, "bucket {b}");
        }
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
        for (b, v) in [(40, "Chile"), (41, "France"), (41, "Chile")] {
            assert_eq!(see(&mut m, b, v), see(&mut twin, b, v));
        }
        assert_eq!(m.status().far_late_events, 1);
    }

    #[test]
    fn save_load_round_trip_gives_identical_scores() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..2 * DAY);
        see(&mut m, 2 * DAY - 1, "Chile");
        let bytes = m.save().unwrap();
        let mut restored = RareConfig::default().build().unwrap();
        restored.load(&bytes).unwrap();
        for (b, v) in [
            (2 * DAY - 1, "Chile"),
            (2 * DAY, "Chile"),
            (2 * DAY, "Peru"),
            (2 * DAY + 1, "France"),
        ] {
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
    }

    #[test]
    fn population_and_partitions_are_separate() {
        let mut m = RareConfig::default().build().unwrap();
        for b in 0..2 * DAY {
            for host in ["a", "b", "c", "d"] {
                let obs = Observation {
                    time_ms: at(b, 0),
                    arrival_ms: at(b, 0),
                    by: Some("France"),
                    over: Some(host),
                    partition: Some("site1"),
                    value: 0.0,
                };
                assert!(m.observe(&obs).is_some());
            }
        }
        let obs = |value, partition| Observation {
            time_ms: at(2 * DAY, 0),
            arrival_ms: at(2 * DAY, 0),
            by: Some(value),
            over: Some("a"),
            partition: Some(partition),
            value: 0.0,
        };
        assert!(m.observe(&obs("France", "site1")).unwrap().score < 25.0);
        let s = m.observe(&obs("Chile", "site1")).unwrap();
        assert!(s.score >= 75.0, "{}", s.score);
        assert!(s
            .reason("country", "Chile")
            .contains("0 of 768 15m entity-buckets"));
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

    #[test]
    fn a_crafted_state_is_refused_field_by_field() {
        let mut m = RareConfig::default().build().unwrap();
        baseline(&mut m, 0..30);
        let good: RareState = m.state.clone();
        let refused = |field: &str, state: RareState| {
            let bytes = encode_state(Kind::Rare, &state).unwrap();
            let mut fresh = RareConfig::default().build().unwrap();
            let err = fresh.load(&bytes).expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
            // The running state is untouched.
            assert_eq!(fresh.status().buckets_seen, 0);
        };
        let mut s = good.clone();
        s.bucket_span_ms = 0;
        refused("bucket_span_secs", s);
        let mut s = good.clone();
        s.clock = Clock::new(1, 1);
        refused("bucket_span_secs", s);
        let mut s = good.clone();
        s.open_keys += 5;
        refused("open_keys", s);
        let mut s = good.clone();
        for p in s.partitions.values_mut() {
            p.total.value = f64::NAN;
        }
        refused("partition.total", s);
        let mut s = good.clone();
        for p in s.partitions.values_mut() {
            p.novelty = 7.0;
        }
        refused("partition.novelty", s);
        let mut s = good;
        s.values.for_each_mut(|v| v.count = -1.0);
        refused("value.count", s);
    }
}
