//! The running sums of an open bucket, and a closed bucket's sums while they are folded into
//! history a bounded number per event.
//!
//! Both keep their `(key, sum)` entries in a [`DenseMap`], in arrival order (no sum is removed
//! but by [`OpenSums::evict_smaller_half`], which keeps the order): a close moves the entries
//! out whole instead of walking a hash table, and the fold goes through them in order. No
//! event waits for a bucket's growth, however many destinations it gets (see [`DenseMap`]).

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::{BucketCount, NBINS};
use crate::models::engine::{check_weight, invalid, DenseMap};
use crate::models::ModelError;

/// What a folded entry's sum is set to (sums are never negative).
const FOLDED: f64 = -1.0;

/// Entries in arrival order and their index by key.
#[derive(Debug, Clone, Default)]
struct Entries(DenseMap<f64>);

impl Entries {
    /// Checks loaded entries: every key once, every sum a weight (none folded: only the
    /// unfolded ones are saved).
    fn check(&self, field: &'static str) -> Result<(), ModelError> {
        if self.0.repeated() > 0 {
            return Err(invalid(field, "a key twice"));
        }
        self.0
            .values()
            .try_for_each(|&sum| check_weight(field, sum))
    }

    /// The sums from position `from` on.
    #[cfg(test)]
    fn sums_from(&self, from: usize) -> impl Iterator<Item = f64> + '_ {
        (from..self.0.len()).map(|i| self.0.at(i).1)
    }
}

/// One open bucket's running sums.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "SavedOpen")]
pub(super) struct OpenSums {
    pub(super) bucket: i32,
    sums: Entries,
}

/// An open bucket as saved: the same bytes as the map of sums it replaced.
#[derive(Deserialize)]
struct SavedOpen {
    bucket: i32,
    sums: DenseMap<f64>,
}

impl From<SavedOpen> for OpenSums {
    fn from(saved: SavedOpen) -> Self {
        OpenSums {
            bucket: saved.bucket,
            sums: Entries(saved.sums),
        }
    }
}

impl Serialize for OpenSums {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("OpenSums", 2)?;
        s.serialize_field("bucket", &self.bucket)?;
        s.serialize_field("sums", &self.sums.0)?;
        s.end()
    }
}

impl OpenSums {
    /// An empty bucket with room for `expected` sums (as far as [`DenseMap::with_capacity`]
    /// reserves room).
    pub(super) fn with_capacity(bucket: i32, expected: usize) -> Self {
        OpenSums {
            bucket,
            sums: Entries(DenseMap::with_capacity(expected)),
        }
    }

    /// Sums in the bucket.
    pub(super) fn len(&self) -> usize {
        self.sums.0.len()
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        self.sums.0.contains_key(key)
    }

    /// Adds `value` to the sum of a key already in the bucket: the new sum, `None` when absent.
    #[inline]
    pub(super) fn add(&mut self, key: u64, value: f64) -> Option<f64> {
        let sum = self.sums.0.get_mut(key)?;
        *sum += value;
        Some(*sum)
    }

    /// Starts the sum of a key not in the bucket (see [`OpenSums::add`]).
    pub(super) fn insert(&mut self, key: u64, value: f64) {
        self.sums.0.push_new(key, 0.0 + value);
    }

    /// Checks a loaded bucket.
    pub(super) fn check(&self) -> Result<(), ModelError> {
        self.sums.check("partition.open.sum")
    }

    /// Drops the smaller half of the sums (memory pressure); returns how many went.
    pub(super) fn evict_smaller_half(&mut self) -> usize {
        let entries = &self.sums.0;
        let cut = entries.len() / 2;
        if cut == 0 {
            return 0;
        }
        let mut ranked: Vec<(f64, usize)> = entries.values().copied().zip(0..).collect();
        ranked.select_nth_unstable_by(cut, |a, b| a.0.total_cmp(&b.0));
        let mut gone = vec![false; entries.len()];
        for &(_, i) in &ranked[..cut] {
            gone[i] = true;
        }
        let mut kept = DenseMap::with_capacity(entries.len() - cut);
        for ((key, &sum), _) in entries.iter().zip(&gone).filter(|(_, &g)| !g) {
            kept.push_new(key, sum);
        }
        self.sums = Entries(kept);
        cut
    }

    /// Heap bytes at capacity.
    pub(super) fn bytes(&self) -> usize {
        self.sums.0.bytes()
    }
}

/// How many of a closing bucket's folded sums fell in each histogram bin, for the population
/// histograms (`all`) and for the newcomers one: every sum of a bucket weighs the same, so the
/// bins are added at once when the last sum is folded, whatever order the sums were folded in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Tally {
    pub(super) all: Vec<u32>,
    pub(super) newcomers: Vec<u32>,
    pub(super) count: BucketCount,
}

impl Tally {
    fn new() -> Self {
        Tally {
            all: vec![0; NBINS],
            newcomers: vec![0; NBINS],
            count: BucketCount::default(),
        }
    }

    #[inline]
    pub(super) fn add(&mut self, bin: usize, newcomer: bool) {
        self.all[bin] += 1;
        self.count.entities += 1;
        if newcomer {
            self.newcomers[bin] += 1;
            self.count.newcomers += 1;
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        let sum = |bins: &[u32]| bins.iter().map(|&n| u64::from(n)).sum::<u64>();
        if self.all.len() != NBINS || self.newcomers.len() != NBINS {
            let bins = self.all.len().min(self.newcomers.len());
            return Err(invalid("closing.tally", format!("{bins} bins")));
        }
        if sum(&self.all) != u64::from(self.count.entities)
            || sum(&self.newcomers) != u64::from(self.count.newcomers)
        {
            return Err(invalid("closing.tally", "bins that are not the counts"));
        }
        Ok(())
    }
}

/// A closed bucket of one partition whose sums are being folded into history.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "SavedClosing")]
pub(super) struct Closing {
    pub(super) partition: u64,
    pub(super) bucket: i32,
    /// The head when the bucket closed: history is brought to it.
    pub(super) now: i32,
    /// Whether its new entities count into the newcomers histogram (learning was over).
    pub(super) newcomers_counted: bool,
    pub(super) tally: Tally,
    sums: Entries,
    /// Entries before it are folded.
    next: usize,
}

/// A closing bucket as saved: only the sums not folded yet.
#[derive(Deserialize)]
struct SavedClosing {
    partition: u64,
    bucket: i32,
    now: i32,
    newcomers_counted: bool,
    tally: Tally,
    sums: DenseMap<f64>,
}

impl From<SavedClosing> for Closing {
    fn from(s: SavedClosing) -> Self {
        Closing {
            partition: s.partition,
            bucket: s.bucket,
            now: s.now,
            newcomers_counted: s.newcomers_counted,
            tally: s.tally,
            sums: Entries(s.sums),
            next: 0,
        }
    }
}

/// The sums of a closing bucket not folded yet, written as a sequence without copying them.
struct Unfolded<'a>(&'a Closing);

impl Serialize for Unfolded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let map = &self.0.sums.0;
        let left = || {
            (self.0.next..map.len())
                .map(|i| map.at(i))
                .filter(|e| e.1 != FOLDED)
        };
        let mut seq = serializer.serialize_seq(Some(left().count()))?;
        left().try_for_each(|e| seq.serialize_element(e))?;
        seq.end()
    }
}

impl Serialize for Closing {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Closing", 6)?;
        s.serialize_field("partition", &self.partition)?;
        s.serialize_field("bucket", &self.bucket)?;
        s.serialize_field("now", &self.now)?;
        s.serialize_field("newcomers_counted", &self.newcomers_counted)?;
        s.serialize_field("tally", &self.tally)?;
        s.serialize_field("sums", &Unfolded(self))?;
        s.end()
    }
}

impl Closing {
    /// The sums of a bucket that closed at head `now`, none folded yet.
    pub(super) fn new(partition: u64, open: OpenSums, now: i32, newcomers_counted: bool) -> Self {
        Closing {
            partition,
            bucket: open.bucket,
            now,
            newcomers_counted,
            tally: Tally::new(),
            sums: open.sums,
            next: 0,
        }
    }

    /// The next sum to fold, in order, when `budget` allows one more (it is decreased). The
    /// sums folded ahead of their turn are passed over without counting: they were paid for
    /// by the event of their key, and a model loaded from a save (which leaves them out) then
    /// folds the same sums per event as the one saved.
    #[inline]
    pub(super) fn next_sum(&mut self, budget: &mut usize) -> Option<(u64, f64)> {
        let map = &self.sums.0;
        while self.next < map.len() {
            let e = *map.at(self.next);
            if e.1 != FOLDED {
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                self.next += 1;
                return Some(e);
            }
            self.next += 1;
        }
        None
    }

    /// The sum of `key` when it is still to fold, marked folded (an event for that key is
    /// about to read its history).
    #[inline]
    pub(super) fn take(&mut self, key: u64) -> Option<f64> {
        let map = &mut self.sums.0;
        let i = map.position(key).filter(|&i| i >= self.next)?;
        let sum = std::mem::replace(map.value_at_mut(i), FOLDED);
        (sum != FOLDED).then_some(sum)
    }

    /// Every sum folded.
    pub(super) fn done(&self) -> bool {
        self.next >= self.sums.0.len()
    }

    /// Sums still to fold.
    #[cfg(test)]
    pub(super) fn left(&self) -> usize {
        self.sums
            .sums_from(self.next)
            .filter(|&s| s != FOLDED)
            .count()
    }

    /// Sums folded ahead of the others, for an event of their key.
    #[cfg(test)]
    pub(super) fn touched(&self) -> usize {
        self.sums
            .sums_from(self.next)
            .filter(|&s| s == FOLDED)
            .count()
    }

    /// This bucket as saved, with the first sum left to fold written twice (a crafted state).
    #[cfg(test)]
    pub(super) fn saved_with_first_twice(&self) -> Vec<u8> {
        let map = &self.sums.0;
        let mut sums: Vec<(u64, f64)> = (self.next..map.len())
            .map(|i| *map.at(i))
            .filter(|e| e.1 != FOLDED)
            .collect();
        sums.push(sums[0]);
        // A struct is saved as its fields in order: a tuple of them is the same bytes.
        let fields = (
            self.partition,
            self.bucket,
            self.now,
            self.newcomers_counted,
            &self.tally,
            sums,
        );
        postcard::to_allocvec(&fields).expect("encodes")
    }

    /// Checks a loaded closing bucket (its place in the model is checked by the model).
    pub(super) fn check(&self) -> Result<(), ModelError> {
        self.tally.check()?;
        self.sums.check("closing.sum")
    }

    /// Heap bytes at capacity.
    pub(super) fn bytes(&self) -> usize {
        self.sums.0.bytes() + 2 * NBINS * 4
    }
}
