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
mod detect;
mod report;
mod scenario;
mod score;
mod variant;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;

use crate::data::Data;
use crate::detect::{detectors, geo_path, list_false_alerts, run, JobKind};
use crate::report::{
    day_label, duration, header, per_day, print_table, scores_cell, swing, Summary,
};
use crate::scenario::{Attacks, HOUR_MS};
use crate::score::Interner;
use crate::variant::{variants, Outcome};

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
