//! A minimal MaxMind DB (`.mmdb`) *writer*, so tests can build small databases on the fly
//! instead of depending on the vintage of a shipped data file.
//!
//! The format (MaxMind DB spec, version 2.0) is three sections laid end to end:
//!
//! 1. **Search tree.** A binary trie over the address bits, `node_count` nodes, each holding
//!    two records (left = bit 0, right = bit 1) of `record_size` bits (24, 28 or 32). A record
//!    value `< node_count` points to another node, `== node_count` means "no data", and
//!    `> node_count` points into the data section at `value - node_count - 16`.
//!    For 28-bit records the middle byte carries the high nibbles of both records.
//! 2. **Data section separator** (16 zero bytes) followed by the **data section**: values in
//!    the MaxMind type-length-value encoding (a control byte with the type in its top three
//!    bits and the size in its low five; extended types put `type - 7` in the next byte; sizes
//!    of 29 and more spill into one to three further bytes).
//! 3. **Metadata**: the marker `\xAB\xCD\xEFMaxMind.com` followed by one encoded map
//!    (`node_count`, `record_size`, `ip_version`, `database_type`, `languages`,
//!    `binary_format_major_version`, `binary_format_minor_version`, `build_epoch`,
//!    `description`).
//!
//! Like MaxMind's own databases, an `ip_version = 6` tree stores IPv4 networks in the
//! `::/96` subtree (`a.b.c.d/p` lives at `::a.b.c.d/(96+p)`). No `::ffff:0:0/96` alias is
//! written; [`super::GeoDb`] canonicalises IPv4-mapped addresses before looking them up.
//!
//! Scope: enough for tests. Inserts are applied shortest prefix first, so a more specific
//! network always wins over the network that contains it, whatever order the caller used.
//! Identical records are stored once. No pointer compression inside records.

use std::collections::HashMap;
use std::net::IpAddr;

/// Errors from building a test database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriterError {
    /// The network text is not `address/prefix` with a prefix that fits the address family.
    #[error("bad network {0:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32")]
    BadNetwork(String),
    /// An IPv6 network was inserted into an IPv4-only (`ip_version = 4`) tree.
    #[error("IPv6 network {0} cannot go into an ip_version 4 database")]
    V6InV4Tree(String),
    /// Record size other than 24, 28 or 32 bits, or IP version other than 4 or 6.
    #[error("unsupported layout: record_size {record_size}, ip_version {ip_version}")]
    BadLayout {
        /// Requested record size in bits.
        record_size: u16,
        /// Requested IP version.
        ip_version: u16,
    },
    /// The tree or data section needs record values beyond what `record_size` can hold.
    #[error("database too large for {0}-bit records")]
    TooLarge(u16),
}

/// A value in the MaxMind DB data section (the subset tests need).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// UTF-8 string (type 2).
    Str(String),
    /// IEEE-754 double (type 3).
    Double(f64),
    /// Unsigned 16-bit integer (type 5).
    U16(u16),
    /// Unsigned 32-bit integer (type 6).
    U32(u32),
    /// Map with string keys (type 7); key order is kept.
    Map(Vec<(String, Value)>),
    /// Unsigned 64-bit integer (extended type 9).
    U64(u64),
    /// Array (extended type 11).
    Array(Vec<Value>),
    /// Boolean (extended type 14).
    Bool(bool),
}

impl Value {
    /// A map value from `(key, value)` pairs.
    pub(crate) fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A string value.
    pub(crate) fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// An ip-location-db record: `{"country_code": code}`.
    pub(crate) fn ip_location_db(code: &str) -> Value {
        Value::map([("country_code", Value::str(code))])
    }

    /// A GeoLite2-Country-like record:
    /// `{"continent": {...}, "country": {"geoname_id", "iso_code", "names": {"de", "en"}},
    ///   "registered_country": {same}}` (extra keys to make sure readers skip them).
    pub(crate) fn geolite2_country(code: &str, english_name: &str) -> Value {
        let country = || {
            Value::map([
                ("geoname_id", Value::U32(6_252_001)),
                ("iso_code", Value::str(code)),
                (
                    "names",
                    Value::map([
                        ("de", Value::str(format!("{english_name} (de)"))),
                        ("en", Value::str(english_name)),
                    ]),
                ),
            ])
        };
        Value::map([
            (
                "continent",
                Value::map([
                    ("code", Value::str("XX")),
                    ("geoname_id", Value::U32(1)),
                    ("names", Value::map([("en", Value::str("Somewhere"))])),
                ]),
            ),
            ("country", country()),
            ("registered_country", country()),
        ])
    }
}

/// Builds an in-memory `.mmdb` image from `(network, record)` pairs.
#[derive(Debug)]
pub(crate) struct MmdbWriter {
    database_type: String,
    record_size: u16,
    ip_version: u16,
    build_epoch: u64,
    /// `(address bits left-aligned in the tree's address width, prefix length, record)`.
    entries: Vec<(u128, u8, Value)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Child {
    Empty,
    Node(u32),
    Data(u32),
}

impl MmdbWriter {
    /// A writer for a tree of `ip_version` 4 or 6 with `record_size` 24, 28 or 32 bits.
    pub(crate) fn new(
        database_type: &str,
        ip_version: u16,
        record_size: u16,
    ) -> Result<MmdbWriter, WriterError> {
        if !matches!(record_size, 24 | 28 | 32) || !matches!(ip_version, 4 | 6) {
            return Err(WriterError::BadLayout {
                record_size,
                ip_version,
            });
        }
        Ok(MmdbWriter {
            database_type: database_type.to_owned(),
            record_size,
            ip_version,
            build_epoch: 1_700_000_000,
            entries: Vec::new(),
        })
    }

    /// Adds `network` (`"1.2.3.0/24"`, `"2001:db8::/32"`) with its record.
    pub(crate) fn insert(&mut self, network: &str, value: Value) -> Result<(), WriterError> {
        let bad = || WriterError::BadNetwork(network.to_owned());
        let (addr, prefix) = network.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let (bits, depth) = match (addr, self.ip_version) {
            (IpAddr::V4(a), 6) if prefix <= 32 => (u128::from(u32::from(a)), 96 + prefix),
            (IpAddr::V4(a), _) if prefix <= 32 => (u128::from(u32::from(a)) << 96, prefix),
            (IpAddr::V6(_), 4) => return Err(WriterError::V6InV4Tree(network.to_owned())),
            (IpAddr::V6(a), _) if prefix <= 128 => (u128::from(a), prefix),
            _ => return Err(bad()),
        };
        self.entries.push((bits, depth, value));
        Ok(())
    }

    /// Serialises the database.
    pub(crate) fn build(&self) -> Result<Vec<u8>, WriterError> {
        // Data section: one encoding per distinct record.
        let mut data = Vec::new();
        let mut offset_of: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut entry_offsets = Vec::with_capacity(self.entries.len());
        for (_, _, value) in &self.entries {
            let mut enc = Vec::new();
            encode(&mut enc, value);
            let offset = match offset_of.get(&enc) {
                Some(&o) => o,
                None => {
                    let o = u32::try_from(data.len()).map_err(|_| self.too_large())?;
                    data.extend_from_slice(&enc);
                    offset_of.insert(enc, o);
                    o
                }
            };
            entry_offsets.push(offset);
        }

        // Search tree: shortest prefixes first so more specific networks split them.
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| self.entries[i].1);
        let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty, Child::Empty]];
        for i in order {
            let (bits, depth, _) = &self.entries[i];
            let data = Child::Data(entry_offsets[i]);
            if *depth == 0 {
                // The whole address space: both halves of the root.
                for half in 0..2 {
                    insert(&mut nodes, u128::from(half as u8) << 127, 1, data);
                }
            } else {
                insert(&mut nodes, *bits, *depth, data);
            }
        }

        let node_count = u32::try_from(nodes.len()).map_err(|_| self.too_large())?;
        let max_record = (1u64 << self.record_size) - 1;
        let resolve = |c: Child| -> Result<u32, WriterError> {
            let v = match c {
                Child::Empty => u64::from(node_count),
                Child::Node(n) => u64::from(n),
                Child::Data(off) => u64::from(node_count) + 16 + u64::from(off),
            };
            if v > max_record {
                return Err(self.too_large());
            }
            u32::try_from(v).map_err(|_| self.too_large())
        };

        let mut out = Vec::with_capacity(nodes.len() * 8 + data.len() + 256);
        for [l, r] in &nodes {
            let (l, r) = (resolve(*l)?, resolve(*r)?);
            let (lb, rb) = (l.to_be_bytes(), r.to_be_bytes());
            match self.record_size {
                24 => {
                    out.extend_from_slice(&lb[1..]);
                    out.extend_from_slice(&rb[1..]);
                }
                28 => {
                    out.extend_from_slice(&lb[1..]);
                    out.push(((lb[0] & 0x0F) << 4) | (rb[0] & 0x0F));
                    out.extend_from_slice(&rb[1..]);
                }
                _ => {
                    out.extend_from_slice(&lb);
                    out.extend_from_slice(&rb);
                }
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let metadata = Value::map([
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            ("database_type", Value::str(self.database_type.clone())),
            (
                "description",
                Value::map([("en", Value::str("egresswatch test database"))]),
            ),
            ("ip_version", Value::U16(self.ip_version)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(self.record_size)),
        ]);
        encode(&mut out, &metadata);
        Ok(out)
    }

    fn too_large(&self) -> WriterError {
        WriterError::TooLarge(self.record_size)
    }
}

/// Walks/creates the path for the top `depth` bits of `bits` and stores `data` at its end.
fn insert(nodes: &mut Vec<[Child; 2]>, bits: u128, depth: u8, data: Child) {
    let mut node = 0usize;
    for i in 0..depth {
        let bit = ((bits >> (127 - u32::from(i))) & 1) as usize;
        if i + 1 == depth {
            nodes[node][bit] = data;
            return;
        }
        node = match nodes[node][bit] {
            Child::Node(n) => n as usize,
            // Empty, or a shorter network being split: both halves inherit it.
            fill => {
                nodes.push([fill, fill]);
                let n = nodes.len() - 1;
                nodes[node][bit] = Child::Node(n as u32);
                n
            }
        };
    }
}

/// Appends the control byte(s) for a value of `type_num` and `size`.
fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

/// Big-endian bytes of `v` without leading zeros (zero encodes as no bytes).
fn minimal_be(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

fn encode(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Double(d) => {
            control(out, 3, 8);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::U16(v) => uint(out, 5, u64::from(*v)),
        Value::U32(v) => uint(out, 6, u64::from(*v)),
        Value::U64(v) => uint(out, 9, *v),
        Value::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(out, &Value::Str(k.clone()));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
        Value::Bool(b) => control(out, 14, usize::from(*b)),
    }
}

fn uint(out: &mut Vec<u8>, type_num: u8, v: u64) {
    let bytes = minimal_be(v);
    control(out, type_num, bytes.len());
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_byte_sizes() {
        let mut out = Vec::new();
        control(&mut out, 2, 3);
        assert_eq!(out, [0x43]);
        out.clear();
        control(&mut out, 2, 100);
        assert_eq!(out, [0x5D, 71]);
        out.clear();
        control(&mut out, 11, 2);
        assert_eq!(out, [0x02, 4]);
        out.clear();
        control(&mut out, 2, 300);
        assert_eq!(out, [0x5E, 0, 15]);
    }

    #[test]
    fn minimal_uints() {
        assert_eq!(minimal_be(0), Vec::<u8>::new());
        assert_eq!(minimal_be(0x1234), vec![0x12, 0x34]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(MmdbWriter::new("x", 6, 20).is_err());
        let mut w = MmdbWriter::new("x", 4, 24).unwrap();
        assert!(w.insert("1.2.3.4", Value::Bool(true)).is_err());
        assert!(w.insert("1.2.3.0/33", Value::Bool(true)).is_err());
        assert!(w.insert("2001:db8::/32", Value::Bool(true)).is_err());
    }

    #[test]
    fn every_record_size_verifies_and_reads_back() {
        for record_size in [24u16, 28, 32] {
            for ip_version in [4u16, 6] {
                let mut w = MmdbWriter::new("Test", ip_version, record_size).unwrap();
                w.insert("0.0.0.0/0", Value::map([("v", Value::U32(1))]))
                    .unwrap();
                w.insert("10.0.0.0/8", Value::map([("v", Value::U64(u64::MAX))]))
                    .unwrap();
                w.insert("10.1.0.0/16", Value::map([("v", Value::Bool(true))]))
                    .unwrap();
                let long = "x".repeat(70_000);
                w.insert(
                    "192.0.2.0/24",
                    Value::map([("v", Value::str(long.clone()))]),
                )
                .unwrap();
                if ip_version == 6 {
                    w.insert("2001:db8::/32", Value::map([("v", Value::Double(1.5))]))
                        .unwrap();
                }
                let reader = maxminddb::Reader::from_source(w.build().unwrap()).unwrap();
                reader.verify().unwrap();
                assert_eq!(reader.metadata().record_size, record_size);
                assert_eq!(reader.metadata().ip_version, ip_version);
                let get = |ip: &str| -> Option<String> {
                    let r = reader.lookup(ip.parse().unwrap()).unwrap();
                    r.decode::<std::collections::BTreeMap<String, serde_json_like::Any>>()
                        .unwrap()
                        .map(|m| m["v"].0.clone())
                };
                assert_eq!(get("8.8.8.8").as_deref(), Some("1"));
                assert_eq!(get("10.9.9.9").as_deref(), Some("18446744073709551615"));
                assert_eq!(get("10.1.2.3").as_deref(), Some("true"));
                assert_eq!(get("192.0.2.7").map(|s| s.len()), Some(long.len()));
                if ip_version == 6 {
                    assert_eq!(get("2001:db8::1").as_deref(), Some("1.5"));
                    assert_eq!(get("2001:db9::1"), None);
                }
            }
        }
    }

    /// A tiny "any scalar as text" deserialisation target, to avoid a serde_json dev-dependency.
    mod serde_json_like {
        use serde::de::{self, Deserializer, Visitor};
        use std::fmt;

        pub(super) struct Any(pub(super) String);

        impl<'de> serde::Deserialize<'de> for Any {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Any, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Any;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a scalar")
                    }
                    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Any, E> {
                        Ok(Any(v.to_string()))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Any, E> {
                        Ok(Any(v.to_string()))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Any, E> {
                        Ok(Any(v.to_string()))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Any, E> {
                        Ok(Any(v.to_owned()))
                    }
                }
                d.deserialize_any(V)
            }
        }
    }
}
