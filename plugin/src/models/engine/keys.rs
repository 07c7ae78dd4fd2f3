//! [`KeyTable`]: the bounded two-tier (established, probation) key table and its eviction
//! policy (see the module documentation).

use serde::{Deserialize, Serialize};

use super::decay::Decay;
use super::dense::DenseMap;
use super::state::invalid;
use crate::models::ModelError;

/// Index slots each tier's growing index moves at a bucket close, beside the few each change
/// moves (see [`DenseMap`]): tens of microseconds.
const MOVES_AT_CLOSE: usize = 4096;

/// An entry that a [`KeyTable`] can rank for eviction and promotion.
pub trait Tracked {
    /// Decayed evidence for this key at bucket `now`.
    fn weight(&self, now: i32, decay: &Decay) -> f64;
    /// Last bucket this key was seen in (tie-break: older goes first).
    fn last_bucket(&self) -> i32;
    /// Whether the key has enough evidence to leave probation.
    fn promotable(&self) -> bool;
}

/// A bounded two-tier table of tracked keys (policy in the module docs). Each tier is a
/// [`DenseMap`]: no insert moves every key of a tier, and an entry costs its key and value plus
/// an index slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>"))]
pub struct KeyTable<V> {
    established: DenseMap<V>,
    probation: DenseMap<V>,
    cap_established: usize,
    cap_probation: usize,
    evictions: u64,
    /// Whether a probationary key may have become promotable since the last promotion: set
    /// when a caller changed one through [`KeyTable::entry`] (the table cannot tell what it did)
    /// or when a promotion found no room for every candidate. [`KeyTable::maintain`] walks the
    /// probation tier only then: at 1M keys the walk alone is milliseconds.
    #[serde(skip, default = "unknown")]
    promotion_pending: bool,
}

/// A loaded table may hold promotable keys.
fn unknown() -> bool {
    true
}

/// Eviction order: lighter first, then the one seen longest ago, then by key. The entries of a
/// [`DenseMap`] are in arrival order, which a sender can arrange; the last tie-break makes the
/// choice independent of it (keys are secret-keyed hashes, so their order cannot be aimed at).
fn lightest_first(a: &(f64, i32, u64), b: &(f64, i32, u64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

impl<V: Tracked> KeyTable<V> {
    /// A table holding at most `max_entities` keys (at least 4).
    pub fn new(max_entities: usize) -> Self {
        let max = max_entities.max(4);
        let cap_probation = (max / 4).max(1);
        KeyTable {
            established: DenseMap::default(),
            probation: DenseMap::default(),
            cap_established: max - cap_probation,
            cap_probation,
            evictions: 0,
            promotion_pending: false,
        }
    }

    /// The entry of a key, in either tier.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&V> {
        self.established
            .get(key)
            .or_else(|| self.probation.get(key))
    }

    /// The entry of a key, inserted into probation with `make` when absent (evicting the weaker
    /// half of probation first when it is full).
    pub fn entry(&mut self, key: u64, now: i32, decay: &Decay, make: impl FnOnce() -> V) -> &mut V {
        if let Some(i) = self.established.position(key) {
            return self.established.value_at_mut(i);
        }
        self.make_room(key, now, decay);
        self.promotion_pending = true;
        self.probation.get_or_insert_with(key, make)
    }

    /// Changes the entry of a key with `change`, inserting it into probation with `make` first
    /// when absent (as [`KeyTable::entry`]); a probationary key that `change` made promotable
    /// moves to the established tier at once when it has free room (as the next
    /// [`KeyTable::maintain`] would have moved it), so that the promotion's cost is spread over
    /// the changes instead of falling on one bucket close.
    pub fn change(
        &mut self,
        key: u64,
        now: i32,
        decay: &Decay,
        make: impl FnOnce() -> V,
        change: impl FnOnce(&mut V),
    ) {
        if let Some(v) = self.established.get_mut(key) {
            change(v);
            return;
        }
        self.make_room(key, now, decay);
        let v = self.probation.get_or_insert_with(key, make);
        change(v);
        if v.promotable() {
            if self.established.len() < self.cap_established {
                if let Some(v) = self.probation.remove(key) {
                    self.established.insert(key, v);
                }
            } else {
                self.promotion_pending = true;
            }
        }
    }

    /// Before a key that may be new enters probation: room for it when probation is full.
    fn make_room(&mut self, key: u64, now: i32, decay: &Decay) {
        if self.probation.len() >= self.cap_probation && !self.probation.contains_key(key) {
            self.promote_ready();
            if self.probation.len() >= self.cap_probation {
                self.shed_probation_half(now, decay);
            }
        }
    }

    /// Moves promotable probationary keys into free established room (no displacement).
    fn promote_ready(&mut self) {
        let room = self.cap_established.saturating_sub(self.established.len());
        if room == 0 {
            return;
        }
        let mut ready: Vec<u64> = self
            .probation
            .iter()
            .filter(|(_, v)| v.promotable())
            .map(|(k, _)| k)
            .collect();
        if ready.len() > room {
            // Which ones go first must not depend on arrival order, which a sender can arrange:
            // the keys are secret-keyed hashes, so their order is one a sender cannot predict.
            ready.select_nth_unstable(room);
            ready.truncate(room);
        }
        for k in ready {
            if let Some(v) = self.probation.remove(k) {
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
            .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), k))
            .collect();
        let cut = ranked.len() / 2;
        if cut == 0 {
            return;
        }
        ranked.select_nth_unstable_by(cut, lightest_first);
        let room = self.cap_established.saturating_sub(self.established.len());
        if room >= ranked.len() - cut {
            for &(_, _, k) in &ranked[cut..] {
                if let Some(v) = self.probation.remove(k) {
                    self.established.insert(k, v);
                }
            }
        } else {
            for &(_, _, k) in &ranked[..cut] {
                self.probation.remove(k);
            }
            self.evictions += cut as u64;
        }
    }

    /// Bucket-close maintenance: promotes probationary keys with enough evidence, displacing
    /// weaker established keys when the established tier is full; then gives back the memory of
    /// a probation tier that a burst of new keys grew and promotion emptied (a hash table never
    /// shrinks by itself: at 1M destinations that entered at once it was 52 of 179 bytes per
    /// tracked destination). It keeps room for twice what is left, so that an ordinary bucket's
    /// new keys do not make it grow again.
    pub fn maintain(&mut self, now: i32, decay: &Decay) {
        if self.promotion_pending {
            self.promote(now, decay);
        }
        let len = self.probation.len();
        if self.probation.capacity() > 4 * len.max(256) {
            self.probation.shrink_to(2 * len);
        }
        // A tier whose keys stopped changing ends a growth of its index here (reads do not
        // move keys).
        self.established.advance_growth(MOVES_AT_CLOSE);
        self.probation.advance_growth(MOVES_AT_CLOSE);
    }

    /// Promotes probationary keys with enough evidence (see [`KeyTable::maintain`]).
    fn promote(&mut self, now: i32, decay: &Decay) {
        self.promotion_pending = false;
        let mut candidates: Vec<(f64, u64)> = self
            .probation
            .iter()
            .filter(|(_, v)| v.promotable())
            .map(|(k, v)| (v.weight(now, decay), k))
            .collect();
        if candidates.is_empty() {
            return;
        }
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
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
                .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), k))
                .filter(|(w, _, _)| *w < bar)
                .collect();
            if weak.len() > limit {
                weak.select_nth_unstable_by(limit, lightest_first);
                weak.truncate(limit);
            }
            for &(_, _, k) in &weak {
                self.established.remove(k);
            }
            self.evictions += weak.len() as u64;
        }
        let room = self.cap_established.saturating_sub(self.established.len());
        self.promotion_pending = candidates.len() > room;
        for (_, k) in candidates.into_iter().take(room) {
            if let Some(v) = self.probation.remove(k) {
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
        match self.established.position(key) {
            Some(i) => Some(self.established.value_at_mut(i)),
            None => self.probation.get_mut(key),
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
                .map(|(k, v)| (v.weight(now, decay), v.last_bucket(), k))
                .collect();
            let cut = map.len() - cap;
            ranked.select_nth_unstable_by(cut, lightest_first);
            for &(_, _, k) in &ranked[..cut] {
                map.remove(k);
            }
            self.evictions += cut as u64;
        }
    }

    /// Whether a key is in the established tier.
    #[cfg(test)]
    pub fn is_established(&self, key: u64) -> bool {
        self.established.get(key).is_some()
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
        self.established.bytes() + self.probation.bytes()
    }
}
