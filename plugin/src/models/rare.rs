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
//! A [`Scored`] with [`Detail::Rare`], and what was expected ([`Scored::typical`]: the share of
//! past buckets with the partition's most common value); the reason reads "destination country
//! North Korea seen in 0 of 2,880 15m buckets over 30 days", or for a persistent value
//! "destination country Algeria seen in 1 of 420 15m buckets over 5 days; now 4 buckets in a row
//! (longest before: 1)".
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
    decode_state, encode_state, floor_probability, invalid, map_bytes, mix, score_from_log10_p,
    Clock, Decay, Decayed, KeyHasher, KeyMap, KeyTable, Kind, ModelConfig, Slot,
};
use super::{ConfigProblem, Detail, Model, ModelError, ModelStatus, Observation, Scored};

mod partition;

use partition::{first_day_novelty, OpenBucket, Partition, ValueEntry, NEVER};

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
            spare: KeyMap::default(),
            config: self.clone(),
        })
    }
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
        for (&key, p) in &self.partitions {
            p.check()?;
            if p.open.len() > 17 {
                return Err(invalid("partition.open", p.open.len()));
            }
            // What `observe` reads from a set's emptiness (see there).
            if let Some(o) = p
                .open
                .iter()
                .find(|o| !o.seen.is_empty() && !o.seen.contains_key(&(key ^ SALT_BUCKET)))
            {
                return Err(ModelError::Inconsistent {
                    field: "partition.open.seen",
                    what: format!("open bucket {} has keys marked but not its own", o.bucket),
                });
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
    /// The emptied seen set of a closed bucket, the largest one closed since a bucket last
    /// opened, for the next bucket to open instead of freeing it and allocating another. It
    /// lives until that opening (usually in the event that closed it; an event of a partition
    /// refused at the cap opens nothing): taken when its room fits the new bucket's, freed
    /// otherwise (not part of the saved state; counted in the state-bytes gauge while held).
    spare: KeyMap<()>,
}

impl Rare {
    /// The configuration the model was built from.
    pub fn config(&self) -> &RareConfig {
        &self.config
    }

    fn close_before(&mut self, oldest_open: i32) {
        let st = &mut self.state;
        let spare = &mut self.spare;
        let mut removed = 0;
        for p in st.partitions.values_mut() {
            p.open.retain_mut(|o| {
                let keep = o.bucket >= oldest_open;
                if !keep {
                    removed += o.seen.len();
                    if o.seen.capacity() > spare.capacity() {
                        o.seen.clear();
                        std::mem::swap(spare, &mut o.seen);
                    }
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
        let (decay, day_decay) = (&self.decay, &self.day_decay);
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

        // One look-up for the partition, whether it is new or not. At the cap it is `get_mut`:
        // `entry` reserves room for an absent key before it says so, and would grow the map
        // (and the state-bytes gauge) for a partition refused here.
        let part = if st.partitions.len() >= self.config.model.max_partitions {
            match st.partitions.get_mut(&part_key) {
                Some(p) => p,
                None => {
                    st.unscored += 1;
                    return None;
                }
            }
        } else {
            st.partitions
                .entry(part_key)
                .or_insert_with(|| Partition::new(bucket, today))
        };
        let open_idx = match slot {
            Slot::Open(b) => {
                part.roll_to(today, day_decay);
                let idx = match part.open.iter().position(|o| o.bucket == b) {
                    Some(i) => i,
                    None => {
                        // Room for as many keys as the fullest open bucket: a set grown from
                        // empty was rehashed at each doubling, about three times a bucket
                        // (two thirds of what its inserts cost). No more than the open-keys cap
                        // leaves: at the cap nothing can be marked, and the room would be lost.
                        // The spare set of a closed bucket when it has that room and not much
                        // more (a fresh set for `room` keys has up to about twice as much; a
                        // spare of a burst bucket is not passed on), else a fresh set and the
                        // spare is freed: a set freed and another allocated was ~230 Ir a
                        // bucket.
                        let fullest = part.open.iter().map(|o| o.seen.len()).max();
                        let room = fullest.unwrap_or(0).min(cap.saturating_sub(st.open_keys));
                        let spare = std::mem::take(&mut self.spare);
                        let seen = if room > 0
                            && (room..=room.saturating_mul(2).saturating_add(8))
                                .contains(&spare.capacity())
                        {
                            spare
                        } else {
                            KeyMap::with_capacity_and_hasher(room, Default::default())
                        };
                        part.open.push(OpenBucket { bucket: b, seen });
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
                // The bucket's own key is the first an event marks, and no other is marked
                // when it cannot be (the open-keys cap): a set with any key holds it (and a
                // loaded state is checked for that), so its emptiness says it without a look-up.
                let bucket_seen = !seen.is_empty();
                debug_assert_eq!(bucket_seen, seen.contains_key(&bucket_key));
                // Without `over` the bucket is the unit of the total: the same key.
                let total_seen = if total_key == bucket_key {
                    bucket_seen
                } else {
                    seen.contains_key(&total_key)
                };
                (total_seen, bucket_seen, seen.contains_key(&unit_key))
            }
            None => (false, false, false),
        };
        let entry = st.values.get(value_key).copied();
        // History, excluding this bucket's own contribution. Saturating: a loaded state whose
        // counts disagree with its open buckets' seen sets (a corrupt but parseable file) must
        // score, not panic.
        let t_hist = (part.total.get(now, decay) - if total_seen { age_w } else { 0.0 }).max(0.0);
        let raw_total_hist = part.raw_total.saturating_sub(u64::from(total_seen));
        let buckets_hist = part.buckets.saturating_sub(u64::from(bucket_seen));
        let c_hist = entry.map_or(0.0, |e| {
            (e.decayed(now, decay) - if unit_seen { age_w } else { 0.0 }).max(0.0)
        });
        let raw_hist = entry.map_or(0, |e| u64::from(e.raw).saturating_sub(u64::from(unit_seen)));
        let learning = buckets_hist < learning_buckets;
        // Never seen before this bucket.
        let never = raw_hist == 0;

        // Rarity and persistence.
        let days_total = part.days.get(today, day_decay);
        let days_with = entry.map_or(0.0, |e| e.days_before(today, day_decay));
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
        // The partition's top count and first bucket before this event (learning changes them).
        let (top_hist, first_bucket) = (part.top.get(now, decay), part.first_bucket);

        // Learn (open buckets only). The `Scored` is built after it, in the place it is returned
        // in: built before, it was copied there (~30 Ir an event).
        if let Some(i) = open_idx {
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
                    part.total.add(1.0, bucket, now, decay);
                    part.raw_total += 1;
                }
            }
            if total_key != bucket_key
                && !total_seen
                && mark(open, &mut st.open_keys, cap, total_key)
            {
                part.total.add(1.0, bucket, now, decay);
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
                let e = st.values.entry(value_key, now, decay, || ValueEntry {
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
                let c = e.decayed(now, decay) + age_w;
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
                if c > top_hist {
                    part.top = Decayed { value: c, at: now };
                }
            } else if crossed {
                if let Some(e) = st.values.get_mut(value_key) {
                    if e.reported == NEVER {
                        e.reported = bucket;
                    }
                }
            }
        }
        Some(Scored {
            score,
            learning,
            far_late: open_idx.is_none(),
            bucket_start_ms: st.clock.start_ms(bucket),
            bucket_span_ms: st.clock.span_ms(),
            actual: if t_hist > 0.0 { c_hist / t_hist } else { 0.0 },
            detail: Detail::Rare {
                typical: if t_hist > 0.0 {
                    (top_hist / t_hist).min(1.0)
                } else {
                    0.0
                },
                buckets_with_value: raw_hist,
                buckets_total: raw_total_hist,
                first_seen_ms: entry.map(|e| st.clock.start_ms(e.first)),
                history_start_ms: st.clock.start_ms(first_bucket),
                population: obs.over.is_some(),
                days_with_value: days_with,
                days_total,
                session_buckets: u64::from(session),
                longest_session: if never { 0 } else { u64::from(longest) },
            },
        })
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
            approx_bytes: st.values.approx_bytes()
                + map_bytes(&st.partitions)
                + open_bytes
                + map_bytes(&self.spare),
            evictions: st.values.evictions(),
            far_late_events: st.far_late,
            future_events: st.clock.future_events(),
            unscored_events: st.unscored,
        }
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), ModelError> {
        encode_state(Kind::Rare, &self.state, out)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let mut state: RareState = decode_state(Kind::Rare, bytes, &[])?;
        state.check(&self.config)?;
        state.values.set_cap(self.config.model.max_entities);
        if let Some(h) = state.clock.head() {
            state.values.enforce_cap(h, &self.decay);
        }
        self.state = state;
        self.spare = KeyMap::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
