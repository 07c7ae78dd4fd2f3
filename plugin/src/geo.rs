//! GeoIP enrichment: destination IP -> country (ISO code and the English name Elastic writes).
//!
//! DESIGN section 5: when an event lacks `destination.geo.country_name` /
//! `destination.geo.country_iso_code`, the detector looks the destination address up in a
//! MaxMind DB (`.mmdb`) file. Two record layouts are understood, per record:
//!
//! * **GeoIP2 / GeoLite2 Country and City**: `country.iso_code` and `country.names.en`,
//!   falling back to `registered_country` (anycast and some mobile ranges carry only that);
//! * **ip-location-db** (the database shipped in `data/geo/`): a top-level `country_code`.
//!
//! The English name comes from the database's own `names.en` when it has one (that is exactly
//! what Elastic's `geoip` processor would write with the same database), otherwise from a table
//! compiled into the binary (`geo/country_names.rs`, GeoLite2's English names: "Russia",
//! "Iran", "United States", "North Korea", "South Korea"). A well-formed code that neither
//! source names is reported with the code itself as its name, so that "rare country" logic
//! still sees a distinct value. Names found only in a database are interned once into
//! `&'static str` (at most [`MAX_INTERNED_NAMES`] of them, each at most 64 bytes), which keeps
//! [`Country`] `Copy` and the cache free of reference counting.
//!
//! **Reading, not mapping.** [`GeoDb::open`] reads the whole file into memory (7.8 MB for the
//! shipped database, ~60 MB for GeoLite2-City) rather than memory-mapping it. Mapping needs
//! `unsafe` and is undefined behaviour (SIGBUS in practice) if anything truncates or rewrites
//! the file while it is mapped, e.g. an updater that does not replace it atomically; the plugin
//! is specified to do its I/O at construction only; and a resident copy means no page faults on
//! the lookup path. The cost, one private copy per process, is small at these sizes.
//!
//! **Lookups.** IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) addresses are
//! looked up as IPv4. Addresses that are not globally routable (private, CGNAT, loopback,
//! link-local, documentation, benchmarking, multicast, reserved) are answered `None` without
//! asking the database: the shipped database wrongly places 172.16.0.0/12 and 192.168.0.0/16 in
//! Australia. Addresses without a record, records without a usable country, corrupt records
//! and IPv6 queries against an IPv4-only database also yield `None`: enrichment never fails
//! an event.
//!
//! **Caching.** [`GeoCache`] puts a fixed-size, 2-way set-associative table in front of a
//! shared [`GeoDb`]. Each address hashes (seeded multiply-shift, so a sender cannot aim
//! addresses at one set) to a set of two slots; a hit compares two 128-bit keys and copies a
//! 24-byte [`Country`] out. On a miss the least recently used of the two slots is replaced
//! (one "recent" bit per slot). Memory is bounded by the capacity fixed at construction (40 bytes
//! per entry) but allocated as the cache fills: it starts at 1024 entries and doubles when half
//! are in use, so a large `cache_entries` costs memory only as distinct addresses
//! arrive (`1 << 24` entries allocated up front were 670 MB). Misses additionally go through a small memo keyed by the record's data-section
//! offset, so the many addresses that share one country record are decoded once.
//! `GeoCache::country` takes `&mut self`: keep one cache per worker thread over an
//! `Arc<GeoDb>`; there is no locking on the hot path.

#[path = "geo/country_names.rs"]
mod country_names;
#[cfg(test)]
#[path = "geo/mmdb_writer.rs"]
pub(crate) mod mmdb_writer;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use egresswatch_plugin_api::files::{self, FileError};
use serde::Deserialize;

/// The name [`GeoDb::bundled`] reports as its path.
pub const BUNDLED_NAME: &str = "(bundled) geo-whois-asn-country.mmdb";

/// The bundled database's bytes (see [`GeoDb::bundled`]).
static BUNDLED_DATABASE: &[u8] = include_bytes!("../../data/geo/geo-whois-asn-country.mmdb");

/// Default number of entries in a [`GeoCache`].
pub const DEFAULT_CACHE_CAPACITY: usize = 65_536;

/// Upper bound on the entries of a [`GeoCache`]; larger requests are clamped to it.
pub const MAX_CACHE_CAPACITY: usize = 1 << 24;

/// Entries a [`GeoCache`] allocates at first; it doubles when half are in use, up to its
/// capacity.
const INITIAL_CACHE_SLOTS: usize = 1024;

/// Largest database file read, in bytes (GeoIP2-City is about 130 MB).
pub const MAX_DATABASE_BYTES: u64 = 1 << 30;

/// How many distinct country names found only in a database (not in the compiled table) are
/// kept for the life of the process. Later ones fall back to the table name or the ISO code.
pub const MAX_INTERNED_NAMES: usize = 1024;

/// Longest database-provided country name accepted, in bytes.
const MAX_NAME_LEN: usize = 64;

/// Entries in a [`GeoCache`]'s record-offset memo before it is cleared.
const MEMO_CAPACITY: usize = 4096;

/// Why a GeoIP database could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// There is no file at the configured path.
    #[error("GeoIP database {}: file not found", .path.display())]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, a directory, an I/O error).
    #[error("GeoIP database {}: cannot read it: {source}", .path.display())]
    Unreadable {
        /// The configured path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid MaxMind DB (`.mmdb`) file.
    #[error("GeoIP database {}: not a MaxMind DB (.mmdb) file: {source}", .path.display())]
    NotMmdb {
        /// The configured path.
        path: PathBuf,
        /// What the MaxMind DB reader rejected.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// A country: ISO 3166-1 alpha-2 code (upper case) and English name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Country {
    iso_code: [u8; 2],
    name: &'static str,
}

impl Country {
    /// The country for an ISO code (any case), named from the compiled table, or `None` if the
    /// code is not two ASCII letters or not in the table.
    pub fn from_iso_code(code: &str) -> Option<Country> {
        let iso_code = normalise_code(code)?;
        Some(Country {
            iso_code,
            name: table_name(iso_code)?,
        })
    }

    /// The upper-case two-letter ISO code, e.g. `"US"` (ECS `*.geo.country_iso_code`).
    pub fn iso_code(&self) -> &'static str {
        // Always two upper-case ASCII letters by construction.
        let i =
            2 * (usize::from(self.iso_code[0] - b'A') * 26 + usize::from(self.iso_code[1] - b'A'));
        ALL_CODES.get(i..i + 2).unwrap_or("")
    }

    /// The ISO code as two ASCII bytes.
    pub fn iso_code_bytes(&self) -> [u8; 2] {
        self.iso_code
    }

    /// The English name, e.g. `"United States"` (ECS `*.geo.country_name`).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.iso_code())
    }
}

/// The English name (GeoLite2 / Elastic spelling) for an ISO 3166-1 alpha-2 code, any case,
/// from the table compiled into the binary.
pub fn country_name(iso_code: &str) -> Option<&'static str> {
    table_name(normalise_code(iso_code)?)
}

/// `code` as two upper-case ASCII letters, or `None`.
fn normalise_code(code: &str) -> Option<[u8; 2]> {
    match code.trim().as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// Every two-letter upper-case code, `"AAAB..ZZ"`, so that a [`Country`] can hand out its code
/// as a `&'static str`.
static ALL_CODES: &str = match std::str::from_utf8(&ALL_CODE_BYTES) {
    Ok(codes) => codes,
    Err(_) => panic!("ASCII letters are UTF-8"),
};

static ALL_CODE_BYTES: [u8; 1352] = {
    let mut out = [0u8; 1352];
    let mut i = 0;
    while i < 676 {
        out[2 * i] = b'A' + (i / 26) as u8;
        out[2 * i + 1] = b'A' + (i % 26) as u8;
        i += 1;
    }
    out
};

/// Direct index `[26 * (c0 - 'A') + (c1 - 'A')]` over the compiled table; `""` = unknown.
static NAME_INDEX: [&str; 676] = build_name_index();

const fn build_name_index() -> [&'static str; 676] {
    let mut index = [""; 676];
    let mut i = 0;
    while i < country_names::COUNTRY_NAMES.len() {
        let (code, name) = country_names::COUNTRY_NAMES[i];
        let b = code.as_bytes();
        index[(b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize] = name;
        i += 1;
    }
    index
}

fn table_name(code: [u8; 2]) -> Option<&'static str> {
    let name = NAME_INDEX[usize::from(code[0] - b'A') * 26 + usize::from(code[1] - b'A')];
    (!name.is_empty()).then_some(name)
}

/// Returns a `'static` copy of `name`, leaking at most [`MAX_INTERNED_NAMES`] short strings
/// over the life of the process.
fn intern(name: &str) -> Option<&'static str> {
    static INTERNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return None;
    }
    let set = INTERNED.get_or_init(|| Mutex::new(HashSet::new()));
    let mut set = set.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&known) = set.get(name) {
        return Some(known);
    }
    if set.len() >= MAX_INTERNED_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    set.insert(leaked);
    Some(leaked)
}

/// Builds a [`Country`] from a record's code and optional English name.
fn make_country(code: &str, db_name: Option<&str>) -> Option<Country> {
    let iso_code = normalise_code(code)?;
    let table = table_name(iso_code);
    let name = match (db_name.map(str::trim), table) {
        (Some(n), Some(t)) if n == t => Some(t),
        (Some(n), t) => intern(n).or(t),
        (None, t) => t,
    };
    let name = match name {
        Some(n) => n,
        None => intern(std::str::from_utf8(&iso_code).ok()?)?,
    };
    Some(Country { iso_code, name })
}

/// The fields of a record that matter here; everything else is skipped while decoding.
#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow, default)]
    country: Option<RawCountry<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<RawCountry<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct RawCountry<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<RawNames<'a>>,
}

#[derive(Deserialize)]
struct RawNames<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

impl RawRecord<'_> {
    fn to_country(&self) -> Option<Country> {
        let from = |c: &Option<RawCountry<'_>>| {
            let c = c.as_ref()?;
            make_country(c.iso_code?, c.names.as_ref().and_then(|n| n.en))
        };
        from(&self.country)
            .or_else(|| from(&self.registered_country))
            .or_else(|| make_country(self.country_code?, None))
    }
}

/// An open MaxMind DB country database (GeoIP2/GeoLite2 Country or City, or ip-location-db).
///
/// Read fully into memory at [`GeoDb::open`]; immutable afterwards, `Send + Sync`.
#[derive(Debug)]
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
    path: PathBuf,
}

impl GeoDb {
    /// Reads and validates the database at `path`: a regular file (a FIFO or device is refused,
    /// never waited on) of at most [`MAX_DATABASE_BYTES`].
    ///
    /// Errors name the path and say whether it is missing, unreadable or not an `.mmdb` file.
    pub fn open(path: impl AsRef<Path>) -> Result<GeoDb, GeoError> {
        let path = path.as_ref();
        let bytes = files::read_regular(path, MAX_DATABASE_BYTES).map_err(|e| match e {
            FileError::Missing => GeoError::Missing {
                path: path.to_path_buf(),
            },
            other => GeoError::Unreadable {
                path: path.to_path_buf(),
                source: other.into(),
            },
        })?;
        GeoDb::from_bytes(bytes, path)
    }

    /// The database shipped with egresswatch (`data/geo/`: IPv4 and IPv6 countries, a CC0
    /// compilation of NRO data), compiled into the plugin.
    ///
    /// Compiled in rather than looked up beside the library or the configuration: GeoIP is on by
    /// default, and a default that depends on where a package manager or a container put a
    /// data file would fail quietly (the country job learning for ever); the cost is 7.8 MB of
    /// plugin file and, at run time, one copy in memory, as reading the file would take.
    pub fn bundled() -> Result<GeoDb, GeoError> {
        GeoDb::from_bytes(BUNDLED_DATABASE.to_vec(), BUNDLED_NAME)
    }

    /// Uses an `.mmdb` image already in memory; `origin` is only used in errors and
    /// [`GeoDb::path`].
    pub fn from_bytes(bytes: Vec<u8>, origin: impl AsRef<Path>) -> Result<GeoDb, GeoError> {
        let path = origin.as_ref().to_path_buf();
        match maxminddb::Reader::from_source(bytes) {
            Ok(reader) => Ok(GeoDb { reader, path }),
            Err(source) => Err(GeoError::NotMmdb { path, source }),
        }
    }

    /// The country of `ip`, or `None` when the database has no usable country for it.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        self.resolve(ip, None)
    }

    /// The path the database was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata `database_type`, e.g. `"GeoLite2-Country"` or `"country"` (ip-location-db).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The metadata `build_epoch`: when the database was built, in Unix seconds.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Looks `ip` up, consulting and filling `memo` (record offset -> country) if given.
    fn resolve(
        &self,
        ip: IpAddr,
        memo: Option<&mut HashMap<usize, Option<Country>>>,
    ) -> Option<Country> {
        let found = self.reader.lookup(routable_address(ip)?).ok()?;
        let offset = found.offset()?;
        let decode = || {
            found
                .decode::<RawRecord<'_>>()
                .ok()
                .flatten()
                .and_then(|r| r.to_country())
        };
        match memo {
            None => decode(),
            Some(memo) => {
                if let Some(&known) = memo.get(&offset) {
                    return known;
                }
                let country = decode();
                if memo.len() >= MEMO_CAPACITY {
                    memo.clear();
                }
                memo.insert(offset, country);
                country
            }
        }
    }
}

/// The address to look up for `ip`, or `None` when it is not globally routable.
///
/// IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 well-known-prefix (`64:ff9b::a.b.c.d`) addresses
/// become their IPv4 address. Addresses that are not public destinations
/// ([`crate::net::is_public_destination`]: private, reserved, documentation, CGNAT, multicast...)
/// are refused before the database is asked, because databases do answer for some of them: the shipped ip-location-db build
/// places 172.16.0.0/12, 192.168.0.0/16 and TEST-NET-2/3 in "AU" and 2001:db8::/32 in "JP".
/// A private destination must never look like a rare foreign country.
fn routable_address(ip: IpAddr) -> Option<IpAddr> {
    let ip = match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let [.., a, b, c, d] = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
        }
        other => other,
    };
    crate::net::is_public_destination(ip).then_some(ip)
}

/// The cache key of an address: the canonical address as an IPv6 number (IPv4 as
/// `::ffff:a.b.c.d`), split into its high and low halves.
fn cache_key(ip: IpAddr) -> (u64, u64) {
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

const EMPTY: u8 = 0;
const CACHED_NONE: u8 = 1;
const CACHED_SOME: u8 = 2;
const STATE_MASK: u8 = 0x03;
const RECENT: u8 = 0x80;

/// One cache entry: 40 bytes. `key_hi`/`key_lo` are the canonical address as an IPv6 number
/// (IPv4 as `::ffff:a.b.c.d`), split so the slot needs only 8-byte alignment.
#[derive(Clone, Copy)]
struct Slot {
    key_hi: u64,
    key_lo: u64,
    name: &'static str,
    iso_code: [u8; 2],
    state: u8,
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
    slots: Vec<Slot>,
    /// The most entries `slots` may grow to.
    capacity: usize,
    /// Entries in use.
    filled: usize,
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

#[cfg(test)]
mod tests {
    use super::mmdb_writer::{MmdbWriter, Value};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A temp file that is removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(name: &str, bytes: &[u8]) -> TempFile {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "egresswatch-geo-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                name
            ));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// ip-location-db layout: `{"country_code": ..}`, IPv4 in the IPv6 tree, 24-bit records.
    fn ip_location_db() -> Vec<u8> {
        let mut w = MmdbWriter::new("country", 6, 24).unwrap();
        w.insert("8.8.8.0/24", Value::ip_location_db("US")).unwrap();
        w.insert("77.88.0.0/18", Value::ip_location_db("RU"))
            .unwrap();
        w.insert("2.144.0.0/14", Value::ip_location_db("ir"))
            .unwrap();
        w.insert("175.45.176.0/22", Value::ip_location_db("KP"))
            .unwrap();
        w.insert("1.208.0.0/12", Value::ip_location_db("KR"))
            .unwrap();
        w.insert("2a02:6b8::/29", Value::ip_location_db("RU"))
            .unwrap();
        w.insert("5.5.5.0/24", Value::ip_location_db("ZZ")).unwrap();
        w.insert("6.6.6.0/24", Value::ip_location_db("USA"))
            .unwrap();
        w.insert("7.7.7.0/24", Value::map([("asn", Value::U32(1))]))
            .unwrap();
        w.build().unwrap()
    }

    /// GeoLite2-like layout with 28-bit records.
    fn geolite2_db() -> Vec<u8> {
        let mut w = MmdbWriter::new("GeoLite2-Country", 6, 28).unwrap();
        w.insert("8.0.0.0/8", Value::geolite2_country("US", "United States"))
            .unwrap();
        w.insert("8.8.4.0/24", Value::geolite2_country("DE", "Germany"))
            .unwrap();
        w.insert(
            "2001:4860::/32",
            Value::geolite2_country("US", "United States"),
        )
        .unwrap();
        w.insert("78.0.0.0/8", Value::geolite2_country("TR", "Türkiye"))
            .unwrap();
        // Only registered_country, as MaxMind does for some anycast ranges.
        w.insert(
            "1.1.1.0/24",
            Value::map([(
                "registered_country",
                Value::map([
                    ("iso_code", Value::str("AU")),
                    ("names", Value::map([("en", Value::str("Australia"))])),
                ]),
            )]),
        )
        .unwrap();
        // A country with no English name in the record.
        w.insert(
            "9.9.9.0/24",
            Value::map([("country", Value::map([("iso_code", Value::str("CH"))]))]),
        )
        .unwrap();
        w.build().unwrap()
    }

    #[test]
    fn name_table_spelling_and_shape() {
        assert_eq!(country_name("RU"), Some("Russia"));
        assert_eq!(country_name("ir"), Some("Iran"));
        assert_eq!(country_name("US"), Some("United States"));
        assert_eq!(country_name("KP"), Some("North Korea"));
        assert_eq!(country_name("KR"), Some("South Korea"));
        assert_eq!(country_name("GB"), Some("United Kingdom"));
        for bad in ["", "R", "RUS", "1A", "Ü1"] {
            assert_eq!(country_name(bad), None, "{bad:?}");
        }
        let codes: Vec<&str> = country_names::COUNTRY_NAMES.iter().map(|e| e.0).collect();
        assert!(codes.len() > 240);
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert_eq!(Country::from_iso_code("de").unwrap().iso_code(), "DE");
        assert_eq!(Country::from_iso_code("ZZ"), None);
    }

    #[test]
    fn ip_location_db_layout() {
        let file = TempFile::with("iplocdb.mmdb", &ip_location_db());
        let db = GeoDb::open(&file.0).unwrap();
        assert_eq!(db.database_type(), "country");
        assert_eq!(db.path(), file.0.as_path());
        let c = |s: &str| {
            db.country(ip(s))
                .map(|c| (c.iso_code().to_owned(), c.name()))
        };
        assert_eq!(c("8.8.8.8"), Some(("US".into(), "United States")));
        assert_eq!(c("77.88.8.8"), Some(("RU".into(), "Russia")));
        assert_eq!(c("2.147.255.255"), Some(("IR".into(), "Iran")));
        assert_eq!(c("175.45.176.1"), Some(("KP".into(), "North Korea")));
        assert_eq!(c("1.209.0.1"), Some(("KR".into(), "South Korea")));
        assert_eq!(c("2a02:6b8::feed"), Some(("RU".into(), "Russia")));
        assert_eq!(c("::ffff:77.88.8.8"), Some(("RU".into(), "Russia")));
        // Unknown but well-formed code: the code is the name.
        assert_eq!(c("5.5.5.5"), Some(("ZZ".into(), "ZZ")));
        // Out of range, private, loopback, malformed code, record without a country.
        for none in [
            "8.8.9.1",
            "77.88.64.1",
            "10.0.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "2a02:6c0::1",
            "6.6.6.6",
            "7.7.7.7",
        ] {
            assert_eq!(c(none), None, "{none}");
        }
    }

    #[test]
    fn geolite2_layout() {
        let file = TempFile::with("geolite2.mmdb", &geolite2_db());
        let db = GeoDb::open(&file.0).unwrap();
        let c = |s: &str| {
            db.country(ip(s))
                .map(|c| (c.iso_code().to_owned(), c.name()))
        };
        assert_eq!(c("8.8.8.8"), Some(("US".into(), "United States")));
        assert_eq!(c("8.8.4.4"), Some(("DE".into(), "Germany")));
        assert_eq!(
            c("2001:4860:4860::8888"),
            Some(("US".into(), "United States"))
        );
        // The database's own English name wins over the compiled table.
        assert_eq!(c("78.1.2.3"), Some(("TR".into(), "Türkiye")));
        assert_eq!(c("1.1.1.1"), Some(("AU".into(), "Australia")));
        assert_eq!(c("9.9.9.9"), Some(("CH".into(), "Switzerland")));
        assert_eq!(c("10.1.1.1"), None);
        assert_eq!(c("2001:db8::1"), None);
    }

    #[test]
    fn ipv4_only_database_and_other_record_sizes() {
        let mut w = MmdbWriter::new("GeoIP2-Country", 4, 32).unwrap();
        w.insert("8.8.8.0/24", Value::geolite2_country("US", "United States"))
            .unwrap();
        let db = GeoDb::from_bytes(w.build().unwrap(), "mem.mmdb").unwrap();
        assert_eq!(db.country(ip("8.8.8.8")).unwrap().iso_code(), "US");
        assert_eq!(db.country(ip("::ffff:8.8.8.8")).unwrap().iso_code(), "US");
        assert_eq!(db.country(ip("2001:4860::1")), None);
        assert_eq!(db.country(ip("9.9.9.9")), None);
    }

    #[test]
    fn open_errors_name_the_path_and_reason() {
        let missing = std::env::temp_dir().join("egresswatch-geo-no-such-file.mmdb");
        let err = GeoDb::open(&missing).unwrap_err();
        assert!(matches!(err, GeoError::Missing { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains("egresswatch-geo-no-such-file.mmdb"));
        assert!(err.to_string().contains("not found"));

        let err = GeoDb::open(std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, GeoError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("cannot read"));

        for (name, bytes) in [
            ("empty.mmdb", &b""[..]),
            ("text.mmdb", &b"iso_code,name_en\nUS,United States\n"[..]),
            ("marker-only.mmdb", &b"\xAB\xCD\xEFMaxMind.com"[..]),
        ] {
            let file = TempFile::with(name, bytes);
            let err = GeoDb::open(&file.0).unwrap_err();
            assert!(matches!(err, GeoError::NotMmdb { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains("not a MaxMind DB"), "{err}");
        }
    }

    #[test]
    fn cache_agrees_with_database_and_counts() {
        let db = Arc::new(GeoDb::from_bytes(ip_location_db(), "mem.mmdb").unwrap());
        let mut cache = GeoCache::new(Arc::clone(&db), 1000);
        assert_eq!(cache.capacity(), 1024);
        let probes = [
            "8.8.8.8",
            "77.88.8.8",
            "10.0.0.1",
            "2a02:6b8::1",
            "5.5.5.5",
            "::ffff:8.8.8.8",
        ];
        for p in probes {
            assert_eq!(cache.country(ip(p)), db.country(ip(p)), "{p}");
        }
        // ::ffff:8.8.8.8 shares 8.8.8.8's entry.
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 5 });
        for p in probes {
            assert_eq!(cache.country(ip(p)), db.country(ip(p)), "{p}");
        }
        assert_eq!(cache.stats(), CacheStats { hits: 7, misses: 5 });
        cache.clear();
        assert_eq!(cache.stats(), CacheStats::default());
        assert_eq!(
            cache.country(ip("8.8.8.8")).unwrap().name(),
            "United States"
        );
        assert_eq!(cache.stats().misses, 1);
    }

    #[test]
    fn small_cache_stays_bounded_and_correct() {
        let db = Arc::new(GeoDb::from_bytes(ip_location_db(), "mem.mmdb").unwrap());
        let mut cache = GeoCache::new(Arc::clone(&db), 0);
        assert_eq!(cache.capacity(), 2);
        for round in 0..3 {
            for last in 0..=255u8 {
                for net in ["8.8.8", "77.88.1", "10.0.0"] {
                    let a = ip(&format!("{net}.{last}"));
                    assert_eq!(cache.country(a), db.country(a), "round {round} {a}");
                }
            }
        }
        let s = cache.stats();
        assert_eq!(s.hits + s.misses, 3 * 256 * 3);
        // One set of two ways: a repeated address right after itself is a hit.
        let a = ip("8.8.8.8");
        cache.country(a);
        let before = cache.stats().hits;
        cache.country(a);
        assert_eq!(cache.stats().hits, before + 1);
    }

    /// The keys a cache holds.
    fn keys(cache: &GeoCache) -> std::collections::BTreeSet<(u64, u64)> {
        cache
            .slots
            .iter()
            .filter(|s| s.state & STATE_MASK != EMPTY)
            .map(|s| (s.key_hi, s.key_lo))
            .collect()
    }

    #[test]
    fn the_cache_allocates_as_it_fills_and_keeps_every_entry_when_it_grows() {
        let db = Arc::new(GeoDb::from_bytes(ip_location_db(), "mem.mmdb").unwrap());
        let mut cache = GeoCache::new(Arc::clone(&db), MAX_CACHE_CAPACITY);
        assert_eq!(cache.capacity(), MAX_CACHE_CAPACITY);
        assert_eq!(cache.allocated(), INITIAL_CACHE_SLOTS);
        let mut growths = 0;
        for i in 0..20_000u32 {
            let a = IpAddr::from([8, 8, (i >> 8) as u8, i as u8]);
            // This lookup may make the table grow: note what it holds first.
            let allocated = cache.allocated();
            let before = ((cache.filled + 1) * 2 > allocated).then(|| keys(&cache));
            assert_eq!(cache.country(a), db.country(a), "{a}");
            if cache.allocated() != allocated {
                growths += 1;
                assert_eq!(cache.allocated(), allocated * 2);
                let mut expected = before.expect("growth only when half full");
                expected.insert(cache_key(a));
                assert_eq!(keys(&cache), expected, "an entry was lost growing");
                assert_eq!(cache.filled, expected.len());
            }
        }
        assert!(growths >= 4, "{growths}");
        assert!(cache.allocated() <= 65_536, "{}", cache.allocated());
        // A small capacity is never exceeded.
        let mut small = GeoCache::new(Arc::clone(&db), 4096);
        for i in 0..20_000u32 {
            small.country(IpAddr::from([77, 88, (i >> 8) as u8, i as u8]));
        }
        assert_eq!(small.allocated(), 4096);
    }

    #[test]
    fn lru_within_a_set() {
        let db = Arc::new(GeoDb::from_bytes(ip_location_db(), "mem.mmdb").unwrap());
        let mut cache = GeoCache::new(db, 2); // one set, two ways
        let (a, b, c) = (ip("8.8.8.1"), ip("8.8.8.2"), ip("8.8.8.3"));
        cache.country(a);
        cache.country(b);
        cache.country(a); // a is now the most recent
        cache.country(c); // evicts b
        let hits = cache.stats().hits;
        cache.country(a);
        assert_eq!(cache.stats().hits, hits + 1, "a kept");
        cache.country(b);
        assert_eq!(cache.stats().hits, hits + 1, "b evicted");
    }

    #[test]
    fn shipped_database() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/geo/geo-whois-asn-country.mmdb");
        let db = GeoDb::open(&path).unwrap();
        let c = |s: &str| {
            db.country(ip(s))
                .map(|c| (c.iso_code().to_owned(), c.name()))
        };
        assert_eq!(c("8.8.8.8"), Some(("US".into(), "United States")));
        assert_eq!(c("77.88.8.8"), Some(("RU".into(), "Russia")));
        assert_eq!(c("2a00:1450::1"), Some(("IE".into(), "Ireland")));
        assert_eq!(c("64:ff9b::4d58:808"), Some(("RU".into(), "Russia")));
        // The data answers "AU"/"JP" for these; the special-range filter must not.
        for none in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert_eq!(c(none), None, "{none}");
        }
    }

    #[test]
    fn special_ranges_are_never_looked_up() {
        // A database that (wrongly) claims the whole address space.
        let mut w = MmdbWriter::new("country", 6, 24).unwrap();
        w.insert("::/0", Value::ip_location_db("AU")).unwrap();
        w.insert("0.0.0.0/0", Value::ip_location_db("AU")).unwrap();
        let db = GeoDb::from_bytes(w.build().unwrap(), "all.mmdb").unwrap();
        for special in [
            "0.1.2.3",
            "10.1.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.255.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.9",
            "203.0.113.9",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::fb",
        ] {
            assert_eq!(db.country(ip(special)), None, "{special}");
        }
        for global in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "64:ff9b::808:808",
            "2001:4860::8888",
            "2001:db9::1",
            "2a00:1450::1",
        ] {
            assert_eq!(
                db.country(ip(global)).map(|c| c.iso_code().to_owned()),
                Some("AU".into()),
                "{global}"
            );
        }
    }
}
