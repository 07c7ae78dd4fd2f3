//! Framing: cutting a byte stream into blocks of complete lines for the engine.
//!
//! Each reader frames its own bytes and hands the engine only whole messages, so no reader
//! ever holds anything shared while it waits for its peer: one slow, silent or hostile sender
//! cannot hold back another connection.
//!
//! A line longer than `max_line_bytes` (it bypasses the detector as oversize) is handled
//! according to the reader's [`Mode`]:
//! - the only reader of the feed (standard input) streams it through as [`Msg::Fragment`]s, so
//!   it reaches the outputs whole whatever its length, with bounded memory;
//! - a connection among others keeps it and hands it over whole, as long as the lines over the
//!   limit that all connections hold together fit in a shared budget ([`HoldBudget`]); a line
//!   that does not fit is handed over in pieces, each piece a line of its own (bypassed as
//!   oversize too), and a warning says so. Streaming it would mean holding every other
//!   connection back until its sender finished the line, which it may never do.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{count_lines, Block, Feed, Msg, READ_BLOCK_BYTES};
use crate::output::Deadline;

/// After a stop signal, a connection whose sender has sent nothing for this long is done: what
/// it had sent has been read. (One that keeps sending is read until the shutdown deadline.)
pub(crate) const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// Bytes of oversize lines that the connections of one listener may hold together, beyond the
/// `max_line_bytes` plus one read that each may always hold.
pub(crate) const OVERSIZE_HOLD_BYTES: usize = 64 * 1024 * 1024;

/// Memory shared by the connections of one listener for lines over the limit.
#[derive(Debug)]
pub(crate) struct HoldBudget {
    held: AtomicUsize,
    max: usize,
}

impl HoldBudget {
    /// A budget of `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        HoldBudget {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `bytes` from the budget; false when they do not fit.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What a connection's reader obeys besides its peer.
#[derive(Clone, Copy)]
pub(crate) struct Shared<'a> {
    /// Set by a stop signal: from then on the reader drains its connection.
    pub(crate) stop: &'a AtomicBool,
    /// The shutdown deadline: reading ends there at the latest.
    pub(crate) deadline: &'a Deadline,
    /// A connection that sends nothing for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Memory for oversize lines, shared with the other connections.
    pub(crate) budget: &'a HoldBudget,
}

/// How a reader ends and what it does with a line over the limit.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// The feed's only reader: reads until EOF; streams oversize lines through in fragments
    /// (nothing else can come between them).
    Sole,
    /// One connection among others: reads until EOF, until it has been idle for its idle
    /// timeout, or, after a stop signal, until its sender has been quiet for [`DRAIN_QUIET`]
    /// or the shutdown deadline passes; holds oversize lines within its budget.
    Shared(Shared<'a>),
}

/// Why a reader stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The peer closed (or standard input ended), or the input failed.
    Eof,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// After a stop signal, the sender went quiet (or the deadline passed).
    Drained,
}

/// Reads `input` until it ends (see [`Mode`]), handing the engine blocks of complete lines,
/// oversize lines as the mode says, and at the end the unterminated tail as a last line. Read
/// timeouts (`WouldBlock`, `TimedOut`) are waited through. Returns the input's error, after
/// handing over everything read before it. Lines read that the engine no longer takes (it
/// stopped at the shutdown deadline) are added to `undelivered`.
pub(crate) fn read_lines<R: Read>(
    mut input: R,
    feed: &Feed,
    max_line_bytes: usize,
    mode: Mode<'_>,
    undelivered: &AtomicU64,
) -> io::Result<Ended> {
    let mut framer = Framer::new(feed, max_line_bytes, mode, undelivered);
    // Zeroed once; each read's bytes are copied into the pending block.
    let mut read_space = ReadSpace::new();
    let read_buf = read_space.buf();
    let mut last_data = Instant::now();
    loop {
        if let Mode::Shared(rules) = mode {
            let quiet = last_data.elapsed();
            if rules.stop.load(Ordering::Relaxed) {
                if quiet >= DRAIN_QUIET || rules.deadline.passed() {
                    return framer.finish(None).map(|()| Ended::Drained);
                }
            } else if quiet >= rules.idle_timeout {
                return framer.finish(None).map(|()| Ended::Idle);
            }
        }
        match input.read(read_buf) {
            Ok(0) => return framer.finish(None).map(|()| Ended::Eof),
            Ok(n) => {
                framer.push(&read_buf[..n])?;
                // Quiet counts from here: time spent waiting for the engine is not quiet.
                last_data = Instant::now();
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut => {}
                _ => return framer.finish(Some(e)).map(|()| Ended::Eof),
            },
        }
    }
}

/// Alignment of the buffer reads land in: a page.
const READ_ALIGN: usize = 4096;

/// The buffer a reader reads into, starting at a page boundary.
///
/// Linux copies a read's bytes with `rep movsb`, which on some CPUs runs several times slower
/// when the destination lies a few bytes past the source's alignment: on the AMD EPYC this was
/// measured on, reading a file 256 KiB at a time into a buffer 16 bytes past a page boundary
/// (where a 256 KiB `Vec` from the allocator starts) cost 75 ms of CPU for 196 MB, against 17 ms
/// at the boundary. The pages of a file (standard input redirected from one, the usual bench
/// and replay) start at page boundaries, so a page-aligned buffer takes the fast copy.
struct ReadSpace {
    space: Vec<u8>,
    start: usize,
}

impl ReadSpace {
    fn new() -> Self {
        let space = vec![0u8; READ_BLOCK_BYTES + READ_ALIGN];
        // `align_offset` may say it cannot tell (usize::MAX): then any place in the space does.
        let start = space.as_ptr().align_offset(READ_ALIGN).min(READ_ALIGN);
        ReadSpace { space, start }
    }

    /// [`READ_BLOCK_BYTES`] bytes, page-aligned.
    fn buf(&mut self) -> &mut [u8] {
        &mut self.space[self.start..self.start + READ_BLOCK_BYTES]
    }
}

fn engine_gone() -> io::Error {
    io::Error::other("the engine stopped")
}

/// One reader's framing state.
struct Framer<'a> {
    feed: &'a Feed,
    max_line_bytes: usize,
    mode: Mode<'a>,
    /// Bytes read and not handed over: at most one unfinished line.
    pending: Vec<u8>,
    /// Part of the line in `pending` was already handed over (streamed, or cut).
    continued: bool,
    /// What this reader took from its [`HoldBudget`].
    taken: usize,
    /// Whether this reader has cut a line already (logged once per reader).
    cut_logged: bool,
    /// Lines read that the engine did not take.
    undelivered: &'a AtomicU64,
}

impl<'a> Framer<'a> {
    fn new(
        feed: &'a Feed,
        max_line_bytes: usize,
        mode: Mode<'a>,
        undelivered: &'a AtomicU64,
    ) -> Self {
        Framer {
            feed,
            max_line_bytes,
            mode,
            pending: Vec::new(),
            continued: false,
            taken: 0,
            cut_logged: false,
            undelivered,
        }
    }

    /// Hands `msg` to the engine. When the engine has stopped, the lines of `msg` and the line
    /// still held are counted as undelivered.
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        match self.feed.offer(msg) {
            Ok(()) => Ok(()),
            Err(msg) => {
                // What is held: its complete lines, and the line begun (or being passed on).
                let held = count_lines(&self.pending).max(u64::from(self.continued));
                self.pending.clear();
                self.continued = false;
                self.undelivered
                    .fetch_add(msg.lines() + held, Ordering::Relaxed);
                Err(engine_gone())
            }
        }
    }

    /// Adds bytes read and hands over what is complete.
    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        let searched = self.pending.len();
        self.pending.extend_from_slice(bytes);
        if self.continued {
            // The end of a line partly handed over ends its last piece.
            let Some(nl) = memchr::memchr(b'\n', &self.pending[searched..]) else {
                return self.over_limit();
            };
            let end = searched + nl;
            let rest = self.pending.split_off(end + 1);
            self.pending.truncate(end);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.send(Msg::Fragment {
                data: piece,
                first: false,
                last: true,
            })?;
            self.continued = false;
            self.release();
            return self.push_complete(0);
        }
        self.push_complete(searched)
    }

    /// Hands over everything up to the last newline (searching from `from`); what follows is
    /// the unfinished line.
    fn push_complete(&mut self, from: usize) -> io::Result<()> {
        if let Some(nl) = memchr::memrchr(b'\n', &self.pending[from..]) {
            let end = from + nl + 1;
            // Only the unfinished line is kept, in a buffer of its size: the next read makes
            // room for itself, so the block it completes keeps little room to spare (a pipe
            // gives 64 KiB a read at most). Room made for a whole read (256 KiB) in advance
            // made the output copy each such block on the engine's thread rather than take it
            // as its batch: it copies a buffer far larger than its lines, not to hold memory its
            // queue does not count. (Giving the room back after the read instead cost a fresh
            // mapping, page faults and all, for every block.)
            let next = self.pending[end..].to_vec();
            self.pending.truncate(end);
            let block = std::mem::replace(&mut self.pending, next);
            self.send(Msg::Lines(Block::new(block)))?;
            self.release();
        }
        self.over_limit()
    }

    /// Deals with an unfinished line once it is over the limit.
    fn over_limit(&mut self) -> io::Result<()> {
        if self.pending.len() <= self.max_line_bytes {
            return Ok(());
        }
        match self.mode {
            Mode::Sole => self.hand_over_piece(false),
            Mode::Shared(Shared { budget, .. }) => {
                // Each reader may always hold the limit plus one read; beyond that it holds
                // an oversize line only with memory from the shared budget.
                let want = self.pending.len() - self.max_line_bytes;
                if want > self.taken {
                    let more = (want - self.taken).next_multiple_of(READ_BLOCK_BYTES);
                    if budget.take(more) {
                        self.taken += more;
                        return Ok(());
                    }
                    if !self.cut_logged {
                        self.cut_logged = true;
                        tracing::warn!(
                            held = self.pending.len(),
                            "input: a line over batch.max_line_bytes is longer than the memory \
                             for such lines allows; it is passed on in pieces, each a line of \
                             its own (counted as oversize)"
                        );
                    }
                    self.hand_over_piece(true)?;
                    self.release();
                }
                Ok(())
            }
        }
    }

    /// Hands over the unfinished line as a piece (cut between characters); `ends_line` makes
    /// the piece a line of its own.
    fn hand_over_piece(&mut self, ends_line: bool) -> io::Result<()> {
        let keep = incomplete_utf8_tail(&self.pending);
        let tail = self.pending.split_off(self.pending.len() - keep);
        let data = std::mem::replace(&mut self.pending, tail);
        self.pending.reserve(READ_BLOCK_BYTES);
        let first = !self.continued;
        self.continued = true;
        self.send(Msg::Fragment {
            data,
            first,
            last: ends_line,
        })
    }

    /// Gives back what this reader took from the budget.
    fn release(&mut self) {
        if let (Mode::Shared(Shared { budget, .. }), taken @ 1..) = (self.mode, self.taken) {
            budget.give_back(taken);
            self.taken = 0;
        }
    }

    /// At EOF, a stop or a failure: hands over what is left, then returns `failure` if any.
    fn finish(mut self, failure: Option<io::Error>) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        let sent = if std::mem::replace(&mut self.continued, false) {
            self.send(Msg::Fragment {
                data,
                first: false,
                last: true,
            })
        } else if !data.is_empty() {
            self.send(Msg::Lines(Block::new(data)))
        } else {
            Ok(())
        };
        self.release();
        match failure {
            Some(e) => Err(e),
            None => sent,
        }
    }
}

impl Drop for Framer<'_> {
    fn drop(&mut self) {
        self.release();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_land_at_a_page_boundary() {
        // Several, with other allocations between them: wherever the allocator puts the space.
        let mut kept = Vec::new();
        for i in 0..8 {
            let mut space = ReadSpace::new();
            let buf = space.buf();
            assert_eq!(buf.len(), READ_BLOCK_BYTES);
            assert_eq!(buf.as_ptr() as usize % READ_ALIGN, 0, "read buffer {i}");
            kept.push((space, vec![0u8; 100 * i + 1]));
        }
    }

    /// Reads `data` in reads of the `chunks` sizes in turn.
    struct Chunked<'a> {
        data: &'a [u8],
        chunks: &'a [usize],
        reads: usize,
    }

    impl<'a> Chunked<'a> {
        fn new(data: &'a [u8], chunks: &'a [usize]) -> Self {
            Chunked {
                data,
                chunks,
                reads: 0,
            }
        }
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let chunk = self.chunks[self.reads % self.chunks.len()];
            self.reads += 1;
            let n = chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_block_from_a_short_read_keeps_little_room() {
        // 2,000 lines of 50 bytes read 60,001 then 999 bytes at a time (a pipe gives at most
        // 64 KiB a read), so that each read ends within a line: every block, however short its
        // read, must not keep much more room than it holds, or the output copies it rather than
        // take it as its batch.
        let input = format!("{}\n", "x".repeat(49)).repeat(2_000).into_bytes();
        let (feed, rx) = Feed::channel();
        let blocks: Vec<Vec<u8>> = std::thread::scope(|s| {
            let reader = Chunked::new(&input, &[60_001, 999]);
            let undelivered = AtomicU64::new(0);
            let read = s.spawn(move || read_lines(reader, &feed, 100, Mode::Sole, &undelivered));
            let blocks = rx
                .iter()
                .map(|msg| match msg {
                    Msg::Lines(block) => block.into_bytes(),
                    _ => panic!("only whole lines here"),
                })
                .collect();
            assert_eq!(read.join().unwrap().unwrap(), Ended::Eof);
            blocks
        });
        assert!(blocks.len() >= 3, "{}", blocks.len());
        assert_eq!(blocks.concat(), input);
        for (i, block) in blocks.iter().enumerate() {
            assert!(
                block.capacity() <= 2 * block.len(),
                "block {i}: {} bytes in {}",
                block.len(),
                block.capacity()
            );
        }
    }

    fn collect(input: &[u8], max: usize, budget: Option<usize>) -> Vec<Msg> {
        let (feed, rx) = Feed::channel();
        let input = input.to_vec();
        let t = std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            let deadline = Deadline::default();
            let budget = budget.map(HoldBudget::new);
            let mode = match &budget {
                None => Mode::Sole,
                Some(budget) => Mode::Shared(Shared {
                    stop: &stop,
                    deadline: &deadline,
                    idle_timeout: Duration::from_secs(60),
                    budget,
                }),
            };
            let reader = Chunked::new(&input, &[10_000]);
            let undelivered = AtomicU64::new(0);
            let result = read_lines(reader, &feed, max, mode, &undelivered);
            assert_eq!(undelivered.load(Ordering::Relaxed), 0);
            if let Some(budget) = &budget {
                assert_eq!(budget.held.load(Ordering::Relaxed), 0, "budget given back");
            }
            result
        });
        let msgs: Vec<Msg> = rx.iter().collect();
        assert_eq!(t.join().unwrap().unwrap(), Ended::Eof);
        msgs
    }

    /// A connection that never sends anything, and a stop flag and deadline for it.
    struct Silent;

    impl Read for Silent {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(5));
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    fn shared_end(stopped: bool, idle: Duration) -> Ended {
        let (feed, _rx) = Feed::channel();
        let stop = std::sync::Arc::new(AtomicBool::new(stopped));
        let deadline = Deadline::new(&stop, Duration::ZERO);
        let budget = HoldBudget::new(0);
        let mode = Mode::Shared(Shared {
            stop: &stop,
            deadline: &deadline,
            idle_timeout: idle,
            budget: &budget,
        });
        read_lines(Silent, &feed, 100, mode, &AtomicU64::new(0)).unwrap()
    }

    #[test]
    fn a_silent_connection_ends_at_its_idle_timeout_or_at_once_past_the_deadline() {
        assert_eq!(shared_end(false, Duration::from_millis(50)), Ended::Idle);
        assert_eq!(shared_end(true, Duration::from_secs(3600)), Ended::Drained);
    }

    #[test]
    fn lines_the_engine_no_longer_takes_are_counted() {
        let (feed, rx) = Feed::channel();
        drop(rx);
        let undelivered = AtomicU64::new(0);
        let reader = Chunked::new(b"a\nb\nc", &[10]);
        assert!(read_lines(reader, &feed, 100, Mode::Sole, &undelivered).is_err());
        assert_eq!(undelivered.load(Ordering::Relaxed), 3);
    }

    /// The output lines the messages make, as the engine writes them (pass policy).
    fn rebuild(msgs: Vec<Msg>) -> Vec<u8> {
        let mut out = Vec::new();
        for msg in msgs {
            match msg {
                Msg::Lines(block) => out.extend(block.into_bytes()),
                Msg::Fragment { data, last, .. } => {
                    out.extend(data);
                    if last {
                        out.push(b'\n');
                    }
                }
                Msg::Failed(e) => panic!("{e}"),
                Msg::Acked { .. } => panic!("a byte stream sends no acknowledged lines"),
                Msg::Conn { .. } => panic!("a feed without a lane sends plain messages"),
            }
        }
        out
    }

    fn with_long_line(len: usize) -> Vec<u8> {
        let mut input = b"a\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', len));
        input.extend_from_slice(b"\nb\nc");
        input
    }

    #[test]
    fn the_sole_reader_streams_long_lines_as_fragments_between_complete_lines() {
        let input = with_long_line(3 * READ_BLOCK_BYTES);
        let msgs = collect(&input, 100, None);
        let fragments = msgs
            .iter()
            .filter(|m| matches!(m, Msg::Fragment { .. }))
            .count();
        assert!(fragments >= 3, "{fragments}");
        assert!(msgs.iter().all(|m| match m {
            Msg::Fragment { data, .. } => data.len() <= READ_BLOCK_BYTES + 100,
            _ => true,
        }));
        assert_eq!(rebuild(msgs), input);
    }

    #[test]
    fn a_connection_hands_a_long_line_over_whole_within_the_budget() {
        let input = with_long_line(3 * READ_BLOCK_BYTES);
        let msgs = collect(&input, 100, Some(OVERSIZE_HOLD_BYTES));
        assert!(
            msgs.iter().all(|m| matches!(m, Msg::Lines(_))),
            "no fragments"
        );
        assert_eq!(rebuild(msgs), input);
    }

    #[test]
    fn a_connection_cuts_a_line_the_budget_cannot_hold_into_lines_of_their_own() {
        let len = 5 * READ_BLOCK_BYTES + 123;
        let input = with_long_line(len);
        let msgs = collect(&input, 100, Some(READ_BLOCK_BYTES));
        let pieces: Vec<(usize, bool, bool)> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Fragment { data, first, last } => Some((data.len(), *first, *last)),
                _ => None,
            })
            .collect();
        assert!(pieces.len() >= 2, "{pieces:?}");
        assert!(pieces.iter().all(|&(_, _, last)| last), "each piece a line");
        assert!(
            pieces[0].1 && pieces[1..].iter().all(|p| !p.1),
            "{pieces:?}"
        );
        // Each piece within what one reader may hold with the budget.
        assert!(pieces
            .iter()
            .all(|&(n, _, _)| n <= 100 + 2 * READ_BLOCK_BYTES + 10_000));
        assert_eq!(pieces.iter().map(|p| p.0).sum::<usize>(), len);
        // The bytes are all there, in order; only line ends were added between the pieces.
        let out = rebuild(msgs);
        let without_cuts: Vec<u8> = out.iter().copied().filter(|&b| b != b'\n').collect();
        let expected: Vec<u8> = input.iter().copied().filter(|&b| b != b'\n').collect();
        assert_eq!(without_cuts, expected);
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
