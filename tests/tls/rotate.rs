//! Certificates renewed while egresswatch runs (issue #11): SIGHUP after the files of a TLS
//! output or a TLS input were rewritten in place (the configuration unchanged) rebuilds that
//! output or listener with the new files. Certificates made with rcgen, peers with rustls.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::peers::{
    client_config, detector, numbered, pki, server_config, take_lines, tls_sender, Pki,
};
use super::{EXIT, WAIT};
use crate::util::{count_lines, free_address, temp_dir, wait_until, write, Running};

/// The numbers each connection delivered, in the order the connections were accepted.
type PerConnection = Arc<Mutex<Vec<Vec<u64>>>>;

/// A TLS downstream whose certificate (and the authority it requires client certificates
/// from) can be changed while it runs: each connection handshakes with the configuration in
/// force when it is accepted. Returns its port, the configuration, and what each connection
/// delivered.
fn rotating_downstream(
    initial: Arc<rustls::ServerConfig>,
) -> (u16, Arc<Mutex<Arc<rustls::ServerConfig>>>, PerConnection) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(Mutex::new(initial));
    let received = PerConnection::default();
    let (current, shared) = (Arc::clone(&config), Arc::clone(&received));
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let config = Arc::clone(&current.lock().unwrap());
            let received = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut sock).is_err() {
                        return;
                    }
                }
                let index = {
                    let mut all = received.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let mut stream = rustls::StreamOwned::new(conn, sock);
                let (mut partial, mut chunk) = (Vec::new(), [0u8; 8192]);
                while let Ok(n @ 1..) = stream.read(&mut chunk) {
                    partial.extend_from_slice(&chunk[..n]);
                    let mut lines = Vec::new();
                    take_lines(&mut partial, &mut lines);
                    received.lock().unwrap()[index].extend(lines);
                }
            });
        }
    });
    (port, config, received)
}

/// Copies `from` over `to` (a certificate renewed in place).
fn renew(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn sighup_after_a_tls_outputs_certificates_were_renewed_reconnects_with_the_new_ones() {
    let dir = temp_dir("tls-renew-output");
    let (old, new): (Pki, Pki) = {
        std::fs::create_dir_all(dir.join("old")).unwrap();
        std::fs::create_dir_all(dir.join("new")).unwrap();
        (pki(&dir.join("old")), pki(&dir.join("new")))
    };
    // The output's files, renewed in place later.
    renew(&old.ca, &dir.join("ca.pem"));
    renew(&old.client_cert, &dir.join("client.pem"));
    renew(&old.client_key, &dir.join("client.key"));
    let (port, peer_config, received) = rotating_downstream(server_config(&old));
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs:\n  default:\n    type: tcp\n    address: 'localhost:{port}'\n    \
             tls: {{ ca_file: ca.pem, cert_file: client.pem, key_file: client.key }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, 500)).unwrap();
    let total = || received.lock().unwrap().concat().len();
    assert!(wait_until(WAIT, || total() == 500), "{}", egw.stderr());
    // The peer and egresswatch both move to certificates from a new authority.
    *peer_config.lock().unwrap() = server_config(&new);
    renew(&new.ca, &dir.join("ca.pem"));
    renew(&new.client_cert, &dir.join("client.pem"));
    renew(&new.client_key, &dir.join("client.key"));
    egw.signal("HUP");
    assert!(
        wait_until(WAIT, || egw.stderr().contains("configuration reloaded")),
        "{}",
        egw.stderr()
    );
    conn.write_all(&numbered(500, 1000)).unwrap();
    drop(conn);
    assert!(
        wait_until(WAIT, || total() == 1000),
        "{} of 1000 lines arrived\n{}",
        total(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let connections = received.lock().unwrap().clone();
    // The lines after the reload came over a new connection, made with the new certificates
    // (the peer accepts no other by then); none lost, none twice, in order.
    assert_eq!(connections.len(), 2, "{connections:?}\n{}", egw.stderr());
    assert!(connections[1].iter().copied().eq(500..1000));
    assert!(connections.concat().into_iter().eq(0..1000));
}

#[test]
fn sighup_after_a_tls_inputs_certificate_was_renewed_serves_the_new_one() {
    let dir = temp_dir("tls-renew-input");
    let (old, new): (Pki, Pki) = {
        std::fs::create_dir_all(dir.join("old")).unwrap();
        std::fs::create_dir_all(dir.join("new")).unwrap();
        (pki(&dir.join("old")), pki(&dir.join("new")))
    };
    renew(&old.server_cert, &dir.join("server.pem"));
    renew(&old.server_key, &dir.join("server.key"));
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input:\n  type: tcp\n  address: '{input}'\n  \
             tls: {{ cert_file: server.pem, key_file: server.key }}\n\
             outputs: {{ default: {{ type: file, path: out.ndjson }} }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let output = dir.join("out.ndjson");
    crate::util::connect_when_ready(&input);
    let mut before = tls_sender(&input, client_config(&old, false));
    before.write_all(&numbered(0, 100)).unwrap();
    before.flush().unwrap();
    assert!(
        wait_until(WAIT, || count_lines(&output) == 100),
        "{}",
        egw.stderr()
    );
    renew(&new.server_cert, &dir.join("server.pem"));
    renew(&new.server_key, &dir.join("server.key"));
    egw.signal("HUP");
    assert!(
        wait_until(WAIT, || egw.stderr().contains("configuration reloaded")),
        "{}",
        egw.stderr()
    );
    // The connection made before goes on until it is drained; a sender that trusts only the
    // new authority is served.
    before.write_all(&numbered(100, 200)).unwrap();
    before.flush().unwrap();
    let mut after = tls_sender(&input, client_config(&new, false));
    after.write_all(&numbered(200, 300)).unwrap();
    after.flush().unwrap();
    assert!(
        wait_until(WAIT, || count_lines(&output) == 300),
        "{} of 300 lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    drop((before, after));
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}
