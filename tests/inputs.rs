//! Inputs that cannot starve each other or lose what they read (issue #11): a sender that
//! stalls inside a long line, idle connections and the connection limit, draining at SIGTERM,
//! reloading at SIGHUP. Loopback only, ports picked by binding port 0, every wait bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{
    connect_when_ready, count_lines, figure, free_address, http_get, run, stderr, temp_dir,
    wait_until, workspace, write, Running,
};

const EXIT: Duration = Duration::from_secs(60);

/// How long well-behaved lines may take to arrive; far more than they need (milliseconds), far
/// less than forever.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A run reading TCP (`input` adds keys to the input) into `out.ndjson` with the repository's
/// rules; `extra` adds settings (`outputs: ...` replaces the file output).
fn start(dir: &Path, input_keys: &str, extra: &str) -> (Running, String, PathBuf) {
    let input = free_address();
    let out = dir.join("out.ndjson");
    let outputs = if extra.contains("outputs:") {
        String::new()
    } else {
        format!(
            "outputs: {{ default: {{ type: file, path: '{}' }} }}\n",
            out.display()
        )
    };
    let config = write(
        dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}'{input_keys} }}\n{outputs}\
             detector: {{ rules: ['{}'] }}\n{extra}",
            workspace().join("rules").display(),
        ),
    );
    (Running::start(dir, &config), input, out)
}

/// `count` numbered JSON lines, `{"conn":"NAME","n":N}`.
fn numbered(name: &str, count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|n| format!("{{\"conn\":\"{name}\",\"n\":{n}}}\n").into_bytes())
        .collect()
}

/// The `n` of each line of `name` in `out`, in the order they arrived.
fn arrived(out: &Path, name: &str) -> Vec<u64> {
    let marker = format!("{{\"conn\":\"{name}\",\"n\":");
    std::fs::read(out)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let rest = std::str::from_utf8(line).ok()?.strip_prefix(&marker)?;
            rest.strip_suffix('}')?.parse().ok()
        })
        .collect()
}

/// While one sender has begun a line over `max_line_bytes` and then goes quiet (or never ends
/// it), a second connection's 1,000 lines all arrive, in order. Before: the first sender held
/// the input's order lock while its line streamed, through its read timeouts, so none did.
fn a_sender_inside_a_long_line_does_not_hold_back_another(dir: &Path, endless: bool) {
    let (mut egw, input, out) = start(dir, "", "batch: { max_line_bytes: 1000 }\n");
    let mut long = connect_when_ready(&input);
    let head = b"{\"long\":\"".to_vec();
    long.write_all(&head).unwrap();
    long.write_all(&vec![b'x'; 300_000]).unwrap();
    let sent_long = Arc::new(std::sync::Mutex::new(300_000usize));
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = endless.then(|| {
        let mut conn = long.try_clone().unwrap();
        let stop = Arc::clone(&stop_writing);
        let sent = Arc::clone(&sent_long);
        std::thread::spawn(move || {
            // An endless line, at a pace that keeps the test's files small.
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&[b'y'; 16 * 1024]).unwrap();
                *sent.lock().unwrap() += 16 * 1024;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    });
    // Let the long line reach the reader before the other connection starts.
    std::thread::sleep(Duration::from_millis(300));

    let mut other = TcpStream::connect(&input).unwrap();
    other.write_all(&numbered("other", 1000)).unwrap();
    let all_arrived = wait_until(PROMPTLY, || arrived(&out, "other").len() == 1000);
    stop_writing.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    assert!(
        all_arrived,
        "{} of the other connection's 1000 lines arrived while a sender sat inside a long line\n{}",
        arrived(&out, "other").len(),
        egw.stderr()
    );
    assert_eq!(arrived(&out, "other"), (0..1000).collect::<Vec<u64>>());

    // The long line, once ended, arrives whole, as one line.
    long.write_all(b"\"}\n").unwrap();
    drop(long);
    drop(other);
    assert!(
        wait_until(PROMPTLY, || count_lines(&out) == 1001),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let text = std::fs::read(&out).unwrap();
    let long_line = text
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(&head))
        .expect("the long line arrived");
    assert_eq!(long_line.len(), head.len() + *sent_long.lock().unwrap() + 2);
    assert!(
        egw.stderr().contains("oversize=1"),
        "counted as oversize\n{}",
        egw.stderr()
    );
}

#[test]
fn a_sender_quiet_inside_a_long_line_does_not_hold_back_other_connections() {
    a_sender_inside_a_long_line_does_not_hold_back_another(&temp_dir("inputs-stall-quiet"), false);
}

#[test]
fn a_sender_of_an_endless_line_does_not_hold_back_other_connections() {
    a_sender_inside_a_long_line_does_not_hold_back_another(&temp_dir("inputs-stall-endless"), true);
}

/// The metrics page's figure for `series`, or -1 when it cannot be read.
fn metric(metrics: &str, series: &str) -> f64 {
    figure(&http_get(metrics, "/metrics"), series).unwrap_or(-1.0)
}

#[test]
fn at_max_connections_a_new_connection_is_refused_at_once_and_idle_ones_are_closed() {
    let dir = temp_dir("inputs-limits");
    let metrics = free_address();
    let (mut egw, input, out) = start(
        &dir,
        ", idle_timeout_secs: 6",
        &format!("metrics: {{ address: '{metrics}' }}\n"),
    );
    let mut idle = vec![connect_when_ready(&input)];
    for _ in 1..64 {
        idle.push(TcpStream::connect(&input).unwrap());
    }
    assert!(
        wait_until(PROMPTLY, || metric(
            &metrics,
            "egresswatch_input_connections_open"
        ) == 64.0),
        "{}",
        egw.stderr()
    );

    // The 65th is closed at once, with a reset: its sender is told, its data is not taken.
    let mut refused = TcpStream::connect(&input).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = refused.write_all(b"{\"conn\":\"refused\",\"n\":0}\n");
    let mut buf = [0u8; 16];
    match refused.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the 65th connection was not refused: {other:?}"),
    }
    assert!(
        wait_until(PROMPTLY, || refused.write_all(b"more\n").is_err()),
        "writes into a refused connection keep succeeding"
    );
    assert!(
        wait_until(PROMPTLY, || metric(
            &metrics,
            "egresswatch_input_connections_refused_total"
        ) == 1.0),
        "{}",
        http_get(&metrics, "/metrics")
    );
    assert!(
        egw.stderr().contains("a connection was refused"),
        "{}",
        egw.stderr()
    );

    // After idle_timeout_secs the idle connections are closed, and new senders are served.
    assert!(
        wait_until(EXIT, || metric(
            &metrics,
            "egresswatch_input_connections_open"
        ) == 0.0),
        "{}",
        egw.stderr()
    );
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(idle[0].read(&mut buf).unwrap(), 0, "closed by egresswatch");
    let mut late = TcpStream::connect(&input).unwrap();
    late.write_all(&numbered("late", 10)).unwrap();
    drop(late);
    assert!(
        wait_until(PROMPTLY, || arrived(&out, "late").len() == 10),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(
        arrived(&out, "refused").is_empty(),
        "a refused sender's line was taken"
    );
}

/// A downstream that takes connections but reads nothing until `resume` is set, then reads
/// everything; returns the lines it received so far.
fn paused_downstream(resume: &Arc<AtomicBool>) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let (resume, into) = (Arc::clone(resume), Arc::clone(&received));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            while !resume.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    (address, received)
}

/// Starts a run whose `default` is a downstream that reads nothing yet, and a sender that writes
/// `LINES` numbered lines and keeps its connection open, as Vector's socket sink does. Returns
/// once the engine waits on the full output.
fn start_blocked(dir: &Path, shutdown_timeout_secs: u64, resume: &Arc<AtomicBool>) -> Blocked {
    let (downstream, received) = paused_downstream(resume);
    let metrics = free_address();
    let (egw, input, _) = start(
        dir,
        "",
        &format!(
            "metrics: {{ address: '{metrics}' }}\nshutdown_timeout_secs: {shutdown_timeout_secs}\n\
             outputs: {{ default: {{ type: tcp, address: '{downstream}', buffer: {{ max_bytes: 65536 }} }} }}\n"
        ),
    );
    let mut sender = connect_when_ready(&input);
    let writer = {
        let mut sender = sender.try_clone().unwrap();
        std::thread::spawn(move || {
            // Fails once egresswatch has gone, if it did not read everything.
            let _ = sender.write_all(&padded_lines(LINES));
        })
    };
    assert!(
        wait_until(EXIT, || metric(
            &metrics,
            "egresswatch_output_blocked{output=\"default\"}"
        ) == 1.0),
        "the engine never waited for the paused downstream\n{}",
        egw.stderr()
    );
    sender.flush().unwrap();
    Blocked {
        egw,
        sender,
        writer,
        received,
    }
}

/// Numbered lines padded to about 100 bytes.
fn padded_lines(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|n| {
            format!(
                "{{\"conn\":\"s\",\"n\":{n},\"pad\":\"{}\"}}\n",
                "p".repeat(70)
            )
            .into_bytes()
        })
        .collect()
}

/// Lines the sender of [`start_blocked`] writes: far more than the output's buffer, the
/// channel and the sockets' buffers hold, so that readers wait with blocks in hand.
const LINES: usize = 100_000;

struct Blocked {
    egw: Running,
    sender: TcpStream,
    writer: std::thread::JoinHandle<()>,
    received: Arc<Mutex<Vec<u8>>>,
}

#[test]
fn sigterm_drains_open_connections_and_every_line_read_is_delivered() {
    let dir = temp_dir("inputs-drain");
    let resume = Arc::new(AtomicBool::new(false));
    let mut run = start_blocked(&dir, 60, &resume);
    run.egw.terminate();
    // Longer than the 5 s the engine used to wait for readers after a stop.
    std::thread::sleep(Duration::from_secs(7));
    resume.store(true, Ordering::Relaxed);
    run.writer.join().unwrap();
    let status = run.egw.wait(EXIT);
    assert!(status.success(), "{status:?}\n{}", run.egw.stderr());
    drop(run.sender);
    let received = run.received.lock().unwrap().clone();
    let numbers: Vec<u64> = received
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let text = std::str::from_utf8(l).unwrap();
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        numbers.len(),
        LINES,
        "lines lost at SIGTERM\n{}",
        run.egw.stderr()
    );
    assert!(numbers.iter().copied().eq(0..LINES as u64), "order kept");
}

#[test]
fn lines_read_but_not_delivered_by_the_shutdown_deadline_are_named_with_their_count() {
    let dir = temp_dir("inputs-drain-deadline");
    let resume = Arc::new(AtomicBool::new(false));
    let mut run = start_blocked(&dir, 2, &resume);
    run.egw.terminate();
    let status = run.egw.wait(EXIT);
    let err = run.egw.stderr();
    assert!(!status.success(), "{err}");
    let count = |what: &str| -> u64 {
        let at = err
            .find(what)
            .unwrap_or_else(|| panic!("no `{what}` in\n{err}"));
        let before = err[..at].trim_end();
        let digits = before.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
        digits.parse().unwrap()
    };
    let read_not_delivered = count(" line(s) read but not delivered");
    let output_not_delivered = count(" line(s) not delivered (");
    assert!(read_not_delivered > 0, "{err}");
    assert!(output_not_delivered > 0, "{err}");
    // Lines the input names were never processed, so they cannot have reached the downstream.
    // (The output's count may include lines its peer's kernel took before the deadline: it
    // names what it could not confirm.)
    resume.store(true, Ordering::Relaxed);
    drop(run.sender);
    run.writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let received = count_matches(&run.received.lock().unwrap(), b"\n");
    assert!(
        received as u64 + read_not_delivered <= LINES as u64,
        "{received} received + {read_not_delivered} named by the input > {LINES} sent"
    );
}

fn sample() -> Vec<u8> {
    std::fs::read(workspace().join("examples/data/sample.ndjson")).expect("sample data")
}

/// The detector of the quick start (its rules flag some of the sample's events).
fn rules_detector() -> String {
    format!(
        "detector: {{ rules: ['{}'] }}\n",
        workspace().join("rules").display()
    )
}

#[test]
fn sighup_reloads_mid_stream_keeps_model_state_and_refuses_a_broken_configuration() {
    let dir = temp_dir("inputs-sighup");
    // What one uninterrupted run makes of the sample.
    let reference = write(
        &dir,
        "reference.yaml",
        format!(
            "outputs: {{ default: {{ type: file, path: reference.ndjson }} }}\n{}",
            rules_detector()
        ),
    );
    let out = run(&["run", "--config", reference.to_str().unwrap()], &sample());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = std::fs::read(dir.join("reference.ndjson")).unwrap();
    let flagged = count_matches(&expected, b"\"egresswatch\":{");
    assert!(
        flagged > 10,
        "the sample flags {flagged} events: too few to compare"
    );

    let input = free_address();
    let metrics = free_address();
    let config_text = format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         outputs: {{ default: {{ type: file, path: out.ndjson }} }}\n{}",
        rules_detector()
    );
    let config = write(&dir, "c.yaml", &config_text);
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let sample = sample();
    let lines: Vec<&[u8]> = sample.split_inclusive(|&b| b == b'\n').collect();
    let thirds: Vec<Vec<u8>> = lines
        .chunks(lines.len().div_ceil(3))
        .map(<[&[u8]]>::concat)
        .collect();
    let mut sent = 0usize;
    let mut send = |conn: &mut TcpStream, part: &[u8]| {
        conn.write_all(part).unwrap();
        sent += count_matches(part, b"\n");
        let target = sent as f64;
        assert!(
            wait_until(EXIT, || metric(&metrics, "egresswatch_events_in_total")
                >= target),
            "the engine did not read {sent} lines"
        );
    };

    // Mid-stream, with what the models learned from the first third: a reload that works.
    send(&mut conn, &thirds[0]);
    egw.signal("HUP");
    assert!(
        wait_until(EXIT, || egw.stderr().contains("configuration reloaded")),
        "{}",
        egw.stderr()
    );
    send(&mut conn, &thirds[1]);
    // A broken configuration: refused, the running one goes on.
    write(
        &dir,
        "c.yaml",
        config_text.replace("detector: {", "detector: { no_such_key: 1,"),
    );
    egw.signal("HUP");
    assert!(
        wait_until(EXIT, || egw
            .stderr()
            .contains("the new configuration is refused")),
        "{}",
        egw.stderr()
    );
    assert!(egw.stderr().contains("no_such_key"), "{}", egw.stderr());
    send(&mut conn, &thirds[2]);
    drop(conn);
    let output = dir.join("out.ndjson");
    let total = lines.len();
    assert!(
        wait_until(EXIT, || count_lines(&output) == total),
        "{} of {total} lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    // The same events, flagged the same way: nothing lost, and no model started afresh.
    assert!(
        std::fs::read(&output).unwrap() == expected,
        "the output differs from one uninterrupted run"
    );
}

fn count_matches(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
