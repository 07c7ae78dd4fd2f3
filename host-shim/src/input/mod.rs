//! Inputs: readers cut their input into blocks of complete lines and hand them to the engine
//! thread through one bounded channel.
//!
//! Any number of readers (standard input, or one per accepted connection: [`listen`]) feed one
//! engine through a bounded channel ([`Feed`]), so a slow output slows every reader:
//! backpressure, not buffering. Each reader sends its lines in order, so the order of each
//! connection is kept; lines of different connections interleave by block. Readers share no
//! lock: each message is whole lines (or, from the only reader of a feed, a fragment of one), so
//! a reader waiting for its peer holds no other reader back. How a reader cuts its bytes into
//! lines, and what it does with a line too long to hold, is in [`lines`].

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crate::ack::Ack;
use crate::config::InputConfig;
use crate::output::Deadline;
use lane::{Lane, Lanes};

mod block;
pub(crate) mod http;
pub(crate) mod lane;
mod lines;
pub(crate) mod listen;

pub(crate) use block::{line_spans, Block, Span};
pub(crate) use lines::{read_lines, HoldBudget, Mode, Source, OVERSIZE_HOLD_BYTES};
use listen::InputStats;

/// Size of each read from an input.
pub(crate) const READ_BLOCK_BYTES: usize = 256 * 1024;

/// Blocks in flight between the readers and the engine thread.
const BLOCKS_IN_FLIGHT: usize = 4;

/// What a reader hands to the engine.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Complete lines, each ending in `\n` except possibly the last one at EOF, cut and
    /// checked by the reader.
    Lines(Block),
    /// A piece of a line too long to hold; `last` ends the line (without its `\n`). Pieces
    /// with `last: false` come only from the feed's only reader (standard input).
    Fragment {
        /// The bytes.
        data: Vec<u8>,
        /// The first piece of the line.
        first: bool,
        /// The last piece of the line.
        last: bool,
    },
    /// The input failed; the run ends with this error (standard input only).
    Failed(io::Error),
    /// Complete lines, each ending in `\n`, whose delivery the sender waits for (the HTTP
    /// input): the outputs tell `ack` once they have delivered them.
    Acked {
        /// The lines.
        data: Vec<u8>,
        /// Told when every line is delivered (or not).
        ack: Ack,
    },
    /// A message (`Lines`, or a `Fragment` that ends its line) from one connection of a
    /// listener: the engine orders the lines of its connections by event time while several
    /// are open, and gives the connection its credit back once the message is processed.
    Conn {
        /// The connection.
        lane: Arc<Lane>,
        /// What it sent.
        msg: Box<Msg>,
    },
}

impl Msg {
    /// How many lines it holds or ends (for counting what was not delivered).
    pub(crate) fn lines(&self) -> u64 {
        match self {
            Msg::Lines(data) => count_lines(data),
            Msg::Fragment { last, .. } => u64::from(*last),
            Msg::Failed(_) => 0,
            // Not answered 200: the sender still holds them and sends them again.
            Msg::Acked { .. } => 0,
            Msg::Conn { msg, .. } => msg.lines(),
        }
    }
}

/// Lines in `data`: its newlines, plus an unterminated last line.
fn count_lines(data: &[u8]) -> u64 {
    let ends = memchr::memchr_iter(b'\n', data).count() as u64;
    ends + u64::from(!data.is_empty() && !data.ends_with(b"\n"))
}

/// The sending side of the engine's bounded channel, shared by every reader.
#[derive(Clone)]
pub(crate) struct Feed {
    tx: SyncSender<Msg>,
    /// The connection this feed's messages come from (a listener's reader).
    lane: Option<Arc<Lane>>,
}

impl Feed {
    /// A feed and the engine's receiving end.
    pub(crate) fn channel() -> (Feed, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(BLOCKS_IN_FLIGHT);
        (Feed { tx, lane: None }, rx)
    }

    /// The feed of one connection: its messages carry `lane`, and each waits for the lane's
    /// credit before it is handed over.
    pub(crate) fn for_lane(&self, lane: Arc<Lane>) -> Feed {
        Feed {
            tx: self.tx.clone(),
            lane: Some(lane),
        }
    }

    /// Sends a message; false when the engine is gone.
    pub(crate) fn send(&self, msg: Msg) -> bool {
        self.offer(msg).is_ok()
    }

    /// Sends a message; gives it back when the engine is gone.
    pub(crate) fn offer(&self, msg: Msg) -> Result<(), Msg> {
        let Some(lane) = &self.lane else {
            return self.tx.send(msg).map_err(|e| e.0);
        };
        lane.take_credit();
        let msg = Msg::Conn {
            lane: Arc::clone(lane),
            msg: Box::new(msg),
        };
        self.tx.send(msg).map_err(|e| {
            lane.give_back();
            match e.0 {
                Msg::Conn { msg, .. } => *msg,
                msg => msg,
            }
        })
    }
}

/// Starts a thread reading `input` (standard input) into `feed`; a read error ends the run.
fn spawn_reader<R: Source + Send + 'static>(
    input: R,
    feed: Feed,
    max_line_bytes: usize,
    stats: Arc<InputStats>,
) -> io::Result<()> {
    stats.readers.fetch_add(1, Ordering::Relaxed);
    let counted = Arc::clone(&stats);
    let spawned = std::thread::Builder::new()
        .name("egresswatch-reader".into())
        .spawn(move || {
            let read = read_lines(input, &feed, max_line_bytes, Mode::Sole, &stats.undelivered);
            if let Err(e) = read {
                feed.send(Msg::Failed(e));
            }
            stats.readers.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        counted.readers.fetch_sub(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

/// The configured input, started: standard input on a reader thread, or a listener.
pub(crate) struct Started {
    /// Whether the engine must wait, after a stop signal, for the readers to hand over what
    /// they have read (socket readers notice the stop themselves; a read of standard input
    /// cannot be interrupted).
    pub(crate) wait_for_readers: bool,
    /// Connection counters (zero for standard input), and lines read but not taken.
    pub(crate) stats: Arc<InputStats>,
    /// What it reads: `stdin`, `tcp://ADDRESS`, `unix://PATH` or `http://ADDRESS`.
    pub(crate) address: String,
    /// The connections of a `tcp` or `unix` listener, for the engine's ordering stage.
    pub(crate) lanes: Option<Arc<Lanes>>,
    /// The HTTP input's server, kept until the run ends: dropping it stops the server.
    pub(crate) _server: Option<http::HttpInput>,
    /// The `tcp` or `unix` listener's thread, for a reload that replaces it.
    pub(crate) listener: Option<listen::Handle>,
}

/// Starts the input `config` describes, feeding `feed`; relative paths are resolved against
/// `base_dir`. Connections are drained after `stop` is set, until `deadline` at the latest.
pub(crate) fn start(
    config: &InputConfig,
    base_dir: &Path,
    feed: Feed,
    max_line_bytes: usize,
    stop: &Arc<AtomicBool>,
    deadline: &Deadline,
) -> io::Result<Started> {
    let stats = Arc::new(InputStats::default());
    if let InputConfig::Http {
        address,
        max_connections,
        max_body_bytes,
        ack_timeout_secs,
        idle_timeout_secs,
        tls,
    } = config
    {
        warn_if_exposed(address, tls.as_ref());
        let tls = tls
            .as_ref()
            .map(|tls| crate::tls::server(tls, |p| base_dir.join(p), "input.tls"))
            .transpose()?;
        let settings = http::Settings {
            address: address.clone(),
            max_connections: *max_connections,
            max_body_bytes: *max_body_bytes,
            ack_timeout: std::time::Duration::from_secs(*ack_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(*idle_timeout_secs),
            tls,
            stats: Arc::clone(&stats),
        };
        let (server, address) = http::start(&settings, feed, stop)?;
        return Ok(Started {
            wait_for_readers: true,
            stats,
            address,
            lanes: None,
            _server: Some(server),
            listener: None,
        });
    }
    let mut tls = None;
    if let InputConfig::Tcp {
        address,
        tls: tls_config,
        ..
    } = config
    {
        warn_if_exposed(address, tls_config.as_ref());
        tls = tls_config
            .as_ref()
            .map(|t| crate::tls::server_config(t, |p| base_dir.join(p), "input.tls"))
            .transpose()?;
    }
    let mut lanes = None;
    let mut handle = None;
    let (wait_for_readers, address) = match (config, listen::Listener::bind(config, base_dir)?) {
        (
            InputConfig::Tcp {
                max_connections,
                idle_timeout_secs,
                ..
            }
            | InputConfig::Unix {
                max_connections,
                idle_timeout_secs,
                ..
            },
            Some(listener),
        ) => {
            let address = listener.describe(tls.is_some());
            let settings = listen::Settings {
                max_line_bytes,
                max_connections: *max_connections,
                idle_timeout: Duration::from_secs(*idle_timeout_secs),
                tls,
            };
            let connections = Arc::new(Lanes::default());
            handle = Some(listen::spawn(
                listener,
                feed,
                settings,
                Arc::clone(stop),
                deadline,
                (Arc::clone(&stats), Arc::clone(&connections)),
            )?);
            lanes = Some(connections);
            (true, address)
        }
        _ => {
            spawn_reader(io::stdin(), feed, max_line_bytes, Arc::clone(&stats))?;
            (false, "stdin".to_owned())
        }
    };
    Ok(Started {
        wait_for_readers,
        stats,
        address,
        lanes,
        _server: None,
        listener: handle,
    })
}

/// A reload's replacement for the running `tcp` or `unix` listener, made before anything
/// changes: bound when it listens somewhere else (a bind error refuses the reload, the running
/// listener untouched), or to take over the running one's socket when it listens at the same
/// address or path; its TLS certificates read; its thread started, waiting at its gate (a
/// thread that cannot be started refuses the reload too). Dropped (the reload refused), the
/// thread ends having done nothing.
pub(crate) struct Rebind {
    /// `None`: take over the running listener's socket.
    listener: Option<listen::Listener>,
    tls: bool,
    handle: listen::Handle,
    gate: listen::Gate,
}

/// Prepares the listener `new` describes to replace the running one, `running` as `started`
/// (both `tcp` or `unix`; the caller refuses other changes). Its connections are drained after
/// `stop` is set, until `deadline` at the latest.
pub(crate) fn prepare_rebind(
    (running, started): (&InputConfig, &Started),
    new: &InputConfig,
    base_dir: &Path,
    max_line_bytes: usize,
    (stop, deadline): (&Arc<AtomicBool>, &Deadline),
) -> io::Result<Rebind> {
    let (max_connections, idle_timeout_secs, tls) = match new {
        InputConfig::Tcp {
            max_connections,
            idle_timeout_secs,
            tls,
            address,
            ..
        } => {
            warn_if_exposed(address, tls.as_ref());
            (*max_connections, *idle_timeout_secs, tls.as_ref())
        }
        InputConfig::Unix {
            max_connections,
            idle_timeout_secs,
            ..
        } => (*max_connections, *idle_timeout_secs, None),
        InputConfig::Stdin | InputConfig::Http { .. } => {
            return Err(io::Error::other("only a tcp or unix input is rebound"))
        }
    };
    if started.listener.is_none() {
        return Err(io::Error::other("the input has no listener to replace"));
    }
    let tls = tls
        .map(|t| crate::tls::server_config(t, |p| base_dir.join(p), "input.tls"))
        .transpose()?;
    let same_place = match (running, new) {
        (InputConfig::Tcp { address: a, .. }, InputConfig::Tcp { address: b, .. }) => a == b,
        (InputConfig::Unix { path: a, .. }, InputConfig::Unix { path: b, .. }) => a == b,
        _ => false,
    };
    let listener = if same_place {
        None
    } else {
        let listener = listen::Listener::bind(new, base_dir)?;
        if let Some(listener) = &listener {
            listener.nonblocking()?;
        }
        listener
    };
    let settings = listen::Settings {
        max_line_bytes,
        max_connections,
        idle_timeout: Duration::from_secs(idle_timeout_secs),
        tls,
    };
    let tls = settings.tls.is_some();
    let lanes = started.lanes.clone().unwrap_or_default();
    let counted = (Arc::clone(&started.stats), lanes);
    let (handle, gate) = listen::spawn_gated(settings, Arc::clone(stop), deadline, counted)
        .map_err(|e| io::Error::new(e.kind(), format!("input: cannot start a listener: {e}")))?;
    Ok(Rebind {
        listener,
        tls,
        handle,
        gate,
    })
}

/// Puts a prepared listener in place of the running one: the running one stops accepting, and
/// the connections it accepted go on being read as they were until their senders close them
/// (or they go idle, or a stop signal); the new one feeds the same engine, its connections
/// ordered with theirs. Nothing happens if a stop signal came first (returns false). It cannot
/// fail: what could is done by [`prepare_rebind`] (only a panic of a listener thread would
/// leave no listener, and says so).
pub(crate) fn rebind(started: &mut Started, rebind: Rebind) -> bool {
    let Some(running) = started.listener.take() else {
        return false;
    };
    let Some((taken_over, feed)) = running.retire(rebind.listener.is_none()) else {
        return false;
    };
    let Some(listener) = rebind.listener.or(taken_over) else {
        tracing::error!(
            "the running input listener's socket was not handed over; no new \
            connections are accepted until a restart"
        );
        return false;
    };
    let address = listener.describe(rebind.tls);
    if rebind.gate.open(listener, feed).is_err() {
        tracing::error!(
            "the new input listener's thread ended before it started; no new \
            connections are accepted until a restart"
        );
        return false;
    }
    started.address = address;
    started.listener = Some(rebind.handle);
    true
}

/// Warns when an input listens beyond loopback without client certificates: anyone who can
/// reach it can send events, and so poison what the models learn. (TLS without
/// `client_ca_file` encrypts, but authenticates no sender.)
fn warn_if_exposed(address: &str, tls: Option<&crate::config::ServerTls>) {
    let authenticated = tls.is_some_and(|t| t.client_ca_file.is_some());
    if !authenticated && !matches!(crate::config::check_address(address), Ok(true)) {
        tracing::warn!(%address, tls = tls.is_some(),
            "input listens beyond loopback without client certificates: anyone who can reach \
             it can send events (and skew what the models learn); set input.tls with \
             client_ca_file, so that only senders with a certificate from that authority are \
             accepted, or listen on loopback");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;
    use std::io::Write;

    #[test]
    fn a_reload_whose_new_listener_cannot_start_is_refused_and_the_old_one_goes_on() {
        let input = |address: &str| {
            let text = format!("input: {{ type: tcp, address: '{address}' }}\n");
            HostConfig::parse(&text, false).unwrap().input
        };
        let (running, moved) = (input("127.0.0.1:0"), input("127.0.0.2:0"));
        let (feed, rx) = Feed::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Deadline::default();
        let base = Path::new(".");
        let mut started = start(&running, base, feed, 1 << 20, &stop, &deadline).unwrap();
        let max_line = 1 << 20;
        let prepare = |started: &Started| {
            prepare_rebind(
                (&running, started),
                &moved,
                base,
                max_line,
                (&stop, &deadline),
            )
        };
        // The system has no thread left for the new listener: the reload is refused before
        // anything changes.
        listen::fail_next_spawn();
        let refused = prepare(&started).err().expect("refused").to_string();
        assert!(refused.contains("cannot start a listener"), "{refused}");
        // The old listener goes on accepting.
        let address = started.address.strip_prefix("tcp://").unwrap().to_owned();
        let mut conn = std::net::TcpStream::connect(address).unwrap();
        conn.write_all(b"{\"n\":1}\n").unwrap();
        drop(conn);
        let msg = rx.recv_timeout(Duration::from_secs(60));
        assert_eq!(msg.map(|m| m.lines()).ok(), Some(1));
        // A reload that can start it moves the input.
        let prepared = prepare(&started).unwrap();
        assert!(rebind(&mut started, prepared));
        assert!(
            started.address.starts_with("tcp://127.0.0.2:"),
            "{}",
            started.address
        );
        stop.store(true, Ordering::Relaxed);
    }
}
