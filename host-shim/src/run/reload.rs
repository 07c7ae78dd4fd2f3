//! SIGHUP: the configuration files and rules read again while the run goes on.
//!
//! The engine thread checks for SIGHUP between blocks and while idle. A reload builds a new
//! transform from the files as they are now (with the plugin already loaded), checks it against
//! the running outputs, and carries the model state over (saved from the running transform,
//! loaded into the new one) before it replaces anything; if any step fails, the running
//! configuration goes on and the reason is logged. The state is carried over job by job: a job
//! whose definition changed (function, fields, filters, bucket span) starts learning afresh and
//! the plugin's warning says which and why; every other job keeps what it learnt.
//!
//! What a reload applies: `detector` (rules, actions, models, jobs, GeoIP), `unreadable`,
//! `fail_closed` and `batch.max_events`. Whether or not the reload is taken, every file output
//! reopens its path before its next batch (log rotation: logrotate renames the file, then sends
//! SIGHUP). It does not reconfigure outputs, rebind the input, move the
//! state file or the metrics endpoint: a new configuration that changes any of those (`input`,
//! `outputs.NAME`, `state`, `metrics`, `shutdown_timeout_secs`, `batch.max_line_bytes`,
//! `plugin`) is refused whole, naming the keys, and the running one goes on; they take a
//! restart. Refusing, rather than applying the rest, keeps the configuration in force one that
//! was written as a whole.

use std::collections::BTreeSet;
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
        // Whatever becomes of the reload, file outputs reopen their paths (log rotation).
        crate::output::reopen_files();
        tracing::info!("SIGHUP: reading the configuration and rules again");
        match self.reload(engine) {
            Ok(()) => {
                tracing::info!(
                    "SIGHUP: configuration reloaded; model state carried over job by job"
                )
            }
            Err(e) => tracing::error!(
                "SIGHUP: the new configuration is refused and the running one goes on: {e:#}"
            ),
        }
    }

    fn reload(&mut self, engine: &mut Engine) -> Result<()> {
        let (config, mut transform) = (self.rebuild)()?;
        let later = restart_only_changes(&self.running, &config);
        if !later.is_empty() {
            bail!(
                "{} changed, and a reload does not reopen outputs, rebind the input, or move the \
                 state file or the metrics endpoint; restart egresswatch to apply the new \
                 configuration",
                later.join(", ")
            );
        }
        let routes: Vec<String> = transform
            .routes()
            .into_result()
            .map_err(|e| anyhow::anyhow!("the new detector's routes: {e}"))?
            .into_iter()
            .map(Into::into)
            .collect();
        let missing = self.running.missing_routes(&routes);
        if !missing.is_empty() {
            bail!("{}", missing.join("; "));
        }
        let state = engine
            .transform()
            .save_state()
            .into_result()
            .map_err(|e| anyhow::anyhow!("saving the running model state: {e}"))?;
        // Job by job: a job whose definition changed restarts (the plugin says which and why
        // in its warnings, logged below), the others keep what they learnt.
        transform
            .load_state(state.as_slice().into())
            .into_result()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the running model state could not be carried over to the new detector")?;
        if let Ok(warnings) = transform.warnings().into_result() {
            warnings.iter().for_each(|w| tracing::warn!("{w}"));
        }
        let policy = EnginePolicy {
            batch: config.batch,
            unreadable: config.unreadable,
            fail_closed: config.fail_closed,
        };
        engine.reconfigure(transform, policy);
        self.running = config;
        Ok(())
    }
}

/// The settings a reload does not apply that differ between `running` and `new`, each named
/// by its key (`outputs.NAME` for an output added, removed or changed).
fn restart_only_changes(running: &HostConfig, new: &HostConfig) -> Vec<String> {
    let mut changed: Vec<String> = [
        ("plugin", running.plugin != new.plugin),
        ("input", running.input != new.input),
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
    .filter(|&(_, changed)| changed)
    .map(|(name, _)| name.to_owned())
    .collect();
    let names: BTreeSet<&String> = running.outputs.keys().chain(new.outputs.keys()).collect();
    changed.extend(
        names
            .into_iter()
            .filter(|name| running.outputs.get(*name) != new.outputs.get(*name))
            .map(|name| format!("outputs.{name}")),
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HostConfig {
        HostConfig::parse(text, false).expect("a valid configuration")
    }

    #[test]
    fn what_a_reload_cannot_apply_is_named_key_by_key_and_the_detector_is_not() {
        let running = config(
            "input: { type: tcp, address: '127.0.0.1:6000' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\n",
        );
        let same_but_rules = config(
            "input: { type: tcp, address: '127.0.0.1:6000' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\ndetector: { \
             rules: [elsewhere] }\nbatch: { max_events: 7 }\n",
        );
        assert!(restart_only_changes(&running, &same_but_rules).is_empty());
        let moved = config(
            "input: { type: tcp, address: '127.0.0.1:6001' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  siem: { type: file, path: s.ndjson }\n\
             shutdown_timeout_secs: 5\n",
        );
        assert_eq!(
            restart_only_changes(&running, &moved),
            [
                "input",
                "shutdown_timeout_secs",
                "outputs.pager",
                "outputs.siem"
            ]
        );
    }
}
