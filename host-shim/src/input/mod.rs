//! Driving the engine from byte streams: readers cut their input into blocks of complete lines,
//! one engine thread processes them, writes them and flushes, until EOF or a stop signal.
//!
//! Any number of readers (standard input, or one per accepted connection) feed one engine
//! through a bounded channel ([`Feed`]), so a slow output slows every reader: backpressure, not
//! buffering. Each reader sends its lines in order, so the order of each connection is kept;
//! lines of different connections interleave by block.
//!
//! A reader holds at most `max_line_bytes` plus one read of an unterminated line. A line that
//! grows past that is known to be oversize (it will bypass the detector anyway), so it is
//! streamed through as [`Msg::Fragment`]s instead of being buffered whole; while it streams,
//! that reader holds the feed's order lock so that no other connection's lines land inside it.
//!
//! The engine thread waits with a short timeout so that it notices a stop signal and runs its
//! housekeeping (state saves, metrics) while the input is quiet. Each block is flushed as soon
//! as it is processed, so a quiet stream is not held back: the flush delay is the time to
//! process one block.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod listen;

use crate::engine::Engine;
use crate::output::Outputs;

/// Size of each read from an input.
pub const READ_BLOCK_BYTES: usize = 256 * 1024;

/// Blocks in flight between the readers and the engine thread.
const BLOCKS_IN_FLIGHT: usize = 4;

/// How often the engine thread checks the stop flag while the input is quiet.
const STOP_POLL: Duration = Duration::from_millis(50);

/// How long, after a stop signal, the engine waits for socket readers to hand over what they
/// have read (they notice the signal within their read timeout).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How long a reader that was told to stop keeps reading to complete a line it has begun.
const LINE_GRACE: Duration = Duration::from_secs(1);

/// What a reader hands to the engine.
#[derive(Debug)]
pub enum Msg {
    /// Complete lines, each ending in `\n` except possibly the last one at EOF.
    Lines(Vec<u8>),
    /// A piece of a line too long to hold; `last` ends the line (without its `\n`).
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
}

/// The sending side of the engine's bounded channel, shared by every reader.
#[derive(Clone)]
pub struct Feed {
    tx: SyncSender<Msg>,
    order: Arc<Mutex<()>>,
}

impl Feed {
    /// A feed and the engine's receiving end.
    pub fn channel() -> (Feed, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(BLOCKS_IN_FLIGHT);
        (
            Feed {
                tx,
                order: Arc::new(Mutex::new(())),
            },
            rx,
        )
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message; false when the engine is gone.
    pub fn send(&self, msg: Msg) -> bool {
        let _guard = self.lock();
        self.tx.send(msg).is_ok()
    }

    /// Sends while the caller already holds the order lock.
    fn send_locked(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// Reads `input` until EOF (or until `stop` is set, for inputs with a read timeout), sending
/// complete lines, streaming oversize lines as fragments, and at the end the unterminated tail
/// as a last line. After a stop it goes on reading for up to a second when a line is
/// unfinished, so that a stop does not cut a line the peer is in the middle of sending. Read timeouts (`WouldBlock`, `TimedOut`) are waited through. Returns the
/// input's error, after sending everything read before it.
pub fn read_lines<R: Read>(
    mut input: R,
    feed: &Feed,
    max_line_bytes: usize,
    stop: Option<&AtomicBool>,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::with_capacity(READ_BLOCK_BYTES);
    // Held while an oversize line streams through, so that it reaches the outputs unbroken.
    let mut streaming: Option<MutexGuard<'_, ()>> = None;
    let mut first_fragment = true;
    let mut stop_seen: Option<Instant> = None;
    loop {
        let mut failure = None;
        let stopping = stop.is_some_and(|s| s.load(Ordering::Relaxed)) && {
            // Finish the line in progress (briefly) rather than cut it.
            let at = *stop_seen.get_or_insert_with(Instant::now);
            (pending.is_empty() && streaming.is_none()) || at.elapsed() > LINE_GRACE
        };
        let n = if stopping {
            0
        } else {
            let start = pending.len();
            pending.resize(start + READ_BLOCK_BYTES, 0);
            match input.read(&mut pending[start..]) {
                Ok(n) => {
                    pending.truncate(start + n);
                    n
                }
                Err(e) => {
                    pending.truncate(start);
                    match e.kind() {
                        io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut => continue,
                        _ => {
                            failure = Some(e);
                            0
                        }
                    }
                }
            }
        };
        if n == 0 {
            // EOF, stop or failure: hand over what is left.
            let sent = if streaming.is_some() {
                feed.send_locked(Msg::Fragment {
                    data: pending,
                    first: first_fragment,
                    last: true,
                })
            } else if !pending.is_empty() {
                feed.send(Msg::Lines(pending))
            } else {
                true
            };
            drop(streaming);
            return match failure {
                Some(e) => Err(e),
                None if sent => Ok(()),
                None => Err(io::Error::other("the engine stopped")),
            };
        }
        loop {
            if streaming.is_some() {
                if let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(nl + 1);
                    pending.pop();
                    let data = std::mem::replace(&mut pending, rest);
                    if !feed.send_locked(Msg::Fragment {
                        data,
                        first: first_fragment,
                        last: true,
                    }) {
                        return Err(io::Error::other("the engine stopped"));
                    }
                    streaming = None;
                    continue;
                }
                let keep = incomplete_utf8_tail(&pending);
                let tail = pending.split_off(pending.len() - keep);
                let data = std::mem::replace(&mut pending, tail);
                if !feed.send_locked(Msg::Fragment {
                    data,
                    first: first_fragment,
                    last: false,
                }) {
                    return Err(io::Error::other("the engine stopped"));
                }
                first_fragment = false;
                pending.reserve(READ_BLOCK_BYTES);
                break;
            }
            // Hand over everything up to the last newline; keep the unterminated tail.
            if let Some(last_nl) = pending.iter().rposition(|&b| b == b'\n') {
                let tail = pending.split_off(last_nl + 1);
                let block = std::mem::replace(&mut pending, tail);
                if !feed.send(Msg::Lines(block)) {
                    return Err(io::Error::other("the engine stopped"));
                }
                pending.reserve(READ_BLOCK_BYTES);
            }
            if pending.len() > max_line_bytes {
                streaming = Some(feed.lock());
                first_fragment = true;
                continue;
            }
            break;
        }
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `bytes` (0 to 3), so that fragments are
/// cut between characters.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
}

/// Why [`run`] or [`drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The input ended.
    Eof,
    /// A stop signal arrived; everything read so far was processed and flushed.
    Stopped,
}

/// What the engine thread does besides processing: state saves, metrics.
pub trait Housekeeping {
    /// After a message was processed and flushed; `took` is the time that took.
    fn after_block(&mut self, engine: &mut Engine, outputs: &Outputs, took: Duration);
    /// While the input is quiet, every poll interval.
    fn idle(&mut self, engine: &mut Engine, outputs: &Outputs);
}

/// The engine thread's loop: processes messages from `rx` until every reader is gone (EOF) or
/// `stop` is set. After a stop it processes what the readers have already read: with
/// `wait_for_readers` (socket readers, which notice the stop themselves) until they have all
/// finished, otherwise (standard input, whose read cannot be interrupted) what is queued.
pub fn drive(
    rx: &Receiver<Msg>,
    engine: &mut Engine,
    outputs: &mut Outputs,
    stop: &AtomicBool,
    wait_for_readers: bool,
    housekeeping: &mut dyn Housekeeping,
) -> io::Result<Finish> {
    let mut stopped_at: Option<Instant> = None;
    let finish = loop {
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        let msg = match stopped_at {
            Some(_) if !wait_for_readers => match rx.try_recv() {
                Ok(msg) => msg,
                Err(_) => break Finish::Stopped,
            },
            Some(at) if at.elapsed() > DRAIN_GRACE => {
                tracing::warn!("input readers did not finish within the drain grace period");
                break Finish::Stopped;
            }
            _ => match rx.recv_timeout(STOP_POLL) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    housekeeping.idle(engine, outputs);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) if stopped_at.is_some() => {
                    break Finish::Stopped
                }
                Err(RecvTimeoutError::Disconnected) => break Finish::Eof,
            },
        };
        let started = Instant::now();
        match msg {
            Msg::Lines(data) => {
                let data = data.strip_suffix(b"\n").unwrap_or(&data);
                let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
                engine.process(&lines, outputs)?;
            }
            Msg::Fragment { data, first, last } => {
                engine.write_fragment(&data, first, last, outputs)?;
            }
            Msg::Failed(e) => {
                engine.close_fragment(outputs)?;
                outputs.flush()?;
                return Err(e);
            }
        }
        outputs.flush()?;
        housekeeping.after_block(engine, outputs, started.elapsed());
    };
    engine.close_fragment(outputs)?;
    outputs.flush()?;
    Ok(finish)
}

/// Starts a thread reading `input` (standard input) into `feed`; a read error ends the run.
pub fn spawn_reader<R: Read + Send + 'static>(
    input: R,
    feed: Feed,
    max_line_bytes: usize,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("egresswatch-reader".into())
        .spawn(move || {
            if let Err(e) = read_lines(input, &feed, max_line_bytes, None) {
                feed.send(Msg::Failed(e));
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], max: usize) -> Vec<Msg> {
        let (feed, rx) = Feed::channel();
        let input = input.to_vec();
        let t = std::thread::spawn(move || read_lines(&input[..], &feed, max, None));
        let msgs: Vec<Msg> = rx.iter().collect();
        t.join().unwrap().unwrap();
        msgs
    }

    #[test]
    fn long_lines_stream_as_fragments_between_complete_lines() {
        let mut input = b"a\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * READ_BLOCK_BYTES));
        input.extend_from_slice(b"\nb\nc");
        let msgs = collect(&input, 100);
        let mut rebuilt = Vec::new();
        let mut fragments = 0;
        for msg in msgs {
            match msg {
                Msg::Lines(data) => rebuilt.extend(data),
                Msg::Fragment { data, last, .. } => {
                    fragments += 1;
                    assert!(data.len() <= READ_BLOCK_BYTES + 100);
                    rebuilt.extend(data);
                    if last {
                        rebuilt.push(b'\n');
                    }
                }
                Msg::Failed(e) => panic!("{e}"),
            }
        }
        assert!(fragments >= 3, "{fragments}");
        assert_eq!(rebuilt, input);
    }

    #[test]
    fn utf8_tails_are_found() {
        assert_eq!(incomplete_utf8_tail(b"ab"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
    }
}
