//! The TCP and Unix client behind socket outputs.
//!
//! A [`SocketSink`] writes each batch to its peer, connecting when it has none: a TCP address
//! is resolved at every connection attempt, so a service name (`vector:6000`) follows the
//! service when it moves. Before each batch it checks whether the peer has closed the
//! connection (a read that returns end-of-file), so a downstream that went away between batches
//! is reconnected before any data is handed to a dead socket.
//!
//! A socket takes bytes before the peer has them. So that a broken connection loses as little
//! as the transport allows, the sink keeps the tail of what it wrote that the peer's kernel has
//! not acknowledged yet (Linux tells it: `SIOCOUTQ`), from the start of its first line, and
//! writes that tail again first on the next connection. What it cannot know about is what the
//! peer's kernel acknowledged but the peer's program never read (its receive buffer when it
//! reset or closed the connection): that is what a broken socket connection can lose, and the
//! reason socket outputs are documented as unacknowledged. A few lines acknowledged just before
//! the break may be written twice.
//!
//! A TCP output with `tls` speaks TLS over the same connection ([`super::tls_stream`]); the
//! kernel's count is then of ciphertext, and the stream turns it into the plaintext from the
//! start of the first record the peer's kernel has not acknowledged whole: a superset of what
//! the peer lacks (it may repeat the lines of that record, never lose them).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::queue::Deadline;
use super::tls_stream::{must_wait, TlsClient, TlsStream};
use super::worker::{Sink, SinkError};
use crate::metrics::OutputHealth;

/// How long one write may block before the deadline is checked again.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a TCP connection attempt to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the kernel cannot say what is unacknowledged, this much of the written tail is kept.
#[cfg(not(target_os = "linux"))]
const UNACKED_FALLBACK_BYTES: usize = 4 << 20;

/// An outgoing connection.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Conn {
    /// Closes a TCP connection with a reset, so that what its kernel still holds is never sent
    /// (it was handed to another output). A Unix peer keeps what it has not read.
    fn reset(self) {
        let tcp = match &self {
            Conn::Tcp(s) => Some(s),
            Conn::Tls(t) => Some(t.socket()),
            Conn::Unix(_) => None,
        };
        if let Some(s) = tcp {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }

    /// Whether the peer has closed its side (or reset it). Anything the peer sent is discarded.
    fn peer_closed(&mut self) -> bool {
        match self {
            Conn::Tcp(s) => plain_peer_closed(s),
            Conn::Unix(s) => plain_peer_closed(s),
            Conn::Tls(t) => t.peer_closed(),
        }
    }

    /// Bytes written to this connection that the peer may not have: for TCP, what its kernel
    /// has not acknowledged; for Unix, what the peer has not read; under TLS, the plaintext
    /// from the first record not acknowledged in full (see [`TlsStream::unacknowledged`]);
    /// `None` when the system does not say.
    #[cfg(target_os = "linux")]
    fn unacknowledged(&mut self) -> Option<usize> {
        use std::os::fd::AsRawFd;
        match self {
            Conn::Tcp(s) => kernel_unacknowledged(s.as_raw_fd(), true),
            Conn::Unix(s) => kernel_unacknowledged(s.as_raw_fd(), false),
            Conn::Tls(t) => {
                let queued = kernel_unacknowledged(t.socket().as_raw_fd(), true)?;
                Some(t.unacknowledged(queued))
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn unacknowledged(&mut self) -> Option<usize> {
        None
    }
}

/// A TCP or Unix stream, read without blocking to see whether the peer closed it.
trait PlainSocket: Read {
    fn nonblocking(&self, on: bool) -> io::Result<()>;
}

impl PlainSocket for TcpStream {
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl PlainSocket for UnixStream {
    fn nonblocking(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

/// [`Conn::peer_closed`] of a plain socket.
fn plain_peer_closed(s: &mut impl PlainSocket) -> bool {
    if s.nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 512];
    let mut closed = false;
    for _ in 0..64 {
        match s.read(&mut buf) {
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
    closed || s.nonblocking(false).is_err()
}

/// What the kernel holds of a socket's sent bytes: not acknowledged by the peer (TCP: the send
/// queue, `SIOCOUTQ`) or not read by it (Unix).
#[cfg(target_os = "linux")]
fn kernel_unacknowledged(fd: std::os::fd::RawFd, tcp: bool) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) stores one int for a socket; `fd` is open for the lifetime
    // of the caller's borrow, and `n` outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r != 0 {
        return None;
    }
    // A reset purges the send queue, so a count read just before or after one says nothing:
    // only trust it while the connection stands (read after the count, so a reset in between
    // is seen).
    if tcp {
        let mut info = [0u8; 8];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: TCP_INFO writes at most `len` bytes into `info` and updates `len`; the first
        // byte is `tcpi_state`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        const TCP_ESTABLISHED: u8 = 1;
        const TCP_CLOSE_WAIT: u8 = 8;
        if r != 0 || len < 1 || !matches!(info[0], TCP_ESTABLISHED | TCP_CLOSE_WAIT) {
            return None;
        }
    }
    Some(usize::try_from(n).unwrap_or(0))
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    /// Plain sockets keep nothing back; TLS hands the kernel what it has encrypted.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(_) | Conn::Unix(_) => Ok(()),
            Conn::Tls(t) => t.flush(),
        }
    }
}

/// Where a socket output connects to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `HOST:PORT`, resolved at each connection attempt; over TLS when `tls` is set.
    Tcp {
        address: String,
        tls: Option<TlsClient>,
    },
    /// A socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { address, tls: None } => write!(f, "tcp://{address}"),
            Target::Tcp {
                address,
                tls: Some(_),
            } => write!(f, "tcp+tls://{address}"),
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl Target {
    /// Connects; a TLS handshake gives up when `deadline` passes.
    fn connect(&self, deadline: &Deadline) -> io::Result<Conn> {
        let conn = match self {
            Target::Tcp { address, tls } => {
                let mut last = None;
                let mut stream = None;
                for addr in address.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = stream.ok_or_else(|| {
                    last.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the name has no address")
                    })
                })?;
                let _ = s.set_nodelay(true);
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                match tls {
                    None => Conn::Tcp(s),
                    Some(tls) => Conn::Tls(Box::new(TlsStream::connect(tls, s, deadline)?)),
                }
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Conn::Unix(s)
            }
        };
        Ok(conn)
    }
}

/// A socket output's connection and the bytes it may have to write again.
pub(crate) struct SocketSink {
    name: String,
    target: Target,
    conn: Option<Conn>,
    /// The tail of what was written on this connection that the peer may not have, from the
    /// start of a line.
    unacked: VecDeque<u8>,
    /// What to write first on the next connection.
    resend: Vec<u8>,
    /// Bytes of the current batch written so far.
    offset: usize,
    stats: OutputHealth,
    ever_connected: bool,
}

impl SocketSink {
    /// A sink for output `name`; it connects on its first batch.
    pub(crate) fn new(name: &str, target: Target, stats: OutputHealth) -> Self {
        SocketSink {
            name: name.to_owned(),
            target,
            conn: None,
            unacked: VecDeque::new(),
            resend: Vec::new(),
            offset: 0,
            stats,
            ever_connected: false,
        }
    }

    /// Drops the connection; what the peer may not have is to be written again first. (After
    /// a reset the kernel's count is not trusted, see [`Conn::unacknowledged`], and the tail
    /// measured after the last write stands.)
    fn broken(&mut self, reason: &str) -> SinkError {
        self.trim_acknowledged();
        self.conn = None;
        self.resend = self.unacked.drain(..).collect();
        SinkError::Retry(reason.to_owned())
    }

    /// Forgets the whole lines at the front of `unacked` that the peer has acknowledged.
    fn trim_acknowledged(&mut self) {
        let keep = match self.conn.as_mut().and_then(Conn::unacknowledged) {
            Some(n) => n,
            #[cfg(not(target_os = "linux"))]
            None => UNACKED_FALLBACK_BYTES,
            #[cfg(target_os = "linux")]
            None => return,
        };
        if self.unacked.len() > keep {
            let acked = self.unacked.len() - keep;
            if let Some(nl) = self.unacked.range(..acked).rposition(|&b| b == b'\n') {
                self.unacked.drain(..=nl);
            }
        }
    }

    /// Writes `buf[*progress..]`, advancing `progress`, keeping what was written in `unacked`.
    fn write_tracked(
        &mut self,
        buf: &[u8],
        progress: &mut usize,
        deadline: &Deadline,
    ) -> Result<(), SinkError> {
        // Since when the peer has taken nothing.
        let mut stalled = None;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(SinkError::Retry("not connected".into()));
            };
            // Once everything is written, what TLS encrypted may still wait for the kernel.
            let result = if *progress < buf.len() {
                conn.write(&buf[*progress..]).map(Some)
            } else {
                conn.flush().map(|()| None)
            };
            match result {
                Ok(None) => break,
                Ok(Some(0)) => return Err(self.broken("the connection took no data")),
                Ok(Some(n)) => {
                    self.unacked.extend(&buf[*progress..*progress + n]);
                    *progress += n;
                    self.trim_acknowledged();
                    stalled = None;
                }
                Err(e) if must_wait(&e) => {
                    // The peer is slow: keep waiting (backpressure), unless time is up.
                    // Meanwhile it acknowledges what it takes: forget that, so that less is
                    // written twice if the connection breaks now.
                    self.trim_acknowledged();
                    if deadline.passed() {
                        return Err(SinkError::Deadline);
                    }
                    // Replaced by a reload: the replacement takes over what this one holds.
                    if deadline.gives_up_stalled(*stalled.get_or_insert_with(Instant::now)) {
                        return Err(SinkError::Retry(format!(
                            "the peer took nothing for {} s after a reload replaced the output",
                            super::queue::STALL_GRACE.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(self.broken(&format!("write failed: {e}"))),
            }
        }
        self.trim_acknowledged();
        Ok(())
    }
}

impl Sink for SocketSink {
    fn deliver(&mut self, data: &[u8], deadline: &Deadline) -> Result<(), SinkError> {
        if self.conn.as_mut().is_some_and(Conn::peer_closed) {
            tracing::warn!(output = %self.name, target = %self.target,
                "downstream closed the connection; reconnecting");
            let _ = self.broken("downstream closed the connection");
        }
        if self.conn.is_none() {
            let conn = self
                .target
                .connect(deadline)
                .map_err(|e| SinkError::Retry(format!("connecting to {}: {e}", self.target)))?;
            if self.ever_connected {
                self.stats.reconnected();
                tracing::info!(output = %self.name, target = %self.target,
                    resending_bytes = self.resend.len(), "reconnected");
            }
            self.ever_connected = true;
            self.conn = Some(conn);
        }
        if !self.resend.is_empty() {
            let resend = std::mem::take(&mut self.resend);
            let mut progress = 0;
            if let Err(e) = self.write_tracked(&resend, &mut progress, deadline) {
                // `broken` put what this connection may have lost in `resend`; the rest follows.
                self.resend.extend_from_slice(&resend[progress..]);
                return Err(e);
            }
            // (Counted once in `events_out` already, when first written.)
            self.stats
                .resent(memchr::memchr_iter(b'\n', &resend).count() as u64);
        }
        let mut progress = self.offset;
        let written = self.write_tracked(data, &mut progress, deadline);
        self.offset = if written.is_ok() { 0 } else { progress };
        written
    }

    fn probe(&mut self, deadline: &Deadline) {
        match self.target.connect(deadline) {
            Ok(conn) => {
                self.ever_connected = true;
                self.conn = Some(conn);
                self.stats.set_up(true);
            }
            Err(e) => {
                self.stats
                    .failed(format!("connecting to {}: {e}", self.target));
                tracing::warn!(output = %self.name, target = %self.target, error = %e,
                    "cannot connect to downstream yet; its events will be held until it is up");
            }
        }
    }

    fn settle(&mut self, deadline: &Deadline) -> Result<u64, SinkError> {
        if self.unacked.is_empty() && self.resend.is_empty() {
            return Ok(0);
        }
        // Nothing new to write; notices a connection that broke, reconnects and writes again
        // what the peer may not have.
        self.deliver(&[], deadline)?;
        self.trim_acknowledged();
        Ok(self.outstanding_lines())
    }

    fn take_unconfirmed(&mut self) -> Vec<u8> {
        self.trim_acknowledged();
        // Measured now: what the peer's kernel acknowledged stays with it. When both hold
        // bytes, `unacked` is the older: a broken connection's tail moves from `resend` into
        // `unacked` as it is written again, so `resend` keeps only the part not yet written
        // when that write stopped short (the peer stalled, or the deadline). Their last
        // `offset` bytes are the batch in hand, which the caller hands over whole: only what
        // came before it, whole lines, is taken here.
        let mut data: Vec<u8> = self.unacked.drain(..).collect();
        data.extend_from_slice(&std::mem::take(&mut self.resend));
        data.truncate(data.len().saturating_sub(std::mem::take(&mut self.offset)));
        let whole = data
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        data.truncate(whole);
        // The connection's kernel must not send it too, later.
        if let Some(conn) = self.conn.take() {
            conn.reset();
        }
        data
    }

    fn outstanding_lines(&self) -> u64 {
        // (Called after each batch for a disk buffer: memchr, not a byte loop.)
        let (front, back) = self.unacked.as_slices();
        [front, back, &self.resend]
            .iter()
            .map(|bytes| memchr::memchr_iter(b'\n', bytes).count() as u64)
            .sum()
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    #[test]
    fn a_socket_output_reconnects_by_name_and_writes_again_what_the_peer_did_not_take() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        // A host name, resolved at each attempt.
        let mut sink = SocketSink::new(
            "t",
            Target::Tcp {
                address: format!("localhost:{port}"),
                tls: None,
            },
            stats,
        );
        let none = Deadline::default();
        assert!(matches!(
            sink.deliver(b"one\n", &none),
            Err(SinkError::Retry(_))
        ));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        sink.deliver(b"one\ntwo\n", &none).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut reader = io::BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "one\n");
        // The peer reads one line and closes: the kernel had acknowledged the rest, which is
        // the documented loss; nothing written after the close is lost.
        drop(reader);
        std::thread::sleep(Duration::from_millis(50));
        sink.deliver(b"three\n", &none).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut reader = io::BufReader::new(conn);
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "three\n");
    }

    #[test]
    fn what_a_stalled_resend_leaves_is_handed_over_in_the_order_it_was_written() {
        // A broken connection's tail "a b c d" is being written again on the next connection
        // when the peer stalls: "a b" went out (now unacknowledged), "c d" did not; "d" is the
        // batch in hand (handed over whole by the caller).
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        let target = Target::Tcp {
            address: "127.0.0.1:9".to_owned(),
            tls: None,
        };
        let mut sink = SocketSink::new("t", target, stats);
        sink.unacked.extend(b"a\nb\n");
        sink.resend = b"c\nd\n".to_vec();
        sink.offset = 2;
        assert_eq!(sink.take_unconfirmed(), b"a\nb\nc\n");
        assert_eq!(sink.outstanding_lines(), 0);
    }
}
