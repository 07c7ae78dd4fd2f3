//! One rule file's text to a [`Rule`]: the TOML parse and the checks of every key read.

use std::ops::Range;
use std::path::Path;

use egresswatch_plugin_api::files::LineIndex;
use toml::de::{DeTable, DeValue};

use super::checker::{describe, Checker, Table};
use super::{Rule, RuleError, RuleMetadata, Severity, MACHINE_LEARNING};

/// Parses and validates one rule file's text. `path` is used for the rule's `source` and in
/// error messages. Returns every problem found.
pub fn parse_rule(path: &Path, text: &str) -> Result<Rule, Vec<RuleError>> {
    parse(path, text).map(|p| p.rule)
}

pub(super) struct Parsed {
    pub(super) rule: Rule,
    pub(super) type_line: Option<usize>,
    pub(super) job_ids_line: Option<usize>,
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Parsed, Vec<RuleError>> {
    let mut c = Checker {
        path,
        lines: LineIndex::new(text),
        errors: Vec::new(),
        unlisted: 0,
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e.span().and_then(|s| c.line(s));
            return Err(vec![RuleError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().trim().to_owned(),
            }]);
        }
    };
    let root_span = 0..0;

    // [metadata]
    let mut metadata = RuleMetadata::default();
    if let Some(m) = root.get_ref().get("metadata") {
        match m.get_ref() {
            DeValue::Table(t) => {
                metadata = RuleMetadata {
                    creation_date: c.string(t, m.span(), "metadata", "creation_date", false),
                    updated_date: c.string(t, m.span(), "metadata", "updated_date", false),
                    maturity: c.string(t, m.span(), "metadata", "maturity", false),
                    integration: c.string_list(t, "metadata", "integration"),
                    min_stack_version: c.string(
                        t,
                        m.span(),
                        "metadata",
                        "min_stack_version",
                        false,
                    ),
                }
            }
            other => c.invalid(m.span(), "metadata", "a table", describe(other)),
        }
    }

    // [rule]
    let Some(rv) = root.get_ref().get("rule") else {
        c.missing(root_span, "rule", "a [rule] table");
        return Err(c.into_errors());
    };
    let DeValue::Table(rule) = rv.get_ref() else {
        c.invalid(rv.span(), "rule", "a [rule] table", describe(rv.get_ref()));
        return Err(c.into_errors());
    };
    let span = rv.span();
    let rule_id = c.string(rule, span.clone(), "rule", "rule_id", true);
    let name = c.string(rule, span.clone(), "rule", "name", true);
    let rule_type = c.string(rule, span.clone(), "rule", "type", true);
    let description = c.string(rule, span.clone(), "rule", "description", true);
    let risk_score = c.percent(rule, span.clone(), "rule.risk_score", "risk_score");
    let severity = match rule.get("severity") {
        None => {
            c.missing(span.clone(), "rule.severity", SEVERITY_EXPECTED);
            None
        }
        Some(v) => match v.get_ref() {
            DeValue::String(s) => {
                let sev = Severity::parse(s);
                if sev.is_none() {
                    c.invalid(
                        v.span(),
                        "rule.severity",
                        SEVERITY_EXPECTED,
                        describe(v.get_ref()),
                    );
                }
                sev
            }
            other => {
                c.invalid(
                    v.span(),
                    "rule.severity",
                    SEVERITY_EXPECTED,
                    describe(other),
                );
                None
            }
        },
    };
    let is_ml = rule_type.as_deref() == Some(MACHINE_LEARNING);
    let type_line = rule.get("type").and_then(|v| c.line(v.span()));
    let job_ids_line = rule
        .get("machine_learning_job_id")
        .and_then(|v| c.line(v.span()));

    let anomaly_threshold = if is_ml || rule.get("anomaly_threshold").is_some() {
        c.percent(
            rule,
            span.clone(),
            "rule.anomaly_threshold",
            "anomaly_threshold",
        )
    } else {
        None
    };
    let job_ids = job_ids(&mut c, rule, span.clone(), is_ml);
    let tags = c.string_list(rule, "rule", "tags");
    let references = c.string_list(rule, "rule", "references");
    let author = c.string_list(rule, "rule", "author");
    let license = c.string(rule, span.clone(), "rule", "license", false);
    let threat = c.threats(rule);

    match (rule_id, name, rule_type, description, risk_score, severity) {
        (
            Some(rule_id),
            Some(name),
            Some(rule_type),
            Some(description),
            Some(risk_score),
            Some(severity),
        ) if c.errors.is_empty() => Ok(Parsed {
            rule: Rule {
                source: path.to_path_buf(),
                rule_id,
                name,
                rule_type,
                description,
                risk_score,
                severity,
                anomaly_threshold,
                job_ids,
                tags,
                references,
                author,
                license,
                threat,
                metadata,
            },
            type_line,
            job_ids_line,
        }),
        _ => Err(c.into_errors()),
    }
}

const SEVERITY_EXPECTED: &str = "one of \"low\", \"medium\", \"high\", \"critical\"";
const JOB_IDS_EXPECTED: &str = "a job id string or a non-empty list of job id strings";

fn job_ids(
    c: &mut Checker<'_>,
    rule: &Table<'_>,
    span: Range<usize>,
    required: bool,
) -> Vec<String> {
    const FIELD: &str = "rule.machine_learning_job_id";
    let Some(v) = rule.get("machine_learning_job_id") else {
        if required {
            c.missing(span, FIELD, JOB_IDS_EXPECTED);
        }
        return Vec::new();
    };
    let before = c.errors.len();
    let ids = c.string_list(rule, "rule", "machine_learning_job_id");
    if c.errors.len() == before && (ids.is_empty() || ids.iter().any(|s| s.trim().is_empty())) {
        c.invalid(v.span(), FIELD, JOB_IDS_EXPECTED, describe(v.get_ref()));
    }
    ids
}
