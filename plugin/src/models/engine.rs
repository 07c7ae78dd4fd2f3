//! Machinery shared by every model: the event-time bucket clock, exponential decay, the bounded
//! two-tier key table, keyed hashing, the score curve and human formatting.
//!
//! # Bucket clock
//! `bucket = time_ms.div_euclid(bucket_span_ms)`. The newest bucket seen is the *head*. Buckets
//! `head - lateness ..= head` are *open*: events for them are counted into their own bucket. When
//! the head moves forward, buckets older than `head - lateness` *close* (the model folds them into
//! its history). An event for a closed bucket is *far-late*: it is scored, but changes nothing.
//! A forward jump closes everything at once and decays history by the whole gap, so the clock
//! does not take one event's word for it ([`Clock`]): an event far ahead of the host's clock, or
//! a jump that neither the host's clock nor a quorum of events confirms, is counted into the
//! current bucket instead and counted as a *future* event.
//!
//! # Decay
//! Every count is a decayed weight: one bucket of age `a` weighs `0.5^(a / half_life_buckets)`.
//! Weights are stored with the bucket they are valid at and decayed lazily when read.
//!
//! # Memory cap and eviction policy ([`KeyTable`])
//! `max_entities` keys per job, split into an *established* tier (3/4) and a *probationary* tier
//! (1/4). A new key always enters probation. A probationary key is promoted at a bucket close, or
//! when probation fills up while the established tier has room, once the model says it has enough
//! evidence (it appeared in at least two distinct buckets). When probation is still full, it sheds
//! half of itself in one pass (amortised O(1) per insert): if the established tier has free room
//! for it, the heavier half moves there (free room is lent, never taken from a key); otherwise the
//! lighter half by decayed weight (oldest first on ties) is evicted. When the established tier is
//! full at a bucket close, established keys are evicted only if their decayed weight is below that
//! of the candidates being promoted, at most 1/16 of the tier per bucket. So a spray of random
//! keys, however large, only churns probation and free room and never evicts an established key;
//! displacing one takes a key that kept appearing for longer than it has recently, and even then
//! only 1/16 of the baseline can go per bucket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rapidhash::v3::{rapidhash_v3_inline, RapidSecrets};
use serde::{Deserialize, Serialize};

use super::{ConfigProblem, ModelError, STATE_VERSION};

/// Keys are already uniformly distributed (keyed rapidhash), so the maps use them as they are.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by pre-hashed 64-bit keys.
pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// Keyed 64-bit hashing of field values: rapidhash V3 (its protected variant) under secrets
/// derived from the seed. The keys are part of the saved state, so the hash must give the same
/// output on every platform and crate version (rapidhash's `v3` functions promise that;
/// foldhash and ahash do not); only the seed is saved, the secrets are derived again on load.
/// Why this hash and not SipHash: see ARCHITECTURE.md ("Hash keys are secret per installation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u64", into = "u64")]
pub struct KeyHasher {
    seed: u64,
    secrets: RapidSecrets,
}

impl From<u64> for KeyHasher {
    fn from(seed: u64) -> Self {
        KeyHasher::new(seed)
    }
}

impl From<KeyHasher> for u64 {
    fn from(hasher: KeyHasher) -> u64 {
        hasher.seed
    }
}

/// What an absent part of a key is folded in with (an empty string is hashed like any other).
const ABSENT: u64 = 0x6162_7365_6e74_00fe;

impl KeyHasher {
    /// A hasher with the given secret.
    pub fn new(seed: u64) -> Self {
        KeyHasher {
            seed,
            secrets: RapidSecrets::seed(seed ^ 0x6567_7265_7373_7761),
        }
    }

    /// Hash of a sequence of optional strings (absent and empty are distinct): each present part
    /// is hashed once, seeded with the hash of the parts before it; an absent one is a mix.
    #[inline]
    pub fn key(&self, parts: &[Option<&str>]) -> u64 {
        let mut h = self.secrets.seed;
        for p in parts {
            h = match p {
                Some(s) => rapidhash_v3_inline::<true, false, true>(
                    s.as_bytes(),
                    &RapidSecrets {
                        seed: h,
                        secrets: self.secrets.secrets,
                    },
                ),
                None => mix(h, ABSENT),
            };
        }
        h
    }
}

/// Mixes two keys into one (for derived keys such as value-within-entity).
pub fn mix(a: u64, b: u64) -> u64 {
    let x = (a ^ b.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 31)
}

/// Where an event falls on the bucket clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An open bucket (the head or within lateness): count the event into it.
    Open(i32),
    /// A closed bucket: score only.
    FarLate(i32),
}

/// How far ahead of the host's clock an event's time is believed.
pub const FUTURE_SKEW_MS: i64 = 10 * 60 * 1000;
/// Events more than this far behind the host's clock mean the host's clock says nothing about
/// them (a replay of old logs): jumps of the model clock then need a quorum of events.
const ARRIVAL_VOUCHES_MS: i64 = 24 * 3600 * 1000;
/// Events ahead of the head by two buckets or more that move the clock (the earliest of them).
pub const CLOCK_QUORUM: usize = 3;

/// The event-time bucket clock of one job, which no single event can move far.
///
/// The head (newest bucket) moves forward one bucket at a time as events arrive. A jump of two
/// buckets or more is believed when the host's clock vouches for it (the event is at most a day
/// behind the host's clock and not ahead of it: a live stream after a quiet spell), or, when it
/// cannot (a replay of old logs), once [`CLOCK_QUORUM`] events ahead of the head have been seen:
/// the head then moves to the earliest of them. An event further ahead of the host's clock than
/// [`FUTURE_SKEW_MS`] is taken to happen at that bound. An event whose jump is not believed is
/// counted into the head bucket and counted as a *future* event: one forged or skewed timestamp
/// never ages the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    span_ms: i64,
    lateness: i32,
    head: Option<i32>,
    /// Times of recent events two buckets or more ahead of the head, not yet believed.
    pending: Vec<i64>,
    /// Events whose time was not believed (clamped to the host clock or to the head).
    future: u64,
    /// The head bucket's time range `[start, end)` in ms, set when the head is: an event in it
    /// (most events) is placed without a division. Empty until then (and after a load).
    #[serde(skip)]
    head_ms: (i64, i64),
}

impl Clock {
    /// A clock with buckets of `span_secs` seconds and `lateness` open buckets behind the head.
    pub fn new(span_secs: u32, lateness: u32) -> Self {
        Clock {
            span_ms: i64::from(span_secs.max(1)) * 1000,
            lateness: i32::try_from(lateness).unwrap_or(i32::MAX),
            head: None,
            pending: Vec::new(),
            future: 0,
            head_ms: (0, 0),
        }
    }

    /// Moves the head to `bucket`.
    fn set_head(&mut self, bucket: i32) {
        self.head = Some(bucket);
        let start = self.start_ms(bucket);
        self.head_ms = (start, start.saturating_add(self.span_ms));
    }

    /// Bucket length in ms.
    pub fn span_ms(&self) -> i64 {
        self.span_ms
    }

    /// The newest bucket seen.
    pub fn head(&self) -> Option<i32> {
        self.head
    }

    /// Start of a bucket in ms.
    pub fn start_ms(&self, bucket: i32) -> i64 {
        i64::from(bucket) * self.span_ms
    }

    /// Oldest open bucket for the current head.
    pub fn oldest_open(&self) -> Option<i32> {
        self.head.map(|h| h.saturating_sub(self.lateness))
    }

    /// Events whose time was not believed so far.
    pub fn future_events(&self) -> u64 {
        self.future
    }

    fn bucket(&self, time_ms: i64) -> Option<i32> {
        i32::try_from(time_ms.div_euclid(self.span_ms)).ok()
    }

    /// Places an event of time `time_ms` that the host received at `arrival_ms` (its clock).
    /// Returns its slot and, when the head moved forward, the new oldest open bucket: the caller
    /// must close every open bucket older than it. `None` for a time whose bucket index does not
    /// fit the state's 32-bit bucket numbers.
    pub fn place(&mut self, time_ms: i64, arrival_ms: i64) -> Option<(Slot, Option<i32>)> {
        let limit = arrival_ms.saturating_add(FUTURE_SKEW_MS);
        if let (Some(h), true) = (self.head, time_ms <= limit) {
            if (self.head_ms.0..self.head_ms.1).contains(&time_ms) {
                return Some((Slot::Open(h), None));
            }
        }
        let mut distrusted = false;
        let time_ms = if time_ms > limit {
            distrusted = true;
            limit
        } else {
            time_ms
        };
        let bucket = self.bucket(time_ms)?;
        let Some(h) = self.head else {
            self.set_head(bucket);
            self.future += u64::from(distrusted);
            return Some((
                Slot::Open(bucket),
                Some(bucket.saturating_sub(self.lateness)),
            ));
        };
        if bucket <= h {
            if self.head_ms == (0, 0) {
                // A loaded clock: its head's range, for the next events.
                self.set_head(h);
            }
            self.future += u64::from(distrusted);
            let slot = if bucket >= h.saturating_sub(self.lateness) {
                Slot::Open(bucket)
            } else {
                Slot::FarLate(bucket)
            };
            return Some((slot, None));
        }
        let vouched = arrival_ms.saturating_sub(time_ms) <= ARRIVAL_VOUCHES_MS;
        let to = if bucket == h.saturating_add(1) || vouched {
            Some(bucket)
        } else {
            if self.pending.len() >= CLOCK_QUORUM {
                self.pending.remove(0);
            }
            self.pending.push(time_ms);
            (self.pending.len() >= CLOCK_QUORUM)
                .then(|| self.pending.iter().min().and_then(|&t| self.bucket(t)))
                .flatten()
        };
        match to {
            Some(to) => {
                self.future += u64::from(distrusted);
                self.set_head(to);
                let span = self.span_ms;
                self.pending
                    .retain(|&t| t.div_euclid(span) > i64::from(to) + 1);
                let slot = if bucket <= to {
                    Slot::Open(bucket)
                } else {
                    // A pending event further ahead than the quorum's earliest: not yet.
                    self.future += 1;
                    Slot::Open(to)
                };
                Some((slot, Some(to.saturating_sub(self.lateness))))
            }
            None => {
                self.future += 1;
                Some((Slot::Open(h), None))
            }
        }
    }

    /// Checks a loaded clock against the configuration: span, lateness and pending events.
    pub fn check(&self, config: &ModelConfig) -> Result<(), ModelError> {
        config.check_saved_span(self.span_ms)?;
        if !(0..=16).contains(&self.lateness) {
            return Err(invalid("clock.lateness", self.lateness));
        }
        if self.pending.len() > CLOCK_QUORUM {
            return Err(invalid("clock.pending", self.pending.len()));
        }
        Ok(())
    }
}

/// The error for a loaded state value out of range.
pub fn invalid(field: &'static str, value: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        field,
        value: value.to_string(),
    }
}

/// Checks that a loaded weight is a finite number, not negative.
pub fn check_weight(field: &'static str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, value))
    }
}

/// Exponential decay per bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    ln_factor: f64,
}

impl Decay {
    /// Decay with the given half-life in buckets (0 or less: no decay).
    pub fn new(half_life_buckets: f64) -> Self {
        let ln_factor = if half_life_buckets > 0.0 {
            -std::f64::consts::LN_2 / half_life_buckets
        } else {
            0.0
        };
        Decay { ln_factor }
    }

    /// Weight of something `age` buckets old (1 when `age <= 0`).
    #[inline]
    pub fn factor(&self, age: i64) -> f64 {
        if age <= 0 {
            1.0
        } else {
            (self.ln_factor * age as f64).exp()
        }
    }

    /// Sum of the weights of one unit per bucket over an infinite history (the steady-state
    /// decayed bucket count).
    pub fn steady_total(&self) -> f64 {
        if self.ln_factor == 0.0 {
            f64::INFINITY
        } else {
            1.0 / (1.0 - self.ln_factor.exp())
        }
    }
}

/// A decayed weight valid at bucket `at`.
///
/// Loaded ones are checked with [`Decayed::check`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Decayed {
    /// The weight at bucket `at`.
    pub value: f64,
    /// The bucket the weight is valid at.
    pub at: i32,
}

impl Decayed {
    /// The weight at bucket `now`.
    #[inline]
    pub fn get(&self, now: i32, decay: &Decay) -> f64 {
        self.value * decay.factor(i64::from(now) - i64::from(self.at))
    }

    /// Checks a loaded weight (finite, not negative).
    pub fn check(&self, field: &'static str) -> Result<(), ModelError> {
        check_weight(field, self.value)
    }

    /// Adds one unit that happened in `bucket`, bringing the weight to `now` (>= bucket) first.
    #[inline]
    pub fn add(&mut self, amount: f64, bucket: i32, now: i32, decay: &Decay) {
        let now = now.max(self.at);
        self.value =
            self.get(now, decay) + amount * decay.factor(i64::from(now) - i64::from(bucket));
        self.at = now;
    }
}

/// An entry that a [`KeyTable`] can rank for eviction and promotion.
pub trait Tracked {
    /// Decayed evidence for this key at bucket `now`.
    fn weight(&self, now: i32, decay: &Decay) -> f64;
    /// Last bucket this key was seen in (tie-break: older goes first).
    fn last_bucket(&self) -> i32;
    /// Whether the key has enough evidence to leave probation.
    fn promotable(&self) -> bool;
}

/// A bounded two-tier table of tracked keys (policy in the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>"))]
pub struct KeyTable<V> {
    established: KeyMap<V>,
    probation: KeyMap<V>,
    cap_established: usize,
    cap_probation: usize,
    evictions: u64,
}

impl<V: Tracked> KeyTable<V> {
    /// A table holding at most `max_entities` keys (at least 4).
    pub fn new(max_entities: usize) -> Self {
        let max = max_entities.max(4);
        let cap_probation = (max / 4).max(1);
        KeyTable {
            established: KeyMap::default(),
            probation: KeyMap::default(),
            cap_established: max - cap_probation,
            cap_probation,
            evictions: 0,
        }
    }

    /// The entry of a key, in either tier.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&V> {
        self.established
            .get(&key)
            .or_else(|| self.probation.get(&key))
    }

    /// The entry of a key, inserted into probation with `make` when absent (evicting the weaker
    /// half of probation first when it is full).
    pub fn entry(&mut self, key: u64, now: i32, decay: &Decay, make: impl FnOnce() -> V) -> &mut V {
        if self.established.contains_key(&key) {
            // Two lookups keep the borrow checker happy; the key is hot in cache.
            return self.established.entry(key).or_insert_with(make);
        }
        if !self.probation.contains_key(&key) && self.probation.len() >= self.cap_probation {
            self.promote_ready();
            if self.probation.len() >= self.cap_probation {
                self.shed_probation_half(now, decay);
            }
        }
        self.probation.entry(key).or_insert_with(make)
    }

    /// Moves promotable probationary keys into free established room (no displacement).
    fn promote_ready(&mut self) {
        let room = self.cap_established.saturating_sub(self.established.len());
        if room == 0 {
            return;
        }
        let ready: Vec<u64> = self
            .probation
            .iter()
            .filter(|(_, v)| v.promotable())
            .map(|(k, _)| *k)
            .take(room)
            .collect();
        for k in ready {
            if let Some(v) = self.probation.remove(&k) {
                self.established.insert(k, v);
            }
        }
    }

    /// Makes room in a full probation tier: its heavier half moves into free established room
    /// when there is enough, otherwise its lighter half is evicted.
    fn shed_probation_half(&mut self, now: i32, decay: &Decay) {
        let mut ranked: Vec<(f64, i32, u64)> = self
            .probation
            .iter()
            .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), *k))
            .collect();
        let cut = ranked.len() / 2;
        if cut == 0 {
            return;
        }
        ranked.select_nth_unstable_by(cut, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let room = self.cap_established.saturating_sub(self.established.len());
        if room >= ranked.len() - cut {
            for (_, _, k) in &ranked[cut..] {
                if let Some(v) = self.probation.remove(k) {
                    self.established.insert(*k, v);
                }
            }
        } else {
            for (_, _, k) in &ranked[..cut] {
                self.probation.remove(k);
            }
            self.evictions += cut as u64;
        }
    }

    /// Bucket-close maintenance: promotes probationary keys with enough evidence, displacing
    /// weaker established keys when the established tier is full.
    pub fn maintain(&mut self, now: i32, decay: &Decay) {
        let mut candidates: Vec<(f64, u64)> = self
            .probation
            .iter()
            .filter(|(_, v)| v.promotable())
            .map(|(k, v)| (v.weight(now, decay), *k))
            .collect();
        if candidates.is_empty() {
            return;
        }
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let room = self.cap_established.saturating_sub(self.established.len());
        if room < candidates.len() {
            // Displace at most 1/16 of the tier, and only keys weaker than the median candidate.
            let bar = candidates[candidates.len() / 2].0;
            let limit = (self.cap_established / 16)
                .max(1)
                .min(candidates.len() - room);
            let mut weak: Vec<(f64, i32, u64)> = self
                .established
                .iter()
                .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), *k))
                .filter(|(w, _, _)| *w < bar)
                .collect();
            if weak.len() > limit {
                weak.select_nth_unstable_by(limit, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                weak.truncate(limit);
            }
            for (_, _, k) in &weak {
                self.established.remove(k);
            }
            self.evictions += weak.len() as u64;
        }
        let room = self.cap_established.saturating_sub(self.established.len());
        for (_, k) in candidates.into_iter().take(room) {
            if let Some(v) = self.probation.remove(&k) {
                self.established.insert(k, v);
            }
        }
    }

    /// Changes the cap (e.g. after loading state saved under another configuration); the tiers
    /// shrink lazily through normal eviction.
    pub fn set_cap(&mut self, max_entities: usize) {
        let max = max_entities.max(4);
        self.cap_probation = (max / 4).max(1);
        self.cap_established = max - self.cap_probation;
    }

    /// The entry of a key, in either tier, to change it in place.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        match self.established.get_mut(&key) {
            Some(v) => Some(v),
            None => self.probation.get_mut(&key),
        }
    }

    /// Checks every entry of a loaded table, and that the tiers fit their caps as saved.
    pub fn check(&self, entry: impl Fn(&V) -> Result<(), ModelError>) -> Result<(), ModelError> {
        if self.cap_probation == 0 || self.cap_established == 0 {
            return Err(invalid("table.cap", 0));
        }
        if self.established.len() > self.cap_established {
            return Err(invalid("table.established", self.established.len()));
        }
        if self.probation.len() > self.cap_probation {
            return Err(invalid("table.probation", self.probation.len()));
        }
        self.established
            .values()
            .chain(self.probation.values())
            .try_for_each(entry)
    }

    /// Evicts the lightest keys of each tier down to its cap (after [`KeyTable::set_cap`] to a
    /// smaller one).
    pub fn enforce_cap(&mut self, now: i32, decay: &Decay) {
        for (map, cap) in [
            (&mut self.established, self.cap_established),
            (&mut self.probation, self.cap_probation),
        ] {
            if map.len() <= cap {
                continue;
            }
            let mut ranked: Vec<(f64, i32, u64)> = map
                .iter()
                .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), *k))
                .collect();
            let cut = map.len() - cap;
            ranked.select_nth_unstable_by(cut, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (_, _, k) in &ranked[..cut] {
                map.remove(k);
            }
            self.evictions += cut as u64;
        }
    }

    /// Applies `f` to every entry (tests build crafted states with it).
    #[cfg(test)]
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut V)) {
        self.established
            .values_mut()
            .chain(self.probation.values_mut())
            .for_each(&mut f);
    }

    /// Established keys.
    pub fn established_len(&self) -> usize {
        self.established.len()
    }

    /// Probationary keys.
    pub fn probation_len(&self) -> usize {
        self.probation.len()
    }

    /// Keys evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Heap bytes of both tiers at their current capacity.
    pub fn approx_bytes(&self) -> usize {
        map_bytes(&self.established) + map_bytes(&self.probation)
    }
}

/// Kind byte written after the version in saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `rare` model.
    Rare = 1,
    /// A `high_sum` model.
    HighSum = 2,
}

/// Encodes a state behind a `(version, kind)` header.
pub fn encode_state<T: Serialize>(kind: Kind, state: &T) -> Result<Vec<u8>, ModelError> {
    let mut out = postcard::to_allocvec(&(STATE_VERSION, kind as u8))?;
    out.extend_from_slice(&postcard::to_allocvec(state)?);
    Ok(out)
}

/// Decodes a state written by [`encode_state`], checking the header first.
pub fn decode_state<T: for<'de> Deserialize<'de>>(
    kind: Kind,
    bytes: &[u8],
) -> Result<T, ModelError> {
    let ((version, found), rest): ((u32, u8), &[u8]) = postcard::take_from_bytes(bytes)?;
    if version != STATE_VERSION {
        return Err(ModelError::Version {
            found: version,
            expected: STATE_VERSION,
        });
    }
    if found != kind as u8 {
        return Err(ModelError::Mismatch {
            field: "model",
            state: found.to_string(),
            config: (kind as u8).to_string(),
        });
    }
    Ok(postcard::from_bytes(rest)?)
}

/// Approximate heap bytes of a map at its capacity (hashbrown: one control byte per slot, slots
/// a power of two at most 7/8 full).
pub fn map_bytes<V>(m: &KeyMap<V>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    let slots = (cap * 8 / 7).next_power_of_two();
    slots * (std::mem::size_of::<(u64, V)>() + 1)
}

/// The anchors of [`score_from_log10_p`]: (`-log10 p`, score).
const SCORE_ANCHORS: [(f64, f64); 9] = [
    (0.0, 0.0),
    (0.5, 3.0),
    (1.0, 20.0),
    (1.5, 60.0),
    (1.7, 75.0),
    (2.5, 85.0),
    (3.0, 90.0),
    (4.0, 96.0),
    (6.0, 100.0),
];

/// Score 0-100 from `-log10 p`: piecewise linear through these anchors, monotone.
///
/// | -log10 p | 0 | 0.5 | 1 | 1.5 | 1.7 | 2.5 | 3 | 4 | 6 |
/// |---|---|---|---|---|---|---|---|---|---|
/// | score | 0 | 3 | 20 | 60 | 75 | 85 | 90 | 96 | 100 |
///
/// Why: the steep middle puts "critical" (75) at p = 0.02, i.e. a value absent from ~30 buckets of
/// history (`rare`) or a bucket sum above everything in a population of ~50 sums per bucket
/// (`high_sum`, whose `p` is already multiplied by the population size); anything seen in one
/// bucket out of ten or more (p >= 0.1) stays under 20, below "minor"; the flat top separates
/// "never in a month" (p ~ 2e-4, ~94) from "never in a day" (~80) without saturating.
pub fn score_from_log10_p(l: f64) -> f64 {
    if l.is_nan() || l <= 0.0 {
        return 0.0;
    }
    for w in SCORE_ANCHORS.windows(2) {
        let (x0, y0) = w[0];
        let (x1, y1) = w[1];
        if l <= x1 {
            return y0 + (y1 - y0) * (l - x0) / (x1 - x0);
        }
    }
    100.0
}

/// The probability at or above which an event is sure to score below `score_floor`, with a
/// margin (twice the probability at the floor, or halfway to 1) so that rounding in the exact
/// computation can never make such an event reach the floor. `None` when every score is wanted
/// (a floor of 0).
///
/// Why: the score is monotone in `-log10 p`, so a model can compare `p` (or a bound of it it
/// already has) with this instead of computing logarithms and tails for the many events that
/// cannot alert.
pub fn floor_probability(score_floor: f64) -> Option<f64> {
    if score_floor.is_nan() || score_floor <= 0.0 {
        return None;
    }
    // The inverse of `score_from_log10_p` at the floor.
    let mut l = f64::INFINITY;
    for w in SCORE_ANCHORS.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if score_floor <= y1 {
            l = x0 + (x1 - x0) * (score_floor - y0) / (y1 - y0);
            break;
        }
    }
    let p = 10f64.powf(-l);
    Some((2.0 * p).min(0.5 * (1.0 + p)))
}

/// `-log10` of the standard normal upper tail `P(Z >= z)`.
pub fn normal_neg_log10_sf(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    if z < 5.0 {
        // erfc via Numerical Recipes' erfcc (fractional error < 1.2e-7).
        let x = z / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * x.abs());
        let y = t
            * (-x * x - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        let erfc = if x >= 0.0 { y } else { 2.0 - y };
        -(0.5 * erfc).max(1e-300).log10()
    } else {
        // Mills ratio asymptote.
        let ln_sf = -0.5 * z * z - (z * (2.0 * std::f64::consts::PI).sqrt()).ln();
        -ln_sf / std::f64::consts::LN_10
    }
}

/// What every model is configured with: the time grid, learning, forgetting and memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Bucket length in seconds (Elastic `bucket_span`; at least 60).
    pub bucket_span_secs: u32,
    /// Buckets with data a partition needs before its events may be flagged.
    pub learning_buckets: u32,
    /// Half-life of history, in buckets (at least 1).
    pub half_life_buckets: f64,
    /// Buckets behind the newest one that still accept events (at most 16).
    pub lateness_buckets: u32,
    /// Most keys (values or entities) tracked by the job, all partitions together; also caps
    /// the per-bucket working sets.
    pub max_entities: usize,
    /// Most partitions; events of further partitions are not scored.
    pub max_partitions: usize,
    /// Secret mixed into the key hashes (kept in saved state).
    pub hash_seed: u64,
    /// The score at which the job's rules alert (the highest of their thresholds). A model that
    /// gathers evidence over several buckets reports an episode once, when its score first
    /// reaches this, instead of once per bucket.
    pub alert_score: f64,
    /// The least score any of the job's rules alerts at (0: every score is wanted, as for score
    /// records). A score the model can show is below it is not computed: it is reported as 0.
    pub score_floor: f64,
}

impl ModelConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, message: String| {
            problems.push(ConfigProblem { field, message });
        };
        if self.bucket_span_secs < 60 {
            bad(
                "bucket_span_secs",
                format!("must be at least 60, got {}", self.bucket_span_secs),
            );
        }
        if !(self.half_life_buckets.is_finite() && self.half_life_buckets >= 1.0) {
            bad(
                "half_life_buckets",
                format!("must be a number >= 1, got {}", self.half_life_buckets),
            );
        }
        if self.lateness_buckets > 16 {
            bad(
                "lateness_buckets",
                format!("must be at most 16, got {}", self.lateness_buckets),
            );
        }
        if self.max_entities < 16 {
            bad(
                "max_entities",
                format!("must be at least 16, got {}", self.max_entities),
            );
        }
        if self.max_partitions == 0 {
            bad("max_partitions", "must be at least 1".to_string());
        }
        if !(0.0..=self.alert_score.min(100.0)).contains(&self.score_floor) {
            bad(
                "score_floor",
                format!(
                    "must be from 0 to alert_score ({}), got {}",
                    self.alert_score, self.score_floor
                ),
            );
        }
        if !(self.alert_score > 0.0 && self.alert_score <= 100.0) {
            bad(
                "alert_score",
                format!("must be above 0 and at most 100, got {}", self.alert_score),
            );
        }
        problems
    }

    /// Refuses state saved under another bucket span: its buckets would not line up.
    pub fn check_saved_span(&self, saved_span_ms: i64) -> Result<(), ModelError> {
        if saved_span_ms == i64::from(self.bucket_span_secs) * 1000 {
            return Ok(());
        }
        Err(ModelError::Mismatch {
            field: "bucket_span_secs",
            state: (saved_span_ms / 1000).to_string(),
            config: self.bucket_span_secs.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
