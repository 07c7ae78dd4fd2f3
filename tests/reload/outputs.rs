//! Reloads that rebuild outputs (issue #11): an output moved, replaced while down or while
//! its peer stopped reading, moved while its full `block` buffer stalls the feed, removed, and
//! removed then added back while the old one still writes: every line once, in order, whole.
//! Loopback only, every wait bounded.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::{detector_as_shipped, numbered, reload, EXIT};
use crate::util::{
    connect_when_ready, count_lines, figure, free_address, http_get, refusing_address, temp_dir,
    wait_until, wait_until_read, write, Running,
};

/// The numbers received by a plain TCP downstream, per connection, in order.
pub(super) type Received = std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>;

/// A TCP downstream on a loopback port (returned): reads every connection to its end and keeps
/// the `n` of each line it receives, per connection.
pub(super) fn downstream() -> (String, Received) {
    downstream_of(|line| {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        v["n"].as_u64().unwrap()
    })
}

/// [`downstream`], reading each line's number with `number`.
pub(super) fn downstream_of(number: fn(&[u8]) -> u64) -> (String, Received) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received = Received::default();
    let shared = std::sync::Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let received = std::sync::Arc::clone(&shared);
            let index = {
                let mut all = received.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            std::thread::spawn(move || {
                let (mut partial, mut chunk) = (Vec::new(), [0u8; 8192]);
                while let Ok(n @ 1..) = conn.read(&mut chunk) {
                    partial.extend_from_slice(&chunk[..n]);
                    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=nl).collect();
                        received.lock().unwrap()[index].push(number(&line));
                    }
                }
            });
        }
    });
    (address, received)
}

/// Every number a downstream received, connections in the order they were accepted.
pub(super) fn all_of(received: &Received) -> Vec<u64> {
    received.lock().unwrap().concat()
}

#[test]
fn sighup_moving_an_output_to_another_peer_delivers_every_line_once_in_order() {
    let dir = temp_dir("reload-output-moved");
    let (first, at_first) = downstream();
    let (second, at_second) = downstream();
    let input = free_address();
    let settings = |peer: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: tcp, \
             address: '{peer}' }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&first));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    assert!(
        wait_until(EXIT, || all_of(&at_first).len() == 1000),
        "{}",
        egw.stderr()
    );
    write(&dir, "c.yaml", settings(&second));
    egw.signal("HUP");
    // Lines keep coming while the reload happens, in small writes.
    for from in (1000..3000).step_by(50) {
        conn.write_all(&numbered(from, from + 50)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        wait_until(EXIT, || egw.stderr().contains("configuration reloaded")),
        "{}",
        egw.stderr()
    );
    // Written after the reload: they can only go to the new peer.
    conn.write_all(&numbered(3000, 4000)).unwrap();
    drop(conn);
    let arrived = || all_of(&at_first).len() + all_of(&at_second).len();
    assert!(
        wait_until(EXIT, || arrived() == 4000),
        "{} of 4000 lines arrived\n{}",
        arrived(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (all_of(&at_first), all_of(&at_second));
    assert!(
        old.len() >= 1000 && new.len() >= 1000,
        "{} then {}",
        old.len(),
        new.len()
    );
    // The old peer has a beginning and the new one the rest: none lost, none twice, in order.
    assert!(
        old.iter().chain(&new).copied().eq(0..4000),
        "lines lost, repeated or out of order across the switch"
    );
    assert!(
        egw.stderr().contains("output rebuilt by the reload"),
        "{}",
        egw.stderr()
    );
}

#[test]
fn sighup_with_an_output_that_cannot_be_built_is_refused_and_the_old_one_goes_on() {
    let dir = temp_dir("reload-output-bad");
    let input = free_address();
    let settings = |out: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: file, \
             path: {out} }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings("out.ndjson"));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let output = dir.join("out.ndjson");
    conn.write_all(&numbered(0, 100)).unwrap();
    assert!(wait_until(EXIT, || count_lines(&output) == 100));
    // A folder that does not exist: the file cannot be opened.
    write(&dir, "c.yaml", settings("missing/out.ndjson"));
    let log = reload(&egw, "the new configuration is refused");
    assert!(
        log.contains("a changed output could not be built: output default: cannot open"),
        "{log}"
    );
    assert!(log.contains("missing/out.ndjson"), "{log}");
    conn.write_all(&numbered(100, 200)).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 200),
        "{} of 200 lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

#[test]
fn sighup_replacing_a_down_output_hands_what_it_held_to_the_new_one() {
    let dir = temp_dir("reload-output-down");
    // Nobody listens at the first address: the output holds its lines and retries.
    let (down, _down_held) = refusing_address();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let settings = |peer: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             outputs: {{ default: {{ type: tcp, address: '{peer}' }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&down));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    assert!(wait_until_read(&metrics, 1000), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(&up));
    reload(&egw, "configuration reloaded");
    conn.write_all(&numbered(1000, 2000)).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).len() == 2000),
        "{} of 2000 lines arrived\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(
        all_of(&received).into_iter().eq(0..2000),
        "lines lost, repeated or out of order"
    );
    // The batch the old output was retrying went to the new one.
    assert!(
        egw.stderr().contains("its replacement delivers them first"),
        "{}",
        egw.stderr()
    );
}

/// A peer that accepts and never reads, with a small receive buffer (inherited by the accepted
/// connection), so that an output to it blocks soon; and its address.
pub(super) fn stuck_peer() -> (std::net::TcpListener, String) {
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = stuck.local_addr().unwrap().to_string();
    let size: libc::c_int = 4096;
    // SAFETY: SO_RCVBUF takes an int of this size; the socket is open until `stuck` drops.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stuck),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    (stuck, address)
}

/// The numbers of the whole lines a stuck peer's kernel took (read now, after the output
/// reset the connection).
fn taken_by(mut peer: std::net::TcpStream) -> Vec<u64> {
    use std::io::Read;
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut taken = Vec::new();
    let _ = peer.read_to_end(&mut taken);
    taken
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Settings with a TCP input, a metrics endpoint, a far shutdown deadline (a hand-over never
/// waits for it) and `default` a TCP output to `peer` with `buffer` (YAML, may be empty).
fn stuck_settings(input: &str, metrics: &str, peer: &str, buffer: &str) -> String {
    format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         shutdown_timeout_secs: 600\n\
         outputs: {{ default: {{ type: tcp, address: '{peer}'{buffer} }} }}\n{}",
        detector_as_shipped()
    )
}

#[test]
fn sighup_replacing_an_output_whose_peer_stopped_reading_hands_over_what_it_did_not_take() {
    let dir = temp_dir("reload-output-stuck");
    let (stuck, stuck_address) = stuck_peer();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let total = 500_000;
    // The old output's deadline is far off: it hands over because its peer takes nothing.
    let config = write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &stuck_address, ""),
    );
    let mut egw = Running::start(&dir, &config);
    let (old_peer, _) = stuck.accept().unwrap();
    let mut conn = connect_when_ready(&input);
    let sender = std::thread::spawn(move || {
        conn.write_all(&numbered(0, total)).unwrap();
        conn
    });
    // Everything is read: what the stuck socket does not take waits in the output's buffer
    // (8 MiB, not full).
    assert!(wait_until_read(&metrics, total), "{}", egw.stderr());
    write(&dir, "c.yaml", stuck_settings(&input, &metrics, &up, ""));
    reload(&egw, "configuration reloaded");
    let conn = sender.join().unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    // The old output's unacknowledged tail, written again by the new one (its last line
    // arrived after them), counts as resent.
    let resent = figure(
        &http_get(&metrics, "/metrics"),
        "egresswatch_output_resent_total{output=\"default\"}",
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let old = taken_by(old_peer);
    let new = all_of(&received);
    let (lost, repeated) = crate::util::tally(&[old.clone(), new.clone()], total);
    println!(
        "old peer took {}, new peer got {}: {lost} lost, {repeated} repeated, {resent:?} resent",
        old.len(),
        new.len()
    );
    assert_eq!(lost, 0, "{}", egw.stderr());
    // Each line counted once in events_out, however often it was written.
    let summary = egw.stderr();
    let counted = summary.lines().find(|l| l.contains("output default: "));
    assert!(
        summary.contains(&format!("output default: {total} events")),
        "{counted:?}"
    );
    assert!(resent.is_some_and(|n| n > 0.0), "{resent:?}");
}

#[test]
fn sighup_replacing_an_http_output_whose_peer_never_answers_hands_its_lines_over() {
    let dir = temp_dir("reload-output-http-silent");
    // A peer that reads requests and never answers them; it counts those it has read.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for conn in silent.incoming() {
            let Ok(conn) = conn else { return };
            let counted = std::sync::Arc::clone(&counted);
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn);
                while crate::http_delivery::peers::read_message(&mut reader).is_some() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let up = crate::http_delivery::peers::Downstream::start(Vec::new());
    let (input, metrics) = (free_address(), free_address());
    // Its own timeouts are far off: only the reload may make it hand over.
    let settings = |url: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 600\noutputs: {{ default: {{ type: http, url: '{url}', \
             request_timeout_secs: 600 }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&silent_url));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    drop(conn);
    assert!(wait_until_read(&metrics, 1000), "{}", egw.stderr());
    // The old output has a request in flight, which its peer will never answer.
    let in_flight = || requests.load(std::sync::atomic::Ordering::Relaxed) > 0;
    assert!(wait_until(EXIT, in_flight), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(&format!("http://{}/", up.address)));
    reload(&egw, "configuration reloaded");
    let got = || up.seen.lock().unwrap().connections.concat();
    assert!(
        wait_until(EXIT, || got().len() >= 1000),
        "{} lines at the new peer\n{}",
        got().len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    // The old peer never answered: each line reaches the new one once, in order.
    assert!(got().into_iter().eq(0..1000), "{:?}", got());
    assert!(
        egw.stderr().contains("a reload replaced the output"),
        "{}",
        egw.stderr()
    );
}

#[test]
fn sighup_moves_an_output_whose_full_block_buffer_stalls_the_feed() {
    let dir = temp_dir("reload-output-blocked");
    let (stuck, stuck_address) = stuck_peer();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    // A small buffer that blocks: once the stuck socket and the buffer are full, the engine
    // waits for room, and the feed stalls.
    let buffer = ", buffer: { max_bytes: 65536, when_full: block }";
    // (More than the output's socket buffer takes, up to 4 MiB.)
    let total = 1_000_000;
    let config = write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &stuck_address, buffer),
    );
    let mut egw = Running::start(&dir, &config);
    let (old_peer, _) = stuck.accept().unwrap();
    let mut conn = connect_when_ready(&input);
    let sender = std::thread::spawn(move || {
        conn.write_all(&numbered(0, total)).unwrap();
        conn
    });
    // The feed stalls: the engine waits on the full buffer, and has read nothing for a second.
    let blocked = "egresswatch_output_blocked{output=\"default\"} 1";
    let mut read = (None, std::time::Instant::now());
    let stalled = wait_until(EXIT, || {
        let text = http_get(&metrics, "/metrics");
        let now = figure(&text, "egresswatch_events_in_total");
        if now != read.0 {
            read = (now, std::time::Instant::now());
        }
        text.contains(blocked) && read.1.elapsed() >= Duration::from_secs(1)
    });
    assert!(stalled, "{}", egw.stderr());
    // The operator moves the output to a peer that reads.
    write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &up, buffer),
    );
    reload(&egw, "configuration reloaded");
    let conn = sender.join().unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (taken_by(old_peer), all_of(&received));
    assert!(
        old.iter().chain(&new).copied().eq(0..total),
        "lines lost, repeated or out of order: the old peer took {}, the new one got {}",
        old.len(),
        new.len()
    );
}

#[test]
fn sighup_removing_a_down_output_takes_it_out_of_health() {
    let dir = temp_dir("reload-output-removed");
    let (input, metrics, down) = (free_address(), free_address(), free_address());
    let settings = |pager: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 1\noutputs:\n  default: {{ type: file, path: out.ndjson \
             }}\n{pager}{}",
            detector_as_shipped()
        )
    };
    let config = write(
        &dir,
        "c.yaml",
        settings(&format!("  pager: {{ type: tcp, address: '{down}' }}\n")),
    );
    let mut egw = Running::start(&dir, &config);
    // The pager's peer is down: /health says so.
    assert!(
        wait_until(EXIT, || http_get(&metrics, "/health")
            .starts_with("HTTP/1.1 503")),
        "{}",
        http_get(&metrics, "/health")
    );
    write(&dir, "c.yaml", settings(""));
    reload(&egw, "configuration reloaded");
    assert!(
        wait_until(EXIT, || http_get(&metrics, "/health")
            .starts_with("HTTP/1.1 200")),
        "{}",
        http_get(&metrics, "/health")
    );
    assert!(!http_get(&metrics, "/metrics").contains("output=\"pager\""));
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

/// Settings whose unreadable lines go to `errors` (`output`, YAML) when there is one, and are
/// passed to `default` (a file) otherwise. The shutdown deadline is far off: a hand-over never
/// waits for it.
fn errors_settings(input: &str, metrics: &str, output: Option<&str>) -> String {
    let (unreadable, errors) = match output {
        Some(output) => ("errors", format!("\n  errors: {output}")),
        None => ("pass", String::new()),
    };
    format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         shutdown_timeout_secs: 600\nunreadable: {unreadable}\noutputs:\n  default: {{ type: \
         file, path: out.ndjson }}{errors}\n{}",
        detector_as_shipped()
    )
}

/// Lines `uN` for N in `from..to`: not JSON, so `unreadable: errors` sends them to `errors`.
fn unreadable_lines(from: u64, to: u64) -> Vec<u8> {
    (from..to)
        .flat_map(|n| format!("u{n}\n").into_bytes())
        .collect()
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_removing_then_re_adding_a_file_output_still_writing_keeps_its_lines_whole_and_in_order() {
    use std::io::Read;
    let dir = temp_dir("reload-output-readded");
    // The `errors` output writes into a pipe that is read only once everything is set up: its
    // writes block once the pipe is full, and its lines wait in its buffer meanwhile.
    let pipe = dir.join("errors.pipe");
    mkfifo(&pipe);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (pipe, read) = (pipe.clone(), std::sync::Arc::clone(&read));
        std::thread::spawn(move || {
            // (Opened as egresswatch opens its end; kept open, so that its writes never fail.)
            let mut end = std::fs::File::open(&pipe).unwrap();
            let _ = released.recv();
            // (In small reads: each wakes one blocked writer, in turn.)
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = end.read(&mut chunk) {
                read.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let (input, metrics) = (free_address(), free_address());
    let settings = |errors: bool| {
        let output = errors.then_some("{ type: file, path: errors.pipe }");
        errors_settings(&input, &metrics, output)
    };
    let lines = unreadable_lines;
    let config = write(&dir, "c.yaml", settings(true));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    // In many blocks: the output holds many batches, each a write of its own.
    for from in (0..100_000).step_by(1000) {
        conn.write_all(&lines(from, from + 1000)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(wait_until_read(&metrics, 100_000), "{}", egw.stderr());
    // Removed while it still holds most of its lines ...
    write(&dir, "c.yaml", settings(false));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(100_000, 101_000)).unwrap();
    let out = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&out) == 1000),
        "{}",
        egw.stderr()
    );
    // ... and added again, at the same path, while the removed one still writes there.
    write(&dir, "c.yaml", settings(true));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(101_000, 102_000)).unwrap();
    drop(conn);
    release.send(()).unwrap();
    let arrived = || read.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
    assert!(
        wait_until(EXIT, || arrived() == 101_000),
        "{} of 101000 lines came through the pipe\n{}",
        arrived(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    reader.join().unwrap();
    // Whole lines, each once, in order: the old output's, then the new one's.
    let expected = [lines(0, 100_000), lines(101_000, 102_000)].concat();
    let read = read.lock().unwrap();
    assert!(
        *read == expected,
        "the two outputs' lines were mixed: {} bytes, first difference at byte {:?}",
        read.len(),
        read.iter().zip(&expected).position(|(a, b)| a != b)
    );
}

#[test]
fn sighup_adding_back_a_removed_output_that_is_still_failing_takes_over_what_it_holds() {
    let dir = temp_dir("reload-output-readded-down");
    // `errors` goes to a peer that is down; it is removed, then added back toward a live one.
    // (Held for the whole test: a port merely let go can be taken by another bind, such as a
    // metrics endpoint's, which then takes what `errors` holds.)
    let (down, _down_held) = refusing_address();
    let (up, received) = downstream_of(|line| {
        let text = std::str::from_utf8(line).unwrap();
        text.trim_end().trim_start_matches('u').parse().unwrap()
    });
    let (input, metrics) = (free_address(), free_address());
    let settings = |errors: Option<&str>| {
        let output = errors.map(|peer| format!("{{ type: tcp, address: '{peer}' }}"));
        errors_settings(&input, &metrics, output.as_deref())
    };
    let lines = unreadable_lines;
    let config = write(&dir, "c.yaml", settings(Some(&down)));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&lines(0, 1000)).unwrap();
    assert!(wait_until_read(&metrics, 1000), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(None));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(1000, 1100)).unwrap();
    let out = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&out) == 100),
        "{}",
        egw.stderr()
    );
    write(&dir, "c.yaml", settings(Some(&up)));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(1100, 2100)).unwrap();
    drop(conn);
    let expected: Vec<u64> = (0..1000).chain(1100..2100).collect();
    assert!(
        wait_until(EXIT, || all_of(&received).len() == expected.len()),
        "{} of {} lines arrived\n{}",
        all_of(&received).len(),
        expected.len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(
        all_of(&received),
        expected,
        "lost, repeated or out of order"
    );
}
