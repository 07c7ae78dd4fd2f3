//! `egresswatch-quality`: detection quality on real traffic, per alert, beside the simple rules a
//! security team would otherwise write.
//!
//! It builds labelled scenarios from `../shared/data` at run time (nothing is copied into the
//! repository: the captures' licences differ from ours), drives the detector in-process with the
//! repository's rules and GeoIP database, and prints, per variant and per detector: episodes
//! caught, time to first alert, the episode's highest score per splice day, and false alerts per
//! day, where an alert is one per detector, key and bucket. See `docs/detection.md`.
//!
//! ```sh
//! cargo run --release -p egresswatch-quality            # every variant
//! cargo run --release -p egresswatch-quality -- --only office
//! ```

mod data;
mod scenario;
mod score;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;

use crate::data::Data;
use crate::scenario::{Attacks, Base, Episode, DAY_MS, HOUR_MS};
use crate::score::{Decision, EpisodeId, Interner, Seen};

/// The repository root (the harness reads its rules and GeoIP database).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Events handed to the detector at a time, as a host would.
const BATCH: usize = 256;
/// The country job's bucket, for grouping the 7-day rule's alerts.
const COUNTRY_BUCKET_MS: i64 = 15 * 60_000;
/// The bytes job's bucket, for the fixed-bytes rules.
const BYTES_BUCKET_MS: i64 = 3 * HOUR_MS;
/// Fixed-bytes rules compared with the bytes job.
const FIXED_BYTES: [(f64, &str); 3] = [(10e6, "10 MB"), (100e6, "100 MB"), (1e9, "1 GB")];

#[derive(Debug, Parser)]
#[command(
    name = "egresswatch-quality",
    about = "Detection quality on real captures"
)]
struct Args {
    /// The shared data folder (default: ../shared/data beside the repository).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Days of the office base (the four workstation captures in turn).
    #[arg(long, default_value_t = 12)]
    office_days: usize,
    /// Days of the server base (RITA's three days, repeated).
    #[arg(long, default_value_t = 6)]
    server_days: usize,
    /// Only variants whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// List every false alert of the benign runs (time, detector, key, score), and those a
    /// splice adds.
    #[arg(long)]
    list_false_alerts: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let data_dir = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(REPO).join("../shared/data"));
    let data = Data::open(&data_dir)?;
    let attacks = Attacks::read(&data)?;
    let bases = [
        scenario::office(&data, args.office_days)?,
        scenario::server(&data, args.server_days)?,
    ];
    let geo = egresswatch_plugin::geo::GeoDb::open(geo_path())?;
    println!("# Detection quality on real captures\n");
    println!(
        "Detector: the repository's rules (at their thresholds) and GeoIP database, default \
         model settings. An alert is one per detector, key and bucket (15 min for countries, 3 h \
         for bytes). Baselines: *new country (7 d)* flags a destination country not seen in the \
         previous 7 days; *fixed X* flags X bytes or more sent to one destination.ip in a 3 h \
         bucket. They read the same events as the matching job and start when its learning \
         period ends.\n"
    );
    let mut summary = Summary::default();
    for base in &bases {
        let wanted = |v: &str| args.only.as_deref().is_none_or(|o| v.contains(o));
        let benign_name = format!("{} benign", base.name);
        let mut interner = Interner::default();
        let benign = run(base, &[], &mut interner)?;
        // The benign run's false alerts, to tell those a splice adds.
        let mut benign_false: HashSet<(String, String, i64)> = HashSet::new();
        for det in detectors(&benign) {
            for a in score::alerts(&det.decisions) {
                if a.episode.is_none() {
                    benign_false.insert((
                        det.name.clone(),
                        interner.name(a.key).to_owned(),
                        a.bucket,
                    ));
                }
            }
        }
        let countries = benign.subjects(JobKind::Rare, &interner);
        if wanted(&benign_name) {
            println!(
                "## {}\n\n{} events. {}\n",
                benign_name,
                base.events.len(),
                base.about
            );
            let mut rows = vec![header(&[
                "detector",
                "scored from",
                "days",
                "alerts",
                "false alerts/day",
            ])];
            for det in detectors(&benign) {
                let alerts = score::alerts(&det.decisions);
                let days = det.days(benign.end_ms);
                let fp = score::false_alerts(&alerts, det.from_ms);
                rows.push(vec![
                    det.name.clone(),
                    day_label(base, det.from_ms),
                    format!("{days:.1}"),
                    fp.to_string(),
                    per_day(fp, days),
                ]);
                summary.false_alerts(&benign_name, &det.name, per_day(fp, days));
                if args.list_false_alerts {
                    list_false_alerts(base, &det, &alerts, &interner);
                }
            }
            print_table(&rows);
        }
        for variant in variants(base, &attacks, &geo, &countries) {
            let name = format!("{} + {}", base.name, variant.name);
            if !wanted(&name) {
                continue;
            }
            let learning_end = benign.learning_end(variant.after);
            let days: Vec<usize> = (0..base.days)
                .filter(|&d| {
                    let t = base.at(d, variant.hour);
                    t - variant.lead_ms >= learning_end && t + HOUR_MS <= base.end_ms()
                })
                .collect();
            println!("## {name}\n\n{}\n", variant.about);
            let mut results: BTreeMap<(String, &'static str), Vec<Outcome>> = BTreeMap::new();
            let mut fp_days: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            for &day in &days {
                let episodes = (variant.build)(base, day);
                let mut interner = Interner::default();
                let out = run(base, &episodes, &mut interner)?;
                for det in detectors(&out) {
                    if !order.contains(&det.name) {
                        order.push(det.name.clone());
                    }
                    let alerts = score::alerts(&det.decisions);
                    let days_eval = det.days(out.end_ms);
                    let fp = score::false_alerts(&alerts, det.from_ms);
                    if args.list_false_alerts {
                        for a in alerts
                            .iter()
                            .filter(|a| a.episode.is_none() && a.time_ms >= det.from_ms)
                        {
                            let key = (det.name.clone(), interner.name(a.key).to_owned(), a.bucket);
                            if !benign_false.contains(&key) {
                                println!(
                                    "- splice day {day}: {} {}: {} (a false alert the benign run does not have)",
                                    day_label(base, a.time_ms),
                                    det.name,
                                    key.1
                                );
                            }
                        }
                    }
                    fp_days
                        .entry(det.name.clone())
                        .or_default()
                        .push(fp as f64 / days_eval.max(1e-9));
                    let per_ep = score::episodes(&det.decisions);
                    for ep in episodes.iter().filter(|e| e.must_catch) {
                        let r = per_ep.get(&ep.id).copied().unwrap_or_default();
                        results
                            .entry((det.name.clone(), ep.kind))
                            .or_default()
                            .push(Outcome {
                                delay_ms: r.first_flag_ms.map(|t| t - ep.start_ms),
                                max_score: r.max_score,
                            });
                    }
                }
            }
            let mut rows = vec![header(&[
                "detector",
                "episode",
                "caught",
                "first alert after (median / worst)",
                "highest score by splice day",
                "largest day-to-day swing",
                "false alerts/day",
            ])];
            for det in &order {
                let fp = fp_days
                    .get(det)
                    .map_or(0.0, |v| v.iter().sum::<f64>() / v.len().max(1) as f64);
                for ((d, kind), outs) in results.iter().filter(|((d, _), _)| d == det) {
                    let caught = outs.iter().filter(|o| o.delay_ms.is_some()).count();
                    let mut delays: Vec<i64> = outs.iter().filter_map(|o| o.delay_ms).collect();
                    delays.sort_unstable();
                    let scores: Vec<Option<f64>> = outs.iter().map(|o| o.max_score).collect();
                    rows.push(vec![
                        d.clone(),
                        (*kind).to_owned(),
                        format!("{caught}/{}", outs.len()),
                        if delays.is_empty() {
                            "-".into()
                        } else {
                            format!(
                                "{} / {}",
                                duration(delays[delays.len() / 2]),
                                duration(*delays.last().unwrap_or(&0))
                            )
                        },
                        scores_cell(&scores),
                        swing(&scores).map_or("-".into(), |s| format!("{s:.1}")),
                        format!("{fp:.2}"),
                    ]);
                    summary.caught(&name, kind, d, format!("{caught}/{}", outs.len()));
                    summary.false_alerts(&name, d, format!("{fp:.2}"));
                }
            }
            println!(
                "Spliced on days {} at {:02}:00 UTC.\n",
                days.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                variant.hour as u32
            );
            print_table(&rows);
        }
    }
    summary.print();
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// The closing tables: splice days caught, and false alerts per day, per variant and detector.
#[derive(Default)]
struct Summary {
    detectors: Vec<String>,
    caught: Vec<((String, String), BTreeMap<String, String>)>,
    false_alerts: Vec<(String, BTreeMap<String, String>)>,
}

impl Summary {
    fn detector(&mut self, name: &str) {
        if !self.detectors.iter().any(|d| d == name) {
            self.detectors.push(name.to_owned());
        }
    }

    fn caught(&mut self, variant: &str, episode: &str, detector: &str, cell: String) {
        self.detector(detector);
        let key = (variant.to_owned(), episode.to_owned());
        match self.caught.iter_mut().find(|(k, _)| *k == key) {
            Some((_, row)) => {
                row.insert(detector.to_owned(), cell);
            }
            None => self
                .caught
                .push((key, BTreeMap::from([(detector.to_owned(), cell)]))),
        }
    }

    fn false_alerts(&mut self, variant: &str, detector: &str, cell: String) {
        self.detector(detector);
        match self.false_alerts.iter_mut().find(|(k, _)| k == variant) {
            Some((_, row)) => {
                row.insert(detector.to_owned(), cell);
            }
            None => self.false_alerts.push((
                variant.to_owned(),
                BTreeMap::from([(detector.to_owned(), cell)]),
            )),
        }
    }

    fn print(&self) {
        let cell =
            |row: &BTreeMap<String, String>, d: &String| row.get(d).cloned().unwrap_or_default();
        println!("## Summary: splice days on which the episode was caught\n");
        let mut head = vec!["variant".to_owned(), "episode".to_owned()];
        head.extend(self.detectors.iter().cloned());
        let mut rows = vec![head];
        for ((variant, episode), row) in &self.caught {
            let mut r = vec![variant.clone(), episode.clone()];
            r.extend(self.detectors.iter().map(|d| cell(row, d)));
            rows.push(r);
        }
        print_table(&rows);
        println!("## Summary: false alerts per day (benign days; mean over the splice runs)\n");
        let mut head = vec!["variant".to_owned()];
        head.extend(self.detectors.iter().cloned());
        let mut rows = vec![head];
        for (variant, row) in &self.false_alerts {
            let mut r = vec![variant.clone()];
            r.extend(self.detectors.iter().map(|d| cell(row, d)));
            rows.push(r);
        }
        print_table(&rows);
    }
}

fn geo_path() -> PathBuf {
    PathBuf::from(REPO).join("data/geo/geo-whois-asn-country.mmdb")
}

/// The detector's configuration: the repository's rules and GeoIP database, default models.
fn detector_config() -> String {
    serde_json::json!({
        "rules": [PathBuf::from(REPO).join("rules")],
        "geoip": {"database": geo_path()},
    })
    .to_string()
}

/// Which job a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Rare,
    Bytes,
}

/// One job's score of one event, with the event's episode.
#[derive(Debug, Clone, Copy)]
struct Rec {
    kind: JobKind,
    time_ms: i64,
    key: u32,
    bucket: i64,
    score: f64,
    learning: bool,
    flagged: bool,
    value: f64,
    episode: Option<EpisodeId>,
}

/// What one run of the detector over a scenario gave.
struct RunOut {
    recs: Vec<Rec>,
    end_ms: i64,
}

impl RunOut {
    fn of(&self, kind: JobKind) -> impl Iterator<Item = &Rec> {
        self.recs.iter().filter(move |r| r.kind == kind)
    }

    /// When the job's learning period ended (its first score that may flag).
    fn learning_end(&self, kind: JobKind) -> i64 {
        self.of(kind)
            .find(|r| !r.learning)
            .map_or(i64::MAX, |r| r.time_ms)
    }

    /// The values a job saw (countries for the rare job).
    fn subjects(&self, kind: JobKind, interner: &Interner) -> HashSet<String> {
        let keys: HashSet<u32> = self.of(kind).map(|r| r.key).collect();
        interner
            .names()
            .filter(|(_, id)| keys.contains(id))
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// Runs a fresh detector over the base with the episodes spliced in.
fn run(base: &Base, episodes: &[Episode], interner: &mut Interner) -> Result<RunOut> {
    let options = BuildOptions {
        score_records: true,
        ..BuildOptions::default()
    };
    let mut detector = Detector::build(&detector_config(), options)
        .map_err(|e| anyhow::anyhow!("building the detector: {e}"))?;
    let mut recs = Vec::new();
    let events = scenario::merged(base, episodes);
    for batch in events.chunks(BATCH) {
        // The host's clock: the batch arrives when its last event happened.
        let now_ms = batch.last().map_or(0, |e| e.time_ms);
        detector.process(batch.iter().map(|e| e.line.as_str()), now_ms);
        for r in detector.take_scores() {
            let kind = match r.function.as_str() {
                "rare" => JobKind::Rare,
                _ => JobKind::Bytes,
            };
            recs.push(Rec {
                kind,
                time_ms: r.time_ms,
                key: interner.id(r.subject_value.as_str()),
                bucket: r.bucket_start_ms,
                score: r.score,
                learning: r.learning,
                flagged: r.flagged,
                value: r.value,
                episode: batch.get(r.event as usize).and_then(|e| e.episode),
            });
        }
    }
    Ok(RunOut {
        recs,
        end_ms: events.last().map_or(0, |e| e.time_ms),
    })
}

/// One detector's decisions on a run, and from when its false alerts count.
struct DetectorOut {
    name: String,
    decisions: Vec<Decision>,
    from_ms: i64,
}

impl DetectorOut {
    fn days(&self, end_ms: i64) -> f64 {
        (end_ms - self.from_ms).max(0) as f64 / DAY_MS as f64
    }
}

/// The two jobs at their rules' threshold, and the simple rules on the same events.
fn detectors(out: &RunOut) -> Vec<DetectorOut> {
    let model = |kind: JobKind, name: &str| -> DetectorOut {
        DetectorOut {
            name: name.to_owned(),
            decisions: out
                .of(kind)
                .map(|r| Decision {
                    time_ms: r.time_ms,
                    key: r.key,
                    bucket: r.bucket,
                    flagged: r.flagged,
                    episode: r.episode,
                    score: (!r.learning).then_some(r.score),
                })
                .collect(),
            from_ms: out.learning_end(kind),
        }
    };
    let seen = |kind: JobKind| -> Vec<Seen> {
        out.of(kind)
            .map(|r| Seen {
                time_ms: r.time_ms,
                key: r.key,
                value: r.value,
                episode: r.episode,
            })
            .collect()
    };
    let rare_end = out.learning_end(JobKind::Rare);
    let bytes_end = out.learning_end(JobKind::Bytes);
    let mut list = vec![
        model(JobKind::Rare, "egresswatch country"),
        DetectorOut {
            name: "new country (7 d)".into(),
            decisions: score::new_value_rule(
                &seen(JobKind::Rare),
                7 * DAY_MS,
                rare_end,
                COUNTRY_BUCKET_MS,
            ),
            from_ms: rare_end,
        },
        model(JobKind::Bytes, "egresswatch bytes"),
    ];
    let bytes = seen(JobKind::Bytes);
    for (threshold, label) in FIXED_BYTES {
        list.push(DetectorOut {
            name: format!("fixed {label}"),
            decisions: score::fixed_sum_rule(&bytes, BYTES_BUCKET_MS, threshold, bytes_end),
            from_ms: bytes_end,
        });
    }
    list
}

/// Prints the false alerts of one detector, with the score of the alerting event.
fn list_false_alerts(base: &Base, det: &DetectorOut, alerts: &[score::Alert], interner: &Interner) {
    for a in alerts
        .iter()
        .filter(|a| a.episode.is_none() && a.time_ms >= det.from_ms)
    {
        let score = det
            .decisions
            .iter()
            .find(|d| d.flagged && d.key == a.key && d.bucket == a.bucket)
            .and_then(|d| d.score);
        println!(
            "- {} {}: {} ({} events{})",
            day_label(base, a.time_ms),
            det.name,
            interner.name(a.key),
            a.events,
            score.map_or(String::new(), |s| format!(", score {s:.1}"))
        );
    }
    println!();
}

/// One splice day's result for one detector and episode.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    delay_ms: Option<i64>,
    max_score: Option<f64>,
}

/// A way to attack a base, spliced on each day after the relevant job's learning period.
struct Variant {
    name: String,
    about: String,
    /// The job whose learning period decides the splice days.
    after: JobKind,
    /// Hour of the day (UTC) of the splice.
    hour: f64,
    /// How long before that hour the variant's first event is (decoys before a C2).
    lead_ms: i64,
    build: Splicer,
}

/// Builds a variant's episodes for a splice day.
type Splicer = Box<dyn Fn(&Base, usize) -> Vec<Episode>>;

/// Public addresses, one per country, found in the GeoIP database: for decoys.
fn country_addresses(geo: &egresswatch_plugin::geo::GeoDb) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in 1u8..=223 {
        for b in (0u8..=255).step_by(4) {
            let ip = IpAddr::from([a, b, 1, 1]);
            if !egresswatch_plugin::net::is_public_destination(ip) {
                continue;
            }
            if let Some(c) = geo.country(ip) {
                out.entry(c.name().to_owned())
                    .or_insert_with(|| ip.to_string());
            }
        }
    }
    out
}

fn variants(
    base: &Base,
    attacks: &Attacks,
    geo: &egresswatch_plugin::geo::GeoDb,
    seen_countries: &HashSet<String>,
) -> Vec<Variant> {
    let c2 = attacks.c2.clone();
    let upload = attacks.upload.clone();
    let remcos = attacks.remcos.clone();
    let simda = attacks.simda.clone();
    // Never-seen countries for decoys, in name order; Algeria is the C2's own.
    let decoys: Vec<(String, String)> = country_addresses(geo)
        .into_iter()
        .filter(|(c, _)| !seen_countries.contains(c) && c != "Algeria")
        .collect();
    // Never-seen public destinations for synthetic uploads.
    let fresh: Vec<String> = (1u8..=250)
        .map(|i| format!("185.{i}.77.{i}"))
        .filter(|ip| !base.destinations.contains(ip))
        .take(4)
        .collect();
    let mut v = vec![
        Variant {
            name: "c2-001".into(),
            about: "The real NjRAT C2 of capture 001 (244 flows labelled Malicious: 237 SYN \
                    flows to 41.108.179.197:1177, Algeria, over 50 minutes)."
                .into(),
            after: JobKind::Rare,
            hour: 10.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                vec![scenario::splice(
                    b,
                    &c2,
                    "192.168.1.115",
                    b.at(d, 10.0),
                    1,
                    "c2",
                )]
            }),
        },
        Variant {
            name: "upload-003".into(),
            about: "The real RAT upload of capture 003 (12 flows to 147.32.83.234:1337, \
                    43.8 MB of IP bytes in 40 minutes)."
                .into(),
            after: JobKind::Bytes,
            hour: 14.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                vec![scenario::splice(
                    b,
                    &upload,
                    "10.8.0.61",
                    b.at(d, 14.0),
                    1,
                    "upload",
                )]
            }),
        },
    ];
    let decoy_c2 = attacks.c2.clone();
    for n in [9usize, 20] {
        let picked: Vec<(String, String)> = decoys.iter().take(n).cloned().collect();
        let c2 = decoy_c2.clone();
        v.push(Variant {
            name: format!("decoys-{n}+c2-001"),
            about: format!(
                "Poisoning: {n} never-seen countries ({}...) contacted once each over the 12 h \
                 before the real C2 of capture 001.",
                picked
                    .iter()
                    .take(3)
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            after: JobKind::Rare,
            hour: 10.0,
            lead_ms: 12 * HOUR_MS,
            build: Box::new(move |b, d| {
                let start = b.at(d, 10.0);
                let host = b.host_at(start).to_owned();
                let step = 12 * HOUR_MS / picked.len().max(1) as i64;
                let decoys = Episode {
                    id: 2,
                    kind: "decoys",
                    must_catch: false,
                    start_ms: start - 12 * HOUR_MS,
                    events: picked
                        .iter()
                        .enumerate()
                        .map(|(i, (_, ip))| {
                            scenario::flow_event(
                                start - 12 * HOUR_MS + i as i64 * step,
                                &host,
                                ip,
                                443,
                                2_000.0,
                                2,
                            )
                        })
                        .collect(),
                };
                vec![
                    decoys,
                    scenario::splice(b, &c2, "192.168.1.115", start, 1, "c2"),
                ]
            }),
        });
    }
    for (label, poison_bytes) in [("huge-flow", 10e9), ("forged-flow", 1e15)] {
        let fresh = fresh.clone();
        v.push(Variant {
            name: format!("{label}+uploads"),
            about: format!(
                "Poisoning: one flow of {} to a new IP at 06:00, then a 5 GB upload (one flow) \
                 to another new IP at 12:00 and 3 GB in 15 chunks to a third at 15:00.",
                if poison_bytes > 1e12 {
                    "source.bytes 1e15 (forged)"
                } else {
                    "10 GB"
                }
            ),
            after: JobKind::Bytes,
            hour: 6.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                let host = b.host_at(b.at(d, 6.0)).to_owned();
                let poison = Episode {
                    id: 2,
                    kind: "poison",
                    must_catch: false,
                    start_ms: b.at(d, 6.0),
                    events: vec![scenario::flow_event(
                        b.at(d, 6.0),
                        &host,
                        &fresh[0],
                        443,
                        poison_bytes,
                        2,
                    )],
                };
                let single = Episode {
                    id: 3,
                    kind: "5 GB upload",
                    must_catch: true,
                    start_ms: b.at(d, 12.0),
                    events: vec![scenario::flow_event(
                        b.at(d, 12.0),
                        &host,
                        &fresh[1],
                        443,
                        5e9,
                        3,
                    )],
                };
                let chunks = Episode {
                    id: 4,
                    kind: "3 GB in 15 chunks",
                    must_catch: true,
                    start_ms: b.at(d, 15.0),
                    events: (0..15)
                        .map(|i| {
                            scenario::flow_event(
                                b.at(d, 15.0) + i * 60_000,
                                &host,
                                &fresh[2],
                                443,
                                2e8,
                                4,
                            )
                        })
                        .collect(),
                };
                vec![poison, single, chunks]
            }),
        });
    }
    if base.name == "office" {
        v.push(Variant {
            name: "slips-test18-remcos".into(),
            about: "Slips test18 (CTU-SME-11): 719 flows labelled Malicious, RemcosRAT SYN \
                    attempts to 66.63.168.35:5888 (United States), 8 minutes, no payload."
                .into(),
            after: JobKind::Rare,
            hour: 11.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                vec![scenario::splice(
                    b,
                    &remcos,
                    "192.168.1.107",
                    b.at(d, 11.0),
                    1,
                    "remcos",
                )]
            }),
        });
        v.push(Variant {
            name: "slips-test5-simda".into(),
            about: "Slips test5: 277 flows labelled flow=Malware* of the Simda bot (DGA HTTP to \
                    US/DE/FR/IE hosts, DNS to 8.8.8.8), 6 minutes."
                .into(),
            after: JobKind::Rare,
            hour: 12.0,
            lead_ms: 0,
            build: Box::new(move |b, d| {
                vec![scenario::splice(
                    b,
                    &simda,
                    "10.0.2.15",
                    b.at(d, 12.0),
                    1,
                    "simda",
                )]
            }),
        });
    }
    v
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// A Markdown table (readable as text too).
fn print_table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else {
        return;
    };
    let widths: Vec<usize> = (0..first.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", cells.join(" | "))
    };
    println!("{}", line(first));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in &rows[1..] {
        println!("{}", line(r));
    }
    println!();
}

fn per_day(n: usize, days: f64) -> String {
    if days <= 0.0 {
        "-".into()
    } else {
        format!("{:.2}", n as f64 / days)
    }
}

fn day_label(base: &Base, ms: i64) -> String {
    if ms == i64::MAX {
        return "never".into();
    }
    let day = (ms - base.day0_ms).div_euclid(DAY_MS);
    let rem = (ms - base.day0_ms).rem_euclid(DAY_MS);
    format!("day {day} {:02}:{:02}", rem / HOUR_MS, rem / 60_000 % 60)
}

fn duration(ms: i64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else {
        format!("{:.1} h", s as f64 / 3600.0)
    }
}

fn scores_cell(scores: &[Option<f64>]) -> String {
    if scores.iter().all(Option::is_none) {
        return "-".into();
    }
    scores
        .iter()
        .map(|s| s.map_or("-".into(), |s| format!("{s:.0}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Largest difference between the highest scores of neighbouring splice days.
fn swing(scores: &[Option<f64>]) -> Option<f64> {
    scores
        .windows(2)
        .filter_map(|w| Some((w[0]? - w[1]?).abs()))
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swing_is_the_largest_neighbour_difference() {
        assert_eq!(swing(&[Some(80.0), Some(95.0), Some(90.0)]), Some(15.0));
        assert_eq!(swing(&[Some(80.0), None, Some(10.0)]), None);
        assert_eq!(scores_cell(&[Some(80.4), None]), "80 -");
        assert_eq!(duration(90_000), "1 min");
    }
}
