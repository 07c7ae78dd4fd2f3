//! Metrics: a snapshot the engine thread updates, rendered in the Prometheus text exposition
//! format by a tiny HTTP/1.1 server thread (`GET /metrics`), and summarised on exit.
//!
//! The engine thread owns the plugin, so it copies what the endpoint needs into a shared
//! [`Snapshot`] after each block (host counters, cheaply) and at most once a second (the
//! plugin's typed metrics). The server only reads the snapshot; it never touches the plugin.
//! The plugin's metrics carry their own names, help and type: the host renders them without
//! knowing any of them.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use egresswatch_plugin_api::Metric;

use crate::engine::HostCounters;

/// Upper bounds of the batch latency histogram, in seconds.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`] (not cumulative here).
    counts: [u64; LATENCY_BUCKETS.len()],
    /// All observations.
    count: u64,
    /// Their sum, in seconds.
    sum: f64,
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Everything the endpoint serves.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The engine's counters.
    pub(crate) host: HostCounters,
    /// Lines written per output.
    pub outputs: Vec<(String, u64)>,
    /// Reconnections per socket output.
    pub reconnects: Vec<(String, u64)>,
    /// The plugin's metrics, as last fetched.
    pub(crate) plugin: Vec<Metric>,
    /// Size of the state file as last written or read, in bytes.
    pub(crate) state_file_bytes: u64,
    /// Successful state saves.
    pub(crate) state_saves: u64,
    /// Failed state saves.
    pub(crate) state_save_errors: u64,
    /// Input connections currently open.
    pub(crate) connections: u64,
    /// Input connections accepted so far.
    pub(crate) connections_total: u64,
    /// Time to process and flush each block.
    pub(crate) batch_latency: Histogram,
}

/// The snapshot shared between the engine thread and the endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    /// Locks the snapshot (a poisoned lock is still usable: it only holds numbers).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renders the snapshot in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        render(&self.lock())
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders a snapshot in the Prometheus text exposition format (version 0.0.4).
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let h = &s.host;
    family(
        &mut out,
        "egresswatch_events_in_total",
        "counter",
        "Lines read.",
    );
    let _ = writeln!(out, "egresswatch_events_in_total {}", h.lines_in);
    family(
        &mut out,
        "egresswatch_events_out_total",
        "counter",
        "Lines written, per output.",
    );
    for (name, n) in &s.outputs {
        let _ = writeln!(
            out,
            "egresswatch_events_out_total{{output=\"{}\"}} {n}",
            escape(name)
        );
    }
    family(
        &mut out,
        "egresswatch_unreadable_total",
        "counter",
        "Lines the detector could not read, by kind.",
    );
    for (kind, n) in [
        ("not_utf8", h.not_utf8),
        ("oversize", h.oversize),
        ("not_json_object", h.unreadable),
    ] {
        let _ = writeln!(out, "egresswatch_unreadable_total{{kind=\"{kind}\"}} {n}");
    }
    for (name, help, n) in [
        (
            "egresswatch_plugin_errors_total",
            "Batches the plugin failed or panicked on.",
            h.plugin_errors,
        ),
        (
            "egresswatch_annotated_total",
            "Events the plugin annotated.",
            h.annotated,
        ),
        (
            "egresswatch_routed_total",
            "Events the plugin routed to a named output.",
            h.routed,
        ),
        (
            "egresswatch_rejected_replacements_total",
            "Plugin replacement texts rejected for holding a line terminator (event written as it came).",
            h.rejected_replacements,
        ),
        (
            "egresswatch_state_saves_total",
            "State files written.",
            s.state_saves,
        ),
        (
            "egresswatch_state_save_errors_total",
            "State saves that failed.",
            s.state_save_errors,
        ),
        (
            "egresswatch_input_connections_total",
            "Input connections accepted.",
            s.connections_total,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
    family(
        &mut out,
        "egresswatch_output_reconnects_total",
        "counter",
        "Reconnections of socket outputs.",
    );
    for (name, n) in &s.reconnects {
        let _ = writeln!(
            out,
            "egresswatch_output_reconnects_total{{output=\"{}\"}} {n}",
            escape(name)
        );
    }
    family(
        &mut out,
        "egresswatch_input_connections",
        "gauge",
        "Input connections open.",
    );
    let _ = writeln!(out, "egresswatch_input_connections {}", s.connections);
    family(
        &mut out,
        "egresswatch_state_file_bytes",
        "gauge",
        "Size of the state file last written or loaded.",
    );
    let _ = writeln!(out, "egresswatch_state_file_bytes {}", s.state_file_bytes);
    render_plugin(&mut out, &s.plugin);
    family(
        &mut out,
        "egresswatch_batch_duration_seconds",
        "histogram",
        "Time to process and flush one block of lines.",
    );
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(s.batch_latency.counts) {
        cumulative += n;
        let _ = writeln!(
            out,
            "egresswatch_batch_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "egresswatch_batch_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        s.batch_latency.count
    );
    let _ = writeln!(
        out,
        "egresswatch_batch_duration_seconds_sum {}",
        s.batch_latency.sum
    );
    let _ = writeln!(
        out,
        "egresswatch_batch_duration_seconds_count {}",
        s.batch_latency.count
    );
    out
}

/// The plugin's metrics: one `# HELP`/`# TYPE` per family (from its first sample), families in
/// the order the plugin gave them. Samples whose name or label names are not valid Prometheus
/// names are left out.
pub fn render_plugin(out: &mut String, metrics: &[Metric]) {
    let valid = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let usable: Vec<&Metric> = metrics
        .iter()
        .filter(|m| valid(&m.name) && m.labels.iter().all(|l| valid(&l.name)))
        .collect();
    let mut families: Vec<&str> = Vec::new();
    for m in &usable {
        if !families.contains(&m.name.as_str()) {
            families.push(m.name.as_str());
        }
    }
    for name in families {
        let samples: Vec<&&Metric> = usable.iter().filter(|m| m.name.as_str() == name).collect();
        let first = samples[0];
        family(
            out,
            name,
            first.kind.prometheus_type(),
            &first.help.replace('\\', "\\\\").replace('\n', "\\n"),
        );
        for m in samples {
            let _ = write!(out, "{name}");
            if !m.labels.is_empty() {
                let labels: Vec<String> = m
                    .labels
                    .iter()
                    .map(|l| format!("{}=\"{}\"", l.name, escape(&l.value)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", sample_value(m.value));
        }
    }
}

/// A sample value in the text format (`+Inf`, `-Inf`, `NaN` spelled as Prometheus does).
fn sample_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

/// The plugin's metrics on one line (`name{label="v"}=value ...`), for logs.
pub fn plugin_summary(metrics: &[Metric]) -> String {
    let mut text = String::new();
    render_plugin(&mut text, metrics);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rsplit_once(' ') {
            Some((series, value)) => format!("{series}={value}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Largest request head the server reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Binds `address` and serves `/metrics` from `shared` on a thread until `stop` is set.
pub(crate) fn serve(
    address: &str,
    shared: Shared,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("metrics.address: cannot listen on {address}: {e}"),
        )
    })?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("egresswatch-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = answer(conn, &shared) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })?;
    Ok(local)
}

fn answer(mut conn: TcpStream, shared: &Shared) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            break;
        }
    }
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", shared.render()),
        ("GET", _) => ("404 Not Found", "not found; try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    use egresswatch_plugin_api::{Label, MetricKind};

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

    #[test]
    fn renders_counters_plugin_series_and_histogram() {
        let mut s = Snapshot {
            outputs: vec![("default".into(), 3)],
            plugin: vec![
                metric("plugin_learning", MetricKind::GAUGE, &[("job", "a")], 1.0),
                metric(
                    "plugin_flagged_total",
                    MetricKind::COUNTER,
                    &[("rule", "Rare \"x\"")],
                    2.0,
                ),
                metric("plugin_learning", MetricKind::GAUGE, &[("job", "b")], 0.0),
                metric("bad name", MetricKind::GAUGE, &[], 1.0),
            ],
            ..Snapshot::default()
        };
        s.host.lines_in = 4;
        s.batch_latency.observe(0.0003);
        s.batch_latency.observe(10.0);
        let text = render(&s);
        assert!(text.contains("egresswatch_events_in_total 4\n"), "{text}");
        assert!(text.contains("egresswatch_events_out_total{output=\"default\"} 3\n"));
        assert!(
            text.contains("# HELP plugin_learning help of plugin_learning\n# TYPE plugin_learning gauge\nplugin_learning{job=\"a\"} 1\nplugin_learning{job=\"b\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE plugin_flagged_total counter\n"),
            "{text}"
        );
        assert!(text.contains("rule=\"Rare \\\"x\\\"\"} 2\n"), "{text}");
        assert!(!text.contains("bad name"), "{text}");
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"2.5\"} 1\n"));
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert_eq!(
            plugin_summary(&s.plugin[..2]),
            "plugin_learning{job=\"a\"}=1 plugin_flagged_total{rule=\"Rare \\\"x\\\"\"}=2"
        );
    }
}
