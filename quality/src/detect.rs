//! One run of the detector over a scenario: the score records it gives, and the alerts per
//! detector drawn from them.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;

use crate::report::day_label;
use crate::scenario::{Base, Episode, DAY_MS};
use crate::score::{Decision, EpisodeId, Interner, Seen};
use crate::{scenario, score, BATCH, BYTES_BUCKET_MS, COUNTRY_BUCKET_MS, FIXED_BYTES, REPO};

pub fn geo_path() -> PathBuf {
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
pub enum JobKind {
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
pub struct RunOut {
    recs: Vec<Rec>,
    pub end_ms: i64,
}

impl RunOut {
    fn of(&self, kind: JobKind) -> impl Iterator<Item = &Rec> {
        self.recs.iter().filter(move |r| r.kind == kind)
    }

    /// When the job's learning period ended (its first score that may flag).
    pub fn learning_end(&self, kind: JobKind) -> i64 {
        self.of(kind)
            .find(|r| !r.learning)
            .map_or(i64::MAX, |r| r.time_ms)
    }

    /// The values a job saw (countries for the rare job).
    pub fn subjects(&self, kind: JobKind, interner: &Interner) -> HashSet<String> {
        let keys: HashSet<u32> = self.of(kind).map(|r| r.key).collect();
        interner
            .names()
            .filter(|(_, id)| keys.contains(id))
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// Runs a fresh detector over the base with the episodes spliced in.
pub fn run(base: &Base, episodes: &[Episode], interner: &mut Interner) -> Result<RunOut> {
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
pub struct DetectorOut {
    pub name: String,
    pub decisions: Vec<Decision>,
    pub from_ms: i64,
}

impl DetectorOut {
    pub fn days(&self, end_ms: i64) -> f64 {
        (end_ms - self.from_ms).max(0) as f64 / DAY_MS as f64
    }
}

/// The two jobs at their rules' threshold, and the simple rules on the same events.
pub fn detectors(out: &RunOut) -> Vec<DetectorOut> {
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
pub fn list_false_alerts(
    base: &Base,
    det: &DetectorOut,
    alerts: &[score::Alert],
    interner: &Interner,
) {
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
