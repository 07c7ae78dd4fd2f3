//! The rule set as a detector would load it, and `egresswatch rules check`'s report on it.
//!
//! [`RuleSet::load`] is the one loader behind both [`crate::Detector`] construction and
//! [`check`]: the catalog (built-in jobs and the configuration's own), the rule files, and the
//! verdict on them, so that what `rules check` passes, `run` accepts. A file *fails* when it
//! cannot be read, is not TOML or is not a valid rule; a valid rule is *supported* when it is a
//! machine-learning rule naming at least one job the catalog has a model for, *unsupported*
//! otherwise, and *duplicate* when an earlier file has its `rule_id` (a problem, as two rules
//! with one id cannot both be acted on).

use std::path::PathBuf;

use abi_stable::std_types::{ROption, RString, RVec};
use egresswatch_plugin_api::{RuleFile, RuleStatus, RulesReport};

use crate::catalog::{JobCatalog, JobDef};
use crate::config::{BuildOptions, DetectorConfig, Problem};
use crate::models;
use crate::rules::{self, FileStatus, RuleError, RuleLoad, UnsupportedReason};

/// The catalog and rules a configuration loads, and what is wrong with them.
#[derive(Debug)]
pub struct RuleSet {
    /// Built-in jobs plus the configuration's `jobs` (the built-in ones alone when those are
    /// invalid: that is one of the problems).
    pub catalog: JobCatalog,
    /// Every file loaded.
    pub load: RuleLoad,
    /// The rule paths as given (resolved), for messages.
    pub paths: Vec<PathBuf>,
    /// Why a detector would refuse this rule set: `(key path, message)`.
    pub problems: Vec<Problem>,
    /// What it would skip: unsupported rules, unknown jobs, jobs without a model.
    pub warnings: Vec<String>,
}

impl RuleSet {
    /// Loads the catalog and the rules of `config` (or of [`BuildOptions::rule_paths`]) and
    /// judges them.
    pub fn load(config: &DetectorConfig, options: &BuildOptions) -> RuleSet {
        let mut problems = Vec::new();
        let catalog = match JobCatalog::builtin().with_overrides(config.jobs.iter().cloned()) {
            Ok(catalog) => catalog,
            Err(errors) => {
                problems.extend(errors.iter().map(|e| ("jobs".to_owned(), e.to_string())));
                JobCatalog::builtin()
            }
        };
        let given = options.rule_paths.as_ref().unwrap_or(&config.rules);
        let paths: Vec<PathBuf> = given.iter().map(|p| options.resolve(p)).collect();
        let load = rules::load_paths(&paths, &catalog);
        problems.extend(load.errors().map(|e| ("rules".to_owned(), e.to_string())));
        let mut warnings: Vec<String> = Vec::new();
        let mut fatal_skips: Vec<String> =
            load.unsupported.iter().map(ToString::to_string).collect();
        warnings.extend(load.warnings.iter().map(ToString::to_string));
        let mut runnable = 0;
        for rule in load.supported() {
            let mut modelled = false;
            for def in rule.job_ids.iter().filter_map(|id| catalog.get(id)) {
                if models::registration(def.function).is_some() {
                    modelled = true;
                } else {
                    fatal_skips.push(format!(
                        "{}: job {}: function `{}` has no model yet",
                        rule.source.display(),
                        def.id,
                        def.function
                    ));
                }
            }
            runnable += usize::from(modelled);
        }
        if config.fail_on_unsupported {
            problems.extend(
                fatal_skips
                    .into_iter()
                    .map(|m| ("fail_on_unsupported".to_owned(), m)),
            );
        } else {
            warnings.splice(0..0, fatal_skips);
        }
        if runnable == 0 && !load.has_errors() {
            let where_ = paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            problems.push((
                "rules".to_owned(),
                format!("no rule in {where_} can run: nothing would be detected"),
            ));
        }
        RuleSet {
            catalog,
            load,
            paths,
            problems,
            warnings,
        }
    }

    /// The jobs supported rules use that have a model, each once, in rule order.
    pub fn active_jobs(&self) -> impl Iterator<Item = &JobDef> {
        let mut seen = std::collections::BTreeSet::new();
        self.load
            .supported()
            .flat_map(|r| r.job_ids.iter())
            .filter_map(|id| self.catalog.get(id))
            .filter(|def| models::registration(def.function).is_some())
            .filter(move |def| seen.insert(def.id.clone()))
    }

    /// The report [`check`] returns: one entry per file, the problems and the warnings.
    pub fn report(&self) -> RulesReport {
        let load = &self.load;
        let files = load
            .files
            .iter()
            .map(|file| {
                let path = RString::from(file.path.display().to_string());
                match &file.status {
                    FileStatus::Loaded { rule_id } => {
                        let rule = load.rules.iter().find(|r| &r.rule_id == rule_id);
                        let skipped = load.unsupported.iter().find(|u| &u.rule_id == rule_id);
                        let (status, detail) = match skipped.map(|u| &u.reason) {
                            Some(UnsupportedReason::NotMachineLearning { rule_type }) => (
                                RuleStatus::UNSUPPORTED,
                                format!("type `{rule_type}` is not machine_learning"),
                            ),
                            Some(UnsupportedReason::UnknownJobs { job_ids }) => (
                                RuleStatus::UNSUPPORTED,
                                format!("unknown job {}", job_ids.join(", ")),
                            ),
                            None => (RuleStatus::SUPPORTED, String::new()),
                        };
                        RuleFile {
                            path,
                            status,
                            rule_id: ROption::RSome(rule_id.as_str().into()),
                            name: rule.map(|r| r.name.as_str().into()).into(),
                            jobs: rule
                                .map(|r| r.job_ids.iter().map(|j| j.as_str().into()).collect())
                                .unwrap_or_default(),
                            threshold: rule.and_then(|r| r.anomaly_threshold).into(),
                            detail: detail.into(),
                        }
                    }
                    FileStatus::Failed { errors } => {
                        let empty = |status, rule_id, detail: String| RuleFile {
                            path: path.clone(),
                            status,
                            rule_id,
                            name: ROption::RNone,
                            jobs: RVec::new(),
                            threshold: ROption::RNone,
                            detail: detail.into(),
                        };
                        match errors.as_slice() {
                            [RuleError::DuplicateRuleId { rule_id, first, .. }] => empty(
                                RuleStatus::DUPLICATE,
                                ROption::RSome(rule_id.as_str().into()),
                                format!("rule_id already defined in {}", first.display()),
                            ),
                            errors => empty(
                                RuleStatus::FAILED,
                                ROption::RNone,
                                errors
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("\n"),
                            ),
                        }
                    }
                }
            })
            .collect();
        RulesReport {
            files,
            problems: self
                .problems
                .iter()
                .map(|(path, message)| match path.as_str() {
                    "" | "rules" => RString::from(message.as_str()),
                    path => format!("{path}: {message}").into(),
                })
                .collect(),
            warnings: self.warnings.iter().map(|w| w.as_str().into()).collect(),
        }
    }
}

/// Loads the rules of `config` with its jobs and reports on every file, with the verdict a
/// detector built from the same configuration and options would reach.
pub fn check(config: &DetectorConfig, options: &BuildOptions) -> RulesReport {
    RuleSet::load(config, options).report()
}

impl DetectorConfig {
    /// Every problem with the configuration as a whole, given the rule set it loads: rule
    /// files, unknown rule ids under `actions.rules`, unknown job ids under `models.jobs`,
    /// settings out of range, addresses that are not CIDRs.
    pub fn validate(&self, set: &RuleSet, options: &BuildOptions) -> Vec<Problem> {
        let mut problems = set.problems.clone();
        for rule_id in self.actions.rules.keys() {
            if !set.load.rules.iter().any(|r| &r.rule_id == rule_id) {
                problems.push((
                    format!("actions.rules.{rule_id}"),
                    "no loaded rule has this rule_id".to_owned(),
                ));
            }
        }
        for (job_id, settings) in &self.models.jobs {
            if !set.catalog.contains(job_id) {
                problems.push((
                    format!("models.jobs.{job_id}"),
                    "no job has this id (built in, or defined under `jobs`)".to_owned(),
                ));
            }
            if !settings.jobs.is_empty() {
                problems.push((
                    format!("models.jobs.{job_id}.jobs"),
                    "per-job settings cannot hold settings of further jobs".to_owned(),
                ));
            }
        }
        for def in set.active_jobs() {
            let Some(model) = crate::models::registration(def.function) else {
                continue;
            };
            let mut config = (model.defaults)();
            self.models.tune(&def.id, &mut config, options);
            config.bucket_span_secs = u32::try_from(def.bucket_span_secs).unwrap_or(u32::MAX);
            for problem in config.problems() {
                let own = self
                    .models
                    .jobs
                    .get(&def.id)
                    .is_some_and(|s| s.sets(problem.field));
                let path = if problem.field == "bucket_span_secs" {
                    format!("jobs.{}.bucket_span", def.id)
                } else if own {
                    format!("models.jobs.{}.{}", def.id, problem.field)
                } else {
                    format!("models.{}", problem.field)
                };
                let entry = (path, problem.message);
                if !problems.contains(&entry) {
                    problems.push(entry);
                }
            }
        }
        if let Err(e) = crate::net::parse_cidr_list(&self.allow_destinations) {
            problems.push(("allow_destinations".to_owned(), e.to_string()));
        }
        if self.time_field.trim().is_empty() {
            problems.push(("time_field".to_owned(), "must not be empty".to_owned()));
        }
        if self.geoip.cache_entries == 0 {
            problems.push((
                "geoip.cache_entries".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules")
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ew-check-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn options(paths: Vec<PathBuf>) -> BuildOptions {
        BuildOptions {
            rule_paths: Some(paths),
            ..BuildOptions::default()
        }
    }

    #[test]
    fn our_rules_are_supported_and_a_broken_file_fails() {
        let dir = temp("broken");
        std::fs::write(dir.join("broken.toml"), "[rule\nname = 1").unwrap();
        let report = check(
            &DetectorConfig::default(),
            &options(vec![rules_dir(), dir.join("broken.toml")]),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let supported = report
            .files
            .iter()
            .filter(|f| f.status == RuleStatus::SUPPORTED)
            .count();
        assert_eq!(supported, 2, "{report:?}");
        let broken = report
            .files
            .iter()
            .find(|f| f.status == RuleStatus::FAILED)
            .unwrap();
        assert!(broken.detail.contains("broken.toml:1"), "{}", broken.detail);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    }

    #[test]
    fn a_duplicate_rule_id_is_a_problem_as_it_is_for_the_detector() {
        let dir = temp("duplicate");
        let ours = rules_dir().join("rare_destination_country.toml");
        std::fs::copy(&ours, dir.join("copy.toml")).unwrap();
        let set = RuleSet::load(
            &DetectorConfig::default(),
            &options(vec![ours, dir.join("copy.toml")]),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let report = set.report();
        assert_eq!(report.files[1].status, RuleStatus::DUPLICATE);
        assert!(
            report.problems[0].contains("is already defined"),
            "{:?}",
            report.problems
        );
        let config: DetectorConfig = DetectorConfig::default();
        assert!(!config.validate(&set, &BuildOptions::default()).is_empty());
    }

    #[test]
    fn user_defined_jobs_make_a_rule_supported() {
        let dir = temp("userjob");
        let rule = std::fs::read_to_string(rules_dir().join("rare_destination_country.toml"))
            .unwrap()
            .replace("rare_destination_country", "rare_destination_port_custom");
        std::fs::write(dir.join("custom.toml"), rule).unwrap();
        let paths = vec![dir.join("custom.toml")];
        let bare = check(&DetectorConfig::default(), &options(paths.clone()));
        assert_eq!(bare.files[0].status, RuleStatus::UNSUPPORTED);
        assert!(!bare.problems.is_empty(), "nothing would run");
        let config: DetectorConfig = serde_json::from_value(serde_json::json!({
            "jobs": [{"id": "rare_destination_port_custom", "function": "rare",
                      "by_field_name": "destination.port", "bucket_span": "15m"}]
        }))
        .unwrap();
        let with_job = check(&config, &options(paths));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(with_job.files[0].status, RuleStatus::SUPPORTED);
        assert!(with_job.problems.is_empty(), "{:?}", with_job.problems);
    }

    #[test]
    fn settings_out_of_range_are_named_where_they_are_set() {
        let rules = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let (config, _) = DetectorConfig::parse(
            &serde_json::json!({
                "rules": [rules],
                "models": {"lateness_buckets": 99,
                           "jobs": {"rare_destination_country": {"max_entities": 1}}},
                "allow_destinations": ["not-a-cidr"]
            })
            .to_string(),
        )
        .unwrap();
        let options = BuildOptions::default();
        let set = RuleSet::load(&config, &options);
        let paths: Vec<String> = config
            .validate(&set, &options)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert!(
            paths.contains(&"models.lateness_buckets".to_owned()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"models.jobs.rare_destination_country.max_entities".to_owned()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"allow_destinations".to_owned()),
            "{paths:?}"
        );
    }
}
