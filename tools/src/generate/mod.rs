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

use calendar::parse_rfc3339;
mod attacks;
mod calendar;
mod countries;
mod json;
mod rng;
#[cfg(test)]
mod tests;
mod world;

use std::io::{self, Write};
use std::path::PathBuf;

use egresswatch_common::names::ATTACK_KINDS;
use egresswatch_common::time::HOUR_MS;

use attacks::plan_attacks;
use calendar::{Config, TsCache};
use json::write_label;
use world::{Ev, World};

/// The high-sum jobs' bucket span: 3 hours, aligned to the Unix epoch.
const BUCKET_MS: i64 = 3 * HOUR_MS;
/// The share of connections sent by log shipping agents, per host and hour, as a fraction of
/// the workstation rate.
const AGENT_SHARE: f64 = 0.03;
/// Approximate number of destinations in the benign catalog.
const CATALOG_SIZE: f64 = 300.0;

/// The labelled attack kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttackKind {
    C2,
    Upload,
    SlowExfil,
}

impl AttackKind {
    /// The kind's name in labels: [`ATTACK_KINDS`], in the order of the variants.
    fn name(self) -> &'static str {
        ATTACK_KINDS[self as usize]
    }
}

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
    /// Write the events to this file instead of standard output (which must then not be a
    /// terminal: the default run is about 20 MB).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
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
            output: None,
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
