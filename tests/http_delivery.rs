//! Acknowledged delivery over HTTP (issue #11): the HTTP input answers 200 only once every line
//! of a request reached the outputs, and the HTTP output counts a batch delivered only on a 2xx,
//! so a sender that retries loses nothing while the downstream resets, closes and goes away.
//! Loopback only, ports picked by binding port 0, every wait bounded.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{free_address, temp_dir, wait_until, workspace, write, Running};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 message read from `reader`: the first line, and the body (by
/// `content-length`). `None` at a clean end of the connection or on an error.
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut first = String::new();
    loop {
        match reader.read_line(&mut first) {
            Ok(0) => return None,
            Ok(_) if first.trim().is_empty() => first.clear(),
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !first.is_empty() {
                    continue;
                }
                return Some((String::new(), Vec::new()));
            }
            Err(_) => return None,
        }
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return None,
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    let mut got = 0;
    while got < length {
        match reader.read(&mut body[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    Some((first.trim_end().to_owned(), body))
}

/// The numbers `{"n":N}` of an NDJSON body.
fn numbers(body: &[u8]) -> Vec<u64> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).expect("a JSON line");
            v["n"].as_u64().expect("a numbered line")
        })
        .collect()
}

/// How the downstream breaks a connection, after reading a request and before answering it.
#[derive(Debug, Clone, Copy)]
enum Break {
    /// Sends RST.
    Reset,
    /// Closes the connection.
    Close,
    /// Closes it, stops listening for a while, then listens again on the same port.
    Down(Duration),
}

/// What the downstream has seen.
#[derive(Default)]
struct Seen {
    /// The lines of the requests it answered 200, per connection, in arrival order.
    connections: Vec<Vec<u64>>,
    /// Requests read so far, answered or not.
    requests: u64,
    /// Requests read and then left unanswered (the connection broken instead).
    broken: u64,
    /// The lines of those requests: received, but the sender was not told so.
    unanswered: Vec<u64>,
}

/// A small HTTP server standing in for Vector's `http_server` source with acknowledgements:
/// it answers 200 to each POST once it has its lines, except that request number `at` of each
/// `(at, Break)` is read and then its connection broken instead.
struct Downstream {
    address: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Downstream {
    fn start(breaks: Vec<(u64, Break)>) -> Downstream {
        Downstream::start_on("127.0.0.1:0", breaks)
    }

    fn start_on(address: &str, breaks: Vec<(u64, Break)>) -> Downstream {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let breaks = Arc::new(Mutex::new(breaks));
        let down: Arc<Mutex<Option<Duration>>> = Arc::default();
        let acceptor = {
            let (address, seen, stop) = (address.clone(), Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut listener = Some(listener);
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pause) = down.lock().unwrap().take() {
                        drop(listener.take());
                        std::thread::sleep(pause);
                        listener = Some(TcpListener::bind(&address).unwrap());
                    }
                    let l = listener.as_ref().unwrap();
                    l.set_nonblocking(true).unwrap();
                    match l.accept() {
                        Ok((conn, _)) => {
                            let index = {
                                let mut s = seen.lock().unwrap();
                                s.connections.push(Vec::new());
                                s.connections.len() - 1
                            };
                            let (seen, stop, breaks, down) = (
                                Arc::clone(&seen),
                                Arc::clone(&stop),
                                Arc::clone(&breaks),
                                Arc::clone(&down),
                            );
                            std::thread::spawn(move || {
                                serve(conn, index, &seen, &stop, &breaks, &down)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Downstream {
            address,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves one downstream connection.
fn serve(
    conn: TcpStream,
    index: usize,
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
    breaks: &Mutex<Vec<(u64, Break)>>,
    down: &Mutex<Option<Duration>>,
) {
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = BufReader::new(conn);
    while !stop.load(Ordering::Relaxed) {
        let Some((first, body)) = read_message(&mut reader) else {
            return;
        };
        if first.is_empty() {
            continue; // nothing yet
        }
        let this_break = {
            let mut s = seen.lock().unwrap();
            s.requests += 1;
            let number = s.requests;
            let mut breaks = breaks.lock().unwrap();
            let found = breaks.iter().position(|(at, _)| *at == number);
            match found {
                Some(i) => {
                    s.broken += 1;
                    s.unanswered.extend(numbers(&body));
                    Some(breaks.remove(i).1)
                }
                None => {
                    s.connections[index].extend(numbers(&body));
                    None
                }
            }
        };
        let conn = reader.get_mut();
        match this_break {
            None => {
                let answered = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n",
                );
                if answered.is_err() {
                    return;
                }
            }
            Some(Break::Reset) => {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: SO_LINGER takes a `linger` struct of this size; the socket is open.
                let r = unsafe {
                    libc::setsockopt(
                        conn.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        std::ptr::from_ref(&linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                assert_eq!(r, 0);
                return;
            }
            Some(Break::Close) => return,
            Some(Break::Down(pause)) => {
                *down.lock().unwrap() = Some(pause);
                return;
            }
        }
    }
}

/// A sender that behaves like Vector's `http` sink: POSTs each batch, and sends it again
/// (after a short pause, on a new connection when the old one failed) until answered 200.
/// Returns how many attempts were not answered 200.
struct Sender {
    address: String,
    conn: Option<BufReader<TcpStream>>,
    failures: u64,
}

impl Sender {
    fn new(address: &str) -> Sender {
        Sender {
            address: address.to_owned(),
            conn: None,
            failures: 0,
        }
    }

    /// One attempt: the status, or `None` when the connection failed.
    fn post(&mut self, body: &[u8]) -> Option<u16> {
        if self.conn.is_none() {
            let conn = TcpStream::connect(&self.address).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
            self.conn = Some(BufReader::new(conn));
        }
        let reader = self.conn.as_mut()?;
        let head = format!(
            "POST / HTTP/1.1\r\nhost: egresswatch\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let sent = reader
            .get_mut()
            .write_all(head.as_bytes())
            .and_then(|()| reader.get_mut().write_all(body));
        let status = sent
            .ok()
            .and_then(|()| read_message(reader))
            .and_then(|(first, _)| first.split(' ').nth(1)?.parse().ok());
        if status.is_none() {
            self.conn = None;
        }
        status
    }

    /// Sends `body` until it is answered 200, for at most `limit`.
    fn deliver(&mut self, body: &[u8], limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            if self.post(body) == Some(200) {
                return;
            }
            self.failures += 1;
            assert!(
                Instant::now() < until,
                "a request was not acknowledged in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn numbered(range: std::ops::Range<u64>) -> Vec<u8> {
    let mut data = Vec::new();
    for n in range {
        writeln!(data, "{{\"n\":{n}}}").unwrap();
    }
    data
}

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
fn a_request_is_answered_200_only_once_delivered_503_when_it_is_not_in_time_429_when_dropped() {
    let dir = temp_dir("http-ack");
    // The downstream is down at first.
    let down = free_address();
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
    // The buffer is full: the third batch is dropped (drop_newest) and its sender told so.
    assert_eq!(
        Sender::new(&input).post(&batches[2]),
        Some(429),
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
    // The downstream comes up: the held batch goes out, and the senders' retries are
    // answered 200 once their lines are delivered.
    let mut downstream = Downstream::start_on(&down, Vec::new());
    let mut sender = Sender::new(&input);
    for batch in &batches {
        sender.deliver(batch, Duration::from_secs(30));
    }
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    downstream.stop();
    assert!(status.success(), "{err}");
    let seen = downstream.seen.lock().unwrap();
    let (_, distinct) = check_order(&seen.connections);
    assert_eq!(distinct, (0..600).collect::<BTreeSet<u64>>(), "{err}");
}
