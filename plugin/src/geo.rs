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
//! **Caching.** [`GeoCache`] puts a 4-way set-associative table in front of a shared
//! [`GeoDb`], one for IPv4 addresses and one for IPv6 (IPv4-mapped addresses use the IPv4
//! one). Each address hashes (seeded multiply-shift, so a sender cannot aim addresses at one
//! set) to a set of four ways, kept most recently used first; a hit compares the keys up to
//! the first empty way and reads the country from the cache's list of the countries it has
//! seen (a way holds its index, with its state in the index's two top bits); a hit moves its
//! way to the front, and a miss enters in front, the last (least recently used) way leaving.
//! A way takes 6 bytes for IPv4 and 18 for IPv6 (the keys of a set, then their indexes).
//! Each table is bounded by the capacity fixed at construction but allocated as it fills: the
//! IPv4 one starts at 1024 entries, the IPv6 one at the first IPv6 address, and each doubles
//! when three quarters of its ways are in use, so a large
//! `cache_entries` costs memory only as distinct addresses arrive (`1 << 24` entries allocated
//! up front were 670 MB). Misses additionally go through a small memo keyed by the record's
//! data-section offset, so the many addresses that share one country record are decoded, and
//! their country's index in the cache's list found, once (the memo holds the way's `u16`; it
//! held the country, whose index was then found by hashing it: ~340 Ir a miss, most of a
//! miss's cost at 1M destinations).
//! Four ways a set up to 3/4 full lose about as many addresses to a full set as two ways up to
//! 1/2 full did, in half the memory (a Poisson estimate: about 10% for both just before a
//! doubling; 6.4% against 4.6% for 10k addresses, 3.5% against 10% for 1k). Measured in
//! `benches/scale.rs` at 10k destinations: the cache took 26.6 B per tracked destination with
//! 2-way sets of 8-byte slots doubled at half full, 10.2 now.
//! `GeoCache::country` takes `&mut self`: keep one cache per worker thread over an
//! `Arc<GeoDb>`; there is no locking on the hot path.

mod cache;
#[path = "geo/country_names.rs"]
mod country_names;
mod db;
#[cfg(test)]
#[path = "geo/mmdb_writer.rs"]
pub(crate) mod mmdb_writer;
#[cfg(test)]
mod tests;

pub use cache::{CacheStats, GeoCache};
pub use db::GeoDb;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The name [`GeoDb::bundled`] reports as its path.
pub const BUNDLED_NAME: &str = "(bundled) geo-whois-asn-country.mmdb";

/// The bundled database's bytes (see [`GeoDb::bundled`]).
static BUNDLED_DATABASE: &[u8] = include_bytes!("../../data/geo/geo-whois-asn-country.mmdb");

/// Default number of entries in each table (IPv4, IPv6) of a [`GeoCache`].
pub const DEFAULT_CACHE_CAPACITY: usize = 65_536;

/// Upper bound on the entries of each table of a [`GeoCache`]; larger requests are clamped to
/// it.
pub const MAX_CACHE_CAPACITY: usize = 1 << 24;

/// Entries a [`GeoCache`]'s table allocates at first; it doubles when three quarters are in
/// use, up to its capacity.
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
///
/// The code is kept as the `&'static str` it is handed out as: enrichment writes it on every
/// event the GeoIP cache answers, and slicing it out of [`ALL_CODES`] there (index, bounds and
/// character-boundary checks) cost ~30 Ir an event (callgrind `detector` case, #12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Country {
    iso_code: &'static str,
    name: &'static str,
}

impl Country {
    /// The country of a normalised code (two upper-case ASCII letters) and its name.
    fn new(code: [u8; 2], name: &'static str) -> Country {
        let i = 2 * code_index(code);
        Country {
            // Always in range: the index is below 676.
            iso_code: ALL_CODES.get(i..i + 2).unwrap_or(""),
            name,
        }
    }

    /// The country for an ISO code (any case), named from the compiled table, or `None` if the
    /// code is not two ASCII letters or not in the table.
    pub fn from_iso_code(code: &str) -> Option<Country> {
        let iso_code = normalise_code(code)?;
        Some(Country::new(iso_code, table_name(iso_code)?))
    }

    /// The upper-case two-letter ISO code, e.g. `"US"` (ECS `*.geo.country_iso_code`).
    pub fn iso_code(&self) -> &'static str {
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
    let name = NAME_INDEX[code_index(code)];
    (!name.is_empty()).then_some(name)
}

/// The place of a normalised code (two upper-case ASCII letters) among all 676, `AA` first.
fn code_index(code: [u8; 2]) -> usize {
    usize::from(code[0] - b'A') * 26 + usize::from(code[1] - b'A')
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
    Some(Country::new(iso_code, name))
}
