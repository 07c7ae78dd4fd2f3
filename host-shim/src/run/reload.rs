//! SIGHUP: the configuration files and rules read again while the run goes on.
//!
//! The engine thread checks for SIGHUP between blocks, while idle, and while it waits on an
//! output's full `block` buffer ([`Reloader::wake`]). A reload builds a new
//! transform from the files as they are now (with the plugin already loaded), checks its routes
//! against the new outputs, carries the model state over (saved from the running transform,
//! loaded into the new one), and builds every output the new configuration changes, all before
//! it replaces anything; if any step fails, the running configuration goes on whole and the
//! reason is logged. The state is carried over job by job: a job whose definition changed
//! (function, fields, filters, bucket span) starts learning afresh and the plugin's warning says
//! which and why; every other job keeps what it learnt.
//!
//! What a reload applies: `detector` (rules, actions, models, jobs, GeoIP), `unreadable`,
//! `fail_closed`, `batch.max_events`, `state.interval_secs` and `state.max_bytes`, and
//! `outputs`: an output added, changed or removed, or one whose TLS files (`ca_file`,
//! `cert_file`, `key_file`) changed content (a renewed certificate), is rebuilt: the new one is
//! built first (a file that cannot be opened or a certificate that cannot be read refuses the
//! reload), then the old one's buffer is closed and it delivers what it holds until its own
//! deadline (`shutdown_timeout_secs`), while the new one takes the lines from then on and
//! delivers them once the old one has finished, so nothing is lost between them and each
//! output's order is kept ([`Outputs::apply`]). A `tcp` or `unix` listener that changed (or
//! whose TLS files did) is replaced ([`input::rebind`]), and a metrics endpoint at a new address
//! is bound before the old one stops. Whether or not the reload is taken, every file
//! output reopens its path before its next batch (log rotation: logrotate renames the file,
//! then sends SIGHUP).
//!
//! What a reload refuses, naming the key and why (the running configuration goes on; a restart
//! applies it): `plugin` (a loaded library cannot be unloaded safely), `state.path` (the running
//! models would be written over whatever is at the new path, never loaded), standard input or
//! the HTTP input, and an output whose disk buffer would not stay in its folder (added,
//! removed, moved, turned to or from memory: see [`disk_moved`]). An output that keeps its disk
//! buffer in the same folder is rebuilt around the same buffer: the old delivery thread stops
//! between batches and the new one reads on from the buffer's cursor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::order::Order;
use crate::config::{BufferKind, ClientTls, HostConfig, InputConfig, OutputConfig};
use crate::engine::{Engine, EnginePolicy};
use crate::http::Servers;
use crate::input::{self, Started};
use crate::loader::Transform;
use crate::metrics::Metrics;
use crate::output::{same_folder, Deadline, Outputs};

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
    /// The content of the running input's and each output's TLS files, as they were read
    /// when it was built ([`tls_files`]).
    pub(super) tls_files: BTreeMap<String, Vec<u8>>,
    /// The running input.
    pub(super) input: Started,
    /// The run's stop flag and delivery deadline, for a new listener.
    pub(super) stop: Arc<AtomicBool>,
    pub(super) deadline: Deadline,
    /// The metrics endpoint and its URL, when configured.
    pub(super) metrics_server: Option<(Servers, String)>,
}

/// What the engine thread's housekeeping hands a reload to change.
pub(super) struct Live<'a> {
    pub(super) outputs: &'a mut Outputs,
    pub(super) order: &'a mut Order,
    pub(super) metrics: &'a Metrics,
    /// State file save interval and size limit, applied live.
    pub(super) state: Option<&'a mut (PathBuf, std::time::Duration, std::time::Instant)>,
    pub(super) state_max: &'a mut u64,
}

impl Reloader<'_> {
    /// Reloads if SIGHUP arrived since the last call. A line being streamed to an output in
    /// pieces (an oversize line from standard input) is finished first: the reload waits for
    /// its last piece.
    pub(super) fn check(&mut self, engine: &mut Engine, live: Live<'_>) {
        if self.wake(engine).is_none() || !self.flag.swap(false, Ordering::Relaxed) {
            return;
        }
        // Whatever becomes of the reload, file outputs reopen their paths (log rotation).
        crate::output::reopen_files();
        tracing::info!("SIGHUP: reading the configuration and rules again");
        match self.reload(engine, live) {
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

    /// The flag SIGHUP sets, when a reload could be taken now: an engine waiting on a full
    /// `block` buffer stops waiting when it is set ([`Outputs::commit_or_hold`]), takes the
    /// reload, and commits again. None while a line is streamed in pieces (the reload waits for
    /// its end) and after a stop signal (the run is finishing: a reload would only replace
    /// what is about to end; the flag is left for nobody).
    pub(super) fn wake(&self, engine: &Engine) -> Option<Arc<AtomicBool>> {
        (!engine.streaming_a_line() && !self.stop.load(Ordering::Relaxed))
            .then(|| Arc::clone(&self.flag))
    }

    fn reload(&mut self, engine: &mut Engine, live: Live<'_>) -> Result<()> {
        let (config, mut transform) = (self.rebuild)()?;
        let refused = refused(&self.running, &config);
        if !refused.is_empty() {
            bail!(
                "{}; restart egresswatch to apply the new configuration",
                refused.join("; ")
            );
        }
        let routes: Vec<String> = transform
            .routes()
            .into_result()
            .map_err(|e| anyhow::anyhow!("the new detector's routes: {e}"))?
            .into_iter()
            .map(Into::into)
            .collect();
        let missing = config.missing_routes(&routes);
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
        // The outputs to rebuild and the listener to replace, built now (their threads started,
        // waiting): one that cannot be built (a file that cannot be opened, an address that
        // cannot be bound, a thread that cannot be started) refuses the reload, and nothing
        // running has changed.
        let tls_files = tls_files(&config);
        let changed = changed_outputs(&self.running, &config, &self.tls_files, &tls_files);
        let moved = disk_moved(&self.running, &config, &changed);
        if !moved.is_empty() {
            bail!(
                "{} changed: a reload replaces an output with a disk buffer only when the buffer \
                 stays in the same folder (a disk buffer added, removed, moved to another \
                 folder or turned to or from memory, or an output with one added or removed, \
                 would leave lines in a folder no output reads, or need one locked by the \
                 running output); restart egresswatch to apply the new configuration",
                moved.join(", ")
            );
        }
        let rebind = if rebinds(&self.running, &config, &self.tls_files, &tls_files) {
            let prepared = input::prepare_rebind(
                (&self.running.input, &self.input),
                &config.input,
                &config.base_dir,
                config.batch.max_line_bytes,
                (&self.stop, &self.deadline),
            )
            .context("the changed input could not be set up")?;
            Some(prepared)
        } else {
            None
        };
        // A metrics endpoint at a new address is bound now too.
        let address = |c: &HostConfig| c.metrics.as_ref().map(|m| m.address.clone());
        let moved_metrics = address(&self.running) != address(&config);
        let new_metrics = match (&config.metrics, moved_metrics) {
            (Some(m), true) => Some(
                super::serve_metrics(&m.address, live.metrics)
                    .context("the new metrics endpoint could not be started")?,
            ),
            _ => None,
        };
        // Last, as it registers the new outputs' health: one that cannot be built refuses the
        // reload, and what it registered is forgotten.
        let changes = match live.outputs.prepare(&config, &changed, live.metrics) {
            Ok(changes) => changes,
            Err(e) => {
                for name in changed
                    .iter()
                    .filter(|n| !self.running.outputs.contains_key(*n))
                {
                    if name != egresswatch_plugin_api::DEFAULT_OUTPUT {
                        live.metrics.forget_output(name);
                    }
                }
                return Err(e).context("a changed output could not be built");
            }
        };
        // From here on nothing is refused.
        if let Ok(warnings) = transform.warnings().into_result() {
            warnings.iter().for_each(|w| tracing::warn!("{w}"));
        }
        live.outputs.apply(changes, live.metrics);
        if let Some(prepared) = rebind {
            let before = self.input.address.clone();
            if input::rebind(&mut self.input, prepared) {
                live.metrics.input_bound("input", &self.input.address);
                tracing::info!(from = %before, to = %self.input.address,
                    "input replaced by the reload: the old listener's open connections are \
                     read on until their senders close them, new ones go to the new listener");
            }
        }
        if moved_metrics {
            let old = std::mem::replace(&mut self.metrics_server, new_metrics);
            let now = self
                .metrics_server
                .as_ref()
                .map_or("off", |(_, url)| url.as_str());
            tracing::info!(metrics = %now, "metrics endpoint moved by the reload");
            // The old endpoint answers what it is serving, then stops, off the engine thread.
            if let Some((servers, _)) = old {
                let _ = std::thread::Builder::new()
                    .name("egresswatch-metrics-stop".into())
                    .spawn(move || servers.shutdown());
            }
        }
        live.order.set_window(config.input.order_window());
        self.deadline
            .set_timeout(std::time::Duration::from_secs(config.shutdown_timeout_secs));
        if let (Some(state), Some(new)) = (live.state, &config.state) {
            state.1 = std::time::Duration::from_secs(new.interval_secs);
            *live.state_max = new.max_bytes;
        }
        let policy = EnginePolicy {
            batch: config.batch,
            unreadable: config.unreadable,
            fail_closed: config.fail_closed,
        };
        engine.reconfigure(transform, policy);
        self.running = config;
        self.tls_files = tls_files;
        Ok(())
    }
}

/// The outputs among `changed` with a disk buffer before or after that a reload cannot keep in
/// place (it keeps one only when the output has a disk buffer in the same folder before and
/// after), as `outputs.NAME`.
fn disk_moved(running: &HostConfig, new: &HostConfig, changed: &[String]) -> Vec<String> {
    let folder = |config: &HostConfig, name: &str| {
        let buffer = config.outputs.get(name)?.buffer();
        let path = buffer
            .path
            .as_ref()
            .filter(|_| buffer.kind == BufferKind::Disk)?;
        Some(config.resolve(path))
    };
    let on_disk =
        |config: &HostConfig, name: &str| config.outputs.get(name).map(|o| o.buffer().kind);
    changed
        .iter()
        .filter(|name| {
            let disk =
                [on_disk(running, name), on_disk(new, name)].contains(&Some(BufferKind::Disk));
            let kept = match (folder(running, name), folder(new, name)) {
                (Some(before), Some(after)) => same_folder(&before, &after),
                _ => false,
            };
            disk && !kept
        })
        .map(|name| format!("outputs.{name}"))
        .collect()
}

/// `input` with `order_window_ms` left out: the ordering stage applies it live, it is no reason
/// to replace the listener.
fn without_window(input: &InputConfig) -> InputConfig {
    let mut input = input.clone();
    if let InputConfig::Tcp {
        order_window_ms, ..
    }
    | InputConfig::Unix {
        order_window_ms, ..
    } = &mut input
    {
        *order_window_ms = 0;
    }
    input
}

/// Whether `input` is a `tcp` or `unix` listener, which a reload can replace.
fn is_listener(input: &InputConfig) -> bool {
    matches!(input, InputConfig::Tcp { .. } | InputConfig::Unix { .. })
}

/// Whether a reload from `running` to `new` replaces the listener: it changed, its TLS files
/// read differently now, or `batch.max_line_bytes` (which its readers apply) changed.
fn rebinds(
    running: &HostConfig,
    new: &HostConfig,
    then: &BTreeMap<String, Vec<u8>>,
    now: &BTreeMap<String, Vec<u8>>,
) -> bool {
    is_listener(&running.input)
        && is_listener(&new.input)
        && (without_window(&running.input) != without_window(&new.input)
            || then.get("input") != now.get("input")
            || running.batch.max_line_bytes != new.batch.max_line_bytes)
}

/// The changes between `running` and `new` that a reload refuses, each naming its key and why.
fn refused(running: &HostConfig, new: &HostConfig) -> Vec<String> {
    let state_path = |c: &HostConfig| c.state.as_ref().map(|s| s.path.clone());
    let stdin = |c: &HostConfig| matches!(c.input, InputConfig::Stdin);
    [
        (
            running.plugin != new.plugin,
            "plugin changed: a loaded plugin library cannot be unloaded safely",
        ),
        (
            state_path(running) != state_path(new),
            "state.path changed: the running models would be saved over whatever is at the \
             new path, which was never loaded",
        ),
        (
            running.input != new.input && !(is_listener(&running.input) && is_listener(&new.input)),
            "input changed: a reload replaces a tcp or unix listener with another, but does not \
             reopen standard input or move the HTTP input's server",
        ),
        (
            running.batch.max_line_bytes != new.batch.max_line_bytes && stdin(running),
            "batch.max_line_bytes changed: standard input's reader keeps the limit it started \
             with",
        ),
    ]
    .into_iter()
    .filter(|&(changed, _)| changed)
    .map(|(_, why)| why.to_owned())
    .collect()
}

/// The outputs to rebuild: added, removed or changed between `running` and `new`, or whose TLS
/// files read differently now (`then`: as read when the running ones were built).
fn changed_outputs(
    running: &HostConfig,
    new: &HostConfig,
    then: &BTreeMap<String, Vec<u8>>,
    now: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let names: BTreeSet<&String> = running.outputs.keys().chain(new.outputs.keys()).collect();
    names
        .into_iter()
        .filter(|name| {
            let key = format!("outputs.{name}");
            running.outputs.get(*name) != new.outputs.get(*name) || then.get(&key) != now.get(&key)
        })
        .cloned()
        .collect()
}

/// The content of the TLS files of the input (`input`: `cert_file`, `key_file`,
/// `client_ca_file`) and of each output (`outputs.NAME`: `ca_file`, `cert_file`, `key_file`),
/// each file prefixed by its length (one that cannot be read counts as its error text): a
/// renewed certificate is a change of its input or output.
pub(super) fn tls_files(config: &HostConfig) -> BTreeMap<String, Vec<u8>> {
    let read = |paths: &[Option<&PathBuf>]| {
        let mut content = Vec::new();
        for path in paths {
            let bytes = match path {
                Some(path) => std::fs::read(config.resolve(path))
                    .unwrap_or_else(|e| format!("unreadable: {e}").into_bytes()),
                None => Vec::new(),
            };
            content.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            content.extend_from_slice(&bytes);
        }
        content
    };
    let mut files = BTreeMap::new();
    if let InputConfig::Tcp { tls: Some(tls), .. } = &config.input {
        let paths = [
            Some(&tls.cert_file),
            Some(&tls.key_file),
            tls.client_ca_file.as_ref(),
        ];
        files.insert("input".to_owned(), read(&paths));
    }
    for (name, output) in &config.outputs {
        let tls: Option<&ClientTls> = match output {
            OutputConfig::Tcp { tls, .. } | OutputConfig::Http { tls, .. } => tls.as_ref(),
            _ => None,
        };
        let Some(tls) = tls else { continue };
        let paths = [
            tls.ca_file.as_ref(),
            tls.cert_file.as_ref(),
            tls.key_file.as_ref(),
        ];
        files.insert(format!("outputs.{name}"), read(&paths));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HostConfig {
        HostConfig::parse(text, false).expect("a valid configuration")
    }

    fn moved_input() -> HostConfig {
        config(
            "input: { type: tcp, address: '127.0.0.1:6001' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\n",
        )
    }

    #[test]
    fn what_a_reload_refuses_is_named_with_why_and_changed_outputs_are_rebuilt() {
        let running = config(
            "input: { type: tcp, address: '127.0.0.1:6000' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\n",
        );
        let same_but_rules = config(
            "input: { type: tcp, address: '127.0.0.1:6000' }\noutputs:\n  default: { type: \
             file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\ndetector: { \
             rules: [elsewhere] }\nbatch: { max_events: 7 }\n",
        );
        assert!(refused(&running, &same_but_rules).is_empty());
        let none = BTreeMap::new();
        assert!(changed_outputs(&running, &same_but_rules, &none, &none).is_empty());
        let moved = config(
            "input: { type: tcp, address: '127.0.0.1:6000' }\noutputs:\n  default: { type: \
             file, path: b.ndjson }\n  siem: { type: file, path: s.ndjson }\n\
             shutdown_timeout_secs: 5\n",
        );
        assert!(refused(&running, &moved).is_empty());
        let elsewhere = config(
            "input: { type: stdin }\noutputs:\n  default: { type: file, path: a.ndjson }\n\
             metrics: { address: '127.0.0.1:9' }\nplugin: other.so\n",
        );
        // A new order window alone is applied live, without a new listener.
        let window = config(
            "input: { type: tcp, address: '127.0.0.1:6000', order_window_ms: 10 }\noutputs:\n  \
             default: { type: file, path: a.ndjson }\n  pager: { type: file, path: p.ndjson }\n",
        );
        assert!(!rebinds(&running, &window, &none, &none));
        assert!(rebinds(&running, &moved_input(), &none, &none));
        let why = refused(&running, &elsewhere);
        assert_eq!(why.len(), 2, "{why:?}");
        for (why, key) in why.iter().zip(["plugin", "input"]) {
            assert!(why.starts_with(&format!("{key} changed: ")), "{why}");
        }
        assert_eq!(
            changed_outputs(&running, &moved, &none, &none),
            ["default", "pager", "siem"]
        );
        // An output with a disk buffer is replaced live only when the buffer stays in its
        // folder: one turned from memory to disk, or moved, is not.
        let disk = |output: &str| {
            config(&format!(
                "input: {{ type: tcp, address: '127.0.0.1:6000' }}\noutputs:\n  default: \
                 {{ {output} }}\n  pager: {{ type: file, path: p.ndjson }}\n"
            ))
        };
        let on_disk = disk("type: file, path: a.ndjson, buffer: { type: disk, path: buf }");
        let changed = changed_outputs(&running, &on_disk, &none, &none);
        assert_eq!(changed, ["default"]);
        assert_eq!(
            disk_moved(&running, &on_disk, &changed),
            ["outputs.default"]
        );
        assert_eq!(
            disk_moved(&on_disk, &running, &changed),
            ["outputs.default"]
        );
        let elsewhere = disk("type: tcp, address: 'x:1', buffer: { type: disk, path: other }");
        assert_eq!(
            disk_moved(&on_disk, &elsewhere, &changed),
            ["outputs.default"]
        );
        let kept = disk("type: tcp, address: 'x:1', buffer: { type: disk, path: ./buf }");
        assert!(disk_moved(&on_disk, &kept, &changed).is_empty());
        assert!(disk_moved(&running, &moved, &["pager".to_owned()]).is_empty());
        // The same configuration with a certificate file whose content changed.
        let renewed = BTreeMap::from([("outputs.pager".to_owned(), b"new".to_vec())]);
        let before = BTreeMap::from([("outputs.pager".to_owned(), b"old".to_vec())]);
        assert_eq!(
            changed_outputs(&running, &running, &before, &renewed),
            ["pager"]
        );
    }
}
