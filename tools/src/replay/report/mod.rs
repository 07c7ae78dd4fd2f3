//! What replay reports: the summary table (stdout) and a self-contained HTML report with one
//! inline SVG plot per rule (no script, no external resources).
//!
//! Each plot shows, over event time, the score of every event the rule's job scored after its
//! learning period (grey; points that fall on the same pixel are drawn once), the threshold
//! (red dashed line), the flagged events (red), the labelled attack events when labels were
//! given (blue rings), the learning period (shaded), and below it a bar strip with the number
//! of events the job read per time bin.

mod grid;
mod html;
mod svg;

use std::fmt::Write as _;

use super::quality::{self, Quality};
use egresswatch_common::human::{self, Align};
use egresswatch_common::time;

pub(crate) use grid::{Counts, Scatter};
pub(crate) use html::html;

/// A value that flagged events of a rule had, with how often.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopValue {
    /// Field the value is of (the job's subject: country, destination IP, ...).
    pub(crate) field: String,
    /// The value.
    pub(crate) value: String,
    /// Flagged events with it.
    pub(crate) count: u64,
    /// Highest score among them.
    pub(crate) max_score: f64,
    /// The reason of the highest-scoring one.
    pub(crate) reason: String,
}

/// What replay found for one rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSummary {
    /// Rule name.
    pub(crate) name: String,
    /// Job that scored its events.
    pub(crate) job_id: String,
    /// The threshold applied (the rule's, or `--threshold`).
    pub(crate) threshold: f64,
    /// Events the job read (its filters passed).
    pub(crate) seen: u64,
    /// Events scored after the learning period.
    pub(crate) scored: u64,
    /// Events at or above the threshold.
    pub flagged: u64,
    /// Flagged per calendar day.
    pub(crate) per_day: f64,
    /// Most frequent values among flagged events.
    pub(crate) top: Vec<TopValue>,
    /// Scored events, for the plot.
    pub(crate) scores: Scatter,
    /// The events the job read over time (for the count strip).
    pub(crate) seen_over_time: Counts,
    /// Time of the first event scored after learning.
    pub(crate) learning_end_ms: Option<i64>,
}

/// Everything replay reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayReport {
    /// Input files, with the format each was read as.
    pub(crate) inputs: Vec<String>,
    /// Events replayed.
    pub events: u64,
    /// First and last event time.
    pub(crate) span_ms: Option<(i64, i64)>,
    /// Calendar days (UTC) the input spans.
    pub(crate) days: u64,
    /// Per rule.
    pub(crate) rules: Vec<RuleSummary>,
    /// Attack kinds and the side-by-side quality rows, when labels were given.
    pub quality: Option<(Vec<String>, Vec<Quality>)>,
    /// Notes: skipped lines, rules that could not run, baselines' settings.
    pub(crate) notes: Vec<String>,
}

/// Left-aligned first column, right-aligned others, two spaces apart.
fn text_table(rows: &[Vec<String>]) -> String {
    human::table(rows, &[Align::Left, Align::Right])
}

fn fmt_threshold(t: f64) -> String {
    if t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        format!("{t}")
    }
}

/// The rows of the summary table, header first.
pub(crate) fn summary_rows(report: &ReplayReport) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "rule",
        "job",
        "threshold",
        "seen",
        "scored",
        "flagged",
        "per day",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect::<Vec<_>>()];
    for r in &report.rules {
        rows.push(vec![
            r.name.clone(),
            r.job_id.clone(),
            fmt_threshold(r.threshold),
            human::count(r.seen),
            human::count(r.scored),
            human::count(r.flagged),
            format!("{:.1}", r.per_day),
        ]);
    }
    rows
}

/// The plain-text summary printed on stdout.
pub(crate) fn summary_text(report: &ReplayReport) -> String {
    let mut out = String::new();
    let span = match report.span_ms {
        Some((a, b)) => format!(
            "{} -> {} UTC, {} day(s)",
            time::format_minutes(a),
            time::format_minutes(b),
            report.days
        ),
        None => "no event time".to_owned(),
    };
    let _ = writeln!(
        out,
        "replayed {} events ({span})",
        human::count(report.events)
    );
    for input in shown_inputs(&report.inputs) {
        let _ = writeln!(out, "  input: {input}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out.push('\n');
    out.push_str(&text_table(&summary_rows(report)));
    for r in &report.rules {
        if r.top.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\ntop flagged values, {}:", r.name);
        for t in &r.top {
            let _ = writeln!(
                out,
                "  {} {}: {} event(s), max score {:.1}: {}",
                t.field,
                t.value,
                human::count(t.count),
                t.max_score,
                t.reason
            );
        }
    }
    if let Some((kinds, rows)) = &report.quality {
        out.push_str("\ndetection quality (labels):\n");
        out.push_str(&quality::table(rows, kinds));
    }
    out
}

/// The inputs to list: all of up to 6, else the first 3, a count, and the last.
fn shown_inputs(inputs: &[String]) -> Vec<String> {
    if inputs.len() <= 6 {
        return inputs.to_vec();
    }
    let mut shown = inputs[..3].to_vec();
    shown.push(format!("... {} more ...", inputs.len() - 4));
    shown.push(inputs[inputs.len() - 1].clone());
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_counts() {
        assert_eq!(human::count(1_234_567), "1,234,567");
        assert_eq!(human::count(12), "12");
        let t = text_table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "1".into()],
        ]);
        assert_eq!(t, "a    bb\nccc   1\n");
    }
}
