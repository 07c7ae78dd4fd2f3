//! Rendering the plugin's [`RulesReport`] (`egresswatch rules check`) as a table.

use egresswatch_common::human::{self, Align};
use egresswatch_plugin_api::{RuleStatus, RulesReport};

/// The closing summary line.
pub fn summary(report: &RulesReport) -> String {
    let count = |status| report.files.iter().filter(|f| f.status == status).count();
    let failed = count(RuleStatus::FAILED);
    format!(
        "{} files: {} parsed, {failed} failed; {} rules supported, {} unsupported, {} duplicate rule_ids",
        report.files.len(),
        report.files.len() - failed,
        count(RuleStatus::SUPPORTED),
        count(RuleStatus::UNSUPPORTED),
        count(RuleStatus::DUPLICATE),
    )
}

/// The table: file, rule name, job ids, threshold, status (and why).
pub fn table(report: &RulesReport) -> String {
    let cells: Vec<[String; 5]> = report
        .files
        .iter()
        .map(|r| {
            let status = if r.detail.is_empty() {
                r.status.as_str().to_owned()
            } else {
                format!("{}: {}", r.status.as_str(), r.detail.replace('\n', "; "))
            };
            [
                r.path.to_string(),
                r.name
                    .as_ref()
                    .map_or_else(|| "-".into(), ToString::to_string),
                if r.jobs.is_empty() {
                    "-".into()
                } else {
                    r.jobs
                        .iter()
                        .map(|j| j.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.threshold
                    .into_option()
                    .map_or_else(|| "-".into(), |t| t.to_string()),
                status,
            ]
        })
        .collect();
    let header = ["FILE", "RULE", "JOB", "THRESHOLD", "STATUS"].map(String::from);
    let rows: Vec<Vec<String>> = std::iter::once(header)
        .chain(cells)
        .map(Vec::from)
        .collect();
    human::table(&rows, &[Align::Left])
}
