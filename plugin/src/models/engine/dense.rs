//! [`DenseMap`]: a map of pre-hashed 64-bit keys whose entries lie in insertion order in
//! chunks that never move once full, found through a hash table of positions that grows a few
//! keys at a time.
//!
//! Why not a `HashMap` (or a `Vec` beside a hashbrown `HashTable<u32>`, which the open buckets
//! used):
//! - memory: an entry is its key and value, nothing else (no empty slots); the index takes
//!   5 bytes a slot (a `u32` position and hashbrown's control byte), where a map of 16-byte
//!   values took 25 bytes a slot at 7/16 to 7/8 load;
//! - no event waits for a growth: a table that doubles moves every key in the insert that
//!   filled it (43 ms of CPU at 917,504 keys in `benches/scale.rs`), and a `Vec` that doubles
//!   copies every entry. Here entries live in chunks of at most [`CHUNK`] entries that never
//!   move once full (a filling chunk is copied when it grows: at most 3,584 entries, tens of
//!   microseconds), and a full index (from [`INCREMENTAL_FROM`] keys) is replaced by one twice
//!   its size into which the change that found it full, and every change after it, moves the
//!   keys of [`MOVES_PER_CHANGE`] slots of the old one; a key is looked up in the new table,
//!   then the old.
//!   A table of [`PREPARE_FROM`] keys or more gets its successor allocated on a short-lived
//!   thread when it is 15/16 full: writing the control bytes of a 16M-slot table took 9.2 ms
//!   in one event.
//!
//! Removing an entry moves the last one into its place (its index entry follows): positions are
//! dense but not stable across removals.

use std::sync::mpsc;

use hashbrown::HashTable;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Entries per chunk (a power of two): the most a map holds that it does not use.
pub const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_BITS: u32 = 12;

/// Entries by which a chunk of at least as many grows (see [`Chunks`]): a growth copies the
/// chunk (at most [`CHUNK`] entries, ~100 kB for `high_sum`'s records: microseconds).
const STEP: usize = CHUNK / 8;

/// Keys from which the index grows incrementally; a smaller one doubles at once (at most this
/// many keys rehashed: tens of microseconds).
pub const INCREMENTAL_FROM: usize = 1 << 14;

/// Slots of the old index whose keys each change moves into the new one while it grows: the
/// move ends long before the new index (twice the size) can fill.
pub const MOVES_PER_CHANGE: usize = 16;

/// Keys from which the next, larger index is allocated on another thread.
pub const PREPARE_FROM: usize = 1 << 17;

/// Bytes from which a dropped allocation is freed on a thread of its own.
pub const FREE_ELSEWHERE_BYTES: usize = 1 << 20;

/// The name of the threads [`free_elsewhere`] and the index's preparation start.
pub const HELPER_THREAD: &str = "egresswatch-free";

/// Frees `dropped` (`bytes` of heap), on a short-lived thread when it is large: giving tens of
/// megabytes back to the system costs milliseconds (2-7 ms for 26 MB, measured on this
/// machine) that no event should wait for. Freed here when a thread cannot be started.
pub fn free_elsewhere<T: Send + 'static>(dropped: T, bytes: usize) {
    if bytes < FREE_ELSEWHERE_BYTES {
        return;
    }
    #[cfg(test)]
    FREED_ELSEWHERE.with(|n| n.set(n.get() + 1));
    // On failure the closure, and what it holds, is dropped here.
    let _ = std::thread::Builder::new()
        .name(HELPER_THREAD.into())
        .spawn(move || drop(dropped));
}

#[cfg(test)]
thread_local! {
    /// Test count of the allocations this thread handed to [`free_elsewhere`]'s threads.
    pub static FREED_ELSEWHERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Test count of the smaller indexes [`DenseMap::shrink_to`] allocated on this thread.
    pub static SHRUNK_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Entries in chunks of [`CHUNK`]; a chunk grows as it fills, by doubling up to [`STEP`]
/// entries and then [`STEP`] at a time, so that a growing map leaves fewer than [`STEP`]
/// entries' room unused past its first [`STEP`] (a chunk allocated whole left up to
/// [`CHUNK`] - 1: 2,288 entries' room for 10,000 in `benches/scale.rs`). Removals do not
/// shrink a chunk: the last one keeps its room until it empties and is dropped, so a map that
/// lost entries may leave up to [`CHUNK`] - 1 unused, as before.
#[derive(Debug, Clone)]
struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunks<T> {
    #[inline]
    fn get(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }

    // Always: at `high_sum`'s open-sum site the compiler left it a call (~13k a run of the
    // callgrind bench's detector case).
    #[inline(always)]
    fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }

    /// Room for `expected` entries in the first chunk (as far as a chunk goes).
    fn with_capacity(expected: usize) -> Self {
        let mut chunks = Vec::new();
        if expected > 0 {
            let first = Vec::with_capacity(expected.min(CHUNK));
            assert!(first.capacity() <= CHUNK, "{}", first.capacity());
            chunks.push(first);
        }
        Chunks { chunks, len: 0 }
    }

    fn push(&mut self, value: T) {
        // One comparison when there is room: no chunk has room past CHUNK (the asserts where
        // chunks are allocated and grown keep it so), or entry CHUNK + 1 would land in chunk 0
        // and positions would no longer map to (chunk, offset).
        match self.chunks.last_mut() {
            Some(c) if c.len() < c.capacity() => c.push(value),
            _ => self.push_growing(value),
        }
        self.len += 1;
    }

    /// [`Chunks::push`] when the last chunk is full: it grows (doubling below [`STEP`], then
    /// [`STEP`] more, never past [`CHUNK`]: a chunk sized for a load need not end on a
    /// [`STEP`]), or a chunk is started.
    ///
    /// [`Chunks::push`] takes a chunk's capacity as its room, so no capacity may pass
    /// [`CHUNK`]. Today's std allocates exactly what `Vec::with_capacity` and `reserve_exact`
    /// ask for (it ignores any excess the allocator returns), but it promises only "at
    /// least": the asserts turn a std that gave more into a panic here, once a growth, rather
    /// than entries filed in the wrong chunk (and would stop a zero-sized `T`, whose capacity
    /// is unbounded).
    #[cold]
    fn push_growing(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => {
                let more = if c.len() < STEP {
                    c.len().max(4)
                } else {
                    STEP.min(CHUNK - c.len())
                };
                c.reserve_exact(more);
                assert!(c.capacity() <= CHUNK, "{}", c.capacity());
                c.push(value);
            }
            _ => {
                let mut c = Vec::with_capacity(4);
                assert!(c.capacity() <= CHUNK, "{}", c.capacity());
                c.push(value);
                self.chunks.push(c);
            }
        }
    }

    fn pop(&mut self) -> Option<T> {
        let last = self.chunks.last_mut()?;
        let value = last.pop()?;
        if last.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        Some(value)
    }

    fn swap_remove(&mut self, i: usize) -> T {
        let last = self.pop().expect("an entry to remove");
        if i == self.len {
            last
        } else {
            std::mem::replace(self.get_mut(i), last)
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }

    fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// The index of positions, possibly in the middle of a growth.
#[derive(Default)]
struct Index {
    table: HashTable<u32>,
    /// The full table being emptied into `table`, and its next slot to move.
    old: Option<(HashTable<u32>, usize)>,
    /// `table`'s successor, being allocated on another thread.
    next: Option<mpsc::Receiver<HashTable<u32>>>,
}

impl Clone for Index {
    /// A copy of the positions; a successor still being allocated is not waited for (the copy
    /// allocates its own when it needs one).
    fn clone(&self) -> Self {
        Index {
            table: self.table.clone(),
            old: self.old.clone(),
            next: None,
        }
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("keys", &self.table.len())
            .field("slots", &self.table.num_buckets())
            .field("old_keys", &self.old.as_ref().map(|o| o.0.len()))
            .finish()
    }
}

/// Heap bytes of an index table (a `u32` and a control byte per slot).
fn table_bytes(t: &HashTable<u32>) -> usize {
    t.num_buckets() * 5
}

/// A map of pre-hashed keys to values (see the module documentation).
#[derive(Debug, Clone)]
pub struct DenseMap<V> {
    entries: Chunks<(u64, V)>,
    index: Index,
    /// Keys a loaded sequence held more than once (the last value kept, as a map would).
    repeated: usize,
    /// Slots moved by the last change (tests check that it stays bounded).
    #[cfg(test)]
    moved: usize,
}

impl<V> Default for DenseMap<V> {
    fn default() -> Self {
        DenseMap {
            entries: Chunks::default(),
            index: Index::default(),
            repeated: 0,
            #[cfg(test)]
            moved: 0,
        }
    }
}

impl<V> DenseMap<V> {
    /// An empty map with room for `expected` keys in its index, up to [`INCREMENTAL_FROM`]
    /// (a larger index grows as keys come, a few at a time).
    pub fn with_capacity(expected: usize) -> Self {
        DenseMap {
            entries: Chunks::with_capacity(expected),
            index: Index {
                table: HashTable::with_capacity(expected.min(INCREMENTAL_FROM)),
                ..Index::default()
            },
            ..DenseMap::default()
        }
    }

    /// Keys in the map.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len
    }

    /// Whether the map has no key.
    pub fn is_empty(&self) -> bool {
        self.entries.len == 0
    }

    /// Keys a loaded sequence held more than once.
    pub fn repeated(&self) -> usize {
        self.repeated
    }

    /// The position of `key`. Always inlined: a third of its cost was the call (about 73 Ir an
    /// event in the detector case, with a dozen call sites in the models).
    #[inline(always)]
    pub fn position(&self, key: u64) -> Option<usize> {
        let entries = &self.entries;
        let eq = |&i: &u32| entries.get(i as usize).0 == key;
        match self.index.table.find(key, eq) {
            Some(&i) => Some(i as usize),
            None => self
                .index
                .old
                .as_ref()
                .and_then(|(old, _)| old.find(key, eq))
                .map(|&i| i as usize),
        }
    }

    /// The entry at position `i` (below [`DenseMap::len`]).
    #[inline]
    pub fn at(&self, i: usize) -> &(u64, V) {
        self.entries.get(i)
    }

    /// The value at position `i` (below [`DenseMap::len`]), to change it. A growing index
    /// moves a few more keys (positions stay): a map whose values change while its keys do
    /// not still ends its growth, instead of keeping two tables.
    #[inline]
    pub fn value_at_mut(&mut self, i: usize) -> &mut V {
        self.step();
        &mut self.entries.get_mut(i).1
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&V> {
        self.position(key).map(|i| &self.entries.get(i).1)
    }

    /// The value of `key`, to change it (a growing index moves a few more keys, as
    /// [`DenseMap::value_at_mut`]).
    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.step();
        self.position(key).map(|i| &mut self.entries.get_mut(i).1)
    }

    /// Whether `key` is in the map.
    #[inline]
    pub fn contains_key(&self, key: u64) -> bool {
        self.position(key).is_some()
    }

    /// Adds `key`, which is not in the map, at the end; returns its position.
    pub fn push_new(&mut self, key: u64, value: V) -> usize {
        self.make_room();
        let i = self.entries.len;
        let pos = u32::try_from(i).expect("fewer than 2^32 keys in a map");
        self.entries.push((key, value));
        let entries = &self.entries;
        self.index
            .table
            .insert_unique(key, pos, |&j| entries.get(j as usize).0);
        self.prepare_next();
        i
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        match self.position(key) {
            Some(i) => Some(std::mem::replace(self.value_at_mut(i), value)),
            None => {
                self.push_new(key, value);
                None
            }
        }
    }

    /// The value of `key`, added with `make` when absent.
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.position(key) {
            Some(i) => {
                self.step();
                i
            }
            None => self.push_new(key, make()),
        };
        self.value_at_mut(i)
    }

    /// Removes `key`; the last entry takes its place.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        self.step();
        let entries = &self.entries;
        let eq = |&i: &u32| entries.get(i as usize).0 == key;
        let found: u32 = match self.index.table.find_entry(key, eq) {
            Ok(e) => e.remove().0,
            Err(_) => {
                let (old, _) = self.index.old.as_mut()?;
                old.find_entry(key, eq).ok()?.remove().0
            }
        };
        let i = found as usize;
        let last = self.entries.len - 1;
        let (_, value) = self.entries.swap_remove(i);
        if i != last {
            // The entry that was last is at `i` now: its index entry follows.
            let moved = self.entries.get(i).0;
            let at_last = |&j: &u32| j as usize == last;
            let slot = match self.index.table.find_mut(moved, at_last) {
                Some(s) => Some(s),
                None => self
                    .index
                    .old
                    .as_mut()
                    .and_then(|(old, _)| old.find_mut(moved, at_last)),
            };
            *slot.expect("every entry is indexed") = i as u32;
        }
        Some(value)
    }

    /// Every entry, in position order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Every value, in position order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Every value, to change it.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Keys the index holds before it grows.
    pub fn capacity(&self) -> usize {
        self.index.table.capacity()
    }

    /// Gives back the index's room beyond `min` keys (and any growth under way: it finishes;
    /// a successor prepared for it is freed as a large index is). A large index is not shrunk
    /// in place, which frees it on this thread: its keys are put in a smaller one and it is
    /// freed on another ([`free_elsewhere`]), as a grown one is.
    pub fn shrink_to(&mut self, min: usize) {
        self.finish_growth();
        if let Some(Ok(next)) = self.index.next.take().map(|r| r.try_recv()) {
            let bytes = table_bytes(&next);
            free_elsewhere(next, bytes);
        }
        let entries = &self.entries;
        let hash = |&j: &u32| entries.get(j as usize).0;
        let table = &mut self.index.table;
        let bytes = table_bytes(table);
        if bytes < FREE_ELSEWHERE_BYTES {
            table.shrink_to(min, hash);
            return;
        }
        // A table for `keys` has the power of two at or above 8/7 of them as slots (past 8
        // keys): past half the slots, it would have as many (nothing to give back, nothing
        // allocated). Slots, not capacity(): removed keys may leave tombstones that lower it.
        let keys = min.max(table.len());
        if keys.saturating_mul(8) / 7 > table.num_buckets() / 2 {
            return;
        }
        let mut smaller = HashTable::with_capacity(keys);
        #[cfg(test)]
        SHRUNK_BUILT.with(|n| n.set(n.get() + 1));
        debug_assert!(smaller.num_buckets() < table.num_buckets());
        for &j in table.iter() {
            smaller.insert_unique(hash(&j), j, hash);
        }
        free_elsewhere(std::mem::replace(table, smaller), bytes);
    }

    /// Heap bytes at capacity: chunks, index tables (with the old one while the index grows).
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u64, V)>()
            + self.entries.chunks.capacity() * std::mem::size_of::<Vec<(u64, V)>>()
            + table_bytes(&self.index.table)
            + self.index.old.as_ref().map_or(0, |(t, _)| table_bytes(t))
    }

    /// Before a key is added: an index with room for it. A small full index doubles at once; a
    /// large one is replaced by its successor, into which its keys then move a few at a time.
    fn make_room(&mut self) {
        self.step();
        let table = &self.index.table;
        if table.len() < table.capacity() {
            return;
        }
        if table.len() < INCREMENTAL_FROM {
            let entries = &self.entries;
            self.index.table.reserve(1, |&j| entries.get(j as usize).0);
            return;
        }
        // Full while the last growth still moves keys: cannot happen (see MOVES_PER_CHANGE),
        // but finishing it first keeps every key findable.
        self.finish_growth();
        let want = 2 * self.index.table.capacity();
        let next = match self.index.next.take().map(|r| r.recv()) {
            Some(Ok(t)) if t.capacity() >= want && t.is_empty() => t,
            _ => HashTable::with_capacity(want),
        };
        let old = std::mem::replace(&mut self.index.table, next);
        self.index.old = Some((old, 0));
        self.step();
    }

    /// Starts allocating the index's successor on another thread when a large index is 15/16
    /// full.
    fn prepare_next(&mut self) {
        let table = &self.index.table;
        if self.index.next.is_some()
            || self.index.old.is_some()
            || table.capacity() < PREPARE_FROM
            || table.len() < table.capacity() - table.capacity() / 16
        {
            return;
        }
        let want = 2 * table.capacity();
        let (tx, rx) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name(HELPER_THREAD.into())
            .spawn(move || {
                let _ = tx.send(HashTable::with_capacity(want));
            });
        if started.is_ok() {
            self.index.next = Some(rx);
        }
    }

    /// Moves the keys of `slots` more slots of the old index, if the index is growing (at a
    /// bucket close: a map read but not changed for a while still ends its growth).
    pub fn advance_growth(&mut self, slots: usize) {
        self.move_slots(slots);
    }

    /// Moves the keys of the next [`MOVES_PER_CHANGE`] slots of the old index, if the index
    /// is growing; drops the old one when it is empty.
    #[inline]
    fn step(&mut self) {
        #[cfg(test)]
        {
            self.moved = 0;
        }
        if self.index.old.is_some() {
            self.move_slots(MOVES_PER_CHANGE);
        }
    }

    fn move_slots(&mut self, slots: usize) {
        let Index { table, old, .. } = &mut self.index;
        let Some((from, at)) = old else {
            return;
        };
        let entries = &self.entries;
        let end = at.saturating_add(slots).min(from.num_buckets());
        for b in *at..end {
            if let Ok(e) = from.get_bucket_entry(b) {
                let (i, _) = e.remove();
                let key = entries.get(i as usize).0;
                table.insert_unique(key, i, |&j| entries.get(j as usize).0);
                #[cfg(test)]
                {
                    self.moved += 1;
                }
            }
        }
        *at = end;
        if end == from.num_buckets() {
            if let Some((t, _)) = old.take() {
                let bytes = table_bytes(&t);
                free_elsewhere(t, bytes);
            }
        }
    }

    fn finish_growth(&mut self) {
        self.move_slots(usize::MAX);
    }

    /// Keys moved from the old index by the last change.
    #[cfg(test)]
    pub fn moved_by_last_change(&self) -> usize {
        self.moved
    }

    /// Whether the index is growing (both tables searched).
    #[cfg(test)]
    pub fn growing(&self) -> bool {
        self.index.old.is_some()
    }
}

/// Written as a sequence of `(key, value)` in position order: the same bytes as the map of
/// values (or the `Vec` of pairs) it replaced.
impl<V: Serialize> Serialize for DenseMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        self.entries
            .iter()
            .try_for_each(|e| seq.serialize_element(e))?;
        seq.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for DenseMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = DenseMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of (key, value)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                // The entries first, then an index sized to what was read.
                let read = read_chunks(seq)?;
                let mut m = DenseMap {
                    entries: Chunks::with_capacity(read.len),
                    index: Index {
                        table: HashTable::with_capacity(read.len),
                        ..Index::default()
                    },
                    ..DenseMap::default()
                };
                // Each chunk read is freed once its entries moved: one chunk more at most.
                for chunk in read.chunks {
                    for (key, value) in chunk {
                        if m.insert(key, value).is_some() {
                            m.repeated += 1;
                        }
                    }
                }
                m.finish_growth();
                Ok(m)
            }
        }
        deserializer.deserialize_seq(Pairs(std::marker::PhantomData))
    }
}

/// A sequence of `(key, value)` as read, in chunks (no index): what a [`DenseMap`] or a
/// `Vec` of pairs saved, to be moved elsewhere entry by entry, each chunk freed once moved.
#[derive(Debug, Clone)]
pub struct Pairs<V>(Chunks<(u64, V)>);

impl<V> IntoIterator for Pairs<V> {
    type Item = (u64, V);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<(u64, V)>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.chunks.into_iter().flatten()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Read<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of (key, value)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                read_chunks(seq).map(Pairs)
            }
        }
        deserializer.deserialize_seq(Read(std::marker::PhantomData))
    }
}

/// The entries of a sequence, in chunks allocated as they are read: nothing is sized from the
/// count the input declares (a crafted count of billions allocated an index before the entries
/// ran out).
fn read_chunks<'de, V: Deserialize<'de>, A: SeqAccess<'de>>(
    mut seq: A,
) -> Result<Chunks<(u64, V)>, A::Error> {
    let mut read: Chunks<(u64, V)> = Chunks::default();
    while let Some(entry) = seq.next_element::<(u64, V)>()? {
        read.push(entry);
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    /// A scattered key (the maps take keyed hashes).
    fn key(i: u64) -> u64 {
        let x = (i ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    }

    /// 120,000 keys put in a map, all but the first 1,000 removed: its index keeps the 2^18
    /// slots (1.25 MB) it took past 114,688 keys.
    fn large_with_few_keys() -> (DenseMap<u64>, u64) {
        let mut m = DenseMap::default();
        let n = 120_000;
        for i in 0..n {
            m.push_new(key(i), i);
        }
        for i in 1_000..n {
            assert_eq!(m.remove(key(i)), Some(i));
        }
        assert!(m.index.table.num_buckets() * 5 >= FREE_ELSEWHERE_BYTES);
        (m, n)
    }

    #[test]
    fn a_large_index_shrunk_is_freed_on_another_thread_with_every_key_kept() {
        let (mut m, n) = large_with_few_keys();
        let before = counts().0;
        let slots = m.index.table.num_buckets();
        assert!(slots * 5 >= FREE_ELSEWHERE_BYTES, "{slots}");
        m.shrink_to(2_000);
        assert_eq!(counts().0, before + 1);
        assert!(m.index.table.num_buckets() < slots / 32);
        for i in 0..n {
            assert_eq!(m.get(key(i)), (i < 1_000).then_some(&i), "{i}");
        }
        // A small one is shrunk in place.
        let slots = m.index.table.num_buckets();
        m.shrink_to(0);
        assert_eq!(counts().0, before + 1);
        assert!(m.index.table.num_buckets() < slots, "{slots}");
        assert_eq!(m.get(key(999)), Some(&999));
    }

    #[test]
    fn a_large_index_more_than_half_full_is_kept_as_it_is() {
        let mut m = DenseMap::default();
        // 120,000 keys in 2^18 slots (1.25 MB): a table for them would have as many.
        for i in 0..120_000 {
            m.push_new(key(i), i);
        }
        let (slots, at) = (m.index.table.num_buckets(), m.index.table.capacity());
        assert!(slots * 5 >= FREE_ELSEWHERE_BYTES, "{slots}");
        let before = counts();
        m.shrink_to(0);
        // Nothing allocated (nor freed): a smaller table would have had as many slots.
        assert_eq!(counts(), before);
        assert_eq!((m.index.table.num_buckets(), m.capacity()), (slots, at));
        assert_eq!(m.get(key(119_999)), Some(&119_999));
    }

    /// This thread's tables handed to [`free_elsewhere`] and smaller indexes built.
    fn counts() -> (usize, usize) {
        (
            FREED_ELSEWHERE.with(Cell::get),
            SHRUNK_BUILT.with(Cell::get),
        )
    }

    #[test]
    fn a_large_index_is_shrunk_for_up_to_7_16_of_its_slots() {
        // 2^18 slots: a table for 114,688 keys has 2^17, one for 114,689 has 2^18. The removals
        // left tombstones, which lower capacity() below 7/8 of the slots (229,376).
        let (mut m, _) = large_with_few_keys();
        let (slots, at) = (m.index.table.num_buckets(), m.capacity());
        assert!(slots == 1 << 18 && at < 229_376, "{slots} {at}");
        let before = counts();
        m.shrink_to(114_689);
        assert_eq!(counts(), before);
        assert_eq!((m.index.table.num_buckets(), m.capacity()), (slots, at));
        // Half the slots: built once, and the old index handed over.
        let (mut m, _) = large_with_few_keys();
        let (freed, built) = counts();
        m.shrink_to(114_688);
        assert_eq!(counts(), (freed + 1, built + 1));
        assert_eq!(m.index.table.num_buckets(), slots / 2);
        assert_eq!(m.get(key(999)), Some(&999));
    }

    /// A map filled until its index's successor is being prepared, and its number of keys.
    fn until_prepared() -> (DenseMap<()>, u64) {
        let mut m = DenseMap::default();
        let mut i = 0;
        while m.index.next.is_none() {
            m.push_new(key(i), ());
            i += 1;
        }
        (m, i)
    }

    #[test]
    fn a_prepared_successor_is_freed_on_another_thread_when_the_index_is_shrunk() {
        let (mut m, i) = until_prepared();
        // The successor sent already: dropping its channel would free it on this thread.
        let next = m.index.next.take().unwrap().recv().unwrap();
        let (tx, rx) = mpsc::channel();
        tx.send(next).unwrap();
        m.index.next = Some(rx);
        let (slots, at) = (m.index.table.num_buckets(), m.index.table.capacity());
        let before = counts().0;
        // More than half full: a smaller table would have as many slots, so it is kept.
        m.shrink_to(0);
        assert_eq!(counts().0, before + 1);
        assert!(m.index.next.is_none());
        assert_eq!(m.index.table.num_buckets(), slots);
        assert_eq!(m.capacity(), at);
        for j in 0..i {
            assert!(m.get(key(j)).is_some(), "{j}");
        }
    }

    #[test]
    fn a_growing_index_moves_a_bounded_number_of_keys_per_change() {
        let mut m = DenseMap::default();
        let n = 4 * INCREMENTAL_FROM as u64;
        let (mut most, mut growths) = (0, 0);
        for i in 0..n {
            let was = m.growing();
            m.push_new(key(i), i);
            most = most.max(m.moved_by_last_change());
            growths += usize::from(!was && m.growing());
            // Every key stays findable while both tables are searched.
            if i % 97 == 0 {
                for j in (0..=i).step_by(1 + (i as usize) / 50) {
                    assert_eq!(m.get(key(j)), Some(&j), "{j} after {i}");
                }
            }
        }
        assert!(growths >= 2, "the index grew incrementally {growths} times");
        assert!(
            most <= MOVES_PER_CHANGE,
            "at most {MOVES_PER_CHANGE} slots' keys moved per change, {most} were"
        );
        for j in 0..n {
            assert_eq!(m.get(key(j)), Some(&j));
        }
    }

    #[test]
    fn the_map_behaves_as_a_hash_map_through_growths_and_removals() {
        let mut m = DenseMap::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x: u64 = 7;
        for step in 0..200_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let k = key((x >> 33) % 60_000);
            match (x >> 20) % 8 {
                0..=1 => assert_eq!(m.remove(k), model.remove(&k), "remove at {step}"),
                2 => {
                    *m.get_or_insert_with(k, || 0) += 1;
                    *model.entry(k).or_insert(0) += 1;
                }
                _ => assert_eq!(m.insert(k, step), model.insert(k, step), "insert at {step}"),
            }
            assert_eq!(m.len(), model.len());
        }
        let mut seen: Vec<(u64, u64)> = m.iter().map(|(k, v)| (k, *v)).collect();
        let mut want: Vec<(u64, u64)> = model.into_iter().collect();
        seen.sort_unstable();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_full_chunk_never_moves_and_no_chunk_passes_chunk() {
        let mut m = DenseMap::default();
        for i in 0..(CHUNK as u64 + 10) {
            m.push_new(key(i), i);
        }
        let first = m.at(0) as *const (u64, u64);
        for i in (CHUNK as u64 + 10)..(5 * CHUNK as u64) {
            m.push_new(key(i), i);
        }
        assert!(std::ptr::eq(first, m.at(0)), "the first chunk moved");
        assert_eq!(m.entries.capacity(), m.len());
        // Past a chunk's end, less than a STEP's room unused (a last chunk allocated whole
        // left 2,300 entries here), and the first chunk only as large as it needed.
        for i in (5 * CHUNK as u64)..(7 * CHUNK as u64 - 2300) {
            m.push_new(key(i), i);
        }
        assert!(
            m.entries.capacity() < m.len() + STEP,
            "{}",
            m.entries.capacity()
        );
        // A first chunk sized for a load (not a multiple of STEP) grows to CHUNK, not past it.
        let mut loaded = DenseMap::with_capacity(1000);
        for i in 0..(2 * CHUNK as u64) {
            loaded.push_new(key(i), i);
        }
        let caps: Vec<usize> = loaded.entries.chunks.iter().map(Vec::capacity).collect();
        assert_eq!(caps, [CHUNK, CHUNK]);
        let mut small = DenseMap::default();
        for i in 0..10 {
            small.push_new(key(i), i);
        }
        assert!(small.entries.capacity() < 32);
    }

    #[test]
    fn a_chunk_doubles_up_to_step_then_grows_a_step_at_a_time() {
        let capacities = |n: u64| {
            let mut m = DenseMap::default();
            for i in 0..n {
                m.push_new(key(i), i);
            }
            let caps: Vec<usize> = m.entries.chunks.iter().map(Vec::capacity).collect();
            caps
        };
        // Doubling from 4 while a chunk is smaller than STEP (512)...
        assert_eq!(capacities(3), [4]);
        assert_eq!(capacities(300), [512]);
        // ... then 512 at a time: 600 entries in 1,024, and a last chunk of 2,100 in 2,560
        // (doubling would give it 4,096: 1,996 entries' room unused).
        assert_eq!(capacities(600), [2 * STEP]);
        let n = 5 * CHUNK as u64 + 2_100;
        assert_eq!(capacities(n), [CHUNK, CHUNK, CHUNK, CHUNK, CHUNK, 5 * STEP]);
    }

    #[test]
    fn saved_as_the_map_of_values_it_replaced() {
        let mut m = DenseMap::default();
        let mut map: HashMap<u64, f64> = HashMap::new();
        for i in 0..1000 {
            m.insert(key(i), i as f64 / 3.0);
        }
        for (k, v) in m.iter() {
            map.insert(k, *v);
        }
        let ours = postcard::to_allocvec(&m).unwrap();
        // Read back as a map and as a dense map: the same entries.
        let as_map: HashMap<u64, f64> = postcard::from_bytes(&ours).unwrap();
        assert_eq!(as_map, map);
        let back: DenseMap<f64> = postcard::from_bytes(&ours).unwrap();
        assert_eq!(back.len(), 1000);
        assert!(map.iter().all(|(k, v)| back.get(*k) == Some(v)));
        // A map's bytes load too; a key twice is kept once and counted.
        let theirs = postcard::to_allocvec(&map).unwrap();
        let back: DenseMap<f64> = postcard::from_bytes(&theirs).unwrap();
        assert_eq!((back.len(), back.repeated()), (1000, 0));
        let twice: Vec<(u64, f64)> = vec![(1, 1.0), (2, 2.0), (1, 3.0)];
        let back: DenseMap<f64> =
            postcard::from_bytes(&postcard::to_allocvec(&twice).unwrap()).unwrap();
        assert_eq!(
            (back.len(), back.repeated(), back.get(1)),
            (2, 1, Some(&3.0))
        );
    }

    /// Pairs whose declared count is `claimed`, however many there are.
    struct Claiming(std::vec::IntoIter<Vec<u64>>, usize);

    impl Iterator for Claiming {
        type Item = Vec<u64>;
        fn next(&mut self) -> Option<Vec<u64>> {
            self.0.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.1, Some(self.1))
        }
    }

    #[test]
    fn a_crafted_count_allocates_no_index_beyond_the_entries_read() {
        use serde::de::value::{Error, SeqDeserializer};
        let pairs = vec![vec![key(1), 10], vec![key(2), 20], vec![key(1), 30]];
        let claimed = SeqDeserializer::<_, Error>::new(Claiming(pairs.into_iter(), 1 << 30));
        let m = DenseMap::<u64>::deserialize(claimed).unwrap();
        assert_eq!((m.len(), m.repeated(), m.get(key(1))), (2, 1, Some(&30)));
        // Sized from the three entries, not the 2^30 declared (the index was sized from the
        // count, up to 2^20 keys).
        assert!(m.capacity() < 64, "{}", m.capacity());
        assert!(m.entries.capacity() < 64, "{}", m.entries.capacity());
    }

    #[test]
    fn a_growth_ends_when_values_change_but_keys_do_not() {
        for by_close in [false, true] {
            let mut m = DenseMap::default();
            let mut i = 0;
            while !m.growing() {
                m.push_new(key(i), i);
                i += 1;
            }
            // No key added or removed from here on: values changed, or bucket closes.
            let mut changes = 0;
            while m.growing() && changes < 1_000_000 {
                if by_close {
                    m.advance_growth(4096);
                } else {
                    *m.get_mut(key(changes % i)).unwrap() += 1;
                    *m.value_at_mut((changes % i) as usize) += 1;
                }
                changes += 1;
            }
            assert!(!m.growing(), "still two tables after {changes} changes");
            for j in 0..i {
                assert!(m.get(key(j)).is_some(), "{j}");
            }
        }
    }

    #[test]
    fn a_large_index_gets_its_successor_from_another_thread() {
        let (mut m, mut i) = until_prepared();
        let prepared_at = m.capacity();
        assert!(prepared_at >= PREPARE_FROM);
        while !m.growing() {
            m.push_new(key(i), ());
            i += 1;
        }
        assert!(m.index.next.is_none(), "the prepared table was taken");
        assert!(m.capacity() >= 2 * prepared_at);
    }
}
