//! The registry's collectors (the host's counters and outputs, the plugin's metrics, the
//! process) and the helpers that encode their samples at scrape time.

use std::sync::Arc;

use egresswatch_plugin_api::{Metric, MetricKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{lock, OutputValues, State, HOST_FAMILIES};

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
pub(super) struct HostCollector(pub(super) Arc<State>);

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
            (
                "egresswatch_input_tls_handshake_failures",
                "Input connections refused because their TLS handshake failed.",
                s.tls_handshake_failures,
            ),
            (
                "egresswatch_input_order_released_early",
                "Lines of a connection passed to the detector after waiting order_window_ms for a quiet connection with older events.",
                s.order_released_early,
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
        let answered: Vec<(Labels, f64)> = s
            .http_requests
            .iter()
            .map(|&(status, n)| (vec![("status".to_owned(), status.to_string())], n as f64))
            .collect();
        counter(
            &mut e,
            "egresswatch_input_http_requests",
            "HTTP input requests, by the status they were answered with.",
            &answered,
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
            "egresswatch_output_resent",
            "Lines written again because the peer may not have had them (a broken connection's unacknowledged tail, or what the output a reload replaced handed over), per output: counted once in events_out; the peer may have some twice.",
            &column(&|v| v.resent as f64),
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
        gauge(
            &mut e,
            "egresswatch_output_buffer_disk_bytes",
            "Size of the output's disk buffer files (0 for a memory buffer).",
            &column(&|v| v.disk_bytes as f64),
        )?;
        counter(
            &mut e,
            "egresswatch_output_buffer_replayed_events",
            "Lines found in the output's disk buffer at start (left by an earlier run), delivered before new lines.",
            &column(&|v| v.replayed as f64),
        )?;
        counter(
            &mut e,
            "egresswatch_output_buffer_corrupt_records",
            "Records of the output's disk buffer that failed their checksum (a write torn by a crash, or damaged on disk), skipped with the rest of their segment.",
            &column(&|v| v.corrupt as f64),
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
pub(super) struct PluginCollector(pub(super) Arc<State>);

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
pub(super) struct ProcessCollector;

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
