//! Saving and loading the detector's state: every job's model, and each rule's open alert
//! episodes.

use egresswatch_plugin_api::{ErrorKind, PluginError};
use serde::{Deserialize, Serialize};

use super::jobs::build_model;
use super::{Detector, STATE_FORMAT_VERSION};
use crate::models::Model;
use crate::suppression::{Episodes, SavedEpisodes};

/// Saved state: one opaque blob per job, keyed by job id so that a changed rule set keeps what
/// still applies; and each rule's open alert episodes, keyed by job and rule id, so that a
/// restart does not raise a second alert for an episode already alerted.
#[derive(Serialize, Deserialize)]
struct SavedState {
    format: u32,
    jobs: Vec<(String, Vec<u8>)>,
    alerts: Vec<(String, String, SavedEpisodes)>,
}

impl Detector {
    /// Serialises every job's model state, with a format version.
    pub fn save_state(&self) -> Result<Vec<u8>, PluginError> {
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let bytes = job.model.save().map_err(|e| {
                PluginError::new(ErrorKind::State, format!("saving job {}: {e}", job.def.id))
            })?;
            jobs.push((job.def.id.clone(), bytes));
        }
        let alerts = self
            .jobs
            .iter()
            .flat_map(|job| {
                job.rules.iter().map(|r| {
                    let rule_id = r.rule.rule_id.clone();
                    (job.def.id.clone(), rule_id, r.episodes.save())
                })
            })
            .collect();
        postcard::to_allocvec(&SavedState {
            format: STATE_FORMAT_VERSION,
            jobs,
            alerts,
        })
        .map_err(|e| PluginError::new(ErrorKind::State, format!("encoding state: {e}")))
    }

    /// Restores model state saved by [`Detector::save_state`]. Jobs absent from the state keep
    /// learning from scratch; state of jobs no longer configured is ignored. Nothing changes
    /// when any part is unreadable.
    pub fn load_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let saved: SavedState = postcard::from_bytes(state)
            .map_err(|e| PluginError::new(ErrorKind::State, format!("decoding state: {e}")))?;
        if saved.format != STATE_FORMAT_VERSION {
            return Err(PluginError::new(
                ErrorKind::State,
                format!(
                    "state format {} is not supported (this plugin reads {STATE_FORMAT_VERSION})",
                    saved.format
                ),
            ));
        }
        // Decode everything first into fresh models, so that a bad blob changes nothing.
        let mut fresh: Vec<(usize, Box<dyn Model>)> = Vec::new();
        for (id, bytes) in &saved.jobs {
            let Some(index) = self.jobs.iter().position(|j| &j.def.id == id) else {
                continue;
            };
            let job = &self.jobs[index];
            let thresholds = job.rules.iter().map(|r| (r.threshold, r.threshold));
            let range = thresholds.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
            let mut model = build_model(&job.def, &self.config, &self.options, range)
                .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            model
                .load(bytes)
                .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            fresh.push((index, model));
        }
        let mut episodes: Vec<(usize, usize, Episodes)> = Vec::new();
        for (job_id, rule_id, saved) in saved.alerts {
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
            restored.restore(saved).map_err(|e| {
                PluginError::new(
                    ErrorKind::State,
                    format!("alerts of rule {rule_id} (job {job_id}): {e}"),
                )
            })?;
            episodes.push((j, r, restored));
        }
        for (index, model) in fresh {
            self.jobs[index].model = model;
        }
        for (j, r, restored) in episodes {
            self.jobs[j].rules[r].episodes = restored;
        }
        Ok(())
    }
}
