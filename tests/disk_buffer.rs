//! Disk buffers (issue #11): an output's `buffer: { type: disk }` keeps what it has not
//! delivered across a stop and a crash, and delivers it first, in order, at the next start; a
//! damaged record is found by its checksum; a full buffer blocks or drops as configured; bad
//! settings are named. HTTP input (a 200 says the lines are in the buffer) and HTTP output, over
//! loopback, every wait bounded.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http_delivery::peers::{numbered, Break, Downstream, Sender};
use crate::util::{
    figure, free_address, http_get, refusing_address, run, stderr, temp_dir, wait_until, workspace,
    write, Running,
};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(60);
const PER_REQUEST: u64 = 2_000;

/// One run: an HTTP input, `default` an HTTP output to `downstream` with a disk buffer in
/// `dir/buf` (`buffer` adds settings), metrics on. Returns it once it listens, with its input
/// and metrics addresses.
fn start(dir: &Path, downstream: &str, buffer: &str) -> (Running, String, String) {
    let output = format!("type: http, url: 'http://{downstream}/in'");
    start_with(dir, &output, buffer)
}

/// [`start`] with `default` given as `output` (its keys before `buffer`).
fn start_with(dir: &Path, output: &str, buffer: &str) -> (Running, String, String) {
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        dir,
        "c.yaml",
        format!(
            "shutdown_timeout_secs: 2\n\
             input: {{ type: http, address: '{input}' }}\n\
             outputs:\n  default: {{ {output}, buffer: {{ type: disk, path: buf{buffer} }} }}\n\
             metrics: {{ address: '{metrics}' }}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    let egw = Running::start(dir, &config);
    assert!(
        wait_until(STARTUP, || TcpStream::connect(&input).is_ok()),
        "egresswatch did not listen on {input}:\n{}",
        egw.stderr()
    );
    (egw, input, metrics)
}

/// The figure `name{output="default"}` on the metrics page, once `ready` holds for it.
fn default_figure(metrics: &str, name: &str, ready: impl Fn(f64) -> bool) -> f64 {
    let series = format!("{name}{{output=\"default\"}}");
    let mut last = None;
    let held = wait_until(STARTUP, || {
        last = figure(&http_get(metrics, "/metrics"), &series);
        last.is_some_and(&ready)
    });
    assert!(held, "{series} is {last:?}");
    last.unwrap()
}

/// Every line the downstream took (answered 200), in arrival order.
fn received(downstream: &Downstream) -> Vec<u64> {
    let seen = downstream.seen.lock().unwrap();
    seen.connections.iter().flatten().copied().collect()
}

/// Waits until the downstream has every line of `expected` (at least once).
fn wait_for_all(downstream: &Downstream, expected: &BTreeSet<u64>, egw: &Running) {
    let arrived = wait_until(EXIT, || {
        let got: BTreeSet<u64> = received(downstream).into_iter().collect();
        expected.is_subset(&got)
    });
    assert!(
        arrived,
        "the downstream got {} of {} lines\n{}",
        received(downstream).len(),
        expected.len(),
        egw.stderr()
    );
}

/// Sends `requests` requests of [`PER_REQUEST`] numbered lines, each until answered 200.
fn send(input: &str, requests: u64) {
    let mut sender = Sender::new(input);
    for first in (0..requests * PER_REQUEST).step_by(PER_REQUEST as usize) {
        sender.deliver(
            &numbered(first..first + PER_REQUEST),
            Duration::from_secs(60),
        );
    }
}

/// The run's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("buf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// A first run whose output is down throughout: `requests` requests are answered 200 (they are
/// on disk), and at SIGTERM the run ends 0 saying it kept them. Returns the downstream's
/// address, and the socket that holds its port refusing until the caller starts a downstream
/// there.
fn first_run_with_the_output_down(dir: &Path, requests: u64) -> (String, OwnedFd) {
    let (down, refusing) = refusing_address();
    // 1 MiB: 128 KiB segments, so that the lines span several.
    let (mut egw, input, metrics) = start(dir, &down, ", max_bytes: 1048576");
    send(&input, requests);
    let total = (requests * PER_REQUEST) as f64;
    default_figure(&metrics, "egresswatch_output_pending_events", |n| {
        n == total
    });
    default_figure(&metrics, "egresswatch_output_buffer_disk_bytes", |n| {
        n > total * 10.0
    });
    assert!(segments(dir).len() >= 2, "{:?}", segments(dir));
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(
        status.success(),
        "nothing was lost, so the stop is clean\n{err}"
    );
    assert!(
        err.contains("kept in the output's disk buffer") && err.contains(&format!("lines={total}")),
        "the stop says what the buffer keeps\n{err}"
    );
    (down, refusing)
}

#[test]
fn lines_held_for_a_down_output_are_delivered_in_order_after_a_restart() {
    const REQUESTS: u64 = 10;
    let dir = temp_dir("disk-buffer-restart");
    let (down, refusing) = first_run_with_the_output_down(&dir, REQUESTS);

    drop(refusing);
    let downstream = Downstream::start_on(&down, Vec::new());
    let (mut egw, _input, metrics) = start(&dir, &down, ", max_bytes: 1048576");
    let total = REQUESTS * PER_REQUEST;
    wait_for_all(&downstream, &(0..total).collect(), &egw);
    let replayed = default_figure(
        &metrics,
        "egresswatch_output_buffer_replayed_events_total",
        |_| true,
    );
    assert_eq!(replayed, total as f64);
    default_figure(&metrics, "egresswatch_output_pending_events", |n| n == 0.0);
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());
    // Each once, in the order they came in.
    assert_eq!(received(&downstream), (0..total).collect::<Vec<_>>());
    // Delivered segments are deleted: only the one the cursor is in is left.
    assert_eq!(segments(&dir).len(), 1, "{:?}", segments(&dir));
}

#[test]
fn a_tcp_output_delivers_what_its_disk_buffer_kept_in_order_after_a_restart() {
    use std::io::BufRead;
    const REQUESTS: u64 = 5;
    let dir = temp_dir("disk-buffer-tcp");
    let (down, refusing) = refusing_address();
    let output = format!("type: tcp, address: '{down}'");
    let (mut egw, input, metrics) = start_with(&dir, &output, "");
    send(&input, REQUESTS);
    let total = REQUESTS * PER_REQUEST;
    default_figure(&metrics, "egresswatch_output_pending_events", |n| {
        n == total as f64
    });
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());

    drop(refusing);
    let listener = std::net::TcpListener::bind(&down).unwrap();
    let (mut egw, _input, metrics) = start_with(&dir, &output, "");
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(EXIT)).unwrap();
    let mut lines = std::io::BufReader::new(conn).lines();
    let got: Vec<u64> = (0..total)
        .map(|_| {
            let line = lines.next().expect("a line").expect("read");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    default_figure(&metrics, "egresswatch_output_pending_events", |n| n == 0.0);
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());
}

/// The numbers of the lines `conn` sends until it closes, or `enough` holds, or 30 s pass.
fn read_numbers(conn: TcpStream, enough: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    use std::io::BufRead;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    for line in std::io::BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        got.push(v["n"].as_u64().unwrap());
        if enough(&got) {
            break;
        }
    }
    got
}

#[test]
fn a_tcp_peer_that_stalls_then_resets_loses_at_most_its_receive_buffer_across_a_restart() {
    use std::os::fd::AsRawFd;
    const REQUESTS: u64 = 10;
    let total = REQUESTS * PER_REQUEST;
    let dir = temp_dir("disk-buffer-tcp-stalled");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A small receive window (inherited by accepted connections): the peer's kernel soon stops
    // acknowledging, and what egresswatch wrote waits in its send queue.
    let small: libc::c_int = 4096;
    // SAFETY: SO_RCVBUF takes an int of this size; the listener is open.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    let down = listener.local_addr().unwrap().to_string();
    let output = format!("type: tcp, address: '{down}'");
    let (mut egw, input, _metrics) = start_with(&dir, &output, "");
    let (stalled, _) = listener.accept().unwrap();
    send(&input, REQUESTS);
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    // What the peer's kernel had not acknowledged is kept, not named as lost.
    assert!(status.success(), "{err}");
    assert!(!err.contains("line(s) not delivered"), "{err}");
    assert!(err.contains("kept in the output's disk buffer"), "{err}");
    // The peer goes away without reading: what its kernel acknowledged (at most its small
    // receive buffer) is lost, as over any socket; the rest was kept.
    crate::util::close_with_reset(stalled);

    let (mut egw, _input, _metrics) = start_with(&dir, &output, "");
    let (conn, _) = listener.accept().unwrap();
    let second = read_numbers(conn, |got| got.last() == Some(&(total - 1)));
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());
    assert!(
        second.windows(2).all(|w| w[0] < w[1]),
        "the replay is in order"
    );
    let from = *second.first().expect("the kept lines are delivered");
    assert_eq!(
        second.len() as u64,
        total - from,
        "every line from {from} on"
    );
    // Lost: the first `from` lines, at most what fits in the peer's receive buffer (the kernel
    // doubles the 4 KiB asked for; each line is at least 8 bytes).
    assert!(from * 8 <= 2 * 8192, "{from} lines lost");
    eprintln!(
        "disk buffer, TCP peer stalled then reset: {from} lines lost (in its receive buffer), \
         {} delivered again after the restart",
        second.len()
    );
}

#[test]
fn a_kill_loses_nothing_the_buffer_took() {
    let dir = temp_dir("disk-buffer-kill");
    // The downstream takes a few requests, then goes away for 10 s (its port kept): the buffer
    // fills meanwhile.
    let downstream = Downstream::start(vec![(4, Break::Down(Duration::from_secs(10)))]);
    let down = downstream.address.clone();
    let (mut egw, input, _metrics) = start(&dir, &down, "");
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut sender = Sender::new(&input);
            let mut first = 0;
            while !stop.load(Ordering::Relaxed) {
                let range = first..first + PER_REQUEST;
                if sender.post(&numbered(range.clone())) == Some(200) {
                    acked.lock().unwrap().extend(range);
                    first += PER_REQUEST;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    // Killed while the downstream is away and the sender is still sending.
    let away = wait_until(EXIT, || downstream.seen.lock().unwrap().broken == 1);
    assert!(away, "the downstream never broke\n{}", egw.stderr());
    let before = acked.lock().unwrap().len();
    let more = wait_until(EXIT, || {
        acked.lock().unwrap().len() >= before + 3 * PER_REQUEST as usize
    });
    assert!(more, "the input stopped answering 200\n{}", egw.stderr());
    egw.child.kill().unwrap();
    egw.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // What the buffer held at the kill: acknowledged, not yet downstream (the downstream is
    // still away, unless this machine took 10 s for 3 requests).
    let held = acked.len() - received(&downstream).len().min(acked.len());
    assert!(held > 0, "the kill came when the buffer was empty");

    let (mut egw, _input, _metrics) = start(&dir, &down, "");
    wait_for_all(&downstream, &acked, &egw);
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());
    let all = received(&downstream);
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    let repeats = all.len() - distinct.len();
    eprintln!(
        "disk buffer, SIGKILL while the downstream was away: {} lines acknowledged, 0 lost, \
         {repeats} repeated",
        acked.len()
    );
    assert!(acked.is_subset(&distinct));
}

#[test]
fn a_damaged_record_is_found_by_its_checksum_counted_and_those_before_it_delivered() {
    const REQUESTS: u64 = 10;
    let dir = temp_dir("disk-buffer-corrupt");
    let (down, refusing) = first_run_with_the_output_down(&dir, REQUESTS);
    // The last byte of the newest record (a line's newline) is changed.
    let newest = segments(&dir)
        .into_iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 8)
        .expect("a segment with records");
    let mut bytes = std::fs::read(&newest).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    std::fs::write(&newest, bytes).unwrap();

    drop(refusing);
    let downstream = Downstream::start_on(&down, Vec::new());
    let (mut egw, _input, metrics) = start(&dir, &down, ", max_bytes: 1048576");
    // (Counted once the output's thread has checked the buffer, after the input listens.)
    let corrupt = default_figure(
        &metrics,
        "egresswatch_output_buffer_corrupt_records_total",
        |n| n > 0.0,
    );
    assert_eq!(corrupt, 1.0);
    let replayed = default_figure(
        &metrics,
        "egresswatch_output_buffer_replayed_events_total",
        |n| n > 0.0,
    ) as u64;
    let total = REQUESTS * PER_REQUEST;
    assert!(replayed > 0 && replayed < total, "{replayed}");
    wait_for_all(&downstream, &(0..replayed).collect(), &egw);
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("fails its checksum"), "{err}");
    // What came before the damaged record, each once, in order.
    assert_eq!(received(&downstream), (0..replayed).collect::<Vec<_>>());
}

/// Sends requests of numbered lines from a thread until `stop`, without retrying; counts the
/// lines of those answered 200.
fn keep_sending(input: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sender = Sender::new(&input);
        let (mut first, mut acked) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            if sender.post(&numbered(first..first + PER_REQUEST)) == Some(200) {
                acked += PER_REQUEST;
            }
            first += PER_REQUEST;
        }
        acked
    })
}

#[test]
fn a_full_disk_buffer_blocks_visibly_and_is_named_at_exit() {
    let dir = temp_dir("disk-buffer-full-block");
    let (down, _refusing) = refusing_address();
    let (mut egw, input, metrics) = start(&dir, &down, ", max_bytes: 1048576");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(input, Arc::clone(&stop));
    default_figure(&metrics, "egresswatch_output_blocked", |n| n == 1.0);
    let pending = default_figure(&metrics, "egresswatch_output_pending_bytes", |_| true);
    // At most the bound plus one batch (one request's lines here).
    assert!(
        pending <= (1_048_576 + 20 * PER_REQUEST) as f64,
        "{pending}"
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let err = egw.stderr();
    // The batch the engine was waiting to hand over is named (refused at the deadline, or once
    // the output gave up there, whichever came first); what the buffer took is kept.
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "outputs.default: {PER_REQUEST} line(s) not delivered"
        )),
        "{err}"
    );
    assert!(err.contains("kept in the output's disk buffer"), "{err}");
}

#[test]
fn a_full_disk_buffer_with_drop_newest_counts_what_it_drops() {
    let dir = temp_dir("disk-buffer-full-drop");
    let (down, _refusing) = refusing_address();
    let (mut egw, input, metrics) =
        start(&dir, &down, ", max_bytes: 1048576, when_full: drop_newest");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(input, Arc::clone(&stop));
    default_figure(&metrics, "egresswatch_output_dropped_total", |n| n > 0.0);
    stop.store(true, Ordering::Relaxed);
    let acked = sender.join().unwrap();
    let dropped = default_figure(&metrics, "egresswatch_output_dropped_total", |_| true);
    let held = default_figure(&metrics, "egresswatch_output_pending_events", |_| true);
    // Every request was answered 200: its lines are in the buffer or counted as dropped.
    assert_eq!(held + dropped, acked as f64);
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("drop_newest"), "{err}");
    assert!(err.contains(&format!("lines={held}")), "{err}");
}

#[test]
fn disk_buffer_settings_that_cannot_work_are_named() {
    let dir = temp_dir("disk-buffer-config");
    let rules = workspace().join("rules");
    let detector = format!("detector: {{ rules: ['{}'] }}\n", rules.display());
    let config = write(
        &dir,
        "c.yaml",
        "outputs:\n\
         \x20 a: { type: file, path: a.out, buffer: { type: disk } }\n\
         \x20 b: { type: file, path: b.out, buffer: { type: disk, path: q, max_bytes: 65536 } }\n\
         \x20 c: { type: file, path: c.out, buffer: { type: disk, path: ./q } }\n\
         \x20 d: { type: file, path: d.out, buffer: { path: m } }\n"
            .to_owned()
            + &detector,
    );
    let out = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for key in [
        "outputs.a.buffer.path: a disk buffer needs a folder",
        "outputs.b.buffer.max_bytes: must be at least 1048576",
        "outputs.c.buffer.path: `./q` is also outputs.b.buffer.path",
        "outputs.d.buffer.path: only a disk buffer has a path",
    ] {
        assert!(err.contains(key), "no `{key}` in\n{err}");
    }

    // A folder that cannot be made (its parent is a file), and one another process holds.
    write(&dir, "file", "x");
    let config = write(
        &dir,
        "bad.yaml",
        "outputs:\n  default: { type: stdout, buffer: { type: disk, path: file/buf } }\n"
            .to_owned()
            + &detector,
    );
    let out = run(&["run", "--config", config.to_str().unwrap()], b"");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("outputs.default.buffer.path: cannot create the folder"),
        "{err}"
    );
    let (_held, _, _) = start(&dir, &free_address(), "");
    let config = write(
        &dir,
        "second.yaml",
        "outputs:\n  default: { type: stdout, buffer: { type: disk, path: buf } }\n".to_owned()
            + &detector,
    );
    let out = run(&["run", "--config", config.to_str().unwrap()], b"");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("outputs.default.buffer.path") && err.contains("is in use"),
        "{err}"
    );
}
