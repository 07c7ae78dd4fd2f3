//! TLS on the TCP input and the TCP output (issue #11), with certificates made in the test
//! (rcgen) and peers written here with rustls: a round trip through both, senders refused at
//! the input (no client certificate, plain text), an output that does not trust its peer's
//! certificate, connection limits and the shutdown drain under TLS, what the TCP output writes
//! again when a TLS peer resets mid-stream, and the warning for an input exposed without TLS.
//! Loopback only (the warning test binds the wildcard address), every wait bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::util::{
    count_lines, free_address, temp_dir, wait_until, wait_until_read, write, Running,
};

mod peers;
mod rotate;

use peers::{
    client_config, detector, handshake_failures, numbered, pki, refused, resetting_downstream,
    server_config, tls_downstream, tls_sender,
};

const EXIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn tls_round_trip_through_a_tcp_input_and_a_tcp_output_with_client_certificates() {
    let dir = temp_dir("tls-round-trip");
    let pki = pki(&dir);
    let (down_port, received, handshakes) = tls_downstream(server_config(&pki));
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "metrics: {{ address: '{metrics}' }}\n\
             input:\n  type: tcp\n  address: '{input}'\n  \
             tls: {{ cert_file: server.pem, key_file: server.key, client_ca_file: ca.pem }}\n\
             outputs:\n  default:\n    type: tcp\n    address: 'localhost:{down_port}'\n    \
             tls: {{ ca_file: ca.pem, cert_file: client.pem, key_file: client.key }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(
        wait_until(WAIT, || egw.stderr().contains("egresswatch started")),
        "{}",
        egw.stderr()
    );
    assert!(egw.stderr().contains("tcp+tls://"), "{}", egw.stderr());
    // A client that connects and never starts its handshake holds only its own slot.
    let stalled = TcpStream::connect(&input).unwrap();

    // A sender with its certificate: everything arrives, in order, through both TLS hops.
    let mut good = tls_sender(&input, client_config(&pki, true));
    good.write_all(&numbered(0, 5_000)).unwrap();
    good.flush().unwrap();
    assert!(
        wait_until(WAIT, || received.lock().unwrap().len() >= 5_000),
        "{} of 5000 lines arrived\n{}",
        received.lock().unwrap().len(),
        egw.stderr()
    );

    // A sender without a certificate, and one speaking plain text, are refused; nothing of
    // theirs arrives.
    let mut anonymous = tls_sender(&input, client_config(&pki, false));
    assert!(
        refused(&mut anonymous),
        "a sender without a certificate got in"
    );
    let mut plain = TcpStream::connect(&input).unwrap();
    let _ = plain.write_all(b"{\"n\":888888}\n");
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Its bytes are not a TLS handshake: it gets an alert (or nothing) and the connection ends.
    let mut buf = [0u8; 256];
    let mut ended = false;
    for _ in 0..4 {
        if matches!(plain.read(&mut buf), Ok(0) | Err(_)) {
            ended = true;
            break;
        }
    }
    assert!(ended, "the plain-text sender's connection stayed open");
    assert!(
        wait_until(WAIT, || egw
            .stderr()
            .matches("its TLS handshake failed")
            .count()
            >= 2),
        "{}",
        egw.stderr()
    );
    let refusals = || handshake_failures(&metrics);
    assert!(
        wait_until(WAIT, || refusals() == Some(2.0)),
        "{:?}",
        refusals()
    );

    // The shutdown drain under TLS: what the good sender writes after SIGTERM, while it keeps
    // sending, is still read and delivered.
    good.write_all(&numbered(5_000, 6_000)).unwrap();
    good.flush().unwrap();
    egw.terminate();
    good.write_all(&numbered(6_000, 7_000)).unwrap();
    good.flush().unwrap();
    good.conn.send_close_notify();
    let _ = good.flush();
    let status = egw.wait(EXIT);
    drop(stalled);
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert!(wait_until(WAIT, || received.lock().unwrap().len() >= 7_000));
    let received = received.lock().unwrap().clone();
    let expected: Vec<u64> = (0..7_000).collect();
    assert_eq!(received, expected, "every line once, in order\n{err}");
    assert_eq!(
        handshakes.load(Ordering::Relaxed),
        1,
        "one TLS connection downstream\n{err}"
    );
}

#[test]
fn max_connections_and_the_idle_timeout_hold_under_tls() {
    let dir = temp_dir("tls-limits");
    let pki = pki(&dir);
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input:\n  type: tcp\n  address: '{input}'\n  max_connections: 1\n  \
             idle_timeout_secs: 2\n  tls: {{ cert_file: server.pem, key_file: server.key }}\n\
             outputs:\n  default: {{ type: file, path: out.ndjson }}\n{}",
            detector()
        ),
    );
    let out = dir.join("out.ndjson");
    let mut egw = Running::start(&dir, &config);
    assert!(wait_until(WAIT, || egw
        .stderr()
        .contains("egresswatch started")));
    // The only slot, kept busy: a line every 100 ms until told to stop.
    let first = Arc::new(std::sync::Mutex::new(tls_sender(
        &input,
        client_config(&pki, false),
    )));
    let busy = Arc::new(AtomicBool::new(true));
    let keeper = {
        let (first, busy) = (Arc::clone(&first), Arc::clone(&busy));
        std::thread::spawn(move || {
            let mut n = 0;
            while busy.load(Ordering::Relaxed) {
                let mut first = first.lock().unwrap();
                first.write_all(&numbered(n, n + 1)).unwrap();
                first.flush().unwrap();
                n += 1;
                drop(first);
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        })
    };
    assert!(wait_until(WAIT, || count_lines(&out) >= 1));
    // A second connection is reset before any handshake.
    let mut second = tls_sender(&input, client_config(&pki, false));
    assert!(
        refused(&mut second),
        "a connection beyond max_connections got in"
    );
    assert!(
        wait_until(WAIT, || egw.stderr().contains("max_connections are open")),
        "{}",
        egw.stderr()
    );
    // Once the first goes quiet, it is closed at the idle timeout...
    busy.store(false, Ordering::Relaxed);
    let sent = keeper.join().unwrap();
    let mut first = Arc::try_unwrap(first).ok().unwrap().into_inner().unwrap();
    first
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(first.read(&mut buf), Ok(0) | Err(_)),
        "an idle TLS connection was not closed"
    );
    // ...and the slot serves the next sender.
    let mut third = tls_sender(&input, client_config(&pki, false));
    third.write_all(&numbered(sent, sent + 1)).unwrap();
    third.flush().unwrap();
    assert!(
        wait_until(WAIT, || count_lines(&out) == (sent + 1) as usize),
        "{} of {} lines\n{}",
        count_lines(&out),
        sent + 1,
        egw.stderr()
    );
    drop(third);
    egw.terminate();
    let status = egw.wait(EXIT);
    assert!(status.success(), "{}", egw.stderr());
}

#[test]
fn a_tcp_output_refuses_a_peer_whose_certificate_its_ca_file_does_not_trust() {
    let dir = temp_dir("tls-wrong-ca");
    let pki = pki(&dir);
    let (down_port, received, handshakes) = tls_downstream(server_config(&pki));
    let input = free_address();
    let metrics = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nshutdown_timeout_secs: 2\n\
             metrics: {{ address: '{metrics}' }}\n\
             outputs:\n  default:\n    type: tcp\n    address: 'localhost:{down_port}'\n    \
             tls: {{ ca_file: other-ca.pem, cert_file: client.pem, key_file: client.key }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, 10)).unwrap();
    drop(conn);
    assert!(
        wait_until(WAIT, || egw.stderr().contains("invalid peer certificate")),
        "{}",
        egw.stderr()
    );
    // The lines are read before the stop (a stop before the connection is accepted resets it).
    assert!(wait_until_read(&metrics, 10), "the 10 lines were not read");
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(!status.success(), "{err}");
    // The error names the output, what failed and what the certificate was checked against.
    let named = err.lines().any(|l| {
        l.contains("outputs.default")
            && l.contains("TLS handshake failed: invalid peer certificate")
            && l.contains("outputs.default.tls.ca_file")
            && l.contains("other-ca.pem")
    });
    assert!(named, "{err}");
    assert!(received.lock().unwrap().is_empty());
    assert_eq!(handshakes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_tls_tcp_output_loses_nothing_its_peer_did_not_take_when_the_peer_resets_mid_stream() {
    let dir = temp_dir("tls-resets");
    let pki = pki(&dir);
    let downstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_port = downstream.local_addr().unwrap().port();
    // A small receive queue: the sender is stuck soon after the peer stops reading.
    let small: libc::c_int = 16 * 1024;
    // SAFETY: SO_RCVBUF takes an int; the listener is open.
    let r = unsafe {
        libc::setsockopt(
            downstream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    const TOTAL: u64 = 200_000;
    const BREAKS: usize = 5;
    let seen_last = Arc::new(AtomicBool::new(false));
    let collector = resetting_downstream(
        downstream,
        server_config(&pki),
        25_000,
        BREAKS,
        TOTAL - 1,
        Arc::clone(&seen_last),
    );
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs:\n  default:\n    type: tcp\n    address: 'localhost:{down_port}'\n    \
             tls: {{ ca_file: ca.pem, cert_file: client.pem, key_file: client.key }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, TOTAL)).unwrap();
    drop(conn);
    assert!(
        wait_until(Duration::from_secs(240), || seen_last
            .load(Ordering::Relaxed)),
        "the last line never arrived\n{}",
        egw.stderr()
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    let connections = collector.join().unwrap();
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(connections.len(), BREAKS + 1);
    let (lost, repeats) = crate::util::tally(&connections, TOTAL);
    eprintln!(
        "tls tcp output under {BREAKS} resets mid-stream: {lost} lines lost, {repeats} repeated"
    );
    assert_eq!(
        lost, 0,
        "lines the peer never had were not written again\n{err}"
    );
    assert!(err.contains(&format!("reconnects={BREAKS}")), "{err}");
}

/// Starts a run whose input is `input` (YAML flow mapping), waits until it has started, stops
/// it, and returns what it printed.
fn started_log(dir: &Path, input: &str) -> String {
    let config = write(
        dir,
        "c.yaml",
        format!(
            "input: {input}\noutputs:\n  default: {{ type: file, path: out.ndjson }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(dir, &config);
    assert!(
        wait_until(WAIT, || egw.stderr().contains("egresswatch started")),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(count_lines(&dir.join("out.ndjson")), 0);
    err
}

#[test]
fn an_input_listening_beyond_loopback_without_client_certificates_is_warned_about() {
    let dir = temp_dir("tls-exposed");
    let _pki = pki(&dir);
    let warning = "input listens beyond loopback without client certificates";
    let port = |a: String| a.rsplit_once(':').unwrap().1.to_owned();
    let tls = "tls: { cert_file: server.pem, key_file: server.key }";
    let mutual = "tls: { cert_file: server.pem, key_file: server.key, client_ca_file: ca.pem }";
    let exposed = format!(
        "{{ type: tcp, address: '0.0.0.0:{}' }}",
        port(free_address())
    );
    let err = started_log(&dir, &exposed);
    let line = err.lines().find(|l| l.contains(warning));
    assert!(
        line.is_some_and(|l| l.contains("WARN") && l.contains("0.0.0.0:")),
        "{err}"
    );
    // TLS alone encrypts but authenticates nobody: still warned.
    for warned in [
        format!(
            "{{ type: http, address: '0.0.0.0:{}' }}",
            port(free_address())
        ),
        format!(
            "{{ type: tcp, address: '0.0.0.0:{}', {tls} }}",
            port(free_address())
        ),
        format!(
            "{{ type: http, address: '0.0.0.0:{}', {tls} }}",
            port(free_address())
        ),
    ] {
        let err = started_log(&dir, &warned);
        assert!(err.contains(warning), "{warned}\n{err}");
    }
    for quiet in [
        format!(
            "{{ type: tcp, address: '0.0.0.0:{}', {mutual} }}",
            port(free_address())
        ),
        format!(
            "{{ type: http, address: '0.0.0.0:{}', {mutual} }}",
            port(free_address())
        ),
        format!("{{ type: tcp, address: '{}' }}", free_address()),
        format!(
            "{{ type: tcp, address: 'localhost:{}' }}",
            port(free_address())
        ),
    ] {
        let err = started_log(&dir, &quiet);
        assert!(!err.contains(warning), "{quiet}\n{err}");
    }
}

#[test]
fn a_client_dribbling_its_handshake_is_refused_at_the_handshake_limit() {
    let dir = temp_dir("tls-dribble");
    let pki = pki(&dir);
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "metrics: {{ address: '{metrics}' }}\n\
             input:\n  type: tcp\n  address: '{input}'\n  \
             tls: {{ cert_file: server.pem, key_file: server.key }}\n\
             outputs:\n  default: {{ type: file, path: out.ndjson }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(wait_until(WAIT, || egw
        .stderr()
        .contains("egresswatch started")));
    // A real ClientHello, sent one byte every 60 ms: always within the 100 ms a read waits,
    // never finished within the handshake's 10 s limit (at most 167 bytes by then).
    let mut hello = Vec::new();
    let name = ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(client_config(&pki, false), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    assert!(hello.len() > 200, "{} bytes", hello.len());
    let mut sock = TcpStream::connect(&input).unwrap();
    let mut sent = 0;
    for byte in &hello {
        if sock.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(
        sent < hello.len(),
        "the input waited for all {} bytes of a dribbled ClientHello",
        hello.len()
    );
    let refusals = || handshake_failures(&metrics);
    assert!(
        wait_until(WAIT, || refusals() == Some(1.0)),
        "{:?}",
        refusals()
    );
    assert!(
        egw.stderr()
            .contains("TLS handshake failed: not finished in time"),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

#[test]
fn a_tcp_output_checks_the_peer_certificate_against_tls_server_name() {
    let dir = temp_dir("tls-server-name");
    // The peer's certificate names only `siem.example`; it is reached at 127.0.0.1.
    let pki = peers::pki_for(&dir, &["siem.example"]);
    let (down_port, received, handshakes) = tls_downstream(server_config(&pki));
    let (input, metrics) = (free_address(), free_address());
    let settings = |server_name: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nshutdown_timeout_secs: 1\n\
             metrics: {{ address: '{metrics}' }}\n\
             outputs:\n  default:\n    type: tcp\n    address: '127.0.0.1:{down_port}'\n    \
             tls: {{ ca_file: ca.pem, cert_file: client.pem, key_file: client.key{server_name} \
             }}\n{}",
            detector()
        )
    };
    // Without `server_name` the certificate is checked against the address's host, and refused.
    let config = write(&dir, "c.yaml", settings(""));
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, 10)).unwrap();
    drop(conn);
    assert!(
        wait_until(WAIT, || egw.stderr().contains("invalid peer certificate")),
        "{}",
        egw.stderr()
    );
    assert!(egw.stderr().contains("for `127.0.0.1`"), "{}", egw.stderr());
    // The lines are read before the stop (a stop before the connection is accepted resets it).
    assert!(wait_until_read(&metrics, 10), "the 10 lines were not read");
    egw.terminate();
    assert!(!egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(handshakes.load(Ordering::Relaxed), 0);
    // With it, the same peer is accepted.
    let config = write(&dir, "c.yaml", settings(", server_name: siem.example"));
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, 100)).unwrap();
    drop(conn);
    assert!(
        wait_until(WAIT, || received.lock().unwrap().len() == 100),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(handshakes.load(Ordering::Relaxed), 1);
    // A name that cannot be one is refused when the configuration is checked.
    let bad = write(&dir, "bad.yaml", settings(", server_name: 'not a name!'"));
    let checked = crate::util::run(&["validate", "--config", bad.to_str().unwrap()], b"");
    assert!(!checked.status.success());
    assert!(
        crate::util::stderr(&checked).contains("outputs.default.tls.server_name: `not a name!`"),
        "{}",
        crate::util::stderr(&checked)
    );
}

#[test]
fn a_tcp_output_handshake_with_a_peer_that_never_answers_ends_at_the_shutdown_deadline() {
    let dir = temp_dir("tls-silent-peer");
    pki(&dir);
    // A peer that accepts connections and never says anything (kept open until the test ends).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for sock in silent.incoming().take(4) {
            open.push(sock);
        }
        open
    });
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nshutdown_timeout_secs: 1\n\
             metrics: {{ address: '{metrics}' }}\n\
             outputs:\n  default:\n    type: tcp\n    address: 'localhost:{port}'\n    \
             tls: {{ ca_file: ca.pem }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = crate::util::connect_when_ready(&input);
    conn.write_all(&numbered(0, 10)).unwrap();
    drop(conn);
    // The lines are read before the stop (a stop before the connection is accepted resets it).
    assert!(wait_until_read(&metrics, 10), "the 10 lines were not read");
    egw.terminate();
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(!status.success(), "{err}");
    // It gave up because the deadline passed during the handshake (the probe at start may
    // also have met the handshake's own 10 s limit on a slow machine: not asserted).
    assert!(
        err.contains("TLS handshake: the delivery deadline passed before the server answered"),
        "{err}"
    );
    drop(held);
}

#[test]
fn an_https_client_that_never_finishes_its_handshake_is_closed_at_idle_timeout_secs() {
    let dir = temp_dir("tls-https-stalled");
    let pki = pki(&dir);
    let (input, metrics) = (free_address(), free_address());
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "metrics: {{ address: '{metrics}' }}\n\
             input:\n  type: http\n  address: '{input}'\n  idle_timeout_secs: 1\n  \
             tls: {{ cert_file: server.pem, key_file: server.key }}\n\
             outputs: {{ default: {{ type: file, path: out.ndjson }} }}\n{}",
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut stalled = crate::util::connect_when_ready(&input);
    // Half a ClientHello's worth of nothing: the client connects and never finishes.
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    // Closed at 1 s; the 30 s default would keep it open past this read's 20 s timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = match stalled.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !crate::util::timed_out(&e),
    };
    assert!(
        closed,
        "the stalled handshake was not ended\n{}",
        egw.stderr()
    );
    assert!(
        wait_until(WAIT, || handshake_failures(&metrics) == Some(1.0)),
        "{:?}\n{}",
        handshake_failures(&metrics),
        egw.stderr()
    );
    // A client that completes its handshake is served meanwhile.
    let mut good = tls_sender(&input, client_config(&pki, false));
    good.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
          Content-Length: 8\r\nConnection: close\r\n\r\n{\"n\":1}\n",
    )
    .unwrap();
    good.flush().unwrap();
    let mut answer = String::new();
    let _ = good.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(count_lines(&dir.join("out.ndjson")), 1);
}
