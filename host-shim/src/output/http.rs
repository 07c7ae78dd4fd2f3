//! The HTTP client behind `http` outputs: each batch is one `POST` of NDJSON, and counts as
//! delivered only when the peer answers 2xx.
//!
//! Anything else (a connection refused or reset, a timeout, a 429, a 5xx, any other status) is
//! a failed attempt: the delivery thread tries the same batch again with its backoff and jitter
//! ([`super::worker`]). A peer that took a batch but whose answer was lost gets it again, so an
//! HTTP output repeats lines but never loses one it was handed (until the delivery deadline).
//!
//! The client is `ureq` (blocking, so it runs on the output's own delivery thread with no
//! runtime of its own); its host name is resolved at each new connection, and a connection
//! is kept alive between batches.
//!
//! Once a reload replaced the output, a request that has gone [`STALL_GRACE`] without an
//! answer (counted from the replacement, or from its start if later) is cut by a watcher thread
//! (`ureq`'s `Agent::shutdown`, which interrupts a blocked read, write or TLS handshake): it
//! fails, and the replacement posts the batch again, as after a lost answer. So a peer that
//! stopped answering holds the hand-over about as long as a stalled socket output's, not
//! `request_timeout_secs`. A connection attempt takes at most [`CONNECT_TIMEOUT`] (a
//! shutdown does not interrupt one). A name lookup, which nothing interrupts either, runs on a
//! thread of its own ([`Resolving`]): the request stops waiting for it once the watcher cuts
//! the request (or its timeout passes), so a resolver that hangs holds the hand-over no
//! longer than a peer that does not answer.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::queue::{Deadline, STALL_GRACE};
use super::worker::{Sink, SinkError};
use crate::metrics::OutputHealth;

/// Most of an answer's body read (to keep the connection reusable) and quoted in messages.
const ANSWER_BYTES: u64 = 64 * 1024;

/// The shortest time left for a request once the delivery deadline nears.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(200);

/// How long a connection attempt may take (as a socket output's).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the watcher looks at a request in flight.
const WATCH_POLL: Duration = Duration::from_millis(50);

/// An HTTP output's client.
pub(crate) struct HttpSink {
    name: String,
    url: String,
    agent: ureq::Agent,
    request_timeout: Duration,
    stats: OutputHealth,
    /// The last attempt failed before any answer came (the peer was unreachable).
    unreachable: bool,
    /// Cuts a request a replaced output waits on too long; its thread is started with the
    /// first request.
    watch: Arc<Watch>,
    /// Whether starting the watcher's thread was tried (once: a failure is logged once).
    watch_tried: bool,
    /// Looks names up (the agent's, and the start-up probe's).
    lookup: Arc<dyn Resolver>,
}

/// The request in flight, as the watcher thread sees it.
#[derive(Debug, Default)]
struct Watch {
    state: Mutex<Watched>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Watched {
    /// The output's deadline and when the request started, while one is in flight.
    request: Option<(Deadline, Instant)>,
    /// The watcher cut the request in flight.
    cut: bool,
    /// The sink is gone: the watcher ends.
    closed: bool,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the watcher thread of `agent`'s requests.
    fn start(self: &Arc<Self>, agent: ureq::Agent) -> io::Result<()> {
        let watched = Arc::clone(self);
        std::thread::Builder::new()
            .name("egresswatch-http-watch".into())
            .spawn(move || watched.run(agent))?;
        Ok(())
    }

    /// Waits while no request is in flight; while one is, cuts it once the output was replaced
    /// and neither the request nor the replacement is younger than [`STALL_GRACE`].
    fn run(&self, agent: ureq::Agent) {
        let mut state = self.lock();
        // When the watcher first saw the output replaced.
        let mut replaced: Option<Instant> = None;
        loop {
            if state.closed {
                return;
            }
            let Some((deadline, started)) = state.request.clone() else {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            if deadline.replaced() {
                let since = (*replaced.get_or_insert_with(Instant::now)).max(started);
                if deadline.gives_up_stalled(since) {
                    state.cut = true;
                    state.request = None;
                    drop(state);
                    agent.shutdown();
                    return;
                }
            }
            state = self
                .changed
                .wait_timeout(state, WATCH_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A request starts (`Some`) or ends; returns whether the watcher cut the last one.
    fn request(&self, request: Option<(Deadline, Instant)>) -> bool {
        let mut state = self.lock();
        state.request = request;
        self.changed.notify_all();
        state.cut
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.watch.lock().closed = true;
        self.watch.changed.notify_all();
    }
}

/// The agent's name lookups: `lookup`'s (ureq's own resolver, in use), each on a thread of its
/// own, waited for until it answers, the request's time is up, or the watcher cut the request.
#[derive(Debug)]
struct Resolving {
    lookup: Arc<dyn Resolver>,
    watch: Arc<Watch>,
}

impl Resolver for Resolving {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (lookup, uri, config) = (Arc::clone(&self.lookup), uri.clone(), config.clone());
        let until = timeout.not_zero().map(|after| Instant::now() + *after);
        // (The lookup itself is not bounded: this wait is.)
        let looked_up = unless(
            move || lookup.resolve(&uri, &config, NextTimeout::default()),
            || self.watch.lock().cut || until.is_some_and(|until| Instant::now() >= until),
        )?;
        match looked_up {
            Some(addresses) => addresses,
            None if self.watch.lock().cut => Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the name lookup was given up: a reload replaced the output",
            ))),
            None => Err(ureq::Error::Timeout(timeout.reason)),
        }
    }
}

/// Runs `work` (a name lookup, which nothing interrupts) on a thread of its own and waits for
/// it until `give_up` (asked every [`WATCH_POLL`]) says to stop waiting: `None` then, the
/// thread left to end on its own.
fn unless<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    mut give_up: impl FnMut() -> bool,
) -> io::Result<Option<T>> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("egresswatch-lookup".into())
        .spawn(move || {
            let _ = tx.send(work());
        })?;
    loop {
        match rx.recv_timeout(WATCH_POLL) {
            Ok(done) => return Ok(Some(done)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the name lookup's thread ended"))
            }
            Err(RecvTimeoutError::Timeout) if give_up() => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

impl HttpSink {
    /// A sink POSTing to `url`, each request taking at most `request_timeout`; `tls` (for an
    /// `https://` URL) says which authorities to trust and which certificate to present.
    pub(crate) fn new(
        name: &str,
        url: &str,
        request_timeout: Duration,
        tls: Option<ureq::tls::TlsConfig>,
        stats: OutputHealth,
    ) -> Self {
        let lookup = DefaultResolver::default();
        HttpSink::looking_up(name, url, request_timeout, tls, stats, lookup)
    }

    /// [`HttpSink::new`], its names looked up by `lookup`.
    fn looking_up(
        name: &str,
        url: &str,
        request_timeout: Duration,
        tls: Option<ureq::tls::TlsConfig>,
        stats: OutputHealth,
        lookup: impl Resolver,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            .tls_config(tls.unwrap_or_default())
            // Statuses are judged here: anything but 2xx is a failed attempt.
            .http_status_as_error(false)
            // A redirect is not followed: a POST must not turn into something else.
            .max_redirects(0)
            .timeout_global(Some(request_timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build();
        let watch = Arc::new(Watch::default());
        let lookup: Arc<dyn Resolver> = Arc::new(lookup);
        let resolving = Resolving {
            lookup: Arc::clone(&lookup),
            watch: Arc::clone(&watch),
        };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolving);
        HttpSink {
            name: name.to_owned(),
            url: url.to_owned(),
            agent,
            request_timeout,
            stats,
            unreachable: false,
            watch,
            watch_tried: false,
            lookup,
        }
    }

    /// POSTs `data`; returns the answer's status and (the start of) its body, read so that
    /// the connection can carry the next batch.
    fn post(
        &self,
        data: &[u8],
        deadline: &Deadline,
    ) -> Result<(ureq::http::StatusCode, Vec<u8>), ureq::Error> {
        let mut answer = self
            .agent
            .post(&self.url)
            .header("content-type", "application/x-ndjson")
            .config()
            .timeout_global(Some(self.time_allowed(deadline)))
            .build()
            .send(data)?;
        let body = answer
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES)
            .read_to_vec()
            .unwrap_or_default();
        Ok((answer.status(), body))
    }

    /// How long the next request may take: the configured timeout, cut short by the deadline.
    fn time_allowed(&self, deadline: &Deadline) -> Duration {
        match deadline.at() {
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .clamp(MIN_REQUEST_TIME, self.request_timeout.max(MIN_REQUEST_TIME)),
            None => self.request_timeout,
        }
    }
}

impl Sink for HttpSink {
    fn deliver(&mut self, data: &[u8], deadline: &Deadline) -> Result<(), SinkError> {
        if !std::mem::replace(&mut self.watch_tried, true) {
            if let Err(e) = self.watch.start(self.agent.clone()) {
                tracing::warn!(output = %self.name, error = %e,
                    "cannot start the thread that cuts a request once a reload replaced the \
                     output; such a request may hold the hand-over up to request_timeout_secs");
            }
        }
        self.watch.request(Some((deadline.clone(), Instant::now())));
        let answered = self.post(data, deadline);
        let cut = self.watch.request(None);
        let (status, body) = match answered {
            Ok(answer) => answer,
            Err(_) if cut => {
                return Err(SinkError::Retry(format!(
                    "POST {}: no answer {} s after a reload replaced the output; the request \
                     was cut, and its replacement posts the batch again",
                    self.url,
                    STALL_GRACE.as_secs()
                )))
            }
            Err(e) => {
                self.unreachable = true;
                return Err(SinkError::Retry(format!("POST {}: {e}", self.url)));
            }
        };
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect();
            return Err(SinkError::Retry(format!(
                "POST {}: answered {status} {text}",
                self.url
            )));
        }
        if std::mem::take(&mut self.unreachable) {
            self.stats.reconnected();
            tracing::info!(output = %self.name, url = %self.url, "downstream answers again");
        }
        self.stats.set_up(true);
        Ok(())
    }

    fn probe(&mut self, deadline: &Deadline) {
        // Whether the peer listens, before the first batch (a request would need a batch).
        let Some(address) = authority(&self.url) else {
            return;
        };
        let Ok(uri) = self.url.parse::<ureq::http::Uri>() else {
            return;
        };
        let (lookup, config) = (Arc::clone(&self.lookup), self.agent.config().clone());
        // (Given up as a request is: [`STALL_GRACE`] after a reload replaced the output; or
        // at the deadline.)
        let mut replaced: Option<Instant> = None;
        let reachable = unless(
            move || lookup.resolve(&uri, &config, NextTimeout::default()),
            || {
                deadline.passed()
                    || deadline.replaced()
                        && deadline.gives_up_stalled(*replaced.get_or_insert_with(Instant::now))
            },
        )
        .and_then(|looked_up| {
            let given_up =
                || io::Error::new(io::ErrorKind::TimedOut, "the name lookup was given up");
            let addresses = looked_up.ok_or_else(given_up)?.map_err(io::Error::other)?;
            let addr = addresses.first().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name has no address")
            })?;
            std::net::TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        });
        match reachable {
            Ok(_) => self.stats.set_up(true),
            Err(e) => {
                self.stats.failed(format!("connecting to {address}: {e}"));
                tracing::warn!(output = %self.name, url = %self.url, error = %e,
                    "cannot reach downstream yet; its events will be held until it is up");
            }
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// `HOST:PORT` of an `http://` or `https://` URL (the port filled in when left out).
fn authority(url: &str) -> Option<String> {
    let (rest, port) = match url.split_once("://")? {
        ("http", rest) => (rest, 80),
        ("https", rest) => (rest, 443),
        _ => return None,
    };
    let host = rest.split(['/', '?', '#']).next()?;
    Some(if host.ends_with(']') || !host.contains(':') {
        format!("{host}:{port}")
    } else {
        host.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Serves one request on `listener`, answering `status`; returns the body received.
    fn answer_one(listener: &TcpListener, status: &str) -> Vec<u8> {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(conn);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        write!(
            reader.get_mut(),
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        body
    }

    #[test]
    fn a_batch_is_delivered_only_when_answered_2xx_and_failures_are_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        // A host name, resolved at each connection.
        let mut sink = HttpSink::new(
            "t",
            &format!("http://localhost:{port}/in"),
            Duration::from_secs(10),
            None,
            stats.clone(),
        );
        let none = Deadline::default();
        let server = std::thread::spawn(move || {
            let first = answer_one(&listener, "503 Service Unavailable");
            let second = answer_one(&listener, "429 Too Many Requests");
            let third = answer_one(&listener, "200 OK");
            (first, second, third, listener)
        });
        for expected in ["503", "429"] {
            match sink.deliver(b"a\nb\n", &none) {
                Err(SinkError::Retry(m)) => assert!(m.contains(expected), "{m}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
        sink.deliver(b"a\nb\n", &none).unwrap();
        let (first, second, third, listener) = server.join().unwrap();
        assert_eq!(
            [first, second, third],
            [b"a\nb\n".to_vec(), b"a\nb\n".to_vec(), b"a\nb\n".to_vec()]
        );
        // The peer goes away: a connection error, retryable; when it is back, it counts as a
        // reconnection.
        drop(listener);
        assert!(matches!(
            sink.deliver(b"c\n", &none),
            Err(SinkError::Retry(_))
        ));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let server = std::thread::spawn(move || answer_one(&listener, "204 No Content"));
        sink.deliver(b"c\n", &none).unwrap();
        assert_eq!(server.join().unwrap(), b"c\n");
        assert_eq!(stats.status().reconnects, 1);
    }

    #[test]
    fn a_replaced_outputs_request_that_the_peer_never_answers_is_cut_after_the_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        // Its own timeout is far off: only the reload may cut the request.
        let mut sink = HttpSink::new("t", &url, Duration::from_secs(60), None, stats);
        let (arrived, request_arrived) = std::sync::mpsc::channel();
        // The peer reads the request and never answers.
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            arrived.send(()).unwrap();
            reader
        });
        let deadline = Deadline::default();
        let replaced = deadline.clone();
        let client = std::thread::spawn(move || sink.deliver(b"a\n", &deadline));
        request_arrived.recv().unwrap();
        // A reload replaces the output while its request is in flight.
        replaced.set_replaced();
        match client.join().unwrap() {
            Err(SinkError::Retry(m)) => {
                assert!(m.contains("a reload replaced the output"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        drop(server.join().unwrap());
    }

    /// Looks names up as a resolver that no longer answers does: never (until the test ends).
    /// Says when a lookup starts.
    #[derive(Debug)]
    struct Hanging(Mutex<mpsc::Receiver<()>>, mpsc::Sender<()>);

    impl Resolver for Hanging {
        fn resolve(
            &self,
            _uri: &ureq::http::Uri,
            _config: &ureq::config::Config,
            _timeout: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            let _ = self.1.send(());
            let _ = self.0.lock().unwrap().recv();
            Err(ureq::Error::HostNotFound)
        }
    }

    /// A sink whose names are looked up by [`Hanging`], its requests given `timeout`; run by
    /// `run` on a thread of its own, with `deadline`. Once its lookup has started, the deadline
    /// is replaced when `replace` says so; returns what `run` returned (within 60 s, or panics)
    /// and how long after the lookup started (after the replacement, if any).
    fn hanging<T: Send + 'static>(
        timeout: Duration,
        deadline: Deadline,
        replace: bool,
        run: impl FnOnce(&mut HttpSink, &Deadline) -> T + Send + 'static,
    ) -> (T, Duration) {
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        let (release, hang) = mpsc::channel();
        let (started, lookup_started) = mpsc::channel();
        let lookup = Hanging(Mutex::new(hang), started);
        let url = "http://downstream.invalid/in";
        let mut sink = HttpSink::looking_up("t", url, timeout, None, stats, lookup);
        let replaced = deadline.clone();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(&mut sink, &deadline));
        });
        lookup_started
            .recv_timeout(Duration::from_secs(60))
            .unwrap();
        if replace {
            replaced.set_replaced();
        }
        let since = Instant::now();
        let Ok(got) = finished.recv_timeout(Duration::from_secs(60)) else {
            panic!("the name lookup held the output for 60 s");
        };
        drop(release);
        (got, since.elapsed())
    }

    #[test]
    fn a_replaced_outputs_request_whose_name_lookup_hangs_is_cut_after_the_grace() {
        // Its own timeout is far off: only the reload may cut the request.
        let deliver = |sink: &mut HttpSink, deadline: &Deadline| sink.deliver(b"a\n", deadline);
        match hanging(
            Duration::from_secs(3600),
            Deadline::default(),
            true,
            deliver,
        ) {
            (Err(SinkError::Retry(m)), after) => {
                assert!(m.contains("a reload replaced the output"), "{m}");
                // (Not before the grace: the watcher's rule, not the lookup's failure.)
                assert!(after >= STALL_GRACE - WATCH_POLL, "cut after {after:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_whose_name_lookup_hangs_fails_at_its_timeout() {
        let deliver = |sink: &mut HttpSink, deadline: &Deadline| sink.deliver(b"a\n", deadline);
        match hanging(Duration::from_secs(1), Deadline::default(), false, deliver) {
            (Err(SinkError::Retry(m)), _) => {
                assert!(m.contains("timeout"), "{m}");
                assert!(!m.contains("reload"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Probes, and says the output's figures then.
    fn probe(sink: &mut HttpSink, deadline: &Deadline) -> crate::metrics::OutputStatus {
        sink.probe(deadline);
        sink.stats.status()
    }

    #[test]
    fn a_probe_whose_name_lookup_hangs_gives_up_at_the_deadline() {
        // A stop signal with no time to finish: the deadline has passed.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let passed = Deadline::new(&stop, Duration::ZERO);
        let (status, _) = hanging(Duration::from_secs(3600), passed, false, probe);
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("the name lookup was given up"), "{error}");
    }

    #[test]
    fn a_replaced_outputs_probe_whose_name_lookup_hangs_gives_up_after_the_grace() {
        let (status, after) = hanging(Duration::from_secs(3600), Deadline::default(), true, probe);
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("the name lookup was given up"), "{error}");
        assert!(!status.up);
        assert!(
            after >= STALL_GRACE - WATCH_POLL,
            "given up after {after:?}"
        );
    }

    #[test]
    fn urls_give_their_host_and_port() {
        assert_eq!(authority("http://a:81/x").as_deref(), Some("a:81"));
        assert_eq!(authority("https://a/x").as_deref(), Some("a:443"));
        assert_eq!(authority("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(authority("ftp://a/"), None);
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use crate::config::{ClientTls, ServerTls};
    use crate::input::{http as input, Feed, Msg};

    /// A certificate authority, a server certificate for 127.0.0.1 and a client certificate,
    /// all made now, written as PEM into `dir`.
    fn certificates(dir: &Path) -> [PathBuf; 5] {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["sender.example".into()]);
        let files = [
            ("ca.pem", ca.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
        ];
        files.map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
    }

    #[test]
    fn https_round_trip_and_a_client_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("egresswatch-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let [ca, server_cert, server_key, client_cert, client_key] = certificates(&dir);
        let server_tls = ServerTls {
            cert_file: server_cert,
            key_file: server_key,
            client_ca_file: Some(ca.clone()),
        };
        let accept = crate::tls::server(&server_tls, Path::to_owned, "input.tls").unwrap();
        let (feed, rx) = Feed::channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let engine = {
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                for msg in rx {
                    if let Msg::Acked { data, ack } = msg {
                        received.lock().unwrap().push(data);
                        ack.delivered();
                    }
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let settings = input::Settings {
            address: "127.0.0.1:0".into(),
            max_connections: 4,
            max_body_bytes: 1 << 20,
            ack_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            tls: Some(accept),
            stats: Arc::default(),
        };
        let (server, address) = input::start(&settings, feed, &stop).unwrap();
        assert!(address.starts_with("https://127.0.0.1:"), "{address}");
        let url = format!("{address}/events");
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        let none = Deadline::default();
        let client = |cert: bool| {
            let tls = ClientTls {
                ca_file: Some(ca.clone()),
                cert_file: cert.then(|| client_cert.clone()),
                key_file: cert.then(|| client_key.clone()),
                server_name: None,
            };
            let tls = crate::tls::client(&tls, Path::to_owned, "outputs.t.tls").unwrap();
            HttpSink::new("t", &url, Duration::from_secs(10), Some(tls), stats.clone())
        };
        // With its certificate: delivered, through TLS, to the input and acknowledged.
        client(true).deliver(b"one\ntwo\n", &none).unwrap();
        assert_eq!(*received.lock().unwrap(), vec![b"one\ntwo\n".to_vec()]);
        // Without one: refused in the handshake; nothing reaches the engine.
        match client(false).deliver(b"three\n", &none) {
            Err(SinkError::Retry(m)) => assert!(m.contains("POST"), "{m}"),
            other => panic!("a client without a certificate got through: {other:?}"),
        }
        // Plain HTTP to the TLS port gets nowhere either.
        let mut plain = HttpSink::new(
            "t",
            &url.replace("https", "http"),
            Duration::from_secs(5),
            None,
            stats.clone(),
        );
        assert!(plain.deliver(b"four\n", &none).is_err());
        assert_eq!(received.lock().unwrap().len(), 1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(server);
        engine.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
