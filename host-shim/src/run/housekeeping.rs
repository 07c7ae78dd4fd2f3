//! What the engine thread does between blocks and while the input is quiet: copying the
//! counters for the metrics endpoint, saving the model state every `state.interval_secs`, and
//! reloading the configuration on SIGHUP.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::order::Order;
use super::reload::{Live, Reloader};
use crate::engine::Engine;
use crate::input::listen::InputStats;
use crate::metrics::{self, Metrics};
use crate::output::Outputs;
use crate::state;

/// How often the plugin's metrics are copied for the endpoint.
const PLUGIN_METRICS_EVERY: Duration = Duration::from_secs(1);

/// The engine thread's housekeeping: metrics snapshot, periodic state saves, reloads.
pub(super) struct Keeper<'a> {
    pub(super) metrics: Metrics,
    pub(super) stats: Arc<InputStats>,
    pub(super) plugin_name: String,
    /// State file, save interval, time of the last save.
    pub(super) state: Option<(PathBuf, Duration, Instant)>,
    /// `state.max_bytes`: a larger file is saved, with a warning that it will not load.
    pub(super) state_max: u64,
    pub(super) plugin_refreshed: Option<Instant>,
    /// Whether fetching the plugin's metrics failed already (logged once).
    pub(super) metrics_failed: bool,
    /// The jobs still learning as last seen, to log when one leaves learning.
    pub(super) learning: Vec<String>,
    /// Reloads on SIGHUP.
    pub(super) reload: Reloader<'a>,
}

impl Keeper<'_> {
    fn refresh(&mut self, engine: &Engine) {
        let refresh_plugin = self
            .plugin_refreshed
            .is_none_or(|at| at.elapsed() >= PLUGIN_METRICS_EVERY);
        let plugin = refresh_plugin.then(|| engine.transform().metrics().into_result());
        {
            let mut s = self.metrics.snapshot();
            s.host = engine.counters().clone();
            s.connections_open = self.stats.open.load(Ordering::Relaxed);
            s.connections_accepted = self.stats.total.load(Ordering::Relaxed);
            s.connections_refused = self.stats.refused.load(Ordering::Relaxed);
            s.tls_handshake_failures = self.stats.tls_failed.load(Ordering::Relaxed);
            s.http_requests = self.stats.answers();
            s.order_released_early = self.stats.order_early.load(Ordering::Relaxed);
        }
        if let Some(plugin) = plugin {
            match plugin {
                Ok(metrics) => {
                    let metrics = metrics.into_vec();
                    self.note_learning(&metrics);
                    self.metrics.set_plugin(metrics);
                }
                Err(e) if !self.metrics_failed => {
                    self.metrics_failed = true;
                    tracing::warn!(error = %e, "the plugin's metrics are unavailable");
                }
                Err(_) => {}
            }
            self.plugin_refreshed = Some(Instant::now());
        }
    }

    /// Logs each job that was learning and no longer is.
    fn note_learning(&mut self, plugin: &[egresswatch_plugin_api::Metric]) {
        let jobs = metrics::jobs_learning(plugin);
        for (job, learning) in &jobs {
            if !learning && self.learning.contains(job) {
                tracing::info!(job_id = %job, "job left learning: it flags events from now on");
            }
        }
        self.learning = jobs
            .into_iter()
            .filter_map(|(job, learning)| learning.then_some(job))
            .collect();
    }

    fn maybe_save(&mut self, engine: &Engine) {
        if self
            .state
            .as_ref()
            .is_some_and(|(_, every, last)| last.elapsed() >= *every)
        {
            self.save(engine);
        }
    }

    /// Saves the state now; returns the file's size on success.
    pub(super) fn save(&mut self, engine: &Engine) -> Option<u64> {
        let (path, _, last) = self.state.as_mut()?;
        *last = Instant::now();
        let result = state::save(path, &self.plugin_name, |out| {
            engine.transform().save_state_to(out)
        });
        let mut s = self.metrics.snapshot();
        match result {
            Ok(bytes) => {
                if bytes > self.state_max {
                    tracing::warn!(path = %path.display(), bytes, max_bytes = self.state_max,
                        "state.max_bytes: the saved state is larger than the limit and will be \
                         set aside at the next start; raise state.max_bytes");
                }
                s.state_saves += 1;
                s.state_file_bytes = bytes;
                tracing::debug!(path = %path.display(), bytes, "model state saved");
                Some(bytes)
            }
            Err(e) => {
                s.state_save_errors += 1;
                tracing::error!(path = %path.display(), error = %e, "state.path: saving the model state failed");
                None
            }
        }
    }
}

impl Keeper<'_> {
    /// After a block was processed and flushed; `took` is the time that took.
    pub(super) fn after_block(
        &mut self,
        engine: &mut Engine,
        (outputs, order): (&mut Outputs, &mut Order),
        took: Duration,
    ) {
        self.metrics.observe_batch(took.as_secs_f64());
        self.reload(engine, outputs, order);
        self.refresh(engine);
        self.maybe_save(engine);
    }

    /// While the input is quiet, every poll interval.
    pub(super) fn idle(&mut self, engine: &mut Engine, outputs: &mut Outputs, order: &mut Order) {
        self.reload(engine, outputs, order);
        self.refresh(engine);
        self.maybe_save(engine);
    }

    /// Reloads if SIGHUP arrived.
    pub(super) fn reload(&mut self, engine: &mut Engine, outputs: &mut Outputs, order: &mut Order) {
        let live = Live {
            outputs,
            order,
            metrics: &self.metrics,
            state: self.state.as_mut(),
            state_max: &mut self.state_max,
        };
        self.reload.check(engine, live);
    }
}
