//! A seeded generator of realistic ECS network traffic with labelled, injected attacks, for
//! measuring the detector's precision and recall (design section 8) without real customer data.
//!
//! # Output
//!
//! One ECS JSON object per line (nested objects, never dotted keys), in `@timestamp` order,
//! written hour by hour: each hour's events are generated, stably sorted by time and written, so
//! memory stays flat however long the run. Every event is an outbound connection-end record:
//!
//! ```text
//! @timestamp, event.{kind, category, type, dataset}, source.{ip, port, bytes},
//! destination.{ip, port, bytes[, geo.{country_name, country_iso_code}]},
//! network.{transport, direction}, host.name, process.name
//! ```
//!
//! `destination.geo` is written only with `--with-geo`; by default the detector's own GeoIP
//! enrichment fills it. Every destination address is taken from a range that the bundled
//! `geo-whois-asn-country` database places in the country the generator intends, so both routes
//! give the same country.
//!
//! # Traffic model
//!
//! - **Hosts.** `--hosts` Windows workstations `ws-0001`, … at 10.20.x.y, each with a log-normal
//!   activity factor (mean 1), plus one server, `backup-01` (10.10.0.5).
//! - **Diurnal cycle.** Each workstation opens Poisson(`rate` × diurnal weight × activity)
//!   connections per hour, `rate` being `--events-per-host-per-hour`. Weights are for UTC
//!   office hours: heavy 09:00-17:00, light at night, weekends at 30 % of weekdays; they average
//!   1 over a week, so `rate` is the weekly mean.
//! - **Destinations.** About 300 public addresses in 21 countries. A country is chosen by
//!   weight (US 38 %, IE 9 %, DE 8 %, NL and GB 7 %, FR 4 %, then a tail down to 0.6 %), then an
//!   address within it by a Zipf law (s = 1.1), so a few addresses get most of the traffic.
//!   About 4 % of connections are DNS to 8.8.8.8/8.8.4.4 (UDP 53); the rest go to ports 443,
//!   80, 993 or 22 according to the destination.
//! - **Bytes.** Log-normal: sent ≈ 1.2 kB median (2 % of connections are uploads of ≈ 400 kB),
//!   received ≈ 25 kB median, from about a hundred bytes to tens of MB.
//! - **Backup.** `backup-01` (`restic`) sends 1-3 GB to one cloud-storage address (US) in every
//!   epoch-aligned 3 h bucket, day and night, over 60-160 connections: a destination that always
//!   receives gigabytes and must not be flagged.
//! - **Shipping agents.** About 3 % of connections come from `elastic-agent.exe` or
//!   `filebeat.exe` and go to a log cluster in Finland, a country nothing else reaches. The
//!   detector must ignore them; if it does not, Finland shows up as a rare country.
//! - **Business partners.** Two partners, in Poland and Mexico, appear for the first time at
//!   about 25 % and 50 % of the run (on a working day at 10:00-14:00 UTC) and then recur every
//!   day (2 + Poisson(4) connections on weekdays, 2 + Poisson(1) on weekends, 08:00-18:00) from
//!   two or three fixed workstations. Their countries are new when they appear and become
//!   routine afterwards. They are benign and unlabelled.
//!
//! # Injected attacks (labelled)
//!
//! - `c2`: one workstation (`rundll32.exe`) beacons to an address in North Korea
//!   (175.45.176.0/22) every 5-15 minutes (period drawn once, ±20 % jitter per beacon) with a
//!   few hundred bytes each way, from about half-way through the run (after day 2 of the
//!   default 4 days) to its end. No benign traffic ever reaches North Korea.
//! - `upload`: one workstation (`rclone.exe`) sends 2-5 GB (decimal) in 40-100 connections to a
//!   never-seen US address, all inside one epoch-aligned 3 h bucket at about 70 % of the run.
//! - `slow_exfil`: one workstation (`powershell.exe`) sends 150-300 MB per 3 h bucket to one
//!   never-seen address in Germany, in 15-22 connections per bucket, for eight consecutive
//!   buckets (a day) from about 70 % of the run, or until the run ends.
//!
//! `--scenario` picks what is injected: `default` all three attacks, `c2`, `upload` or
//! `slow-exfil` one of them, `partner` none (business partners only) and `quiet` neither attacks
//! nor partners. The benign traffic does not depend on the scenario: removing the labelled lines
//! from any attack scenario's output gives exactly the `partner` output for the same seed and
//! options.
//!
//! Labels are NDJSON, one line per attack event:
//! `{"line": <1-based output line>, "@timestamp": "...", "attack": "c2"|"upload"|"slow_exfil",
//! "destination.ip": "..."}`. The events themselves carry no label.
//!
//! Everything is a pure function of the options: randomness comes from a built-in xoshiro256**
//! generator seeded through splitmix64 from `--seed`, with independent streams per hour, per
//! 3 h bucket, per day and per attack.

use std::io::{self, Write};
use std::path::PathBuf;

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day.
const DAY_MS: i64 = 24 * HOUR_MS;
/// The high-sum jobs' bucket span: 3 hours, aligned to the Unix epoch.
const BUCKET_MS: i64 = 3 * HOUR_MS;
/// The share of connections sent by log shipping agents, per host and hour, as a fraction of
/// the workstation rate.
const AGENT_SHARE: f64 = 0.03;
/// Approximate number of destinations in the benign catalog.
const CATALOG_SIZE: f64 = 300.0;

/// Which attacks to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// All three attacks (c2, upload, slow exfiltration), and the business partners.
    #[default]
    Default,
    /// Only the C2 beacon (and the business partners).
    C2,
    /// Only the bulk upload (and the business partners).
    Upload,
    /// Only the slow exfiltration (and the business partners).
    SlowExfil,
    /// No attack; the business partners appear in new countries and become routine.
    Partner,
    /// Neither attacks nor new partners: steady benign traffic only.
    Quiet,
}

impl Scenario {
    fn injects(self, kind: AttackKind) -> bool {
        match self {
            Scenario::Default => true,
            Scenario::C2 => kind == AttackKind::C2,
            Scenario::Upload => kind == AttackKind::Upload,
            Scenario::SlowExfil => kind == AttackKind::SlowExfil,
            Scenario::Partner | Scenario::Quiet => false,
        }
    }

    fn partners(self) -> bool {
        self != Scenario::Quiet
    }
}

/// Options of `egresswatch generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Number of workstations (a backup server is added).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) hosts: u32,
    /// Length of the run in days.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) days: u32,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Start of the run (RFC 3339).
    #[arg(long, default_value = "2026-11-01T00:00:00Z", value_parser = check_start)]
    pub(crate) start: String,
    /// Mean connections per workstation per hour, averaged over a week.
    #[arg(long, default_value_t = 6.0)]
    pub(crate) events_per_host_per_hour: f64,
    /// Which attacks to inject.
    #[arg(long, value_enum, default_value_t = Scenario::Default)]
    pub(crate) scenario: Scenario,
    /// Write the labels (NDJSON, one line per attack event) to this file.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Write `destination.geo.country_name` and `destination.geo.country_iso_code`.
    #[arg(long)]
    pub(crate) with_geo: bool,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        GenerateArgs {
            hosts: 50,
            days: 4,
            seed: 1,
            start: "2026-11-01T00:00:00Z".to_owned(),
            events_per_host_per_hour: 6.0,
            scenario: Scenario::Default,
            labels: None,
            with_geo: false,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Events (lines) written.
    pub events: u64,
    /// For each injected attack kind (`c2`, `upload`, `slow_exfil`, in that order), the number
    /// of its events; zero when the run was too short to fit it.
    pub attacks: Vec<(String, u64)>,
}

/// Clap value parser for `--start`: accepts RFC 3339 and keeps the text.
fn check_start(s: &str) -> Result<String, String> {
    parse_rfc3339(s).map(|_| s.to_owned())
}

/// Writes the events for `args` to `out` and, when given, the labels to `labels`.
///
/// `args.labels` is not opened here: the caller opens it and passes the writer. Output is
/// written one hour at a time; both writers are flushed at the end.
///
/// # Errors
///
/// `InvalidInput` for options out of range (no hosts, no days, a bad `start`, a negative or
/// non-finite rate); otherwise whatever the writers return.
pub fn generate(
    args: &GenerateArgs,
    out: &mut dyn Write,
    mut labels: Option<&mut dyn Write>,
) -> io::Result<GenerateSummary> {
    let cfg = Config::new(args)?;
    let world = World::new(&cfg);
    let plan = plan_attacks(&cfg);

    let mut attacks: Vec<(AttackKind, Vec<Ev>)> = Vec::new();
    for (kind, evs) in [
        (AttackKind::C2, &plan.c2),
        (AttackKind::Upload, &plan.upload),
        (AttackKind::SlowExfil, &plan.slow_exfil),
    ] {
        if cfg.scenario.injects(kind) {
            attacks.push((kind, evs.clone()));
        }
    }
    let mut injected: Vec<Ev> = attacks
        .iter()
        .flat_map(|(_, v)| v.iter().cloned())
        .collect();
    injected.sort_by_key(|e| e.ts);
    let mut next_attack = 0usize;

    let mut summary = GenerateSummary {
        events: 0,
        attacks: attacks
            .iter()
            .map(|(k, _)| (k.name().to_owned(), 0))
            .collect(),
    };
    let mut events: Vec<Ev> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut label_buf: Vec<u8> = Vec::new();
    let mut ts_cache = TsCache::default();
    let hours = (cfg.end - cfg.start + HOUR_MS - 1) / HOUR_MS;

    for h in 0..hours {
        let lo = cfg.start + h * HOUR_MS;
        let hi = (lo + HOUR_MS).min(cfg.end);
        events.clear();
        world.benign_hour(&cfg, h as u64, lo, hi, &mut events);
        world.backup_events(&cfg, lo, hi, &mut events);
        if cfg.scenario.partners() {
            world.partner_events(&cfg, lo, hi, &mut events);
        }
        while next_attack < injected.len() && injected[next_attack].ts < hi {
            events.push(injected[next_attack].clone());
            next_attack += 1;
        }
        events.sort_by_key(|e| e.ts);

        buf.clear();
        label_buf.clear();
        for e in &events {
            summary.events += 1;
            let ts = ts_cache.format(e.ts);
            world.write_event(&mut buf, e, ts, cfg.with_geo);
            if let Some(kind) = e.attack {
                if let Some(slot) = summary.attacks.iter_mut().find(|(k, _)| k == kind.name()) {
                    slot.1 += 1;
                }
                if labels.is_some() {
                    write_label(&mut label_buf, summary.events, ts, kind, e.dst_ip);
                }
            }
        }
        out.write_all(&buf)?;
        if let Some(l) = labels.as_mut() {
            l.write_all(&label_buf)?;
        }
    }
    out.flush()?;
    if let Some(l) = labels.as_mut() {
        l.flush()?;
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// Configuration and time

/// Validated options.
#[derive(Debug, Clone)]
struct Config {
    hosts: u32,
    seed: u64,
    start: i64,
    end: i64,
    rate: f64,
    scenario: Scenario,
    with_geo: bool,
}

impl Config {
    fn new(args: &GenerateArgs) -> io::Result<Config> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if args.hosts == 0 {
            return Err(invalid("--hosts must be at least 1".into()));
        }
        if args.days == 0 {
            return Err(invalid("--days must be at least 1".into()));
        }
        let rate = args.events_per_host_per_hour;
        if !rate.is_finite() || rate < 0.0 {
            return Err(invalid(format!(
                "--events-per-host-per-hour must be a finite number >= 0, not {rate}"
            )));
        }
        let start = parse_rfc3339(&args.start).map_err(invalid)?;
        Ok(Config {
            hosts: args.hosts,
            seed: args.seed,
            start,
            end: start + i64::from(args.days) * DAY_MS,
            rate,
            scenario: args.scenario,
            with_geo: args.with_geo,
        })
    }

    fn duration(&self) -> i64 {
        self.end - self.start
    }
}

/// Parses an RFC 3339 timestamp into Unix milliseconds, with a message for `--start`.
fn parse_rfc3339(s: &str) -> Result<i64, String> {
    egresswatch_common::time::parse_rfc3339_ms(s)
        .ok_or_else(|| format!("not an RFC 3339 timestamp: {s:?} (e.g. 2026-11-01T00:00:00Z)"))
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, caching the date and hour.
#[derive(Default)]
struct TsCache {
    hour: Option<i64>,
    text: [u8; 24],
}

impl TsCache {
    fn format(&mut self, ms: i64) -> &str {
        let hour = ms.div_euclid(HOUR_MS);
        if self.hour != Some(hour) {
            let (y, m, d) = egresswatch_common::time::civil_from_days(ms.div_euclid(DAY_MS));
            let hh = hour.rem_euclid(24);
            let head = format!("{y:04}-{m:02}-{d:02}T{hh:02}:00:00.000Z");
            self.text.copy_from_slice(&head.as_bytes()[..24]);
            self.hour = Some(hour);
        }
        let in_hour = ms.rem_euclid(HOUR_MS);
        let (mi, rest) = (in_hour / 60_000, in_hour % 60_000);
        let (ss, milli) = (rest / 1000, rest % 1000);
        let t = &mut self.text;
        t[14] = b'0' + (mi / 10) as u8;
        t[15] = b'0' + (mi % 10) as u8;
        t[17] = b'0' + (ss / 10) as u8;
        t[18] = b'0' + (ss % 10) as u8;
        t[20] = b'0' + (milli / 100) as u8;
        t[21] = b'0' + (milli / 10 % 10) as u8;
        t[22] = b'0' + (milli % 10) as u8;
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.text).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

/// Day of the week of a Unix millisecond time: 0 = Monday … 6 = Sunday.
fn weekday(ms: i64) -> i64 {
    (ms.div_euclid(DAY_MS) + 3).rem_euclid(7)
}

/// Relative activity by UTC hour on a working day.
const DIURNAL: [f64; 24] = [
    0.15, 0.12, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 1.4, 2.0, 2.1, 2.0, 1.5, 1.9, 2.0, 2.0, 1.8, 1.3,
    0.8, 0.5, 0.4, 0.35, 0.3, 0.2,
];
/// Weekend activity relative to a working day.
const WEEKEND: f64 = 0.3;

/// The diurnal weight of the hour starting at `ms`, normalised to a weekly mean of 1.
fn diurnal(ms: i64) -> f64 {
    let day_sum: f64 = DIURNAL.iter().sum();
    let week_mean = day_sum * (5.0 + 2.0 * WEEKEND) / 168.0;
    let h = ms.div_euclid(HOUR_MS).rem_euclid(24) as usize;
    let we = if weekday(ms) >= 5 { WEEKEND } else { 1.0 };
    DIURNAL[h] * we / week_mean
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// splitmix64: seeds and mixes stream identifiers.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stream identifiers, so that each part of the output has its own random sequence.
const STREAM_WORLD: u64 = 1;
const STREAM_HOUR: u64 = 2;
const STREAM_BACKUP: u64 = 3;
const STREAM_PARTNER: u64 = 4;
const STREAM_ATTACK: u64 = 5;

/// xoshiro256**.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for stream `stream`, index `index`, of seed `seed`.
    fn new(seed: u64, stream: u64, index: u64) -> Rng {
        let mut x = seed;
        let a = splitmix64(&mut x);
        let mut x = a ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix64(&mut x);
        let mut x = b ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn range_f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform in [0, n); n > 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi); lo < hi.
    fn range_i(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape, clamped to [lo, hi].
    fn lognormal(&mut self, median: f64, sigma: f64, lo: f64, hi: f64) -> u64 {
        (median * (sigma * self.normal()).exp()).clamp(lo, hi) as u64
    }

    /// Poisson(lambda): Knuth's method for small lambda, a rounded normal for large.
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            0
        } else if lambda < 30.0 {
            let l = (-lambda).exp();
            let mut k = 0u64;
            let mut p = self.f64();
            while p > l {
                k += 1;
                p *= self.f64();
            }
            k
        } else {
            (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
        }
    }

    /// An ephemeral source port.
    fn ephemeral_port(&mut self) -> u16 {
        self.range_i(49_152, 65_536) as u16
    }

    /// Index into a cumulative weight table.
    fn pick(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative.last().copied().unwrap_or(0.0);
        let x = self.f64() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len().saturating_sub(1))
    }
}

/// Running sums of `weights`.
fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

/// Splits `total` into `n` positive-ish shares with random weights; the shares sum to `total`.
fn split_bytes(rng: &mut Rng, total: u64, n: usize) -> Vec<u64> {
    let weights: Vec<f64> = (0..n).map(|_| rng.range_f(0.5, 1.5)).collect();
    let sum: f64 = weights.iter().sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|w| (total as f64 * w / sum) as u64)
        .collect();
    let assigned: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += total.saturating_sub(assigned);
    }
    shares
}

/// `n` sorted times uniform in [lo, hi).
fn sorted_times(rng: &mut Rng, n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut t: Vec<i64> = (0..n).map(|_| rng.range_i(lo, hi)).collect();
    t.sort_unstable();
    t
}

// ---------------------------------------------------------------------------------------------
// The world: countries, destinations, hosts

/// A country: ISO code, English name as Elastic writes it, share of benign web traffic, and
/// IPv4 prefixes that the bundled GeoIP database places in it.
struct Country {
    iso: &'static str,
    name: &'static str,
    weight: f64,
    prefixes: &'static [(u32, u8)],
}

/// Builds a prefix from dotted octets.
const fn p(a: u32, b: u32, c: u32, d: u32, len: u8) -> (u32, u8) {
    ((a << 24) | (b << 16) | (c << 8) | d, len)
}

/// All countries; the first [`BENIGN_COUNTRIES`] carry benign web traffic.
const COUNTRIES: &[Country] = &[
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
const BENIGN_COUNTRIES: usize = 21;
const C_FI: usize = 21;
const C_PL: usize = 22;
const C_MX: usize = 23;
const C_KP: usize = 24;
const C_US_RESERVED: usize = 25;
const C_DE_RESERVED: usize = 26;

/// The kind of service at a destination, which decides ports and byte sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// HTTPS only.
    Https,
    /// HTTPS and some plain HTTP.
    Web,
    /// IMAPS.
    Mail,
    /// SSH.
    Ssh,
}

/// A benign destination.
#[derive(Debug, Clone)]
struct Dest {
    ip: u32,
    country: u8,
    service: Service,
}

/// A generated connection.
#[derive(Debug, Clone)]
struct Ev {
    ts: i64,
    host: u32,
    src_port: u16,
    src_bytes: u64,
    dst_ip: u32,
    dst_port: u16,
    dst_bytes: u64,
    udp: bool,
    country: u8,
    process: &'static str,
    attack: Option<AttackKind>,
}

/// The labelled attack kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttackKind {
    C2,
    Upload,
    SlowExfil,
}

impl AttackKind {
    fn name(self) -> &'static str {
        match self {
            AttackKind::C2 => "c2",
            AttackKind::Upload => "upload",
            AttackKind::SlowExfil => "slow_exfil",
        }
    }
}

/// A business partner: where it is, when it first appears, and who talks to it.
#[derive(Debug, Clone)]
struct Partner {
    country: u8,
    ips: [u32; 2],
    appears: i64,
    hosts: Vec<u32>,
}

/// Benign web processes and their weights.
const WEB_PROCESSES: &[(&str, f64)] = &[
    ("chrome.exe", 35.0),
    ("msedge.exe", 20.0),
    ("firefox.exe", 8.0),
    ("Teams.exe", 10.0),
    ("OUTLOOK.EXE", 5.0),
    ("slack.exe", 5.0),
    ("Zoom.exe", 4.0),
    ("OneDrive.exe", 5.0),
    ("Code.exe", 3.0),
    ("svchost.exe", 5.0),
];

/// Everything fixed for a run: hosts, destinations and their popularity, partners.
struct World {
    host_names: Vec<String>,
    host_ips: Vec<u32>,
    activity: Vec<f64>,
    country_cum: Vec<f64>,
    dests_by_country: Vec<Vec<Dest>>,
    zipf_cum_by_country: Vec<Vec<f64>>,
    process_cum: Vec<f64>,
    dns: [u32; 2],
    backup_ip: u32,
    agent_ips: [u32; 2],
    partners: Vec<Partner>,
    /// Index of `backup-01` in the host tables.
    backup_host: u32,
}

/// A random address inside a prefix, avoiding .0 and .255 last octets.
fn addr_in(rng: &mut Rng, (base, len): (u32, u8)) -> u32 {
    if len >= 32 {
        return base;
    }
    let size = 1u64 << (32 - len);
    loop {
        let ip = base + rng.below(size) as u32;
        if !matches!(ip & 0xff, 0 | 255) {
            return ip;
        }
    }
}

impl World {
    fn new(cfg: &Config) -> World {
        let mut rng = Rng::new(cfg.seed, STREAM_WORLD, 0);
        let mut used = std::collections::HashSet::new();
        let mut fresh = |rng: &mut Rng, prefix: (u32, u8)| loop {
            let ip = addr_in(rng, prefix);
            if used.insert(ip) {
                return ip;
            }
        };

        let dns = [
            fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[0]),
            fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[1]),
        ];
        let backup_ip = fresh(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[2]);
        let agent_ips = [
            fresh(&mut rng, COUNTRIES[C_FI].prefixes[0]),
            fresh(&mut rng, COUNTRIES[C_FI].prefixes[0]),
        ];

        let total_weight: f64 = COUNTRIES[..BENIGN_COUNTRIES].iter().map(|c| c.weight).sum();
        let mut dests_by_country = Vec::new();
        let mut zipf_cum_by_country = Vec::new();
        for (ci, c) in COUNTRIES[..BENIGN_COUNTRIES].iter().enumerate() {
            let n = ((CATALOG_SIZE * c.weight / total_weight).round() as usize).max(3);
            let dests: Vec<Dest> = (0..n)
                .map(|_| {
                    let prefix = c.prefixes[rng.below(c.prefixes.len() as u64) as usize];
                    let ip = fresh(&mut rng, prefix);
                    let x = rng.f64();
                    let service = if x < 0.80 {
                        Service::Https
                    } else if x < 0.92 {
                        Service::Web
                    } else if x < 0.97 {
                        Service::Mail
                    } else {
                        Service::Ssh
                    };
                    Dest {
                        ip,
                        country: ci as u8,
                        service,
                    }
                })
                .collect();
            zipf_cum_by_country.push(cumulative((0..n).map(|r| 1.0 / ((r + 1) as f64).powf(1.1))));
            dests_by_country.push(dests);
        }
        let country_cum = cumulative(COUNTRIES[..BENIGN_COUNTRIES].iter().map(|c| c.weight));
        let process_cum = cumulative(WEB_PROCESSES.iter().map(|p| p.1));

        let mut host_names = Vec::new();
        let mut host_ips = Vec::new();
        let mut activity = Vec::new();
        let sigma = 0.5f64;
        for i in 0..cfg.hosts {
            host_names.push(format!("ws-{:04}", i + 1));
            host_ips.push((10 << 24) | (20 << 16) | ((i / 200) << 8) | (i % 200 + 20));
            activity.push((sigma * rng.normal() - sigma * sigma / 2.0).exp());
        }
        let backup_host = cfg.hosts;
        host_names.push("backup-01".to_owned());
        host_ips.push((10 << 24) | (10 << 16) | 5);
        activity.push(0.0);

        let days = cfg.duration() / DAY_MS;
        let first_day = cfg.start.div_euclid(DAY_MS);
        let mut partners = Vec::new();
        for (k, (country, frac)) in [(C_PL, 0.25), (C_MX, 0.5)].into_iter().enumerate() {
            let prefix = COUNTRIES[country].prefixes[0];
            let ips = [fresh(&mut rng, prefix), fresh(&mut rng, prefix)];
            let mut day = first_day + (days as f64 * frac) as i64;
            // Partners are onboarded on a working day.
            while weekday(day * DAY_MS) >= 5 && (day + 1) * DAY_MS < cfg.end {
                day += 1;
            }
            let appears = (day * DAY_MS + rng.range_i(10 * HOUR_MS, 14 * HOUR_MS)).max(cfg.start);
            let n_hosts = 2 + rng.below(2) as u32;
            let hosts = (0..n_hosts)
                .map(|j| (k as u32 * 7 + j * 3 + rng.below(3) as u32) % cfg.hosts)
                .collect();
            partners.push(Partner {
                country: country as u8,
                ips,
                appears,
                hosts,
            });
        }

        World {
            host_names,
            host_ips,
            activity,
            country_cum,
            dests_by_country,
            zipf_cum_by_country,
            process_cum,
            dns,
            backup_ip,
            agent_ips,
            partners,
            backup_host,
        }
    }

    /// Workstation and shipping-agent connections in [lo, hi), hour number `h` of the run.
    fn benign_hour(&self, cfg: &Config, h: u64, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let mut rng = Rng::new(cfg.seed, STREAM_HOUR, h);
        let span = (hi - lo) as f64 / HOUR_MS as f64;
        let base = cfg.rate * diurnal(lo) * span;
        for host in 0..cfg.hosts {
            let n = rng.poisson(base * self.activity[host as usize]);
            for _ in 0..n {
                let ts = rng.range_i(lo, hi);
                events.push(self.benign_event(&mut rng, ts, host));
            }
        }
        for host in 0..=cfg.hosts {
            let n = rng.poisson(cfg.rate * AGENT_SHARE * span);
            for _ in 0..n {
                let ts = rng.range_i(lo, hi);
                events.push(Ev {
                    ts,
                    host,
                    src_port: rng.ephemeral_port(),
                    src_bytes: rng.lognormal(30_000.0, 1.0, 500.0, 20e6),
                    dst_ip: self.agent_ips[(host % 2) as usize],
                    dst_port: 443,
                    dst_bytes: rng.lognormal(1_200.0, 0.5, 200.0, 1e6),
                    udp: false,
                    country: C_FI as u8,
                    process: if host % 3 == 0 {
                        "filebeat.exe"
                    } else {
                        "elastic-agent.exe"
                    },
                    attack: None,
                });
            }
        }
    }

    /// One workstation connection.
    fn benign_event(&self, rng: &mut Rng, ts: i64, host: u32) -> Ev {
        let src_port = rng.ephemeral_port();
        if rng.f64() < 0.04 {
            return Ev {
                ts,
                host,
                src_port,
                src_bytes: rng.range_i(60, 120) as u64,
                dst_ip: self.dns[rng.below(2) as usize],
                dst_port: 53,
                dst_bytes: rng.range_i(80, 500) as u64,
                udp: true,
                country: C_US_RESERVED as u8,
                process: "svchost.exe",
                attack: None,
            };
        }
        let c = rng.pick(&self.country_cum);
        let d = &self.dests_by_country[c][rng.pick(&self.zipf_cum_by_country[c])];
        let (dst_port, process, src_bytes, dst_bytes) = match d.service {
            Service::Https | Service::Web => {
                let port = if d.service == Service::Web && rng.f64() < 0.3 {
                    80
                } else {
                    443
                };
                let process = WEB_PROCESSES[rng.pick(&self.process_cum)].0;
                let sent = if rng.f64() < 0.02 {
                    rng.lognormal(400_000.0, 1.2, 20_000.0, 30e6)
                } else {
                    rng.lognormal(1_200.0, 1.0, 120.0, 2e6)
                };
                (
                    port,
                    process,
                    sent,
                    rng.lognormal(25_000.0, 1.8, 200.0, 50e6),
                )
            }
            Service::Mail => (
                993,
                "OUTLOOK.EXE",
                rng.lognormal(3_000.0, 1.2, 200.0, 20e6),
                rng.lognormal(20_000.0, 1.5, 300.0, 30e6),
            ),
            Service::Ssh => (
                22,
                "ssh.exe",
                rng.lognormal(5_000.0, 1.5, 500.0, 20e6),
                rng.lognormal(8_000.0, 1.5, 500.0, 20e6),
            ),
        };
        Ev {
            ts,
            host,
            src_port,
            src_bytes,
            dst_ip: d.ip,
            dst_port,
            dst_bytes,
            udp: false,
            country: d.country,
            process,
            attack: None,
        }
    }

    /// Backup connections in [lo, hi): each epoch-aligned 3 h bucket is planned whole from its
    /// own random stream, and the part inside [lo, hi) and the run is kept.
    fn backup_events(&self, cfg: &Config, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let first = lo.div_euclid(BUCKET_MS);
        let last = (hi - 1).div_euclid(BUCKET_MS);
        for b in first..=last {
            let mut rng = Rng::new(cfg.seed, STREAM_BACKUP, b as u64);
            let total = rng.range_i(1_000_000_000, 3_000_000_000) as u64;
            let n = rng.range_i(60, 161) as usize;
            let times = sorted_times(&mut rng, n, b * BUCKET_MS, (b + 1) * BUCKET_MS);
            let shares = split_bytes(&mut rng, total, n);
            for (ts, bytes) in times.into_iter().zip(shares) {
                let src_port = rng.ephemeral_port();
                let dst_bytes = rng.lognormal(4_000.0, 0.5, 500.0, 1e6);
                if ts >= lo && ts < hi && ts >= cfg.start && ts < cfg.end {
                    events.push(Ev {
                        ts,
                        host: self.backup_host,
                        src_port,
                        src_bytes: bytes,
                        dst_ip: self.backup_ip,
                        dst_port: 443,
                        dst_bytes,
                        udp: false,
                        country: C_US_RESERVED as u8,
                        process: "restic",
                        attack: None,
                    });
                }
            }
        }
    }

    /// Business-partner connections in [lo, hi): each UTC day is planned whole per partner.
    fn partner_events(&self, cfg: &Config, lo: i64, hi: i64, events: &mut Vec<Ev>) {
        let first = lo.div_euclid(DAY_MS);
        let last = (hi - 1).div_euclid(DAY_MS);
        for day in first..=last {
            for (k, partner) in self.partners.iter().enumerate() {
                let day_lo = day * DAY_MS;
                if day_lo + DAY_MS <= partner.appears {
                    continue;
                }
                let mut rng = Rng::new(cfg.seed, STREAM_PARTNER, (day as u64) << 4 | k as u64);
                let mean = if weekday(day_lo) >= 5 { 1.0 } else { 4.0 };
                let n = 2 + rng.poisson(mean) as usize;
                let from = (day_lo + 8 * HOUR_MS).max(partner.appears);
                let to = (day_lo + 18 * HOUR_MS)
                    .max(from + HOUR_MS)
                    .min(day_lo + DAY_MS);
                let mut times = sorted_times(&mut rng, n, from, to);
                if partner.appears >= day_lo {
                    // The first contact happens exactly when the partner appears.
                    times[0] = partner.appears;
                }
                for ts in times {
                    let host = partner.hosts[rng.below(partner.hosts.len() as u64) as usize];
                    let ev = Ev {
                        ts,
                        host,
                        src_port: rng.ephemeral_port(),
                        src_bytes: rng.lognormal(50_000.0, 1.2, 500.0, 50e6),
                        dst_ip: partner.ips[rng.below(2) as usize],
                        dst_port: 443,
                        dst_bytes: rng.lognormal(200_000.0, 1.2, 500.0, 50e6),
                        udp: false,
                        country: partner.country,
                        process: if rng.f64() < 0.5 {
                            "chrome.exe"
                        } else {
                            "WinSCP.exe"
                        },
                        attack: None,
                    };
                    if ts >= lo && ts < hi && ts >= cfg.start && ts < cfg.end {
                        events.push(ev);
                    }
                }
            }
        }
    }

    /// Appends one event as a JSON line.
    fn write_event(&self, buf: &mut Vec<u8>, e: &Ev, ts: &str, with_geo: bool) {
        buf.extend_from_slice(b"{\"@timestamp\":\"");
        buf.extend_from_slice(ts.as_bytes());
        buf.extend_from_slice(
            b"\",\"event\":{\"kind\":\"event\",\"category\":[\"network\"],\
              \"type\":[\"connection\",\"end\"],\"dataset\":\"egresswatch.generated\"},\
              \"source\":{\"ip\":\"",
        );
        push_ip(buf, self.host_ips[e.host as usize]);
        buf.extend_from_slice(b"\",\"port\":");
        push_u64(buf, u64::from(e.src_port));
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.src_bytes);
        buf.extend_from_slice(b"},\"destination\":{\"ip\":\"");
        push_ip(buf, e.dst_ip);
        buf.extend_from_slice(b"\",\"port\":");
        push_u64(buf, u64::from(e.dst_port));
        buf.extend_from_slice(b",\"bytes\":");
        push_u64(buf, e.dst_bytes);
        if with_geo {
            let c = &COUNTRIES[e.country as usize];
            buf.extend_from_slice(b",\"geo\":{\"country_name\":\"");
            buf.extend_from_slice(c.name.as_bytes());
            buf.extend_from_slice(b"\",\"country_iso_code\":\"");
            buf.extend_from_slice(c.iso.as_bytes());
            buf.extend_from_slice(b"\"}");
        }
        buf.extend_from_slice(b"},\"network\":{\"transport\":\"");
        buf.extend_from_slice(if e.udp { b"udp" } else { b"tcp" });
        buf.extend_from_slice(b"\",\"direction\":\"outbound\"},\"host\":{\"name\":\"");
        buf.extend_from_slice(self.host_names[e.host as usize].as_bytes());
        buf.extend_from_slice(b"\"},\"process\":{\"name\":\"");
        buf.extend_from_slice(e.process.as_bytes());
        buf.extend_from_slice(b"\"}}\n");
    }
}

/// Appends a label line.
fn write_label(buf: &mut Vec<u8>, line: u64, ts: &str, kind: AttackKind, ip: u32) {
    buf.extend_from_slice(b"{\"line\":");
    push_u64(buf, line);
    buf.extend_from_slice(b",\"@timestamp\":\"");
    buf.extend_from_slice(ts.as_bytes());
    buf.extend_from_slice(b"\",\"attack\":\"");
    buf.extend_from_slice(kind.name().as_bytes());
    buf.extend_from_slice(b"\",\"destination.ip\":\"");
    push_ip(buf, ip);
    buf.extend_from_slice(b"\"}\n");
}

/// Appends a decimal number.
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends a dotted-quad IPv4 address.
fn push_ip(buf: &mut Vec<u8>, ip: u32) {
    for (k, octet) in ip.to_be_bytes().into_iter().enumerate() {
        if k > 0 {
            buf.push(b'.');
        }
        push_u64(buf, u64::from(octet));
    }
}

// ---------------------------------------------------------------------------------------------
// Attacks

/// The planned attacks, each sorted by time; planned whatever the scenario, so that the
/// scenario only decides which are written.
#[derive(Debug, Clone, Default)]
struct AttackPlan {
    c2: Vec<Ev>,
    upload: Vec<Ev>,
    /// Bytes the upload sends in total.
    upload_bytes: u64,
    /// Start of the upload's 3 h bucket (Unix ms), if it fits in the run.
    upload_bucket: Option<i64>,
    slow_exfil: Vec<Ev>,
}

/// Three distinct workstations (or fewer hosts reused) for the three attacks.
fn attack_hosts(rng: &mut Rng, hosts: u32) -> [u32; 3] {
    if hosts < 3 {
        return [0, hosts.saturating_sub(1), 0];
    }
    let a = rng.below(u64::from(hosts)) as u32;
    let mut b = rng.below(u64::from(hosts)) as u32;
    while b == a {
        b = rng.below(u64::from(hosts)) as u32;
    }
    let mut c = rng.below(u64::from(hosts)) as u32;
    while c == a || c == b {
        c = rng.below(u64::from(hosts)) as u32;
    }
    [a, b, c]
}

/// The first epoch-aligned 3 h bucket starting at or after `t`.
fn bucket_at_or_after(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS) * BUCKET_MS
        + if t.rem_euclid(BUCKET_MS) == 0 {
            0
        } else {
            BUCKET_MS
        }
}

/// Plans the three attacks for the run (see the module documentation).
fn plan_attacks(cfg: &Config) -> AttackPlan {
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 0);
    let [c2_host, upload_host, exfil_host] = attack_hosts(&mut rng, cfg.hosts);
    let dur = cfg.duration();
    let mut plan = AttackPlan::default();

    // C2 beacon.
    let c2_ip = addr_in(&mut rng, COUNTRIES[C_KP].prefixes[0]);
    let period = rng.range_f(5.0, 15.0) * 60_000.0;
    let mut t = cfg.start + dur / 2 + (rng.f64() * dur as f64 * 0.1) as i64;
    let c2_port = if rng.f64() < 0.5 { 443 } else { 8443 };
    while t < cfg.end {
        let tasking = rng.f64() < 0.05;
        plan.c2.push(Ev {
            ts: t,
            host: c2_host,
            src_port: rng.ephemeral_port(),
            src_bytes: rng.lognormal(600.0, 0.3, 200.0, 4_000.0),
            dst_ip: c2_ip,
            dst_port: c2_port,
            dst_bytes: if tasking {
                rng.lognormal(20_000.0, 0.8, 2_000.0, 500_000.0)
            } else {
                rng.lognormal(400.0, 0.5, 100.0, 4_000.0)
            },
            udp: false,
            country: C_KP as u8,
            process: "rundll32.exe",
            attack: Some(AttackKind::C2),
        });
        t += (period * rng.range_f(0.8, 1.2)) as i64;
    }

    // Bulk upload within one 3 h bucket.
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 1);
    let upload_ip = addr_in(&mut rng, COUNTRIES[C_US_RESERVED].prefixes[3]);
    let total = rng.range_i(2_000_000_000, 5_000_000_001) as u64;
    let mut bucket = bucket_at_or_after(cfg.start + dur * 7 / 10) + rng.range_i(0, 3) * BUCKET_MS;
    while bucket + BUCKET_MS > cfg.end && bucket - BUCKET_MS >= cfg.start {
        bucket -= BUCKET_MS;
    }
    if bucket >= cfg.start && bucket + BUCKET_MS <= cfg.end {
        let n = rng.range_i(40, 101) as usize;
        let times = sorted_times(
            &mut rng,
            n,
            bucket + 2 * 60_000,
            bucket + BUCKET_MS - 2 * 60_000,
        );
        let shares = split_bytes(&mut rng, total, n);
        for (ts, bytes) in times.into_iter().zip(shares) {
            plan.upload.push(Ev {
                ts,
                host: upload_host,
                src_port: rng.ephemeral_port(),
                src_bytes: bytes,
                dst_ip: upload_ip,
                dst_port: 443,
                dst_bytes: rng.lognormal(6_000.0, 0.5, 500.0, 200_000.0),
                udp: false,
                country: C_US_RESERVED as u8,
                process: "rclone.exe",
                attack: Some(AttackKind::Upload),
            });
        }
        plan.upload_bytes = total;
        plan.upload_bucket = Some(bucket);
    }

    // Slow exfiltration: eight consecutive 3 h buckets.
    let mut rng = Rng::new(cfg.seed, STREAM_ATTACK, 2);
    let exfil_ip = addr_in(&mut rng, COUNTRIES[C_DE_RESERVED].prefixes[0]);
    let mut bucket = bucket_at_or_after(cfg.start + dur * 7 / 10);
    for _ in 0..8 {
        if bucket + BUCKET_MS > cfg.end {
            break;
        }
        let total = rng.range_i(150_000_000, 300_000_001) as u64;
        let n = rng.range_i(15, 23) as usize;
        let times = sorted_times(&mut rng, n, bucket, bucket + BUCKET_MS);
        let shares = split_bytes(&mut rng, total, n);
        for (ts, bytes) in times.into_iter().zip(shares) {
            plan.slow_exfil.push(Ev {
                ts,
                host: exfil_host,
                src_port: rng.ephemeral_port(),
                src_bytes: bytes,
                dst_ip: exfil_ip,
                dst_port: 443,
                dst_bytes: rng.lognormal(3_000.0, 0.5, 300.0, 100_000.0),
                udp: false,
                country: C_DE_RESERVED as u8,
                process: "powershell.exe",
                attack: Some(AttackKind::SlowExfil),
            });
        }
        bucket += BUCKET_MS;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn small(scenario: Scenario) -> GenerateArgs {
        GenerateArgs {
            hosts: 8,
            days: 4,
            seed: 7,
            scenario,
            ..GenerateArgs::default()
        }
    }

    fn run(args: &GenerateArgs) -> (String, String, GenerateSummary) {
        let mut out = Vec::new();
        let mut labels = Vec::new();
        let summary = generate(args, &mut out, Some(&mut labels)).expect("generate");
        (
            String::from_utf8(out).expect("utf8"),
            String::from_utf8(labels).expect("utf8"),
            summary,
        )
    }

    fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(v, |v, k| &v[k])
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        let a = run(&small(Scenario::Default));
        let b = run(&small(Scenario::Default));
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2);
        let c = run(&GenerateArgs {
            seed: 8,
            ..small(Scenario::Default)
        });
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn lines_parse_with_fields_in_time_order() {
        let args = GenerateArgs {
            with_geo: true,
            ..small(Scenario::Default)
        };
        let (out, _, summary) = run(&args);
        let start = parse_rfc3339(&args.start).expect("start");
        let end = start + 4 * DAY_MS;
        let mut prev = String::new();
        let mut n = 0u64;
        let mut agents = 0u64;
        for line in out.lines() {
            n += 1;
            let v: Value = serde_json::from_str(line).expect("json");
            let ts = v["@timestamp"].as_str().expect("@timestamp");
            assert_eq!(ts.len(), 24, "{ts}");
            assert!(ts.ends_with('Z'));
            let ms = parse_rfc3339(ts).expect("ts parses");
            assert!(ms >= start && ms < end);
            assert!(*ts >= *prev.as_str(), "{prev} then {ts}");
            prev = ts.to_owned();
            assert_eq!(get(&v, "event.kind"), "event");
            assert_eq!(get(&v, "event.category"), &serde_json::json!(["network"]));
            assert_eq!(
                get(&v, "event.type"),
                &serde_json::json!(["connection", "end"])
            );
            assert_eq!(get(&v, "event.dataset"), "egresswatch.generated");
            let src: std::net::Ipv4Addr = get(&v, "source.ip")
                .as_str()
                .expect("source.ip")
                .parse()
                .expect("ip");
            assert!(src.is_private());
            let dst: std::net::Ipv4Addr = get(&v, "destination.ip")
                .as_str()
                .expect("destination.ip")
                .parse()
                .expect("ip");
            assert!(!dst.is_private() && !dst.is_documentation() && !dst.is_loopback());
            for f in [
                "source.port",
                "source.bytes",
                "destination.port",
                "destination.bytes",
            ] {
                assert!(get(&v, f).is_u64(), "{f} in {line}");
            }
            assert!(get(&v, "source.bytes").as_u64() > Some(0));
            for f in [
                "destination.geo.country_name",
                "destination.geo.country_iso_code",
                "network.transport",
                "host.name",
                "process.name",
            ] {
                assert!(get(&v, f).is_string(), "{f} in {line}");
            }
            assert_eq!(get(&v, "network.direction"), "outbound");
            let process = get(&v, "process.name").as_str().unwrap_or("");
            if process == "filebeat.exe" || process == "elastic-agent.exe" {
                agents += 1;
                assert_eq!(get(&v, "destination.geo.country_iso_code"), "FI");
            }
        }
        assert_eq!(n, summary.events);
        assert!(agents > 0 && agents * 10 < n, "{agents} of {n}");
    }

    #[test]
    fn labels_point_at_matching_lines() {
        let args = GenerateArgs {
            with_geo: true,
            ..small(Scenario::Default)
        };
        let (out, labels, summary) = run(&args);
        let lines: Vec<&str> = out.lines().collect();
        let mut per_kind = std::collections::BTreeMap::new();
        for label in labels.lines() {
            let l: Value = serde_json::from_str(label).expect("label json");
            let n = l["line"].as_u64().expect("line") as usize;
            let e: Value = serde_json::from_str(lines[n - 1]).expect("event json");
            assert_eq!(&l["destination.ip"], get(&e, "destination.ip"));
            assert_eq!(l["@timestamp"], e["@timestamp"]);
            assert!(e.get("attack").is_none() && e.get("label").is_none());
            *per_kind
                .entry(l["attack"].as_str().expect("attack").to_owned())
                .or_insert(0u64) += 1;
        }
        let expected: std::collections::BTreeMap<String, u64> =
            summary.attacks.iter().cloned().collect();
        assert_eq!(per_kind, expected);
        assert_eq!(
            summary
                .attacks
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["c2", "upload", "slow_exfil"]
        );
        assert!(summary.attacks.iter().all(|(_, n)| *n > 0));
    }

    #[test]
    fn quiet_has_no_labels() {
        let (out, labels, summary) = run(&small(Scenario::Quiet));
        assert!(labels.is_empty());
        assert!(summary.attacks.is_empty());
        assert!(!out.is_empty());
        // No business partners either.
        let (partner, _, _) = run(&small(Scenario::Partner));
        assert!(partner.lines().count() > out.lines().count());
    }

    #[test]
    fn attacks_are_purely_additive() {
        let (base, base_labels, _) = run(&small(Scenario::Partner));
        assert!(base_labels.is_empty());
        for scenario in [
            Scenario::Default,
            Scenario::C2,
            Scenario::Upload,
            Scenario::SlowExfil,
        ] {
            let (out, labels, _) = run(&small(scenario));
            let attack_lines: std::collections::HashSet<usize> = labels
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).expect("label")["line"]
                        .as_u64()
                        .expect("line") as usize
                })
                .collect();
            let rest: Vec<&str> = out
                .lines()
                .enumerate()
                .filter(|(i, _)| !attack_lines.contains(&(i + 1)))
                .map(|(_, l)| l)
                .collect();
            assert_eq!(rest, base.lines().collect::<Vec<_>>(), "{scenario:?}");
        }
    }

    #[test]
    fn upload_sums_to_plan_within_one_bucket() {
        let args = small(Scenario::Upload);
        let cfg = Config::new(&args).expect("config");
        let plan = plan_attacks(&cfg);
        let bucket = plan.upload_bucket.expect("upload fits");
        assert!((2_000_000_000..=5_000_000_000).contains(&plan.upload_bytes));
        let (out, labels, summary) = run(&args);
        assert_eq!(
            summary.attacks,
            vec![("upload".to_owned(), plan.upload.len() as u64)]
        );
        let lines: Vec<&str> = out.lines().collect();
        let mut sum = 0u64;
        for label in labels.lines() {
            let l: Value = serde_json::from_str(label).expect("label");
            assert_eq!(l["attack"], "upload");
            let e: Value =
                serde_json::from_str(lines[l["line"].as_u64().expect("line") as usize - 1])
                    .expect("event");
            let ms = parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts");
            assert!(ms >= bucket && ms < bucket + BUCKET_MS);
            sum += get(&e, "source.bytes").as_u64().expect("bytes");
        }
        assert_eq!(sum, plan.upload_bytes);
    }

    #[test]
    fn c2_beacons_to_a_country_nothing_else_reaches() {
        let args = GenerateArgs {
            with_geo: true,
            ..small(Scenario::C2)
        };
        let (out, labels, _) = run(&args);
        let labelled: std::collections::HashSet<u64> = labels
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("label")["line"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        let start = parse_rfc3339(&args.start).expect("start");
        let mut times = Vec::new();
        for (i, line) in out.lines().enumerate() {
            let e: Value = serde_json::from_str(line).expect("event");
            let kp = get(&e, "destination.geo.country_iso_code") == "KP";
            assert_eq!(kp, labelled.contains(&(i as u64 + 1)), "{line}");
            if kp {
                times.push(parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts"));
            }
        }
        assert!(times[0] >= start + 2 * DAY_MS);
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!((4 * 60_000..=18 * 60_000).contains(&gap), "gap {gap}");
        }
    }

    #[test]
    fn default_volume_and_backup() {
        let args = GenerateArgs::default();
        let mut out = Vec::new();
        let summary = generate(&args, &mut out, None).expect("generate");
        let expected = 50.0 * 96.0 * 6.0;
        let benign = summary.events as f64;
        assert!(benign > expected && benign < expected * 1.5, "{benign}");
        // Every 3 h bucket carries 1-3 GB of backup.
        let mut per_bucket = std::collections::BTreeMap::new();
        for line in String::from_utf8(out).expect("utf8").lines() {
            if line.contains("\"restic\"") {
                let e: Value = serde_json::from_str(line).expect("event");
                let ms = parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts");
                *per_bucket.entry(ms.div_euclid(BUCKET_MS)).or_insert(0u64) +=
                    get(&e, "source.bytes").as_u64().expect("bytes");
            }
        }
        assert_eq!(per_bucket.len(), 32);
        assert!(per_bucket
            .values()
            .all(|b| (1_000_000_000..3_000_000_000).contains(b)));
    }

    #[test]
    fn rfc3339_round_trip_and_weekday() {
        let ms = parse_rfc3339("2026-11-01T00:00:00Z").expect("parse");
        assert_eq!(ms, 1_793_491_200_000);
        assert_eq!(weekday(ms), 6, "2026-11-01 is a Sunday");
        let mut cache = TsCache::default();
        assert_eq!(cache.format(ms + 3_723_456), "2026-11-01T01:02:03.456Z");
        assert_eq!(
            parse_rfc3339("2026-11-01T02:00:00.5+02:00").expect("offset"),
            ms + 500
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-01",
            "2026-11-01T00:00:00Q",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        let args = GenerateArgs {
            start: "yesterday".into(),
            ..GenerateArgs::default()
        };
        let err = generate(&args, &mut Vec::new(), None).expect_err("bad start");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        use clap::{Args, Command, FromArgMatches};
        let cmd = GenerateArgs::augment_args(Command::new("generate"));
        let m = cmd
            .try_get_matches_from(["generate"])
            .expect("parse defaults");
        let parsed = GenerateArgs::from_arg_matches(&m).expect("from matches");
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", GenerateArgs::default())
        );
        let cmd = GenerateArgs::augment_args(Command::new("generate"));
        assert!(cmd
            .try_get_matches_from(["generate", "--start", "soon"])
            .is_err());
    }
}
