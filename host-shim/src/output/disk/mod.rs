//! An output's disk buffer (`buffer: { type: disk, path, max_bytes, when_full }`): the batches
//! on their way to the output, kept in files so that they survive a stop, a crash or a power
//! loss, and are delivered first, in order, at the next start.
//!
//! Layout of the folder (`path`):
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files (a 20-digit number, rising), each a header
//!   ([`SEGMENT_MAGIC`]) then records appended one per batch: the data's length and the batch's
//!   line count (both `u64`, little-endian), a CRC-32 of those and of the data, then the data
//!   (whole lines), written with one `writev`. The engine thread appends to the newest segment
//!   (made on the first append, so that a start on a full disk can still deliver) and starts a
//!   new one once it passes an eighth of `max_bytes`; old segments are never written again.
//! - `cursor`: where delivery has got to (a segment and an offset in it, with their CRC-32),
//!   overwritten in place after each delivered batch. Segments before it are deleted.
//! - `lock`: held (`flock`) while a process uses the folder, so that two processes (or two
//!   outputs) never share one buffer.
//!
//! Durability: a batch is written with `writev(2)` as it is pushed, so a crash of the process
//! (SIGKILL, a panic, the OOM killer) loses nothing the buffer took. A thread syncs the newest
//! segment (`fdatasync`) every [`SYNC_EVERY`], at once when a batch carries acknowledgements,
//! at each new segment and at the end; a power loss or kernel crash can lose what was written
//! since the last sync. The acknowledgements of a batch (the HTTP input's 200) are told only
//! once a sync after it returned, so a 200 means the lines are on disk. After a failed sync
//! they fail (the senders send again), and so do those of every batch written to that segment
//! before the next batch starts a new one: Linux reports a failed write-back once and may drop
//! those pages, so a later sync of the same file that succeeds vouches for nothing before it.
//! The cursor is not synced: after a power loss it may be behind, and lines delivered just
//! before repeat.
//!
//! Before the output delivers, every record past the cursor is checked ([`DiskLog::check`], on
//! the output's own thread, so that the input listens meanwhile), writing nothing: the first
//! record of a segment that is torn (a crash mid-write) or fails its checksum ends what is read
//! of that segment; it and what follows stay in the file, unread, counted and logged, until the
//! segment is deleted. Until then the queue counts those segments' bytes as held (an upper
//! bound of what the check finds), so `max_bytes` holds meanwhile. A record found damaged when read back while running is skipped the same
//! way. A cursor that fails its checksum replays the whole buffer (repeats, never loss).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ack::Ack;
use crate::metrics::OutputHealth;

mod files;
pub(crate) mod storage;

use files::{checksum, read_cursor, read_record, scan_segment, segment_path, try_lock};
use storage::{Files, Storage};

/// The first bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"EGWBUF1\n";

/// Where a segment's records start.
const FIRST_RECORD: u64 = SEGMENT_MAGIC.len() as u64;

/// A record's header: data length (u64), lines (u64), CRC-32 (u32).
const RECORD_HEADER: u64 = 20;

/// How often the newest segment is synced to disk while lines come in.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// A place in the buffer: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    segment: u64,
    offset: u64,
}

/// One batch read back from the buffer.
pub(crate) struct Record {
    /// Whole lines.
    pub(crate) data: Vec<u8>,
    /// How many.
    pub(crate) lines: u64,
    /// Just past it: where the cursor goes once it is delivered.
    pub(crate) end: Position,
}

/// What [`DiskLog::read_next`] found.
pub(crate) enum Next {
    /// The next record.
    Record(Record),
    /// A record that fails its checksum now (damaged on disk since it was written): it and the
    /// rest of its segment are skipped; these were in them.
    Skipped(Counts),
}

/// Records, lines and bytes of lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Batches.
    pub(crate) records: u64,
    /// Lines.
    pub(crate) lines: u64,
    /// Bytes of lines (record headers not counted: [`Counts::record_bytes`] adds them).
    pub(crate) bytes: u64,
}

impl Counts {
    fn add(&mut self, lines: u64, bytes: u64) {
        self.records += 1;
        self.lines += lines;
        self.bytes += bytes;
    }

    /// The bytes of these records on disk, headers included: what `max_bytes` bounds.
    pub(crate) fn record_bytes(&self) -> u64 {
        self.bytes + self.records * RECORD_HEADER
    }

    /// The bytes on disk of one record of `data` bytes.
    pub(crate) fn one_record(data: u64) -> u64 {
        data + RECORD_HEADER
    }

    fn minus(self, other: Counts) -> Counts {
        Counts {
            records: self.records.saturating_sub(other.records),
            lines: self.lines.saturating_sub(other.lines),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

/// What the buffer held at start, past the cursor.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Found {
    /// Readable records past the cursor.
    pub(crate) held: Counts,
    /// Records that failed their checksum (each skipped with what followed it in its segment).
    pub(crate) corrupt: u64,
}

/// The segments past the cursor at open, not yet checked ([`DiskLog::check`]).
#[derive(Default)]
struct Unchecked {
    /// Each one's id and where reading starts in it, oldest first.
    segments: Vec<(u64, u64)>,
    /// What those checked so far hold.
    found: Found,
}

/// What is known of one segment file.
#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    /// Its size on disk.
    size: u64,
    /// Where its readable records end: its size, or the first bad record.
    end: u64,
    /// What it holds from where reading starts in it (the cursor, in the first one).
    held: Counts,
    /// What the reader has taken of `held` (less what a rewind gave back).
    read: Counts,
}

/// An output's disk buffer. The engine thread appends ([`DiskLog::append`]); the output's
/// delivery thread reads in order ([`DiskLog::read_next`]) and moves the cursor past what it
/// delivered ([`DiskLog::delivered`]). The queue in front ([`super::queue::Queue`]) counts the
/// records and keeps those two from crossing.
pub(crate) struct DiskLog {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    /// Held for the buffer's lifetime: the folder's `lock`, locked.
    _lock: File,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    reader: Mutex<Reader>,
    cursor: Mutex<File>,
    /// Where delivery has got to (what the cursor file says, unless writing it failed): a
    /// rewind goes back there.
    confirmed: Mutex<Position>,
    /// Every segment file.
    segments: Mutex<BTreeMap<u64, Segment>>,
    sync: Arc<SyncShared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    stats: OutputHealth,
    unchecked: Mutex<Unchecked>,
    /// The bytes past the cursor at open, records or not: at least what the check finds.
    backlog_bytes: u64,
}

/// The segment being written (made on the first append, so that a start on a full disk can
/// still deliver what the buffer holds).
struct Writer {
    current: Option<Current>,
    next_id: u64,
}

struct Current {
    id: u64,
    file: Arc<Written>,
    len: u64,
}

/// A segment being written, shared with the sync thread.
struct Written {
    file: File,
    /// Whether a sync of it failed: then no later sync of it vouches for what it holds (Linux
    /// reports a failed write-back once, and may have dropped those pages).
    failed: Mutex<bool>,
}

impl Written {
    /// Syncs it; fails for good once a sync has failed. Syncs of one segment take turns, so
    /// that the one told of a failure is never overtaken by one that is not.
    fn sync(&self, storage: &dyn Storage) -> io::Result<()> {
        let mut failed = lock(&self.failed);
        if *failed {
            return Err(io::Error::other(
                "an earlier sync of this segment failed (what it held may not be on disk)",
            ));
        }
        storage.sync(&self.file).inspect_err(|_| *failed = true)
    }
}

struct Reader {
    position: Position,
    file: Option<File>,
}

#[derive(Default)]
struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// A sync failed: what follows goes to a new segment (the failed one may have lost pages).
    roll: AtomicBool,
}

#[derive(Default)]
struct SyncState {
    /// The newest segment.
    file: Option<Arc<Written>>,
    /// Written to since the last sync.
    dirty: bool,
    /// Told once the next sync returns.
    acks: Vec<Ack>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DiskLog {
    /// Opens (creating it if needed) the disk buffer of output `name` in `dir`, holding at most
    /// `max_bytes` of undelivered lines. What an earlier run left past the cursor is not read
    /// yet: [`DiskLog::check`] does that. Writes nothing but the lock and cursor files (if
    /// absent), so that a full disk still starts and delivers. Errors name the output's
    /// `buffer.path`.
    pub(crate) fn open(
        name: &str,
        dir: &Path,
        max_bytes: u64,
        stats: OutputHealth,
    ) -> io::Result<DiskLog> {
        Self::open_with(name, dir, max_bytes, stats, Arc::new(Files))
    }

    /// [`DiskLog::open`] over `storage`'s file operations.
    pub(crate) fn open_with(
        name: &str,
        dir: &Path,
        max_bytes: u64,
        stats: OutputHealth,
        storage: Arc<dyn Storage>,
    ) -> io::Result<DiskLog> {
        let key = format!("outputs.{name}.buffer.path");
        let at = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{key}: {what} {}: {e}", dir.display()))
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| at("cannot create the folder", e))?;
            // So that the folder's name survives a power loss.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                storage
                    .sync_dir(parent)
                    .map_err(|e| at("cannot sync the parent of", e))?;
            }
        }
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| at("cannot write in", e))?;
        if let Err(e) = try_lock(&lock_file) {
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{key}: {} is in use (its lock is held by another process, or by another \
                         output of this one under another path)",
                        dir.display()
                    ),
                ));
            }
            return Err(at("cannot lock", e));
        }
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| at("cannot list", e))? {
            let entry = entry.map_err(|e| at("cannot list", e))?;
            let file_name = entry.file_name();
            if let Some(id) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let cursor = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("cursor"))
            .map_err(|e| at("cannot write in", e))?;
        let saved = read_cursor(&cursor, name, dir);
        // Delivery starts at the cursor in its segment, or at the first segment after it
        // (those before were delivered; a crash may have left them undeleted).
        let start = match saved {
            Some(c) if ids.contains(&c.segment) => Position {
                segment: c.segment,
                offset: c.offset.max(FIRST_RECORD),
            },
            Some(c) => Position {
                segment: ids
                    .iter()
                    .copied()
                    .find(|&id| id > c.segment)
                    .unwrap_or(u64::MAX),
                offset: FIRST_RECORD,
            },
            None => Position {
                segment: ids.first().copied().unwrap_or(u64::MAX),
                offset: FIRST_RECORD,
            },
        };
        let mut segments = BTreeMap::new();
        let mut unchecked = Unchecked::default();
        let mut backlog_bytes = 0;
        for id in ids {
            let path = segment_path(dir, id);
            if id < start.segment {
                // Best effort: delivered already; a later start tries again.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let from = if id == start.segment {
                start.offset
            } else {
                FIRST_RECORD
            };
            // Each segment is opened and its header read now (a few per buffer), so that one
            // that cannot be read at all (no permission, not a file, gone) fails the start,
            // naming the folder; its records are checked later.
            let cannot = |e| at(&format!("cannot read {}", path.display()), e);
            let file = storage.open(&path).map_err(cannot)?;
            let size = file.metadata().map_err(cannot)?.len();
            if size >= FIRST_RECORD {
                let mut magic = [0u8; FIRST_RECORD as usize];
                storage
                    .read_exact_at(&file, &mut magic, 0)
                    .map_err(cannot)?;
            }
            backlog_bytes += size.saturating_sub(from);
            unchecked.segments.push((id, from));
            segments.insert(
                id,
                Segment {
                    size,
                    // (Until checked nothing is read from it.)
                    end: size,
                    ..Segment::default()
                },
            );
        }
        // New batches go to a new segment, after every existing one and the cursor's.
        let next_id = segments
            .keys()
            .next_back()
            .map_or(0, |id| id + 1)
            .max(saved.map_or(0, |c| c.segment + 1));
        let start = if segments.contains_key(&start.segment) {
            start
        } else {
            Position {
                segment: next_id,
                offset: FIRST_RECORD,
            }
        };
        let sync = Arc::new(SyncShared::default());
        let syncer = {
            let (sync, name, storage) = (Arc::clone(&sync), name.to_owned(), Arc::clone(&storage));
            std::thread::Builder::new()
                .name(format!("egresswatch-sync-{name}"))
                .spawn(move || sync_loop(&sync, &name, storage.as_ref()))?
        };
        let log = DiskLog {
            dir: dir.to_owned(),
            storage,
            _lock: lock_file,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 128 << 20),
            writer: Mutex::new(Writer {
                current: None,
                next_id,
            }),
            reader: Mutex::new(Reader {
                position: start,
                file: None,
            }),
            cursor: Mutex::new(cursor),
            confirmed: Mutex::new(start),
            segments: Mutex::new(segments),
            sync,
            syncer: Mutex::new(Some(syncer)),
            stats,
            unchecked: Mutex::new(unchecked),
            backlog_bytes,
        };
        log.report_size();
        Ok(log)
    }

    /// The bytes past the cursor at open: at least the bytes of the records [`DiskLog::check`]
    /// finds, headers included.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes
    }

    /// Checks every record past the cursor at open (what an earlier run left) and returns
    /// what they hold: the first bad record of a segment ends what is read of it (logged,
    /// counted). Reads each record once: after an error it
    /// goes on from the segment that failed, and once done it only returns what it found.
    /// Must return before the first [`DiskLog::read_next`].
    /// Between two segments it stops if `stop` says so (`Interrupted`; it goes on from there
    /// when called again).
    pub(crate) fn check(&self, stop: &dyn Fn() -> bool) -> io::Result<Found> {
        let mut unchecked = lock(&self.unchecked);
        while let Some(&(id, from)) = unchecked.segments.first() {
            if stop() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "stopped before it was checked",
                ));
            }
            let path = segment_path(&self.dir, id);
            let mut found = unchecked.found;
            let segment = scan_segment(
                self.storage.as_ref(),
                self.stats.name(),
                &path,
                from,
                &mut found,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            unchecked.found = found;
            if let Some(known) = lock(&self.segments).get_mut(&id) {
                known.end = segment.end;
                known.held = segment.held;
            }
            unchecked.segments.remove(0);
        }
        Ok(unchecked.found)
    }

    /// The folder, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn report_size(&self) {
        let bytes = lock(&self.segments).values().map(|s| s.size).sum();
        self.stats.set_disk_bytes(bytes);
    }

    /// Appends a batch of `lines` lines; `acks` are told delivered once it is synced to disk.
    /// On an error nothing of it stays readable in the buffer, and `acks` are handed back.
    pub(crate) fn append(
        &self,
        data: &[u8],
        lines: u64,
        acks: Vec<Ack>,
    ) -> Result<(), (io::Error, Vec<Ack>)> {
        let mut writer = lock(&self.writer);
        let roll = self.sync.roll.swap(false, Ordering::Relaxed);
        let full = writer
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.segment_bytes);
        if roll || full {
            if let Err(e) = self.next_segment(&mut writer) {
                if roll {
                    self.sync.roll.store(true, Ordering::Relaxed);
                }
                return Err((e, acks));
            }
        }
        let current = writer.current.as_mut().expect("made above");
        let start = current.len;
        let len = data.len() as u64;
        let mut head = [0u8; RECORD_HEADER as usize];
        head[0..8].copy_from_slice(&len.to_le_bytes());
        head[8..16].copy_from_slice(&lines.to_le_bytes());
        head[16..20].copy_from_slice(&checksum(len, lines, data).to_le_bytes());
        if let Err(e) = self.storage.append(&current.file.file, &[&head, data]) {
            // Leave no part of it behind (a later record must follow a whole one); if even
            // that fails, the next batch goes to a new segment.
            if self.storage.truncate(&current.file.file, start).is_err() {
                self.sync.roll.store(true, Ordering::Relaxed);
            }
            return Err((e, acks));
        }
        current.len = start + RECORD_HEADER + len;
        let (id, size) = (current.id, current.len);
        {
            let mut segments = lock(&self.segments);
            let segment = segments.entry(id).or_default();
            segment.size = size;
            segment.end = size;
            segment.held.add(lines, len);
        }
        {
            // (Still holding the writer: a new segment cannot come between this batch and its
            // acknowledgements, see `next_segment`.)
            let mut state = lock(&self.sync.state);
            state.dirty = true;
            if !acks.is_empty() {
                // A sender waits for these: sync now rather than at the next tick.
                state.acks.extend(acks);
                self.sync.wake.notify_one();
            }
        }
        drop(writer);
        self.report_size();
        Ok(())
    }

    /// Starts a new segment, after syncing the one being written: the acknowledgements waiting
    /// (all of batches written before this, the writer being held) are then told after a sync
    /// of the new one, so that one must vouch for the old one's too; if it cannot, they fail
    /// now. On an error nothing else changes, and no file is left.
    fn next_segment(&self, writer: &mut Writer) -> io::Result<()> {
        if let Some(current) = &writer.current {
            if let Err(e) = current.file.sync(self.storage.as_ref()) {
                let failed = std::mem::take(&mut lock(&self.sync.state).acks);
                tracing::error!(output = %self.stats.name(), error = %e, requests = failed.len(),
                    "disk buffer: sync failed; the requests waiting on it fail (their senders \
                     send again) and the next lines go to a new segment");
                drop(failed);
            }
        }
        let id = writer.next_id;
        let path = segment_path(&self.dir, id);
        let file = match self.storage.create(&path) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    // Not ours (left by hand, or a removal that failed): use the next number.
                    writer.next_id += 1;
                }
                return Err(e);
            }
        };
        if let Err(e) = self
            .storage
            .append(&file, &[SEGMENT_MAGIC])
            .and_then(|()| self.storage.sync_dir(&self.dir))
        {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let file = Arc::new(Written {
            file,
            failed: Mutex::new(false),
        });
        lock(&self.segments).insert(
            id,
            Segment {
                size: FIRST_RECORD,
                end: FIRST_RECORD,
                ..Segment::default()
            },
        );
        lock(&self.sync.state).file = Some(Arc::clone(&file));
        writer.next_id = id + 1;
        writer.current = Some(Current {
            id,
            file,
            len: FIRST_RECORD,
        });
        Ok(())
    }

    /// The next record, in order. Only called when the queue counts one waiting. An I/O error
    /// changes nothing (the caller tries again later).
    pub(crate) fn read_next(&self) -> io::Result<Next> {
        let mut reader = lock(&self.reader);
        loop {
            let Position { segment, offset } = reader.position;
            let end = lock(&self.segments).get(&segment).map_or(0, |s| s.end);
            if offset >= end {
                // This segment is done: the next one holds the record.
                let next = lock(&self.segments)
                    .range(segment + 1..)
                    .next()
                    .map(|(id, _)| *id)
                    .ok_or_else(|| {
                        io::Error::other("a record is counted but no segment holds it")
                    })?;
                *reader = Reader {
                    position: Position {
                        segment: next,
                        offset: FIRST_RECORD,
                    },
                    file: None,
                };
                continue;
            }
            if reader.file.is_none() {
                reader.file = Some(self.storage.open(&segment_path(&self.dir, segment))?);
            }
            let file = reader.file.as_ref().expect("opened above");
            match read_record(self.storage.as_ref(), file, offset, end) {
                Ok(Some((data, lines, after))) => {
                    if let Some(s) = lock(&self.segments).get_mut(&segment) {
                        s.read.add(lines, data.len() as u64);
                    }
                    reader.position.offset = after;
                    return Ok(Next::Record(Record {
                        data,
                        lines,
                        end: reader.position,
                    }));
                }
                Ok(None) => reader.position.offset = end,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // Damaged since it was written: skip it and the rest of its segment, as at
                    // start; nothing more is written to that segment.
                    let skipped = {
                        let mut writer = lock(&self.writer);
                        if writer.current.as_ref().is_some_and(|c| c.id == segment) {
                            writer.current = None;
                        }
                        let mut segments = lock(&self.segments);
                        let s = segments.get_mut(&segment).expect("read above");
                        s.end = offset;
                        s.held.minus(s.read)
                    };
                    tracing::error!(output = %self.stats.name(),
                        segment = %segment_path(&self.dir, segment).display(), offset,
                        records = skipped.records, lines = skipped.lines,
                        "disk buffer: {e}, damaged on disk since it was written; it and the rest \
                         of its segment are skipped, counted in \
                         egresswatch_output_buffer_corrupt_records_total");
                    reader.position.offset = offset;
                    return Ok(Next::Skipped(skipped));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything up to `end` was delivered: the cursor moves there, and segments before it are
    /// deleted.
    pub(crate) fn delivered(&self, end: Position) -> io::Result<()> {
        // (The peer has them, whether or not the cursor file can say so.)
        *lock(&self.confirmed) = end;
        let mut bytes = [0u8; 20];
        bytes[0..8].copy_from_slice(&end.segment.to_le_bytes());
        bytes[8..16].copy_from_slice(&end.offset.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..16]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        lock(&self.cursor).write_all_at(&bytes, 0)?;
        let done: Vec<u64> = lock(&self.segments)
            .range(..end.segment)
            .map(|(id, _)| *id)
            .collect();
        if !done.is_empty() {
            for id in done {
                match std::fs::remove_file(segment_path(&self.dir, id)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                lock(&self.segments).remove(&id);
            }
            self.report_size();
        }
        Ok(())
    }

    /// The delivery thread that read `taken` (each record's end, lines and bytes of lines: those
    /// read since the cursor last moved, which its peer may not have) has ended, and another
    /// takes over (a reload gave the output a new sink): the next [`DiskLog::read_next`] starts
    /// again at the cursor, so those records are read again, in order.
    pub(crate) fn rewind(&self, taken: &[(Position, u64, u64)]) {
        let mut reader = lock(&self.reader);
        let mut segments = lock(&self.segments);
        for &(end, lines, bytes) in taken {
            if let Some(s) = segments.get_mut(&end.segment) {
                let record = Counts {
                    records: 1,
                    lines,
                    bytes,
                };
                s.read = s.read.minus(record);
            }
        }
        *reader = Reader {
            position: *lock(&self.confirmed),
            file: None,
        };
    }

    /// No more appends: the last ones are synced (and their acknowledgements told) before this
    /// returns.
    pub(crate) fn close(&self) {
        lock(&self.sync.state).closed = true;
        self.sync.wake.notify_all();
        if let Some(syncer) = lock(&self.syncer).take() {
            let _ = syncer.join();
        }
    }
}

impl Drop for DiskLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The sync thread: syncs the newest segment if it was written to, every [`SYNC_EVERY`] or at
/// once when a batch with acknowledgements is waiting (then the batches that arrive during one
/// sync share the next: a sender waits one or two syncs, not a tick), and tells the
/// acknowledgements of what that covered; on close, a last sync. After a failed sync the
/// acknowledgements fail (their senders send again), and so do those waiting on that segment
/// until the next batch has started a new one ([`Written::sync`]).
fn sync_loop(sync: &SyncShared, name: &str, storage: &dyn Storage) {
    loop {
        let (file, acks, closed) = {
            let mut state = lock(&sync.state);
            if !state.closed && state.acks.is_empty() {
                state = sync
                    .wake
                    .wait_timeout(state, SYNC_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let file = if std::mem::take(&mut state.dirty) {
                state.file.clone()
            } else {
                None
            };
            (file, std::mem::take(&mut state.acks), state.closed)
        };
        let synced = file.map_or(Ok(()), |f| f.sync(storage));
        match synced {
            Ok(()) => acks.into_iter().for_each(Ack::delivered),
            Err(e) => {
                tracing::error!(output = %name, error = %e,
                    "disk buffer: sync failed; the requests waiting on it fail (their senders \
                     send again) and the next lines go to a new segment");
                sync.roll.store(true, Ordering::Relaxed);
                drop(acks);
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
