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

/// A TLS connection to a TCP output's peer.
pub(crate) struct TlsStream {
    tls: rustls::ClientConnection,
    sock: TcpStream,
    /// Ciphertext made and not yet taken by the kernel.
    pending: VecDeque<u8>,
    /// Ciphertext made so far (taken by the kernel, or in `pending`).
    made: u64,
    /// Plaintext taken so far.
    taken: u64,
    /// Plaintext known to be whole in the peer's kernel: the end of the last chunk whose
    /// ciphertext it acknowledged in full.
    acknowledged: u64,
    /// `(plaintext end, ciphertext end)` of each chunk not yet known to be acknowledged.
    ledger: VecDeque<(u64, u64)>,
    /// A write error met after the plaintext of a write was taken, for the next call.
    failed: Option<io::Error>,
}

impl TlsStream {
    /// Completes a TLS handshake on `sock` (which has its write timeout set). A failure says
    /// what the certificate was checked against.
    pub(crate) fn connect(client: &TlsClient, sock: TcpStream) -> io::Result<TlsStream> {
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
            pending: VecDeque::new(),
            made: 0,
            taken: 0,
            acknowledged: 0,
            ledger: VecDeque::new(),
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
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.sock.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves what rustls has to send into `pending`; returns how many bytes.
    fn collect_tls(&mut self) -> io::Result<usize> {
        let mut made = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut made)?;
        }
        self.pending.extend(&made);
        Ok(made.len())
    }

    /// Plaintext taken that the peer may not have: from the start of the first chunk whose
    /// ciphertext the peer's kernel has not acknowledged in full, given `queued`, the bytes
    /// the kernel says are sent and not acknowledged (or not sent yet).
    pub(crate) fn unacknowledged(&mut self, queued: usize) -> usize {
        let in_kernel = self.made - self.pending.len() as u64;
        let acked = in_kernel.saturating_sub(queued as u64);
        while let Some(&(plain, cipher)) = self.ledger.front() {
            if cipher > acked {
                break;
            }
            self.acknowledged = plain;
            self.ledger.pop_front();
        }
        usize::try_from(self.taken - self.acknowledged).unwrap_or(usize::MAX)
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
        self.taken += n as u64;
        self.made += made as u64;
        self.ledger.push_back((self.taken, self.made));
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
}
