//! [`GeoCache`]: the per-thread, 4-way set-associative cache in front of a shared
//! [`GeoDb`](super::GeoDb) (see the module documentation).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::db::GeoDb;
use super::{Country, INITIAL_CACHE_SLOTS, MAX_CACHE_CAPACITY};

/// Hit and miss counts of a [`GeoCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the database.
    pub misses: u64,
}

/// Ways a set holds.
pub(super) const WAYS: usize = 4;

/// A way's state, in the top two bits of its `meta`: empty, cached without a country, cached
/// with the country whose index is in the bits below.
pub(super) const EMPTY: u16 = 0;
const CACHED_NONE: u16 = 1 << 14;
const CACHED_SOME: u16 = 2 << 14;
pub(super) const STATE_MASK: u16 = 3 << 14;
/// The memo's `meta` for a record whose country has no index (past [`MAX_COUNTRIES`]): never
/// in a way.
const UNCACHED: u16 = STATE_MASK;
/// The most countries an index in `meta` tells apart.
pub(super) const MAX_COUNTRIES: usize = 1 << 14;

/// One set: up to [`WAYS`] addresses, most recently used first (a way is empty only when
/// those after it are), each with its `meta`: its state and its country as an index into the
/// cache's list of the countries it has seen. An IPv4 way (a `u32` key) takes 6 bytes, an IPv6
/// one (`[u32; 4]`) 18, where a slot of a 2-way set with a key, a `u16` index and a state byte
/// took 8 and 20.
#[derive(Clone, Copy)]
pub(super) struct Set<K> {
    pub(super) keys: [K; WAYS],
    pub(super) meta: [u16; WAYS],
}

impl<K: Copy> Set<K> {
    /// Puts `key` and `meta` in the first way, the ways before `way` one further back (what
    /// was in `way` leaves). A loop of moves: `copy_within` called `memmove` for these few
    /// bytes, about 18 Ir an event more in the callgrind bench's `detector` case.
    #[inline]
    fn move_to_front(&mut self, way: usize, key: K, meta: u16) {
        for w in (1..=way).rev() {
            self.keys[w] = self.keys[w - 1];
            self.meta[w] = self.meta[w - 1];
        }
        self.keys[0] = key;
        self.meta[0] = meta;
    }
}

/// An address family's key in its table.
pub(super) trait Key: Copy + Eq + Default {
    /// The key as the canonical address's IPv6 number (IPv4 as `::ffff:a.b.c.d`), which the
    /// set hash takes.
    fn wide(self) -> u128;
}

impl Key for u32 {
    #[inline]
    fn wide(self) -> u128 {
        u128::from(Ipv4Addr::from(self).to_ipv6_mapped())
    }
}

impl Key for [u32; 4] {
    #[inline]
    fn wide(self) -> u128 {
        self.iter().fold(0, |w, &p| (w << 32) | u128::from(p))
    }
}

/// One address family's sets: a power of two of them, [`WAYS`] ways each, doubled when three
/// quarters of the ways are in use, up to the cache's capacity.
pub(super) struct Ways<K> {
    pub(super) sets: Vec<Set<K>>,
    /// Ways in use.
    pub(super) filled: usize,
    set_bits: u32,
}

impl<K: Key> Ways<K> {
    /// A table of `allocated` ways (a multiple of [`WAYS`], or none).
    fn new(allocated: usize) -> Self {
        let empty = Set {
            keys: [K::default(); WAYS],
            meta: [EMPTY; WAYS],
        };
        let sets = allocated / WAYS;
        Ways {
            sets: vec![empty; sets],
            filled: 0,
            set_bits: sets.max(1).trailing_zeros(),
        }
    }

    /// The ways allocated.
    pub(super) fn allocated(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// The country of `ip`, whose key is `key`, from these sets or from `r`.
    #[inline]
    fn country(&mut self, key: K, ip: IpAddr, r: &mut Resolver) -> Option<Country> {
        let Some(set) = self.sets.get_mut(r.set_of(key.wide(), self.set_bits)) else {
            return r.db.country(ip);
        };
        for way in 0..WAYS {
            let meta = set.meta[way];
            if meta & STATE_MASK == EMPTY {
                // The ways after an empty one are empty.
                break;
            }
            if set.keys[way] == key {
                set.move_to_front(way, key, meta);
                r.stats.hits += 1;
                return r.country_of(meta);
            }
        }
        r.stats.misses += 1;
        let meta = r.meta_of(ip);
        if meta == UNCACHED {
            // More distinct countries than an index holds: not cached.
            return r.db.country(ip);
        }
        // In front; the least recently used (the last way) leaves.
        let fills_empty = set.meta[WAYS - 1] & STATE_MASK == EMPTY;
        set.move_to_front(WAYS - 1, key, meta);
        if fills_empty {
            self.filled += 1;
            if self.filled * 4 > self.allocated() * 3 && self.allocated() < r.capacity {
                self.grow(r);
            }
        }
        r.country_of(meta)
    }

    /// Doubles the table (when three quarters of its ways are in use) and moves every entry to
    /// its set in it. Set `k` of the old table becomes sets `2k` and `2k + 1` (one more bit of
    /// the same hash), so its entries always find free ways; taken most recent first, they keep
    /// their order.
    fn grow(&mut self, r: &Resolver) {
        let doubled = Ways::new(self.allocated() * 2);
        let old = std::mem::replace(self, doubled);
        self.filled = old.filled;
        for set in old.sets {
            for way in 0..WAYS {
                if set.meta[way] & STATE_MASK == EMPTY {
                    break;
                }
                let to = &mut self.sets[r.set_of(set.keys[way].wide(), self.set_bits)];
                let free = to.meta.iter().position(|&m| m & STATE_MASK == EMPTY);
                debug_assert!(free.is_some(), "set k's entries fit in sets 2k and 2k + 1");
                if let Some(free) = free {
                    to.keys[free] = set.keys[way];
                    to.meta[free] = set.meta[way];
                }
            }
        }
    }

    fn clear(&mut self) {
        self.sets.iter_mut().for_each(|s| s.meta = [EMPTY; WAYS]);
        self.filled = 0;
    }
}

/// The memo's hash of a record offset: a seeded multiply, xor-shift, multiply (as a set's),
/// where SipHash cost ~140 Ir a miss (at 1M destinations, `benches/scale.rs`). The addresses
/// looked up choose the offsets among the database's records, not the seed.
#[derive(Clone, Copy)]
struct OffsetHash(u64);

impl BuildHasher for OffsetHash {
    type Hasher = OffsetHasher;
    fn build_hasher(&self) -> OffsetHasher {
        OffsetHasher { mul: self.0, h: 0 }
    }
}

struct OffsetHasher {
    mul: u64,
    h: u64,
}

impl Hasher for OffsetHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let h = self.h.wrapping_mul(self.mul);
        (h ^ (h >> 29)).wrapping_mul(self.mul)
    }
    // The memo's key is one `usize` (`write_usize`); both fold into what came before, so a
    // key of several parts would keep them all (`h` starts at 0: one integer is taken as is).
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.h = self.h.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.h = self.h.rotate_left(32) ^ n as u64;
    }
}

/// What both tables share: the database, the countries their entries refer to, the set hash.
pub(super) struct Resolver {
    db: Arc<GeoDb>,
    /// The most entries a table may grow to.
    capacity: usize,
    /// The countries cached entries refer to, by index: every country of a database at most,
    /// each with the name it has there (a few hundred).
    pub(super) countries: Vec<Country>,
    country_index: HashMap<Country, u16>,
    mul_lo: u64,
    mul_hi: u64,
    /// A record's `meta` by its offset in the database: a miss to an address whose record was
    /// seen before takes its country's index from here, where hashing the country to find it
    /// cost ~340 Ir a miss (at 1M destinations, `benches/scale.rs`).
    memo: HashMap<usize, u16, OffsetHash>,
    stats: CacheStats,
}

impl Resolver {
    /// Seeded multiply-shift hash of the 128-bit key to one of `2^set_bits` sets.
    #[inline]
    fn set_of(&self, key: u128, set_bits: u32) -> usize {
        let h =
            (key as u64).wrapping_mul(self.mul_lo) ^ ((key >> 64) as u64).wrapping_mul(self.mul_hi);
        let h = h ^ (h >> 29);
        let h = h.wrapping_mul(self.mul_lo);
        h.checked_shr(64 - set_bits).unwrap_or(0) as usize
    }

    /// The country a way's (or the memo's) `meta` stands for.
    #[inline]
    fn country_of(&self, meta: u16) -> Option<Country> {
        (meta & STATE_MASK == CACHED_SOME).then(|| self.countries[usize::from(meta & !STATE_MASK)])
    }

    /// The `meta` of `ip` from the database, through the memo.
    fn meta_of(&mut self, ip: IpAddr) -> u16 {
        let Resolver {
            db,
            memo,
            countries,
            country_index,
            ..
        } = self;
        db.resolve(ip, Some(memo), |country| {
            let Some(country) = country else {
                return CACHED_NONE;
            };
            if let Some(&i) = country_index.get(&country) {
                return CACHED_SOME | i;
            }
            match u16::try_from(countries.len()) {
                Ok(i) if usize::from(i) < MAX_COUNTRIES => {
                    countries.push(country);
                    country_index.insert(country, i);
                    CACHED_SOME | i
                }
                _ => UNCACHED,
            }
        })
        .unwrap_or(CACHED_NONE)
    }
}

/// A bounded, per-thread lookup cache in front of a shared [`GeoDb`].
///
/// 4-way set-associative with least-recently-used replacement inside each set, a table for
/// IPv4 addresses and one for IPv6; each holds at most the capacity fixed at construction (a
/// power of two), allocated as it fills. See the module documentation.
pub struct GeoCache {
    pub(super) v4: Ways<u32>,
    pub(super) v6: Ways<[u32; 4]>,
    pub(super) r: Resolver,
}

impl fmt::Debug for GeoCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoCache")
            .field("db", &self.r.db.path())
            .field("capacity", &self.r.capacity)
            .field("allocated", &self.allocated())
            .field("stats", &self.r.stats)
            .finish_non_exhaustive()
    }
}

impl GeoCache {
    /// A cache of at least `capacity` entries an address family (rounded up to a power of
    /// two, at least one set of [`WAYS`], at most [`MAX_CACHE_CAPACITY`]) in front of `db`. It
    /// allocates at most [`INITIAL_CACHE_SLOTS`] IPv4 entries now, as many IPv6 ones at the
    /// first IPv6 address, and doubles a table when three quarters of it is in use.
    pub fn new(db: Arc<GeoDb>, capacity: usize) -> GeoCache {
        let capacity = capacity.clamp(WAYS, MAX_CACHE_CAPACITY).next_power_of_two();
        let state = RandomState::new();
        GeoCache {
            v4: Ways::new(capacity.min(INITIAL_CACHE_SLOTS)),
            v6: Ways::new(0),
            r: Resolver {
                db,
                capacity,
                countries: Vec::new(),
                country_index: HashMap::new(),
                mul_lo: state.hash_one(0x6765_6f5f_6c6f_u64) | 1,
                mul_hi: state.hash_one(0x6765_6f5f_6869_u64) | 1,
                memo: HashMap::with_hasher(OffsetHash(
                    state.hash_one(0x6765_6f5f_6d65_6d6f_u64) | 1,
                )),
                stats: CacheStats::default(),
            },
        }
    }

    /// The country of `ip`, from the cache or the database; same answers as
    /// [`GeoDb::country`].
    #[inline]
    pub fn country(&mut self, ip: IpAddr) -> Option<Country> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4.country(u32::from(v4), ip, &mut self.r),
            IpAddr::V6(v6) => {
                if self.v6.sets.is_empty() {
                    self.v6 = Ways::new(self.r.capacity.min(INITIAL_CACHE_SLOTS));
                }
                let s = v6.segments();
                let part = |i: usize| (u32::from(s[i]) << 16) | u32::from(s[i + 1]);
                let key = [part(0), part(2), part(4), part(6)];
                self.v6.country(key, ip, &mut self.r)
            }
        }
    }

    /// The number of entries an address family's table holds at most.
    pub fn capacity(&self) -> usize {
        self.r.capacity
    }

    /// The number of entries allocated so far, both tables (each at most
    /// [`GeoCache::capacity`]).
    pub fn allocated(&self) -> usize {
        self.v4.allocated() + self.v6.allocated()
    }

    /// Hit and miss counts since construction or the last [`GeoCache::clear`].
    pub fn stats(&self) -> CacheStats {
        self.r.stats
    }

    /// Empties the cache and resets its statistics (e.g. after swapping databases).
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.r.countries.clear();
        self.r.country_index.clear();
        self.r.memo.clear();
        self.r.stats = CacheStats::default();
    }

    /// The database behind the cache.
    pub fn db(&self) -> &Arc<GeoDb> {
        &self.r.db
    }
}
