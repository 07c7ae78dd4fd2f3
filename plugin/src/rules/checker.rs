//! [`Checker`]: typed access to a TOML table that records every problem (file, line, key,
//! what was expected) instead of stopping at the first.

use std::ops::Range;
use std::path::Path;

use egresswatch_plugin_api::files::LineIndex;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{MitreRef, RuleError, Technique, Threat, MAX_PROBLEMS_PER_FILE};

pub(super) type Table<'i> = DeTable<'i>;
type Val<'i> = Spanned<DeValue<'i>>;

/// Collects validation problems for one file.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) lines: LineIndex,
    pub(super) errors: Vec<RuleError>,
    /// Problems found beyond [`MAX_PROBLEMS_PER_FILE`].
    pub(super) unlisted: usize,
}

impl<'a> Checker<'a> {
    pub(super) fn line(&self, span: Range<usize>) -> Option<usize> {
        Some(self.lines.line(span.start))
    }

    /// The problems found, with a count of those not listed.
    pub(super) fn into_errors(mut self) -> Vec<RuleError> {
        if self.unlisted > 0 {
            self.errors.push(RuleError::MoreProblems {
                path: self.path.to_path_buf(),
                more: self.unlisted,
            });
        }
        self.errors
    }

    pub(super) fn invalid(
        &mut self,
        span: Range<usize>,
        field: &str,
        expected: &str,
        found: String,
    ) {
        if self.errors.len() >= MAX_PROBLEMS_PER_FILE {
            self.unlisted += 1;
            return;
        }
        self.errors.push(RuleError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(span),
            field: field.to_owned(),
            expected: expected.to_owned(),
            found,
        });
    }

    pub(super) fn missing(&mut self, table_span: Range<usize>, field: &str, expected: &str) {
        self.invalid(
            table_span,
            field,
            expected,
            "nothing (the key is missing)".into(),
        );
    }

    /// Required or optional string.
    pub(super) fn string(
        &mut self,
        table: &Table<'_>,
        table_span: Range<usize>,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        let field = join(prefix, key);
        match table.get(key) {
            None if required => {
                self.missing(table_span, &field, "a string");
                None
            }
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::String(s) if required && s.trim().is_empty() => {
                    self.invalid(v.span(), &field, "a non-empty string", "\"\"".into());
                    None
                }
                DeValue::String(s) => Some(s.to_string()),
                other => {
                    self.invalid(v.span(), &field, "a string", describe(other));
                    None
                }
            },
        }
    }

    /// Optional string or list of strings, as a list.
    pub(super) fn string_list(
        &mut self,
        table: &Table<'_>,
        prefix: &str,
        key: &str,
    ) -> Vec<String> {
        let field = join(prefix, key);
        let Some(v) = table.get(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::String(s) => vec![s.to_string()],
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => self.invalid(
                            item.span(),
                            &format!("{field}[{i}]"),
                            "a string",
                            describe(other),
                        ),
                    }
                }
                out
            }
            other => {
                self.invalid(v.span(), &field, "a list of strings", describe(other));
                Vec::new()
            }
        }
    }

    /// Required integer 0..=100.
    pub(super) fn percent(
        &mut self,
        table: &Table<'_>,
        table_span: Range<usize>,
        field: &str,
        key: &str,
    ) -> Option<u8> {
        const EXPECTED: &str = "an integer from 0 to 100";
        let Some(v) = table.get(key) else {
            self.missing(table_span, field, EXPECTED);
            return None;
        };
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if (0..=100).contains(&n) => u8::try_from(n).ok(),
                _ => {
                    self.invalid(v.span(), field, EXPECTED, format!("{i}"));
                    None
                }
            },
            other => {
                self.invalid(v.span(), field, EXPECTED, describe(other));
                None
            }
        }
    }

    fn mitre(&mut self, v: &Val<'_>, field: &str) -> Option<MitreRef> {
        let DeValue::Table(t) = v.get_ref() else {
            self.invalid(v.span(), field, "a table", describe(v.get_ref()));
            return None;
        };
        let id = self.string(t, v.span(), field, "id", true);
        let name = self.string(t, v.span(), field, "name", true);
        let reference = self.string(t, v.span(), field, "reference", true);
        Some(MitreRef {
            id: id?,
            name: name?,
            reference: reference?,
        })
    }

    fn tables<'t, 'i>(&mut self, table: &'t Table<'i>, field: &str, key: &str) -> Vec<&'t Val<'i>> {
        let Some(v) = table.get(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if item.get_ref().is_table() {
                        out.push(item);
                    } else {
                        self.invalid(
                            item.span(),
                            &format!("{field}[{i}]"),
                            "a table",
                            describe(item.get_ref()),
                        );
                    }
                }
                out
            }
            other => {
                self.invalid(v.span(), field, "an array of tables", describe(other));
                Vec::new()
            }
        }
    }

    pub(super) fn threats(&mut self, rule: &Table<'_>) -> Vec<Threat> {
        let mut out = Vec::new();
        for (i, tv) in self
            .tables(rule, "rule.threat", "threat")
            .into_iter()
            .enumerate()
        {
            let field = format!("rule.threat[{i}]");
            let DeValue::Table(t) = tv.get_ref() else {
                continue;
            };
            let framework = self.string(t, tv.span(), &field, "framework", true);
            let tactic_field = format!("{field}.tactic");
            let tactic = match t.get("tactic") {
                Some(v) => self.mitre(v, &tactic_field),
                None => {
                    self.missing(
                        tv.span(),
                        &tactic_field,
                        "a table with id, name and reference",
                    );
                    None
                }
            };
            let mut techniques = Vec::new();
            let tech_field = format!("{field}.technique");
            for (j, te) in self
                .tables(t, &tech_field, "technique")
                .into_iter()
                .enumerate()
            {
                let f = format!("{tech_field}[{j}]");
                let Some(base) = self.mitre(te, &f) else {
                    continue;
                };
                let DeValue::Table(tt) = te.get_ref() else {
                    continue;
                };
                let sub_field = format!("{f}.subtechnique");
                let mut subs = Vec::new();
                for (k, sv) in self
                    .tables(tt, &sub_field, "subtechnique")
                    .into_iter()
                    .enumerate()
                {
                    if let Some(s) = self.mitre(sv, &format!("{sub_field}[{k}]")) {
                        subs.push(s);
                    }
                }
                techniques.push(Technique {
                    id: base.id,
                    name: base.name,
                    reference: base.reference,
                    subtechnique: subs,
                });
            }
            if let (Some(framework), Some(tactic)) = (framework, tactic) {
                out.push(Threat {
                    framework,
                    tactic,
                    technique: techniques,
                });
            }
        }
        out
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Describes a TOML value for an error message: the type, and the value when short.
pub(super) fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) if s.len() <= 40 => format!("string {s:?}"),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_owned(),
    }
}
