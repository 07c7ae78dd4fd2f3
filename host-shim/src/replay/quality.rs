//! Detection quality on labelled traffic, and the two baselines a user would otherwise deploy.
//!
//! Labels are NDJSON as `egresswatch generate --labels` writes them: one line per attack event,
//! `{"line": N, "attack": "c2" | "upload" | "slow_exfil", ...}`, `N` being the 1-based line of
//! the input (counted across the inputs in the order given). Every other event is benign.
//!
//! For each detector (each rule, and each baseline):
//! - **precision**: flagged attack events / flagged events;
//! - **recall**: flagged attack events / attack events (event level), and per attack kind how
//!   many of its events were flagged (`caught` when at least one was: an analyst gets an alert);
//! - **alerts per day**: flagged events / calendar days (UTC) the input spans.
//!
//! Baselines, on the same events the corresponding job reads (same filters), after the same
//! warm-up as the job's learning period:
//! - **new country** (Elastic's *new terms* rule on `destination.geo.country_name`): flags an
//!   event whose country was not seen in the previous `N` days;
//! - **fixed bytes**: sums `source.bytes` per `destination.ip` per epoch-aligned 3 h bucket and
//!   flags every event from the one that takes the sum to the threshold on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Attack kinds, in report order.
pub const ATTACK_KINDS: [&str; 3] = ["c2", "upload", "slow_exfil"];

/// Labelled attack events by input line.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Attack kind by 1-based input line.
    pub by_line: HashMap<u64, String>,
}

#[derive(Deserialize)]
struct LabelLine {
    line: u64,
    attack: String,
}

impl Labels {
    /// Reads a labels file.
    pub fn load(path: &Path) -> Result<Labels> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading labels {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("labels file {}", path.display()))
    }

    /// Parses labels NDJSON.
    pub fn parse(text: &str) -> Result<Labels> {
        let mut by_line = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let label: LabelLine =
                serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            by_line.insert(label.line, label.attack);
        }
        Ok(Labels { by_line })
    }

    /// Attack kinds present, known kinds first.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = ATTACK_KINDS
            .iter()
            .filter(|k| self.by_line.values().any(|v| v == *k))
            .map(|k| (*k).to_owned())
            .collect();
        let mut others: Vec<String> = self
            .by_line
            .values()
            .filter(|v| !ATTACK_KINDS.contains(&v.as_str()))
            .cloned()
            .collect();
        others.sort();
        others.dedup();
        kinds.extend(others);
        kinds
    }
}

/// One detector's quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    /// Detector name.
    pub name: String,
    /// Flagged events.
    pub flagged: u64,
    /// Flagged events that are attacks.
    pub true_positives: u64,
    /// Flagged events that are benign.
    pub false_positives: u64,
    /// `tp / flagged`, none when nothing was flagged.
    pub precision: Option<f64>,
    /// `tp / attack events`, none without attack events.
    pub recall: Option<f64>,
    /// Per attack kind: (kind, flagged events of that kind, events of that kind).
    pub per_kind: Vec<(String, u64, u64)>,
    /// Flagged events per calendar day.
    pub alerts_per_day: f64,
}

/// Scores the flagged input lines of one detector against the labels.
pub fn score(name: &str, flagged_lines: &[u64], labels: &Labels, days: f64) -> Quality {
    let mut flagged: Vec<u64> = flagged_lines.to_vec();
    flagged.sort_unstable();
    flagged.dedup();
    let mut per: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tp = 0;
    for line in &flagged {
        if let Some(kind) = labels.by_line.get(line) {
            tp += 1;
            *per.entry(kind.as_str()).or_default() += 1;
        }
    }
    let n = flagged.len() as u64;
    let attacks = labels.by_line.len() as u64;
    let per_kind = labels
        .kinds()
        .into_iter()
        .map(|kind| {
            let total = labels.by_line.values().filter(|v| **v == kind).count() as u64;
            let caught = per.get(kind.as_str()).copied().unwrap_or(0);
            (kind, caught, total)
        })
        .collect();
    Quality {
        name: name.to_owned(),
        flagged: n,
        true_positives: tp,
        false_positives: n - tp,
        precision: (n > 0).then(|| tp as f64 / n as f64),
        recall: (attacks > 0).then(|| tp as f64 / attacks as f64),
        per_kind,
        alerts_per_day: n as f64 / days.max(1.0),
    }
}

/// An event the country baseline reads: time, input line, country.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryEvent {
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// 1-based input line.
    pub line: u64,
    /// `destination.geo.country_name`.
    pub country: String,
}

/// "Country first seen in the last `window_days` days": the input lines it flags. Events before
/// `warmup_end_ms` only build history. Events must be in time order.
pub fn baseline_new_country(
    events: &[CountryEvent],
    window_days: f64,
    warmup_end_ms: i64,
) -> Vec<u64> {
    let window_ms = (window_days * 86_400_000.0) as i64;
    let mut last_seen: HashMap<&str, i64> = HashMap::new();
    let mut flagged = Vec::new();
    for e in events {
        let new = last_seen
            .get(e.country.as_str())
            .is_none_or(|&t| e.time_ms - t > window_ms);
        if new && e.time_ms >= warmup_end_ms {
            flagged.push(e.line);
        }
        last_seen.insert(e.country.as_str(), e.time_ms);
    }
    flagged
}

/// An event the bytes baseline reads.
#[derive(Debug, Clone, PartialEq)]
pub struct BytesEvent {
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// 1-based input line.
    pub line: u64,
    /// `destination.ip`.
    pub destination: String,
    /// `source.bytes`.
    pub bytes: f64,
}

/// "More than `threshold` bytes to one destination in one `bucket_ms` bucket": the input lines
/// it flags (the event that reaches the threshold and every later one in that bucket).
pub fn baseline_bytes(
    events: &[BytesEvent],
    bucket_ms: i64,
    threshold: f64,
    warmup_end_ms: i64,
) -> Vec<u64> {
    let mut sums: HashMap<(&str, i64), f64> = HashMap::new();
    let mut flagged = Vec::new();
    for e in events {
        let bucket = e.time_ms.div_euclid(bucket_ms);
        let sum = sums.entry((e.destination.as_str(), bucket)).or_default();
        *sum += e.bytes;
        if *sum >= threshold && e.time_ms >= warmup_end_ms {
            flagged.push(e.line);
        }
    }
    flagged
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// The per-kind cell: `12/400 ✓` (flagged/total, caught or not).
pub fn kind_cell(flagged: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!(
            "{flagged}/{total} {}",
            if flagged > 0 { "caught" } else { "missed" }
        )
    }
}

/// Column headers of the quality table.
pub fn headers(kinds: &[String]) -> Vec<String> {
    let mut h: Vec<String> = [
        "detector",
        "flagged",
        "TP",
        "FP",
        "precision",
        "recall",
        "alerts/day",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    h.extend(kinds.iter().cloned());
    h
}

/// The cells of one row, matching [`headers`].
pub fn cells(q: &Quality) -> Vec<String> {
    let mut row = vec![
        q.name.clone(),
        q.flagged.to_string(),
        q.true_positives.to_string(),
        q.false_positives.to_string(),
        pct(q.precision),
        pct(q.recall),
        format!("{:.1}", q.alerts_per_day),
    ];
    row.extend(q.per_kind.iter().map(|(_, f, t)| kind_cell(*f, *t)));
    row
}

/// The side-by-side table, plain text.
pub fn table(rows: &[Quality], kinds: &[String]) -> String {
    let mut all = vec![headers(kinds)];
    all.extend(rows.iter().map(cells));
    super::report::text_table(&all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_country_window() {
        let ev = |t: i64, line: u64, c: &str| CountryEvent {
            time_ms: t * 86_400_000,
            line,
            country: c.to_owned(),
        };
        let events = [
            ev(0, 1, "US"),
            ev(1, 2, "FR"),
            ev(2, 3, "US"),
            ev(9, 4, "FR"),
            ev(9, 5, "FR"),
        ];
        // warm-up ends at day 1: FR on day 1 is new; FR on day 9 is 8 days later: new again.
        assert_eq!(baseline_new_country(&events, 7.0, 86_400_000), vec![2, 4]);
    }
}
