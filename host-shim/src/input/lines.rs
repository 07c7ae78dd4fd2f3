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
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{count_lines, Block, Feed, Msg, READ_BLOCK_BYTES};
use crate::line_buf::LineBuf;
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

/// What a reader reads.
pub(crate) trait Source: Read {
    /// How to read it straight into the blocks a reader fills, at a page boundary, when that
    /// gives what `read` would: no buffer of the reader's own to copy each read from
    /// (`Read::read` takes initialized memory only, and zeroing a block's room costs what the
    /// copy does).
    fn direct(&self) -> Option<Direct> {
        None
    }
}

/// A descriptor a reader reads straight into its blocks, and how much it asks for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Direct {
    /// Borrowed from the source, not owned: valid while `read_lines` holds the source, which
    /// it does for as long as it reads.
    fd: RawFd,
    read_len: usize,
}

impl Direct {
    /// For a regular file, [`READ_BLOCK_BYTES`] a read; for a pipe, as much as its buffer
    /// holds, which is all a read of it can give (64 KiB unless its writer grew it), so that a
    /// block from a full pipe keeps little room and its memory comes from the allocator's heap
    /// rather than a fresh mapping of a whole read's room. Anything else (a terminal, a socket)
    /// is read through a copy.
    fn of(fd: BorrowedFd<'_>) -> Option<Direct> {
        let kind = std::fs::File::from(fd.try_clone_to_owned().ok()?)
            .metadata()
            .ok()?
            .file_type();
        let read_len = if kind.is_file() {
            READ_BLOCK_BYTES
        } else if kind.is_fifo() {
            pipe_size(fd)?.min(READ_BLOCK_BYTES)
        } else {
            return None;
        };
        Some(Direct {
            fd: fd.as_raw_fd(),
            read_len,
        })
    }
}

/// The bytes a pipe's buffer holds.
#[cfg(target_os = "linux")]
fn pipe_size(fd: BorrowedFd<'_>) -> Option<usize> {
    // SAFETY: F_GETPIPE_SZ takes an open descriptor and no argument; `fd` is open for the call.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// Elsewhere a pipe's buffer size cannot be asked: it is read through a copy.
#[cfg(not(target_os = "linux"))]
fn pipe_size(_: BorrowedFd<'_>) -> Option<usize> {
    None
}

/// Standard input's own buffer stays empty: the reader is its only user, and reads its
/// descriptor.
impl Source for io::Stdin {
    fn direct(&self) -> Option<Direct> {
        Direct::of(self.as_fd())
    }
}

/// A connection (plain or TLS) is read through `Read`, with a copy.
impl Source for &mut Box<dyn Read + Send> {}

/// Reads what `fd` has, at most `buf.len()` bytes, into `buf`: the number of bytes it wrote
/// there. Errors as `Read` gives them; a closed descriptor reads as the end, as standard input
/// does in the standard library.
fn read_fd(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: read(2) writes at most `buf.len()` bytes at `buf`, which the borrow keeps valid
    // and unaliased for the call; it never reads them.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    match usize::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBADF) {
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}

/// Reads `input` until it ends (see [`Mode`]), handing the engine blocks of complete lines,
/// oversize lines as the mode says, and at the end the unterminated tail as a last line. Read
/// timeouts (`WouldBlock`, `TimedOut`) are waited through. Returns the input's error, after
/// handing over everything read before it. Lines read that the engine no longer takes (it
/// stopped at the shutdown deadline) are added to `undelivered`.
pub(crate) fn read_lines<R: Source>(
    mut input: R,
    feed: &Feed,
    max_line_bytes: usize,
    mode: Mode<'_>,
    undelivered: &AtomicU64,
) -> io::Result<Ended> {
    let direct = input.direct();
    let mut framer = Framer::new(feed, max_line_bytes, mode, undelivered, direct);
    // For a source not read straight into its blocks: zeroed once, each read's bytes copied
    // into the pending block.
    let mut read_space = ReadSpace::new(if direct.is_some() {
        0
    } else {
        READ_BLOCK_BYTES
    });
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
        let read = match direct {
            Some(direct) => read_fd(direct.fd, framer.room(direct.read_len)),
            None => input.read(read_buf),
        };
        match read {
            Ok(0) => return framer.finish(None).map(|()| Ended::Eof),
            Ok(n) => {
                match direct {
                    // SAFETY: `read_fd` wrote these `n` bytes into the room just given.
                    Some(_) => unsafe { framer.filled(n) }?,
                    None => framer.push(&read_buf[..n])?,
                }
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

/// The buffer a reader reads into, starting at a page boundary, when it cannot read straight
/// into its blocks ([`Source::direct`]; those reads begin at a page boundary too: [`read_room`]).
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
    len: usize,
}

impl ReadSpace {
    /// `len` bytes of space.
    fn new(len: usize) -> Self {
        let space = vec![0u8; len + READ_ALIGN];
        // `align_offset` may say it cannot tell (usize::MAX): then any place in the space does.
        let start = space.as_ptr().align_offset(READ_ALIGN).min(READ_ALIGN);
        ReadSpace { space, start, len }
    }

    /// Its bytes, page-aligned.
    fn buf(&mut self) -> &mut [u8] {
        &mut self.space[self.start..self.start + self.len]
    }
}

/// The room of a block [`read_room`] makes is a multiple of this: sizes that vary with the
/// unfinished line's length would each be a new size to the allocator.
const ROOM_STEP: usize = 16 * 1024;

/// A block to fill: `unfinished` (the line a read left unfinished) followed by room for a read
/// of `read_len` bytes that begins at a page boundary, so that the kernel's copy into it is the
/// fast one.
fn read_room(unfinished: &[u8], read_len: usize) -> LineBuf {
    let mut buf =
        Vec::with_capacity((READ_ALIGN + unfinished.len() + read_len).next_multiple_of(ROOM_STEP));
    let read_at = buf.as_ptr() as usize + unfinished.len();
    let pad = (READ_ALIGN - read_at % READ_ALIGN) % READ_ALIGN;
    buf.resize(pad, 0);
    buf.extend_from_slice(unfinished);
    LineBuf::at(buf, pad)
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
    pending: LineBuf,
    /// Reads go straight into `pending` ([`Source::direct`]), this long at most.
    read_len: Option<usize>,
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
        direct: Option<Direct>,
    ) -> Self {
        Framer {
            feed,
            max_line_bytes,
            mode,
            pending: LineBuf::default(),
            read_len: direct.map(|d| d.read_len),
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
                self.pending = LineBuf::default();
                self.continued = false;
                self.undelivered
                    .fetch_add(msg.lines() + held, Ordering::Relaxed);
                Err(engine_gone())
            }
        }
    }

    /// What follows the lines handed over: the unfinished line, in a block of its own (with
    /// room for a read at a page boundary when reads go straight into it).
    fn unfinished(&self, from: usize) -> LineBuf {
        let rest = &self.pending[from..];
        match self.read_len {
            Some(read_len) => read_room(rest, read_len),
            None => rest.to_vec().into(),
        }
    }

    /// Room for the next read, `read_len` bytes at the end of `pending`: a block begun by
    /// [`read_room`] has it (the read at a page boundary when it is the block's first); a line
    /// as long as a read grows its block (no longer at a page boundary: rare).
    fn room(&mut self, read_len: usize) -> &mut [MaybeUninit<u8>] {
        let buf = self.pending.buf_mut();
        if buf.capacity() - buf.len() < read_len {
            if self.pending.len() < read_len {
                self.pending = read_room(&self.pending, read_len);
            } else {
                self.pending.reserve(read_len);
            }
        }
        let buf = self.pending.buf_mut();
        &mut buf.spare_capacity_mut()[..read_len]
    }

    /// Takes the `n` bytes a read put in [`Framer::room`] and hands over what is complete.
    ///
    /// # Safety
    /// The first `n` bytes of the room last given must have been written.
    unsafe fn filled(&mut self, n: usize) -> io::Result<()> {
        let buf = self.pending.buf_mut();
        debug_assert!(n <= buf.capacity() - buf.len(), "more than the room given");
        // SAFETY: the caller wrote these bytes, within the room `room` made.
        unsafe { buf.set_len(buf.len() + n) };
        self.frame(self.pending.len() - n)
    }

    /// Hands over a block of complete lines, giving back the room a short read left (a pipe
    /// gives 64 KiB at most) so that the output takes it as its batch, not a copy.
    fn send_lines(&mut self, mut block: LineBuf) -> io::Result<()> {
        if !block.keeps_whole() {
            block.shrink_to_fit();
        }
        self.send(Msg::Lines(Block::new(block)))
    }

    /// Adds bytes read and hands over what is complete.
    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        self.frame(self.pending.len() - bytes.len())
    }

    /// Hands over what is complete once `pending` has new bytes from `searched` on.
    fn frame(&mut self, searched: usize) -> io::Result<()> {
        if self.continued {
            // The end of a line partly handed over ends its last piece.
            let Some(nl) = memchr::memchr(b'\n', &self.pending[searched..]) else {
                return self.over_limit();
            };
            let end = searched + nl;
            let rest = self.unfinished(end + 1);
            self.pending.truncate(end);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.send(Msg::Fragment {
                data: piece.into_vec(),
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
            // Only the unfinished line is kept, in a buffer of its own: of its size when reads
            // are copied (the next read makes room for itself), with room for one read when
            // they go straight into it (a read as long as a pipe's buffer, so a full pipe's
            // block keeps little room). Either way the block it completes keeps little room to
            // spare, or gives it back (`send_lines`), so that the output takes it as its batch
            // rather than copy it on the engine's thread (it copies a buffer far larger than its
            // lines, not to hold memory its queue does not count).
            let next = self.unfinished(end);
            self.pending.truncate(end);
            let block = std::mem::replace(&mut self.pending, next);
            self.send_lines(block)?;
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
        let piece = self.pending.len() - incomplete_utf8_tail(&self.pending);
        let tail = self.unfinished(piece);
        self.pending.truncate(piece);
        let data = std::mem::replace(&mut self.pending, tail);
        if self.read_len.is_none() {
            // Copied reads are appended: room for the next one. (A direct reader's `tail` has
            // it already, at a page boundary.)
            self.pending.reserve(READ_BLOCK_BYTES);
        }
        let first = !self.continued;
        self.continued = true;
        self.send(Msg::Fragment {
            data: data.into_vec(),
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
                data: data.into_vec(),
                first: false,
                last: true,
            })
        } else if !data.is_empty() {
            self.send_lines(data)
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
            let mut space = ReadSpace::new(READ_BLOCK_BYTES);
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

    impl Source for Chunked<'_> {}

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
                    Msg::Lines(block) => block.into_buf().into_vec(),
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

    impl Source for std::fs::File {
        fn direct(&self) -> Option<Direct> {
            Direct::of(self.as_fd())
        }
    }

    impl Source for io::PipeReader {
        fn direct(&self) -> Option<Direct> {
            Direct::of(self.as_fd())
        }
    }

    #[test]
    fn files_and_pipes_are_read_straight_into_blocks_a_pipe_its_buffer_at_a_time() {
        let path = std::env::temp_dir().join(format!("egresswatch-kind-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let read_len = |fd: BorrowedFd<'_>| Direct::of(fd).map(|d| d.read_len);
        assert_eq!(read_len(file.as_fd()), Some(READ_BLOCK_BYTES));
        let (reader, _writer) = io::pipe().unwrap();
        // A pipe's buffer at a time (16 pages for a new pipe: 64 KiB with 4 KiB pages, less
        // than a file's read), at most a file's.
        let pipe_read = pipe_size(reader.as_fd()).map(|n| n.min(READ_BLOCK_BYTES));
        assert!(pipe_read.is_some());
        assert_eq!(read_len(reader.as_fd()), pipe_read);
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(read_len(socket.as_fd()), None);
    }

    /// What the sole reader hands over for `input`, read through its descriptor.
    fn read_direct(input: impl Source + Send, max: usize) -> Vec<Msg> {
        let (feed, rx) = Feed::channel();
        std::thread::scope(|s| {
            let read = s.spawn(move || {
                let undelivered = AtomicU64::new(0);
                let ended = read_lines(input, &feed, max, Mode::Sole, &undelivered);
                assert_eq!(undelivered.load(Ordering::Relaxed), 0);
                ended
            });
            let msgs = rx.iter().collect();
            assert_eq!(read.join().unwrap().unwrap(), Ended::Eof);
            msgs
        })
    }

    #[test]
    fn a_file_is_read_straight_into_its_blocks_at_a_page_boundary() {
        // Lines of 50 bytes: no read of 256 KiB ends at a line's end, so every block but the
        // first begins with the line the read before left unfinished.
        let input = format!("{}\n", "x".repeat(49)).repeat((3 * READ_BLOCK_BYTES + 1_000) / 50);
        let path = std::env::temp_dir().join(format!("egresswatch-direct-{}", std::process::id()));
        std::fs::write(&path, &input).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let msgs = read_direct(file, 100);
        assert_eq!(msgs.len(), 4, "a block per read");
        let mut offset = 0;
        for (k, msg) in msgs.into_iter().enumerate() {
            let Msg::Lines(block) = msg else {
                panic!("only whole lines here")
            };
            let unfinished = k * READ_BLOCK_BYTES - offset;
            assert!(
                unfinished < 50 && (unfinished == 0) == (k == 0),
                "{k}: {unfinished}"
            );
            let read_at = block.as_ptr() as usize + unfinished;
            assert_eq!(
                read_at % READ_ALIGN,
                0,
                "block {k}: read {unfinished} bytes in"
            );
            assert_eq!(&block[..], &input.as_bytes()[offset..offset + block.len()]);
            offset += block.len();
            let data = block.into_buf();
            assert!(
                data.keeps_whole(),
                "block {k}: {} in {}",
                data.len(),
                data.capacity()
            );
        }
        assert_eq!(offset, input.len());
    }

    #[test]
    fn a_pipe_read_straight_into_its_blocks_hands_every_byte_over_in_blocks_without_spare_room() {
        // Short lines and lines over the limit (streamed as fragments), written in pieces of
        // sizes that fall anywhere in a line.
        let mut input = Vec::new();
        for i in 0..3_000 {
            let len = if i % 500 == 7 {
                300_000 + i
            } else {
                20 + i % 90
            };
            input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
            input.push(b'\n');
        }
        input.extend_from_slice(b"unterminated");
        let (reader, mut writer) = io::pipe().unwrap();
        let msgs = std::thread::scope(|s| {
            s.spawn(|| {
                use std::io::Write;
                for piece in input.chunks(70_001) {
                    writer.write_all(piece).unwrap();
                }
                drop(writer);
            });
            read_direct(reader, 200_000)
        });
        let (mut out, mut blocks) = (Vec::new(), 0);
        for msg in msgs {
            match msg {
                Msg::Lines(block) => {
                    out.extend_from_slice(&block);
                    blocks += 1;
                    // Reads from a pipe are short: the room made for a whole read is given
                    // back, or the output would copy the block rather than take it.
                    let data = block.into_buf();
                    assert!(data.keeps_whole(), "{} in {}", data.len(), data.capacity());
                }
                msg => out.extend(rebuild(vec![msg])),
            }
        }
        assert!(blocks > 3, "{blocks}");
        assert_eq!(out, input);
    }

    #[test]
    fn a_line_streamed_from_a_pipe_goes_on_in_the_room_made_for_a_read() {
        // After each piece of a line over the limit, the next read goes into the room the
        // piece's tail was given (one pipe read's, at a page boundary), not a buffer grown for
        // a whole file read: every piece keeps that room and no more.
        let (reader, mut writer) = io::pipe().unwrap();
        let read_len = Direct::of(reader.as_fd()).unwrap().read_len;
        // Sixteen reads' worth whatever the page size (a pipe is sixteen pages).
        let mut input = vec![b'x'; 16 * read_len];
        input.extend_from_slice(b"\nafter\n");
        let room = (READ_ALIGN + 3 + read_len).next_multiple_of(ROOM_STEP);
        let msgs = std::thread::scope(|s| {
            s.spawn(|| {
                use std::io::Write;
                writer.write_all(&input).unwrap();
                drop(writer);
            });
            read_direct(reader, 100)
        });
        let mut pieces = 0;
        for msg in &msgs {
            if let Msg::Fragment { data, .. } = msg {
                pieces += 1;
                assert!(
                    data.capacity() <= room,
                    "{} in {}",
                    data.len(),
                    data.capacity()
                );
            }
        }
        assert!(pieces >= 16, "{pieces}");
        assert_eq!(rebuild(msgs), input);
    }

    #[test]
    fn an_empty_pipe_hands_nothing_over() {
        // The first read's room is made before it, a page of padding ahead of it: the end
        // comes with only that in the pending block, which holds no line.
        let (reader, writer) = io::pipe().unwrap();
        drop(writer);
        assert!(read_direct(reader, 100).is_empty());
    }

    #[test]
    fn a_file_ending_at_a_reads_end_is_one_block_and_the_room_after_it_sends_nothing() {
        let mut input = format!("{}\n", "y".repeat(99)).repeat(READ_BLOCK_BYTES / 100);
        input.push_str(&"z".repeat(READ_BLOCK_BYTES - input.len() - 1));
        input.push('\n');
        assert_eq!(input.len(), READ_BLOCK_BYTES);
        let path = std::env::temp_dir().join(format!("egresswatch-exact-{}", std::process::id()));
        std::fs::write(&path, &input).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let msgs = read_direct(file, 1_000);
        assert_eq!(
            msgs.len(),
            1,
            "one block, nothing for the empty room after it"
        );
        assert_eq!(rebuild(msgs), input.as_bytes());
    }

    #[test]
    fn a_descriptor_that_cannot_be_read_reads_as_the_end() {
        // Standard input opened for writing only (`egresswatch run 0>file`): a regular file
        // to fstat, EBADF to read(2). Standard input in the standard library reads it as the
        // end, and so does the direct reader: nothing handed over, no error.
        let path = std::env::temp_dir().join(format!("egresswatch-wronly-{}", std::process::id()));
        std::fs::write(&path, b"never read\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(file.direct().is_some(), "read straight into its blocks");
        assert!(read_direct(file, 100).is_empty());
    }

    /// The lines, `len` bytes each with their end, of `count` pieces of a stream.
    fn pieces(count: usize, len: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut line = vec![b'a' + (i % 26) as u8; len - 1];
                line.push(b'\n');
                // Each piece ends partway through the next line, so that the reads that are
                // waited through continue one.
                line.extend_from_slice(format!("{i:04}").as_bytes());
                line
            })
            .collect()
    }

    /// Writes `pieces` into `writer` a millisecond apart, then closes it; calls `between` after
    /// each.
    fn write_slowly(mut writer: io::PipeWriter, pieces: &[Vec<u8>], mut between: impl FnMut()) {
        use std::io::Write;
        for piece in pieces {
            writer.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            between();
        }
    }

    #[test]
    fn a_pipe_that_has_nothing_yet_is_waited_through_with_the_room_already_given() {
        // A non-blocking pipe: read(2) gives EAGAIN while the writer sleeps; the reader asks
        // again into the same room, so every byte arrives once, in order.
        let (reader, writer) = io::pipe().unwrap();
        // SAFETY: F_GETFL/F_SETFL on an open descriptor, with flags it gave.
        unsafe {
            let flags = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
            assert_eq!(
                libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
                0
            );
        }
        let pieces = pieces(50, 300);
        let msgs = std::thread::scope(|s| {
            s.spawn(|| write_slowly(writer, &pieces, || ()));
            read_direct(reader, 1_000)
        });
        assert_eq!(rebuild(msgs), pieces.concat());
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    #[test]
    fn a_read_interrupted_by_a_signal_is_asked_again() {
        // A handler installed without SA_RESTART: a signal to the reader's thread while it
        // waits in read(2) makes the read fail with EINTR.
        // SAFETY: a zeroed sigaction with a handler that does nothing, for a signal nothing
        // else in these tests uses; the one it replaces is put back below.
        let previous = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
            let mut previous: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGURG, &action, &mut previous), 0);
            previous
        };
        let (reader, writer) = io::pipe().unwrap();
        let pieces = pieces(50, 300);
        let (feed, rx) = Feed::channel();
        let msgs = std::thread::scope(|s| {
            let (tell, told) = std::sync::mpsc::channel();
            let (done, writer_done) = std::sync::mpsc::channel::<()>();
            let read = s.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tell.send(unsafe { libc::pthread_self() }).unwrap();
                let ended = read_lines(reader, &feed, 1_000, Mode::Sole, &AtomicU64::new(0));
                // The thread outlives every signal sent to it, even when the read ends
                // early: the writer's end (or its panic) drops `done`.
                let _ = writer_done.recv();
                ended
            });
            let thread = told.recv().unwrap();
            let written = &pieces;
            s.spawn(move || {
                write_slowly(writer, written, || {
                    // SAFETY: the reader's thread waits for `done` to drop before it ends.
                    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGURG) }, 0);
                });
                drop(done);
            });
            let msgs: Vec<Msg> = rx.iter().collect();
            assert_eq!(read.join().unwrap().unwrap(), Ended::Eof);
            msgs
        });
        // SAFETY: the handler this test replaced, as sigaction gave it.
        assert_eq!(
            unsafe { libc::sigaction(libc::SIGURG, &previous, std::ptr::null_mut()) },
            0
        );
        assert_eq!(rebuild(msgs), pieces.concat());
    }

    #[test]
    fn a_read_that_fails_midway_hands_over_what_came_before_then_gives_its_error() {
        // A socket read straight into its blocks (as a pipe is): its peer closed without
        // reading what it was sent, so once the lines it wrote are read, read(2) gives
        // ECONNRESET.
        struct Reset(std::os::unix::net::UnixStream);
        impl Read for Reset {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                unreachable!("read through its descriptor")
            }
        }
        impl Source for Reset {
            fn direct(&self) -> Option<Direct> {
                Some(Direct {
                    fd: self.0.as_raw_fd(),
                    read_len: 4_096,
                })
            }
        }
        use std::io::Write;
        let (mut ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent = pieces(30, 200).concat();
        peer.write_all(&sent).unwrap();
        ours.write_all(b"never read").unwrap();
        drop(peer);
        let (feed, rx) = Feed::channel();
        let (msgs, ended) = std::thread::scope(|s| {
            let read = s.spawn(move || {
                read_lines(Reset(ours), &feed, 1_000, Mode::Sole, &AtomicU64::new(0))
            });
            let msgs: Vec<Msg> = rx.iter().collect();
            (msgs, read.join().unwrap())
        });
        assert_eq!(
            ended.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset,
            "the error, after the lines"
        );
        // Every byte read before it, the unfinished tail too.
        assert_eq!(rebuild(msgs), sent);
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

    impl Source for Silent {}

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
                Msg::Lines(block) => out.extend_from_slice(&block),
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
