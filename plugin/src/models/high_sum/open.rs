//! The running sums of a partition's open buckets, and of its closed buckets while they are
//! folded into history a bounded number per event.
//!
//! One record per destination holds its sums in two buckets ([`BucketSums`]), behind one
//! index: where a map per open bucket took a key and an index slot for each of a destination's
//! sums (about 53 bytes for two buckets at 1M destinations, `benches/scale.rs`), a record takes
//! one key, one index slot and two (bucket, sum) places (about 42). A sum that finds both
//! places of its record taken (a third bucket at once: lateness above one bucket, or a loaded
//! state whose closing bucket was not folded yet) goes to a side map of its bucket instead
//! (one map per bucket, so the fold takes a bucket's spilled sums one look each).
//!
//! A close leaves the closing bucket's sums where they are; the events after it fold them by
//! walking the records ([`BucketSums::next_of`]), a bounded number of records per event.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::{BucketCount, MAX_OPEN_BUCKETS, NBINS};
use crate::models::engine::{check_weight, free_elsewhere, invalid, DenseMap, Pairs};
use crate::models::ModelError;

/// The bucket of an unused place in a record: no bucket is `i32::MIN` (the clock does not
/// place an event there, and a loaded state with it is refused).
const NONE: i32 = i32::MIN;

/// A destination's sums in up to two buckets (open, or closed and not folded yet).
#[derive(Debug, Clone, Copy)]
struct Record {
    buckets: [i32; 2],
    sums: [f64; 2],
}

impl Record {
    fn is_empty(&self) -> bool {
        self.buckets == [NONE; 2]
    }

    fn place(&self, bucket: i32) -> Option<usize> {
        self.buckets.iter().position(|&b| b == bucket)
    }
}

/// The sums of one bucket kept beside their records (see the module documentation).
#[derive(Debug, Clone)]
struct Spill {
    bucket: i32,
    sums: DenseMap<f64>,
}

/// Every sum of a partition's open and closing buckets (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(super) struct BucketSums {
    records: DenseMap<Record>,
    /// Sums whose record had no free place: a map per bucket (dropped when it empties), by
    /// destination. One map for all buckets made the fold of a bucket's spilled sums scan the
    /// others' for each (review-dense80 MED 1).
    spill: Vec<Spill>,
    /// The sums of each bucket that is open or has sums left to fold, in the order they opened.
    counts: Vec<(i32, usize)>,
    /// The open buckets, in the order they opened.
    open: Vec<i32>,
    /// What is wrong with a loaded state: the field that refuses it, and why.
    refused: Option<(&'static str, &'static str)>,
    /// Side maps compared with a bucket and spilled sums read to pick one (tests check that
    /// a fold from the side map costs a bounded number of them).
    #[cfg(test)]
    pub(super) spill_looked: std::cell::Cell<usize>,
}

impl BucketSums {
    /// The open buckets, in the order they opened.
    pub(super) fn open_buckets(&self) -> &[i32] {
        &self.open
    }

    /// Whether `bucket` is open.
    pub(super) fn is_open(&self, bucket: i32) -> bool {
        self.open.contains(&bucket)
    }

    /// Opens `bucket` (no sum yet). Nearly every event is in the bucket opened last (nearly
    /// always the head): that one is checked first, without the search. Always inlined, as
    /// [`BucketSums::add`]: the two calls cost about 58 Ir an event (detector case).
    #[inline(always)]
    pub(super) fn open(&mut self, bucket: i32) {
        if self.open.last() != Some(&bucket) && !self.is_open(bucket) {
            self.open.push(bucket);
            self.count_mut(bucket);
        }
    }

    /// Closes the open buckets older than `oldest_open`, oldest first: their sums stay, to be
    /// folded.
    pub(super) fn close_before(&mut self, oldest_open: i32) -> Vec<i32> {
        let mut closed: Vec<i32> = self
            .open
            .iter()
            .copied()
            .filter(|&b| b < oldest_open)
            .collect();
        self.open.retain(|&b| b >= oldest_open);
        closed.sort_unstable();
        closed
    }

    /// Sums in `bucket`.
    pub(super) fn len(&self, bucket: i32) -> usize {
        self.counts
            .iter()
            .find(|c| c.0 == bucket)
            .map_or(0, |c| c.1)
    }

    /// Sums in the open buckets.
    pub(super) fn open_len(&self) -> usize {
        self.open.iter().map(|&b| self.len(b)).sum()
    }

    fn count_mut(&mut self, bucket: i32) -> &mut usize {
        let i = match self.counts.iter().position(|c| c.0 == bucket) {
            Some(i) => i,
            None => {
                self.counts.push((bucket, 0));
                self.counts.len() - 1
            }
        };
        &mut self.counts[i].1
    }

    /// Forgets a bucket that is neither open nor has sums left (its close is folded).
    pub(super) fn forget(&mut self, bucket: i32) {
        if !self.is_open(bucket) {
            self.counts.retain(|c| c.0 != bucket || c.1 > 0);
        }
    }

    /// The side map of `bucket`'s sums, if it has one.
    fn spill_of(&self, bucket: i32) -> Option<&DenseMap<f64>> {
        self.spill_at(bucket).map(|i| &self.spill[i].sums)
    }

    /// The place of `bucket`'s side map in `spill`, if it has one.
    fn spill_at(&self, bucket: i32) -> Option<usize> {
        let at = self.spill.iter().position(|s| s.bucket == bucket);
        #[cfg(test)]
        self.spill_looked
            .set(self.spill_looked.get() + at.map_or(self.spill.len(), |i| i + 1));
        at
    }

    /// The last spilled sum of the side map at `i` (a map is never empty).
    fn last_spilled(&self, i: usize) -> (u64, f64) {
        #[cfg(test)]
        self.spill_looked.set(self.spill_looked.get() + 1);
        let sums = &self.spill[i].sums;
        let &(key, sum) = sums.at(sums.len() - 1);
        (key, sum)
    }

    /// Takes `key`'s sum out of the side map at `i` (of its bucket), and drops the map when
    /// it empties (its index would keep the room of a burst of lateness otherwise; a large one
    /// is freed on another thread, as a grown index is).
    fn take_spilled(&mut self, i: usize, key: u64) -> Option<f64> {
        let sum = self.spill[i].sums.remove(key)?;
        if self.spill[i].sums.is_empty() {
            let emptied = self.spill.swap_remove(i);
            let bytes = emptied.sums.bytes();
            free_elsewhere(emptied, bytes);
        }
        Some(sum)
    }

    /// Whether `key` has a sum in `bucket`.
    pub(super) fn contains(&self, key: u64, bucket: i32) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| r.place(bucket).is_some())
            || self.spill_of(bucket).is_some_and(|m| m.contains_key(key))
    }

    /// Adds `value` to the sum of `key` in `bucket`: the new sum, `None` when it has none.
    /// Always inlined (see [`BucketSums::open`]).
    #[inline(always)]
    pub(super) fn add(&mut self, key: u64, bucket: i32, value: f64) -> Option<f64> {
        if let Some(i) = self.records.position(key) {
            let r = self.records.value_at_mut(i);
            if let Some(j) = r.place(bucket) {
                r.sums[j] += value;
                return Some(r.sums[j]);
            }
        }
        let i = self.spill_at(bucket)?;
        let s = self.spill[i].sums.get_mut(key)?;
        *s += value;
        Some(*s)
    }

    /// Starts the sum of `key` in `bucket`, which has none (see [`BucketSums::add`]).
    pub(super) fn insert(&mut self, key: u64, bucket: i32, value: f64) {
        *self.count_mut(bucket) += 1;
        let sum = 0.0 + value;
        match self.records.position(key) {
            None => {
                self.records.push_new(
                    key,
                    Record {
                        buckets: [bucket, NONE],
                        sums: [sum, 0.0],
                    },
                );
            }
            Some(i) => {
                let r = self.records.value_at_mut(i);
                match r.place(NONE) {
                    Some(j) => {
                        r.buckets[j] = bucket;
                        r.sums[j] = sum;
                    }
                    None => {
                        let i = self.spill_at(bucket).unwrap_or_else(|| {
                            self.spill.push(Spill {
                                bucket,
                                sums: DenseMap::default(),
                            });
                            self.spill.len() - 1
                        });
                        self.spill[i].sums.push_new(key, sum);
                    }
                }
            }
        }
    }

    /// Takes the sum of `key` in `bucket` out (the record stays, even empty: the caller
    /// usually adds a sum to it next; see [`BucketSums::drop_if_empty`]).
    #[inline]
    pub(super) fn take(&mut self, key: u64, bucket: i32) -> Option<f64> {
        let sum = match self.records.position(key) {
            Some(i) if self.records.at(i).1.place(bucket).is_some() => {
                let r = self.records.value_at_mut(i);
                let j = r.place(bucket)?;
                r.buckets[j] = NONE;
                r.sums[j]
            }
            _ => {
                let i = self.spill_at(bucket)?;
                self.take_spilled(i, key)?
            }
        };
        *self.count_mut(bucket) -= 1;
        Some(sum)
    }

    /// Removes the record of `key` if it holds no sum.
    pub(super) fn drop_if_empty(&mut self, key: u64) {
        if self.records.get(key).is_some_and(Record::is_empty) {
            self.records.remove(key);
        }
    }

    /// The next sum of the closed `bucket` to fold, taken out: from the record at `*at` on
    /// (records left empty are removed on the way), then from the side map; at most `*visits`
    /// records looked at (decreased). `None` when the bucket has no sum left or the visits ran
    /// out. A record that a removal moved behind `*at` is found on a second pass.
    pub(super) fn next_of(
        &mut self,
        bucket: i32,
        at: &mut usize,
        visits: &mut usize,
    ) -> Option<(u64, f64)> {
        let mut wrapped = false;
        while self.len(bucket) > 0 && *visits > 0 {
            *visits -= 1;
            if *at >= self.records.len() {
                // Past the records: the last spilled sum of the bucket (taken without moving
                // another), else a second pass.
                if let Some(i) = self.spill_at(bucket) {
                    let (key, _) = self.last_spilled(i);
                    let sum = self.take_spilled(i, key)?;
                    *self.count_mut(bucket) -= 1;
                    return Some((key, sum));
                }
                // A whole pass in this call found none: the count is wrong (a bug), and
                // must not make the fold loop.
                debug_assert!(!wrapped, "bucket {bucket}: sums counted, none found");
                if wrapped {
                    *self.count_mut(bucket) = 0;
                    return None;
                }
                wrapped = true;
                *at = 0;
                continue;
            }
            let (key, r) = *self.records.at(*at);
            let found = r.place(bucket).map(|j| {
                let r = self.records.value_at_mut(*at);
                r.buckets[j] = NONE;
                r.sums[j]
            });
            if self.records.at(*at).1.is_empty() {
                // The last record takes its place: looked at next.
                self.records.remove(key);
            } else {
                *at += 1;
            }
            if let Some(sum) = found {
                *self.count_mut(bucket) -= 1;
                return Some((key, sum));
            }
        }
        None
    }

    /// Drops the smaller half of `bucket`'s sums (memory pressure); returns how many went.
    pub(super) fn evict_smaller_half(&mut self, bucket: i32) -> usize {
        let cut = self.len(bucket) / 2;
        if cut == 0 {
            return 0;
        }
        let mut ranked: Vec<(f64, u64)> = self.iter(bucket).map(|(k, s)| (s, k)).collect();
        ranked.select_nth_unstable_by(cut, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(_, key) in &ranked[..cut] {
            self.take(key, bucket);
            self.drop_if_empty(key);
        }
        cut
    }

    /// The sums of `bucket`: records in order, then the side map.
    fn iter(&self, bucket: i32) -> impl Iterator<Item = (u64, f64)> + '_ {
        let in_records = self
            .records
            .iter()
            .filter_map(move |(k, r)| r.place(bucket).map(|j| (k, r.sums[j])));
        let spilled = self
            .spill_of(bucket)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, &s)| (k, s)));
        in_records.chain(spilled)
    }

    /// Adds the sums of a loaded bucket; a key twice is noted under `field`.
    fn load(&mut self, bucket: i32, sums: Pairs<f64>, field: &'static str) {
        if bucket == NONE {
            self.refused = Some((field, "in bucket i32::MIN"));
            return;
        }
        self.count_mut(bucket);
        for (key, sum) in sums {
            if self.contains(key, bucket) {
                self.refused = Some((field, "a key twice"));
            } else {
                self.insert(key, bucket, sum);
            }
        }
    }

    /// Adds the sums of a loaded closing bucket.
    pub(super) fn load_closing(&mut self, bucket: i32, sums: Pairs<f64>) {
        self.load(bucket, sums, "closing.sum");
    }

    /// Checks loaded sums: every key once in a bucket, every sum a weight.
    pub(super) fn check(&self) -> Result<(), ModelError> {
        if let Some((field, why)) = self.refused {
            return Err(invalid(field, why));
        }
        let field = |b: i32| {
            if self.is_open(b) {
                "partition.open.sum"
            } else {
                "closing.sum"
            }
        };
        for (_, r) in self.records.iter() {
            for j in 0..2 {
                if r.buckets[j] != NONE {
                    check_weight(field(r.buckets[j]), r.sums[j])?;
                }
            }
        }
        self.spill.iter().try_for_each(|s| {
            s.sums
                .values()
                .try_for_each(|&sum| check_weight(field(s.bucket), sum))
        })
    }

    /// After a close's fold: gives back the index room of records that burst and were folded
    /// (a bucket's map used to be dropped whole), keeping room for twice what is left. Rehashes
    /// the records left in this event: only when they are under a quarter of the room.
    pub(super) fn shrink(&mut self) {
        let len = self.records.len();
        if self.records.capacity() > 4 * len.max(256) {
            self.records.shrink_to(2 * len);
        }
    }

    /// Heap bytes at capacity.
    pub(super) fn bytes(&self) -> usize {
        self.records.bytes()
            + self.spill.capacity() * std::mem::size_of::<Spill>()
            + self.spill.iter().map(|s| s.sums.bytes()).sum::<usize>()
    }

    /// The sums of `bucket` as saved: a sequence of `(key, sum)`, the same bytes as the map
    /// of one bucket's sums they replaced.
    pub(super) fn saved(&self, bucket: i32) -> SavedSums<'_> {
        SavedSums(self, bucket)
    }

    /// Records (destinations with a sum in some bucket).
    #[cfg(test)]
    pub(super) fn records(&self) -> usize {
        self.records.len()
    }

    /// Sums kept beside their record.
    #[cfg(test)]
    pub(super) fn spilled_len(&self) -> usize {
        self.spill.iter().map(|s| s.sums.len()).sum()
    }

    /// The sums of `bucket`, in the order they are saved.
    #[cfg(test)]
    pub(super) fn pairs(&self, bucket: i32) -> Vec<(u64, f64)> {
        self.iter(bucket).collect()
    }
}

/// One bucket's sums, written as a sequence without copying them.
pub(super) struct SavedSums<'a>(&'a BucketSums, i32);

impl Serialize for SavedSums<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len(self.1)))?;
        self.0
            .iter(self.1)
            .try_for_each(|e| seq.serialize_element(&e))?;
        seq.end()
    }
}

/// The open buckets written as the list of `{bucket, sums}` that a map per bucket was.
impl Serialize for BucketSums {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Open<'a>(&'a BucketSums, i32);
        impl Serialize for Open<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut s = serializer.serialize_struct("OpenSums", 2)?;
                s.serialize_field("bucket", &self.1)?;
                s.serialize_field("sums", &self.0.saved(self.1))?;
                s.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.open.len()))?;
        self.open
            .iter()
            .try_for_each(|&b| seq.serialize_element(&Open(self, b)))?;
        seq.end()
    }
}

/// An open bucket as saved.
#[derive(Deserialize)]
struct SavedOpen {
    bucket: i32,
    sums: Pairs<f64>,
}

impl<'de> Deserialize<'de> for BucketSums {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let saved: Vec<SavedOpen> = Vec::deserialize(deserializer)?;
        let mut sums = BucketSums::default();
        for o in saved {
            // Refused before its sums are placed (each placement searches the buckets: a
            // crafted list of many would cost their square).
            if sums.open.len() >= MAX_OPEN_BUCKETS {
                sums.refused = Some(("partition.open", "more than 17 buckets"));
                break;
            }
            if sums.is_open(o.bucket) {
                sums.refused = Some(("partition.open", "a bucket twice"));
            }
            sums.open(o.bucket);
            sums.load(o.bucket, o.sums, "partition.open.sum");
        }
        Ok(sums)
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

/// A closed bucket of one partition whose sums (in the partition's [`BucketSums`]) are being
/// folded into history.
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
    /// The record the fold looks at next.
    pub(super) next: usize,
    /// Its sums as read from a saved state, until the model puts them in its partition's
    /// records ([`Closing::take_read_sums`]).
    read_sums: Option<Pairs<f64>>,
    /// Sums folded ahead of the walk, for an event of their key (tests check that a save
    /// covers them).
    #[cfg(test)]
    pub(super) touched: usize,
}

/// A closing bucket as saved: its sums not folded yet with it (see [`SavedClosingOf`]).
#[derive(Deserialize)]
struct SavedClosing {
    partition: u64,
    bucket: i32,
    now: i32,
    newcomers_counted: bool,
    tally: Tally,
    sums: Pairs<f64>,
}

impl From<SavedClosing> for Closing {
    fn from(s: SavedClosing) -> Self {
        Closing {
            read_sums: Some(s.sums),
            tally: s.tally,
            ..Closing::new(s.partition, s.bucket, s.now, s.newcomers_counted)
        }
    }
}

/// A closing bucket written with its sums not folded yet (`sums`, from its partition's
/// [`BucketSums`]; none when the partition is unknown, which the load refuses).
pub(super) struct SavedClosingOf<'a> {
    pub(super) closing: &'a Closing,
    pub(super) sums: Option<&'a BucketSums>,
}

impl Serialize for SavedClosingOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.closing;
        let mut s = serializer.serialize_struct("Closing", 6)?;
        s.serialize_field("partition", &c.partition)?;
        s.serialize_field("bucket", &c.bucket)?;
        s.serialize_field("now", &c.now)?;
        s.serialize_field("newcomers_counted", &c.newcomers_counted)?;
        s.serialize_field("tally", &c.tally)?;
        match self.sums {
            Some(sums) => s.serialize_field("sums", &sums.saved(c.bucket))?,
            None => {
                let none: &[(u64, f64)] = &[];
                s.serialize_field("sums", none)?;
            }
        }
        s.end()
    }
}

impl Closing {
    /// A bucket that closed at head `now`, none of its sums folded yet.
    pub(super) fn new(partition: u64, bucket: i32, now: i32, newcomers_counted: bool) -> Self {
        Closing {
            partition,
            bucket,
            now,
            newcomers_counted,
            tally: Tally::new(),
            next: 0,
            read_sums: None,
            #[cfg(test)]
            touched: 0,
        }
    }

    /// Its sums as read from a saved state, once (the model puts them in its partition's
    /// records).
    pub(super) fn take_read_sums(&mut self) -> Option<Pairs<f64>> {
        self.read_sums.take()
    }

    /// Checks a loaded closing bucket (its place in the model is checked by the model).
    pub(super) fn check(&self) -> Result<(), ModelError> {
        self.tally.check()
    }

    /// Heap bytes (its sums are its partition's).
    pub(super) fn bytes(&self) -> usize {
        2 * NBINS * 4
    }
}
