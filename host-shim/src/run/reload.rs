//! SIGHUP: the configuration files and rules read again while the run goes on.
//!
//! The engine thread checks for SIGHUP between blocks and while idle. A reload builds a new
//! transform from the files as they are now (with the plugin already loaded), checks it against
//! the running outputs, and carries the model state over (saved from the running transform,
//! loaded into the new one) before it replaces anything; if any step fails, the running
//! configuration goes on and the reason is logged. What a reload applies: `detector`
//! (rules, actions, models, jobs, GeoIP), `unreadable`, `fail_closed` and `batch.max_events`.
//! Changes to anything else (input, outputs, state, metrics, `shutdown_timeout_secs`,
//! `batch.max_line_bytes`, `plugin`) take effect at the next start; a reload that has them
//! says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::HostConfig;
use crate::engine::{Engine, EnginePolicy};
use crate::loader::Transform;

/// Builds a transform from the configuration files as they are now: what `run` does at start,
/// with the plugin already loaded.
pub type Rebuild<'a> = dyn FnMut() -> Result<(HostConfig, Transform)> + 'a;

/// Reloads on SIGHUP.
pub(super) struct Reloader<'a> {
    /// Set by SIGHUP.
    pub(super) flag: Arc<AtomicBool>,
    pub(super) rebuild: &'a mut Rebuild<'a>,
    /// The configuration in force.
    pub(super) running: HostConfig,
}

impl Reloader<'_> {
    /// Reloads if SIGHUP arrived since the last call.
    pub(super) fn check(&mut self, engine: &mut Engine) {
        if !self.flag.swap(false, Ordering::Relaxed) {
            return;
        }
        tracing::info!("SIGHUP: reading the configuration and rules again");
        match self.reload(engine) {
            Ok(later) if later.is_empty() => {
                tracing::info!("SIGHUP: configuration reloaded; model state kept")
            }
            Ok(later) => tracing::warn!(
                not_applied = %later.join(", "),
                "SIGHUP: configuration reloaded (detector and policies; model state kept); \
                 changes to the settings listed take effect at the next start"
            ),
            Err(e) => tracing::error!(
                "SIGHUP: the new configuration is refused and the running one goes on: {e:#}"
            ),
        }
    }

    /// Returns the settings that changed but wait for a restart.
    fn reload(&mut self, engine: &mut Engine) -> Result<Vec<&'static str>> {
        let (config, mut transform) = (self.rebuild)()?;
        let routes: Vec<String> = transform
            .routes()
            .into_result()
            .map_err(|e| anyhow::anyhow!("the new detector's routes: {e}"))?
            .into_iter()
            .map(Into::into)
            .collect();
        // Routes must name outputs that run now: outputs are not reopened.
        let missing = self.running.missing_routes(&routes);
        if !missing.is_empty() {
            bail!("{}", missing.join("; "));
        }
        let state = engine
            .transform()
            .save_state()
            .into_result()
            .map_err(|e| anyhow::anyhow!("saving the running model state: {e}"))?;
        transform
            .load_state(state.as_slice().into())
            .into_result()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context(
                "the running model state does not fit the new detector configuration (a job \
                 changed its function or bucket span?); restart to apply it",
            )?;
        if let Ok(warnings) = transform.warnings().into_result() {
            warnings.iter().for_each(|w| tracing::warn!("{w}"));
        }
        let later = restart_only_changes(&self.running, &config);
        let policy = EnginePolicy {
            batch: crate::config::BatchConfig {
                max_events: config.batch.max_events,
                max_line_bytes: self.running.batch.max_line_bytes,
            },
            unreadable: config.unreadable,
            fail_closed: config.fail_closed,
        };
        engine.reconfigure(transform, policy);
        self.running.batch.max_events = config.batch.max_events;
        self.running.unreadable = config.unreadable;
        self.running.fail_closed = config.fail_closed;
        self.running.detector = config.detector;
        Ok(later)
    }
}

/// The settings that differ between `running` and `new` that a reload does not apply.
fn restart_only_changes(running: &HostConfig, new: &HostConfig) -> Vec<&'static str> {
    [
        ("plugin", running.plugin != new.plugin),
        ("input", running.input != new.input),
        ("outputs", running.outputs != new.outputs),
        ("state", running.state != new.state),
        ("metrics", running.metrics != new.metrics),
        (
            "shutdown_timeout_secs",
            running.shutdown_timeout_secs != new.shutdown_timeout_secs,
        ),
        (
            "batch.max_line_bytes",
            running.batch.max_line_bytes != new.batch.max_line_bytes,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
