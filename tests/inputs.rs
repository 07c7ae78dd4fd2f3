//! Inputs that cannot starve each other or lose what they read (issue #11): a sender that
//! stalls inside a long line, idle connections and the connection limit, draining at SIGTERM,
//! reloading at SIGHUP. Loopback only, ports picked by binding port 0, every wait bounded.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::{
    connect_when_ready, count_lines, free_address, temp_dir, wait_until, workspace, write, Running,
};

const EXIT: Duration = Duration::from_secs(60);

/// How long well-behaved lines may take to arrive; far more than they need (milliseconds), far
/// less than forever.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A run reading TCP into `out.ndjson` with the repository's rules; `extra` adds settings.
fn start(dir: &Path, extra: &str) -> (Running, String, PathBuf) {
    let input = free_address();
    let out = dir.join("out.ndjson");
    let config = write(
        dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\n\
             outputs: {{ default: {{ type: file, path: '{}' }} }}\n\
             detector: {{ rules: ['{}'] }}\n{extra}",
            out.display(),
            workspace().join("rules").display(),
        ),
    );
    (Running::start(dir, &config), input, out)
}

/// `count` numbered JSON lines, `{"conn":"NAME","n":N}`.
fn numbered(name: &str, count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|n| format!("{{\"conn\":\"{name}\",\"n\":{n}}}\n").into_bytes())
        .collect()
}

/// The `n` of each line of `name` in `out`, in the order they arrived.
fn arrived(out: &Path, name: &str) -> Vec<u64> {
    let marker = format!("{{\"conn\":\"{name}\",\"n\":");
    std::fs::read(out)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let rest = std::str::from_utf8(line).ok()?.strip_prefix(&marker)?;
            rest.strip_suffix('}')?.parse().ok()
        })
        .collect()
}

/// While one sender has begun a line over `max_line_bytes` and then goes quiet (or never ends
/// it), a second connection's 1,000 lines all arrive, in order. Before: the first sender held
/// the input's order lock while its line streamed, through its read timeouts, so none did.
fn a_sender_inside_a_long_line_does_not_hold_back_another(dir: &Path, endless: bool) {
    let (mut egw, input, out) = start(dir, "batch: { max_line_bytes: 1000 }\n");
    let mut long = connect_when_ready(&input);
    let head = b"{\"long\":\"".to_vec();
    long.write_all(&head).unwrap();
    long.write_all(&vec![b'x'; 300_000]).unwrap();
    let sent_long = Arc::new(std::sync::Mutex::new(300_000usize));
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = endless.then(|| {
        let mut conn = long.try_clone().unwrap();
        let stop = Arc::clone(&stop_writing);
        let sent = Arc::clone(&sent_long);
        std::thread::spawn(move || {
            // An endless line, at a pace that keeps the test's files small.
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&[b'y'; 16 * 1024]).unwrap();
                *sent.lock().unwrap() += 16 * 1024;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    });
    // Let the long line reach the reader before the other connection starts.
    std::thread::sleep(Duration::from_millis(300));

    let mut other = TcpStream::connect(&input).unwrap();
    other.write_all(&numbered("other", 1000)).unwrap();
    let all_arrived = wait_until(PROMPTLY, || arrived(&out, "other").len() == 1000);
    stop_writing.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    assert!(
        all_arrived,
        "{} of the other connection's 1000 lines arrived while a sender sat inside a long line\n{}",
        arrived(&out, "other").len(),
        egw.stderr()
    );
    assert_eq!(arrived(&out, "other"), (0..1000).collect::<Vec<u64>>());

    // The long line, once ended, arrives whole, as one line.
    long.write_all(b"\"}\n").unwrap();
    drop(long);
    drop(other);
    assert!(
        wait_until(PROMPTLY, || count_lines(&out) == 1001),
        "{}",
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let text = std::fs::read(&out).unwrap();
    let long_line = text
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(&head))
        .expect("the long line arrived");
    assert_eq!(long_line.len(), head.len() + *sent_long.lock().unwrap() + 2);
    assert!(
        egw.stderr().contains("oversize=1"),
        "counted as oversize\n{}",
        egw.stderr()
    );
}

#[test]
fn a_sender_quiet_inside_a_long_line_does_not_hold_back_other_connections() {
    a_sender_inside_a_long_line_does_not_hold_back_another(&temp_dir("inputs-stall-quiet"), false);
}

#[test]
fn a_sender_of_an_endless_line_does_not_hold_back_other_connections() {
    a_sender_inside_a_long_line_does_not_hold_back_another(&temp_dir("inputs-stall-endless"), true);
}
