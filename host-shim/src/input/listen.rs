//! TCP and Unix listeners that feed the engine.
//!
//! A listener thread accepts connections (at most `max_connections` at once; more wait in the
//! kernel's backlog) and starts a reader thread per connection, which reads with a short timeout
//! so that it notices a stop signal, and sends its lines into the engine's bounded [`Feed`]. A
//! connection that opens and closes without data (Vector's health check) is simply finished. On
//! a stop signal the listener stops accepting and each reader hands over what it has read,
//! including an unterminated last line, and ends.

use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use egresswatch_plugin_api::files::describe_type;

use super::{read_lines, Feed, HoldBudget, Mode, OVERSIZE_HOLD_BYTES};
use crate::config::InputConfig;

/// How long a connection's reader waits for data before checking the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// How often the listener looks for new connections (and the stop flag).
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Counters of an input listener, for metrics.
#[derive(Debug, Default)]
pub(crate) struct InputStats {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections accepted so far.
    pub(crate) total: AtomicU64,
}

/// A bound listener.
pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixInput),
}

/// Binds a TCP listener, naming the config field on failure.
fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("input.address: cannot listen on {address}: {e}"),
        )
    })
}

/// A bound Unix socket listener and the identity of the socket file it created, so that only
/// that file is removed when the input stops.
pub(crate) struct UnixInput {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file as bound.
    id: Option<(u64, u64)>,
}

/// Binds a Unix listener at `path`. A socket file nobody listens on (left by a crash) is
/// removed first; anything else at that path (a regular file, a folder, a symlink, a FIFO, or a
/// socket someone listens on) is an error, and is left alone.
fn bind_unix(path: &Path) -> io::Result<UnixInput> {
    let field = |e: io::Error, what: &str| {
        io::Error::new(
            e.kind(),
            format!("input.path: cannot {what} {}: {e}", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "input.path: another process is listening on {}",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| field(e, "remove stale socket"))?;
            }
            Err(e) => return Err(field(e, "check the existing socket")),
        },
        Ok(meta) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                "input.path: {} exists and is {}, not a socket; egresswatch does not replace it",
                path.display(),
                describe_type(&meta.file_type())
            ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(field(e, "inspect")),
    }
    let listener = UnixListener::bind(path).map_err(|e| field(e, "listen on"))?;
    let id = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok(UnixInput {
        listener,
        path: path.to_owned(),
        id,
    })
}

impl UnixInput {
    /// Removes the socket file if it is still the one this listener created.
    fn remove_socket_file(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        } else {
            tracing::warn!(path = %self.path.display(),
                "input.path no longer holds the socket egresswatch created; left in place");
        }
    }
}

impl Listener {
    /// Binds the listener a `tcp` or `unix` input describes (relative paths against
    /// `base_dir`); `None` for standard input (and the HTTP input, which is not a socket
    /// listener of this kind).
    pub(super) fn bind(config: &InputConfig, base_dir: &Path) -> io::Result<Option<Listener>> {
        Ok(match config {
            InputConfig::Stdin | InputConfig::Http { .. } => None,
            InputConfig::Tcp { address, .. } => Some(Listener::Tcp(bind_tcp(address)?)),
            InputConfig::Unix { path, .. } => {
                Some(Listener::Unix(bind_unix(&base_dir.join(path))?))
            }
        })
    }

    /// Where it listens: `tcp://127.0.0.1:9000`, `unix:///run/in.sock`.
    pub(super) fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(address) => format!("tcp://{address}"),
                Err(_) => "tcp://?".to_owned(),
            },
            Listener::Unix(u) => format!("unix://{}", u.path.display()),
        }
    }
}

/// Starts the listener thread; a Unix socket file is removed at stop if it is still the one
/// bound.
pub(super) fn spawn(
    listener: Listener,
    feed: Feed,
    max_line_bytes: usize,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<InputStats>,
) -> io::Result<()> {
    match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true)?,
        Listener::Unix(u) => u.listener.set_nonblocking(true)?,
    }
    let active = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(HoldBudget::new(OVERSIZE_HOLD_BYTES));
    std::thread::Builder::new()
        .name("egresswatch-listener".into())
        .spawn(move || {
            let mut next_id: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if active.load(Ordering::Relaxed) >= max_connections {
                    std::thread::sleep(ACCEPT_POLL);
                    continue;
                }
                let accepted = match &listener {
                    Listener::Tcp(l) => l.accept().and_then(|(s, peer)| {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(READ_TIMEOUT))?;
                        Ok((Box::new(s) as Connection, peer.to_string()))
                    }),
                    Listener::Unix(u) => u.listener.accept().and_then(|(s, _)| {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(READ_TIMEOUT))?;
                        Ok((Box::new(s) as Connection, "unix socket".to_owned()))
                    }),
                };
                let (conn, peer) = match accepted {
                    Ok(c) => c,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        std::thread::sleep(ACCEPT_POLL);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "input: accept failed");
                        std::thread::sleep(ACCEPT_POLL * 10);
                        continue;
                    }
                };
                next_id += 1;
                if let Err(e) = start_connection(
                    conn,
                    peer,
                    next_id,
                    &feed,
                    max_line_bytes,
                    &stop,
                    &budget,
                    &stats,
                    &active,
                ) {
                    tracing::warn!(error = %e, "input: cannot start a connection reader");
                }
            }
            if let Listener::Unix(input) = &listener {
                input.remove_socket_file();
            }
            tracing::debug!("input listener stopped");
        })?;
    Ok(())
}

/// An accepted connection, blocking with a read timeout.
type Connection = Box<dyn Read + Send>;

#[allow(clippy::too_many_arguments)]
fn start_connection(
    conn: Connection,
    peer: String,
    id: u64,
    feed: &Feed,
    max_line_bytes: usize,
    stop: &Arc<AtomicBool>,
    budget: &Arc<HoldBudget>,
    stats: &Arc<InputStats>,
    active: &Arc<AtomicUsize>,
) -> io::Result<()> {
    let feed = feed.clone();
    let stop = Arc::clone(stop);
    let budget = Arc::clone(budget);
    let stats_here = Arc::clone(stats);
    let active_here = Arc::clone(active);
    active.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.total.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(connection = id, %peer, "input connection opened");
    let spawned = std::thread::Builder::new()
        .name(format!("egresswatch-conn-{id}"))
        .spawn(move || {
            let mode = Mode::Shared {
                stop: &stop,
                budget: &budget,
            };
            if let Err(e) = read_lines(conn, &feed, max_line_bytes, mode) {
                tracing::warn!(connection = id, %peer, error = %e, "input connection failed; what it sent before is kept");
            }
            tracing::debug!(connection = id, "input connection closed");
            stats_here.open.fetch_sub(1, Ordering::Relaxed);
            active_here.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::Relaxed);
        stats.open.fetch_sub(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}
