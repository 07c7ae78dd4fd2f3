//! The HTML report: one self-contained page (no script, no external resources) with the
//! summary, the quality table and one inline SVG plot per rule ([`super::svg`]).

use std::fmt::Write as _;

use egresswatch_common::human;
use egresswatch_common::time;

use super::svg::plot;
use super::{fmt_threshold, shown_inputs, summary_rows, ReplayReport};
use crate::replay::quality;

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
            "<div class=\"legend\">alerts: one per rule, key and bucket (a rule's suppressed \
             followers belong to their alert); an alert is true when one of its events is an \
             attack; episodes: one attack kind against one destination, caught when an alert \
             holds one of its events. Per event: precision = flagged attack events / flagged \
             events; recall = flagged attack events / attack events; per attack kind: \
             flagged/total events, caught when at least one was flagged.</div>\n",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::report::RuleSummary;

    #[test]
    fn the_page_is_self_contained_and_escapes_names() {
        let mut rule = RuleSummary {
            name: "r <x>".into(),
            threshold: 75.0,
            ..RuleSummary::default()
        };
        rule.scores.add(20, 90.0, true, true);
        rule.seen_over_time.add(20);
        let report = ReplayReport {
            rules: vec![rule],
            ..ReplayReport::default()
        };
        let page = html(&report);
        assert!(page.contains("r &lt;x&gt;"));
        assert!(!page.contains("r <x>"));
        assert!(page.contains("<svg"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
    }
}
