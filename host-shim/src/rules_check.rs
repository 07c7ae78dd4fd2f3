//! Rendering the plugin's rule-check report (`egresswatch rules check`) as a table.

use serde::Deserialize;

/// One file of the report, as the plugin writes it.
#[derive(Debug, Deserialize)]
pub struct Row {
    /// The file.
    pub path: String,
    /// `supported`, `unsupported`, `duplicate` or `failed`.
    pub status: String,
    /// The rule's name, when it parsed.
    pub name: Option<String>,
    /// Job ids the rule names.
    #[serde(default)]
    pub jobs: Vec<String>,
    /// `anomaly_threshold`.
    pub threshold: Option<u8>,
    /// Why not supported, or the errors.
    #[serde(default)]
    pub detail: String,
}

/// The report, as the plugin writes it.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// One row per file.
    pub rows: Vec<Row>,
    /// Files that parsed.
    pub parsed: usize,
    /// Files that did not.
    pub failed: usize,
    /// Rules that would run.
    pub supported: usize,
    /// Valid rules that would not run.
    pub unsupported: usize,
    /// Files repeating an earlier `rule_id`.
    pub duplicates: usize,
}

impl Report {
    /// The closing summary line.
    pub fn summary(&self) -> String {
        format!(
            "{} files: {} parsed, {} failed; {} rules supported, {} unsupported, {} duplicate rule_ids",
            self.rows.len(),
            self.parsed,
            self.failed,
            self.supported,
            self.unsupported,
            self.duplicates
        )
    }

    /// The table: file, rule name, job ids, threshold, status (and why).
    pub fn table(&self) -> String {
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                let status = if r.detail.is_empty() {
                    r.status.clone()
                } else {
                    format!("{}: {}", r.status, r.detail.replace('\n', "; "))
                };
                [
                    r.path.clone(),
                    r.name.clone().unwrap_or_else(|| "-".into()),
                    if r.jobs.is_empty() {
                        "-".into()
                    } else {
                        r.jobs.join(",")
                    },
                    r.threshold.map_or_else(|| "-".into(), |t| t.to_string()),
                    status,
                ]
            })
            .collect();
        let header = ["FILE", "RULE", "JOB", "THRESHOLD", "STATUS"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&cells) {
            let line: Vec<String> = row[..4]
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(&line.join("  "));
            out.push_str("  ");
            out.push_str(&row[4]);
            out.push('\n');
        }
        out
    }
}
