//! Metrics and health: one `prometheus-client` registry, served with `/health` by the HTTP
//! module (`GET`/`HEAD /metrics`, `/health`).
//!
//! What is in the registry, and who feeds it:
//! - The engine thread's counters (events in, out per output, unreadable by kind, ...): the
//!   engine thread copies them into a [`Snapshot`] after each block and while idle; a collector
//!   renders the snapshot at scrape time. The hot loop never touches an atomic per event.
//! - The batch latency histogram: observed by the engine thread once per block.
//! - The plugin's typed metrics, copied at most once a second by the engine thread (the only
//!   thread that may call the plugin) and rendered generically: the host knows none of their
//!   names. A family whose name is not a valid Prometheus name, or is one of the host's, is
//!   left out; a label Prometheus reserves for the target (`job`, `instance`) is renamed
//!   `exported_job` / `exported_instance`, as Prometheus itself would.
//! - Per output: delivered, resent (written again: counted once, in delivered), dropped,
//!   pending bytes and lines, up, blocked (the engine waiting for room in its buffer),
//!   reconnects, errors and the time of the last error, and for a disk
//!   buffer its size on disk, the lines it replayed and the corrupt records it found at start
//!   ([`OutputHealth`]), fed by the output's buffer and delivery thread, read at scrape time so
//!   that a stalled engine cannot freeze them.
//! - Build information (`egresswatch_build_info`) and the standard `process_*` metrics
//!   (read from the operating system at scrape time by the `metrics-process` crate).
//!
//! Naming follows Prometheus: `egresswatch_` prefix, base units (`_seconds`, `_bytes`),
//! counters end in `_total`, one family per name, no label named `job`.
//!
//! The exposition is OpenMetrics text for a client that asks for it (Prometheus does), and the
//! classic Prometheus text format (0.0.4) otherwise (curl, Vector's and Fluent Bit's
//! `prometheus_scrape`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use egresswatch_plugin_api::Metric;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::counters::HostCounters;
use crate::http::{self, Body, Handler};

mod collect;

use collect::{HostCollector, PluginCollector, ProcessCollector};

/// Upper bounds of the batch latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// What the program is, for `egresswatch_build_info` and `/health`.
#[derive(Debug, Clone, Default)]
pub struct BuildInfo {
    /// The host's version.
    pub version: String,
    /// The commit it was built from (`unknown` outside a git checkout).
    pub commit: String,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's own version.
    pub plugin_version: String,
    /// The plugin ABI version the plugin was built against.
    pub abi_version: String,
}

/// The engine thread's counters, as last copied.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The engine's counters.
    pub(crate) host: HostCounters,
    /// Size of the state file as last written or read, in bytes.
    pub(crate) state_file_bytes: u64,
    /// Successful state saves.
    pub(crate) state_saves: u64,
    /// Failed state saves.
    pub(crate) state_save_errors: u64,
    /// Input connections currently open.
    pub(crate) connections_open: u64,
    /// Input connections accepted so far.
    pub(crate) connections_accepted: u64,
    /// Input connections closed at once because `max_connections` were open.
    pub(crate) connections_refused: u64,
    /// Input connections closed because their TLS handshake failed.
    pub(crate) tls_handshake_failures: u64,
    /// HTTP input requests answered, by status.
    pub(crate) http_requests: Vec<(u16, u64)>,
    /// Lines the ordering stage let go without waiting for a quiet connection.
    pub(crate) order_released_early: u64,
}

/// The health of one output, fed by whoever delivers to it, from any thread.
#[derive(Debug, Clone)]
pub struct OutputHealth(Arc<OutputState>);

#[derive(Debug)]
struct OutputState {
    name: String,
    inner: Mutex<OutputValues>,
}

#[derive(Debug, Clone, Default)]
struct OutputValues {
    up: bool,
    pending_bytes: u64,
    errors: u64,
    last_error: Option<(f64, String)>,
    delivered: u64,
    resent: u64,
    dropped: u64,
    pending_lines: u64,
    blocked: bool,
    blocked_seconds: f64,
    reconnects: u64,
    /// Size of its disk buffer's files.
    disk_bytes: u64,
    /// Lines found in its disk buffer at start.
    replayed: u64,
    /// Corrupt records found in its disk buffer.
    corrupt: u64,
}

/// One output's figures at one moment (for the exit summary and the run report).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputStatus {
    /// The output's name.
    pub name: String,
    /// Whether its last delivery attempt succeeded.
    pub up: bool,
    /// Lines delivered (taken by the peer as far as its transport tells).
    pub delivered: u64,
    /// Lines written again because the peer may not have had them (after a broken connection,
    /// or by the output a reload put in its place): counted in `delivered` once, when first
    /// written; the peer may have some of them twice.
    pub resent: u64,
    /// Lines dropped by `when_full: drop_newest`.
    pub dropped: u64,
    /// Bytes not yet delivered.
    pub pending_bytes: u64,
    /// Lines not yet delivered.
    pub pending_lines: u64,
    /// Whether the engine is waiting for room in its buffer.
    pub blocked: bool,
    /// Time the engine spent waiting for room, in seconds.
    pub blocked_seconds: f64,
    /// Connections made again after a failure.
    pub reconnects: u64,
    /// Failed delivery attempts.
    pub errors: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

impl OutputHealth {
    fn lock(&self) -> MutexGuard<'_, OutputValues> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the output can take events now (a socket output: connected).
    pub fn set_up(&self, up: bool) {
        self.lock().up = up;
    }

    /// Bytes held for the output, not yet delivered.
    pub fn set_pending_bytes(&self, bytes: u64) {
        self.lock().pending_bytes = bytes;
    }

    /// A batch of `lines` lines, `bytes` bytes, entered (`entered`) or left the output's buffer.
    pub(crate) fn pending(&self, entered: bool, bytes: u64, lines: u64) {
        let mut v = self.lock();
        if entered {
            v.pending_bytes += bytes;
            v.pending_lines += lines;
        } else {
            v.pending_bytes = v.pending_bytes.saturating_sub(bytes);
            v.pending_lines = v.pending_lines.saturating_sub(lines);
        }
    }

    /// `lines` were delivered: the output is up.
    pub(crate) fn delivered(&self, lines: u64) {
        let mut v = self.lock();
        v.up = true;
        v.delivered += lines;
    }

    /// `lines` were written again, delivered and counted once before (see
    /// [`OutputStatus::resent`]): the output is up.
    pub(crate) fn resent(&self, lines: u64) {
        let mut v = self.lock();
        v.up = true;
        v.resent += lines;
    }

    /// `lines` were dropped because the buffer was full (`when_full: drop_newest`).
    pub(crate) fn dropped(&self, lines: u64) {
        self.lock().dropped += lines;
    }

    /// The engine starts (`true`) or stops waiting for room in the output's buffer.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.lock().blocked = blocked;
    }

    /// The engine waited `seconds` for room in the output's buffer.
    pub(crate) fn waited(&self, seconds: f64) {
        self.lock().blocked_seconds += seconds;
    }

    /// Its disk buffer's files now take `bytes`.
    pub(crate) fn set_disk_bytes(&self, bytes: u64) {
        self.lock().disk_bytes = bytes;
    }

    /// Its disk buffer held `lines` from an earlier run (at start), delivered before new ones,
    /// and `corrupt` records that fail their checksum (at start, or when read), skipped.
    pub(crate) fn disk_buffer_found(&self, lines: u64, corrupt: u64) {
        let mut v = self.lock();
        v.replayed += lines;
        v.corrupt += corrupt;
    }

    /// The output connected again after a failure.
    pub(crate) fn reconnected(&self) {
        self.lock().reconnects += 1;
    }

    /// A delivery attempt failed: down, counted, the message kept.
    pub(crate) fn failed(&self, message: impl Into<String>) {
        self.set_up(false);
        self.error(message);
    }

    /// The output's figures now.
    pub fn status(&self) -> OutputStatus {
        let v = self.lock().clone();
        OutputStatus {
            name: self.name().to_owned(),
            up: v.up,
            delivered: v.delivered,
            resent: v.resent,
            dropped: v.dropped,
            pending_bytes: v.pending_bytes,
            pending_lines: v.pending_lines,
            blocked: v.blocked,
            blocked_seconds: v.blocked_seconds,
            reconnects: v.reconnects,
            errors: v.errors,
            last_error: v.last_error.map(|(_, m)| m),
        }
    }

    /// A delivery error: counted, timed, and its message kept for `/health`.
    pub fn error(&self, message: impl Into<String>) {
        let mut values = self.lock();
        values.errors += 1;
        values.last_error = Some((unix_seconds(), message.into()));
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether the output is up.
    pub fn is_up(&self) -> bool {
        self.lock().up
    }
}

/// The state of one input, for `/health`.
#[derive(Debug, Clone)]
struct InputState {
    name: String,
    address: String,
    bound: bool,
}

/// Everything the registry's collectors read.
#[derive(Debug, Default)]
struct State {
    snapshot: Mutex<Snapshot>,
    plugin: Mutex<Vec<Metric>>,
    outputs: Mutex<Vec<OutputHealth>>,
    inputs: Mutex<Vec<InputState>>,
    build: BuildInfo,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The metrics registry and the health state; cheap to clone, shared between threads.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    state: Arc<State>,
    batch_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Host families (base names, as registered): a plugin family with one of these names is
/// left out, so that every name is one family.
const HOST_FAMILIES: &[&str] = &[
    "egresswatch_events_in",
    "egresswatch_events_out",
    "egresswatch_unreadable",
    "egresswatch_plugin_errors",
    "egresswatch_annotated",
    "egresswatch_routed",
    "egresswatch_rejected_replacements",
    "egresswatch_state_saves",
    "egresswatch_state_save_errors",
    "egresswatch_state_file_bytes",
    "egresswatch_input_connections_accepted",
    "egresswatch_input_connections_refused",
    "egresswatch_input_connections_open",
    "egresswatch_input_tls_handshake_failures",
    "egresswatch_input_http_requests",
    "egresswatch_input_order_released_early",
    "egresswatch_output_reconnects",
    "egresswatch_output_resent",
    "egresswatch_output_dropped",
    "egresswatch_output_pending_events",
    "egresswatch_output_blocked",
    "egresswatch_output_blocked_seconds",
    "egresswatch_output_up",
    "egresswatch_output_pending_bytes",
    "egresswatch_output_errors",
    "egresswatch_output_last_error_timestamp_seconds",
    "egresswatch_batch_duration_seconds",
    "egresswatch_build_info",
];

impl Metrics {
    /// A registry with every host family, build information and process metrics.
    pub fn new(build: BuildInfo) -> Metrics {
        let state = Arc::new(State {
            build,
            ..State::default()
        });
        let batch_duration = Histogram::new(LATENCY_BUCKETS);
        let mut registry = Registry::default();
        registry.register(
            "egresswatch_batch_duration_seconds",
            "Time to process and flush one block of lines",
            batch_duration.clone(),
        );
        registry.register_collector(Box::new(HostCollector(Arc::clone(&state))));
        registry.register_collector(Box::new(PluginCollector(Arc::clone(&state))));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: Arc::new(registry),
            state,
            batch_duration,
        }
    }

    /// The engine thread's snapshot, to update.
    pub(crate) fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        lock(&self.state.snapshot)
    }

    /// Replaces the plugin's metrics.
    pub(crate) fn set_plugin(&self, metrics: Vec<Metric>) {
        *lock(&self.state.plugin) = metrics;
    }

    /// Records the time one block took.
    pub(crate) fn observe_batch(&self, seconds: f64) {
        self.batch_duration.observe(seconds);
    }

    /// The health handle of output `name` (created on first use; outputs start down).
    pub fn output(&self, name: &str) -> OutputHealth {
        let mut outputs = lock(&self.state.outputs);
        if let Some(found) = outputs.iter().find(|o| o.name() == name) {
            return found.clone();
        }
        let health = OutputHealth(Arc::new(OutputState {
            name: name.to_owned(),
            inner: Mutex::default(),
        }));
        outputs.push(health.clone());
        health
    }

    /// Forgets output `name` (a reload removed it, or never started it): it leaves `/health`
    /// and `/metrics`.
    pub fn forget_output(&self, name: &str) {
        lock(&self.state.outputs).retain(|o| o.name() != name);
    }

    /// Declares an input (not bound yet): `/health` is unavailable until it is bound.
    pub fn input_declared(&self, name: &str) {
        let mut inputs = lock(&self.state.inputs);
        if !inputs.iter().any(|i| i.name == name) {
            inputs.push(InputState {
                name: name.to_owned(),
                address: String::new(),
                bound: false,
            });
        }
    }

    /// Input `name` is bound to (or reading from) `address`.
    pub fn input_bound(&self, name: &str, address: &str) {
        self.input_declared(name);
        let mut inputs = lock(&self.state.inputs);
        if let Some(input) = inputs.iter_mut().find(|i| i.name == name) {
            input.address = address.to_owned();
            input.bound = true;
        }
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else the Prometheus text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut text = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        if openmetrics {
            text
        } else {
            openmetrics_to_prometheus(&text)
        }
    }

    /// `/health`: whether every input is bound and every output up, and the JSON body that
    /// says what each is doing.
    pub fn health(&self) -> (bool, String) {
        let inputs = lock(&self.state.inputs).clone();
        let outputs: Vec<(String, OutputValues)> = lock(&self.state.outputs)
            .iter()
            .map(|o| (o.name().to_owned(), o.lock().clone()))
            .collect();
        let healthy = inputs.iter().all(|i| i.bound) && outputs.iter().all(|(_, v)| v.up);
        let body = serde_json::json!({
            "status": if healthy { "ok" } else { "unavailable" },
            "version": self.state.build.version,
            "inputs": inputs.iter().map(|i| serde_json::json!({
                "name": i.name,
                "bound": i.bound,
                "address": i.address,
            })).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(|(name, v)| serde_json::json!({
                "name": name,
                "up": v.up,
                "pending_bytes": v.pending_bytes,
                "errors": v.errors,
                "last_error": v.last_error.as_ref().map(|(_, m)| m),
            })).collect::<Vec<_>>(),
        });
        (healthy, format!("{body}\n"))
    }
}

/// The plugin's gauge that is 1 while a job learns (label `job_id`).
const JOB_LEARNING: &str = "egresswatch_job_learning";

/// The plugin's counter of events flagged per rule (label `rule`).
const RULE_FLAGGED: &str = "egresswatch_rule_flagged_total";

/// Each job in the plugin's metrics and whether it is still learning; empty with a plugin
/// that exports no such gauge.
pub fn jobs_learning(metrics: &[Metric]) -> Vec<(String, bool)> {
    metrics
        .iter()
        .filter(|m| m.name.as_str() == JOB_LEARNING)
        .filter_map(|m| {
            let job = m.labels.iter().find(|l| l.name.as_str() == "job_id")?;
            Some((job.value.to_string(), m.value != 0.0))
        })
        .collect()
}

/// Events flagged per rule name, from the plugin's metrics.
pub fn flagged_per_rule(metrics: &[Metric]) -> Vec<(String, u64)> {
    metrics
        .iter()
        .filter(|m| m.name.as_str() == RULE_FLAGGED)
        .filter_map(|m| {
            let rule = m.labels.iter().find(|l| l.name.as_str() == "rule")?;
            Some((rule.value.to_string(), m.value as u64))
        })
        .collect()
}

/// The endpoint's handler: `GET`/`HEAD` `/metrics` and `/health`.
pub(crate) fn endpoint(metrics: Metrics) -> Handler {
    Arc::new(move |request| {
        let answer = answer(&metrics, &request);
        Box::pin(async move { answer })
    })
}

fn answer<B>(metrics: &Metrics, request: &hyper::Request<B>) -> hyper::Response<Body> {
    use hyper::Method;
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = http::response(405, "text/plain", "only GET and HEAD\n");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            http::response(200, content_type, metrics.render(openmetrics))
        }
        "/health" => {
            let (healthy, body) = metrics.health();
            http::response(if healthy { 200 } else { 503 }, "application/json", body)
        }
        _ => http::response(404, "text/plain", "not found; try /metrics or /health\n"),
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// OpenMetrics text as the classic Prometheus text format: no `# EOF` or `# UNIT`, counter
/// families named with their `_total` samples' name, `unknown` spelled `untyped`.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
