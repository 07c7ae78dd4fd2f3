//! Reloads of an output with a disk buffer (issue #11): when the buffer stays in its folder the
//! reload keeps it and replaces only the delivery thread, which reads on from the buffer's
//! cursor: every line arrives at least once, each peer's lines in order, what repeats is what
//! the old peer may not have had. Moved while lines stream; two reloads during one hand-over; a
//! stop during a hand-over (the backlog stays on disk, named at exit, delivered at the next
//! start); a buffer moved to another folder is refused. Loopback only, every wait bounded.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::outputs::{all_of, downstream_of, stuck_peer, Received};
use super::{detector_as_shipped, numbered, reload, EXIT};
use crate::util::{
    free_address, refusing_address, temp_dir, wait_until, wait_until_read, write, Running,
};

/// Settings with a TCP input, a metrics endpoint, `extra` (YAML lines, may be empty) and
/// `default` a TCP output to `peer` with a disk buffer in `folder`.
fn settings(input: &str, metrics: &str, peer: &str, folder: &str, extra: &str) -> String {
    format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         {extra}outputs: {{ default: {{ type: tcp, address: '{peer}', buffer: {{ type: disk, \
         path: {folder}, max_bytes: 268435456 }} }} }}\n{}",
        detector_as_shipped()
    )
}

/// The `N` of a line `{"n":N}` (passed through unchanged), without a JSON parser: a million
/// lines are read in these tests.
fn number(line: &[u8]) -> u64 {
    let digits = line.iter().filter(|b| b.is_ascii_digit());
    digits.fold(0, |n, d| n * 10 + u64::from(d - b'0'))
}

/// A TCP downstream keeping the number of each line it receives, per connection.
fn downstream() -> (String, Received) {
    downstream_of(number)
}

/// Connects to `address` once `egw` listens there (30 s at most); if it does not, says why: its
/// exit status and standard error (a port taken meanwhile, a start that failed).
fn connect(egw: &mut Running, address: &str) -> std::net::TcpStream {
    let mut conn = None;
    let listening = wait_until(Duration::from_secs(30), || {
        conn = std::net::TcpStream::connect(address).ok();
        conn.is_some()
    });
    if !listening {
        let status = egw.child.try_wait().ok().flatten();
        panic!(
            "egresswatch did not listen on {address} (exit status: {status:?}):\n{}",
            egw.stderr()
        );
    }
    conn.unwrap()
}

/// Whether `numbers` run on from `first` without a gap or a repeat.
fn consecutive(numbers: &[u64], first: u64) -> bool {
    numbers
        .iter()
        .copied()
        .eq(first..first + numbers.len() as u64)
}

/// Checks one output's lines across a reload: the old peer got lines 0.. in order, the new one
/// the rest in order from at most one past the old one's last (what repeats is what the old
/// peer may not have had), up to `total - 1`. Returns how many repeated.
fn at_least_once_in_order(old: &[u64], new: &[u64], total: u64) -> u64 {
    assert!(consecutive(old, 0), "the old peer's lines: {old:?}");
    let from = *new.first().expect("the new peer got lines");
    assert!(
        from <= old.len() as u64,
        "lines {}..{from} lost across the switch",
        old.len()
    );
    assert!(
        consecutive(new, from) && from + new.len() as u64 == total,
        "the new peer's lines are not {from}..{total} in order"
    );
    old.len() as u64 - from
}

#[test]
fn sighup_moving_a_disk_buffered_output_while_lines_stream_delivers_each_line_in_order() {
    let dir = temp_dir("reload-disk-moved");
    let (first, at_first) = downstream();
    let (second, at_second) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let total = 200_000;
    let config = write(
        &dir,
        "c.yaml",
        settings(&input, &metrics, &first, "buf", ""),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect(&mut egw, &input);
    let sender = std::thread::spawn(move || {
        for from in (0..total).step_by(500) {
            conn.write_all(&numbered(from, from + 500)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        conn
    });
    assert!(
        wait_until(EXIT, || all_of(&at_first).len() >= 20_000),
        "{}",
        egw.stderr()
    );
    // The same folder, written `./buf`: the reload keeps the buffer.
    write(
        &dir,
        "c.yaml",
        settings(&input, &metrics, &second, "./buf", ""),
    );
    reload(&egw, "configuration reloaded");
    drop(sender.join().unwrap());
    assert!(
        wait_until(EXIT, || all_of(&at_second).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&at_second).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (all_of(&at_first), all_of(&at_second));
    let repeated = at_least_once_in_order(&old, &new, total);
    println!(
        "old peer {} lines, new peer {} lines, {repeated} repeated",
        old.len(),
        new.len()
    );
    assert!(old.len() < total as usize, "the reload came after the end");
    let err = egw.stderr();
    assert!(
        err.contains("its replacement delivers on from the disk buffer's cursor"),
        "{err}"
    );
}

/// A TCP peer that reads slowly (4 KiB every 100 ms through a small receive buffer: an output
/// to it keeps delivering, at that pace) until `fast` is set, then reads to the end; the
/// numbers of the whole lines it read.
fn slow_peer() -> (String, Arc<AtomicBool>, JoinHandle<Vec<u64>>) {
    let (listener, address) = stuck_peer();
    let fast = Arc::new(AtomicBool::new(false));
    let go = Arc::clone(&fast);
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (mut taken, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
        loop {
            let want = if go.load(Ordering::Relaxed) {
                chunk.len()
            } else {
                std::thread::sleep(Duration::from_millis(100));
                4096
            };
            match conn.read(&mut chunk[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => taken.extend_from_slice(&chunk[..n]),
            }
        }
        taken
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| l.ends_with(b"\n"))
            .map(number)
            .collect()
    });
    (address, fast, reader)
}

/// Lines `{"n":N,"pad":"xx..."}` for N in `0..total`, 250 bytes each: 100,000 of them are more
/// than the kernel's socket buffers hold, so an output to a slow peer is still writing a batch.
fn padded(total: u64) -> Vec<u8> {
    let pad = "x".repeat(220);
    (0..total)
        .flat_map(|n| format!("{{\"n\":{n},\"pad\":\"{pad}\"}}\n").into_bytes())
        .collect()
}

/// Starts a run whose output, to a slow peer, has read `total` lines into its disk buffer and
/// is delivering them; returns it, the peer's switch to full speed and its lines.
fn delivering_slowly(
    dir: &std::path::Path,
    input: &str,
    metrics: &str,
    total: u64,
    extra: &str,
) -> (Running, Arc<AtomicBool>, JoinHandle<Vec<u64>>) {
    let (slow, fast, old_peer) = slow_peer();
    let config = write(dir, "c.yaml", settings(input, metrics, &slow, "buf", extra));
    let mut egw = Running::start(dir, &config);
    let mut conn = connect(&mut egw, input);
    conn.write_all(&padded(total)).unwrap();
    drop(conn);
    assert!(wait_until_read(metrics, total), "{}", egw.stderr());
    (egw, fast, old_peer)
}

#[test]
fn two_sighups_during_one_hand_over_of_a_disk_buffered_output_lose_nothing() {
    let dir = temp_dir("reload-disk-twice");
    let (input, metrics) = (free_address(), free_address());
    let total = 100_000;
    let (mut egw, fast, old_peer) = delivering_slowly(&dir, &input, &metrics, total, "");
    // The first reload moves the output to a peer that is down; the second, taken while the
    // old output still finishes its batch for the slow peer, to one that is up.
    let (down, _down_held) = refusing_address();
    let (up, at_up) = downstream();
    let moved = |peer: &str| settings(&input, &metrics, peer, "buf", "");
    write(&dir, "c.yaml", moved(&down));
    reload(&egw, "configuration reloaded");
    write(&dir, "c.yaml", moved(&up));
    let err = reload(&egw, "configuration reloaded");
    assert!(
        !err.contains("it stops"),
        "the first hand-over ended before the second reload: {err}"
    );
    // (Written after the reloads: these can only go to the last peer.)
    let mut conn = connect(&mut egw, &input);
    conn.write_all(&numbered(total, total + 1000)).unwrap();
    drop(conn);
    fast.store(true, Ordering::Relaxed);
    assert!(
        wait_until(EXIT, || all_of(&at_up).last() == Some(&(total + 999))),
        "{} lines at the new peer\n{}",
        all_of(&at_up).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (old_peer.join().unwrap(), all_of(&at_up));
    let repeated = at_least_once_in_order(&old, &new, total + 1000);
    println!(
        "old peer {} lines, new peer {} lines, {repeated} repeated",
        old.len(),
        new.len()
    );
}

#[test]
fn a_stop_during_the_hand_over_of_a_disk_buffered_output_keeps_its_backlog_for_the_next_start() {
    let dir = temp_dir("reload-disk-stop");
    let (input, metrics) = (free_address(), free_address());
    let total = 100_000;
    let timeout = "shutdown_timeout_secs: 3\n";
    let (mut egw, fast, old_peer) = delivering_slowly(&dir, &input, &metrics, total, timeout);
    // Moved to a peer that is down, then stopped while the old output still finishes its
    // batch for the slow peer.
    let (down, _down_held) = refusing_address();
    write(
        &dir,
        "c.yaml",
        settings(&input, &metrics, &down, "buf", timeout),
    );
    let err = reload(&egw, "configuration reloaded");
    assert!(!err.contains("it stops"), "{err}");
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let err = egw.stderr();
    let kept = err
        .lines()
        .find(|l| l.contains("kept in the output's disk buffer"))
        .unwrap_or_else(|| panic!("the backlog is not named at exit: {err}"));
    let lines: u64 = kept
        .split("lines=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line count: {kept}"));
    assert!(lines > 0 && lines <= total, "{kept}");
    fast.store(true, Ordering::Relaxed);
    let old = old_peer.join().unwrap();
    // The next start delivers the backlog from the cursor.
    let (up, at_up) = downstream();
    let config = write(
        &dir,
        "c.yaml",
        settings(&input, &metrics, &up, "buf", timeout),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(
        wait_until(EXIT, || all_of(&at_up).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&at_up).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let new = all_of(&at_up);
    assert_eq!(new.len() as u64, lines, "the lines named at exit");
    let repeated = at_least_once_in_order(&old, &new, total);
    println!(
        "old peer {} lines, kept {lines}, {repeated} repeated",
        old.len()
    );
}

#[test]
fn sighup_moving_a_disk_buffer_to_another_folder_is_refused_and_the_output_goes_on() {
    let dir = temp_dir("reload-disk-refused");
    let (peer, at_peer) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let config = write(&dir, "c.yaml", settings(&input, &metrics, &peer, "buf", ""));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect(&mut egw, &input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    write(
        &dir,
        "c.yaml",
        settings(&input, &metrics, &peer, "elsewhere", ""),
    );
    let err = reload(&egw, "new configuration is refused");
    assert!(
        err.contains(
            "outputs.default changed: a reload replaces an output with a disk buffer \
             only when the buffer stays in the same folder"
        ),
        "{err}"
    );
    conn.write_all(&numbered(1000, 2000)).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&at_peer).len() == 2000),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(all_of(&at_peer).into_iter().eq(0..2000));
    assert!(!dir.join("elsewhere").exists());
}
