//! Saving and loading the detector's state: every job's model with the definition it was
//! learnt under, and each rule's open alert episodes.
//!
//! Loading is per job. A saved model is loaded into the job of the same id only when the job's
//! definition ([`definition`]: what the model counts, over which events, on which time grid) is
//! the one it was saved under; a job whose definition changed, or that has no saved model,
//! starts learning afresh, and a saved job no rule uses any more is dropped. What happened to
//! each job is returned ([`LoadReport`]) and said in the detector's warnings, so the host logs
//! which job restarted and why. A state that cannot be read (another format, a damaged model of
//! a job whose definition matches) is refused whole and nothing changes.
//!
//! Saving streams: each model writes its bytes into the output as they are encoded (the layout
//! is [`super::saved`]'s), so a save never holds the state in memory.

use std::io::Write;

use egresswatch_plugin_api::{ErrorKind, PluginError};

use super::jobs::build_model;
use super::saved::{self, JobToSave, SavedAlerts};
use super::{ActiveJob, Detector, STATE_FORMAT_VERSION};
use crate::catalog::{format_bucket_span, JobDef};
use crate::models::Model;
use crate::suppression::{Episodes, SavedEpisodes};

/// What loading a state did, job by job (`new` in the order of the configured jobs, the other
/// lists in the order of the saved state).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Jobs whose saved model was loaded.
    pub kept: Vec<String>,
    /// Jobs whose definition changed since the state was saved, with what changed: they start
    /// learning afresh.
    pub restarted: Vec<(String, String)>,
    /// Jobs configured now that the state has no model for: they start learning.
    pub new: Vec<String>,
    /// Jobs of the state that no supported rule uses now: their model is dropped.
    pub dropped: Vec<String>,
}

/// What defines a job's model, as `(key, value)` pairs: its function, the fields it counts and
/// splits by, its filters and its bucket span. A model learnt under one definition means
/// nothing under another (other buckets, other entities, other events), so state is only
/// carried over between equal definitions. Not in it: the rules' thresholds, the job's
/// `influencers` and `description` (what alerts say) and the `models` tuning (learning period,
/// half-life, lateness, caps): a loaded model takes those from the configuration as it is now.
pub(super) fn definition(def: &JobDef) -> Vec<(String, String)> {
    let field = |f: &Option<String>| f.clone().unwrap_or_default();
    let field_name = if def.function.needs_field_name() {
        field(&def.field_name)
    } else {
        String::new()
    };
    // A filter list always serialises (strings and enums only); the fallback is never used.
    let filters = serde_json::to_string(&def.filters).unwrap_or_else(|e| e.to_string());
    [
        ("function", def.function.as_str().to_owned()),
        ("field_name", field_name),
        ("by_field_name", field(&def.by_field)),
        ("over_field_name", field(&def.over_field)),
        ("partition_field_name", field(&def.partition_field)),
        ("bucket_span", format_bucket_span(def.bucket_span_secs)),
        ("filters", filters),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What differs between a saved definition and the current one, for the log:
/// `bucket_span 15m -> 30m; by_field_name (none) -> destination.geo.country_iso_code`.
pub(super) fn changes(saved: &[(String, String)], now: &[(String, String)]) -> String {
    let shown = |v: Option<&String>| match v.map(String::as_str) {
        None => "(absent)".to_owned(),
        Some("") => "(none)".to_owned(),
        Some(v) => v.to_owned(),
    };
    let lookup = |pairs: &'_ [(String, String)], key: &str| {
        pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut keys: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    keys.extend(
        saved
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !now.iter().any(|(n, _)| n == k)),
    );
    keys.into_iter()
        .filter_map(|key| {
            let (before, after) = (lookup(saved, key), lookup(now, key));
            (before != after).then(|| {
                format!(
                    "{key} {} -> {}",
                    shown(before.as_ref()),
                    shown(after.as_ref())
                )
            })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Detector {
    /// Every job's model state and definition, with a format version, in memory (see
    /// [`Detector::save_state_to`], which writes the same bytes without holding them).
    pub fn save_state(&self) -> Result<Vec<u8>, PluginError> {
        let mut out = Vec::new();
        self.save_state_to(&mut out)?;
        Ok(out)
    }

    /// Writes every job's model state and definition, with a format version, into `out` as it
    /// is encoded (the layout: [`super::saved`]): the save adds a model's 64 KiB buffer
    /// and the index (ids, definitions, open episodes) to the heap, not the state's size. An
    /// error of `out` ends the save, with its message.
    pub fn save_state_to(&self, out: &mut dyn Write) -> Result<(), PluginError> {
        let models: Vec<_> = self
            .jobs
            .iter()
            .map(|job| {
                let model = &*job.model;
                move |out: &mut dyn Write| model.save(out)
            })
            .collect();
        let jobs: Vec<JobToSave<'_>> = self
            .jobs
            .iter()
            .zip(&models)
            .map(|(job, model)| JobToSave {
                id: &job.def.id,
                definition: definition(&job.def),
                model,
            })
            .collect();
        let alerts: SavedAlerts = self
            .jobs
            .iter()
            .flat_map(|job| {
                job.rules.iter().map(|r| {
                    let rule_id = r.rule.rule_id.clone();
                    (job.def.id.clone(), rule_id, r.episodes.save())
                })
            })
            .collect();
        saved::write(out, STATE_FORMAT_VERSION, &jobs, &alerts)
    }

    /// Replaces the model state with one saved by [`Detector::save_state`], job by job (see
    /// [`Detector::restore_state`]); a job that restarts, is new or is dropped is said in the
    /// warnings.
    pub fn load_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let report = self.restore_state(state)?;
        for (id, why) in &report.restarted {
            self.warnings.push(format!(
                "state: job {id} starts learning afresh: its definition changed ({why}); the \
                 other jobs keep what they learnt"
            ));
        }
        for id in &report.new {
            self.warnings.push(format!(
                "state: job {id} has no saved model (new since the state was saved); it starts \
                 learning"
            ));
        }
        for id in &report.dropped {
            self.warnings.push(format!(
                "state: the saved model of job {id} is dropped: no supported rule uses that job \
                 now"
            ));
        }
        Ok(())
    }

    /// Replaces the model state with one saved by [`Detector::save_state`]: each job whose
    /// definition is the one its model was saved under gets that model and its rules' open
    /// episodes; a job whose definition changed, or that the state does not have, starts
    /// afresh (a new model, no open episodes); saved jobs not configured now are dropped.
    /// Nothing changes when the state is of another format or any model or episode list to be
    /// loaded is unreadable.
    pub fn restore_state(&mut self, state: &[u8]) -> Result<LoadReport, PluginError> {
        let refuse = |message: String| PluginError::new(ErrorKind::State, message);
        let saved = saved::read(state).map_err(refuse)?;
        let mut report = LoadReport::default();
        // Decode everything first into fresh models, so that a bad part changes nothing.
        let mut models: Vec<Option<Box<dyn Model>>> = (0..self.jobs.len()).map(|_| None).collect();
        for job in saved.jobs {
            let Some(index) = self.jobs.iter().position(|j| j.def.id == job.id) else {
                report.dropped.push(job.id);
                continue;
            };
            if models[index].is_some() {
                return Err(refuse(format!("job {} is saved twice", job.id)));
            }
            let active = &self.jobs[index];
            let now = definition(&active.def);
            let mut model = self.fresh_model(active)?;
            if job.definition == now {
                model
                    .load(job.model)
                    .map_err(|e| refuse(format!("job {}: {e}", job.id)))?;
                report.kept.push(job.id);
            } else {
                report
                    .restarted
                    .push((job.id, changes(&job.definition, &now)));
            }
            models[index] = Some(model);
        }
        for (index, slot) in models.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = Some(self.fresh_model(&self.jobs[index])?);
                report.new.push(self.jobs[index].def.id.clone());
            }
        }
        let mut episodes: Vec<(usize, usize, Episodes)> = Vec::new();
        for (job_id, rule_id, saved) in saved.alerts {
            // Episodes of a job that restarts or is gone go with its model.
            if !report.kept.contains(&job_id) {
                continue;
            }
            let Some(j) = self.jobs.iter().position(|j| j.def.id == job_id) else {
                continue;
            };
            let Some(r) = self.jobs[j]
                .rules
                .iter()
                .position(|r| r.rule.rule_id == rule_id)
            else {
                continue;
            };
            let mut restored = self.jobs[j].rules[r].episodes.clone();
            restored
                .restore(saved)
                .map_err(|e| refuse(format!("alerts of rule {rule_id} (job {job_id}): {e}")))?;
            episodes.push((j, r, restored));
        }
        for (job, model) in self.jobs.iter_mut().zip(models) {
            if let Some(model) = model {
                job.model = model;
            }
            for rule in &mut job.rules {
                // Emptying cannot fail: an empty list passes every check.
                let _ = rule.episodes.restore(SavedEpisodes::default());
            }
        }
        for (j, r, restored) in episodes {
            self.jobs[j].rules[r].episodes = restored;
        }
        Ok(report)
    }

    /// A new, empty model for `job`, as construction builds it.
    fn fresh_model(&self, job: &ActiveJob) -> Result<Box<dyn Model>, PluginError> {
        let thresholds = job.rules.iter().map(|r| (r.threshold, r.threshold));
        let range = thresholds.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
        build_model(&job.def, &self.config, &self.options, range)
            .map_err(|e| PluginError::new(ErrorKind::State, format!("job {}: {e}", job.def.id)))
    }
}
