//! [`GeoDb`]: the MaxMind DB read into memory, and one address's country from its record.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use egresswatch_plugin_api::files;
use egresswatch_plugin_api::files::FileError;
use serde::Deserialize;

use super::{
    make_country, Country, GeoError, BUNDLED_DATABASE, BUNDLED_NAME, MAX_DATABASE_BYTES,
    MEMO_CAPACITY,
};

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
        self.resolve::<_, RandomState>(ip, None, |country| country)
            .flatten()
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

    /// Looks `ip` up: what `value` makes of its record's country, `None` without a record. With
    /// a `memo` (record offset -> value), consulted and filled, a record shared by many
    /// addresses is decoded and given to `value` once.
    pub(super) fn resolve<V: Copy, S: BuildHasher>(
        &self,
        ip: IpAddr,
        memo: Option<&mut HashMap<usize, V, S>>,
        value: impl FnOnce(Option<Country>) -> V,
    ) -> Option<V> {
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
            None => Some(value(decode())),
            Some(memo) => {
                if let Some(&known) = memo.get(&offset) {
                    return Some(known);
                }
                let made = value(decode());
                if memo.len() >= MEMO_CAPACITY {
                    memo.clear();
                }
                memo.insert(offset, made);
                Some(made)
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
