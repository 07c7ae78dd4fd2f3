//! The world's countries: ISO code, English name as Elastic writes it, share of benign web
//! traffic, and IPv4 prefixes the bundled GeoIP database places in each.

/// A country: ISO code, English name as Elastic writes it, share of benign web traffic, and
/// IPv4 prefixes that the bundled GeoIP database places in it.
pub(super) struct Country {
    pub(super) iso: &'static str,
    pub(super) name: &'static str,
    pub(super) weight: f64,
    pub(super) prefixes: &'static [(u32, u8)],
}

/// Builds a prefix from dotted octets.
pub(super) const fn p(a: u32, b: u32, c: u32, d: u32, len: u8) -> (u32, u8) {
    ((a << 24) | (b << 16) | (c << 8) | d, len)
}

/// All countries; the first [`BENIGN_COUNTRIES`] carry benign web traffic.
pub(super) const COUNTRIES: &[Country] = &[
    Country {
        iso: "US",
        name: "United States",
        weight: 38.0,
        prefixes: &[
            p(142, 250, 0, 0, 16),
            p(172, 217, 0, 0, 16),
            p(104, 16, 0, 0, 16),
            p(151, 101, 0, 0, 16),
            p(13, 107, 0, 0, 16),
            p(157, 240, 0, 0, 17),
            p(140, 82, 112, 0, 20),
            p(23, 32, 0, 0, 16),
            p(199, 232, 0, 0, 16),
        ],
    },
    Country {
        iso: "IE",
        name: "Ireland",
        weight: 9.0,
        prefixes: &[
            p(87, 32, 0, 0, 12),
            p(86, 40, 0, 0, 14),
            p(193, 1, 0, 0, 16),
            p(89, 100, 0, 0, 16),
        ],
    },
    Country {
        iso: "DE",
        name: "Germany",
        weight: 8.0,
        prefixes: &[
            p(85, 214, 0, 0, 16),
            p(46, 4, 0, 0, 16),
            p(217, 0, 0, 0, 16),
            p(80, 150, 0, 0, 16),
            p(193, 99, 144, 0, 24),
        ],
    },
    Country {
        iso: "NL",
        name: "Netherlands",
        weight: 7.0,
        prefixes: &[
            p(145, 100, 0, 0, 16),
            p(77, 160, 0, 0, 16),
            p(185, 107, 56, 0, 22),
            p(82, 94, 0, 0, 16),
        ],
    },
    Country {
        iso: "GB",
        name: "United Kingdom",
        weight: 7.0,
        prefixes: &[
            p(86, 128, 0, 0, 16),
            p(212, 58, 224, 0, 19),
            p(81, 2, 64, 0, 18),
            p(151, 224, 0, 0, 16),
        ],
    },
    Country {
        iso: "FR",
        name: "France",
        weight: 4.0,
        prefixes: &[
            p(90, 0, 0, 0, 16),
            p(163, 172, 0, 0, 16),
            p(51, 15, 0, 0, 16),
            p(212, 27, 32, 0, 19),
        ],
    },
    Country {
        iso: "SE",
        name: "Sweden",
        weight: 2.0,
        prefixes: &[p(130, 237, 0, 0, 16), p(81, 224, 0, 0, 16)],
    },
    Country {
        iso: "CH",
        name: "Switzerland",
        weight: 2.0,
        prefixes: &[p(85, 0, 0, 0, 16)],
    },
    Country {
        iso: "CA",
        name: "Canada",
        weight: 2.0,
        prefixes: &[p(206, 47, 0, 0, 16)],
    },
    Country {
        iso: "JP",
        name: "Japan",
        weight: 2.0,
        prefixes: &[
            p(133, 11, 0, 0, 16),
            p(210, 130, 0, 0, 16),
            p(126, 0, 0, 0, 16),
        ],
    },
    Country {
        iso: "AU",
        name: "Australia",
        weight: 1.2,
        prefixes: &[p(1, 120, 0, 0, 16), p(139, 130, 0, 0, 16)],
    },
    Country {
        iso: "IN",
        name: "India",
        weight: 1.2,
        prefixes: &[p(14, 139, 0, 0, 16), p(117, 192, 0, 0, 16)],
    },
    Country {
        iso: "ES",
        name: "Spain",
        weight: 1.2,
        prefixes: &[p(80, 58, 0, 0, 16), p(88, 0, 0, 0, 16)],
    },
    Country {
        iso: "IT",
        name: "Italy",
        weight: 1.2,
        prefixes: &[p(79, 0, 0, 0, 16)],
    },
    Country {
        iso: "BR",
        name: "Brazil",
        weight: 1.0,
        prefixes: &[p(200, 147, 0, 0, 16)],
    },
    Country {
        iso: "DK",
        name: "Denmark",
        weight: 0.8,
        prefixes: &[p(80, 160, 0, 0, 16)],
    },
    Country {
        iso: "NO",
        name: "Norway",
        weight: 0.8,
        prefixes: &[p(84, 208, 0, 0, 16)],
    },
    Country {
        iso: "BE",
        name: "Belgium",
        weight: 0.8,
        prefixes: &[p(81, 240, 0, 0, 16)],
    },
    Country {
        iso: "AT",
        name: "Austria",
        weight: 0.8,
        prefixes: &[p(80, 120, 0, 0, 16)],
    },
    Country {
        iso: "KR",
        name: "South Korea",
        weight: 0.8,
        prefixes: &[p(211, 234, 0, 0, 16)],
    },
    Country {
        iso: "IL",
        name: "Israel",
        weight: 0.6,
        prefixes: &[p(132, 64, 0, 0, 16)],
    },
    // Special-purpose countries and ranges below; no benign web traffic.
    Country {
        iso: "FI",
        name: "Finland",
        weight: 0.0,
        prefixes: &[p(88, 192, 0, 0, 16)],
    },
    Country {
        iso: "PL",
        name: "Poland",
        weight: 0.0,
        prefixes: &[p(83, 0, 0, 0, 16)],
    },
    Country {
        iso: "MX",
        name: "Mexico",
        weight: 0.0,
        prefixes: &[p(201, 144, 0, 0, 16)],
    },
    Country {
        iso: "KP",
        name: "North Korea",
        weight: 0.0,
        prefixes: &[p(175, 45, 176, 0, 22)],
    },
    // US ranges reserved for DNS, backup and the upload attack.
    Country {
        iso: "US",
        name: "United States",
        weight: 0.0,
        prefixes: &[
            p(8, 8, 8, 8, 32),
            p(8, 8, 4, 4, 32),
            p(52, 216, 0, 0, 15),
            p(45, 33, 0, 0, 17),
        ],
    },
    // A German hosting range reserved for the slow exfiltration.
    Country {
        iso: "DE",
        name: "Germany",
        weight: 0.0,
        prefixes: &[p(78, 46, 0, 0, 15)],
    },
];
pub(super) const BENIGN_COUNTRIES: usize = 21;
pub(super) const C_FI: usize = 21;
pub(super) const C_PL: usize = 22;
pub(super) const C_MX: usize = 23;
pub(super) const C_KP: usize = 24;
pub(super) const C_US_RESERVED: usize = 25;
pub(super) const C_DE_RESERVED: usize = 26;
