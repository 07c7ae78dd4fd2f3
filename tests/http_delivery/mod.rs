//! Acknowledged delivery over HTTP (issue #11): the HTTP input answers 200 only once every line
//! of a request reached the outputs, and the HTTP output counts a batch delivered only on a 2xx,
//! so a sender that retries loses nothing while the downstream resets, closes and goes away.
//! Loopback only, ports picked by binding port 0, every wait bounded.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod peers;

use peers::{numbered, numbers, restarting_downstream, Break, Downstream, Sender};

use crate::util::{
    free_address, refusing_address, temp_dir, wait_until, workspace, write, Running,
};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(60);

/// Starts `egresswatch run` with an HTTP input and `default` an HTTP output to `url`; `input`
/// and `output` add settings to each (`, key: value`).
fn start(dir: &std::path::Path, url: &str, input: &str, output: &str) -> (Running, String) {
    let address = free_address();
    let config = write(
        dir,
        "c.yaml",
        format!(
            "input: {{ type: http, address: '{address}'{input} }}\n\
             outputs:\n  default: {{ type: http, url: '{url}'{output} }}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    let egw = Running::start(dir, &config);
    assert!(
        wait_until(STARTUP, || TcpStream::connect(&address).is_ok()),
        "egresswatch did not listen on {address}:\n{}",
        egw.stderr()
    );
    (egw, address)
}

/// Checks that each downstream connection received lines it had not received before in
/// increasing order (a batch sent again after a break arrives again, on a later connection).
/// Returns every line received and how many distinct ones.
fn check_order(connections: &[Vec<u64>]) -> (usize, BTreeSet<u64>) {
    let mut distinct = BTreeSet::new();
    let mut all = 0;
    for (i, lines) in connections.iter().enumerate() {
        let mut highest_new = None;
        for &n in lines {
            all += 1;
            if distinct.insert(n) {
                assert!(
                    highest_new.is_none_or(|h| n > h),
                    "connection {i}: line {n} arrived after {highest_new:?}, out of order"
                );
                highest_new = Some(n);
            }
        }
    }
    (all, distinct)
}

#[test]
fn http_in_and_out_lose_nothing_while_the_downstream_resets_closes_and_goes_away() {
    const TOTAL: u64 = 300_000;
    const PER_REQUEST: u64 = 2_000;
    let dir = temp_dir("http-chaos");
    // Five breaks spread over the run's 150 downstream requests (one per upstream request).
    let breaks = vec![
        (20, Break::Reset),
        (45, Break::Close),
        (70, Break::Down(Duration::from_secs(2))),
        (95, Break::Reset),
        (120, Break::Close),
    ];
    let break_count = breaks.len() as u64;
    let mut downstream = Downstream::start(breaks);
    let (mut egw, input) = start(&dir, &format!("http://{}/in", downstream.address), "", "");
    let mut sender = Sender::new(&input);
    let started = Instant::now();
    for first in (0..TOTAL).step_by(PER_REQUEST as usize) {
        sender.deliver(
            &numbered(first..first + PER_REQUEST),
            Duration::from_secs(60),
        );
    }
    // Every request was answered 200: its lines are downstream already.
    let elapsed = started.elapsed();
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    downstream.stop();
    let seen = downstream.seen.lock().unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(seen.broken, break_count, "every break happened\n{err}");
    let (all, distinct) = check_order(&seen.connections);
    let lost: Vec<u64> = (0..TOTAL)
        .filter(|n| !distinct.contains(n))
        .take(10)
        .collect();
    assert!(lost.is_empty(), "lines lost, the first: {lost:?}\n{err}");
    assert_eq!(distinct.len() as u64, TOTAL);
    // Received more than once: in a request the downstream read but did not answer (so it
    // was sent again), or answered twice.
    let repeats = all - distinct.len() + seen.unanswered.len();
    eprintln!(
        "http in -> http out, {break_count} downstream breaks: 0 lost, {repeats} repeated \
         ({} in unanswered requests), {} sender retries, {} downstream connections, {elapsed:.1?}",
        seen.unanswered.len(),
        sender.failures,
        seen.connections.len()
    );
    assert!(
        err.contains(&format!("reconnects={break_count}")),
        "the exit summary counts the returns after the peer was unreachable\n{err}"
    );
}

#[test]
fn a_request_is_answered_200_once_delivered_or_dropped_by_policy_and_503_when_not_in_time() {
    let dir = temp_dir("http-ack");
    // The downstream is down at first (refusing, its port held until it starts).
    let (down, refusing) = refusing_address();
    let (mut egw, input) = start(
        &dir,
        &format!("http://{down}/in"),
        ", ack_timeout_secs: 1",
        ", buffer: { max_bytes: 1024, when_full: drop_newest }",
    );
    let batches: Vec<Vec<u8>> = (0..3).map(|i| numbered(i * 200..(i + 1) * 200)).collect();
    // The first two wait for their lines (one batch in the output's hands, one in its buffer),
    // then are told they were not delivered in time.
    let waiting: Vec<_> = batches[..2]
        .iter()
        .map(|batch| {
            let (input, batch) = (input.clone(), batch.clone());
            let waiter = std::thread::spawn(move || {
                let started = Instant::now();
                let status = Sender::new(&input).post(&batch);
                (status, started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(300));
            waiter
        })
        .collect();
    // The buffer is full: the third batch is dropped (drop_newest: a best-effort output by its
    // policy), and its sender is answered at once with 200 rather than held up or told to
    // resend (which would stall a feed behind one best-effort route).
    assert_eq!(
        Sender::new(&input).post(&batches[2]),
        Some(200),
        "{}",
        egw.stderr()
    );

    for waiter in waiting {
        let (status, waited) = waiter.join().unwrap();
        assert_eq!(status, Some(503), "{}", egw.stderr());
        assert!(
            waited >= Duration::from_millis(900),
            "answered after {waited:?}"
        );
    }
    // The downstream comes up: the two held batches go out; then the senders told 503 send
    // theirs again and are answered 200 once delivered. The dropped batch's sender was told
    // 200: its lines are gone from this best-effort output, and counted.
    drop(refusing);
    let mut downstream = Downstream::start_on(&down, Vec::new());
    let held: BTreeSet<u64> = (0..400).collect();
    let until = Instant::now() + Duration::from_secs(30);
    while check_order(&downstream.seen.lock().unwrap().connections).1 != held {
        assert!(Instant::now() < until, "the held batches never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sender = Sender::new(&input);
    for batch in &batches[..2] {
        sender.deliver(batch, Duration::from_secs(30));
    }
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    downstream.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("dropped=200"), "the drop is counted\n{err}");
    let seen = downstream.seen.lock().unwrap();
    let (_, distinct) = check_order(&seen.connections);
    assert_eq!(distinct, held, "{err}");
}

/// Sends `total` numbered lines to egresswatch's TCP input, paced (100 lines every 20 ms), with
/// the output given by `output` to a downstream that restarts as Fluent Bit does; returns how
/// many lines the downstream kept, and egresswatch's standard error after a clean stop.
fn through_a_restarting_downstream(name: &str, http: bool, total: u64) -> (usize, String) {
    let dir = temp_dir(name);
    // (By number: the restart keeps the port, `stop_listening`.)
    let listener = TcpListener::bind(free_address()).unwrap();
    let down = listener.local_addr().unwrap();
    let output = if http {
        format!("{{ type: http, url: 'http://{down}/', request_timeout_secs: 1 }}")
    } else {
        format!("{{ type: tcp, address: '{down}' }}")
    };
    let collector = restarting_downstream(listener, http, 500, Duration::from_secs(1), total - 1);
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs:\n  default: {output}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = None;
    assert!(
        wait_until(STARTUP, || {
            conn = TcpStream::connect(&input).ok();
            conn.is_some()
        }),
        "egresswatch did not listen"
    );
    let mut conn = conn.unwrap();
    for first in (0..total).step_by(100) {
        conn.write_all(&numbered(first..(first + 100).min(total)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    let kept = collector.join().unwrap();
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    (kept.len(), err)
}

#[test]
fn a_downstream_that_restarts_like_fluent_bit_loses_lines_over_tcp_and_none_over_http() {
    const TOTAL: u64 = 6_000;
    let (tcp_kept, tcp_err) = through_a_restarting_downstream("restart-tcp", false, TOTAL);
    let (http_kept, http_err) = through_a_restarting_downstream("restart-http", true, TOTAL);
    eprintln!(
        "downstream restarting as Fluent Bit does: tcp output lost {} of {TOTAL} lines (exit 0, \
         no error), http output lost {}",
        TOTAL as usize - tcp_kept,
        TOTAL as usize - http_kept
    );
    // What a socket output cannot know: the peer took the bytes and threw them away. The run
    // ends well all the same: this is the loss the delivery table documents.
    assert!(
        tcp_kept < TOTAL as usize,
        "the discarding peer took lines over TCP and they were not lost?\n{tcp_err}"
    );
    // The acknowledged transport holds them until a 2xx, and sends them again.
    assert_eq!(http_kept, TOTAL as usize, "{http_err}");
}

#[test]
fn a_sender_that_does_not_retry_is_never_told_200_for_lines_lost_in_a_restart() {
    // Vector's `socket` sink does not retry: what egresswatch had not read when it stopped is
    // gone, and the sender is not told. Over HTTP every request gets an answer or an error, so
    // a sender that does not retry still knows exactly what was not delivered.
    let dir = temp_dir("http-no-retry");
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: http, address: '{input}' }}\n\
             outputs:\n  default: {{ type: file, path: out.ndjson }}\n\
             detector:\n  rules: ['{}']\n",
            workspace().join("rules").display()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(wait_until(STARTUP, || TcpStream::connect(&input).is_ok()));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (input, answered) = (input.clone(), Arc::clone(&answered));
        std::thread::spawn(move || {
            let mut sender = Sender::new(&input);
            for i in 0..2_000u64 {
                let status = sender.post(&numbered(i * 500..(i + 1) * 500));
                answered.lock().unwrap().push(status);
                if status.is_none() && TcpStream::connect(&input).is_err() {
                    break; // egresswatch is gone
                }
            }
        })
    };
    assert!(wait_until(STARTUP, || answered.lock().unwrap().len() >= 20));
    egw.terminate();
    let status = egw.wait(EXIT);
    sender.join().unwrap();
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    let answered = answered.lock().unwrap();
    let out = std::fs::read(dir.join("out.ndjson")).unwrap();
    let delivered: BTreeSet<u64> = numbers(&out).into_iter().collect();
    let mut told_200 = 0;
    for (i, status) in answered.iter().enumerate() {
        if *status == Some(200) {
            told_200 += 1;
            let i = i as u64;
            assert!(
                (i * 500..(i + 1) * 500).all(|n| delivered.contains(&n)),
                "request {i} was answered 200 but its lines are not all in the output\n{err}"
            );
        }
    }
    let not_200 = answered.len() - told_200;
    eprintln!(
        "http input stopped under a sender that does not retry: {told_200} requests answered 200 \
         and delivered, {not_200} answered otherwise (the sender knows them undelivered)"
    );
    assert!(told_200 >= 20);
    assert!(not_200 >= 1, "the sender noticed the stop");
}
