//! Delivery when peers fail (issue #11): outputs that do not hold each other up, what a socket
//! output can lose when its peer goes away, and what the metrics show meanwhile. Loopback only,
//! ports picked by binding port 0, every wait bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::util::{
    connect_when_ready, count_lines, figure, free_address, http_get, run, stderr, temp_dir,
    timed_out, wait_until, workspace, write, Running,
};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(60);

/// The exfiltration rule of the README, routed to `anomalies`.
const EXFILTRATION_RULE: &str = "cc653d77-ddd2-45b1-9197-c75ad19df66c";

fn detector() -> String {
    format!(
        "detector:\n  rules: ['{}']\n  actions:\n    default: {{ annotate: true }}\n    rules:\n      \
         {EXFILTRATION_RULE}: {{ annotate: true, route: anomalies }}\n",
        workspace().join("rules").display(),
    )
}

fn sample() -> Vec<u8> {
    std::fs::read(workspace().join("examples/data/sample.ndjson")).expect("sample data")
}

/// Writes `data` 50 lines at a time, each piece once the engine has read the previous one (as
/// the metrics say), so that each output receives many small batches as from a live feed.
/// Stops early, returning false, once the metrics page contains `until`.
fn send_in_step(conn: &mut TcpStream, data: &[u8], metrics: &str, until: &str) -> bool {
    let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    let mut sent = 0usize;
    for piece in lines.chunks(50) {
        conn.write_all(&piece.concat()).unwrap();
        sent += piece.len();
        let mut stalled = false;
        let caught_up = wait_until(STARTUP, || {
            let text = http_get(metrics, "/metrics");
            stalled = text.contains(until);
            stalled
                || figure(&text, "egresswatch_events_in_total").is_some_and(|n| n >= sent as f64)
        });
        assert!(caught_up, "the engine did not read {sent} lines");
        if stalled {
            return false;
        }
    }
    true
}

/// What `default` and `anomalies` receive from the sample when both are files that work.
fn reference_split(dir: &Path) -> (Vec<u8>, usize) {
    let config = write(
        dir,
        "reference.yaml",
        format!(
            "outputs:\n  default: {{ type: file, path: ref-default.ndjson }}\n  \
             anomalies: {{ type: file, path: ref-anomalies.ndjson }}\n{}",
            detector()
        ),
    );
    let out = run(&["run", "--config", config.to_str().unwrap()], &sample());
    assert!(out.status.success(), "{}", stderr(&out));
    let routed = count_lines(&dir.join("ref-anomalies.ndjson"));
    assert!(
        routed > 10,
        "the sample routes {routed} events: too few to fill a buffer"
    );
    (
        std::fs::read(dir.join("ref-default.ndjson")).unwrap(),
        routed,
    )
}

/// Starts a run reading TCP, `default` a file, `anomalies` a TCP peer that never listens.
fn start_with_dead_route(dir: &Path, when_full: &str) -> (Running, String, String) {
    let input = free_address();
    let metrics = free_address();
    let dead = free_address();
    let config = write(
        dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 2\noutputs:\n  default: {{ type: file, path: default.ndjson }}\n  \
             anomalies: {{ type: tcp, address: '{dead}', buffer: {{ max_bytes: 4096, when_full: {when_full} }} }}\n{}",
            detector()
        ),
    );
    (Running::start(dir, &config), input, metrics)
}

#[test]
fn a_routed_output_down_for_the_whole_run_never_stalls_default_with_drop_newest() {
    let dir = temp_dir("delivery-dead-route-drop");
    let (expected_default, routed) = reference_split(&dir);
    let (mut egw, input, metrics) = start_with_dead_route(&dir, "drop_newest");
    let mut conn = connect_when_ready(&input);
    assert!(send_in_step(
        &mut conn,
        &sample(),
        &metrics,
        "no such series"
    ));
    drop(conn);

    let expected_lines = expected_default.iter().filter(|&&b| b == b'\n').count();
    let default = dir.join("default.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&default) >= expected_lines),
        "default has {} of {expected_lines} lines while anomalies is down\n{}",
        count_lines(&default),
        egw.stderr()
    );
    // While running: the route is down, its drops are counted, its failures move a counter.
    let mut text = String::new();
    assert!(
        wait_until(STARTUP, || {
            text = http_get(&metrics, "/metrics");
            text.contains("egresswatch_output_up{output=\"anomalies\"} 0")
                && text.contains(&format!(
                    "egresswatch_events_out_total{{output=\"default\"}} {expected_lines}"
                ))
        }),
        "{text}"
    );
    let anomalies = |name: &str| -> u64 {
        figure(&text, &format!("{name}{{output=\"anomalies\"}}"))
            .unwrap_or_else(|| panic!("no {name} for anomalies in\n{text}")) as u64
    };
    let dropped = anomalies("egresswatch_output_dropped_total");
    let pending = anomalies("egresswatch_output_pending_events");
    assert!(dropped > 0, "{text}");
    assert_eq!(dropped + pending, routed as u64, "{text}");
    assert!(anomalies("egresswatch_output_errors_total") > 0, "{text}");
    assert!(anomalies("egresswatch_output_last_error_timestamp_seconds") > 0);
    // /health says which output is down and why.
    let health = http_get(&metrics, "/health");
    let body = &health[health.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let json: serde_json::Value = serde_json::from_str(body).expect(&health);
    assert_eq!(json["status"], "unavailable", "{health}");
    let down = json["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "anomalies")
        .unwrap();
    assert_eq!(down["up"], false, "{health}");
    assert!(
        down["last_error"]
            .as_str()
            .unwrap()
            .contains("connecting to"),
        "{health}"
    );

    // At the stop, what `anomalies` still holds is named and the run fails; `default` is whole.
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "outputs.anomalies: {pending} line(s) not delivered"
        )),
        "{err}"
    );
    assert!(err.contains("dropped"), "{err}");
    assert_eq!(std::fs::read(&default).unwrap(), expected_default);
}

#[test]
fn a_blocking_route_that_is_down_shows_its_stall_on_metrics_and_is_named_at_exit() {
    let dir = temp_dir("delivery-dead-route-block");
    let (_, routed) = reference_split(&dir);
    let (mut egw, input, metrics) = start_with_dead_route(&dir, "block");
    let mut conn = connect_when_ready(&input);
    let blocked = "egresswatch_output_blocked{output=\"anomalies\"} 1";
    assert!(
        !send_in_step(&mut conn, &sample(), &metrics, blocked),
        "the engine never waited for anomalies\n{}",
        egw.stderr()
    );
    let text = http_get(&metrics, "/metrics");
    assert!(text.contains(blocked), "{text}");
    assert!(
        text.contains("egresswatch_output_up{output=\"anomalies\"} 0"),
        "{text}"
    );
    let held = figure(
        &text,
        "egresswatch_output_blocked_seconds_total{output=\"anomalies\"}",
    );
    assert!(held.is_some(), "{text}");
    assert!(
        text.contains("egresswatch_output_blocked{output=\"default\"} 0"),
        "{text}"
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("outputs.anomalies"), "{err}");
    assert!(routed > 0);
}

/// Sets a socket option that takes an int.
fn set_int_option(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int, value: i32) {
    // SAFETY: `fd` is an open socket owned by the caller; the option value is an int that
    // outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// The receive buffer the kernel actually gave a socket.
fn receive_buffer(fd: std::os::fd::RawFd) -> usize {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: as above; `value` and `len` outlive the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    usize::try_from(value).unwrap()
}

/// How a downstream connection ends.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// RST (SO_LINGER 0): the kernel discards the receive queue.
    Reset,
    /// close(2) with data unread, as a program that exits.
    Close,
    /// The connection is reset and nobody listens for a while.
    Down(Duration),
}

/// The size of the downstream's own read buffer: what it read from the kernel but had not
/// parsed into lines when it broke the connection is lost too.
const READ_CHUNK: usize = 8192;

/// A downstream that takes `per_connection` lines on each connection and then breaks it as
/// `breaks` say, one after the other, then reads the last connection until egresswatch closes
/// it (or nothing arrives for 60 s), saying when line `last` arrived. Returns the lines of each connection, and the largest receive
/// buffer the kernel gave a connection.
fn flaky_downstream(
    listener: std::net::TcpListener,
    per_connection: usize,
    breaks: Vec<Break>,
    last: u64,
    seen_last: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Vec<u64>>, usize)> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let mut connections = Vec::new();
        let mut largest_buffer = 0;
        let mut next_break = breaks.into_iter();
        loop {
            let (mut conn, _) = listener.accept().unwrap();
            largest_buffer = largest_buffer.max(receive_buffer(conn.as_raw_fd()));
            conn.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let this_break = next_break.next();
            let mut lines = Vec::new();
            let mut partial = Vec::new();
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut quiet_since = std::time::Instant::now();
            loop {
                if this_break.is_some() && lines.len() >= per_connection {
                    break;
                }
                if this_break.is_none() && quiet_since.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let n = match conn.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if timed_out(&e) => continue,
                    Err(_) => break,
                };
                quiet_since = std::time::Instant::now();
                partial.extend_from_slice(&chunk[..n]);
                while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=nl).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                    let n = v["n"].as_u64().unwrap();
                    if n == last {
                        seen_last.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    lines.push(n);
                }
            }
            connections.push(lines);
            match this_break {
                None => return (connections, largest_buffer),
                Some(Break::Close) => drop(conn),
                Some(Break::Reset) => crate::util::close_with_reset(conn),
                Some(Break::Down(pause)) => {
                    // (Its port kept: nothing else can take it meanwhile.)
                    drop(conn);
                    crate::util::stop_listening(&listener);
                    std::thread::sleep(pause);
                    crate::util::listen_again(&listener);
                }
            }
        }
    })
}

/// A listener whose connections get a small receive buffer (inherited from the listener), so
/// that the documented loss bound is tight.
fn bind_small(address: &str) -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind(address).unwrap();
    set_int_option(
        listener.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        16 * 1024,
    );
    listener
}

#[test]
fn a_tcp_output_loses_at_most_the_peers_unread_receive_buffer_per_break() {
    let dir = temp_dir("delivery-tcp-chaos");
    // (By number: a break that takes it down keeps the port, `stop_listening`.)
    let downstream = bind_small(&crate::util::free_address());
    let down_address = downstream.local_addr().unwrap().to_string();
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs:\n  default: {{ type: tcp, address: '{down_address}' }}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    const TOTAL: u64 = 300_000;
    let breaks = vec![
        Break::Reset,
        Break::Close,
        Break::Down(Duration::from_secs(2)),
        Break::Reset,
        Break::Close,
    ];
    let break_count = breaks.len();
    let seen_last = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = flaky_downstream(
        downstream,
        40_000,
        breaks,
        TOTAL - 1,
        std::sync::Arc::clone(&seen_last),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let mut data = Vec::with_capacity(14 * TOTAL as usize);
    for n in 0..TOTAL {
        writeln!(data, "{{\"n\":{n}}}").unwrap();
    }
    conn.write_all(&data).unwrap();
    drop(conn);
    assert!(
        wait_until(Duration::from_secs(240), || seen_last
            .load(std::sync::atomic::Ordering::Relaxed)),
        "the last line never arrived\n{}",
        egw.stderr()
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    let (connections, rcvbuf) = collector.join().unwrap();
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(connections.len(), break_count + 1, "{err}");

    // Order per connection, what was lost, what repeated.
    let (lost, repeats) = crate::util::tally(&connections, TOTAL);
    assert!(
        connections.iter().flatten().any(|&n| n == TOTAL - 1),
        "the last line arrived\n{err}"
    );
    // The documented bound: per break, the peer's receive buffer (what its kernel acknowledged
    // and it never read), plus what the peer had read but not used (its own read buffer).
    let line_bytes = 13; // {"n":NNNNNN}\n: the shortest lines lost are at least this long
    let bound = break_count * (rcvbuf + READ_CHUNK) / line_bytes;
    eprintln!(
        "tcp output under {break_count} breaks: {lost} lines lost (bound {bound}, receive buffer {rcvbuf} bytes), {repeats} repeated"
    );
    assert!(
        lost as usize <= bound,
        "{lost} lines lost, more than the documented bound {bound}\n{err}"
    );
    assert!(
        err.contains(&format!("reconnects={break_count}")),
        "the exit summary counts every reconnection\n{err}"
    );
}
