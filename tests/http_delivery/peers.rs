//! The peers of the HTTP delivery tests: a downstream standing in for Vector's `http_server`
//! source that breaks connections on cue, one that restarts as Fluent Bit does, and a sender
//! that retries as Vector's `http` sink does.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{close_with_reset, free_address, listen_again, stop_listening, timed_out};

/// One HTTP/1.1 message read from `reader`: the first line, and the body (by
/// `content-length`). `None` at a clean end of the connection or on an error.
pub(crate) fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut first = String::new();
    loop {
        match reader.read_line(&mut first) {
            Ok(0) => return None,
            Ok(_) if first.trim().is_empty() => first.clear(),
            Ok(_) => break,
            Err(e) if timed_out(&e) => {
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
            Err(e) if timed_out(&e) => continue,
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
            Err(e) if timed_out(&e) => {}
            Err(_) => return None,
        }
    }
    Some((first.trim_end().to_owned(), body))
}

/// The numbers `{"n":N}` of an NDJSON body.
pub(crate) fn numbers(body: &[u8]) -> Vec<u64> {
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
pub(crate) enum Break {
    /// Sends RST.
    Reset,
    /// Closes the connection.
    Close,
    /// Closes it, stops listening for a while, then listens again on the same port.
    Down(Duration),
}

/// What the downstream has seen.
#[derive(Default)]
pub(crate) struct Seen {
    /// The lines of the requests it answered 200, per connection, in arrival order.
    pub(crate) connections: Vec<Vec<u64>>,
    /// Requests read so far, answered or not.
    requests: u64,
    /// Requests read and then left unanswered (the connection broken instead).
    pub(crate) broken: u64,
    /// The lines of those requests: received, but the sender was not told so.
    pub(crate) unanswered: Vec<u64>,
}

/// A small HTTP server standing in for Vector's `http_server` source with acknowledgements:
/// it answers 200 to each POST once it has its lines, except that request number `at` of each
/// `(at, Break)` is read and then its connection broken instead.
pub(crate) struct Downstream {
    pub(crate) address: String,
    pub(crate) seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Downstream {
    /// A downstream on a port of its own. (By number, not port 0: a break that takes it down
    /// keeps the port, [`stop_listening`].)
    pub(crate) fn start(breaks: Vec<(u64, Break)>) -> Downstream {
        Downstream::start_on(&free_address(), breaks)
    }

    pub(crate) fn start_on(address: &str, breaks: Vec<(u64, Break)>) -> Downstream {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let breaks = Arc::new(Mutex::new(breaks));
        let down: Arc<Mutex<Option<Duration>>> = Arc::default();
        let acceptor = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                listener.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pause) = down.lock().unwrap().take() {
                        // (Its port kept: nothing else can take it meanwhile.)
                        stop_listening(&listener);
                        std::thread::sleep(pause);
                        listen_again(&listener);
                    }
                    match listener.accept() {
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

    pub(crate) fn stop(&mut self) {
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
        match this_break {
            None => {
                let answered = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n",
                );
                if answered.is_err() {
                    return;
                }
            }
            Some(Break::Reset) => {
                close_with_reset(reader.into_inner());
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
pub(crate) struct Sender {
    address: String,
    conn: Option<BufReader<TcpStream>>,
    pub(crate) failures: u64,
}

impl Sender {
    pub(crate) fn new(address: &str) -> Sender {
        Sender {
            address: address.to_owned(),
            conn: None,
            failures: 0,
        }
    }

    /// One attempt: the status, or `None` when the connection failed.
    pub(crate) fn post(&mut self, body: &[u8]) -> Option<u16> {
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
    pub(crate) fn deliver(&mut self, body: &[u8], limit: Duration) {
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

pub(crate) fn numbered(range: std::ops::Range<u64>) -> Vec<u8> {
    let mut data = Vec::new();
    for n in range {
        writeln!(data, "{{\"n\":{n}}}").unwrap();
    }
    data
}

/// A downstream that restarts the way Fluent Bit does on SIGTERM: after `pause_after` lines it
/// stops using what it receives but keeps its listener and connections open, reading and
/// discarding everything for `pause` (a socket sender's writes still succeed; an HTTP request
/// gets no answer); then it closes everything, is down briefly, and comes back working. Speaks
/// NDJSON over TCP, or HTTP (answering 200 to what it keeps). Returns the lines it kept, once
/// line `last` arrived or nothing came for 20 s.
pub(crate) fn restarting_downstream(
    listener: TcpListener,
    http: bool,
    pause_after: usize,
    pause: Duration,
    last: u64,
) -> std::thread::JoinHandle<BTreeSet<u64>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut peers: Vec<(BufReader<TcpStream>, Vec<u8>)> = Vec::new();
        let mut kept = BTreeSet::new();
        let mut paused_at: Option<Instant> = None;
        let mut restarted = false;
        let mut quiet_since = Instant::now();
        let mut chunk = vec![0u8; 64 * 1024];
        while !kept.contains(&last) && quiet_since.elapsed() < Duration::from_secs(20) {
            while let Ok((conn, _)) = listener.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(5)))
                    .unwrap();
                peers.push((BufReader::new(conn), Vec::new()));
            }
            if !restarted && paused_at.is_some_and(|at| at.elapsed() >= pause) {
                // The restart: everything closes, nobody listens for a moment (the port kept,
                // so that nothing else takes it meanwhile).
                restarted = true;
                peers.clear();
                stop_listening(&listener);
                std::thread::sleep(Duration::from_millis(300));
                listen_again(&listener);
                continue;
            }
            let paused = paused_at.is_some() && !restarted;
            peers.retain_mut(|(reader, partial)| {
                if paused {
                    // Read and throw away.
                    return match reader.read(&mut chunk) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => timed_out(&e),
                    };
                }
                let got = if http {
                    match read_message(reader) {
                        None => return false,
                        Some((first, _)) if first.is_empty() => return true,
                        Some((_, body)) => {
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if reader.get_mut().write_all(answer).is_err() {
                                return false;
                            }
                            numbers(&body)
                        }
                    }
                } else {
                    match reader.read(&mut chunk) {
                        Ok(0) => return false,
                        Ok(n) => {
                            partial.extend_from_slice(&chunk[..n]);
                            let end = partial
                                .iter()
                                .rposition(|&b| b == b'\n')
                                .map_or(0, |p| p + 1);
                            numbers(&partial.drain(..end).collect::<Vec<u8>>())
                        }
                        Err(e) => return timed_out(&e),
                    }
                };
                if !got.is_empty() {
                    quiet_since = Instant::now();
                }
                kept.extend(got);
                true
            });
            if paused_at.is_none() && kept.len() >= pause_after {
                paused_at = Some(Instant::now());
            }
            if peers.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        kept
    })
}
