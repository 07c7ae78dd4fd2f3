//! [`GeoCache`]: the per-thread, 2-way set-associative cache in front of a shared
//! [`GeoDb`](super::GeoDb) (see the module documentation).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use super::db::GeoDb;
use super::{Country, INITIAL_CACHE_SLOTS, MAX_CACHE_CAPACITY};

/// The cache key of an address: the canonical address as an IPv6 number (IPv4 as
/// `::ffff:a.b.c.d`), split into its high and low halves.
pub(super) fn cache_key(ip: IpAddr) -> (u64, u64) {
    let key = match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    ((key >> 64) as u64, key as u64)
}

/// Hit and miss counts of a [`GeoCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the database.
    pub misses: u64,
}

pub(super) const EMPTY: u8 = 0;
const CACHED_NONE: u8 = 1;
const CACHED_SOME: u8 = 2;
pub(super) const STATE_MASK: u8 = 0x03;
const RECENT: u8 = 0x80;

/// One cache entry: 40 bytes. `key_hi`/`key_lo` are the canonical address as an IPv6 number
/// (IPv4 as `::ffff:a.b.c.d`), split so the slot needs only 8-byte alignment.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) key_hi: u64,
    pub(super) key_lo: u64,
    name: &'static str,
    iso_code: [u8; 2],
    pub(super) state: u8,
}

const EMPTY_SLOT: Slot = Slot {
    key_hi: 0,
    key_lo: 0,
    name: "",
    iso_code: [0; 2],
    state: EMPTY,
};

/// A bounded, per-thread lookup cache in front of a shared [`GeoDb`].
///
/// 2-way set-associative with least-recently-used replacement inside each set; the capacity is
/// a power of two fixed at construction, allocated as the cache fills. See the module
/// documentation.
pub struct GeoCache {
    db: Arc<GeoDb>,
    /// A power of two entries, doubled as they fill, up to `capacity`.
    pub(super) slots: Vec<Slot>,
    /// The most entries `slots` may grow to.
    capacity: usize,
    /// Entries in use.
    pub(super) filled: usize,
    set_bits: u32,
    mul_lo: u64,
    mul_hi: u64,
    memo: HashMap<usize, Option<Country>>,
    stats: CacheStats,
}

impl fmt::Debug for GeoCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoCache")
            .field("db", &self.db.path())
            .field("capacity", &self.capacity)
            .field("allocated", &self.slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl GeoCache {
    /// A cache of at least `capacity` entries (rounded up to a power of two, at least 2,
    /// at most [`MAX_CACHE_CAPACITY`]) in front of `db`. It allocates at most
    /// [`INITIAL_CACHE_SLOTS`] entries now and doubles when half are in use.
    pub fn new(db: Arc<GeoDb>, capacity: usize) -> GeoCache {
        let capacity = capacity.clamp(2, MAX_CACHE_CAPACITY).next_power_of_two();
        let allocated = capacity.min(INITIAL_CACHE_SLOTS);
        let state = RandomState::new();
        GeoCache {
            db,
            slots: vec![EMPTY_SLOT; allocated],
            capacity,
            filled: 0,
            set_bits: (allocated / 2).trailing_zeros(),
            mul_lo: state.hash_one(0x6765_6f5f_6c6f_u64) | 1,
            mul_hi: state.hash_one(0x6765_6f5f_6869_u64) | 1,
            memo: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// The country of `ip`, from the cache or the database; same answers as
    /// [`GeoDb::country`].
    #[inline]
    pub fn country(&mut self, ip: IpAddr) -> Option<Country> {
        let (key_hi, key_lo) = cache_key(ip);
        let base = self.set_of(key_hi, key_lo) * 2;
        let Some(ways) = self.slots.get_mut(base..base + 2) else {
            return self.db.country(ip);
        };
        for way in 0..2 {
            let slot = ways[way];
            if slot.state & STATE_MASK != EMPTY && slot.key_lo == key_lo && slot.key_hi == key_hi {
                if slot.state & RECENT == 0 {
                    ways[way].state |= RECENT;
                    ways[1 - way].state &= !RECENT;
                }
                self.stats.hits += 1;
                return (slot.state & STATE_MASK == CACHED_SOME).then_some(Country {
                    iso_code: slot.iso_code,
                    name: slot.name,
                });
            }
        }
        self.stats.misses += 1;
        let country = self.db.resolve(ip, Some(&mut self.memo));
        // Victim: an empty way, else the one not used most recently.
        let empty = |w: usize| ways[w].state & STATE_MASK == EMPTY;
        let victim = if empty(0) {
            0
        } else if empty(1) || ways[0].state & RECENT != 0 {
            1
        } else {
            0
        };
        let fills_empty = ways[victim].state & STATE_MASK == EMPTY;
        ways[1 - victim].state &= !RECENT;
        ways[victim] = match country {
            Some(c) => Slot {
                key_hi,
                key_lo,
                name: c.name,
                iso_code: c.iso_code,
                state: CACHED_SOME | RECENT,
            },
            None => Slot {
                key_hi,
                key_lo,
                state: CACHED_NONE | RECENT,
                ..EMPTY_SLOT
            },
        };
        if fills_empty {
            self.filled += 1;
            if self.filled * 2 > self.slots.len() && self.slots.len() < self.capacity {
                self.grow();
            }
        }
        country
    }

    /// Doubles the table (when half of it is in use) and moves every entry to its set in it. Set `k` of the old table
    /// becomes sets `2k` and `2k + 1` (one more bit of the same hash), so its two entries
    /// always find a free way.
    fn grow(&mut self) {
        let doubled = vec![EMPTY_SLOT; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.set_bits += 1;
        for slot in old {
            if slot.state & STATE_MASK == EMPTY {
                continue;
            }
            let base = self.set_of(slot.key_hi, slot.key_lo) * 2;
            if let Some(way) = self.slots[base..base + 2]
                .iter_mut()
                .find(|w| w.state & STATE_MASK == EMPTY)
            {
                *way = slot;
            }
        }
    }

    /// Seeded multiply-shift hash of the 128-bit key to a set index.
    #[inline]
    fn set_of(&self, key_hi: u64, key_lo: u64) -> usize {
        let h = key_lo.wrapping_mul(self.mul_lo) ^ key_hi.wrapping_mul(self.mul_hi);
        let h = h ^ (h >> 29);
        let h = h.wrapping_mul(self.mul_lo);
        h.checked_shr(64 - self.set_bits).unwrap_or(0) as usize
    }

    /// The number of entries the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of entries allocated so far (at most [`GeoCache::capacity`]).
    pub fn allocated(&self) -> usize {
        self.slots.len()
    }

    /// Hit and miss counts since construction or the last [`GeoCache::clear`].
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Empties the cache and resets its statistics (e.g. after swapping databases).
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY_SLOT);
        self.filled = 0;
        self.memo.clear();
        self.stats = CacheStats::default();
    }

    /// The database behind the cache.
    pub fn db(&self) -> &Arc<GeoDb> {
        &self.db
    }
}
