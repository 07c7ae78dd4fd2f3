//! Socket adapters: TCP and Unix listeners that feed the engine, and the TCP and Unix clients
//! behind socket outputs.
//!
//! **Inputs.** A listener thread accepts connections (at most `max_connections` at once; more
//! wait in the kernel's backlog) and starts a reader thread per connection, which reads with a
//! short timeout so that it notices a stop signal, and sends its lines into the engine's bounded
//! [`Feed`]. A connection that opens and closes without data (Vector's health check) is simply
//! finished. On a stop signal the listener stops accepting and each reader hands over what it
//! has read, including an unterminated last line, and ends.
//!
//! **Outputs.** A [`SocketWriter`] collects a block of lines and, on flush, writes it to the
//! peer. Before each write it checks whether the peer has closed the connection (a read that
//! returns end-of-file), so a downstream that went away between blocks is reconnected before any
//! data is handed to a dead socket. If a write fails, the whole pending block is written again
//! on a new connection (at-least-once: lines of that block the peer had already read may arrive
//! twice). While the peer is unreachable it retries with exponential backoff (100 ms doubling to
//! 5 s) and blocks the engine, which blocks the readers: backpressure, never drops. After a stop
//! signal it keeps trying for [`SHUTDOWN_GRACE`] and then gives up with an error that says how
//! much was not delivered.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_plugin_api::files::describe_type;

use super::{read_lines, Feed};

/// How long a connection's reader waits for data before checking the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// How often the listener looks for new connections (and the stop flag).
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a socket output keeps trying to deliver after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Bytes a socket output collects before it writes them even within a block.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// How long one write may block before the stop flag is checked again.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Counters of an input listener, for metrics.
#[derive(Debug, Default)]
pub struct InputStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted so far.
    pub total: AtomicU64,
}

/// A bound listener.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixInput),
}

/// An accepted or outgoing connection.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nonblocking(on),
            Conn::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(t),
            Conn::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Whether the peer has closed its side (or reset it). Anything the peer sent is discarded.
    fn peer_closed(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        let mut closed = false;
        for _ in 0..64 {
            match self.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        closed || self.set_nonblocking(false).is_err()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Binds a TCP listener, naming the config field on failure.
pub fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("input.address: cannot listen on {address}: {e}"),
        )
    })
}

/// A bound Unix socket listener and the identity of the socket file it created, so that only
/// that file is removed when the input stops.
pub struct UnixInput {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file as bound.
    id: Option<(u64, u64)>,
}

/// Binds a Unix listener at `path`. A socket file nobody listens on (left by a crash) is
/// removed first; anything else at that path (a regular file, a folder, a symlink, a FIFO, or a
/// socket someone listens on) is an error, and is left alone.
pub fn bind_unix(path: &Path) -> io::Result<UnixInput> {
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

/// Starts the listener thread for a TCP input; returns the bound address.
pub fn spawn_tcp(
    listener: TcpListener,
    feed: Feed,
    max_line_bytes: usize,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<InputStats>,
) -> io::Result<String> {
    let local = listener.local_addr()?.to_string();
    spawn_listener(
        Listener::Tcp(listener),
        feed,
        max_line_bytes,
        max_connections,
        stop,
        stats,
    )?;
    Ok(local)
}

/// Starts the listener thread for a Unix socket input; the socket file is removed at stop if it
/// is still the one bound.
pub fn spawn_unix(
    input: UnixInput,
    feed: Feed,
    max_line_bytes: usize,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<InputStats>,
) -> io::Result<()> {
    spawn_listener(
        Listener::Unix(input),
        feed,
        max_line_bytes,
        max_connections,
        stop,
        stats,
    )
}

fn spawn_listener(
    listener: Listener,
    feed: Feed,
    max_line_bytes: usize,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<InputStats>,
) -> io::Result<()> {
    match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true)?,
        Listener::Unix(u) => u.listener.set_nonblocking(true)?,
    }
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("egresswatch-listener".into())
        .spawn(move || {
            let mut next_id: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if active.load(Ordering::Relaxed) >= max_connections {
                    std::thread::sleep(ACCEPT_POLL);
                    continue;
                }
                let accepted = match &listener {
                    Listener::Tcp(l) => {
                        l.accept().map(|(s, peer)| (Conn::Tcp(s), peer.to_string()))
                    }
                    Listener::Unix(u) => u
                        .listener
                        .accept()
                        .map(|(s, _)| (Conn::Unix(s), "unix socket".to_owned())),
                };
                let (conn, peer) = match accepted {
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
                next_id += 1;
                if let Err(e) = start_connection(
                    conn,
                    peer,
                    next_id,
                    &feed,
                    max_line_bytes,
                    &stop,
                    &stats,
                    &active,
                ) {
                    tracing::warn!(error = %e, "input: cannot start a connection reader");
                }
            }
            if let Listener::Unix(input) = &listener {
                input.remove_socket_file();
            }
            tracing::debug!("input listener stopped");
        })?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_connection(
    conn: Conn,
    peer: String,
    id: u64,
    feed: &Feed,
    max_line_bytes: usize,
    stop: &Arc<AtomicBool>,
    stats: &Arc<InputStats>,
    active: &Arc<AtomicUsize>,
) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let feed = feed.clone();
    let stop = Arc::clone(stop);
    let stats_here = Arc::clone(stats);
    let active_here = Arc::clone(active);
    active.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(connection = id, %peer, "input connection opened");
    let spawned = std::thread::Builder::new()
        .name(format!("egresswatch-conn-{id}"))
        .spawn(move || {
            if let Err(e) = read_lines(conn, &feed, max_line_bytes, Some(&stop)) {
                tracing::warn!(connection = id, %peer, error = %e, "input connection failed; what it sent before is kept");
            }
            tracing::debug!(connection = id, "input connection closed");
            stats_here.open.fetch_sub(1, Ordering::Relaxed);
            active_here.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::Relaxed);
        stats.open.fetch_sub(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

/// Where a socket output connects to.
#[derive(Debug, Clone)]
pub enum Target {
    /// `IP:PORT`.
    Tcp(String),
    /// A socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A socket output: buffers a block, delivers it on flush, reconnects and resends on failure.
pub struct SocketWriter {
    name: String,
    target: Target,
    conn: Option<Conn>,
    pending: Vec<u8>,
    stop: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    ever_connected: bool,
}

impl SocketWriter {
    /// A writer for output `name`; it connects on its first flush.
    pub fn new(name: &str, target: Target, stop: Arc<AtomicBool>) -> Self {
        SocketWriter {
            name: name.to_owned(),
            target,
            conn: None,
            pending: Vec::new(),
            stop,
            reconnects: Arc::new(AtomicU64::new(0)),
            ever_connected: false,
        }
    }

    /// The reconnection counter, for metrics.
    pub fn reconnects(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reconnects)
    }

    fn connect(&self) -> io::Result<Conn> {
        let conn = match &self.target {
            Target::Tcp(address) => {
                let s = TcpStream::connect(address.as_str())?;
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }
            Target::Unix(path) => Conn::Unix(UnixStream::connect(path)?),
        };
        conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(conn)
    }

    /// Err once the stop flag has been set for longer than the grace period.
    fn check_grace(&self, stopped_at: &mut Option<Instant>) -> io::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() > SHUTDOWN_GRACE {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "outputs.{}: {} unreachable while shutting down; {} bytes not delivered",
                        self.name,
                        self.target,
                        self.pending.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Writes the pending block, reconnecting and rewriting it until the peer has taken it.
    fn deliver(&mut self) -> io::Result<()> {
        let mut backoff = BACKOFF_START;
        let mut stopped_at = None;
        let mut failing_since: Option<Instant> = None;
        while !self.pending.is_empty() {
            self.check_grace(&mut stopped_at)?;
            if self.conn.as_mut().is_some_and(Conn::peer_closed) {
                tracing::warn!(output = %self.name, target = %self.target, "downstream closed the connection; reconnecting");
                self.conn = None;
            }
            if self.conn.is_none() {
                match self.connect() {
                    Ok(conn) => {
                        if self.ever_connected {
                            self.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(output = %self.name, target = %self.target, "reconnected");
                        }
                        self.ever_connected = true;
                        failing_since = None;
                        backoff = BACKOFF_START;
                        self.conn = Some(conn);
                    }
                    Err(e) => {
                        if failing_since.is_none() {
                            failing_since = Some(Instant::now());
                            tracing::warn!(output = %self.name, target = %self.target, error = %e,
                                "cannot connect to downstream; holding events and retrying");
                        } else {
                            tracing::debug!(output = %self.name, error = %e, ?backoff, "reconnect failed");
                        }
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            match self.write_pending(&mut stopped_at) {
                Ok(()) => self.pending.clear(),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
                Err(e) => {
                    tracing::warn!(output = %self.name, target = %self.target, error = %e,
                        "write to downstream failed; reconnecting to write the block again");
                    self.conn = None;
                }
            }
        }
        Ok(())
    }

    fn write_pending(&mut self, stopped_at: &mut Option<Instant>) -> io::Result<()> {
        let mut offset = 0;
        while offset < self.pending.len() {
            let Some(conn) = self.conn.as_mut() else {
                return Err(io::Error::other("not connected"));
            };
            match conn.write(&self.pending[offset..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => offset += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    // The peer is slow: keep waiting (backpressure), unless shutting down.
                    self.check_grace(stopped_at)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sleeps for `d` in short steps.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }
}

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.pending.is_empty() && self.pending.len() + buf.len() > MAX_PENDING_BYTES {
            self.deliver()?;
        }
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.deliver()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn a_socket_output_waits_for_its_peer_and_delivers_everything() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap().to_string();
        drop(probe);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = SocketWriter::new("t", Target::Tcp(address.clone()), stop);
        writer.write_all(b"one\ntwo\n").unwrap();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = TcpListener::bind(&address).unwrap();
            let (conn, _) = listener.accept().unwrap();
            let lines: Vec<String> = io::BufReader::new(conn)
                .lines()
                .map(|l| l.unwrap())
                .collect();
            lines
        });
        writer.flush().unwrap(); // blocks until the listener appears
        drop(writer);
        assert_eq!(server.join().unwrap(), vec!["one", "two"]);
    }
}
