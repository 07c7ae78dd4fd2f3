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
//! - Per output: delivered, dropped, pending bytes and lines, up, blocked (the engine waiting
//!   for room in its buffer), reconnects, errors and the time of the last error
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

use egresswatch_plugin_api::{Metric, MetricKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::HostCounters;
use crate::http::{self, Body, Handler};

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
    dropped: u64,
    pending_lines: u64,
    blocked: bool,
    blocked_seconds: f64,
    reconnects: u64,
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
    "egresswatch_output_reconnects",
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

/// Escapes a HELP text the way the text formats want it.
fn help_text(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Labels as the encoder takes them.
type Labels = Vec<(String, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    encode_samples(family, samples, |v| -> Box<dyn EncodeMetric> {
        match integral(v) {
            Some(n) if n >= 0 => Box::new(ConstCounter::new(n.unsigned_abs())),
            _ => Box::new(ConstCounter::new(v)),
        }
    })
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    encode_samples(family, samples, gauge_value)
}

fn gauge_value(v: f64) -> Box<dyn EncodeMetric> {
    match integral(v) {
        Some(n) => Box::new(ConstGauge::new(n)),
        None => Box::new(ConstGauge::new(v)),
    }
}

/// `v` as an integer when it is one (exactly representable), so that counts print as `4`,
/// not `4.0`.
fn integral(v: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    (v.fract() == 0.0 && v.abs() <= EXACT).then_some(v as i64)
}

/// Writes a family's samples; a lone sample without labels is written without `{}`.
fn encode_samples(
    mut family: MetricEncoder,
    samples: &[(Labels, f64)],
    value: impl Fn(f64) -> Box<dyn EncodeMetric>,
) -> std::fmt::Result {
    if let [(labels, v)] = samples {
        if labels.is_empty() {
            return value(*v).encode(family);
        }
    }
    for (labels, v) in samples {
        value(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn one(value: u64) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), value as f64)]
}

fn per_output<T: Copy + Into<f64>>(
    rows: impl IntoIterator<Item = (String, T)>,
) -> Vec<(Labels, f64)> {
    rows.into_iter()
        .map(|(name, v)| (vec![("output".to_owned(), name)], v.into()))
        .collect()
}

/// The engine's counters, the outputs' health and build information.
#[derive(Debug)]
struct HostCollector(Arc<State>);

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = lock(&self.0.snapshot).clone();
        let h = &s.host;
        counter(
            &mut e,
            "egresswatch_events_in",
            "Lines read.",
            &one(h.lines_in),
        )?;
        let outputs: Vec<(String, OutputValues)> = lock(&self.0.outputs)
            .iter()
            .map(|o| (o.name().to_owned(), o.lock().clone()))
            .collect();
        let column = |f: &dyn Fn(&OutputValues) -> f64| {
            per_output(outputs.iter().map(|(n, v)| (n.clone(), f(v))))
        };
        counter(
            &mut e,
            "egresswatch_events_out",
            "Lines delivered, per output (taken by the peer as far as its transport tells).",
            &column(&|v| v.delivered as f64),
        )?;
        let unreadable: Vec<(Labels, f64)> = [
            ("not_utf8", h.not_utf8),
            ("oversize", h.oversize),
            ("not_json_object", h.unreadable),
        ]
        .into_iter()
        .map(|(kind, n)| (vec![("kind".to_owned(), kind.to_owned())], n as f64))
        .collect();
        counter(
            &mut e,
            "egresswatch_unreadable",
            "Lines the detector could not read, by kind.",
            &unreadable,
        )?;
        for (name, help, n) in [
            (
                "egresswatch_plugin_errors",
                "Batches the plugin failed or panicked on.",
                h.plugin_errors,
            ),
            (
                "egresswatch_annotated",
                "Events the plugin annotated.",
                h.annotated,
            ),
            (
                "egresswatch_routed",
                "Events the plugin routed to a named output.",
                h.routed,
            ),
            (
                "egresswatch_rejected_replacements",
                "Plugin replacement texts rejected for holding a line terminator (event written as it came).",
                h.rejected_replacements,
            ),
            ("egresswatch_state_saves", "State files written.", s.state_saves),
            (
                "egresswatch_state_save_errors",
                "State saves that failed.",
                s.state_save_errors,
            ),
            (
                "egresswatch_input_connections_accepted",
                "Input connections accepted.",
                s.connections_accepted,
            ),
            (
                "egresswatch_input_connections_refused",
                "Input connections closed unread at once because max_connections were open.",
                s.connections_refused,
            ),
        ] {
            counter(&mut e, name, help, &one(n))?;
        }
        gauge(
            &mut e,
            "egresswatch_input_connections_open",
            "Input connections open.",
            &one(s.connections_open),
        )?;
        gauge(
            &mut e,
            "egresswatch_state_file_bytes",
            "Size of the state file last written or loaded.",
            &one(s.state_file_bytes),
        )?;
        counter(
            &mut e,
            "egresswatch_output_reconnects",
            "Connections made again after a failure, per output.",
            &column(&|v| v.reconnects as f64),
        )?;
        counter(
            &mut e,
            "egresswatch_output_dropped",
            "Lines dropped because the output's buffer was full (when_full: drop_newest).",
            &column(&|v| v.dropped as f64),
        )?;
        gauge(
            &mut e,
            "egresswatch_output_pending_events",
            "Lines held for the output, not yet delivered.",
            &column(&|v| v.pending_lines as f64),
        )?;
        gauge(
            &mut e,
            "egresswatch_output_blocked",
            "1 while the engine waits for room in the output's buffer (when_full: block): every input is held.",
            &column(&|v| f64::from(u8::from(v.blocked))),
        )?;
        counter(
            &mut e,
            "egresswatch_output_blocked_seconds",
            "Time the engine spent waiting for room in the output's buffer.",
            &column(&|v| v.blocked_seconds),
        )?;
        gauge(
            &mut e,
            "egresswatch_output_up",
            "1 when the output can take events (a socket output: connected).",
            &column(&|v| f64::from(u8::from(v.up))),
        )?;
        gauge(
            &mut e,
            "egresswatch_output_pending_bytes",
            "Bytes held for the output, not yet delivered.",
            &column(&|v| v.pending_bytes as f64),
        )?;
        counter(
            &mut e,
            "egresswatch_output_errors",
            "Delivery errors per output (failed connects and writes).",
            &column(&|v| v.errors as f64),
        )?;
        gauge(
            &mut e,
            "egresswatch_output_last_error_timestamp_seconds",
            "Unix time of the output's last delivery error (0: none); the message is in /health.",
            &column(&|v| v.last_error.as_ref().map_or(0.0, |(t, _)| *t)),
        )?;

        let b = &self.0.build;
        let labels = vec![
            ("version".to_owned(), b.version.clone()),
            ("commit".to_owned(), b.commit.clone()),
            ("plugin".to_owned(), b.plugin.clone()),
            ("plugin_version".to_owned(), b.plugin_version.clone()),
            ("abi_version".to_owned(), b.abi_version.clone()),
        ];
        gauge(
            &mut e,
            "egresswatch_build_info",
            "Always 1; the labels say which build and plugin run.",
            &[(labels, 1.0)],
        )
    }
}

/// A Prometheus metric or label name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name as it is exposed: the target labels Prometheus attaches are renamed the way
/// Prometheus renames a clash.
fn label_name(name: &str) -> String {
    match name {
        "job" | "instance" => format!("exported_{name}"),
        other => other.to_owned(),
    }
}

/// One family of the plugin's metrics, grouped by name.
struct PluginFamily<'a> {
    /// The family's name as registered (a counter's without `_total`).
    base: String,
    kind: MetricKind,
    help: &'a str,
    samples: Vec<(Labels, f64)>,
}

/// The plugin's metrics grouped into families: by name in the order given, the first sample's
/// kind and help; invalid names, host names, samples of another kind and repeated label sets
/// are left out.
fn plugin_families(metrics: &[Metric]) -> Vec<PluginFamily<'_>> {
    let mut families: Vec<PluginFamily<'_>> = Vec::new();
    for m in metrics {
        if !valid_name(&m.name) || !m.labels.iter().all(|l| valid_name(&l.name)) {
            continue;
        }
        let base = match m.kind {
            MetricKind::COUNTER => m.name.strip_suffix("_total").unwrap_or(&m.name),
            _ => m.name.as_str(),
        };
        if HOST_FAMILIES.contains(&base) || base.starts_with("process_") {
            continue;
        }
        let labels: Labels = m
            .labels
            .iter()
            .map(|l| (label_name(&l.name), l.value.to_string()))
            .collect();
        match families.iter_mut().find(|f| f.base == base) {
            Some(family) if family.kind != m.kind => {}
            Some(family) => {
                if !family.samples.iter().any(|(l, _)| *l == labels) {
                    family.samples.push((labels, m.value));
                }
            }
            None => families.push(PluginFamily {
                base: base.to_owned(),
                kind: m.kind,
                help: &m.help,
                samples: vec![(labels, m.value)],
            }),
        }
    }
    families
}

/// The plugin's metrics as last copied, rendered without knowing their names.
#[derive(Debug)]
struct PluginCollector(Arc<State>);

impl Collector for PluginCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let metrics = lock(&self.0.plugin).clone();
        for family in plugin_families(&metrics) {
            let help = help_text(family.help);
            match family.kind {
                MetricKind::COUNTER => counter(&mut e, &family.base, &help, &family.samples)?,
                MetricKind::GAUGE => gauge(&mut e, &family.base, &help, &family.samples)?,
                _ => {
                    let f = e.encode_descriptor(&family.base, &help, None, MetricType::Unknown)?;
                    encode_samples(f, &family.samples, gauge_value)?;
                }
            }
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, read when scraped.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let p = metrics_process::collector::collect();
        if let Some(v) = p.cpu_seconds_total {
            counter(
                &mut e,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                &[(Vec::new(), v)],
            )?;
        }
        for (name, help, value) in [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                p.virtual_memory_max_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                p.threads,
            ),
        ] {
            if let Some(v) = value {
                gauge(&mut e, name, help, &one(v))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use egresswatch_plugin_api::Label;

    fn metric(name: &str, kind: MetricKind, labels: &[(&str, &str)], value: f64) -> Metric {
        Metric {
            name: name.into(),
            help: format!("help of {name}").into(),
            kind,
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            value,
        }
    }

    fn metrics() -> Metrics {
        let m = Metrics::new(BuildInfo {
            version: "1.2.3".into(),
            commit: "abc1234".into(),
            plugin: "p".into(),
            plugin_version: "0.1".into(),
            abi_version: "0.2.0".into(),
        });
        {
            let mut s = m.snapshot();
            s.host.lines_in = 4;
            s.connections_open = 2;
            s.connections_accepted = 5;
        }
        m.output("default").delivered(3);
        m.observe_batch(0.0003);
        m.observe_batch(10.0);
        m.set_plugin(vec![
            metric("plugin_learning", MetricKind::GAUGE, &[("job", "a")], 1.0),
            metric(
                "plugin_flagged_total",
                MetricKind::COUNTER,
                &[("rule", "Rare \"x\"")],
                2.0,
            ),
            metric("plugin_learning", MetricKind::GAUGE, &[("job", "b")], 0.0),
            metric("plugin_learning", MetricKind::COUNTER, &[("job", "c")], 7.0),
            metric("bad name", MetricKind::GAUGE, &[], 1.0),
            metric("egresswatch_events_in_total", MetricKind::COUNTER, &[], 9.0),
        ]);
        m
    }

    #[test]
    fn renders_host_plugin_process_and_build_families() {
        let text = metrics().render(false);
        assert!(
            text.contains(
                "# TYPE egresswatch_events_in_total counter\negresswatch_events_in_total 4\n"
            ),
            "{text}"
        );
        assert!(text.contains("egresswatch_events_out_total{output=\"default\"} 3\n"));
        assert!(
            text.contains("egresswatch_input_connections_open 2\n"),
            "{text}"
        );
        assert!(text.contains("egresswatch_input_connections_accepted_total 5\n"));
        assert!(
            text.contains("# TYPE plugin_learning gauge\nplugin_learning{exported_job=\"a\"} 1\nplugin_learning{exported_job=\"b\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("exported_job=\"c\""), "another kind: {text}");
        assert!(
            text.contains("# TYPE plugin_flagged_total counter\n"),
            "{text}"
        );
        assert!(text.contains("rule=\"Rare \\\"x\\\"\"} 2\n"), "{text}");
        assert!(!text.contains("bad name"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("egresswatch_events_in_total "))
                .count(),
            1,
            "a plugin family with a host name is left out: {text}"
        );
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("egresswatch_build_info{version=\"1.2.3\",commit=\"abc1234\""));
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(!text.contains("# EOF"));
        let om = metrics().render(true);
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains("# TYPE egresswatch_events_in counter\negresswatch_events_in_total 4\n")
        );
    }

    #[test]
    fn the_text_parses_with_one_type_per_family_and_no_job_label() {
        let text = metrics().render(false);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        assert!(scrape.samples.len() > 25, "{}", scrape.samples.len());
        for sample in &scrape.samples {
            assert!(
                !matches!(sample.value, prometheus_parse::Value::Untyped(_))
                // The parser reads a histogram's `_sum` and `_count` as untyped samples.
                || ["_sum", "_count"].iter().any(|s| sample
                    .metric
                    .strip_suffix(s)
                    .is_some_and(|h| text.contains(&format!("# TYPE {h} histogram\n")))),
                "{} has no TYPE of its own family",
                sample.metric
            );
            assert!(sample.labels.get("job").is_none(), "{}", sample.metric);
        }
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let unique: HashSet<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(types.len(), unique.len(), "a family twice: {types:?}");
    }

    #[test]
    fn health_needs_every_input_bound_and_every_output_up() {
        let m = metrics();
        assert!(m.health().0, "nothing declared: healthy");
        m.input_declared("input");
        let out = m.output("default");
        // `metrics()` delivered to it, which set it up.
        out.set_up(false);
        let (healthy, body) = m.health();
        assert!(!healthy, "{body}");
        m.input_bound("input", "tcp://127.0.0.1:9000");
        assert!(!m.health().0, "the output is not up yet");
        out.set_up(true);
        let (healthy, body) = m.health();
        assert!(healthy, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["inputs"][0]["address"], "tcp://127.0.0.1:9000");
        out.set_up(false);
        out.error("connection refused");
        out.set_pending_bytes(1234);
        let (healthy, body) = m.health();
        assert!(!healthy);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["outputs"][0]["last_error"], "connection refused");
        assert_eq!(json["outputs"][0]["pending_bytes"], 1234);
        let text = m.render(false);
        assert!(
            text.contains("egresswatch_output_up{output=\"default\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("egresswatch_output_errors_total{output=\"default\"} 1\n"));
        assert!(text.contains("egresswatch_output_pending_bytes{output=\"default\"} 1234\n"));
        assert!(!text
            .contains("egresswatch_output_last_error_timestamp_seconds{output=\"default\"} 0\n"));
    }
}
