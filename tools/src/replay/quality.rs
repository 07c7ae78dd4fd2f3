//! Detection quality on labelled traffic, and the two baselines a user would otherwise deploy.
//!
//! Labels are NDJSON as `egresswatch generate --labels` writes them: one line per attack event,
//! `{"line": N, "attack": "c2" | "upload" | "slow_exfil", ...}`, `N` being the 1-based line of
//! the input (counted across the inputs in the order given). Every other event is benign.
//!
//! For each detector (each rule, and each baseline), per alert and per episode first:
//! - **alerts**: what an analyst gets. A rule's alert is its first flagged event of an episode
//!   (the plugin's alert identity: one per rule, key and bucket by default; its suppressed
//!   followers belong to it); a baseline's, one per value and 3 h bucket. An alert is *true*
//!   when any of its flagged events is an attack. **Alert precision**: true alerts / alerts;
//!   **false alerts per day**: false alerts / calendar days (UTC) the input spans.
//! - **episodes caught**: an episode is one attack kind against one destination (the labels'
//!   `attack` and `destination.ip`); it is caught when some alert holds one of its events.
//!
//! Then per event:
//! - **precision**: flagged attack events / flagged events;
//! - **recall**: flagged attack events / attack events, and per attack kind how many of its
//!   events were flagged (`caught` when at least one was);
//! - **flagged per day**: flagged events / calendar days.
//!
//! Baselines, on the same events the corresponding job reads (same filters), after the same
//! warm-up as the job's learning period:
//! - **new country** (Elastic's *new terms* rule on `destination.geo.country_name`): flags an
//!   event whose country was not seen in the previous `N` days;
//! - **fixed bytes**: sums `source.bytes` per `destination.ip` per epoch-aligned 3 h bucket and
//!   flags every event from the one that takes the sum to the threshold on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use egresswatch_common::human::{self, Align};
use egresswatch_common::names::ATTACK_KINDS;

/// Labelled attack events by input line.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Attack kind by 1-based input line.
    pub(crate) by_line: HashMap<u64, String>,
    /// Episode (index into `episodes`) by input line.
    episode_of: HashMap<u64, usize>,
    /// Episodes: (attack kind, destination), in order of first appearance.
    episodes: Vec<(String, Option<String>)>,
}

#[derive(Deserialize)]
struct LabelLine {
    line: u64,
    attack: String,
    #[serde(rename = "destination.ip", default)]
    destination: Option<String>,
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
        let mut labels = Labels::default();
        let mut index: HashMap<(String, Option<String>), usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let label: LabelLine =
                serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            let key = (label.attack.clone(), label.destination);
            let episode = *index.entry(key.clone()).or_insert_with(|| {
                labels.episodes.push(key);
                labels.episodes.len() - 1
            });
            labels.episode_of.insert(label.line, episode);
            labels.by_line.insert(label.line, label.attack);
        }
        Ok(labels)
    }

    /// Attack episodes (one attack kind against one destination).
    pub fn episodes(&self) -> usize {
        self.episodes.len()
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
    pub(crate) name: String,
    /// Alerts (first flagged events of episodes; see the module docs).
    pub alerts: u64,
    /// Alerts holding an attack event.
    pub true_alerts: u64,
    /// `true_alerts / alerts`, none without alerts.
    pub alert_precision: Option<f64>,
    /// Alerts without an attack event, per calendar day.
    pub false_alerts_per_day: f64,
    /// Attack episodes some alert holds an event of.
    pub episodes_caught: u64,
    /// Attack episodes in the labels.
    pub episodes: u64,
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
    pub flagged_per_day: f64,
}

/// The flagged events of one detector, counted as they come (each event once: the caller
/// reports an event at most once per detector). Memory: one entry per alert.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    flagged: u64,
    per_kind: BTreeMap<String, u64>,
    /// Per alert (by its identity): whether it holds an attack event.
    alerts: HashMap<String, bool>,
    caught: BTreeSet<usize>,
}

impl Tally {
    /// Counts one flagged event, by its input line.
    pub fn add(&mut self, line: u64, labels: &Labels) {
        self.flagged += 1;
        if let Some(kind) = labels.by_line.get(&line) {
            *self.per_kind.entry(kind.clone()).or_default() += 1;
        }
    }

    /// Counts one flagged event that is, or belongs to, the alert `alert` (any text naming it:
    /// the plugin's alert id, or a baseline's value and bucket), besides [`Tally::add`].
    pub fn add_to_alert(&mut self, line: u64, alert: &str, labels: &Labels) {
        let attack = labels.episode_of.get(&line);
        if let Some(&episode) = attack {
            self.caught.insert(episode);
        }
        match self.alerts.get_mut(alert) {
            Some(true_alert) => *true_alert |= attack.is_some(),
            None => {
                self.alerts.insert(alert.to_owned(), attack.is_some());
            }
        }
    }

    /// The quality of what was counted.
    pub fn quality(&self, name: &str, labels: &Labels, days: f64) -> Quality {
        let tp: u64 = self.per_kind.values().sum();
        let n = self.flagged;
        let attacks = labels.by_line.len() as u64;
        let per_kind = labels
            .kinds()
            .into_iter()
            .map(|kind| {
                let total = labels.by_line.values().filter(|v| **v == kind).count() as u64;
                let caught = self.per_kind.get(&kind).copied().unwrap_or(0);
                (kind, caught, total)
            })
            .collect();
        let alerts = self.alerts.len() as u64;
        let true_alerts = self.alerts.values().filter(|t| **t).count() as u64;
        Quality {
            name: name.to_owned(),
            alerts,
            true_alerts,
            alert_precision: (alerts > 0).then(|| true_alerts as f64 / alerts as f64),
            false_alerts_per_day: (alerts - true_alerts) as f64 / days.max(1.0),
            episodes_caught: self.caught.len() as u64,
            episodes: labels.episodes.len() as u64,
            flagged: n,
            true_positives: tp,
            false_positives: n - tp,
            precision: (n > 0).then(|| tp as f64 / n as f64),
            recall: (attacks > 0).then(|| tp as f64 / attacks as f64),
            per_kind,
            flagged_per_day: n as f64 / days.max(1.0),
        }
    }
}

/// Baseline "country first seen in the last `window_days` days" (Elastic's *new terms* rule on
/// `destination.geo.country_name`), fed events in time order. Memory: one entry per country.
#[derive(Debug, Clone)]
pub struct NewCountry {
    window_ms: i64,
    last_seen: HashMap<String, i64>,
}

impl NewCountry {
    /// A baseline with this window.
    pub fn new(window_days: f64) -> NewCountry {
        NewCountry {
            window_ms: (window_days * 86_400_000.0) as i64,
            last_seen: HashMap::new(),
        }
    }

    /// Reads one event; true when it flags it. Events while `warming_up` only build history.
    pub fn observe(&mut self, time_ms: i64, country: &str, warming_up: bool) -> bool {
        let new = self
            .last_seen
            .get(country)
            .is_none_or(|&t| time_ms - t > self.window_ms);
        match self.last_seen.get_mut(country) {
            Some(t) => *t = time_ms,
            None => {
                self.last_seen.insert(country.to_owned(), time_ms);
            }
        }
        new && !warming_up
    }
}

/// Baseline "at least `threshold` bytes to one destination in one `bucket_ms` bucket" (every
/// event from the one that reaches it, in that bucket), fed events in time order. Memory: the
/// destinations of the newest bucket and the one before it (for events a little late).
#[derive(Debug, Clone)]
pub struct FixedBytes {
    bucket_ms: i64,
    threshold: f64,
    buckets: BTreeMap<i64, HashMap<String, f64>>,
}

impl FixedBytes {
    /// A baseline with this bucket and threshold.
    pub fn new(bucket_ms: i64, threshold: f64) -> FixedBytes {
        FixedBytes {
            bucket_ms,
            threshold,
            buckets: BTreeMap::new(),
        }
    }

    /// Reads one event; true when it flags it. Events while `warming_up` only add up.
    pub fn observe(
        &mut self,
        time_ms: i64,
        destination: &str,
        bytes: f64,
        warming_up: bool,
    ) -> bool {
        let bucket = time_ms.div_euclid(self.bucket_ms);
        let sums = self.buckets.entry(bucket).or_default();
        let total = match sums.get_mut(destination) {
            Some(sum) => {
                *sum += bytes;
                *sum
            }
            None => {
                sums.insert(destination.to_owned(), bytes);
                bytes
            }
        };
        let flagged = total >= self.threshold && !warming_up;
        while self.buckets.len() > 2 {
            self.buckets.pop_first();
        }
        flagged
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// The per-kind cell: `12/400 ✓` (flagged/total, caught or not).
pub(crate) fn kind_cell(flagged: u64, total: u64) -> String {
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
pub(crate) fn headers(kinds: &[String]) -> Vec<String> {
    let mut h: Vec<String> = [
        "detector",
        "alerts",
        "true",
        "alert precision",
        "false alerts/day",
        "episodes caught",
        "flagged",
        "TP",
        "FP",
        "precision",
        "recall",
        "flagged/day",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    h.extend(kinds.iter().cloned());
    h
}

/// The cells of one row, matching [`headers`].
pub(crate) fn cells(q: &Quality) -> Vec<String> {
    let mut row = vec![
        q.name.clone(),
        q.alerts.to_string(),
        q.true_alerts.to_string(),
        pct(q.alert_precision),
        format!("{:.2}", q.false_alerts_per_day),
        format!("{}/{}", q.episodes_caught, q.episodes),
        q.flagged.to_string(),
        q.true_positives.to_string(),
        q.false_positives.to_string(),
        pct(q.precision),
        pct(q.recall),
        format!("{:.1}", q.flagged_per_day),
    ];
    row.extend(q.per_kind.iter().map(|(_, f, t)| kind_cell(*f, *t)));
    row
}

/// The side-by-side table, plain text.
pub fn table(rows: &[Quality], kinds: &[String]) -> String {
    let mut all = vec![headers(kinds)];
    all.extend(rows.iter().map(cells));
    human::table(&all, &[Align::Left, Align::Right])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_country_window() {
        let mut b = NewCountry::new(7.0);
        let day = |d: i64| d * 86_400_000;
        // Warm-up on day 0: US only builds history; FR on day 1 is new; US on day 2 is not;
        // FR on day 9 is 8 days later: new again, and once only.
        assert!(!b.observe(day(0), "US", true));
        assert!(b.observe(day(1), "FR", false));
        assert!(!b.observe(day(2), "US", false));
        assert!(b.observe(day(9), "FR", false));
        assert!(!b.observe(day(9), "FR", false));
    }
}
