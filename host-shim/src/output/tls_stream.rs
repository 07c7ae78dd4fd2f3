//! The client side of TLS on a TCP output, over the blocking socket the [`super::socket`] sink
//! writes, keeping track of what the peer may not have.
//!
//! The socket sink writes again, after a broken connection, the tail of what the peer's kernel
//! had not acknowledged (`SIOCOUTQ`). Under TLS that count is of ciphertext, which does not map
//! byte for byte onto the lines: each record adds a header and a tag, and a record is of use to
//! the peer only whole (its TLS library cannot decrypt a part of one). So this stream encrypts
//! at most one record's worth of plaintext at a time into its own buffer, and keeps a ledger of
//! where each such chunk ends in plaintext and in ciphertext. A chunk counts as with the peer
//! only once the peer's kernel has acknowledged its last ciphertext byte; the plaintext from the
//! start of the first chunk that is not is what [`TlsStream::unacknowledged`] reports. That is a
//! superset of what the peer lacks: it includes the record the peer's TLS library may have read
//! in part (acknowledged bytes of it, not decryptable), ciphertext still in this stream's buffer,
//! and handshake bytes not yet acknowledged (they only make the count larger).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::queue::{Deadline, STALL_GRACE};

/// Plaintext encrypted at a time: one TLS record's worth (rustls's largest fragment).
const CHUNK_PLAINTEXT: usize = 16 * 1024;

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a TCP output speaks TLS: the rustls configuration, the name the server's certificate
/// must carry, and what it is checked against (for messages).
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) trust: String,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// The server name of `HOST:PORT` (`[::1]:PORT` for an IPv6 literal): a DNS name or an IP
/// address, as the server's certificate must carry it.
pub(crate) fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` cannot be a TLS server name: {e}"))
}

/// Whether `e` only says a blocking call timed out or was interrupted: call it again.
pub(crate) fn must_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Where each chunk of plaintext taken ends, in plaintext and in ciphertext (cumulative), for
/// the chunks not yet known to be with the peer's kernel whole.
#[derive(Debug, Default)]
struct Ledger {
    /// Plaintext taken so far.
    taken: u64,
    /// Ciphertext made so far.
    made: u64,
    /// Plaintext known to be whole in the peer's kernel: the end of the last chunk whose
    /// ciphertext it acknowledged in full.
    acknowledged: u64,
    /// `(plaintext end, ciphertext end)` of each chunk after that.
    chunks: VecDeque<(u64, u64)>,
}

impl Ledger {
    /// Notes a chunk: `plain` bytes taken, encrypted into `cipher` bytes.
    fn record(&mut self, plain: usize, cipher: usize) {
        self.taken += plain as u64;
        self.made += cipher as u64;
        self.chunks.push_back((self.taken, self.made));
    }

    /// Plaintext the peer may not have, when `in_kernel` bytes of the ciphertext made have
    /// been handed to the kernel and it holds `queued` of them unacknowledged: everything from
    /// the start of the first chunk whose ciphertext is not acknowledged whole.
    fn unacknowledged(&mut self, in_kernel: u64, queued: u64) -> u64 {
        let acked = in_kernel.saturating_sub(queued);
        while let Some(&(plain, cipher)) = self.chunks.front() {
            if cipher > acked {
                break;
            }
            self.acknowledged = plain;
            self.chunks.pop_front();
        }
        self.taken - self.acknowledged
    }
}

/// A TLS connection to a TCP output's peer.
pub(crate) struct TlsStream {
    tls: rustls::ClientConnection,
    sock: TcpStream,
    /// Ciphertext made; the kernel has taken `pending[sent..]` not yet.
    pending: Vec<u8>,
    /// How much of `pending` the kernel has taken.
    sent: usize,
    /// Where each chunk taken ends, in plaintext and in ciphertext.
    ledger: Ledger,
    /// A write error met after the plaintext of a write was taken, for the next call.
    failed: Option<io::Error>,
}

impl TlsStream {
    /// Completes a TLS handshake on `sock` (which has its write timeout set), giving up after
    /// [`HANDSHAKE_TIMEOUT`] or when `deadline` passes, whichever comes first, or once a reload
    /// replaced the output and the handshake has gone on for [`STALL_GRACE`] (so that the
    /// replacement gets what the output holds in about that time, as a stalled write gives it).
    /// A failure says what the certificate was checked against.
    pub(crate) fn connect(
        client: &TlsClient,
        sock: TcpStream,
        deadline: &Deadline,
    ) -> io::Result<TlsStream> {
        let mut tls =
            rustls::ClientConnection::new(Arc::clone(&client.config), client.server_name.clone())
                .map_err(io::Error::other)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let started = Instant::now();
        let mut sock = sock;
        while tls.is_handshaking() {
            match tls.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if must_wait(&e) => {
                    if deadline.passed() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake: the delivery deadline passed before the server \
                             answered",
                        ));
                    }
                    if deadline.gives_up_stalled(started) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "TLS handshake: no answer from the server within {} s, and a \
                                 reload replaced the output",
                                STALL_GRACE.as_secs()
                            ),
                        ));
                    }
                    if started.elapsed() >= HANDSHAKE_TIMEOUT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake: no answer from the server",
                        ));
                    }
                }
                Err(e) => return Err(handshake_error(e, client)),
            }
        }
        sock.set_read_timeout(None)?;
        Ok(TlsStream {
            tls,
            sock,
            pending: Vec::new(),
            sent: 0,
            ledger: Ledger::default(),
            failed: None,
        })
    }

    /// The socket underneath.
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Hands ciphertext made to the kernel until it is all taken or a write blocks (returned
    /// as `WouldBlock`/`TimedOut`).
    fn push_pending(&mut self) -> io::Result<()> {
        while self.sent < self.pending.len() {
            match self.sock.write(&self.pending[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        self.sent = 0;
        Ok(())
    }

    /// Ciphertext made that the kernel has not taken yet.
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Moves what rustls has to send to the end of `pending`; returns how many bytes.
    fn collect_tls(&mut self) -> io::Result<usize> {
        let before = self.pending.len();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.pending)?;
        }
        Ok(self.pending.len() - before)
    }

    /// Plaintext taken that the peer may not have: from the start of the first chunk whose
    /// ciphertext the peer's kernel has not acknowledged in full, given `queued`, the bytes
    /// the kernel says are sent and not acknowledged (or not sent yet).
    pub(crate) fn unacknowledged(&mut self, queued: usize) -> usize {
        let in_kernel = self.ledger.made - self.unsent() as u64;
        let unacked = self.ledger.unacknowledged(in_kernel, queued as u64);
        usize::try_from(unacked).unwrap_or(usize::MAX)
    }

    /// Whether the peer has closed the connection (`close_notify`, end of stream, a reset or a
    /// TLS error). What it sent besides is read and discarded.
    pub(crate) fn peer_closed(&mut self) -> bool {
        if self.sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut closed = false;
        let mut discard = [0u8; 4096];
        for _ in 0..64 {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => match self.tls.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => {
                        closed = true;
                        break;
                    }
                    Ok(_) => while matches!(self.tls.reader().read(&mut discard), Ok(1..)) {},
                    Err(_) => {
                        closed = true;
                        break;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        closed || self.sock.set_nonblocking(false).is_err()
    }
}

impl Write for TlsStream {
    /// Takes at most one record's worth of `buf` (after handing the kernel what was made
    /// before; a write that blocks there takes nothing). Once plaintext is taken the call
    /// succeeds: an error sending it is returned by the next call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.push_pending()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(CHUNK_PLAINTEXT);
        let n = self.tls.writer().write(&buf[..n])?;
        if n == 0 {
            // rustls's buffer is full (it is emptied after each write, so this is not
            // expected): nothing taken, try again.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let made = self.collect_tls()?;
        self.ledger.record(n, made);
        match self.push_pending() {
            Ok(()) => {}
            Err(e) if must_wait(&e) => {}
            Err(e) => self.failed = Some(e),
        }
        Ok(n)
    }

    /// Hands the kernel everything made (`WouldBlock`/`TimedOut` while it does not take it).
    fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.push_pending()
    }
}

impl Drop for TlsStream {
    /// Ends the session with `close_notify`, as far as the socket takes it without waiting
    /// past its write timeout (the peer may be gone).
    fn drop(&mut self) {
        self.tls.send_close_notify();
        if self.collect_tls().is_ok() {
            let _ = self.push_pending();
        }
    }
}

/// A handshake error, saying what the server's certificate was checked against when it was
/// refused.
fn handshake_error(e: io::Error, client: &TlsClient) -> io::Error {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            )
        });
    let message = if certificate {
        format!(
            "TLS handshake failed: {e} (the server's certificate, for `{}`, is checked against {})",
            client.server_name.to_str(),
            client.trust
        )
    } else {
        format!("TLS handshake failed: {e}")
    };
    io::Error::new(e.kind(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_partly_acknowledged_is_unacknowledged_whole() {
        let mut ledger = Ledger::default();
        // Three records: 100 bytes of plaintext in 130 of ciphertext, twice, then 50 in 72.
        ledger.record(100, 130);
        ledger.record(100, 130);
        ledger.record(50, 72);
        // All 332 bytes in the kernel, 200 of them unacknowledged: only the first record
        // (ending at 130 <= 132) is with the peer; the second is not, whole, although most of
        // it was acknowledged.
        assert_eq!(ledger.unacknowledged(332, 200), 150);
        assert_eq!(ledger.unacknowledged(332, 100), 150);
        // 10 unacknowledged: the last record is not whole with the peer, so its 50 bytes are
        // (counting ciphertext bytes as plaintext would keep 10 and lose 40).
        assert_eq!(ledger.unacknowledged(332, 10), 50);
        assert_eq!(ledger.unacknowledged(332, 0), 0);
    }

    #[test]
    fn ciphertext_not_yet_in_the_kernel_or_untracked_is_never_counted_acknowledged() {
        let mut ledger = Ledger::default();
        ledger.record(100, 130);
        ledger.record(100, 130);
        // 60 bytes of the second record still wait in the stream's own buffer.
        assert_eq!(ledger.unacknowledged(200, 0), 100);
        // The kernel holds more than the ledger ever handed it (handshake bytes not
        // acknowledged yet): nothing counts as acknowledged.
        let mut fresh = Ledger::default();
        fresh.record(100, 130);
        assert_eq!(fresh.unacknowledged(130, 200), 100);
    }

    #[test]
    fn server_names_come_from_the_address_host() {
        assert_eq!(
            server_name("vector.example:6000").unwrap(),
            ServerName::try_from("vector.example").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:6000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:6000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad_name!:1").is_err());
    }

    #[test]
    fn a_replaced_outputs_handshake_with_a_server_that_never_answers_gives_up_after_the_grace() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let sock = TcpStream::connect(&address).unwrap();
        // Accepted, never read from or answered.
        let (_held, _) = silent.accept().unwrap();
        let tls = crate::config::ClientTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
        };
        let (config, trust) =
            crate::tls::tcp_client(&tls, std::path::Path::to_owned, "outputs.t.tls").unwrap();
        let client = TlsClient {
            config,
            server_name: server_name(&address).unwrap(),
            trust,
        };
        // (Its own deadline is far off: only the reload makes it give up.)
        let deadline = Deadline::default();
        deadline.set_replaced();
        let failed = TlsStream::connect(&client, sock, &deadline).err();
        let message = failed.expect("no handshake").to_string();
        assert!(
            message.contains("a reload replaced the output"),
            "{message}"
        );
    }
}
