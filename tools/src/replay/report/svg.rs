//! One rule's plot as inline SVG: the score of every event the rule's job scored after its
//! learning period (grey; points on the same pixel drawn once), the threshold (red dashed
//! line), the flagged events (red), the labelled attack events when labels were given (blue
//! rings), the learning period (shaded), and below it a bar strip with the number of events the
//! job read per time bin.

use std::collections::HashSet;
use std::fmt::Write as _;

use egresswatch_common::human;
use egresswatch_common::time;

use super::{fmt_threshold, RuleSummary};

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
    }
}
