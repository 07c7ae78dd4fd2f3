//! `egresswatch rules check`: load rule files and say, per file, what would run.
//!
//! The report is JSON so that it crosses the plugin boundary as text; the host renders it as a
//! table. A file *fails* when it cannot be read, is not TOML or is not a valid rule; a valid rule
//! is *supported* when it is a machine-learning rule naming at least one job the catalog has a
//! model for, *unsupported* otherwise, and *duplicate* when an earlier file has its `rule_id`.

use std::path::PathBuf;

use serde::Serialize;

use crate::catalog::JobCatalog;
use crate::rules::{self, FileStatus, RuleError, UnsupportedReason};

/// One row of the report: one file.
#[derive(Debug, Serialize)]
pub struct CheckRow {
    /// The file.
    pub path: PathBuf,
    /// `supported`, `unsupported`, `duplicate` or `failed`.
    pub status: &'static str,
    /// `rule_id`, when the file parsed.
    pub rule_id: Option<String>,
    /// The rule's name, when the file parsed.
    pub name: Option<String>,
    /// Job ids the rule names.
    pub jobs: Vec<String>,
    /// `anomaly_threshold`.
    pub threshold: Option<u8>,
    /// Why not supported, or every error of a failed file.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// One row per file, in load order.
    pub rows: Vec<CheckRow>,
    /// Files that parsed (including duplicates).
    pub parsed: usize,
    /// Files that failed to parse or validate.
    pub failed: usize,
    /// Rules that would run.
    pub supported: usize,
    /// Valid rules that would not run.
    pub unsupported: usize,
    /// Files whose `rule_id` an earlier file already has.
    pub duplicates: usize,
}

/// Loads `paths` against the built-in catalog and reports on every file.
pub fn check(paths: &[PathBuf]) -> CheckReport {
    let catalog = JobCatalog::builtin();
    let load = rules::load_paths(paths, &catalog);
    let mut report = CheckReport {
        rows: Vec::new(),
        parsed: 0,
        failed: 0,
        supported: 0,
        unsupported: 0,
        duplicates: 0,
    };
    for file in &load.files {
        let row = match &file.status {
            FileStatus::Loaded { rule_id } => {
                report.parsed += 1;
                let rule = load.rules.iter().find(|r| &r.rule_id == rule_id);
                let skipped = load.unsupported.iter().find(|u| &u.rule_id == rule_id);
                let (status, detail) = match skipped {
                    Some(u) => {
                        report.unsupported += 1;
                        let why = match &u.reason {
                            UnsupportedReason::NotMachineLearning { rule_type } => {
                                format!("type `{rule_type}` is not machine_learning")
                            }
                            UnsupportedReason::UnknownJobs { job_ids } => {
                                format!("unknown job {}", job_ids.join(", "))
                            }
                        };
                        ("unsupported", why)
                    }
                    None => {
                        report.supported += 1;
                        ("supported", String::new())
                    }
                };
                CheckRow {
                    path: file.path.clone(),
                    status,
                    rule_id: Some(rule_id.clone()),
                    name: rule.map(|r| r.name.clone()),
                    jobs: rule.map(|r| r.job_ids.clone()).unwrap_or_default(),
                    threshold: rule.and_then(|r| r.anomaly_threshold),
                    detail,
                }
            }
            FileStatus::Failed { errors } => match errors.as_slice() {
                [RuleError::DuplicateRuleId { rule_id, first, .. }] => {
                    report.parsed += 1;
                    report.duplicates += 1;
                    CheckRow {
                        path: file.path.clone(),
                        status: "duplicate",
                        rule_id: Some(rule_id.clone()),
                        name: None,
                        jobs: Vec::new(),
                        threshold: None,
                        detail: format!("rule_id already defined in {}", first.display()),
                    }
                }
                errors => {
                    report.failed += 1;
                    CheckRow {
                        path: file.path.clone(),
                        status: "failed",
                        rule_id: None,
                        name: None,
                        jobs: Vec::new(),
                        threshold: None,
                        detail: errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    }
                }
            },
        };
        report.rows.push(row);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_rules_are_supported_and_a_broken_file_fails() {
        let dir = std::env::temp_dir().join(format!("ew-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("broken.toml"), "[rule\nname = 1").unwrap();
        let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let report = check(&[ours, dir.join("broken.toml")]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(report.supported, 2, "{report:?}");
        assert_eq!(report.failed, 1);
        assert_eq!(report.parsed, 2);
        let broken = report.rows.iter().find(|r| r.status == "failed").unwrap();
        assert!(broken.detail.contains("broken.toml:1"), "{}", broken.detail);
    }
}
