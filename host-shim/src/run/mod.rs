//! `egresswatch run`: puts the input, the engine, the outputs, the state file and the metrics
//! endpoint together and runs them until EOF (standard input) or a stop signal (listeners).
//!
//! Start-up: load the state file (setting an unusable one aside), open the outputs, start the
//! metrics endpoint, bind the input. Running: the engine thread processes blocks, saves state
//! every `state.interval_secs` (checked between blocks and while idle) and refreshes metrics.
//! Shutdown: stop reading, process what was read, flush every output, save the state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egresswatch_plugin_api::BuildOption;

use crate::input::listen::{self as adapters, InputStats};
use crate::config::{HostConfig, InputConfig};
use crate::engine::Engine;
use crate::metrics::{self, Shared};
use crate::output::Outputs;
use crate::state::{self, LoadOutcome};
use crate::input::{self as stream, Feed, Finish, Housekeeping};

/// How often the plugin's metrics are copied for the endpoint.
const PLUGIN_METRICS_EVERY: Duration = Duration::from_secs(1);

/// The construction options `run` and `validate` give the plugin: the configuration file's
/// directory, and a hash seed drawn from the operating system's randomness. A state file, once
/// loaded, carries on with the seeds its models were saved with, so the seed drawn at the first
/// start stays the installation's for as long as its state is kept.
pub fn build_options(config: &HostConfig) -> Result<Vec<BuildOption>> {
    let seed = getrandom::u64().map_err(|e| anyhow::anyhow!("drawing a hash seed: {e}"))?;
    Ok(vec![
        BuildOption::BaseDir(config.base_dir.to_string_lossy().as_ref().into()),
        BuildOption::HashSeed(seed),
    ])
}

/// What a run did, for the exit summary.
pub struct RunReport {
    /// How the input ended.
    pub finish: Finish,
    /// Lines written per output.
    pub outputs: Vec<(String, u64)>,
    /// Reconnections per socket output.
    pub reconnects: Vec<(String, u64)>,
    /// State file size after the final save, if state is configured and the save succeeded.
    pub state_bytes: Option<u64>,
}

/// SIGINT and SIGTERM. While the program starts (loading state, opening outputs, starting the
/// metrics endpoint), any of which can block, e.g. a file output that is a FIFO waits for its reader, a
/// signal ends the process at once, with exit status 130 (SIGINT) or 143 (SIGTERM): nothing
/// has been read yet, so nothing is lost. Once [`Signals::started`] is called, a signal only
/// sets the stop flag, and the run stops in order (process what was read, flush, save state).
pub struct Signals {
    stop: Arc<AtomicBool>,
    starting: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers; call it before anything that may block.
    pub fn install() -> std::io::Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let starting = Arc::new(AtomicBool::new(true));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let status = 128 + signal;
            signal_hook::flag::register_conditional_shutdown(
                signal,
                status,
                Arc::clone(&starting),
            )?;
            signal_hook::flag::register(signal, Arc::clone(&stop))?;
        }
        Ok(Signals { stop, starting })
    }

    /// The flag a signal sets once the program runs.
    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    /// Start-up is over: from now on a signal stops the run in order.
    pub fn started(&self) {
        self.starting.store(false, Ordering::SeqCst);
    }
}

/// Runs the pipeline described by `config` until EOF or until a signal sets the stop flag.
pub fn run(
    config: &HostConfig,
    plugin_name: &str,
    engine: &mut Engine,
    signals: &Signals,
) -> Result<RunReport> {
    let stop = signals.stop_flag();
    let shared = Shared::default();
    let state_path = config.state.as_ref().map(|s| config.resolve(&s.path));
    let state_max = config
        .state
        .as_ref()
        .map_or(state::DEFAULT_MAX_BYTES, |s| s.max_bytes);
    if let Some(path) = &state_path {
        let outcome = state::load_file(path, plugin_name, state_max, |bytes| {
            engine
                .transform_mut()
                .load_state(bytes.into())
                .into_result()
                .map_err(|e| e.to_string())
        })?;
        match outcome {
            LoadOutcome::Missing => {
                tracing::info!(path = %path.display(), "no state file yet; the models start learning")
            }
            LoadOutcome::Loaded(bytes) => {
                shared.lock().state_file_bytes = bytes;
                tracing::info!(path = %path.display(), bytes, "model state loaded");
            }
            LoadOutcome::SetAside { moved_to, reason } => tracing::warn!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                "state file is unusable ({reason}); renamed aside, the models start learning afresh"
            ),
        }
    }

    let mut outputs = Outputs::open_with_stop(config, stop).context("opening outputs")?;
    if let Some(m) = &config.metrics {
        let local = metrics::serve(&m.address, shared.clone(), Arc::clone(stop))?;
        tracing::info!("metrics at http://{local}/metrics");
    }

    // From the first line read on, a signal must stop the run in order, not end the process.
    signals.started();
    let max_line_bytes = engine.policy().batch.max_line_bytes;
    let stats = Arc::new(InputStats::default());
    let (feed, rx) = Feed::channel();
    let wait_for_readers = match &config.input {
        InputConfig::Stdin => {
            stream::spawn_reader(std::io::stdin(), feed, max_line_bytes)?;
            false
        }
        InputConfig::Tcp {
            address,
            max_connections,
        } => {
            let listener = adapters::bind_tcp(address)?;
            let local = adapters::spawn_tcp(
                listener,
                feed,
                max_line_bytes,
                *max_connections,
                Arc::clone(stop),
                Arc::clone(&stats),
            )?;
            tracing::info!("listening on tcp://{local}");
            true
        }
        InputConfig::Unix {
            path,
            max_connections,
        } => {
            let path = config.resolve(path);
            let listener = adapters::bind_unix(&path)?;
            adapters::spawn_unix(
                listener,
                feed,
                max_line_bytes,
                *max_connections,
                Arc::clone(stop),
                Arc::clone(&stats),
            )?;
            tracing::info!("listening on unix://{}", path.display());
            true
        }
    };

    let mut keeper = Keeper {
        shared,
        stats,
        plugin_name: plugin_name.to_owned(),
        state: config.state.as_ref().zip(state_path).map(|(s, path)| {
            (
                path,
                Duration::from_secs(s.interval_secs),
                Instant::now(), // last save
            )
        }),
        state_max,
        plugin_refreshed: None,
        metrics_failed: false,
    };
    let driven = stream::drive(
        &rx,
        engine,
        &mut outputs,
        stop,
        wait_for_readers,
        &mut keeper,
    );
    // Stop the listener and the metrics endpoint whatever happened.
    stop.store(true, Ordering::Relaxed);
    // Save what was learned even when delivery failed: processing is done either way.
    let state_bytes = keeper.save(engine);
    let finish = driven.context("processing the event stream")?;
    outputs.flush().context("flushing outputs")?;
    Ok(RunReport {
        finish,
        outputs: outputs.counts(),
        reconnects: outputs.reconnects(),
        state_bytes,
    })
}

/// The engine thread's housekeeping: metrics snapshot and periodic state saves.
struct Keeper {
    shared: Shared,
    stats: Arc<InputStats>,
    plugin_name: String,
    /// State file, save interval, time of the last save.
    state: Option<(PathBuf, Duration, Instant)>,
    /// `state.max_bytes`: a larger file is saved, with a warning that it will not load.
    state_max: u64,
    plugin_refreshed: Option<Instant>,
    /// Whether fetching the plugin's metrics failed already (logged once).
    metrics_failed: bool,
}

impl Keeper {
    fn refresh(&mut self, engine: &Engine, outputs: &Outputs) {
        let refresh_plugin = self
            .plugin_refreshed
            .is_none_or(|at| at.elapsed() >= PLUGIN_METRICS_EVERY);
        let plugin = refresh_plugin.then(|| engine.transform().metrics().into_result());
        let mut s = self.shared.lock();
        s.host = engine.counters().clone();
        s.outputs = outputs.counts();
        s.reconnects = outputs.reconnects();
        s.connections = self.stats.open.load(Ordering::Relaxed);
        s.connections_total = self.stats.total.load(Ordering::Relaxed);
        if let Some(plugin) = plugin {
            match plugin {
                Ok(metrics) => s.plugin = metrics.into_vec(),
                Err(e) if !self.metrics_failed => {
                    self.metrics_failed = true;
                    tracing::warn!(error = %e, "the plugin's metrics are unavailable");
                }
                Err(_) => {}
            }
            self.plugin_refreshed = Some(Instant::now());
        }
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
    fn save(&mut self, engine: &Engine) -> Option<u64> {
        let (path, _, last) = self.state.as_mut()?;
        *last = Instant::now();
        let result = engine
            .transform()
            .save_state()
            .into_result()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let file = state::encode(&self.plugin_name, &bytes);
                state::write_atomically(path, &file)
                    .map(|()| file.len() as u64)
                    .map_err(|e| format!("writing {}: {e}", path.display()))
            });
        let mut s = self.shared.lock();
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

impl Housekeeping for Keeper {
    fn after_block(&mut self, engine: &mut Engine, outputs: &Outputs, took: Duration) {
        self.shared.lock().batch_latency.observe(took.as_secs_f64());
        self.refresh(engine, outputs);
        self.maybe_save(engine);
    }

    fn idle(&mut self, engine: &mut Engine, outputs: &Outputs) {
        self.refresh(engine, outputs);
        self.maybe_save(engine);
    }
}
