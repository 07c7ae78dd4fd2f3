//! TLS for the inputs and outputs, with rustls and its `ring` provider throughout:
//! - server side: the HTTP input (through `tokio-rustls`, an [`Accept`] of the host's HTTP
//!   stack) and the TCP input (a [`ServerStream`] over the blocking connection its reader
//!   thread reads);
//! - client side: the HTTP output (through `ureq`, [`client`]) and the TCP output
//!   ([`tcp_client`]; its stream, which keeps track of what the peer may not have, is in
//!   `output::tls_stream`).
//!
//! Certificates and keys are PEM files named in the configuration, read bounded (regular files
//! of at most [`MAX_PEM_BYTES`]); every error names the configuration key and the file. An
//! input with `client_ca_file` requires a client certificate signed by that authority: a
//! client without one is refused during the handshake, before any request is read.

use std::io::{self, Read};
use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_plugin_api::files;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use crate::config::{ClientTls, ServerTls};
use crate::http::Accept;

/// Largest PEM file read.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file, naming `key` (the configuration key) on failure.
fn read_pem(path: &Path, key: &str) -> io::Result<Vec<u8>> {
    files::read_regular(path, MAX_PEM_BYTES).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{key}: {}: {e}", path.display()))
    })
}

fn invalid(key: &str, path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{key}: {}: {what}", path.display()),
    )
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path, key: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, e))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(path: &Path, key: &str) -> io::Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(key, path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS side of a listener: its certificate, and client certificates required when
/// `client_ca_file` is set. `resolve` turns configured paths into paths to open; `prefix` is
/// the configuration key of `tls` (`input.tls`).
pub(crate) fn server(
    tls: &ServerTls,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
    prefix: &str,
) -> io::Result<TlsAccept> {
    let config = server_config(tls, resolve, prefix)?;
    Ok(TlsAccept(tokio_rustls::TlsAcceptor::from(config)))
}

/// The rustls configuration of a listener (see [`server`]).
pub(crate) fn server_config(
    tls: &ServerTls,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
    prefix: &str,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let key = |k: &str| format!("{prefix}.{k}");
    let chain = certificates(&resolve(&tls.cert_file), &key("cert_file"))?;
    let private = private_key(&resolve(&tls.key_file), &key("key_file"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let path = resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&path, &key("client_ca_file"))? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(&key("client_ca_file"), &path, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| invalid(&key("client_ca_file"), &path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, private)
        .map_err(|e| invalid(&key("key_file"), &resolve(&tls.key_file), e))?;
    Ok(Arc::new(config))
}

/// Accepts TLS on the host's HTTP stack.
#[derive(Clone)]
pub(crate) struct TlsAccept(tokio_rustls::TlsAcceptor);

impl Accept for TlsAccept {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        self.0.accept(tcp).await
    }
}

/// The TLS settings of an HTTP output's client: the authorities it trusts (the public web PKI
/// when `ca_file` is absent) and the certificate it presents, if any. `prefix` is the
/// configuration key of `tls` (`outputs.NAME.tls`).
pub(crate) fn client(
    tls: &ClientTls,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
    prefix: &str,
) -> io::Result<ureq::tls::TlsConfig> {
    let key = |k: &str| format!("{prefix}.{k}");
    let der = |c: &CertificateDer<'_>| ureq::tls::Certificate::from_der(c.as_ref()).to_owned();
    let mut builder = ureq::tls::TlsConfig::builder();
    if let Some(ca) = &tls.ca_file {
        let certs = certificates(&resolve(ca), &key("ca_file"))?;
        let certs: Vec<_> = certs.iter().map(der).collect();
        builder = builder.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    if let (Some(cert), Some(private)) = (&tls.cert_file, &tls.key_file) {
        let chain: Vec<_> = certificates(&resolve(cert), &key("cert_file"))?
            .iter()
            .map(der)
            .collect();
        let path = resolve(private);
        let pem = read_pem(&path, &key("key_file"))?;
        let private = ureq::tls::PrivateKey::from_pem(&pem)
            .map_err(|e| invalid(&key("key_file"), &path, e))?;
        builder = builder.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, private)));
    }
    Ok(builder.build())
}

/// The TLS settings of a TCP output: what [`client`] is for the HTTP output, as a rustls
/// configuration (the public web PKI roots are webpki-roots, the ones `ureq` uses), with a
/// description of what the server's certificate is checked against, for error messages.
pub(crate) fn tcp_client(
    tls: &ClientTls,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
    prefix: &str,
) -> io::Result<(Arc<rustls::ClientConfig>, String)> {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut roots = rustls::RootCertStore::empty();
    let trust = match &tls.ca_file {
        Some(ca) => {
            let path = resolve(ca);
            for cert in certificates(&path, &key("ca_file"))? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(&key("ca_file"), &path, e))?;
            }
            format!("{} ({})", key("ca_file"), path.display())
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            format!("the public web PKI roots ({} is not set)", key("ca_file"))
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(private)) => {
            let chain = certificates(&resolve(cert), &key("cert_file"))?;
            let path = resolve(private);
            let private = private_key(&path, &key("key_file"))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| invalid(&key("key_file"), &path, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok((Arc::new(config), trust))
}

/// A TLS handshake that failed on an input connection (the peer is refused).
#[derive(Debug)]
pub(crate) struct HandshakeFailed(pub(crate) String);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for HandshakeFailed {}

/// Whether `e` is a [`HandshakeFailed`].
pub(crate) fn is_handshake_failure(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<HandshakeFailed>())
}

/// Longest a TCP input's TLS handshake may take; it is then refused and counted. (A shorter
/// `idle_timeout_secs` closes the connection first, as idle.)
pub(crate) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Whether `e` only says a blocking call timed out or was interrupted.
fn must_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The server side of a TLS connection over a blocking socket with a read timeout, read by a
/// TCP input's connection reader. Each `read` does at most one read of the socket (so the
/// reader sees its stop signal, deadline and idle timeout between them, however the client
/// dribbles its bytes); while nothing decrypted is there it answers `WouldBlock`. The handshake
/// happens in these reads (a slow client holds only its own reader) and must finish within
/// its limit; a failed or late handshake is a [`HandshakeFailed`] error. A peer that closes the
/// TCP connection without TLS's `close_notify` (common among log shippers) ends the stream
/// like an orderly close: what it sent is kept.
pub(crate) struct ServerStream {
    conn: rustls::ServerConnection,
    sock: StdTcpStream,
    /// When the handshake must be over.
    handshake_by: Instant,
}

impl ServerStream {
    /// Starts serving TLS on `sock` (the handshake happens as it is read, within `limit`).
    pub(crate) fn new(
        config: Arc<rustls::ServerConfig>,
        sock: StdTcpStream,
        limit: Duration,
    ) -> io::Result<Self> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(ServerStream {
            conn,
            sock,
            handshake_by: Instant::now() + limit,
        })
    }

    /// An error of the connection: a handshake failure while handshaking.
    fn failed(&self, e: impl std::fmt::Display, kind: io::ErrorKind) -> io::Error {
        if self.conn.is_handshaking() {
            io::Error::new(kind, HandshakeFailed(e.to_string()))
        } else {
            io::Error::new(kind, e.to_string())
        }
    }

    /// Sends what rustls has to send (handshake messages, alerts) as far as the socket takes it
    /// now; the rest goes at the next call.
    fn send(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if must_wait(&e) => return Ok(()),
                Err(e) => return Err(self.failed(e, io::ErrorKind::BrokenPipe)),
            }
        }
        Ok(())
    }

    /// Decrypted bytes into `buf`: `None` when there are none yet.
    fn plaintext(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self.conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            // The peer closed without `close_notify`: an end like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            other => Some(other),
        }
    }
}

impl Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(done) = self.plaintext(buf) {
            return done;
        }
        if self.conn.is_handshaking() && Instant::now() >= self.handshake_by {
            // (Not `TimedOut`: the reader takes that for a read timeout and waits on.)
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                HandshakeFailed("not finished in time".to_owned()),
            ));
        }
        self.send()?;
        match self.conn.read_tls(&mut self.sock) {
            // End of stream: said by `plaintext` below.
            Ok(_) => {}
            Err(e) if must_wait(&e) => return Err(e),
            Err(e) => return Err(self.failed(e, io::ErrorKind::ConnectionReset)),
        }
        if let Err(e) = self.conn.process_new_packets() {
            // The alert that says why, if the socket takes it.
            let _ = self.send();
            return Err(self.failed(e, io::ErrorKind::InvalidData));
        }
        self.send()?;
        self.plaintext(buf)
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }
}
