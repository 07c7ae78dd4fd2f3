//! Construction: each supported rule's jobs bound to the scanner's fields, one model per job.

use std::collections::BTreeMap;
use std::sync::Arc;

use egresswatch_common::names::DEFAULT_ANOMALY_THRESHOLD;
use egresswatch_plugin_api::{ErrorKind, PluginError};

use super::{ActiveJob, ActiveRule};
use crate::alert::RuleTexts;
use crate::catalog::JobDef;
use crate::check::RuleSet;
use crate::config::{BuildOptions, DetectorConfig};
use crate::fields::SchemaBuilder;
use crate::models;
use crate::models::Model;
use crate::rules::Rule;
use crate::suppression::Episodes;

/// Builds one active job per job id that a supported rule names and the catalog has a model
/// for. The rule set has been validated: what is left to fail is internal.
pub(super) fn build_jobs(
    config: &DetectorConfig,
    options: &BuildOptions,
    set: &RuleSet,
    schema: &mut SchemaBuilder,
) -> Result<Vec<ActiveJob>, PluginError> {
    let threshold_of = |rule: &Rule| {
        options.threshold.unwrap_or_else(|| {
            f64::from(rule.anomaly_threshold.unwrap_or(DEFAULT_ANOMALY_THRESHOLD))
        })
    };
    // Each job's models report an episode once, at the highest threshold of its rules, and
    // need not compute scores below the lowest.
    let mut thresholds: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for rule in set.load.supported() {
        for job_id in &rule.job_ids {
            let t = threshold_of(rule);
            let (low, high) = thresholds.entry(job_id.as_str()).or_insert((t, t));
            (*low, *high) = (low.min(t), high.max(t));
        }
    }
    let mut jobs: Vec<ActiveJob> = Vec::new();
    for rule in set.load.supported() {
        let threshold = threshold_of(rule);
        let rule = Arc::new(rule.clone());
        for job_id in &rule.job_ids {
            let Some(def) = set.catalog.get(job_id) else {
                continue;
            };
            if models::registration(def.function).is_none() {
                continue;
            }
            let index = match jobs.iter().position(|j| &j.def.id == job_id) {
                Some(index) => index,
                None => {
                    let range = thresholds.get(job_id.as_str()).copied();
                    let model = build_model(def, config, options, range).map_err(|e| {
                        PluginError::new(ErrorKind::Internal, format!("job {job_id}: {e}"))
                    })?;
                    let address = |field: &Option<String>| {
                        field
                            .as_deref()
                            .is_some_and(|f| f == "ip" || f.ends_with(".ip"))
                    };
                    jobs.push(ActiveJob {
                        bound: def.bind(schema),
                        addresses: [
                            address(&def.by_field),
                            address(&def.over_field),
                            address(&def.partition_field),
                        ],
                        def: def.clone(),
                        model,
                        rules: Vec::new(),
                        scored: 0,
                    });
                    jobs.len() - 1
                }
            };
            let action = config.actions.for_rule(&rule.rule_id).clone();
            jobs[index].rules.push(ActiveRule {
                texts: RuleTexts::new(&rule),
                episodes: Episodes::new(&rule.rule_id, action.suppress),
                rule: Arc::clone(&rule),
                threshold,
                action,
                flagged: 0,
                suppressed: 0,
            });
        }
    }
    Ok(jobs)
}

/// The model a job's function calls for (from the registry in [`crate::models`]), with the
/// configured settings and the options (see [`ModelSettings::tune`]). `thresholds`: the lowest
/// and highest threshold of the job's rules (the score floor, unless every score is recorded,
/// and the alert score).
pub(super) fn build_model(
    def: &JobDef,
    config: &DetectorConfig,
    options: &BuildOptions,
    thresholds: Option<(f64, f64)>,
) -> Result<Box<dyn Model>, String> {
    let Some(model) = models::registration(def.function) else {
        return Err(format!("function `{}` has no model yet", def.function));
    };
    let mut settings = (model.defaults)();
    settings.bucket_span_secs =
        u32::try_from(def.bucket_span_secs).map_err(|_| "bucket_span too long".to_owned())?;
    config.models.tune(&def.id, &mut settings, options);
    if let Some((low, high)) = thresholds {
        settings.alert_score = high.clamp(f64::MIN_POSITIVE, 100.0);
        if !options.score_records {
            settings.score_floor = low.clamp(0.0, settings.alert_score);
        }
    }
    (model.build)(settings).map_err(|e| e.to_string())
}
