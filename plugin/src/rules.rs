//! Loading detection rules written in Elastic's detection-rules TOML schema.
//!
//! A rule file has a `[metadata]` table, a `[rule]` table and any number of `[[rule.threat]]`
//! entries (MITRE ATT&CK tactic, techniques and sub-techniques). egresswatch reads the keys it
//! needs and ignores every other key Elastic uses (`setup`, `note`, `from`, `interval`,
//! `[transform]`, ...), so Elastic's own files load unchanged.
//!
//! Keys read from `[rule]`:
//!
//! | key | type | required |
//! |---|---|---|
//! | `rule_id` | string | yes |
//! | `name` | string | yes |
//! | `type` | string | yes; only `machine_learning` rules run |
//! | `description` | string | yes |
//! | `risk_score` | integer 0-100 | yes |
//! | `severity` | `low`, `medium`, `high`, `critical` | yes |
//! | `anomaly_threshold` | integer 0-100 | for `machine_learning` rules |
//! | `machine_learning_job_id` | string or list of strings | for `machine_learning` rules |
//! | `tags`, `references`, `author` | list of strings | no |
//! | `license` | string | no |
//! | `threat` | array of tables | no |
//!
//! Validation does not stop at the first problem: every problem in a file is reported, each
//! naming the file, the line (from the TOML parser's spans) and the field, and saying what was
//! expected. A rule that is valid but cannot run here (another rule type, or only job ids the
//! [`JobCatalog`] does not know) is *unsupported*: it is listed with its reason, not an error, so
//! the caller decides whether that is fatal.
//!
//! Entry point: [`load_paths`], taking files and folders (searched recursively for `*.toml`).
//!
//! [`JobCatalog`]: crate::catalog::JobCatalog

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

mod checker;
mod load;
mod parse;
#[cfg(test)]
mod tests;

pub use load::load_paths;
pub use parse::parse_rule;

/// Largest rule file read, in bytes (Elastic's largest ML rule is about 13 kB).
pub const MAX_RULE_FILE_BYTES: u64 = 256 * 1024;

/// Most `*.toml` files read from the folders given, in all.
pub const MAX_RULE_FILES: usize = 10_000;

/// Problems listed per file; further ones are counted in one [`RuleError::MoreProblems`].
pub const MAX_PROBLEMS_PER_FILE: usize = 50;

/// The only rule type egresswatch runs.
pub const MACHINE_LEARNING: &str = "machine_learning";

/// Severity of a rule, as Elastic spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `low`
    Low,
    /// `medium`
    Medium,
    /// `high`
    High,
    /// `critical`
    Critical,
}

impl Severity {
    /// Parses `low`/`medium`/`high`/`critical` (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The number Elastic associates with the word (its default risk score for that severity):
    /// low 21, medium 47, high 73, critical 99. Used for the numeric ECS `event.severity`.
    pub fn score(self) -> u8 {
        match self {
            Severity::Low => 21,
            Severity::Medium => 47,
            Severity::High => 73,
            Severity::Critical => 99,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MITRE ATT&CK entry (tactic, technique or sub-technique).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MitreRef {
    /// `TA0010`, `T1041`, `T1566.001`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// URL of the entry.
    pub reference: String,
}

/// A technique with its sub-techniques.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Technique {
    /// `T1041`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// URL of the technique.
    pub reference: String,
    /// Sub-techniques (`[[rule.threat.technique.subtechnique]]`).
    pub subtechnique: Vec<MitreRef>,
}

/// One `[[rule.threat]]` entry: a tactic and the techniques under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Threat {
    /// `MITRE ATT&CK`.
    pub framework: String,
    /// The tactic.
    pub tactic: MitreRef,
    /// Techniques (may be empty).
    pub technique: Vec<Technique>,
}

/// The `[metadata]` keys egresswatch keeps (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleMetadata {
    /// `creation_date`, as written (`2021/04/05`).
    pub creation_date: Option<String>,
    /// `updated_date`, as written.
    pub updated_date: Option<String>,
    /// `maturity` (`production`, `development`, ...).
    pub maturity: Option<String>,
    /// `integration` names.
    pub integration: Vec<String>,
    /// `min_stack_version`.
    pub min_stack_version: Option<String>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The file the rule came from.
    pub source: PathBuf,
    /// `rule_id`: stable identifier (a UUID in Elastic's rules).
    pub rule_id: String,
    /// `name`.
    pub name: String,
    /// `type` (`machine_learning`, `query`, ...).
    pub rule_type: String,
    /// `description`.
    pub description: String,
    /// `risk_score`, 0-100.
    pub risk_score: u8,
    /// `severity`.
    pub severity: Severity,
    /// `anomaly_threshold`, 0-100: the score at which an event is flagged (ML rules).
    pub anomaly_threshold: Option<u8>,
    /// `machine_learning_job_id`, always as a list.
    pub job_ids: Vec<String>,
    /// `tags`.
    pub tags: Vec<String>,
    /// `references`.
    pub references: Vec<String>,
    /// `author`.
    pub author: Vec<String>,
    /// `license`.
    pub license: Option<String>,
    /// `[[rule.threat]]` entries.
    pub threat: Vec<Threat>,
    /// `[metadata]`.
    pub metadata: RuleMetadata,
}

impl Rule {
    /// True for `type = "machine_learning"`.
    pub fn is_machine_learning(&self) -> bool {
        self.rule_type == MACHINE_LEARNING
    }
}

/// Formats `path:line` or `path`.
fn location(path: &Path, line: &Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

/// A problem that keeps a rule file from loading.
#[derive(Debug, Error)]
pub enum RuleError {
    /// The file or folder could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A folder given explicitly holds no `*.toml` file.
    #[error("{}: no *.toml rule files found", .path.display())]
    NoRuleFiles {
        /// The folder.
        path: PathBuf,
    },
    /// The file is not valid TOML.
    #[error("{}: invalid TOML: {message}", location(.path, .line))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A key is missing or holds a value of the wrong type or range.
    #[error("{}: field `{field}`: expected {expected}, found {found}", location(.path, .line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or of its table when the key is missing).
        line: Option<usize>,
        /// Dotted path of the key (`rule.threat[1].tactic.id`).
        field: String,
        /// What the key must hold.
        expected: String,
        /// What it holds (`nothing` when missing).
        found: String,
    },
    /// A file with more problems than are listed.
    #[error("{}: {more} more problem(s) not listed", .path.display())]
    MoreProblems {
        /// The file.
        path: PathBuf,
        /// How many were not listed.
        more: usize,
    },
    /// A folder holds more rule files than are read.
    #[error("{}: more than {MAX_RULE_FILES} *.toml files found; name the rule folders more precisely", .path.display())]
    TooManyFiles {
        /// The folder given.
        path: PathBuf,
    },
    /// Two files define the same `rule_id`.
    #[error("{}: rule_id `{rule_id}` is already defined in {}", .second.display(), .first.display())]
    DuplicateRuleId {
        /// The repeated id.
        rule_id: String,
        /// The file loaded first (kept).
        first: PathBuf,
        /// The file that repeats it (rejected).
        second: PathBuf,
    },
}

/// Why a valid rule will not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum UnsupportedReason {
    /// `type` is not `machine_learning`.
    NotMachineLearning {
        /// The rule's type.
        rule_type: String,
    },
    /// None of the rule's job ids is in the job catalog.
    UnknownJobs {
        /// The job ids the rule names.
        job_ids: Vec<String>,
    },
}

/// A valid rule that will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    /// The rule's file.
    pub path: PathBuf,
    /// Line of the field at fault (`type` or `machine_learning_job_id`).
    pub line: Option<usize>,
    /// `rule_id`.
    pub rule_id: String,
    /// `name`.
    pub name: String,
    /// The reason.
    pub reason: UnsupportedReason,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = location(&self.path, &self.line);
        match &self.reason {
            UnsupportedReason::NotMachineLearning { rule_type } => write!(
                f,
                "{at}: rule `{}` ({}) skipped: field `rule.type` is `{rule_type}`, only `{MACHINE_LEARNING}` rules run",
                self.name, self.rule_id
            ),
            UnsupportedReason::UnknownJobs { job_ids } => write!(
                f,
                "{at}: rule `{}` ({}) skipped: field `rule.machine_learning_job_id` names no known job ({})",
                self.name,
                self.rule_id,
                quoted_list(job_ids)
            ),
        }
    }
}

/// A supported rule that also names job ids the catalog does not know (those are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownJobWarning {
    /// The rule's file.
    pub path: PathBuf,
    /// Line of `machine_learning_job_id`.
    pub line: Option<usize>,
    /// `rule_id`.
    pub rule_id: String,
    /// The unknown ids.
    pub job_ids: Vec<String>,
}

impl fmt::Display for UnknownJobWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: rule {}: field `rule.machine_learning_job_id`: unknown job(s) ignored: {}",
            location(&self.path, &self.line),
            self.rule_id,
            quoted_list(&self.job_ids)
        )
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What happened to one file.
#[derive(Debug)]
pub enum FileStatus {
    /// Parsed and validated; the rule is in [`RuleLoad::rules`].
    Loaded {
        /// The rule's `rule_id`.
        rule_id: String,
    },
    /// Not loaded; every problem found.
    Failed {
        /// The problems, in file order.
        errors: Vec<RuleError>,
    },
}

/// The outcome for one path.
#[derive(Debug)]
pub struct FileOutcome {
    /// The file (or a folder or missing path given explicitly).
    pub path: PathBuf,
    /// What happened.
    pub status: FileStatus,
}

/// Everything [`load_paths`] found.
#[derive(Debug, Default)]
pub struct RuleLoad {
    /// Every valid rule, in load order, supported or not.
    pub rules: Vec<Rule>,
    /// One outcome per file (and per unreadable path given), in load order.
    pub files: Vec<FileOutcome>,
    /// Valid rules that will not run, with the reason.
    pub unsupported: Vec<Unsupported>,
    /// Supported rules that also name unknown jobs.
    pub warnings: Vec<UnknownJobWarning>,
}

impl RuleLoad {
    /// Valid rules that will run (machine-learning rules with at least one known job).
    pub fn supported(&self) -> impl Iterator<Item = &Rule> {
        let skipped: BTreeSet<&str> = self
            .unsupported
            .iter()
            .map(|u| u.rule_id.as_str())
            .collect();
        self.rules
            .iter()
            .filter(move |r| !skipped.contains(r.rule_id.as_str()))
    }

    /// Every error from every file.
    pub fn errors(&self) -> impl Iterator<Item = &RuleError> {
        self.files.iter().flat_map(|f| match &f.status {
            FileStatus::Failed { errors } => errors.as_slice(),
            FileStatus::Loaded { .. } => &[],
        })
    }

    /// True when some file failed to load.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Files that failed to load.
    pub fn failed_files(&self) -> impl Iterator<Item = &FileOutcome> {
        self.files
            .iter()
            .filter(|f| matches!(f.status, FileStatus::Failed { .. }))
    }
}
