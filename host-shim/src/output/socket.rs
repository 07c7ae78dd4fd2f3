//! The TCP and Unix client behind socket outputs.
//!
//! A [`SocketWriter`] collects a block of lines and, on flush, writes it to the peer. Before
//! each write it checks whether the peer has closed the connection (a read that returns
//! end-of-file), so a downstream that went away between blocks is reconnected before any data is
//! handed to a dead socket. If a write fails, the whole pending block is written again on a new
//! connection (at-least-once: lines of that block the peer had already read may arrive twice).
//! While the peer is unreachable it retries with exponential backoff (100 ms doubling to 5 s)
//! and blocks the engine, which blocks the readers: backpressure, never drops. After a stop
//! signal it keeps trying for [`SHUTDOWN_GRACE`] and then gives up with an error that says how
//! much was not delivered.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::OutputHealth;

/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a socket output keeps trying to deliver after a stop signal.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Bytes a socket output collects before it writes them even within a block.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// How long one write may block before the stop flag is checked again.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// An outgoing connection.
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

/// Where a socket output connects to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
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
pub(crate) struct SocketWriter {
    name: String,
    target: Target,
    conn: Option<Conn>,
    pending: Vec<u8>,
    stop: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    ever_connected: bool,
    health: OutputHealth,
}

impl SocketWriter {
    /// A writer for output `name`; it connects on its first flush.
    pub fn new(name: &str, target: Target, stop: Arc<AtomicBool>, health: OutputHealth) -> Self {
        SocketWriter {
            name: name.to_owned(),
            target,
            conn: None,
            pending: Vec::new(),
            stop,
            reconnects: Arc::new(AtomicU64::new(0)),
            ever_connected: false,
            health,
        }
    }

    /// Tries to connect once, so that the output's health is known before the first event.
    pub fn probe(&mut self) {
        match self.connect() {
            Ok(conn) => {
                self.ever_connected = true;
                self.health.set_up(true);
                self.conn = Some(conn);
            }
            Err(e) => {
                self.health.set_up(false);
                self.health
                    .error(format!("connecting to {}: {e}", self.target));
                tracing::warn!(output = %self.name, target = %self.target, error = %e,
                    "cannot connect to downstream yet; events will be held until it is up");
            }
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
        self.health.set_pending_bytes(self.pending.len() as u64);
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
                        self.health.set_up(true);
                        failing_since = None;
                        backoff = BACKOFF_START;
                        self.conn = Some(conn);
                    }
                    Err(e) => {
                        self.health.set_up(false);
                        self.health
                            .error(format!("connecting to {}: {e}", self.target));
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
                Ok(()) => {
                    self.pending.clear();
                    self.health.set_pending_bytes(0);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
                Err(e) => {
                    tracing::warn!(output = %self.name, target = %self.target, error = %e,
                        "write to downstream failed; reconnecting to write the block again");
                    self.health.set_up(false);
                    self.health
                        .error(format!("writing to {}: {e}", self.target));
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
    use std::net::TcpListener;

    #[test]
    fn a_socket_output_waits_for_its_peer_and_delivers_everything() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap().to_string();
        drop(probe);
        let stop = Arc::new(AtomicBool::new(false));
        let health = crate::metrics::Metrics::new(Default::default()).output("t");
        let mut writer = SocketWriter::new("t", Target::Tcp(address.clone()), stop, health);
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
