//! The metrics and health endpoint of a running program: a Prometheus text parser reads
//! `/metrics` (every sample in a family of its own type, each family once, no `job` label),
//! HEAD, OpenMetrics on request, `/health`, and scrapes that are answered while other clients
//! hold idle connections.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::util::{free_address, temp_dir, wait_until, workspace, write, Running};

const STARTUP: Duration = Duration::from_secs(30);

/// One request with `Connection: close`; the whole response as text.
fn request(address: &str, head: &str) -> String {
    let mut conn = TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "{head}\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A running program with a TCP input, a TCP output to `downstream` and the endpoint.
fn start(test: &str, downstream: &str) -> (Running, String, String) {
    let dir = temp_dir(test);
    let (input, metrics) = (free_address(), free_address());
    let ws = workspace();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs:\n  default: {{ type: tcp, address: '{downstream}' }}\n\
             metrics: {{ address: '{metrics}' }}\n\
             detector:\n  rules: ['{}']\n",
            ws.join("rules").display()
        ),
    );
    let egw = Running::start(&dir, &config);
    assert!(
        wait_until(STARTUP, || TcpStream::connect(&input).is_ok()),
        "{}",
        egw.stderr()
    );
    (egw, input, metrics)
}

#[test]
fn a_prometheus_parser_reads_every_family_once_and_health_tells_the_truth() {
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_address = downstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in downstream.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || std::io::copy(&mut conn, &mut std::io::sink()));
        }
    });
    let (mut egw, input, metrics) = start("metrics-parse", &down_address);
    let sample = std::fs::read(workspace().join("examples/data/sample.ndjson")).unwrap();
    let mut conn = TcpStream::connect(&input).unwrap();
    conn.write_all(&sample[..sample.len().min(200_000)])
        .unwrap();
    drop(conn);

    let mut response = String::new();
    assert!(
        wait_until(STARTUP, || {
            response = request(&metrics, "GET /metrics HTTP/1.1");
            response.contains("egresswatch_job_learning{")
                && !response.contains("events_in_total 0")
        }),
        "{response}\n{}",
        egw.stderr()
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    let text = body(&response);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(scrape.samples.len() > 40, "{text}");
    for sample in &scrape.samples {
        assert!(
            !matches!(sample.value, prometheus_parse::Value::Untyped(_))
            // The parser reads a histogram's `_sum` and `_count` as untyped samples.
            || ["_sum", "_count"].iter().any(|s| sample
                .metric
                .strip_suffix(s)
                .is_some_and(|h| text.contains(&format!("# TYPE {h} histogram\n")))),
            "{} is outside a family of its own type:\n{text}",
            sample.metric
        );
        assert!(sample.labels.get("job").is_none(), "{}", sample.metric);
        assert!(sample.labels.get("instance").is_none(), "{}", sample.metric);
    }
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let unique: HashSet<&str> = families.iter().copied().collect();
    assert_eq!(families.len(), unique.len(), "a family twice: {families:?}");
    for counter in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
    {
        assert!(counter.ends_with("_total"), "{counter}");
    }
    for family in [
        "egresswatch_events_in_total",
        "egresswatch_events_out_total",
        "egresswatch_output_up",
        "egresswatch_output_pending_bytes",
        "egresswatch_output_last_error_timestamp_seconds",
        "egresswatch_input_connections_open",
        "egresswatch_input_connections_accepted_total",
        "egresswatch_detector_annotate_failures_total",
        "egresswatch_job_tracked_entities",
        "egresswatch_job_evictions_total",
        "egresswatch_job_far_late_events_total",
        "egresswatch_geoip_cache_hits_total",
        "egresswatch_geoip_cache_misses_total",
        "egresswatch_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(unique.contains(family), "no family {family}:\n{text}");
    }
    assert!(
        text.contains(&format!("commit=\"{}\"", env!("EGRESSWATCH_COMMIT"))),
        "{text}"
    );

    // HEAD: the same head, no body.
    let head = request(&metrics, "HEAD /metrics HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body(&head), "", "{head}");
    // OpenMetrics for a client that asks for it.
    let om = request(
        &metrics,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0",
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(body(&om).ends_with("# EOF\n"), "{om}");
    // Health: the input is bound, the output connected.
    let health = request(&metrics, "GET /health HTTP/1.1");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let json: serde_json::Value = serde_json::from_str(body(&health)).unwrap();
    assert_eq!(json["status"], "ok", "{json}");
    assert_eq!(json["inputs"][0]["bound"], true, "{json}");
    assert_eq!(json["outputs"][0]["up"], true, "{json}");
    let post = request(&metrics, "POST /metrics HTTP/1.1\r\nContent-Length: 0");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    egw.terminate();
    assert!(egw.wait(STARTUP).success(), "{}", egw.stderr());
}

#[test]
fn health_is_unavailable_while_an_output_cannot_be_reached() {
    let (mut egw, _input, metrics) = start("metrics-health-down", &free_address());
    let mut response = String::new();
    assert!(
        wait_until(STARTUP, || {
            response = request(&metrics, "GET /health HTTP/1.1");
            response.contains("connecting to")
        }),
        "{response}"
    );
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    let json: serde_json::Value = serde_json::from_str(body(&response)).unwrap();
    assert_eq!(json["status"], "unavailable");
    assert_eq!(json["outputs"][0]["up"], false);
    let text = request(&metrics, "GET /metrics HTTP/1.1");
    assert!(
        text.contains("egresswatch_output_up{output=\"default\"} 0"),
        "{text}"
    );
    egw.terminate();
    egw.wait(STARTUP);
}

/// Fifty scrapes at once while ten clients hold idle connections: every one is answered within
/// a second (a correctness property of a server that serves connections concurrently; a server
/// that reads one request at a time with a read timeout makes them wait for the idle ones).
#[test]
fn fifty_concurrent_scrapes_are_answered_while_ten_connections_sit_idle() {
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_address = downstream.local_addr().unwrap().to_string();
    let (mut egw, _input, metrics) = start("metrics-concurrent", &down_address);
    assert!(wait_until(STARTUP, || request(
        &metrics,
        "GET /metrics HTTP/1.1"
    )
    .starts_with("HTTP/1.1 200")));
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(&metrics).unwrap())
        .collect();
    // One of them has sent half a request head.
    (&idle[0]).write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let barrier = Arc::new(Barrier::new(50));
    let scrapes: Vec<_> = (0..50)
        .map(|_| {
            let (barrier, metrics) = (Arc::clone(&barrier), metrics.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let response = request(&metrics, "GET /metrics HTTP/1.1");
                (started.elapsed(), response)
            })
        })
        .collect();
    for scrape in scrapes {
        let (took, response) = scrape.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(body(&response).contains("egresswatch_events_in_total"));
        assert!(took < Duration::from_secs(1), "a scrape took {took:?}");
    }
    drop(idle);
    egw.terminate();
    assert!(egw.wait(STARTUP).success(), "{}", egw.stderr());
}

/// Sends one HTTP/1.1 request on a kept-alive connection and returns the answer's status.
fn status_on(conn: &mut TcpStream, head: &str, body: &[u8]) -> u16 {
    write!(
        conn,
        "{head}\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(body).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "the connection ended");
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    let length: usize = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let mut rest = vec![0u8; length];
    conn.read_exact(&mut rest).unwrap();
    answer[9..12].parse().unwrap()
}

#[test]
fn the_http_input_counts_its_requests_by_answer_and_its_open_connections() {
    let dir = temp_dir("metrics-http-input");
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: http, address: '{input}' }}\n\
             outputs:\n  default: {{ type: file, path: out.ndjson }}\n\
             metrics: {{ address: '{metrics}' }}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(
        wait_until(STARTUP, || TcpStream::connect(&input).is_ok()),
        "{}",
        egw.stderr()
    );
    let scrape = || body(&request(&metrics, "GET /metrics HTTP/1.1")).to_owned();
    let figure = |text: &str, series: &str| crate::util::figure(text, series);
    // The probe above was a connection too; wait until it is gone.
    assert!(wait_until(STARTUP, || figure(
        &scrape(),
        "egresswatch_input_connections_open"
    ) == Some(0.0)));
    let mut conn = TcpStream::connect(&input).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let lines = b"{\"n\":1}\n{\"n\":2}\n";
    assert_eq!(status_on(&mut conn, "POST / HTTP/1.1", lines), 200);
    assert_eq!(status_on(&mut conn, "POST / HTTP/1.1", lines), 200);
    assert_eq!(status_on(&mut conn, "GET / HTTP/1.1", b""), 200);
    assert_eq!(status_on(&mut conn, "PUT / HTTP/1.1", b""), 405);
    assert_eq!(
        status_on(&mut conn, "POST / HTTP/1.1\r\nContent-Encoding: gzip", b""),
        415
    );
    // The figures are copied between blocks: wait for the copy that has all five.
    let requests = |text: &str, status: u16| {
        figure(
            text,
            &format!("egresswatch_input_http_requests_total{{status=\"{status}\"}}"),
        )
    };
    let mut text = String::new();
    wait_until(STARTUP, || {
        text = scrape();
        requests(&text, 415).is_some()
    });
    let requests = |status: u16| requests(&text, status);
    assert_eq!(requests(200), Some(3.0), "{text}");
    assert_eq!(requests(405), Some(1.0), "{text}");
    assert_eq!(requests(415), Some(1.0), "{text}");
    assert_eq!(requests(503), None, "{text}");
    // The connection is still open (kept alive), and was accepted.
    assert_eq!(
        figure(&text, "egresswatch_input_connections_open"),
        Some(1.0),
        "{text}"
    );
    assert!(
        figure(&text, "egresswatch_input_connections_accepted_total").is_some_and(|n| n >= 2.0),
        "{text}"
    );
    drop(conn);
    assert!(
        wait_until(STARTUP, || figure(
            &scrape(),
            "egresswatch_input_connections_open"
        ) == Some(0.0)),
        "{}",
        scrape()
    );
    egw.terminate();
    assert!(
        egw.wait(Duration::from_secs(60)).success(),
        "{}",
        egw.stderr()
    );
    assert_eq!(crate::util::count_lines(&dir.join("out.ndjson")), 4);
}
