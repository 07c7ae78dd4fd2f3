//! TCP and Unix listeners that feed the engine.
//!
//! A listener thread accepts connections and starts a reader thread per connection, which reads
//! with a short timeout so that it notices a stop signal, and sends its lines into the engine's
//! bounded [`Feed`]. A connection that opens and closes without data (Vector's health check) is
//! simply finished; one that sends nothing for `idle_timeout_secs` is closed. At
//! `max_connections` open connections, a new one is accepted and closed at once (a TCP reset,
//! so that its sender sees the refusal rather than writing into a connection nobody reads),
//! logged (the first at once, then a count every 10 s) and counted. On a stop signal the
//! listener stops accepting and each reader drains its connection (see [`super::lines`]) and
//! hands over what it has read, including an unterminated last line.
//!
//! A TCP listener with `tls` serves TLS ([`crate::tls::ServerStream`]): the handshake happens in
//! the connection's reader thread, so a slow or hostile client holds only its own connection
//! slot (closed at `idle_timeout_secs` like a silent one); a client refused in the handshake (no
//! certificate from `client_ca_file`, a plain-text sender) is logged and counted, and nothing
//! it sent reaches the engine.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use egresswatch_plugin_api::files::describe_type;

use super::lane::{Lane, Lanes};
use super::lines::{Ended, Shared};
use super::{read_lines, Feed, HoldBudget, Mode, OVERSIZE_HOLD_BYTES};
use crate::config::InputConfig;
use crate::output::Deadline;
use crate::tls::{ServerStream, HANDSHAKE_LIMIT};

/// How long a connection's reader waits for data before checking the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// How often the listener looks for new connections (and the stop flag).
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How often refused connections are logged (the first at once, then a count this often).
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of an input listener, for metrics.
#[derive(Debug, Default)]
pub(crate) struct InputStats {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections accepted so far (and read).
    pub(crate) total: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub(crate) refused: AtomicU64,
    /// Connections closed because their TLS handshake failed.
    pub(crate) tls_failed: AtomicU64,
    /// Reader threads running (connections, or standard input).
    pub(crate) readers: AtomicUsize,
    /// Lines read that the engine did not take (it stopped at the shutdown deadline).
    pub(crate) undelivered: AtomicU64,
    /// Lines the ordering stage let go after waiting `order_window_ms` for a quiet connection
    /// with older events.
    pub(crate) order_early: AtomicU64,
    /// HTTP input: requests answered, by status.
    http_answers: Mutex<BTreeMap<u16, u64>>,
}

impl InputStats {
    /// Counts a request answered with `status` (the HTTP input).
    pub(crate) fn answered(&self, status: u16) {
        let mut answers = self.http_answers.lock().unwrap_or_else(|e| e.into_inner());
        *answers.entry(status).or_default() += 1;
    }

    /// Requests answered so far, by status (the HTTP input; empty for the others).
    pub(crate) fn answers(&self) -> Vec<(u16, u64)> {
        let answers = self.http_answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.iter().map(|(&s, &n)| (s, n)).collect()
    }
}

/// A bound listener.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixInput),
}

/// Binds a TCP listener, naming the config field on failure.
fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("input.address: cannot listen on {address}: {e}"),
        )
    })
}

/// A bound Unix socket listener and the identity of the socket file it created, so that only
/// that file is removed when the input stops.
pub(crate) struct UnixInput {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file as bound.
    id: Option<(u64, u64)>,
}

/// Binds a Unix listener at `path`. A socket file nobody listens on (left by a crash) is
/// removed first; anything else at that path (a regular file, a folder, a symlink, a FIFO, or a
/// socket someone listens on) is an error, and is left alone.
fn bind_unix(path: &Path) -> io::Result<UnixInput> {
    let field = |e: io::Error, what: &str| {
        io::Error::new(
            e.kind(),
            format!("input.path: cannot {what} {}: {e}", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "input.path: another process is listening on {}",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| field(e, "remove stale socket"))?;
            }
            Err(e) => return Err(field(e, "check the existing socket")),
        },
        Ok(meta) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                "input.path: {} exists and is {}, not a socket; egresswatch does not replace it",
                path.display(),
                describe_type(&meta.file_type())
            ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(field(e, "inspect")),
    }
    let listener = UnixListener::bind(path).map_err(|e| field(e, "listen on"))?;
    let id = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok(UnixInput {
        listener,
        path: path.to_owned(),
        id,
    })
}

impl UnixInput {
    /// Removes the socket file if it is still the one this listener created.
    fn remove_socket_file(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        } else {
            tracing::warn!(path = %self.path.display(),
                "input.path no longer holds the socket egresswatch created; left in place");
        }
    }
}

impl Listener {
    /// Binds the listener a `tcp` or `unix` input describes (relative paths against
    /// `base_dir`); `None` for standard input (and the HTTP input, which is not a socket
    /// listener of this kind).
    pub(super) fn bind(config: &InputConfig, base_dir: &Path) -> io::Result<Option<Listener>> {
        Ok(match config {
            InputConfig::Stdin | InputConfig::Http { .. } => None,
            InputConfig::Tcp { address, .. } => Some(Listener::Tcp(bind_tcp(address)?)),
            InputConfig::Unix { path, .. } => {
                Some(Listener::Unix(bind_unix(&base_dir.join(path))?))
            }
        })
    }

    /// Where it listens: `tcp://127.0.0.1:9000` (`tcp+tls://` with `tls`),
    /// `unix:///run/in.sock`.
    pub(super) fn describe(&self, tls: bool) -> String {
        let scheme = if tls { "tcp+tls" } else { "tcp" };
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(address) => format!("{scheme}://{address}"),
                Err(_) => format!("{scheme}://?"),
            },
            Listener::Unix(u) => format!("unix://{}", u.path.display()),
        }
    }
}

/// How a listener serves its connections.
pub(super) struct Settings {
    /// `batch.max_line_bytes`.
    pub(super) max_line_bytes: usize,
    /// `input.max_connections`.
    pub(super) max_connections: usize,
    /// `input.idle_timeout_secs`.
    pub(super) idle_timeout: Duration,
    /// `input.tls`, for TCP.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

/// A connection just accepted.
enum Accepted {
    Tcp(TcpStream, String),
    Unix(UnixStream),
}

impl Accepted {
    /// Closes it at once, unread; a TCP connection with a reset, so that its sender's next
    /// write or read fails instead of its data vanishing.
    fn refuse(self) {
        if let Accepted::Tcp(stream, _) = &self {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }

    /// A blocking reader with a read timeout (TLS over it when `tls` is set, its handshake
    /// limited to [`HANDSHAKE_LIMIT`]; a shorter `idle_timeout_secs` closes it first), and who
    /// it is.
    fn into_reader(
        self,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> io::Result<(Connection, String)> {
        Ok(match self {
            Accepted::Tcp(s, peer) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                match tls {
                    None => (Box::new(s), peer),
                    Some(config) => {
                        // The handshake writes too: a client that does not read holds its
                        // reader no longer than one that does not write.
                        s.set_write_timeout(Some(READ_TIMEOUT))?;
                        let stream = ServerStream::new(Arc::clone(config), s, HANDSHAKE_LIMIT)?;
                        (Box::new(stream), peer)
                    }
                }
            }
            Accepted::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                (Box::new(s), "unix socket".to_owned())
            }
        })
    }
}

/// Counts refused connections and logs them, rate-limited.
struct Refusals {
    /// When refusals were last logged, and how many since.
    logged: Option<(Instant, u64)>,
}

impl Refusals {
    fn note(&mut self, stats: &InputStats, max_connections: usize) {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        match &mut self.logged {
            None => {
                tracing::warn!(
                    max_connections,
                    "input: a connection was refused: max_connections are open (refusals are \
                     counted in egresswatch_input_connections_refused_total)"
                );
                self.logged = Some((Instant::now(), 0));
            }
            Some((at, n)) => {
                *n += 1;
                if at.elapsed() >= REFUSED_LOG_EVERY {
                    tracing::warn!(
                        refused = *n,
                        max_connections,
                        "input: connections refused since the last report: max_connections are open"
                    );
                    self.logged = Some((Instant::now(), 0));
                }
            }
        }
    }
}

/// A running listener thread, as a reload sees it.
pub(crate) struct Handle {
    /// Stops its accepting.
    retired: Arc<AtomicBool>,
    /// Whether its socket goes to the listener that replaces it (the same address or path).
    hand_over: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<(Option<Listener>, Feed)>>,
}

impl Handle {
    /// Retires the listener (a reload replaced it): it stops accepting; the connections it
    /// accepted go on being read as before (their settings unchanged) until their senders close
    /// them, they go idle, or a stop signal: nothing a sender writes is cut off by a reload.
    /// Returns its socket when `hand_over` (the new listener takes it over: connections waiting
    /// to be accepted are kept) and the engine's feed, once its thread has ended; `None` when a
    /// stop signal came first.
    pub(crate) fn retire(self, hand_over: bool) -> Option<(Option<Listener>, Feed)> {
        self.hand_over.store(hand_over, Ordering::Relaxed);
        self.retired.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// Lets a listener thread started by [`spawn_gated`] go, with the socket it accepts on and the
/// engine's feed. Dropped unopened (a reload refused after the thread was started), the thread
/// ends at once, having done nothing.
pub(crate) struct Gate(mpsc::Sender<(Listener, Feed)>);

impl Gate {
    /// Lets the thread go. Gives the socket and the feed back if the thread is gone (it does
    /// nothing before this, so only a panic could end it).
    pub(super) fn open(self, listener: Listener, feed: Feed) -> Result<(), (Listener, Feed)> {
        self.0.send((listener, feed)).map_err(|e| e.0)
    }
}

impl Listener {
    /// Makes its `accept` return at once when nobody is waiting (the thread polls).
    pub(super) fn nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(u) => u.listener.set_nonblocking(true),
        }
    }
}

/// Starts the listener thread on `listener` (made non-blocking first) at once.
pub(super) fn spawn(
    listener: Listener,
    feed: Feed,
    settings: Settings,
    stop: Arc<AtomicBool>,
    deadline: &Deadline,
    counted: (Arc<InputStats>, Arc<Lanes>),
) -> io::Result<Handle> {
    listener.nonblocking()?;
    let (handle, gate) = spawn_gated(settings, stop, deadline, counted)?;
    if gate.open(listener, feed).is_err() {
        return Err(io::Error::other(
            "the input listener's thread ended before it started",
        ));
    }
    Ok(handle)
}

/// Starts a listener thread that waits at its [`Gate`] until it is given a socket (made
/// non-blocking) and the feed: a reload starts the new listener's thread before anything
/// running changes, so that one that cannot be started refuses the reload. A Unix socket file
/// is removed at stop if it is still the one bound (and not handed to a listener that replaces
/// this one).
pub(super) fn spawn_gated(
    settings: Settings,
    stop: Arc<AtomicBool>,
    deadline: &Deadline,
    (stats, lanes): (Arc<InputStats>, Arc<Lanes>),
) -> io::Result<(Handle, Gate)> {
    #[cfg(test)]
    if FAIL_NEXT_SPAWN.with(|fail| fail.take()) {
        return Err(io::Error::other("cannot start a thread (test)"));
    }
    let (gate, opened) = mpsc::channel::<(Listener, Feed)>();
    let retired = Arc::new(AtomicBool::new(false));
    let hand_over = Arc::new(AtomicBool::new(false));
    let handle_flags = (Arc::clone(&retired), Arc::clone(&hand_over));
    let deadline = deadline.clone();
    let active = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(HoldBudget::new(OVERSIZE_HOLD_BYTES));
    let thread = std::thread::Builder::new()
        .name("egresswatch-listener".into())
        .spawn(move || {
            let Ok((listener, feed)) = opened.recv() else {
                return None;
            };
            let mut refusals = Refusals { logged: None };
            while !stop.load(Ordering::Relaxed) && !retired.load(Ordering::Relaxed) {
                let accepted = match &listener {
                    Listener::Tcp(l) => l
                        .accept()
                        .map(|(s, peer)| Accepted::Tcp(s, peer.to_string())),
                    Listener::Unix(u) => u.listener.accept().map(|(s, _)| Accepted::Unix(s)),
                };
                let accepted = match accepted {
                    Ok(c) => c,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        std::thread::sleep(ACCEPT_POLL);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "input: accept failed");
                        std::thread::sleep(ACCEPT_POLL * 10);
                        continue;
                    }
                };
                if active.load(Ordering::Relaxed) >= settings.max_connections {
                    accepted.refuse();
                    refusals.note(&stats, settings.max_connections);
                    continue;
                }
                let id = lanes.next_id();
                let started =
                    accepted
                        .into_reader(settings.tls.as_ref())
                        .and_then(|(conn, peer)| {
                            let lane = lanes.open(id);
                            let reader = Reader {
                                id,
                                peer,
                                feed: feed.for_lane(Arc::clone(&lane)),
                                lane,
                                lanes: Arc::clone(&lanes),
                                max_line_bytes: settings.max_line_bytes,
                                idle_timeout: settings.idle_timeout,
                                stop: Arc::clone(&stop),
                                deadline: deadline.clone(),
                                budget: Arc::clone(&budget),
                                stats: Arc::clone(&stats),
                                active: Arc::clone(&active),
                            };
                            reader.start(conn)
                        });
                if let Err(e) = started {
                    tracing::warn!(error = %e, "input: cannot start a connection reader");
                }
            }
            // Replaced by a reload (not stopped): the feed goes to the new listener, and the
            // socket too when it listens at the same place.
            let replaced = !stop.load(Ordering::Relaxed);
            let hand_over = replaced && hand_over.load(Ordering::Relaxed);
            if let (Listener::Unix(input), false) = (&listener, hand_over) {
                input.remove_socket_file();
            }
            tracing::debug!(replaced, "input listener stopped");
            replaced.then(|| (hand_over.then_some(listener), feed))
        })?;
    let (retired, hand_over) = handle_flags;
    let handle = Handle {
        retired,
        hand_over,
        thread,
    };
    Ok((handle, Gate(gate)))
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's next [`spawn_gated`] fail, as when the system has no threads left.
    static FAIL_NEXT_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes this thread's next listener thread fail to start (tests).
#[cfg(test)]
pub(super) fn fail_next_spawn() {
    FAIL_NEXT_SPAWN.with(|fail| fail.set(true));
}

/// An accepted connection, blocking with a read timeout.
type Connection = Box<dyn Read + Send>;

/// What one connection's reader thread needs.
struct Reader {
    id: u64,
    peer: String,
    feed: Feed,
    /// The connection as the engine's ordering stage sees it; closed when the reader ends.
    lane: Arc<Lane>,
    lanes: Arc<Lanes>,
    max_line_bytes: usize,
    idle_timeout: Duration,
    stop: Arc<AtomicBool>,
    deadline: Deadline,
    budget: Arc<HoldBudget>,
    stats: Arc<InputStats>,
    active: Arc<AtomicUsize>,
}

impl Reader {
    /// Starts the reader thread of `conn`, counted as open until it ends.
    fn start(self, conn: Connection) -> io::Result<()> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.stats.readers.fetch_add(1, Ordering::Relaxed);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(connection = self.id, peer = %self.peer, "input connection opened");
        let (active, stats) = (Arc::clone(&self.active), Arc::clone(&self.stats));
        let (lanes, lane) = (Arc::clone(&self.lanes), Arc::clone(&self.lane));
        let spawned = std::thread::Builder::new()
            .name(format!("egresswatch-conn-{}", self.id))
            .spawn(move || self.read(conn));
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::Relaxed);
            stats.readers.fetch_sub(1, Ordering::Relaxed);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            lanes.close(&lane);
            return Err(e);
        }
        Ok(())
    }

    fn read(self, mut conn: Connection) {
        let mode = Mode::Shared(Shared {
            stop: &self.stop,
            deadline: &self.deadline,
            idle_timeout: self.idle_timeout,
            budget: &self.budget,
        });
        let (id, peer) = (self.id, &self.peer);
        let read = read_lines(
            &mut conn,
            &self.feed,
            self.max_line_bytes,
            mode,
            &self.stats.undelivered,
        );
        // Everything it sent is handed over: it holds no other connection's lines back.
        self.lanes.close(&self.lane);
        // The slot is free before the peer sees the connection close or the end is logged:
        // either may prompt a new connection.
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
        drop(conn);
        match read {
            Ok(Ended::Idle) => tracing::debug!(
                connection = id, %peer, idle_timeout_secs = self.idle_timeout.as_secs(),
                "input connection closed: nothing received for idle_timeout_secs"
            ),
            Ok(ended) => tracing::debug!(connection = id, ?ended, "input connection closed"),
            Err(e) if crate::tls::is_handshake_failure(&e) => {
                self.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(connection = id, %peer, error = %e,
                    "input connection refused: its TLS handshake failed (counted in \
                     egresswatch_input_tls_handshake_failures_total)");
            }
            Err(e) => tracing::warn!(connection = id, %peer, error = %e,
                "input connection failed; what it sent before is kept"),
        }
        self.stats.readers.fetch_sub(1, Ordering::Relaxed);
    }
}
