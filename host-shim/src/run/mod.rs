//! `egresswatch run`: puts the input, the engine, the outputs, the state file and the metrics
//! endpoint together and runs them until EOF (standard input) or a stop signal (listeners).
//!
//! Start-up: load the state file (setting an unusable one aside), open the outputs, start the
//! metrics endpoint, bind the input. Running: the engine thread processes blocks, saves state
//! every `state.interval_secs` (checked between blocks and while idle) and refreshes metrics.
//! Shutdown: stop reading, process what was read, flush every output, save the state.

mod drive;
mod housekeeping;
mod order;
mod reload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egresswatch_plugin_api::BuildOption;

pub use drive::Finish;
use housekeeping::Keeper;
pub use reload::Rebuild;
use reload::Reloader;

use crate::config::HostConfig;
use crate::engine::Engine;
use crate::http::{self, Plain, Servers};
use crate::input::listen::InputStats;
use crate::input::{self, Feed, Msg};
use crate::metrics::{self, BuildInfo, Metrics};
use crate::output::{Deadline, OutputStatus, Outputs};
use crate::state::{self, LoadOutcome};

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
    /// Each output's figures at the end (delivered, dropped, reconnections, ...).
    pub outputs: Vec<OutputStatus>,
    /// State file size after the final save, if state is configured and the save succeeded.
    pub state_bytes: Option<u64>,
}

/// How long, once the shutdown deadline has passed, the readers are given to end and count
/// what they could not hand over.
const READERS_END: Duration = Duration::from_secs(1);

/// SIGINT and SIGTERM. While the program starts (loading state, opening outputs, starting the
/// metrics endpoint), any of which can block, e.g. a file output that is a FIFO waits for its reader, a
/// signal ends the process at once, with exit status 130 (SIGINT) or 143 (SIGTERM): nothing
/// has been read yet, so nothing is lost. Once [`Signals::started`] is called, a signal only
/// sets the stop flag, and the run stops in order (process what was read, flush, save state).
///
/// SIGHUP never ends the process: it asks for a reload ([`reload`]), carried out once the run
/// has started.
pub struct Signals {
    stop: Arc<AtomicBool>,
    starting: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
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
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
        Ok(Signals {
            stop,
            starting,
            hup,
        })
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
/// `build` says what runs (for `egresswatch_build_info`; `build.plugin` names the state's
/// owner). On SIGHUP, `rebuild` makes the new detector from the files as they are then.
pub fn run(
    config: &HostConfig,
    build: BuildInfo,
    engine: &mut Engine,
    signals: &Signals,
    rebuild: &mut Rebuild<'_>,
) -> Result<RunReport> {
    let stop = signals.stop_flag();
    let plugin_name = build.plugin.clone();
    let plugin_name = plugin_name.as_str();
    let metrics = Metrics::new(build);
    metrics.input_declared("input");
    let state_path = config.state.as_ref().map(|s| config.resolve(&s.path));
    let state_max = config
        .state
        .as_ref()
        .map_or(state::DEFAULT_MAX_BYTES, |s| s.max_bytes);
    if state_path.is_none() {
        tracing::warn!(
            "no state file configured (`state: {{ path: ... }}`): what the models learn is lost \
             at exit, and every start learns again from nothing before it can flag anything"
        );
    }
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
                metrics.snapshot().state_file_bytes = bytes;
                // The plugin says which jobs restart (their definition changed), are new or
                // were dropped; the rest keep what they learnt.
                engine.log_new_warnings();
                tracing::info!(path = %path.display(), bytes, "model state loaded");
            }
            LoadOutcome::SetAside { moved_to, reason } => tracing::warn!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                "state file is unusable ({reason}); renamed aside, the models start learning afresh"
            ),
        }
    }

    let deadline = Deadline::new(stop, Duration::from_secs(config.shutdown_timeout_secs));
    // Read as the outputs and input are built: a reload rebuilds one whose files changed since.
    let tls_files = reload::tls_files(config);
    let mut outputs = Outputs::open(config, &deadline, &metrics).context("opening outputs")?;
    let servers = match &config.metrics {
        Some(m) => Some(serve_metrics(&m.address, &metrics)?),
        None => None,
    };

    // From the first line read on, a signal must stop the run in order, not end the process.
    signals.started();
    let max_line_bytes = engine.policy().batch.max_line_bytes;
    let (feed, rx) = Feed::channel();
    let input = input::start(
        &config.input,
        &config.base_dir,
        feed,
        max_line_bytes,
        stop,
        &deadline,
    )?;
    let input_stats = Arc::clone(&input.stats);
    let wait_for_readers = input.wait_for_readers;
    let time_field = config
        .detector
        .get("time_field")
        .and_then(|f| f.as_str())
        .unwrap_or(egresswatch_common::names::fields::TIMESTAMP);
    let mut order = order::Order::new(
        input.lanes.clone(),
        config.input.order_window(),
        time_field,
        Arc::clone(&input.stats),
    );
    metrics.input_bound("input", &input.address);
    tracing::info!(
        input = %input.address,
        metrics = %servers.as_ref().map_or("off", |(_, url)| url.as_str()),
        "egresswatch started"
    );

    let mut keeper = Keeper {
        metrics,
        stats: Arc::clone(&input.stats),
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
        learning: Vec::new(),
        reload: Reloader {
            flag: Arc::clone(&signals.hup),
            rebuild,
            running: config.clone(),
            tls_files,
            input,
            stop: Arc::clone(stop),
            deadline: deadline.clone(),
            metrics_server: servers,
        },
    };
    let driven = drive::drive(
        &rx,
        &mut order,
        engine,
        &mut outputs,
        stop,
        &deadline,
        wait_for_readers,
        &mut keeper,
    );
    // Readers waiting for the engine's credit go on (and count what they could not hand over).
    drop(order);
    // The outputs have until the deadline to deliver what they hold.
    deadline.start();
    // Stop the listener and the metrics endpoint whatever happened.
    stop.store(true, Ordering::Relaxed);
    let not_taken = unprocessed_lines(rx, &input_stats, &deadline);
    let (statuses, undelivered) = outputs.finish();
    let mut undelivered: Vec<String> = undelivered.iter().map(ToString::to_string).collect();
    if not_taken > 0 {
        undelivered.insert(
            0,
            format!(
                "input {}: {not_taken} line(s) read but not delivered (shutdown_timeout_secs \
                 passed before they were processed)",
                keeper.reload.input.address
            ),
        );
    }
    if let Some((servers, _)) = keeper.reload.metrics_server.take() {
        servers.shutdown();
    }
    // Save what was learned even when delivery failed: processing is done either way.
    let state_bytes = keeper.save(engine);
    let finish = driven.context("processing the event stream");
    if !undelivered.is_empty() {
        let list = undelivered;
        let err = anyhow::anyhow!(
            "not everything read was delivered:\n  - {}",
            list.join("\n  - ")
        );
        return Err(match finish {
            Err(e) => err.context(format!("{e:#}")),
            Ok(_) => err,
        });
    }
    Ok(RunReport {
        finish: finish?,
        outputs: statuses,
        state_bytes,
    })
}

/// Lines the readers read that the engine never processed: those left in the channel, and
/// those a reader could not hand over once the engine was gone (counted by the readers). The
/// engine stops before the readers only at the deadline, where the readers end too: the channel
/// is emptied (and counted) until they have, for at most [`READERS_END`].
fn unprocessed_lines(rx: Receiver<Msg>, stats: &InputStats, deadline: &Deadline) -> u64 {
    let until = Instant::now() + READERS_END;
    let mut queued = 0;
    loop {
        queued += rx.try_iter().map(|msg| msg.lines()).sum::<u64>();
        let readers_done = stats.readers.load(Ordering::Relaxed) == 0;
        if !deadline.passed() || readers_done || Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(rx);
    queued + stats.undelivered.load(Ordering::Relaxed)
}

/// Starts the HTTP runtime and the metrics endpoint on `address`; the bind happens (or fails)
/// before this returns. Returns the servers and the endpoint's URL.
pub(super) fn serve_metrics(address: &str, metrics: &Metrics) -> Result<(Servers, String)> {
    let servers = Servers::start().context("starting the HTTP runtime")?;
    // A host name is resolved here, once.
    let parsed = std::net::ToSocketAddrs::to_socket_addrs(address)
        .with_context(|| format!("metrics.address: cannot resolve `{address}`"))?
        .next()
        .with_context(|| format!("metrics.address: `{address}` has no address"))?;
    let local = servers
        .serve(
            parsed,
            Plain,
            metrics::endpoint(metrics.clone()),
            http::Limits::default(),
        )
        .with_context(|| format!("metrics.address: cannot listen on {address}"))?;
    Ok((servers, format!("http://{local}/metrics")))
}
