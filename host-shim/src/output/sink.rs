//! Where an output's bytes go: the [`Sink`] each output's delivery thread
//! ([`super::worker`]) delivers its batches through, and the standard output and file sink
//! ([`WriterSink`]). The socket and HTTP sinks are in `socket.rs` and `http.rs`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::queue::{Deadline, Segments};

/// Why a delivery attempt failed.
#[derive(Debug)]
pub(crate) enum SinkError {
    /// Worth trying again (the peer is away, the disk is full).
    Retry(String),
    /// The output cannot work again (standard output closed).
    Fatal(String),
    /// The delivery deadline passed while waiting on the peer.
    Deadline,
    /// Not failed, not finished: ask again (used while waiting for the peer to acknowledge).
    Pending,
}

impl SinkError {
    pub(super) fn message(&self) -> &str {
        match self {
            SinkError::Retry(m) | SinkError::Fatal(m) => m,
            SinkError::Deadline => {
                "the delivery deadline passed while the peer was not taking data"
            }
            SinkError::Pending => "waiting for the peer",
        }
    }
}

/// Where an output's bytes go.
pub(crate) trait Sink: Send {
    /// Delivers `data` (whole lines). After an error it is called again with the same data
    /// (after a delay) until it succeeds; an implementation may keep its progress through
    /// `data` between those calls.
    fn deliver(&mut self, data: &[u8], deadline: &Deadline) -> Result<(), SinkError>;

    /// Whether it writes a batch in pieces as it is ([`Sink::deliver_segments`]). The delivery
    /// thread joins the pieces of a batch for the others once, before its first attempt, and
    /// lets the shared block go.
    fn takes_pieces(&self) -> bool {
        false
    }

    /// [`Sink::deliver`] for a batch that may lie in pieces: by default copied into one buffer
    /// first (a copy at each call, which the delivery thread spares a sink that does not
    /// [`Sink::takes_pieces`] by joining the pieces once).
    fn deliver_segments(&mut self, data: &Segments, deadline: &Deadline) -> Result<(), SinkError> {
        self.deliver(&data.contiguous(), deadline)
    }

    /// Checks on what earlier calls wrote, between batches: writes it again if the connection
    /// broke since. Returns how many written lines the peer has not acknowledged yet (0 for
    /// sinks that cannot tell, whose writes are final).
    fn settle(&mut self, _deadline: &Deadline) -> Result<u64, SinkError> {
        Ok(0)
    }

    /// Called once when the output starts, so that its health is known before the first
    /// event (a socket output tries to connect, giving up at `deadline`). Sinks that need
    /// nothing are up.
    fn probe(&mut self, _deadline: &Deadline) {}

    /// Takes what was written and is not known to have reached the peer, whole lines only, and
    /// forgets it: a reload replaced the output, and its replacement writes it again (what the
    /// peer had after all then repeats). Empty for sinks whose writes are final.
    fn take_unconfirmed(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes how much of the batch in hand is written for good (a file's bytes) and forgets it:
    /// a reload replaced the output as it failed partway through the batch, and its replacement
    /// must not write that again. 0 for sinks whose replacement writes the batch again whole.
    fn take_written(&mut self) -> usize {
        0
    }

    /// The first batch this sink delivers begins with `written` bytes already written where it
    /// writes, by the output it replaces, which stopped partway through that line: it writes
    /// only the rest of them.
    fn resume(&mut self, _written: usize) {}

    /// Lines written but not known to have reached the peer, lost if the output gives up now.
    fn outstanding_lines(&self) -> u64 {
        0
    }

    /// Where the output goes, for messages (`tcp://host:port`, a file path, `stdout`).
    fn describe(&self) -> String;

    /// What the output writes to, as a key: two outputs with the same key write to the same
    /// place (a file by its canonical path), so one must not start before the other has ended.
    fn target(&self) -> String {
        self.describe()
    }

    /// What it writes into now, as a key: for a file, the open file itself (device and inode),
    /// which a path no longer names once the file was renamed or deleted. A line torn by the
    /// output a reload replaced is finished only in the same file.
    fn written_to(&self) -> String {
        self.target()
    }
}

/// How many times file outputs were asked to reopen their path (one per SIGHUP). Process-wide:
/// a process runs one set of outputs.
static REOPEN_FILES: AtomicU64 = AtomicU64::new(0);

/// Asks every file output to reopen its path before its next batch (SIGHUP): after a log
/// rotation renamed the file (logrotate's default `create` mode, then `kill -HUP`), what follows
/// goes to a new file at the configured path, not on into the renamed one.
pub(crate) fn reopen_files() {
    REOPEN_FILES.fetch_add(1, Ordering::Relaxed);
}

/// An open file's device and inode.
fn file_id(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Opens `path` for appending, creating it if needed.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Standard output or a file: written and flushed per batch. A write error on standard output
/// is fatal (the reader is gone); on a file it is retried (a full disk may be cleared).
pub(crate) struct WriterSink {
    writer: Box<dyn Write + Send>,
    what: String,
    /// [`Sink::target`]: a file's canonical path.
    target: String,
    /// The open file's device and inode ([`Sink::written_to`]).
    file_id: Option<(u64, u64)>,
    fatal: bool,
    /// Bytes of the current batch already written (of all its pieces).
    offset: usize,
    /// A file's path and the reopen request it last honoured ([`reopen_files`]).
    reopen: Option<(PathBuf, u64)>,
}

impl WriterSink {
    /// Standard output.
    pub(crate) fn stdout() -> Self {
        WriterSink {
            writer: Box::new(io::stdout()),
            what: "stdout".into(),
            target: "stdout".into(),
            file_id: None,
            fatal: true,
            offset: 0,
            reopen: None,
        }
    }

    /// A file opened for appending at `path` (with [`open_append`]); reopened at `path` before
    /// the first batch after each [`reopen_files`].
    pub(crate) fn file(file: File, path: &Path) -> Self {
        WriterSink {
            file_id: file_id(&file),
            writer: Box::new(file),
            what: path.display().to_string(),
            // (Open, so it exists: `./out` and `out`, or a symbolic link, are one file.)
            target: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            fatal: false,
            offset: 0,
            reopen: Some((path.to_path_buf(), REOPEN_FILES.load(Ordering::Relaxed))),
        }
    }

    /// Any writer, for tests.
    #[cfg(test)]
    pub(crate) fn writer(writer: Box<dyn Write + Send>) -> Self {
        WriterSink {
            writer,
            what: "test".into(),
            target: "test".into(),
            file_id: None,
            fatal: true,
            offset: 0,
            reopen: None,
        }
    }

    /// A writer whose errors are retried, as a file's are, into a file of device 1 and inode
    /// `inode` (tests).
    #[cfg(test)]
    pub(crate) fn retried(writer: Box<dyn Write + Send>, inode: u64) -> Self {
        WriterSink {
            fatal: false,
            file_id: Some((1, inode)),
            ..WriterSink::writer(writer)
        }
    }

    /// Reopens the file if [`reopen_files`] was called since it was opened. Only between
    /// batches: the previous batch is written and flushed whole to the old file. A file that
    /// cannot be opened is a retried failure; the batch stays queued and the old file is kept
    /// until the path opens.
    fn reopen_if_asked(&mut self) -> Result<(), SinkError> {
        let Some((path, honoured)) = &mut self.reopen else {
            return Ok(());
        };
        let asked = REOPEN_FILES.load(Ordering::Relaxed);
        if self.offset != 0 || asked == *honoured {
            return Ok(());
        }
        let file = open_append(path).map_err(|e| {
            SinkError::Retry(format!("reopening {} after SIGHUP: {e}", path.display()))
        })?;
        self.file_id = file_id(&file);
        self.writer = Box::new(file);
        *honoured = asked;
        tracing::info!("output file {} reopened (SIGHUP)", path.display());
        Ok(())
    }

    /// Writes the batch that `pieces` (in order) make, from `offset` on, and flushes it:
    /// several pieces with one `writev` (a block's runs and the replacements between them).
    fn write_pieces<'a>(
        &mut self,
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), SinkError> {
        self.reopen_if_asked()?;
        let fail = |fatal: bool, e: io::Error| {
            if fatal {
                SinkError::Fatal(e.to_string())
            } else {
                SinkError::Retry(e.to_string())
            }
        };
        // What is left to write: the pieces from `offset` on, the first cut where it lies.
        let mut skip = self.offset;
        let mut left: Vec<IoSlice<'_>> = pieces
            .filter_map(|piece| {
                let from = skip.min(piece.len());
                skip -= from;
                (from < piece.len()).then(|| IoSlice::new(&piece[from..]))
            })
            .collect();
        let mut left = &mut left[..];
        while !left.is_empty() {
            match self.writer.write_vectored(left) {
                Ok(0) => return Err(fail(self.fatal, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.offset += n;
                    IoSlice::advance_slices(&mut left, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(self.fatal, e)),
            }
        }
        self.writer.flush().map_err(|e| fail(self.fatal, e))?;
        self.offset = 0;
        Ok(())
    }
}

impl Sink for WriterSink {
    fn deliver(&mut self, data: &[u8], _deadline: &Deadline) -> Result<(), SinkError> {
        self.write_pieces(std::iter::once(data))
    }

    fn takes_pieces(&self) -> bool {
        true
    }

    fn deliver_segments(&mut self, data: &Segments, _deadline: &Deadline) -> Result<(), SinkError> {
        self.write_pieces(data.slices())
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn target(&self) -> String {
        self.target.clone()
    }

    fn written_to(&self) -> String {
        match self.file_id {
            Some((dev, ino)) => format!("{dev}:{ino}"),
            None => self.target(),
        }
    }

    fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.offset)
    }

    fn resume(&mut self, written: usize) {
        self.offset = written;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::line_buf::LineBuf;

    /// A writer that takes at most `step` bytes a call, across the pieces of a `writev`, and
    /// fails every third call.
    struct Stingy {
        out: Arc<Mutex<Vec<u8>>>,
        step: usize,
        calls: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::Error::other("no room for now"));
            }
            let mut out = self.out.lock().unwrap();
            let before = out.len();
            for buf in bufs {
                let n = buf.len().min(self.step - (out.len() - before));
                out.extend_from_slice(&buf[..n]);
            }
            Ok(out.len() - before)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that takes one buffer: what each delivery was given.
    struct OneBuffer(Vec<Vec<u8>>);

    impl Sink for OneBuffer {
        fn deliver(&mut self, data: &[u8], _: &Deadline) -> Result<(), SinkError> {
            self.0.push(data.to_vec());
            Ok(())
        }

        fn describe(&self) -> String {
            "one buffer".into()
        }
    }

    #[test]
    fn a_sink_of_one_buffer_is_given_the_pieces_joined_in_order() {
        let block = Arc::new(LineBuf::at(b"xxone\ntwo\nthree\n".to_vec(), 2));
        let mut batch = Segments::from(b"zero\n".to_vec());
        batch.push_shared(&block, 0..4);
        batch.extend_from_slice(b"TWO\n");
        batch.push_shared(&block, 8..14);
        let mut sink = OneBuffer(Vec::new());
        assert!(!sink.takes_pieces());
        sink.deliver_segments(&batch, &Deadline::default()).unwrap();
        // Joined once (as the delivery thread does for such a sink), the same bytes.
        batch.join();
        assert_eq!(batch.slices().count(), 1);
        assert_eq!(Arc::strong_count(&block), 1, "the block is let go");
        sink.deliver_segments(&batch, &Deadline::default()).unwrap();
        let expected = b"zero\none\nTWO\nthree\n".to_vec();
        assert_eq!(sink.0, [expected.clone(), expected]);
    }

    #[test]
    fn a_batch_in_pieces_is_written_whole_and_once_through_writes_cut_short_anywhere() {
        // Pieces of 9, 6, 13 and 5 bytes: the block's runs shared, replacements between them.
        let block = Arc::new(LineBuf::at(b"xxxxfirst\nflag\nthird\nfourth\n".to_vec(), 4));
        let mut batch = Segments::default();
        batch.push_shared(&block, 0..6);
        batch.extend_from_slice(b"FLAG!\n");
        batch.push_shared(&block, 11..24);
        batch.extend_from_slice(b"last\n");
        let expected = b"first\nFLAG!\nthird\nfourth\nlast\n".to_vec();
        assert_eq!(batch.slices().count(), 4);
        for step in 1..=expected.len() {
            let out = Arc::new(Mutex::new(Vec::new()));
            let writer = Stingy {
                out: Arc::clone(&out),
                step,
                calls: 0,
            };
            let mut sink = WriterSink::retried(Box::new(writer), 1);
            let mut failed = 0;
            while let Err(e) = sink.deliver_segments(&batch, &Deadline::default()) {
                assert!(matches!(e, SinkError::Retry(_)), "{e:?}");
                failed += 1;
                assert!(failed < 100, "never done");
            }
            assert_eq!(*out.lock().unwrap(), expected, "{step} bytes a write");
            // The next batch is written from its start.
            for _ in 0..100 {
                if sink.deliver(b"more\n", &Deadline::default()).is_ok() {
                    break;
                }
            }
            assert!(out.lock().unwrap().ends_with(b"last\nmore\n"), "{step}");
        }
    }
}
