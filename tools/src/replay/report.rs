//! What replay reports: the summary table (stdout) and a self-contained HTML report with one
//! inline SVG plot per rule (no script, no external resources).
//!
//! Each plot shows, over event time, the score of every event the rule's job scored after its
//! learning period (grey; points that fall on the same pixel are drawn once), the threshold
//! (red dashed line), the flagged events (red), the labelled attack events when labels were
//! given (blue rings), the learning period (shaded), and below it a bar strip with the number
//! of events the job read per time bin.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::quality::{self, Quality};
use egresswatch_common::human::{self, Align};
use egresswatch_common::time;

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

/// Most time bins a plot keeps; past that, bins double in length (memory stays flat however
/// many events are replayed).
const MAX_TIME_BINS: usize = 1024;

/// A time axis of equal bins that doubles its bin length whenever an event falls past its last
/// bin, starting from the first event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Timeline {
    origin: Option<i64>,
    /// Bin length in ms (0 until the first event).
    bin_ms: i64,
}

impl Timeline {
    /// The bin of `time_ms` and by how many doublings the axis grew to hold it.
    fn place(&mut self, time_ms: i64) -> (usize, u32) {
        let origin = *self.origin.get_or_insert(time_ms);
        if self.bin_ms == 0 {
            self.bin_ms = 1000;
        }
        let offset = (time_ms - origin).max(0);
        let mut doublings = 0;
        while offset / self.bin_ms >= MAX_TIME_BINS as i64 {
            self.bin_ms *= 2;
            doublings += 1;
        }
        ((offset / self.bin_ms) as usize, doublings)
    }

    /// The middle of bin `i`, epoch ms.
    fn center(&self, i: usize) -> i64 {
        self.origin.unwrap_or(0) + i as i64 * self.bin_ms + self.bin_ms / 2
    }
}

/// What a score plot shows of a rule's scored events: which (time bin, whole score, kind)
/// cells hold at least one event. Kinds: 0 scored, 1 labelled attack, 2 flagged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scatter {
    timeline: Timeline,
    cells: HashSet<(u32, u8, u8)>,
}

impl Scatter {
    /// Adds one scored event.
    pub fn add(&mut self, time_ms: i64, score: f64, flagged: bool, attack: bool) {
        let (bin, doublings) = self.timeline.place(time_ms);
        if doublings > 0 {
            self.cells = self
                .cells
                .drain()
                .map(|(b, s, k)| (b >> doublings, s, k))
                .collect();
        }
        let score = score.clamp(0.0, 100.0).round() as u8;
        let bin = bin as u32;
        self.cells.insert((bin, score, u8::from(flagged) * 2));
        if attack {
            self.cells.insert((bin, score, 1));
        }
    }

    /// The cells as (time, score, kind), for drawing.
    fn points(&self) -> impl Iterator<Item = (i64, f64, u8)> + '_ {
        self.cells
            .iter()
            .map(|&(b, s, k)| (self.timeline.center(b as usize), f64::from(s), k))
    }
}

/// Events per time bin.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    timeline: Timeline,
    bins: Vec<u64>,
}

impl Counts {
    /// Counts one event.
    pub fn add(&mut self, time_ms: i64) {
        let (bin, doublings) = self.timeline.place(time_ms);
        for _ in 0..doublings {
            self.bins = self.bins.chunks(2).map(|pair| pair.iter().sum()).collect();
        }
        if self.bins.len() <= bin {
            self.bins.resize(bin + 1, 0);
        }
        self.bins[bin] += 1;
    }

    /// (bin middle, count) of the non-empty bins.
    fn bins(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (self.timeline.center(i), n))
    }
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
pub(crate) fn text_table(rows: &[Vec<String>]) -> String {
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

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>\n");
    for (i, row) in rows.iter().enumerate() {
        out.push_str("<tr>");
        for (j, c) in row.iter().enumerate() {
            let numeric = c.chars().any(|ch| ch.is_ascii_digit())
                && (c.ends_with("caught")
                    || c.ends_with("missed")
                    || c.chars()
                        .all(|ch| ch.is_ascii_digit() || ",.%-".contains(ch)));
            let (tag, class) = match (i, j) {
                (0, _) => ("th", ""),
                (_, j) if j > 0 && numeric => ("td", " class=\"num\""),
                _ => ("td", ""),
            };
            let _ = write!(out, "<{tag}{class}>{}</{tag}>", esc(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The whole HTML report.
pub(crate) fn html(report: &ReplayReport) -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <title>egresswatch replay report</title>\n<style>\n\
         body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1180px}\n\
         h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px;margin:18px 0 4px}\n\
         table{border-collapse:collapse;margin:8px 0;font-size:13px}\n\
         th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}\n\
         td.num{text-align:right;font-variant-numeric:tabular-nums}\n\
         .meta{color:#555;font-size:13px}.legend{font-size:12px;color:#444}\n\
         svg{display:block;margin:4px 0 12px 0}\n</style></head><body>\n",
    );
    out.push_str("<h1>egresswatch replay report</h1>\n<div class=\"meta\">");
    let _ = write!(out, "{} events", human::count(report.events));
    if let Some((a, b)) = report.span_ms {
        let _ = write!(
            out,
            ", {} &rarr; {} UTC ({} day(s))",
            time::format_minutes(a),
            time::format_minutes(b),
            report.days
        );
    }
    out.push_str("<br>");
    for input in shown_inputs(&report.inputs) {
        let _ = write!(out, "input: {}<br>", esc(&input));
    }
    for note in &report.notes {
        let _ = write!(out, "note: {}<br>", esc(note));
    }
    out.push_str("</div>\n<h2>Summary</h2>\n");
    out.push_str(&html_table(&summary_rows(report)));
    if let Some((kinds, rows)) = &report.quality {
        out.push_str("<h2>Detection quality (labels)</h2>\n");
        let mut all = vec![quality::headers(kinds)];
        all.extend(rows.iter().map(quality::cells));
        out.push_str(&html_table(&all));
        out.push_str(
            "<div class=\"legend\">precision = flagged attack events / flagged events; \
             recall = flagged attack events / attack events; per attack kind: flagged/total \
             events, caught when at least one was flagged.</div>\n",
        );
    }
    out.push_str(
        "<h2>Scores over time</h2>\n<div class=\"legend\">\
        <span style=\"color:#999\">&#9679;</span> scored event &nbsp; \
        <span style=\"color:#d62728\">&#9679;</span> flagged (score &ge; threshold) &nbsp; \
        <span style=\"color:#1f5fbf\">&#9711;</span> labelled attack event &nbsp; \
        <span style=\"color:#d62728\">- - -</span> threshold &nbsp; \
        shaded: learning period (nothing is flagged); bars: events the job read per time bin\
        </div>\n",
    );
    for r in &report.rules {
        let _ = writeln!(
            out,
            "<h3>{} <span class=\"meta\">({}, threshold {})</span></h3>",
            esc(&r.name),
            esc(&r.job_id),
            fmt_threshold(r.threshold)
        );
        out.push_str(&plot(r, report.span_ms));
        if !r.top.is_empty() {
            let mut rows = vec![vec![
                "value".to_owned(),
                "flagged".to_owned(),
                "max score".to_owned(),
                "reason (highest score)".to_owned(),
            ]];
            for t in &r.top {
                rows.push(vec![
                    format!("{} {}", t.field, t.value),
                    human::count(t.count),
                    format!("{:.1}", t.max_score),
                    t.reason.clone(),
                ]);
            }
            out.push_str(&html_table(&rows));
        }
    }
    out.push_str("</body></html>\n");
    out
}

const W: f64 = 1100.0;
const PLOT_H: f64 = 240.0;
const BAR_H: f64 = 60.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const GAP: f64 = 26.0;
const BINS: usize = 144;

/// One rule's SVG: scores over time, threshold, flags, learning shade, counts strip.
pub(crate) fn plot(rule: &RuleSummary, span: Option<(i64, i64)>) -> String {
    let (t0, t1) = span.unwrap_or((0, 1));
    let t1 = t1.max(t0 + 1);
    let pw = W - LEFT - RIGHT;
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * pw;
    let y = |s: f64| TOP + (1.0 - s.clamp(0.0, 100.0) / 100.0) * PLOT_H;
    let bars_top = TOP + PLOT_H + GAP;
    let h = bars_top + BAR_H + 22.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{PLOT_H}\" fill=\"#fff\" stroke=\"#bbb\"/>"
    );
    // Learning period.
    let learn_end = rule.learning_end_ms.unwrap_or(t1);
    if learn_end > t0 {
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{PLOT_H}\" fill=\"#eee\"/>",
            x(learn_end.min(t1)) - LEFT
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">learning</text>",
            LEFT + 4.0,
            TOP + PLOT_H - 6.0
        );
    }
    // Score grid.
    for v in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e4e4e4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{v:.0}</text>",
            LEFT + pw,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"{:.1}\" fill=\"#555\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">score</text>",
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0
    );
    // Time ticks.
    let span_ms = t1 - t0;
    let step = [
        60_000i64,
        300_000,
        900_000,
        3_600_000,
        3 * 3_600_000,
        6 * 3_600_000,
        12 * 3_600_000,
        time::DAY_MS,
        2 * time::DAY_MS,
        7 * time::DAY_MS,
    ]
    .into_iter()
    .find(|st| span_ms / st <= 10)
    .unwrap_or(30 * time::DAY_MS);
    let mut tick = t0.div_euclid(step) * step;
    if tick < t0 {
        tick += step;
    }
    while tick <= t1 {
        let label = time::format_minutes(tick);
        let label = if step >= time::DAY_MS {
            label[5..10].to_owned()
        } else {
            label[5..].to_owned()
        };
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1:.1}\" stroke=\"#f0f0f0\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            x(tick),
            TOP + PLOT_H,
            TOP + PLOT_H + 14.0
        );
        tick += step;
    }
    // Points: scored (deduplicated per pixel), then attacks, then flagged on top.
    let mut seen: HashSet<(i32, i32, u8)> = HashSet::new();
    for (kind, draw) in [
        (0, "r=\"1.6\" fill=\"#999\" fill-opacity=\"0.6\""),
        (
            1,
            "r=\"4\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.2\"",
        ),
        (2, "r=\"2.6\" fill=\"#d62728\""),
    ] {
        let mut points: Vec<(i64, f64)> = rule
            .scores
            .points()
            .filter(|p| p.2 == kind)
            .map(|(t, score, _)| (t, score))
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for (t, score) in points {
            let (px, py) = (x(t), y(score));
            if seen.insert((px as i32, py as i32, kind)) {
                let _ = write!(s, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" {draw}/>");
            }
        }
        s.push('\n');
    }
    // Threshold.
    let ty = y(rule.threshold);
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#d62728\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#d62728\">threshold {}</text>",
        LEFT + pw,
        LEFT + pw - 4.0,
        ty - 4.0,
        fmt_threshold(rule.threshold)
    );
    // Counts strip.
    let mut bins = vec![0u64; BINS];
    for (t, n) in rule.seen_over_time.bins() {
        let i = ((t - t0).max(0) as f64 / (t1 - t0) as f64 * BINS as f64) as usize;
        bins[i.min(BINS - 1)] += n;
    }
    let max = bins.iter().copied().max().unwrap_or(0).max(1);
    let bw = pw / BINS as f64;
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{bars_top}\" width=\"{pw}\" height=\"{BAR_H}\" fill=\"#fafafa\" stroke=\"#ddd\"/>"
    );
    for (i, &n) in bins.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let bh = n as f64 / max as f64 * BAR_H;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#7a9cc6\"/>",
            LEFT + i as f64 * bw,
            bars_top + BAR_H - bh,
            (bw - 0.5).max(0.5)
        );
    }
    let bin_minutes = (t1 - t0) as f64 / BINS as f64 / 60_000.0;
    let _ = writeln!(
        s,
        "\n<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#555\">events read per {:.0}-minute bin (max {})</text>",
        bars_top + BAR_H + 14.0,
        bin_minutes.max(1.0),
        human::count(max)
    );
    s.push_str("</svg>\n");
    s
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

    #[test]
    fn plot_is_self_contained_svg() {
        let mut rule = RuleSummary {
            name: "r <x>".into(),
            threshold: 75.0,
            learning_end_ms: Some(5),
            ..RuleSummary::default()
        };
        rule.scores.add(10, 10.0, false, false);
        rule.scores.add(20, 90.0, true, true);
        for t in [0, 10, 20] {
            rule.seen_over_time.add(t);
        }
        let svg = plot(&rule, Some((0, 30)));
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("threshold 75"));
        assert!(svg.contains("#d62728\"/>"));
        let report = ReplayReport {
            rules: vec![rule],
            ..ReplayReport::default()
        };
        let page = html(&report);
        assert!(page.contains("r &lt;x&gt;"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
    }

    #[test]
    fn plot_data_stays_bounded_over_a_long_replay() {
        let mut scores = Scatter::default();
        let mut counts = Counts::default();
        // Ten years of events, one every ten minutes.
        let step = 600_000;
        let n = 10 * 365 * 24 * 6;
        for i in 0..n {
            scores.add(i * step, (i % 100) as f64, i % 1000 == 0, false);
            counts.add(i * step);
        }
        assert!(counts.bins.len() <= MAX_TIME_BINS);
        assert_eq!(counts.bins.iter().sum::<u64>(), n as u64);
        assert!(
            scores.cells.len() <= MAX_TIME_BINS * 101 * 2,
            "{}",
            scores.cells.len()
        );
        let last = scores.points().map(|p| p.0).max().unwrap();
        assert!((last - (n - 1) * step).abs() < 2 * scores.timeline.bin_ms);
    }
}
