//! [`load_paths`]: walking the given files and folders, reading each rule file once, and
//! judging whether each valid rule can run here.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use egresswatch_plugin_api::files;

use super::parse::{parse, Parsed};
use super::{
    FileOutcome, FileStatus, RuleError, RuleLoad, UnknownJobWarning, Unsupported,
    UnsupportedReason, MAX_RULE_FILES, MAX_RULE_FILE_BYTES,
};
use crate::catalog::JobCatalog;

/// Loads rules from files and folders (folders recursively, `*.toml` only; files given by name
/// are read whatever their extension). Files are read in sorted order within each folder and each
/// file is read once even when named twice. Never panics on bad input: every problem ends up in
/// the returned [`RuleLoad`].
pub fn load_paths(paths: &[PathBuf], catalog: &JobCatalog) -> RuleLoad {
    let mut load = RuleLoad::default();
    let mut files = Vec::new();
    let mut seen_dirs = BTreeSet::new();
    for path in paths {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let before = files.len();
                let mut walk = Walk {
                    out: &mut files,
                    seen_dirs: &mut seen_dirs,
                };
                let walked = walk.collect(path);
                if let Err(error) = walked {
                    let error = match error {
                        WalkError::Io(source) => RuleError::Io {
                            path: path.clone(),
                            source,
                        },
                        WalkError::TooMany => {
                            files.truncate(before);
                            RuleError::TooManyFiles { path: path.clone() }
                        }
                    };
                    load.files.push(FileOutcome {
                        path: path.clone(),
                        status: FileStatus::Failed {
                            errors: vec![error],
                        },
                    });
                } else if files.len() == before {
                    load.files.push(FileOutcome {
                        path: path.clone(),
                        status: FileStatus::Failed {
                            errors: vec![RuleError::NoRuleFiles { path: path.clone() }],
                        },
                    });
                }
            }
            Ok(_) => files.push(path.clone()),
            Err(source) => load.files.push(FileOutcome {
                path: path.clone(),
                status: FileStatus::Failed {
                    errors: vec![RuleError::Io {
                        path: path.clone(),
                        source,
                    }],
                },
            }),
        }
    }

    let mut seen_files = BTreeSet::new();
    let mut seen_ids: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !seen_files.insert(canonical) {
            continue;
        }
        let status = match files::read_regular_text(&path, MAX_RULE_FILE_BYTES) {
            Err(source) => FileStatus::Failed {
                errors: vec![RuleError::Io {
                    path: path.clone(),
                    source: source.into(),
                }],
            },
            Ok(text) => match parse(&path, &text) {
                Err(errors) => FileStatus::Failed { errors },
                Ok(parsed) => {
                    if let Some(first) = seen_ids.get(&parsed.rule.rule_id) {
                        FileStatus::Failed {
                            errors: vec![RuleError::DuplicateRuleId {
                                rule_id: parsed.rule.rule_id.clone(),
                                first: first.clone(),
                                second: path.clone(),
                            }],
                        }
                    } else {
                        seen_ids.insert(parsed.rule.rule_id.clone(), path.clone());
                        judge_support(&parsed, catalog, &mut load);
                        let rule_id = parsed.rule.rule_id.clone();
                        load.rules.push(parsed.rule);
                        FileStatus::Loaded { rule_id }
                    }
                }
            },
        };
        load.files.push(FileOutcome { path, status });
    }
    load
}

/// Why a folder walk stopped.
enum WalkError {
    Io(std::io::Error),
    TooMany,
}

/// A walk of rule folders: `*.toml` files in sorted order, each folder once however many
/// symbolic links lead to it (a link to a parent would otherwise repeat the walk for ever, or
/// exponentially with two such links), and at most [`MAX_RULE_FILES`] files.
struct Walk<'a> {
    out: &'a mut Vec<PathBuf>,
    seen_dirs: &'a mut BTreeSet<PathBuf>,
}

impl Walk<'_> {
    fn collect(&mut self, dir: &Path) -> Result<(), WalkError> {
        let canonical = fs::canonicalize(dir).map_err(WalkError::Io)?;
        if !self.seen_dirs.insert(canonical) {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
            .map_err(WalkError::Io)?;
        entries.sort();
        for path in entries {
            // Follows symlinks; an entry that vanished, is unreadable or is not a regular file
            // (a FIFO named *.toml) is reported when read.
            let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
            if is_dir {
                self.collect(&path)?;
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
            {
                if self.out.len() >= MAX_RULE_FILES {
                    return Err(WalkError::TooMany);
                }
                self.out.push(path);
            }
        }
        Ok(())
    }
}

fn judge_support(parsed: &Parsed, catalog: &JobCatalog, load: &mut RuleLoad) {
    let rule = &parsed.rule;
    let unsupported = |line, reason| Unsupported {
        path: rule.source.clone(),
        line,
        rule_id: rule.rule_id.clone(),
        name: rule.name.clone(),
        reason,
    };
    if !rule.is_machine_learning() {
        load.unsupported.push(unsupported(
            parsed.type_line,
            UnsupportedReason::NotMachineLearning {
                rule_type: rule.rule_type.clone(),
            },
        ));
        return;
    }
    let unknown: Vec<String> = rule
        .job_ids
        .iter()
        .filter(|id| !catalog.contains(id))
        .cloned()
        .collect();
    if unknown.len() == rule.job_ids.len() {
        load.unsupported.push(unsupported(
            parsed.job_ids_line,
            UnsupportedReason::UnknownJobs {
                job_ids: rule.job_ids.clone(),
            },
        ));
    } else if !unknown.is_empty() {
        load.warnings.push(UnknownJobWarning {
            path: rule.source.clone(),
            line: parsed.job_ids_line,
            rule_id: rule.rule_id.clone(),
            job_ids: unknown,
        });
    }
}
