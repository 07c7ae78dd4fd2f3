//! IP address classification for the qualifying filters of network jobs, and CIDR allow-lists.
//!
//! Two questions, both for IPv4 and IPv6:
//!
//! - [`is_private_source`]: is this an internal host of the organisation? RFC 1918 ranges
//!   (10/8, 172.16/12, 192.168/16) and, for IPv6, unique local addresses (fc00::/7). This is the
//!   set Elastic's exfiltration job uses for `source.ip`; IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is
//!   judged by its IPv4 address.
//! - [`is_public_destination`]: could traffic to this address leave the organisation over the
//!   Internet? False for every private, shared (CGNAT 100.64/10), loopback, link-local,
//!   unspecified, "this network" (0/8), reserved (240/4, which includes the limited broadcast
//!   255.255.255.255), documentation, benchmarking (198.18/15), IETF protocol assignment
//!   (192.0.0/24 except the two global anycast addresses), deprecated 6to4 relay (192.88.99/24) and
//!   multicast address. For IPv6 only global unicast (2000::/3) can be public, minus the
//!   documentation ranges (2001:db8::/32, 3fff::/20), the IETF protocol assignments 2001::/23
//!   (except the globally reachable sub-ranges listed by IANA) and 6to4 (2002::/16) or NAT64
//!   (64:ff9b::/96) addresses that embed a non-public IPv4 address; IPv4-mapped addresses are
//!   judged by their IPv4 address.
//!
//! [`CidrSet`] holds user allow-lists (`["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]`); a bare
//! address is a /32 or /128.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use thiserror::Error;

/// A problem found in a CIDR allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid CIDR or IP address at entry {index}: `{entry}`")]
pub struct CidrError {
    /// Zero-based position of the entry in the list.
    pub index: usize,
    /// The entry as given.
    pub entry: String,
}

/// Every problem found in a CIDR list (all entries are checked before reporting).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} invalid entr{} in CIDR list: {}", .0.len(), if .0.len() == 1 { "y" } else { "ies" },
        .0.iter().map(|e| format!("#{} `{}`", e.index, e.entry)).collect::<Vec<_>>().join(", "))]
pub struct CidrListError(pub Vec<CidrError>);

/// Parses an IP address as ECS writes it, tolerating surrounding whitespace, an IPv6 zone
/// (`fe80::1%eth0`) and brackets (`[::1]`). Does not allocate.
///
/// Runs on every event (for `destination.ip` and `source.ip`), so a plain dotted-quad IPv4
/// address, the common case, is read by [`parse_ipv4`] without the general parser (inlined
/// where it is called; the general parser is not).
#[inline(always)]
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    match parse_ipv4(text.as_bytes()) {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => parse_ip_general(text),
    }
}

/// [`parse_ip`] for anything but a plain dotted quad.
#[inline(never)]
fn parse_ip_general(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(t);
    let t = t.split_once('%').map_or(t, |(addr, _zone)| addr);
    t.parse().ok()
}

/// A dotted-quad IPv4 address with nothing around it, as [`Ipv4Addr`]'s parser accepts it
/// (four decimal octets up to 255, no leading zeros); `None` for anything else, which
/// [`parse_ip`] then gives to the general parser.
///
/// Each octet is read as one, two or three digits in straight-line code (no loop per byte):
/// under callgrind about half the instructions of a byte-at-a-time loop. (Copying the text
/// into a padded 16-byte buffer first, to read it without bounds checks, cost more than it
/// saved: the copy is a `memcpy` call.)
#[inline(always)]
fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    if !(7..=15).contains(&text.len()) {
        return None;
    }
    // The digit at `i`, or 10 and more for anything else (the end of the text too).
    let digit = |i: usize| text.get(i).map_or(u8::MAX, |c| c.wrapping_sub(b'0'));
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if text.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let first = digit(i);
        if first > 9 {
            return None;
        }
        let second = digit(i + 1);
        *octet = if second > 9 {
            i += 1;
            first
        } else if first == 0 {
            // A leading zero.
            return None;
        } else {
            let third = digit(i + 2);
            if third > 9 {
                i += 2;
                first * 10 + second
            } else {
                i += 3;
                let value = u16::from(first) * 100 + u16::from(second) * 10 + u16::from(third);
                u8::try_from(value).ok()?
            }
        };
    }
    (i == text.len()).then_some(Ipv4Addr::from(octets))
}

/// True for addresses of an organisation's internal hosts: 10/8, 172.16/12, 192.168/16 and
/// IPv6 unique local fc00::/7. IPv4-mapped IPv6 addresses are judged by their IPv4 address.
pub fn is_private_source(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168)
}

/// True when the address is routable on the public Internet (see the module documentation for
/// every excluded range).
pub fn is_public_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// First octets that begin some non-public IPv4 range (see [`non_public_ranges_v4`]): bit
/// `a % 64` of word `a / 64` for the octet `a`. An address with another first octet is public.
const SPECIAL_FIRST_OCTETS: [u64; 4] = {
    let mut words = [0u64; 4];
    let specials = [0u8, 10, 100, 127, 169, 172, 192, 198, 203];
    let mut i = 0;
    while i < specials.len() {
        let a = specials[i];
        words[(a / 64) as usize] |= 1 << (a % 64);
        i += 1;
    }
    // Multicast 224/4 and reserved 240/4: the last 32 octets.
    words[3] |= 0xffff_ffff << 32;
    words
};

/// IPv4 part of [`is_public_destination`]. Most destinations' first octet begins no
/// non-public range: answered from one bit, inlined where the filter runs (out of line with
/// every range tested it was ~15 Ir an event, callgrind `detector` case, #12).
#[inline]
pub fn is_public_v4(ip: Ipv4Addr) -> bool {
    let a = ip.octets()[0];
    SPECIAL_FIRST_OCTETS[usize::from(a / 64)] & (1 << (a % 64)) == 0 || non_public_ranges_v4(ip)
}

/// [`is_public_v4`] for every address, testing each non-public range.
#[inline(never)]
fn non_public_ranges_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    let non_public = a == 0                               // "this network", 0/8
        || a == 10                                         // private
        || (a == 100 && (64..=127).contains(&b))           // shared address space (CGNAT)
        || a == 127                                        // loopback
        || (a == 169 && b == 254)                          // link-local
        || (a == 172 && (16..=31).contains(&b))            // private
        || (a == 192 && b == 0 && c == 0 && d != 9 && d != 10) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                  // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)                // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168)                          // private
        || (a == 198 && (b == 18 || b == 19))              // benchmarking
        || (a == 198 && b == 51 && c == 100)               // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)                // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !non_public
}

/// IPv6 part of [`is_public_destination`].
pub fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 well-known prefix 64:ff9b::/96: the destination is the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    // Only global unicast 2000::/3 can be public; everything else (::, ::1, ::/96 IPv4-compatible,
    // 100::/64 discard, 5f00::/16 SRv6, 64:ff9b:1::/48 local NAT64, fc00::/7 ULA, fe80::/10
    // link-local, fec0::/10 site-local, ff00::/8 multicast) is reserved or local.
    if (s[0] & 0xe000) != 0x2000 {
        return false;
    }
    match s[0] {
        // 2001::/23 IETF protocol assignments, with IANA's globally reachable exceptions.
        0x2001 if s[1] < 0x0200 => {
            (s[1] == 0x0001 && s[2..7] == [0; 5] && (s[7] == 1 || s[7] == 2)) // 2001:1::1, ::2
                || s[1] == 0x0003 // 2001:3::/32 AMT
                || (s[1] == 0x0004 && s[2] == 0x0112) // 2001:4:112::/48 AS112-v6
                || (0x0020..=0x002f).contains(&s[1]) // 2001:20::/28 ORCHIDv2
                || (0x0030..=0x003f).contains(&s[1]) // 2001:30::/28 drone remote ID
        }
        0x2001 if s[1] == 0x0db8 => false, // documentation
        0x2002 => is_public_v4(embedded_v4(s[1], s[2])), // 6to4
        0x3fff if s[1] < 0x1000 => false,  // documentation 3fff::/20
        _ => true,
    }
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A set of IPv4/IPv6 networks, for allow-lists. Build it with [`parse_cidr_list`] or
/// [`CidrSet::new`]; it deserialises from a list of strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    nets: Vec<IpNet>,
}

impl CidrSet {
    /// A set of the given networks (host bits are cleared).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// True when `ip` is in one of the networks. An IPv4-mapped IPv6 address also matches the
    /// IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
    }

    /// The networks in the set.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// True when the set holds no network.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// Parses a list of CIDR blocks or bare addresses (`"10.0.0.0/8"`, `"2001:db8::1"`). Every entry
/// is checked; all bad ones are reported together.
pub fn parse_cidr_list<I, S>(entries: I) -> Result<CidrSet, CidrListError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let text = entry.as_ref().trim();
        let parsed = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| parse_ip(text).map(IpNet::from));
        match parsed {
            Some(net) => nets.push(net),
            None => errors.push(CidrError {
                index,
                entry: entry.as_ref().to_owned(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(CidrSet::new(nets))
    } else {
        Err(CidrListError(errors))
    }
}

impl TryFrom<Vec<String>> for CidrSet {
    type Error = CidrListError;

    fn try_from(entries: Vec<String>) -> Result<Self, Self::Error> {
        parse_cidr_list(entries)
    }
}

impl<'de> serde::Deserialize<'de> for CidrSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        parse_cidr_list(entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn public(s: &str) -> bool {
        is_public_destination(ip(s))
    }

    #[test]
    fn private_sources_v4() {
        for s in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
        ] {
            assert!(is_private_source(ip(s)), "{s}");
        }
        for s in [
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "8.8.8.8",
            "127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_private_source(ip(s)), "{s}");
        }
    }

    #[test]
    fn private_sources_v6() {
        assert!(is_private_source(ip("fc00::1")));
        assert!(is_private_source(ip("fd12:3456::1")));
        assert!(is_private_source(ip("::ffff:10.1.2.3")));
        assert!(!is_private_source(ip("fe80::1")));
        assert!(!is_private_source(ip("2606:4700::1111")));
        assert!(!is_private_source(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn public_v4() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.114.1",
            "223.255.255.255",
        ] {
            assert!(public(s), "{s} should be public");
        }
    }

    #[test]
    fn non_public_v4_ranges() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network 0/8"),
            ("10.1.2.3", "private 10/8"),
            ("100.64.0.1", "CGNAT start"),
            ("100.127.255.255", "CGNAT end"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private 172.16/12"),
            ("172.31.255.255", "private 172.16/12 end"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.0.1", "private 192.168/16"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking end"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.7", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast SSDP"),
            ("240.0.0.1", "reserved 240/4"),
            ("255.255.255.255", "broadcast"),
        ];
        for (s, why) in cases {
            assert!(!public(s), "{s} ({why}) should not be public");
        }
    }

    #[test]
    fn public_v6() {
        for s in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860:4860::8888",
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "3fff:1000::1",
        ] {
            assert!(public(s), "{s} should be public");
        }
    }

    #[test]
    fn non_public_v6_ranges() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:192.168.1.1", "IPv4-mapped private"),
            ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("::192.168.1.1", "IPv4-compatible (deprecated)"),
            ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo / IETF protocol assignments"),
            ("2001:2::1", "benchmarking"),
            ("2001:1::3", "IETF protocol assignments"),
            ("2001:db8::1", "documentation"),
            ("2002:c0a8:101::1", "6to4 of 192.168.1.1"),
            ("2002:a00:1::1", "6to4 of 10.0.0.1"),
            ("3fff::1", "documentation 3fff::/20"),
            ("5f00::1", "SRv6 SIDs"),
            ("fc00::1", "ULA"),
            ("fd00::1", "ULA"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "global multicast"),
        ];
        for (s, why) in cases {
            assert!(!public(s), "{s} ({why}) should not be public");
        }
    }

    #[test]
    fn the_ipv4_fast_path_agrees_with_the_standard_parser() {
        for text in [
            "1.2.3.4",
            "10.10.0.5",
            "255.255.255.255",
            "0.0.0.0",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "1.2.3.4 ",
            "1.2.3.",
            ".1.2.3",
            "1234.1.1.1",
            "1.2.3.4a",
            "a.b.c.d",
            "999.999.999.999",
            "::ffff:1.2.3.4",
            "",
        ] {
            let standard = text.parse::<Ipv4Addr>().ok();
            let fast = parse_ipv4(text.as_bytes());
            // The fast path may decline (the general parser then decides) but never disagree.
            assert!(fast.is_none() || fast == standard, "{text}");
            assert_eq!(fast.is_some(), standard.is_some(), "{text}");
        }
        // And on every short text of digits and dots, and random longer ones.
        let alphabet = b"0123456789.";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..300_000u64 {
            let mut text = Vec::new();
            if i < 11 * 11 * 11 * 11 {
                let mut n = i;
                while n > 0 {
                    text.push(alphabet[(n % 11) as usize]);
                    n /= 11;
                }
            } else {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let len = 7 + (seed >> 60) as usize;
                for k in 0..len {
                    let pick = (seed >> (4 * (k % 14))) as usize;
                    text.push(match pick % 16 {
                        11..=13 => b'.',
                        14 => b"0a /:"[(pick >> 4) % 5],
                        d => alphabet[d % 10],
                    });
                }
            }
            let text = String::from_utf8(text).unwrap();
            let standard = text.parse::<Ipv4Addr>().ok();
            assert_eq!(parse_ipv4(text.as_bytes()), standard, "{text}");
        }
    }

    /// The first-octet bit answers as testing every range does: for every first and second
    /// octet, with third and fourth octets each range looks at.
    #[test]
    fn the_first_octet_shortcut_agrees_with_every_range() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for c in [0u8, 2, 99, 100, 113, 255] {
                    for d in [0u8, 1, 9, 10, 255] {
                        let ip = Ipv4Addr::new(a, b, c, d);
                        assert_eq!(is_public_v4(ip), non_public_ranges_v4(ip), "{ip}");
                    }
                }
            }
        }
    }

    #[test]
    fn parse_ip_tolerates_ecs_spellings() {
        assert_eq!(parse_ip(" 10.0.0.1 "), Some(ip("10.0.0.1")));
        assert_eq!(parse_ip("fe80::1%eth0"), Some(ip("fe80::1")));
        assert_eq!(parse_ip("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_ip("example.com"), None);
        assert_eq!(parse_ip(""), None);
    }

    #[test]
    fn cidr_list_parses_and_matches() {
        let set = parse_cidr_list([
            "10.0.0.0/8",
            " 2001:db8::/32 ",
            "192.0.2.7",
            "172.16.5.9/16",
        ])
        .unwrap();
        assert_eq!(set.nets().len(), 4);
        assert!(set.contains(ip("10.200.0.1")));
        assert!(set.contains(ip("2001:db8:1::5")));
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("172.16.200.1")), "host bits are cleared");
        assert!(
            set.contains(ip("::ffff:10.1.1.1")),
            "mapped v6 matches v4 nets"
        );
        assert!(!set.contains(ip("11.0.0.1")));
        assert!(!CidrSet::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn cidr_list_reports_every_bad_entry() {
        let err = parse_cidr_list(["10.0.0.0/8", "10.0.0.0/33", "nope", ""]).unwrap_err();
        let idx: Vec<usize> = err.0.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn cidr_set_deserialises_from_strings() {
        let set: CidrSet = serde_json::from_str(r#"["10.0.0.0/8","::1"]"#).unwrap();
        assert!(set.contains(ip("::1")));
        let bad = serde_json::from_str::<CidrSet>(r#"["10.0.0.0/8","x"]"#);
        assert!(bad.is_err());
    }
}
