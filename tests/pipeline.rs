//! The program in a pipeline: state that survives restarts, socket inputs and outputs,
//! downstream outages, shutdown by signal, and the metrics endpoint. Everything runs on
//! loopback with ports picked by binding port 0, and every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{
    connect_when_ready, free_address, http_get, run, stderr, temp_dir, wait_until, workspace,
    write, Running,
};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);

/// The detector settings of the quick start, with absolute paths.
fn detector() -> String {
    let ws = workspace();
    format!(
        "detector:\n  rules: ['{}']\n  geoip:\n    database: '{}'\n  actions:\n    default: {{ annotate: true }}\n",
        ws.join("rules").display(),
        ws.join("data/geo/geo-whois-asn-country.mmdb").display()
    )
}

fn sample() -> Vec<u8> {
    std::fs::read(workspace().join("examples/data/sample.ndjson")).expect("sample data")
}

fn lines_of(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .split(|&b| b == b'\n')
        .collect()
}

/// Collects every line sent to a listener, over any number of successive connections.
fn collect_lines(listener: TcpListener) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            for line in BufReader::new(conn).lines() {
                match line {
                    Ok(line) => sink.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        }
    });
    lines
}

#[test]
fn a_restart_with_saved_state_scores_like_one_uninterrupted_run() {
    let dir = temp_dir("pipeline-state-restart");
    let state = dir.join("state.bin");
    let with_state = write(
        &dir,
        "state.yaml",
        format!(
            "state: {{ path: {}, interval_secs: 1 }}\n{}",
            state.display(),
            detector()
        ),
    );
    let without = write(&dir, "plain.yaml", detector());
    let input = sample();
    let lines = lines_of(&input);
    let half = lines.len() / 2;
    let first: Vec<u8> = lines[..half]
        .iter()
        .flat_map(|l| [*l, b"\n"].concat())
        .collect();
    let second: Vec<u8> = lines[half..]
        .iter()
        .flat_map(|l| [*l, b"\n"].concat())
        .collect();

    let whole = run(&["run", "--config", without.to_str().unwrap()], &input);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let a = run(&["run", "--config", with_state.to_str().unwrap()], &first);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stderr(&a).contains("no state file yet"), "{}", stderr(&a));
    assert!(state.is_file(), "no state file after the first run");
    let b = run(&["run", "--config", with_state.to_str().unwrap()], &second);
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(stderr(&b).contains("model state loaded"), "{}", stderr(&b));

    let mut resumed = a.stdout.clone();
    resumed.extend_from_slice(&b.stdout);
    let annotated = lines_of(&whole.stdout)
        .iter()
        .zip(&lines)
        .filter(|(out, inp)| out != inp)
        .count();
    assert!(annotated > 0, "the sample should produce alerts");
    assert_eq!(
        lines_of(&resumed),
        lines_of(&whole.stdout),
        "a restart with state must score exactly like one run"
    );

    // Control: without the state the second half scores differently (the models relearn).
    let cold = run(&["run", "--config", without.to_str().unwrap()], &second);
    assert_ne!(
        cold.stdout, b.stdout,
        "the state should matter for this sample"
    );
}

#[test]
fn a_corrupt_state_file_is_set_aside_and_reported() {
    let dir = temp_dir("pipeline-state-corrupt");
    let state = dir.join("state.bin");
    std::fs::write(&state, b"EGWSTATE\x01\x00\x00\x00garbage").unwrap();
    let config = write(
        &dir,
        "c.yaml",
        format!("state: {{ path: {} }}\n{}", state.display(), detector()),
    );
    let validate = run(&["validate", "--config", config.to_str().unwrap()], b"");
    assert!(validate.status.success(), "{}", stderr(&validate));
    let text = String::from_utf8_lossy(&validate.stdout);
    assert!(text.contains("unusable"), "{text}");

    let out = run(
        &["run", "--config", config.to_str().unwrap()],
        b"{\"a\":1}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("state file is unusable"), "{err}");
    assert!(err.contains("renamed aside"), "{err}");
    assert_eq!(out.stdout, b"{\"a\":1}\n");
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.bin.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        b"EGWSTATE\x01\x00\x00\x00garbage"
    );
    // A fresh, valid state was saved at exit.
    let validate = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let text = String::from_utf8_lossy(&validate.stdout);
    assert!(text.contains(": OK ("), "{text}");
}

#[test]
fn tcp_lines_from_concurrent_connections_arrive_once_in_order_and_split_by_output() {
    let dir = temp_dir("pipeline-tcp-many");
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_address = downstream.local_addr().unwrap().to_string();
    let received = collect_lines(downstream);
    let input = free_address();
    let errors = dir.join("errors.ndjson");
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nbatch: {{ max_line_bytes: 300 }}\n\
             unreadable: errors\noutputs:\n  default: {{ type: tcp, address: '{down_address}' }}\n  \
             errors: {{ type: file, path: {} }}\n{}",
            errors.display(),
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    // A health check: open and close without data.
    drop(connect_when_ready(&input));

    const PER_CONNECTION: usize = 3000;
    let huge = format!("{{\"huge\":\"{}\"}}", "h".repeat(700_000));
    let mut senders = Vec::new();
    for c in 0..3usize {
        let input = input.clone();
        let huge = huge.clone();
        senders.push(std::thread::spawn(move || {
            let mut conn = TcpStream::connect(&input).unwrap();
            let mut buf = Vec::new();
            for n in 0..PER_CONNECTION {
                if n % 50 == 7 {
                    writeln!(buf, "malformed {c} {n}").unwrap();
                } else if n % 77 == 3 {
                    writeln!(
                        buf,
                        "{{\"c\":{c},\"n\":{n},\"pad\":\"{}\"}}",
                        "x".repeat(400)
                    )
                    .unwrap();
                } else if c == 0 && n == 1500 {
                    buf.extend_from_slice(huge.as_bytes());
                    buf.push(b'\n');
                } else {
                    writeln!(buf, "{{\"c\":{c},\"n\":{n}}}").unwrap();
                }
                if buf.len() > 8192 {
                    conn.write_all(&buf).unwrap();
                    buf.clear();
                }
            }
            conn.write_all(&buf).unwrap();
        }));
    }
    for s in senders {
        s.join().unwrap();
    }
    let expected_default = (0..3usize)
        .flat_map(|c| (0..PER_CONNECTION).map(move |n| (c, n)))
        .filter(|&(c, n)| n % 50 != 7 && n % 77 != 3 && !(c == 0 && n == 1500))
        .count();
    assert!(
        wait_until(EXIT, || received.lock().unwrap().len() >= expected_default),
        "only {} of {expected_default} lines arrived\n{}",
        received.lock().unwrap().len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), expected_default, "exactly once downstream");
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for line in &received {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (c, n) = (v["c"].as_u64().unwrap(), v["n"].as_u64().unwrap());
        let last = next.entry(c).or_insert(0);
        assert!(n >= *last, "connection {c}: {n} after {last}");
        *last = n + 1;
    }
    let errors = std::fs::read(&errors).unwrap();
    let errors = lines_of(&errors);
    let malformed = 3 * (0..PER_CONNECTION).filter(|n| n % 50 == 7).count();
    let oversize = 3
        * (0..PER_CONNECTION)
            .filter(|n| n % 50 != 7 && n % 77 == 3)
            .count()
        + 1;
    assert_eq!(errors.len(), malformed + oversize);
    assert!(
        errors.contains(&huge.as_bytes()),
        "the huge line arrives whole"
    );
    let err = egw.stderr();
    let total = 3 * PER_CONNECTION;
    assert!(err.contains(&format!("lines_in={total}")), "{err}");
    assert!(err.contains(&format!("oversize={oversize}")), "{err}");
}

#[test]
fn a_downstream_outage_loses_nothing() {
    let dir = temp_dir("pipeline-outage");
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_address = downstream.local_addr().unwrap().to_string();
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs:\n  default: {{ type: tcp, address: '{down_address}' }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);

    const TOTAL: usize = 6000;
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let outage_over = Arc::new(AtomicBool::new(false));
    let collector = {
        let received = Arc::clone(&received);
        let outage_over = Arc::clone(&outage_over);
        let down_address = down_address.clone();
        std::thread::spawn(move || {
            // First connection: read 1000 lines, then go away (listener too) for a while.
            let (first, _) = downstream.accept().unwrap();
            let mut reader = BufReader::new(first);
            let mut line = String::new();
            while received.lock().unwrap().len() < 1000 {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                received.lock().unwrap().push(line.trim_end().to_owned());
            }
            drop(reader);
            drop(downstream);
            std::thread::sleep(Duration::from_millis(1500));
            let listener = TcpListener::bind(&down_address).unwrap();
            outage_over.store(true, Ordering::Relaxed);
            listener.set_nonblocking(false).unwrap();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                for line in BufReader::new(conn).lines() {
                    match line {
                        Ok(line) => received.lock().unwrap().push(line),
                        Err(_) => break,
                    }
                }
            }
        })
    };
    for n in 0..TOTAL {
        writeln!(conn, "{{\"n\":{n}}}").unwrap();
        if n % 500 == 499 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    conn.flush().unwrap();
    assert!(
        wait_until(EXIT, || received.lock().unwrap().len() >= TOTAL),
        "only {} of {TOTAL} lines arrived\n{}",
        received.lock().unwrap().len(),
        egw.stderr()
    );
    assert!(outage_over.load(Ordering::Relaxed));
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    drop(collector);
    let received = received.lock().unwrap().clone();
    let numbers: Vec<u64> = received
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // Nothing lost, order kept; a block rewritten after a failed write could repeat lines.
    let mut deduped = numbers.clone();
    deduped.dedup();
    let mut seen = std::collections::BTreeSet::new();
    let mut in_order = Vec::new();
    for n in &numbers {
        if seen.insert(*n) {
            in_order.push(*n);
        }
    }
    assert_eq!(in_order, (0..TOTAL as u64).collect::<Vec<_>>());
    assert_eq!(
        numbers.len(),
        TOTAL,
        "duplicates: {}",
        numbers.len() - TOTAL
    );
    assert!(egw.stderr().contains("reconnected"), "{}", egw.stderr());
}

#[test]
fn sigterm_mid_stream_loses_nothing_and_the_saved_state_resumes_exactly() {
    let dir = temp_dir("pipeline-sigterm");
    let state = dir.join("state.bin");
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_address = downstream.local_addr().unwrap().to_string();
    let received = collect_lines(downstream);
    let input_address = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input_address}' }}\nstate: {{ path: {} }}\n\
             outputs:\n  default: {{ type: tcp, address: '{down_address}' }}\n{}",
            state.display(),
            detector()
        ),
    );
    let plain = write(&dir, "plain.yaml", detector());
    let stdin_state = write(
        &dir,
        "stdin.yaml",
        format!("state: {{ path: {} }}\n{}", state.display(), detector()),
    );
    let input = sample();
    let lines: Vec<Vec<u8>> = lines_of(&input).iter().map(|l| l.to_vec()).collect();

    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input_address);
    let exited = Arc::new(AtomicBool::new(false));
    let sender = {
        let lines = lines.clone();
        let exited = Arc::clone(&exited);
        std::thread::spawn(move || {
            for (i, chunk) in lines.chunks(100).enumerate() {
                // However slow the machine, keep part of the stream for after the run: after
                // the signal the connection is drained until its sender goes quiet, so the
                // sender pauses here until the run has ended.
                if i == 60 {
                    wait_until(EXIT, || exited.load(Ordering::Relaxed));
                }
                let mut buf = Vec::new();
                for l in chunk {
                    buf.extend_from_slice(l);
                    buf.push(b'\n');
                }
                if conn.write_all(&buf).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Keep the connection open: the stop must come from the signal.
            let mut sink = [0u8; 1];
            let _ = conn.read(&mut sink);
        })
    };
    assert!(
        wait_until(EXIT, || received.lock().unwrap().len() >= 3000),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    exited.store(true, Ordering::Relaxed);
    assert!(status.success(), "{}", egw.stderr());
    let err = egw.stderr();
    let lines_in: usize = err
        .split("lines_in=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no summary in\n{err}"));
    assert!(
        wait_until(Duration::from_secs(5), || received.lock().unwrap().len()
            >= lines_in),
        "accepted {lines_in}, delivered {}",
        received.lock().unwrap().len()
    );
    let delivered = received.lock().unwrap().clone();
    assert_eq!(
        delivered.len(),
        lines_in,
        "everything accepted is delivered, once"
    );
    assert!(
        lines_in >= 3000 && lines_in < lines.len(),
        "the signal should land mid-stream: {lines_in}"
    );
    let _ = sender.join();

    // The state left behind is valid, and resuming from it scores like one uninterrupted run.
    let validate = run(
        &["validate", "--config", stdin_state.to_str().unwrap()],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&validate.stdout).contains(": OK ("),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );
    let rest: Vec<u8> = lines[lines_in..]
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect();
    let resumed = run(&["run", "--config", stdin_state.to_str().unwrap()], &rest);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let whole = run(&["run", "--config", plain.to_str().unwrap()], &input);
    let whole_lines: Vec<String> = lines_of(&whole.stdout)
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let mut combined = delivered;
    combined.extend(
        lines_of(&resumed.stdout)
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned()),
    );
    assert_eq!(combined.len(), whole_lines.len());
    assert!(
        combined == whole_lines,
        "resumed output differs from one run"
    );
}

#[test]
fn unix_sockets_and_the_metrics_endpoint() {
    let dir = temp_dir("pipeline-unix-metrics");
    let in_path = dir.join("in.sock");
    let out_path = dir.join("out.sock");
    let downstream = UnixListener::bind(&out_path).unwrap();
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let received = Arc::clone(&received);
        std::thread::spawn(move || {
            for conn in downstream.incoming() {
                let Ok(conn) = conn else { return };
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    received.lock().unwrap().push(line);
                }
            }
        });
    }
    let metrics = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: unix, path: in.sock }}\nmetrics: {{ address: '{metrics}' }}\n\
             outputs:\n  default: {{ type: unix, path: out.sock }}\n{}",
            detector()
        ),
    );
    let refused = write(
        &dir,
        "refused.yaml",
        "metrics: { address: '0.0.0.0:9900' }\n",
    );
    let out = run(&["validate", "--config", refused.to_str().unwrap()], b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("metrics.address"), "{}", stderr(&out));

    let mut egw = Running::start(&dir, &config);
    let mut conn = None;
    assert!(
        wait_until(STARTUP, || {
            conn = UnixStream::connect(&in_path).ok();
            conn.is_some()
        }),
        "{}",
        egw.stderr()
    );
    let mut conn = conn.unwrap();
    let input = sample();
    let ten: Vec<u8> = lines_of(&input)[..10]
        .iter()
        .flat_map(|l| [*l, b"\n"].concat())
        .collect();
    conn.write_all(&ten).unwrap();
    conn.write_all(b"not json\n").unwrap();
    drop(conn);
    assert!(wait_until(EXIT, || received.lock().unwrap().len() == 11));
    let mut text = String::new();
    assert!(
        wait_until(STARTUP, || {
            text = http_get(&metrics, "/metrics");
            text.contains("egresswatch_events_in_total 11")
                && text.contains("egresswatch_job_learning{")
        }),
        "{text}"
    );
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for expected in [
        "egresswatch_events_out_total{output=\"default\"} 11",
        "egresswatch_unreadable_total{kind=\"not_json_object\"} 1",
        "egresswatch_plugin_errors_total 0",
        "egresswatch_job_learning{job_id=\"rare_destination_country\"} 1",
        "egresswatch_job_scored_total{job_id=",
        "egresswatch_rule_flagged_total{job_id=",
        "egresswatch_batch_duration_seconds_bucket{le=\"+Inf\"}",
        "egresswatch_input_connections_accepted_total 1",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(http_get(&metrics, "/other").starts_with("HTTP/1.1 404"));
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(
        !Path::new(&in_path).exists(),
        "the input socket is removed at exit"
    );
}
