//! Helpers shared by the integration tests: building the plugins, running the program, temp
//! directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The `egresswatch` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_egresswatch"))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-shim has a parent")
        .to_owned()
}

/// The directory the binary (and so the default plugin) lives in.
pub fn target_dir() -> PathBuf {
    bin().parent().expect("binary has a directory").to_owned()
}

/// Builds the real plugin and the test plugins once per test run, with the same profile as the
/// binary under test, so that no manual build step is needed.
pub fn build_plugins() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace()).args([
            "build",
            "--quiet",
            "-p",
            "egresswatch-plugin",
            "-p",
            "egresswatch-test-old-abi",
            "-p",
            "egresswatch-test-mismatch",
            "-p",
            "egresswatch-test-older",
            "-p",
            "egresswatch-test-unstreamed",
            "-p",
            "egresswatch-test-faulty",
            "-p",
            "egresswatch-test-no-root",
        ]);
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the plugins failed");
    });
}

/// Path of a library built in this workspace, e.g. `library("egresswatch_plugin")`.
pub fn library(name: &str) -> PathBuf {
    build_plugins();
    target_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// A fresh, empty directory for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Runs `egresswatch` with `args`, feeding `stdin`, after making sure the plugins are built.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_env(args, stdin, &[])
}

/// Like [`run`], with extra environment variables.
pub fn run_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin());
    command.args(args).envs(env.iter().copied());
    run_command(command, stdin)
}

/// Runs `command` (an `egresswatch` command line) as [`run`] does: plugins built, `stdin` fed,
/// output collected.
pub fn run_command(mut command: Command, stdin: &[u8]) -> Output {
    build_plugins();
    let mut child = command
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("egresswatch starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The program may exit early (on a load error) and close its stdin.
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().expect("egresswatch runs");
    writer.join().expect("stdin writer");
    output
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A socket bound by `bind` to a port no other call in this test run was given, and its port:
/// the ports [`free_address`] and [`refusing_address`] gave are remembered, as the kernel hands
/// a port let go out again (over a thousand binds to port 0, about one in fifteen returns a port
/// it gave before). Those bound to a port given before stay bound until a new one is found, so
/// the kernel moves on.
fn unused_port<T>(bind: impl Fn() -> (u16, T)) -> (u16, T) {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut refused = Vec::new();
    loop {
        let (port, socket) = bind();
        let first = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port);
        if first {
            return (port, socket);
        }
        refused.push(socket);
    }
}

/// A loopback address nobody listens on yet, and that no other call in this test run returned:
/// binds port 0, notes the port, and lets it go. Two addresses of one test (its input and its
/// metrics endpoint), or of two tests of this binary running side by side, never share a port;
/// a bind elsewhere (another process, or a test's own bind to port 0) still can take it.
pub fn free_address() -> String {
    let (port, _listener) = unused_port(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        (
            listener.local_addr().expect("local address").port(),
            listener,
        )
    });
    format!("127.0.0.1:{port}")
}

#[test]
fn free_address_never_returns_a_port_twice() {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let address = free_address();
        assert!(seen.insert(address.clone()), "{address} returned twice");
    }
}

/// A loopback address that refuses every connection for as long as the returned socket lives:
/// bound without listening, and without `SO_REUSEADDR`, so that no other bind gets its port
/// meanwhile, and never a port [`free_address`] gave. The address of a peer that stays down: a
/// port merely let go can be taken by another process's bind, or a test's own bind to port 0,
/// and then accepts what an output holds for the "down" peer.
pub fn refusing_address() -> (String, std::os::fd::OwnedFd) {
    let (port, socket) = unused_port(|| bound_not_listening(0).expect("bind 127.0.0.1:0"));
    (format!("127.0.0.1:{port}"), socket)
}

/// A loopback socket bound to `port` (0: one the kernel picks) without `SO_REUSEADDR`, not
/// listening: the port and the socket.
fn bound_not_listening(port: u16) -> std::io::Result<(u16, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let last_error = std::io::Error::last_os_error;
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` and `len` are a
    // `sockaddr_in` and its size, valid for the duration of each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_error());
        }
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, std::ptr::from_ref(&addr).cast(), len) != 0 {
            return Err(last_error());
        }
        if libc::getsockname(fd, std::ptr::from_mut(&mut addr).cast(), &mut len) != 0 {
            return Err(last_error());
        }
        Ok((u16::from_be(addr.sin_port), socket))
    }
}

#[test]
fn a_refusing_address_refuses_connections_and_no_bind_takes_its_port_while_held() {
    use std::io::ErrorKind;
    let (address, _held) = refusing_address();
    let connect = std::net::TcpStream::connect(&address).map(drop);
    assert_eq!(connect.unwrap_err().kind(), ErrorKind::ConnectionRefused);
    // (std's bind sets SO_REUSEADDR, as the program's listeners do.)
    let bind = std::net::TcpListener::bind(&address).map(drop);
    assert_eq!(bind.unwrap_err().kind(), ErrorKind::AddrInUse);
}

/// Stops `listener` listening but keeps its port bound, for a peer that is down for a while:
/// connections are refused (those not yet accepted are reset), and the kernel gives the port to
/// no bind to port 0 and no outgoing connection meanwhile, as it could once a dropped listener
/// let it go. Linux: connect(2) to `AF_UNSPEC` ends a socket's listening, not its bind, when it
/// was bound to its port by number (bound to port 0, it lets the port go: bind to a
/// [`free_address`]).
pub fn stop_listening(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: a `sockaddr` of this size, valid during the call; the listener is open.
    let r = unsafe {
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
        libc::connect(
            listener.as_raw_fd(),
            std::ptr::from_ref(&unspec).cast(),
            len,
        )
    };
    assert_eq!(
        r,
        0,
        "connect AF_UNSPEC: {}",
        std::io::Error::last_os_error()
    );
}

/// Makes a listener [`stop_listening`] stopped listen again, on the same port.
pub fn listen_again(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on an open socket.
    let r = unsafe { libc::listen(listener.as_raw_fd(), 128) };
    assert_eq!(r, 0, "listen: {}", std::io::Error::last_os_error());
}

#[test]
fn a_listener_stopped_listening_refuses_holds_its_port_and_listens_again() {
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind(free_address()).unwrap();
    let address = listener.local_addr().unwrap();
    let accepts = |listener: &TcpListener| {
        let client = TcpStream::connect(address).unwrap();
        let (conn, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        (client, conn)
    };
    // A connection it never accepted is reset.
    let _waiting = TcpStream::connect(address).unwrap();
    stop_listening(&listener);
    let connect = TcpStream::connect(address).map(drop);
    assert_eq!(connect.unwrap_err().kind(), ErrorKind::ConnectionRefused);
    // Still bound: a bind without SO_REUSEADDR cannot have the port. (Checked before any
    // connection on the port is in TIME_WAIT, which would refuse that bind too.)
    let bind = bound_not_listening(address.port()).map(drop);
    assert_eq!(bind.unwrap_err().kind(), ErrorKind::AddrInUse);
    listen_again(&listener);
    // It listens again, also with a connection it closed first in TIME_WAIT on its port.
    let (client, conn) = accepts(&listener);
    drop(conn);
    drop(client);
    stop_listening(&listener);
    listen_again(&listener);
    accepts(&listener);
}

/// Closes a connection with a reset (RST) instead of an orderly close: SO_LINGER on, zero
/// seconds, then close(2).
pub fn close_with_reset(conn: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a `linger` struct of this size; the socket is open until `conn`
    // is dropped below.
    let r = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(conn);
}

/// Whether a read failed only because its timeout passed (`WouldBlock` or `TimedOut`, as the
/// platform reports it): the caller reads again.
pub fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    cond()
}

/// A running `egresswatch run`, its standard error going to `dir/stderr.log`.
pub struct Running {
    /// The process.
    pub child: std::process::Child,
    /// Where its standard error goes.
    pub stderr_path: PathBuf,
}

impl Running {
    /// Starts `egresswatch run --config CONFIG` with standard input and output closed.
    pub fn start(dir: &Path, config: &Path) -> Running {
        build_plugins();
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("egresswatch starts");
        Running { child, stderr_path }
    }

    /// Its standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`; kills it and panics if it does not.
    pub fn wait(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("egresswatch did not exit in time:\n{}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to `address` once egresswatch listens there (waits up to 30 s).
pub fn connect_when_ready(address: &str) -> std::net::TcpStream {
    let mut conn = None;
    assert!(
        wait_until(std::time::Duration::from_secs(30), || {
            conn = std::net::TcpStream::connect(address).ok();
            conn.is_some()
        }),
        "egresswatch did not listen on {address}"
    );
    conn.unwrap()
}

/// Lines in the file at `path` (0 when it does not exist yet).
pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// `GET path` from an HTTP server at `address`: the whole response, or "" when it cannot be
/// reached.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::Read;
    let Ok(mut conn) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// Reads one figure (`name{labels} value`) from a metrics page.
pub fn figure(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// What a downstream received of lines numbered `0..total`, one list per connection: asserts
/// each connection's order (increasing) and that nothing outside the range arrived; returns
/// how many were lost and how many arrived more than once.
pub fn tally(connections: &[Vec<u64>], total: u64) -> (u64, usize) {
    for (i, lines) in connections.iter().enumerate() {
        assert!(
            lines.windows(2).all(|w| w[0] < w[1]),
            "connection {i}: lines out of order"
        );
    }
    let all: Vec<u64> = connections.iter().flatten().copied().collect();
    let distinct: std::collections::BTreeSet<u64> = all.iter().copied().collect();
    assert!(distinct.iter().all(|&n| n < total), "a line out of range");
    (total - distinct.len() as u64, all.len() - distinct.len())
}

/// Waits (up to 60 s) until the engine behind the metrics endpoint at `metrics` has read
/// `lines` lines (`egresswatch_events_in_total`); whether it did. A stop signal sent before
/// the input accepted a connection resets it, so tests that stop early wait for this first.
pub fn wait_until_read(metrics: &str, lines: u64) -> bool {
    wait_until(std::time::Duration::from_secs(60), || {
        figure(
            &http_get(metrics, "/metrics"),
            "egresswatch_events_in_total",
        ) == Some(lines as f64)
    })
}
