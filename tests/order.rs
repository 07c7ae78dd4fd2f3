//! Several connections delivering events out of event-time order (issue #11 item 9). Fluent
//! Bit's `tcp` output has 2 workers by default: each takes the next chunk of the backlog (a few
//! MB, hours of event time) and sends it on its own connection, at the same time as the other.
//! The detector must flag what it flags when the same events come on one connection, and a
//! connection that goes quiet must not hold the others back beyond the window. Loopback only,
//! ports picked by binding port 0, every wait bounded.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{
    connect_when_ready, count_lines, figure, free_address, http_get, run, stderr, temp_dir,
    wait_until, workspace, write, Running,
};

const EXIT: Duration = Duration::from_secs(60);

/// Bytes per chunk: Fluent Bit's chunks hold up to about 2 MB; 1 MiB cuts the four days of the
/// sample into 6 chunks of about 16 hours each.
const CHUNK_BYTES: usize = 1 << 20;

/// The metric of lines let go past a quiet connection.
const EARLY: &str = "egresswatch_input_order_released_early_total";

fn sample() -> Vec<u8> {
    std::fs::read(workspace().join("examples/data/sample.ndjson")).expect("sample data")
}

/// The configuration of the Fluent Bit example (examples/fluent-bit/egresswatch.yaml: wrap
/// unreadable lines, the repository's rules, GeoIP, annotate) with `input` (YAML) and a file
/// output `out`; `extra` adds settings.
fn config(dir: &Path, name: &str, input: &str, out: &str, extra: &str) -> PathBuf {
    write(
        dir,
        name,
        format!(
            "{input}outputs: {{ default: {{ type: file, path: {out} }} }}\nunreadable: wrap\n\
             detector:\n  rules: ['{}']\n  geoip: {{ database: '{}' }}\n  \
             actions: {{ default: {{ annotate: true }} }}\n{extra}",
            workspace().join("rules").display(),
            workspace()
                .join("data/geo/geo-whois-asn-country.mmdb")
                .display(),
        ),
    )
}

/// The `@timestamp` of a line (unique in the sample: it names the event).
fn timestamp(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = &text[text.find("\"@timestamp\":\"")? + 14..];
    Some(&rest[..rest.find('"')?])
}

/// The events flagged in an output, by `@timestamp`.
fn flagged(output: &[u8]) -> BTreeSet<String> {
    output
        .split(|&b| b == b'\n')
        .filter(|line| line.windows(15).any(|w| w == b"\"egresswatch\":{"))
        .filter_map(|line| timestamp(line).map(str::to_owned))
        .collect()
}

/// The sample cut into chunks of whole lines, about `CHUNK_BYTES` each.
fn chunks(sample: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = vec![Vec::new()];
    for line in sample.split_inclusive(|&b| b == b'\n') {
        let last = chunks.last_mut().expect("one chunk at least");
        last.extend_from_slice(line);
        if last.len() >= CHUNK_BYTES {
            chunks.push(Vec::new());
        }
    }
    chunks.retain(|c| !c.is_empty());
    chunks
}

/// Sends each of `chunks` in turn on `conn`, then closes it, on a thread of its own.
fn worker(mut conn: TcpStream, chunks: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for chunk in chunks {
            conn.write_all(&chunk).expect("egresswatch reads the chunk");
        }
    })
}

/// The sample sent as Fluent Bit's 2 workers send a backlog: chunks alternate between two
/// connections that send at once, each chunk of the second hours ahead of the first's. What is
/// flagged is what one connection's run flags; every line arrives, each connection's in its
/// order. Before: the connections' blocks were processed as they came, hours apart in event
/// time, and the models judged most of the sample's alerts differently.
#[test]
fn two_fluent_bit_workers_sending_chunks_hours_apart_flag_what_one_connection_flags() {
    let dir = temp_dir("order-two-workers");
    let sample = sample();
    let total = sample.iter().filter(|&&b| b == b'\n').count();
    // One connection: standard input.
    let reference = config(&dir, "reference.yaml", "", "reference.ndjson", "");
    let out = run(&["run", "--config", reference.to_str().unwrap()], &sample);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = flagged(&std::fs::read(dir.join("reference.ndjson")).unwrap());
    assert!(
        expected.len() > 50,
        "one connection flags {} events: too few to compare",
        expected.len()
    );

    let input = free_address();
    let metrics = free_address();
    // A window far beyond any pause of a loaded machine: every hold here ends because the
    // other connection sends or closes.
    let config = config(
        &dir,
        "c.yaml",
        &format!("input: {{ type: tcp, address: '{input}', order_window_ms: 30000 }}\n"),
        "out.ndjson",
        &format!("metrics: {{ address: '{metrics}' }}\n"),
    );
    let mut egw = Running::start(&dir, &config);
    let chunks = chunks(&sample);
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    let (first, second): (Vec<_>, Vec<_>) =
        chunks.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let first: Vec<Vec<u8>> = first.into_iter().map(|(_, c)| c.clone()).collect();
    let second: Vec<Vec<u8>> = second.into_iter().map(|(_, c)| c.clone()).collect();
    let ids = |chunks: &[Vec<u8>]| -> Vec<String> {
        chunks
            .iter()
            .flat_map(|c| c.split(|&b| b == b'\n'))
            .filter_map(|l| timestamp(l).map(str::to_owned))
            .collect()
    };
    let (first_ids, second_ids) = (ids(&first), ids(&second));
    // Both connections open before either sends, as Fluent Bit's workers are.
    let a = connect_when_ready(&input);
    let b = connect_when_ready(&input);
    assert!(
        wait_until(EXIT, || figure(
            &http_get(&metrics, "/metrics"),
            "egresswatch_input_connections_open"
        ) == Some(2.0)),
        "the two connections were not accepted"
    );
    let workers = [worker(a, first), worker(b, second)];
    for w in workers {
        w.join().expect("worker");
    }
    let output = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&output) == total),
        "{} of {total} lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    let page = http_get(&metrics, "/metrics");
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());

    let got = std::fs::read(&output).unwrap();
    let order: Vec<&str> = got.split(|&b| b == b'\n').filter_map(timestamp).collect();
    assert_eq!(order.len(), total, "every line arrives once");
    for (name, ids) in [("first", &first_ids), ("second", &second_ids)] {
        let ids: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let arrived: Vec<&str> = order.iter().copied().filter(|t| ids.contains(t)).collect();
        assert_eq!(arrived.len(), ids.len(), "the {name} connection's lines");
        assert!(
            arrived.windows(2).all(|w| w[0] < w[1]),
            "the {name} connection's lines arrive in the order it sent them"
        );
    }
    assert_eq!(figure(&page, EARLY), Some(0.0), "no line went early");
    let got = flagged(&got);
    assert!(
        got == expected,
        "two connections flag {} events, one connection {}: {} flagged only with two, {} only \
         with one",
        got.len(),
        expected.len(),
        got.difference(&expected).count(),
        expected.difference(&got).count()
    );
}

/// A running program with a TCP input ordering over `window_ms`, a file output `out.ndjson` in
/// the test's folder and the metrics endpoint: the folder, the program, the input's and the
/// endpoint's addresses.
fn windowed(test: &str, window_ms: u64) -> (PathBuf, Running, String, String) {
    let dir = temp_dir(test);
    let input = free_address();
    let metrics = free_address();
    let config = config(
        &dir,
        "c.yaml",
        &format!("input: {{ type: tcp, address: '{input}', order_window_ms: {window_ms} }}\n"),
        "out.ndjson",
        &format!("metrics: {{ address: '{metrics}' }}\n"),
    );
    let egw = Running::start(&dir, &config);
    (dir, egw, input, metrics)
}

/// A connection that sent old events and then goes quiet, without closing, holds a second
/// connection's newer lines for the window only: they all arrive while it is still open, and
/// are counted as released early. Then its own later line (older than theirs) arrives too.
#[test]
fn a_quiet_connection_holds_the_others_for_the_window_only() {
    let (dir, mut egw, input, metrics) = windowed("order-quiet", 500);
    let line = |hour: u32, n: u32| {
        format!("{{\"@timestamp\":\"2026-11-01T{hour:02}:00:00.{n:03}Z\",\"n\":{n}}}\n")
    };
    let output = dir.join("out.ndjson");
    let mut quiet = connect_when_ready(&input);
    quiet.write_all(line(1, 0).as_bytes()).unwrap();
    assert!(
        wait_until(EXIT, || count_lines(&output) == 1),
        "a connection alone is not held"
    );
    let mut busy = connect_when_ready(&input);
    let newer: String = (1..=100).map(|n| line(5, n)).collect();
    busy.write_all(newer.as_bytes()).unwrap();
    drop(busy);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 101),
        "{} of 101 lines arrived while the quiet connection is open\n{}",
        count_lines(&output),
        egw.stderr()
    );
    let early = || figure(&http_get(&metrics, "/metrics"), EARLY).unwrap_or(0.0);
    assert!(wait_until(EXIT, || early() == 100.0), "{} early", early());
    quiet.write_all(line(2, 101).as_bytes()).unwrap();
    assert!(
        wait_until(EXIT, || count_lines(&output) == 102),
        "the quiet connection's later line"
    );
    drop(quiet);
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let got = std::fs::read_to_string(&output).unwrap();
    let order: Vec<&str> = got
        .lines()
        .filter_map(|l| timestamp(l.as_bytes()))
        .collect();
    assert_eq!(order.first(), Some(&"2026-11-01T01:00:00.000Z"));
    assert_eq!(
        order.last(),
        Some(&"2026-11-01T02:00:00.101Z"),
        "it came after the window"
    );
}

/// A connection that closes without sending (Vector's health check, a readiness probe) after a
/// second connection's lines came to wait for it lets them go at once. Before: the stage forgot
/// which connection it held when the quiet one went, and nothing looked again until some
/// connection sent more, so a sender that had written all it had and closed saw none of its
/// lines delivered (not even after the window) until another connection sent or egresswatch
/// stopped. The window here is far longer than any wait of the test, so only the close can
/// let them go; the quiet connection stays open until the engine holds them, so the hold is
/// certain.
#[test]
fn lines_held_for_a_connection_that_closes_without_sending_go_when_it_closes() {
    let (dir, mut egw, input, metrics) = windowed("order-probe", 600_000);
    let page = || http_get(&metrics, "/metrics");
    let probe = connect_when_ready(&input);
    assert!(
        wait_until(EXIT, || figure(
            &page(),
            "egresswatch_input_connections_open"
        ) == Some(1.0)),
        "the probe was not accepted\n{}",
        egw.stderr()
    );
    // Ten short lines in one write (one read, one block, almost always).
    let lines: String = (0..10)
        .map(|n| format!("{{\"@timestamp\":\"2026-11-01T05:00:00.{n:03}Z\",\"n\":{n}}}\n"))
        .collect();
    let mut sender = TcpStream::connect(&input).unwrap();
    sender.write_all(lines.as_bytes()).unwrap();
    drop(sender);
    let held = |text: &str| {
        figure(text, "egresswatch_input_connections_accepted_total") == Some(2.0)
            && figure(text, "egresswatch_input_connections_open") == Some(1.0)
            && figure(text, "egresswatch_batch_duration_seconds_count").is_some_and(|n| n >= 1.0)
    };
    let mut text = String::new();
    assert!(
        wait_until(EXIT, || {
            text = page();
            held(&text)
        }),
        "the sender's block was not taken by the engine\n{text}"
    );
    let output = dir.join("out.ndjson");
    assert_eq!(
        figure(&text, "egresswatch_events_in_total"),
        Some(0.0),
        "the open probe holds the sender's lines"
    );
    drop(probe);
    assert!(
        wait_until(Duration::from_secs(30), || count_lines(&output) == 10),
        "{} of 10 lines arrived after the probe closed\n{}",
        count_lines(&output),
        egw.stderr()
    );
    assert_eq!(figure(&page(), EARLY), Some(0.0), "none went early");
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let text = std::fs::read_to_string(&output).unwrap();
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.split("\"n\":")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .collect();
    assert_eq!(
        order,
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "each line once, in order"
    );
}
