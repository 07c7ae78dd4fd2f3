//! `high_sum`: an unusually large total of a numeric field for one entity in one bucket.
//!
//! Reproduces Elastic's `high_sum` of a field (e.g. `source.bytes`) `over` an entity (e.g.
//! `destination.ip`, 3h buckets), optionally `by` and `partition`ed; plus, beyond Elastic, each
//! entity's own history, so a backup server that receives gigabytes every bucket is not an anomaly.
//!
//! # What it learns
//! - The running sum of each entity in each open bucket (exact; `open.rs`: one record per
//!   destination for its sums in all open buckets). When a bucket closes, its sums are folded
//!   into what follows over the next events, [`FOLD_PER_EVENT`] an event (`close.rs`: what an
//!   event sees meanwhile, and why no score depends on the order).
//! - Per partition, two decayed log-scale histograms of *completed* bucket sums (16 bins per
//!   power of two from 1 to 2^56, 897 bins): `all` entities, and `newcomers` (entities with fewer
//!   than 3 decayed buckets of history when the bucket closed, after learning). Also how many
//!   entities and newcomers each of the last 64 closed buckets had.
//! - Per entity (24 bytes a slot): decayed weight (buckets), decayed mean and variance of
//!   `ln(bucket sum)`, last bucket.
//!
//! # Score
//! The running sum `s` (this event included) is scored on every event, so the score rises with the
//! sum and the event that pushes it over the threshold is the one flagged.
//! - Population tail: `W(s)` = decayed weight of completed sums >= `s` (log-linear inside a bin);
//!   `p = (W(s) + 1/2) / (N + 1)` up to the *knee*, the 99th percentile (the largest sum while
//!   the histogram holds under 100). Beyond the knee a Pareto tail of index 1 takes over,
//!   `p = (W(knee) + 1/2) / (N + 1) * knee / s`: the few sums up there (a video call, one
//!   forged or huge flow) do not decide where a new sum becomes extreme, so one benign day
//!   cannot move the scale, and poisoning with one flow does not hide the next upload.
//! - Multiple testing: `p` is per sum, but a bucket holds `E` sums, so the population probability
//!   is `min(1, p * E)`; `E` is the mean count over the last 64 closed buckets without their
//!   busiest eighth, so neither the time of day nor a spray of destinations moves it.
//! - New entity (history < 3 buckets): scored against the `newcomers` histogram (what new
//!   entities usually get), or `all` while that holds under 50 sums. Established entity: against
//!   `all`.
//! - Any entity with a history of its own (half a decayed bucket or more): `p = max(p_population,
//!   p_self)`, where `p_self` is the normal upper tail of `ln s` under its own mean and variance
//!   (shrunk towards a prior variance of 1, weight 2): flagged only when unusual for the
//!   population *and* for itself, so a destination that got 90 MB last week is not news when it
//!   gets 90 MB again.
//! - Score = [`score_from_log10_p`] of `-log10 p` (shared with `rare`).
//!
//! Calibration (tests, and `docs/detection.md` on real traffic): 50 destinations with 1 kB..5 MB a
//! bucket and three new ones of a few kB to a few MB each bucket; a new IP then gets 200 MB chunks:
//! the first already scores over 75 and 2 GB about 89; a destination that received ~2 GB every
//! bucket for a week scores under 10 at 2.1 GB; 5 GB to a new IP scores the same within 5 points
//! after one 10 GB or forged 1e15 flow to another.
//!
//! # Configuration
//! `bucket_span_secs` (10800), `learning_buckets` (20), `half_life_buckets` (56: one week of 3h
//! buckets), `lateness_buckets` (1), `max_entities` (1,000,000), `max_partitions` (100),
//! `hash_seed` (0). See [`HighSumConfig`].
//!
//! # On an event
//! A [`Scored`] with [`Detail::HighSum`]: `bucket_sum`, `population_p99_9`,
//! `entity_buckets_seen`, and what was expected ([`Scored::typical`]: an established
//! destination's typical sum, held as its log-mean, or the population's median); the reason reads
//! "8.1 GB sent to destination.ip 203.0.113.7 in this 3h bucket; typical 4.2 kB, 99.9th
//! percentile of destination.ip values 40 MB".
//!
//! # Example
//! ```
//! # use egresswatch_plugin::models::{HighSumConfig, Model, Observation};
//! let mut m = HighSumConfig::default().build().unwrap();
//! let obs = Observation { time_ms: 1_700_000_000_000, arrival_ms: 1_700_000_000_000,
//!                         by: None, over: Some("203.0.113.7"),
//!                         partition: None, value: 1500.0 };
//! let scored = m.observe(&obs).unwrap();
//! assert!(scored.learning);
//! ```
//!
//! # Memory
//! Per tracked entity: a 24-byte entry in the entity table and a 5-byte index slot (1.1-2.3
//! slots a key). Per destination with a sum in an open bucket: one record of 32 bytes (its key
//! and two (bucket, sum) places, `open.rs`) and its index slot, whatever the number of open
//! buckets it has a sum in up to two; a third sum at once (lateness above one bucket) takes a
//! 16-byte entry and an index slot in a map of its bucket beside the records. About 78 bytes a
//! destination with two open buckets (1M in `benches/scale.rs`). Per partition: two
//! histograms of the bins from the lowest sum's to the highest's with their survival tables
//! (16 bytes a bin: 2.7 kB each for sums over three decades, 14.4 kB at most;
//! `histogram.rs`), and 7 kB of tally while a closed bucket is being folded.

use serde::{Deserialize, Serialize};

use super::engine::{
    check_weight, decode_state, encode_state, floor_probability, invalid, normal_neg_log10_sf,
    score_from_log10_p, Clock, Decay, KeyHasher, KeyMap, KeyTable, Kind, ModelConfig, Slot,
    Tracked,
};
use super::{Detail, Model, ModelError, ModelStatus, Observation, Scored, Typical};

mod close;
mod histogram;
mod open;

use close::FOLD_PER_EVENT;
use histogram::Histogram;
use open::{BucketSums, Closing, SavedClosingOf};

/// Open buckets a partition may have at once: the head and `lateness_buckets` (at most 16)
/// before it; and closing buckets per partition in a saved state.
const MAX_OPEN_BUCKETS: usize = 17;
/// Histogram bins per power of two.
const BINS_PER_OCTAVE: f64 = 16.0;
/// Bins: one for sums below 1, then 56 octaves.
const NBINS: usize = 1 + 16 * 56;
/// Decayed buckets of history below which an entity counts as new.
const MIN_SELF_BUCKETS: f64 = 3.0;
/// Decayed buckets of history from which an entity's own sums are a baseline too.
const SELF_MIN_WEIGHT: f64 = 0.5;
/// Closed buckets whose counts give the sums per bucket.
const RECENT_BUCKETS: usize = 64;
/// Sums a histogram needs before it is used on its own.
const MIN_HIST_WEIGHT: f64 = 50.0;
/// Prior variance of `ln(sum)` for the self model, and its weight in buckets.
const PRIOR_VAR: f64 = 1.0;
const PRIOR_WEIGHT: f64 = 2.0;
/// Index of the Pareto tail beyond the 99th percentile: a sum ten times the knee is ten times
/// rarer. Fixed rather than estimated from the few sums up there, which one day can move.
const TAIL_INDEX: f64 = 1.0;

/// Configuration of a `high_sum` model.
#[derive(Debug, Clone, PartialEq)]
pub struct HighSumConfig {
    /// Time grid, learning, forgetting and memory, as for every model.
    pub model: ModelConfig,
}

impl Default for HighSumConfig {
    fn default() -> Self {
        HighSumConfig {
            model: ModelConfig {
                bucket_span_secs: 10_800,
                learning_buckets: 20,
                half_life_buckets: 56.0,
                lateness_buckets: 1,
                max_entities: 1_000_000,
                max_partitions: 100,
                hash_seed: 0,
                alert_score: 75.0,
                score_floor: 0.0,
            },
        }
    }
}

/// The registry's entry for `high_sum` (see [`super::REGISTRY`]).
pub const REGISTRATION: super::Registration = super::Registration {
    function: crate::catalog::Function::HighSum,
    defaults: || HighSumConfig::default().model,
    build: |model| Ok(Box::new(HighSumConfig { model }.build()?)),
};

impl HighSumConfig {
    /// Checks every key; reports all problems at once.
    pub fn validate(&self) -> Result<(), ModelError> {
        let problems = self.model.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Config(problems))
        }
    }

    /// Builds the model.
    pub fn build(&self) -> Result<HighSum, ModelError> {
        self.validate()?;
        Ok(HighSum {
            decay: Decay::new(self.model.half_life_buckets),
            floor_p: floor_probability(self.model.score_floor),
            fold_per_event: FOLD_PER_EVENT,
            state: HighSumState::new(self),
            config: self.clone(),
        })
    }
}

/// `x` as an f32, the largest finite one of its sign where it is beyond f32's range.
fn within_f32(x: f64) -> f32 {
    (x as f32).clamp(f32::MIN, f32::MAX)
}

/// Per-entity history of `ln(bucket sum)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entity {
    weight: f32,
    mean: f32,
    var: f32,
    at: i32,
}

impl Entity {
    fn check(&self) -> Result<(), ModelError> {
        check_weight("entity.weight", f64::from(self.weight))?;
        check_weight("entity.var", f64::from(self.var))?;
        if !self.mean.is_finite() {
            return Err(invalid("entity.mean", self.mean));
        }
        Ok(())
    }

    fn weight_at(&self, now: i32, decay: &Decay) -> f64 {
        f64::from(self.weight) * decay.factor(i64::from(now) - i64::from(self.at))
    }

    fn update(&mut self, x: f64, bucket: i32, now: i32, decay: &Decay) {
        let w_old = self.weight_at(now, decay);
        let a = decay.factor(i64::from(now) - i64::from(bucket));
        let w_new = w_old + a;
        let mean_old = f64::from(self.mean);
        let mean_new = mean_old + a * (x - mean_old) / w_new;
        let s = f64::from(self.var) * w_old + a * (x - mean_old) * (x - mean_new);
        // Kept within f32's range: a loaded state may hold values near its edge (the load
        // checks them finite), and one that became infinite here would be saved and then
        // refused at the next load, losing every model's learning.
        self.weight = within_f32(w_new);
        self.mean = within_f32(mean_new);
        self.var = within_f32((s / w_new).max(0.0));
        self.at = now.max(self.at);
    }
}

impl Tracked for Entity {
    fn weight(&self, now: i32, decay: &Decay) -> f64 {
        self.weight_at(now, decay)
    }
    fn last_bucket(&self) -> i32 {
        self.at
    }
    fn promotable(&self) -> bool {
        self.weight >= 1.5
    }
}

/// Sums counted in one closed bucket: every entity, and the newcomers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct BucketCount {
    entities: u32,
    newcomers: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Partition {
    all: Histogram,
    newcomers: Histogram,
    /// The last [`RECENT_BUCKETS`] closed buckets' counts, oldest first.
    recent: Vec<BucketCount>,
    buckets: u64,
    /// The sums of the open buckets (and of closed ones being folded): saved as the list of
    /// open buckets it replaced, the closing ones' with their [`Closing`].
    #[serde(rename = "open")]
    sums: BucketSums,
    /// [`Partition::per_bucket`] of all entities and of newcomers, as of the last close: it
    /// only changes when `recent` does, and sorting the counts on every event cost ~500 Ir.
    #[serde(skip)]
    sums_per_bucket: [f64; 2],
    /// [`Histogram::reach`] of `all` and of `newcomers` at the model's floor, as of the last
    /// close: a smaller running sum scores below the floor without computing it.
    #[serde(skip)]
    reach: [f64; 2],
}

impl Partition {
    fn new() -> Self {
        Partition {
            all: Histogram::new(),
            newcomers: Histogram::new(),
            recent: Vec::new(),
            buckets: 0,
            sums: BucketSums::default(),
            sums_per_bucket: [1.0; 2],
            reach: [f64::INFINITY; 2],
        }
    }

    /// Recomputes [`Partition::sums_per_bucket`] and [`Partition::reach`] after a close (or a
    /// load) changed `recent` and the histograms; `floor_p` from [`floor_probability`].
    fn recount(&mut self, floor_p: Option<f64>) {
        self.sums_per_bucket = [self.per_bucket(false), self.per_bucket(true)];
        self.reach = match floor_p {
            Some(p) => [
                self.all.reach(self.sums_per_bucket[0], p),
                self.newcomers.reach(self.sums_per_bucket[1], p),
            ],
            None => [0.0; 2],
        };
    }

    /// Whether a running sum `sum` is sure to score below the floor, whichever population its
    /// entity is compared with (see [`HighSum::observe`]).
    fn out_of_reach(&self, sum: f64) -> bool {
        let newcomers = if self.newcomers.total < MIN_HIST_WEIGHT {
            f64::INFINITY
        } else {
            self.reach[1]
        };
        sum < self.reach[0].min(newcomers)
    }

    /// Sums per bucket (at least 1): the mean over the recent closed buckets without the
    /// busiest eighth of them, so that neither the time of day nor a spray of destinations in a
    /// few buckets moves it.
    fn per_bucket(&self, newcomers: bool) -> f64 {
        let mut counts: Vec<u32> = self
            .recent
            .iter()
            .map(|c| if newcomers { c.newcomers } else { c.entities })
            .collect();
        counts.sort_unstable();
        let kept = &counts[..counts.len() - counts.len() / 8];
        if kept.is_empty() {
            return 1.0;
        }
        let sum: f64 = kept.iter().map(|&c| f64::from(c)).sum();
        (sum / kept.len() as f64).max(1.0)
    }

    fn check(&self) -> Result<(), ModelError> {
        self.all.check("partition.all")?;
        self.newcomers.check("partition.newcomers")?;
        if self.recent.len() > RECENT_BUCKETS {
            return Err(invalid("partition.recent", self.recent.len()));
        }
        // More than MAX_OPEN_BUCKETS open buckets: refused by the sums' own load.
        self.sums.check()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct HighSumState {
    bucket_span_ms: i64,
    hasher: KeyHasher,
    clock: Clock,
    partitions: KeyMap<Partition>,
    entities: KeyTable<Entity>,
    open_keys: usize,
    /// Buckets below this were folded early (memory pressure): late events for them are far-late.
    closed_below: Option<i32>,
    far_late: u64,
    unscored: u64,
    open_evictions: u64,
    /// Closed buckets whose sums are being folded, oldest first (see `close.rs`).
    closing: Vec<Closing>,
}

/// Written field by field as the state was before the sums of a destination shared a record:
/// the same format (version 4).
impl Serialize for HighSumState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct ClosingList<'a>(&'a HighSumState);
        impl Serialize for ClosingList<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let st = self.0;
                let mut seq = serializer.serialize_seq(Some(st.closing.len()))?;
                for c in &st.closing {
                    seq.serialize_element(&SavedClosingOf {
                        closing: c,
                        sums: st.partitions.get(&c.partition).map(|p| &p.sums),
                    })?;
                }
                seq.end()
            }
        }
        let mut s = serializer.serialize_struct("HighSumState", 11)?;
        s.serialize_field("bucket_span_ms", &self.bucket_span_ms)?;
        s.serialize_field("hasher", &self.hasher)?;
        s.serialize_field("clock", &self.clock)?;
        s.serialize_field("partitions", &self.partitions)?;
        s.serialize_field("entities", &self.entities)?;
        s.serialize_field("open_keys", &self.open_keys)?;
        s.serialize_field("closed_below", &self.closed_below)?;
        s.serialize_field("far_late", &self.far_late)?;
        s.serialize_field("unscored", &self.unscored)?;
        s.serialize_field("open_evictions", &self.open_evictions)?;
        s.serialize_field("closing", &ClosingList(self))?;
        s.end()
    }
}

impl HighSumState {
    fn new(c: &HighSumConfig) -> Self {
        HighSumState {
            bucket_span_ms: i64::from(c.model.bucket_span_secs) * 1000,
            hasher: KeyHasher::new(c.model.hash_seed),
            clock: Clock::new(c.model.bucket_span_secs, c.model.lateness_buckets),
            partitions: KeyMap::default(),
            entities: KeyTable::new(c.model.max_entities),
            open_keys: 0,
            closed_below: None,
            far_late: 0,
            unscored: 0,
            open_evictions: 0,
            closing: Vec::new(),
        }
    }
}

impl HighSumState {
    /// Puts the sums of loaded closing buckets in their partitions' records (those of an
    /// unknown partition are dropped: the check refuses the state).
    fn place_read_sums(&mut self) {
        for c in &mut self.closing {
            if let (Some(sums), Some(p)) =
                (c.take_read_sums(), self.partitions.get_mut(&c.partition))
            {
                p.sums.load_closing(c.bucket, sums);
            }
        }
    }

    /// Every field in range for this configuration, before the state may replace a running one.
    fn check(&self, config: &HighSumConfig) -> Result<(), ModelError> {
        config.model.check_saved_span(self.bucket_span_ms)?;
        self.clock.check(&config.model)?;
        if self.partitions.len() > config.model.max_partitions {
            return Err(invalid("partitions", self.partitions.len()));
        }
        // The closing buckets first: a bad one makes their partition's sums look wrong too.
        for (i, c) in self.closing.iter().enumerate() {
            c.check()?;
            let Some(p) = self.partitions.get(&c.partition) else {
                return Err(invalid("closing.partition", c.partition));
            };
            // Its sums share the partition's records with the open buckets' (and with other
            // closing buckets'): one bucket closing twice, or open, would mix them.
            let twice = self.closing[..i]
                .iter()
                .any(|o| (o.partition, o.bucket) == (c.partition, c.bucket));
            if twice || p.sums.is_open(c.bucket) {
                return Err(invalid("closing.bucket", c.bucket));
            }
            if Some(c.now) != self.clock.head() {
                return Err(invalid("closing.now", c.now));
            }
            if self.closed_below.is_none_or(|b| c.bucket >= b) {
                return Err(invalid("closing.bucket", c.bucket));
            }
        }
        self.partitions.values().try_for_each(Partition::check)?;
        let open: usize = self.partitions.values().map(|p| p.sums.open_len()).sum();
        if open != self.open_keys {
            return Err(invalid("open_keys", self.open_keys));
        }
        if let (Some(c), Some(h)) = (self.closed_below, self.clock.head()) {
            if c > h.saturating_add(1) {
                return Err(invalid("closed_below", c));
            }
        }
        self.entities.check(Entity::check)
    }
}

/// A running `high_sum` model (built from [`HighSumConfig`]).
#[derive(Debug, Clone)]
pub struct HighSum {
    config: HighSumConfig,
    decay: Decay,
    /// [`floor_probability`] of the configured score floor.
    floor_p: Option<f64>,
    /// Sums of closed buckets folded per event ([`FOLD_PER_EVENT`]; tests change it).
    fold_per_event: usize,
    state: HighSumState,
}

impl HighSum {
    /// The configuration the model was built from.
    pub fn config(&self) -> &HighSumConfig {
        &self.config
    }

    fn evict_small_open_sums(st: &mut HighSumState, part_key: u64, bucket: i32) {
        let Some(p) = st
            .partitions
            .get_mut(&part_key)
            .filter(|p| p.sums.is_open(bucket))
        else {
            return;
        };
        let cut = p.sums.evict_smaller_half(bucket);
        st.open_keys = st.open_keys.saturating_sub(cut);
        st.open_evictions += cut as u64;
    }
}

impl Model for HighSum {
    fn observe(&mut self, obs: &Observation<'_>) -> Option<Scored> {
        if !(obs.value.is_finite() && obs.value >= 0.0) || (obs.by.is_none() && obs.over.is_none())
        {
            self.state.unscored += 1;
            return None;
        }
        let Some((slot, close)) = self.state.clock.place(obs.time_ms, obs.arrival_ms) else {
            self.state.unscored += 1;
            return None;
        };
        if let Some(oldest_open) = close {
            self.close_before(oldest_open);
        }
        // Most events have nothing to fold: that is seen here, without the call.
        if !self.state.closing.is_empty() {
            self.fold_some(self.fold_per_event);
        }
        let cap = self.config.model.max_entities;
        let learning_buckets = u64::from(self.config.model.learning_buckets);
        let st = &mut self.state;
        let now = st.clock.head()?;
        let part_key = st.hasher.key(&[obs.partition]);
        let key = st.hasher.key(&[obs.partition, obs.by, obs.over]);
        // A new partition is refused at the cap here, and made by an `entry` below (for the
        // sum, or a far-late event's score; under memory pressure before the close walks the
        // partitions, see there): below the cap no look-up is spent on whether it exists (what
        // comes between treats an absent partition as an empty one).
        if st.partitions.len() >= self.config.model.max_partitions
            && !st.partitions.contains_key(&part_key)
        {
            st.unscored += 1;
            return None;
        }

        // Running sum.
        let slot = match slot {
            Slot::Open(b) if st.closed_below.is_some_and(|c| b < c) => Slot::FarLate(b),
            other => other,
        };
        let (bucket, sum, part) = match slot {
            Slot::Open(b) => {
                let has_key = |st: &HighSumState| {
                    st.partitions
                        .get(&part_key)
                        .is_some_and(|p| p.sums.contains(key, b))
                };
                if st.open_keys >= cap && !has_key(st) {
                    // Memory pressure: fold older open buckets early, then drop small sums.
                    let older_open = st
                        .partitions
                        .values()
                        .any(|p| p.sums.open_buckets().iter().any(|&o| o < b));
                    if older_open {
                        // Made before the close walks the partitions, as before this cut: an
                        // insertion that grows the map would change the order it walks them in.
                        self.state
                            .partitions
                            .entry(part_key)
                            .or_insert_with(Partition::new);
                        self.close_before(b);
                    }
                }
                let st = &mut self.state;
                if st.open_keys >= cap && !has_key(st) {
                    Self::evict_small_open_sums(st, part_key, b);
                }
                // The destination's history must hold its sums of the buckets still being
                // folded (it is read below); taking them also frees their places in its record.
                if !st.closing.is_empty() {
                    self.fold_key(part_key, key);
                }
                let open_keys = &mut self.state.open_keys;
                let part = self
                    .state
                    .partitions
                    .entry(part_key)
                    .or_insert_with(Partition::new);
                part.sums.open(b);
                let sum = match part.sums.add(key, b, obs.value) {
                    Some(sum) => sum,
                    None if *open_keys < cap => {
                        part.sums.insert(key, b, obs.value);
                        *open_keys += 1;
                        obs.value
                    }
                    None => {
                        part.sums.drop_if_empty(key);
                        obs.value
                    }
                };
                // The partition found here is the one scored below (no look-up after the sum).
                (b, sum, &*part)
            }
            Slot::FarLate(b) => {
                if !self.state.closing.is_empty() {
                    self.fold_key(part_key, key);
                    if let Some(p) = self.state.partitions.get_mut(&part_key) {
                        p.sums.drop_if_empty(key);
                    }
                }
                self.state.far_late += 1;
                let part = self
                    .state
                    .partitions
                    .entry(part_key)
                    .or_insert_with(Partition::new);
                (b, obs.value, &*part)
            }
        };
        let (entities, clock) = (&self.state.entities, &self.state.clock);
        let entity = entities.get(key).copied();
        let ent_w = entity.map_or(0.0, |e| e.weight_at(now, &self.decay));
        let established = ent_w >= MIN_SELF_BUCKETS;
        // The population an entity is compared with: all destinations for an established one,
        // the sums new destinations get otherwise (all while too few have been seen).
        let (hist, newcomers) = if established || part.newcomers.total < MIN_HIST_WEIGHT {
            (&part.all, false)
        } else {
            (&part.newcomers, true)
        };
        let per_bucket = part.sums_per_bucket[usize::from(newcomers)];
        let learning = part.buckets < learning_buckets;
        // An event that cannot alert (learning, or a sum too small to reach the floor) is
        // reported at 0 without computing its score: most events, and the costly part.
        let skip = self.floor_p.is_some() && (learning || part.out_of_reach(sum));
        let p_pop = if skip {
            1.0
        } else {
            (hist.p_at_least(sum) * per_bucket).min(1.0)
        };
        // Any history of its own: flagged only when unusual for the population and for itself.
        let neg_log10_p = match entity {
            _ if skip => 0.0,
            Some(e) if ent_w >= SELF_MIN_WEIGHT => {
                let var =
                    (f64::from(e.var) * ent_w + PRIOR_VAR * PRIOR_WEIGHT) / (ent_w + PRIOR_WEIGHT);
                let z = (sum.max(1.0).ln() - f64::from(e.mean)) / var.sqrt();
                (-p_pop.log10()).min(normal_neg_log10_sf(z))
            }
            _ => -p_pop.log10(),
        };
        let typical = match entity {
            Some(e) if established => Typical::Ln(e.mean),
            _ => Typical::Value(part.all.cache.median),
        };
        Some(Scored {
            score: score_from_log10_p(neg_log10_p),
            learning,
            far_late: matches!(slot, Slot::FarLate(_)),
            bucket_start_ms: clock.start_ms(bucket),
            bucket_span_ms: clock.span_ms(),
            actual: sum,
            detail: Detail::HighSum {
                typical,
                bucket_sum: sum,
                population_p99_9: part.all.cache.p99_9,
                entity_buckets_seen: ent_w,
            },
        })
    }

    fn status(&self) -> ModelStatus {
        let st = &self.state;
        let buckets_seen = st.partitions.values().map(|p| p.buckets).max().unwrap_or(0);
        let open_bytes: usize = st
            .partitions
            .values()
            .map(|p| {
                p.sums.bytes()
                    + p.all.bytes()
                    + p.newcomers.bytes()
                    + std::mem::size_of::<Partition>()
            })
            .chain(st.closing.iter().map(Closing::bytes))
            .sum();
        ModelStatus {
            learning: buckets_seen < u64::from(self.config.model.learning_buckets),
            buckets_seen,
            learning_buckets: u64::from(self.config.model.learning_buckets),
            partitions: st.partitions.len(),
            tracked_entities: st.entities.established_len(),
            probationary_entities: st.entities.probation_len(),
            approx_bytes: st.entities.approx_bytes() + open_bytes,
            evictions: st.entities.evictions() + st.open_evictions,
            far_late_events: st.far_late,
            future_events: st.clock.future_events(),
            unscored_events: st.unscored,
        }
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), ModelError> {
        encode_state(Kind::HighSum, &self.state, out)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        // Version 3 had no `closing` (an empty one is one byte: its length).
        let mut state: HighSumState = decode_state(Kind::HighSum, bytes, &[0])?;
        // Counted before their sums are placed: each placement searches its partition's
        // buckets, so a crafted list of many closing buckets would cost their square.
        if state.closing.len() > state.partitions.len() * MAX_OPEN_BUCKETS {
            return Err(invalid("closing", state.closing.len()));
        }
        state.place_read_sums();
        state.check(&self.config)?;
        for p in state.partitions.values_mut() {
            p.all.trim();
            p.newcomers.trim();
            p.all.refresh();
            p.newcomers.refresh();
            p.recount(self.floor_p);
        }
        state.entities.set_cap(self.config.model.max_entities);
        if let Some(h) = state.clock.head() {
            state.entities.enforce_cap(h, &self.decay);
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
