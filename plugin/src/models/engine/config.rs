//! [`ModelConfig`]: the settings every model shares, and their checks.

use crate::models::{ConfigProblem, ModelError};

/// What every model is configured with: the time grid, learning, forgetting and memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Bucket length in seconds (Elastic `bucket_span`; at least 60).
    pub bucket_span_secs: u32,
    /// Buckets with data a partition needs before its events may be flagged.
    pub learning_buckets: u32,
    /// Half-life of history, in buckets (at least 1).
    pub half_life_buckets: f64,
    /// Buckets behind the newest one that still accept events (at most 16).
    pub lateness_buckets: u32,
    /// Most keys (values or entities) tracked by the job, all partitions together; also caps
    /// the per-bucket working sets.
    pub max_entities: usize,
    /// Most partitions; events of further partitions are not scored.
    pub max_partitions: usize,
    /// Secret mixed into the key hashes (kept in saved state).
    pub hash_seed: u64,
    /// The score at which the job's rules alert (the highest of their thresholds). A model that
    /// gathers evidence over several buckets reports an episode once, when its score first
    /// reaches this, instead of once per bucket.
    pub alert_score: f64,
    /// The least score any of the job's rules alerts at (0: every score is wanted, as for score
    /// records). A score the model can show is below it is not computed: it is reported as 0.
    pub score_floor: f64,
}

impl ModelConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, message: String| {
            problems.push(ConfigProblem { field, message });
        };
        if self.bucket_span_secs < 60 {
            bad(
                "bucket_span_secs",
                format!("must be at least 60, got {}", self.bucket_span_secs),
            );
        }
        if !(self.half_life_buckets.is_finite() && self.half_life_buckets >= 1.0) {
            bad(
                "half_life_buckets",
                format!("must be a number >= 1, got {}", self.half_life_buckets),
            );
        }
        if self.lateness_buckets > 16 {
            bad(
                "lateness_buckets",
                format!("must be at most 16, got {}", self.lateness_buckets),
            );
        }
        if self.max_entities < 16 {
            bad(
                "max_entities",
                format!("must be at least 16, got {}", self.max_entities),
            );
        }
        if self.max_partitions == 0 {
            bad("max_partitions", "must be at least 1".to_string());
        }
        if !(0.0..=self.alert_score.min(100.0)).contains(&self.score_floor) {
            bad(
                "score_floor",
                format!(
                    "must be from 0 to alert_score ({}), got {}",
                    self.alert_score, self.score_floor
                ),
            );
        }
        if !(self.alert_score > 0.0 && self.alert_score <= 100.0) {
            bad(
                "alert_score",
                format!("must be above 0 and at most 100, got {}", self.alert_score),
            );
        }
        problems
    }

    /// Refuses state saved under another bucket span: its buckets would not line up.
    pub fn check_saved_span(&self, saved_span_ms: i64) -> Result<(), ModelError> {
        if saved_span_ms == i64::from(self.bucket_span_secs) * 1000 {
            return Ok(());
        }
        Err(ModelError::Mismatch {
            field: "bucket_span_secs",
            state: (saved_span_ms / 1000).to_string(),
            config: self.bucket_span_secs.to_string(),
        })
    }
}
