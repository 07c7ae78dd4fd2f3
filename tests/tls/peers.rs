//! The TLS tests' certificates (made with rcgen) and peers (written with rustls): senders, a
//! downstream that checks what it receives, and one that resets mid-stream after taking what
//! its kernel acknowledged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::util::{close_with_reset, figure, http_get, workspace, write};

/// PEM files made for one test: an authority, a server certificate for `localhost` and
/// 127.0.0.1 with its key, a client certificate with its key (and `other-ca.pem`, a second,
/// unrelated authority).
pub(super) struct Pki {
    pub(super) ca: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
    pub(super) client_cert: PathBuf,
    pub(super) client_key: PathBuf,
}

fn authority() -> (rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let pem = ca.pem();
    (ca, pem)
}

pub(super) fn pki(dir: &Path) -> Pki {
    pki_for(dir, &["localhost", "127.0.0.1"])
}

/// [`pki`] with a server certificate for `server_names` only.
pub(super) fn pki_for(dir: &Path, server_names: &[&str]) -> Pki {
    let (ca, ca_pem) = authority();
    let (_, other_pem) = authority();
    let leaf = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(server_names.iter().map(|&n| n.to_owned()).collect());
    let (client_cert, client_key) = leaf(vec!["sender.example".into()]);
    write(dir, "other-ca.pem", other_pem);
    Pki {
        ca: write(dir, "ca.pem", ca_pem),
        server_cert: write(dir, "server.pem", server_cert),
        server_key: write(dir, "server.key", server_key),
        client_cert: write(dir, "client.pem", client_cert),
        client_key: write(dir, "client.key", client_key),
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A sender's TLS: trusts `ca`, presents the client certificate when `cert` says.
pub(super) fn client_config(pki: &Pki, cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(&pki.ca));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(if cert {
        builder
            .with_client_auth_cert(certs(&pki.client_cert), key(&pki.client_key))
            .unwrap()
    } else {
        builder.with_no_client_auth()
    })
}

/// A downstream's TLS: the server certificate; client certificates from `ca` required.
pub(super) fn server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(&pki.ca));
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&pki.server_cert), key(&pki.server_key))
            .unwrap(),
    )
}

/// A TLS connection to egresswatch's input at `address`.
pub(super) fn tls_sender(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(address).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

pub(super) fn numbered(from: u64, to: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for n in from..to {
        writeln!(data, "{{\"n\":{n}}}").unwrap();
    }
    data
}

pub(super) fn detector() -> String {
    format!(
        "detector:\n  rules: ['{}']\n",
        workspace().join("rules").display()
    )
}

/// The `n` of each complete line in `bytes`, consuming them.
pub(super) fn take_lines(partial: &mut Vec<u8>, into: &mut Vec<u64>) {
    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=nl).collect();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        into.push(v["n"].as_u64().unwrap());
    }
}

/// Lines received, in order, shared with the thread that receives them.
type Received = Arc<std::sync::Mutex<Vec<u64>>>;

/// A TLS downstream on a loopback port (returned) that requires the client certificate and
/// reads each connection until it ends: the lines of every connection, in order, and the
/// count of completed handshakes, are shared with the test as they come.
pub(super) fn tls_downstream(
    config: Arc<rustls::ServerConfig>,
) -> (u16, Received, Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Received::default();
    let handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (shared, counted) = (Arc::clone(&received), Arc::clone(&handshakes));
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let mut conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let received = Arc::clone(&shared);
            let handshakes = Arc::clone(&counted);
            std::thread::spawn(move || {
                while conn.is_handshaking() {
                    if conn.complete_io(&mut sock).is_err() {
                        return;
                    }
                }
                handshakes.fetch_add(1, Ordering::Relaxed);
                let mut stream = rustls::StreamOwned::new(conn, sock);
                let mut partial = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            partial.extend_from_slice(&chunk[..n]);
                            let mut lines = Vec::new();
                            take_lines(&mut partial, &mut lines);
                            received.lock().unwrap().extend(lines);
                        }
                    }
                }
            });
        }
    });
    (port, received, handshakes)
}

/// Whether a TLS connection to the input got refused: the handshake, or the first read after
/// it (under TLS 1.3 the server judges the client's certificate after the client has finished
/// its side), fails or ends.
pub(super) fn refused(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) -> bool {
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(b"{\"n\":999999}\n");
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// Bytes waiting in a socket's receive queue.
fn unread(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int for a socket; `fd` is open and `n` outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap()
}

/// Copies what is in a socket's receive queue without taking it (so the receive window does
/// not open again).
fn peek(fd: std::os::fd::RawFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes; `fd` is an open socket.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, libc::MSG_PEEK) };
    assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
    buf.truncate(usize::try_from(n).unwrap());
    buf
}

/// A TLS downstream that, on each of its first `breaks` connections, reads `per_connection`
/// lines, then stops reading until the sender is stuck (its receive queue full and still), then
/// takes *everything* its kernel acknowledged (peeked, decrypted, parsed) and resets the
/// connection. The sender has data in flight at each reset, and the peer lost nothing it had
/// acknowledged: whatever is missing afterwards, the sender lost. The last connection is read
/// until it ends. Returns the lines of each connection.
pub(super) fn resetting_downstream(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    per_connection: usize,
    breaks: usize,
    last: u64,
    seen_last: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u64>>> {
    std::thread::spawn(move || {
        let mut connections = Vec::new();
        for round in 0..=breaks {
            let (mut sock, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut lines = Vec::new();
            let mut partial = Vec::new();
            let mut plain = [0u8; 16384];
            let breaking = round < breaks;
            let mut quiet_since = Instant::now();
            while !(breaking && lines.len() >= per_connection)
                && quiet_since.elapsed() < Duration::from_secs(60)
            {
                match conn.read_tls(&mut sock) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
                quiet_since = Instant::now();
                conn.process_new_packets().unwrap();
                while let Ok(n @ 1..) = conn.reader().read(&mut plain) {
                    partial.extend_from_slice(&plain[..n]);
                }
                take_lines(&mut partial, &mut lines);
                if lines.last() == Some(&last) {
                    seen_last.store(true, Ordering::Relaxed);
                }
            }
            if breaking {
                // Stuck: nothing more arrives for 300 ms (the receive window is closed).
                let fd = sock.as_raw_fd();
                let mut queued = unread(fd);
                let mut still_since = Instant::now();
                while still_since.elapsed() < Duration::from_millis(300) {
                    std::thread::sleep(Duration::from_millis(20));
                    let now = unread(fd);
                    if now != queued {
                        queued = now;
                        still_since = Instant::now();
                    }
                }
                // Take all of it; a record cut at the end stays in the TLS state, lost.
                let mut acknowledged = &peek(fd, queued)[..];
                while !acknowledged.is_empty() {
                    conn.read_tls(&mut acknowledged).unwrap();
                    conn.process_new_packets().unwrap();
                    while let Ok(n @ 1..) = conn.reader().read(&mut plain) {
                        partial.extend_from_slice(&plain[..n]);
                    }
                }
                take_lines(&mut partial, &mut lines);
                close_with_reset(sock);
            }
            connections.push(lines);
        }
        connections
    })
}

/// The input's count of refused TLS handshakes, as `/metrics` at `metrics` shows it.
pub(super) fn handshake_failures(metrics: &str) -> Option<f64> {
    figure(
        &http_get(metrics, "/metrics"),
        "egresswatch_input_tls_handshake_failures_total",
    )
}
