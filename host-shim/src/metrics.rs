//! Metrics: a snapshot the engine thread updates, rendered in the Prometheus text exposition
//! format by a tiny HTTP/1.1 server thread (`GET /metrics`), and summarised on exit.
//!
//! The engine thread owns the plugin, so it copies what the endpoint needs into a shared
//! [`Snapshot`] after each block (host counters, cheaply) and at most once a second (the
//! plugin's metrics JSON). The server only reads the snapshot; it never touches the plugin.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::engine::HostCounters;

/// Upper bounds of the batch latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
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

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Everything the endpoint serves.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The engine's counters.
    pub host: HostCounters,
    /// Lines written per output.
    pub outputs: Vec<(String, u64)>,
    /// Reconnections per socket output.
    pub reconnects: Vec<(String, u64)>,
    /// The plugin's metrics JSON, as last fetched.
    pub plugin: String,
    /// Size of the state file as last written or read, in bytes.
    pub state_file_bytes: u64,
    /// Successful state saves.
    pub state_saves: u64,
    /// Failed state saves.
    pub state_save_errors: u64,
    /// Input connections currently open.
    pub connections: u64,
    /// Input connections accepted so far.
    pub connections_total: u64,
    /// Time to process and flush each block.
    pub batch_latency: Histogram,
}

/// The snapshot shared between the engine thread and the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    /// Locks the snapshot (a poisoned lock is still usable: it only holds numbers).
    pub fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renders the snapshot in the Prometheus text format.
    pub fn render(&self) -> String {
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
pub fn render(s: &Snapshot) -> String {
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

/// Per-job and per-rule series from the plugin's metrics JSON; absent fields are skipped.
fn render_plugin(out: &mut String, json: &str) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let Some(jobs) = value["jobs"].as_object() else {
        return;
    };
    let mut learning = String::new();
    let mut state_bytes = String::new();
    let mut scored = String::new();
    let mut flagged = String::new();
    for (job, v) in jobs {
        let job = escape(job);
        if let Some(b) = v["learning"].as_bool() {
            let _ = writeln!(
                learning,
                "egresswatch_job_learning{{job=\"{job}\"}} {}",
                u8::from(b)
            );
        }
        if let Some(n) = v["state_bytes"].as_u64() {
            let _ = writeln!(
                state_bytes,
                "egresswatch_job_state_bytes{{job=\"{job}\"}} {n}"
            );
        }
        if let Some(n) = v["scored"].as_u64() {
            let _ = writeln!(scored, "egresswatch_job_scored_total{{job=\"{job}\"}} {n}");
        }
        for (rule_id, r) in v["rules"].as_object().into_iter().flatten() {
            if let Some(n) = r["flagged"].as_u64() {
                let _ = writeln!(
                    flagged,
                    "egresswatch_rule_flagged_total{{job=\"{job}\",rule_id=\"{}\",rule=\"{}\"}} {n}",
                    escape(rule_id),
                    escape(r["name"].as_str().unwrap_or_default())
                );
            }
        }
    }
    for (name, kind, help, body) in [
        (
            "egresswatch_job_learning",
            "gauge",
            "1 while the job's model is still learning.",
            learning,
        ),
        (
            "egresswatch_job_state_bytes",
            "gauge",
            "Approximate memory of the job's model state.",
            state_bytes,
        ),
        (
            "egresswatch_job_scored_total",
            "counter",
            "Events the job scored (since start).",
            scored,
        ),
        (
            "egresswatch_rule_flagged_total",
            "counter",
            "Events each rule flagged (since start).",
            flagged,
        ),
    ] {
        family(out, name, kind, help);
        out.push_str(&body);
    }
}

/// Largest request head the server reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Binds `address` and serves `/metrics` from `shared` on a thread until `stop` is set.
pub fn serve(address: &str, shared: Shared, stop: Arc<AtomicBool>) -> io::Result<SocketAddr> {
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

    #[test]
    fn renders_counters_plugin_series_and_histogram() {
        let mut s = Snapshot {
            outputs: vec![("default".into(), 3)],
            plugin: r#"{"jobs":{"rare":{"learning":true,"state_bytes":10,"scored":5,
                "rules":{"id1":{"name":"Rare \"x\"","flagged":2}}}}}"#
                .into(),
            ..Snapshot::default()
        };
        s.host.lines_in = 4;
        s.batch_latency.observe(0.0003);
        s.batch_latency.observe(10.0);
        let text = render(&s);
        assert!(text.contains("egresswatch_events_in_total 4\n"), "{text}");
        assert!(text.contains("egresswatch_events_out_total{output=\"default\"} 3\n"));
        assert!(text.contains("egresswatch_job_learning{job=\"rare\"} 1\n"));
        assert!(text.contains("rule=\"Rare \\\"x\\\"\"} 2\n"), "{text}");
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"2.5\"} 1\n"));
        assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    }
}
