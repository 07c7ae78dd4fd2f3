//! An output's disk buffer (`buffer: { type: disk, path, max_bytes, when_full }`): the batches
//! on their way to the output, kept in files so that they survive a stop, a crash or a power
//! loss, and are delivered first, in order, at the next start.
//!
//! Layout of the folder (`path`):
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files (a 20-digit number, rising), each a header
//!   ([`SEGMENT_MAGIC`]) then records appended one per batch: the data's length and the batch's
//!   line count (both `u64`, little-endian), a CRC-32 of those and of the data, then the data
//!   (whole lines). The engine thread appends to the newest segment and starts a new one once it
//!   passes an eighth of `max_bytes`; old segments are never written again.
//! - `cursor`: where delivery has got to (a segment and an offset in it, with their CRC-32),
//!   overwritten in place after each delivered batch. Segments before it are deleted.
//! - `lock`: held (`flock`) while a process uses the folder, so that two processes (or two
//!   outputs) never share one buffer.
//!
//! Durability: a batch is written with `write(2)` as it is pushed, so a crash of the process
//! (SIGKILL, a panic, the OOM killer) loses nothing the buffer took. A thread syncs the newest
//! segment (`fdatasync`) every [`SYNC_EVERY`] (and at each new segment and at the end); a power
//! loss or kernel crash can lose what was written since the last sync. The acknowledgements of a
//! batch (the HTTP input's 200) are told only once the sync after it returned, so a 200 means
//! the lines are on disk; a batch that carries some is synced at once, not at the next tick. The cursor is not synced: after a power loss it may be behind, and
//! lines delivered just before repeat (never lost).
//!
//! At start the folder is read from the cursor on: every record is checked (a torn write, or a
//! damaged one, fails its checksum); the first bad record of a segment and what follows it in
//! that segment are cut off, counted and logged, and the run starts with the records before it.
//! A cursor that fails its checksum replays the whole buffer (repeats, never loss).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ack::Ack;
use crate::metrics::OutputHealth;

/// The first bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"EGWBUF1\n";

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

/// What the buffer held at start, past the cursor.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Found {
    /// Batches.
    pub(crate) records: u64,
    /// Lines.
    pub(crate) lines: u64,
    /// Bytes of lines.
    pub(crate) bytes: u64,
    /// Records that failed their checksum (each cut off with what followed it in its segment).
    pub(crate) corrupt: u64,
}

/// An output's disk buffer. The engine thread appends ([`DiskLog::append`]); the output's
/// delivery thread reads in order ([`DiskLog::read_next`]) and moves the cursor past what it
/// delivered ([`DiskLog::delivered`]). The queue in front ([`super::queue::Queue`]) counts the
/// records and keeps those two from crossing.
pub(crate) struct DiskLog {
    dir: PathBuf,
    /// Held for the buffer's lifetime: the folder's `lock`, locked.
    _lock: File,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    reader: Mutex<Reader>,
    cursor: Mutex<File>,
    /// Every segment file and its size.
    segments: Mutex<BTreeMap<u64, u64>>,
    sync: Arc<SyncShared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    stats: OutputHealth,
}

struct Writer {
    id: u64,
    file: File,
    len: u64,
}

struct Reader {
    position: Position,
    file: Option<File>,
}

#[derive(Default)]
struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// The newest segment (another handle to it).
    file: Option<File>,
    /// Written to since the last sync.
    dirty: bool,
    /// Told once the next sync returns.
    acks: Vec<Ack>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn checksum(len: u64, lines: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&lines.to_le_bytes());
    h.update(data);
    h.finalize()
}

/// Reads a record at `offset` of `file` (`size` bytes long). `Ok(None)`: the segment ends
/// there. An `InvalidData` error: a torn or damaged record.
fn read_record(file: &File, offset: u64, size: u64) -> io::Result<Option<(Vec<u8>, u64, u64)>> {
    if offset >= size {
        return Ok(None);
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if size - offset < RECORD_HEADER {
        return Err(bad("a record header cut short"));
    }
    let mut head = [0u8; RECORD_HEADER as usize];
    file.read_exact_at(&mut head, offset)?;
    let len = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
    let lines = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if len > size - offset - RECORD_HEADER {
        return Err(bad("a record cut short"));
    }
    // Read into spare capacity: zeroing the buffer first cost as much as the checksum.
    let mut data = Vec::with_capacity(len as usize);
    let mut at = file;
    at.seek(SeekFrom::Start(offset + RECORD_HEADER))?;
    at.take(len).read_to_end(&mut data)?;
    if data.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if checksum(len, lines, &data) != crc {
        return Err(bad("a record that fails its checksum"));
    }
    Ok(Some((data, lines, offset + RECORD_HEADER + len)))
}

impl DiskLog {
    /// Opens (creating it if needed) the disk buffer of output `name` in `dir`, holding at most
    /// `max_bytes` of undelivered lines; checks what an earlier run left past the cursor and
    /// returns it. Errors name the output's `buffer.path`.
    pub(crate) fn open(
        name: &str,
        dir: &Path,
        max_bytes: u64,
        stats: OutputHealth,
    ) -> io::Result<(DiskLog, Found)> {
        let key = format!("outputs.{name}.buffer.path");
        let at = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{key}: {what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| at("cannot create the folder", e))?;
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
                        "{key}: {} is in use by another process (its lock file is held)",
                        dir.display()
                    ),
                ));
            }
            return Err(at("cannot lock", e));
        }
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| at("cannot list", e))? {
            let entry = entry.map_err(|e| at("cannot list", e))?;
            let file_name = entry.file_name();
            let Some(id) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(|e| at("cannot read", e))?.len();
            segments.insert(id, size);
        }
        let cursor = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("cursor"))
            .map_err(|e| at("cannot write in", e))?;
        let saved = read_cursor(&cursor, name, dir);
        // Delivery starts at the cursor's segment, or the first one after it (those before
        // were delivered; a crash may have left them undeleted).
        let start = match saved {
            Some(c) if segments.contains_key(&c.segment) => c,
            Some(c) => Position {
                segment: segments
                    .range(c.segment..)
                    .next()
                    .map_or(c.segment, |(id, _)| *id),
                offset: SEGMENT_MAGIC.len() as u64,
            },
            None => Position {
                segment: segments.keys().next().copied().unwrap_or(0),
                offset: SEGMENT_MAGIC.len() as u64,
            },
        };
        let delivered: Vec<u64> = segments.range(..start.segment).map(|(id, _)| *id).collect();
        for id in delivered {
            segments.remove(&id);
            let _ = std::fs::remove_file(segment_path(dir, id));
        }
        let mut found = Found::default();
        let ids: Vec<u64> = segments.keys().copied().collect();
        for id in ids {
            let from = if id == start.segment {
                start.offset
            } else {
                SEGMENT_MAGIC.len() as u64
            };
            let size = scan_segment(name, dir, id, from, &mut found)
                .map_err(|e| at(&format!("cannot read {:020}.seg in", id), e))?;
            segments.insert(id, size);
        }
        // New batches go to a new segment, after every existing one and the cursor's.
        let next = segments
            .keys()
            .next_back()
            .map_or(0, |id| id + 1)
            .max(saved.map_or(0, |c| c.segment + 1));
        let writer = Writer::create(dir, next).map_err(|e| at("cannot write in", e))?;
        // The reader starts at the cursor when its segment is still there, else at the first
        // segment after it (the new one when nothing is left).
        let start = if segments.contains_key(&start.segment) {
            Position {
                segment: start.segment,
                offset: start.offset.max(SEGMENT_MAGIC.len() as u64),
            }
        } else {
            Position {
                segment: next,
                offset: SEGMENT_MAGIC.len() as u64,
            }
        };
        segments.insert(next, writer.len);
        sync_dir(dir).map_err(|e| at("cannot sync", e))?;
        let sync = Arc::new(SyncShared::default());
        lock(&sync.state).file = Some(writer.file.try_clone()?);
        let syncer = {
            let (sync, name) = (Arc::clone(&sync), name.to_owned());
            std::thread::Builder::new()
                .name(format!("egresswatch-sync-{name}"))
                .spawn(move || sync_loop(&sync, &name))?
        };
        let log = DiskLog {
            dir: dir.to_owned(),
            _lock: lock_file,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 128 << 20),
            writer: Mutex::new(writer),
            reader: Mutex::new(Reader {
                position: start,
                file: None,
            }),
            cursor: Mutex::new(cursor),
            segments: Mutex::new(segments),
            sync,
            syncer: Mutex::new(Some(syncer)),
            stats,
        };
        log.report_size();
        Ok((log, found))
    }

    /// The folder, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn report_size(&self) {
        let bytes = lock(&self.segments).values().sum();
        self.stats.set_disk_bytes(bytes);
    }

    /// Appends a batch of `lines` lines; `acks` are told delivered once it is synced to disk.
    /// On an error nothing of it stays in the buffer, and `acks` are handed back.
    pub(crate) fn append(
        &self,
        data: &[u8],
        lines: u64,
        acks: Vec<Ack>,
    ) -> Result<(), (io::Error, Vec<Ack>)> {
        let mut writer = lock(&self.writer);
        if writer.len >= self.segment_bytes {
            if let Err(e) = self.next_segment(&mut writer) {
                return Err((e, acks));
            }
        }
        let start = writer.len;
        let len = data.len() as u64;
        let mut head = Vec::with_capacity(RECORD_HEADER as usize);
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&lines.to_le_bytes());
        head.extend_from_slice(&checksum(len, lines, data).to_le_bytes());
        let written = writer
            .file
            .write_all(&head)
            .and_then(|()| writer.file.write_all(data));
        if let Err(e) = written {
            // Leave no part of it behind (a later record must follow a whole one).
            let _ = writer.file.set_len(start);
            return Err((e, acks));
        }
        writer.len = start + RECORD_HEADER + len;
        lock(&self.segments).insert(writer.id, writer.len);
        drop(writer);
        {
            let mut state = lock(&self.sync.state);
            state.dirty = true;
            if !acks.is_empty() {
                // A sender waits for these: sync now rather than at the next tick.
                state.acks.extend(acks);
                self.sync.wake.notify_one();
            }
        }
        self.report_size();
        Ok(())
    }

    /// Closes the newest segment (synced, so that what its acknowledgements promise holds) and
    /// starts the next.
    fn next_segment(&self, writer: &mut Writer) -> io::Result<()> {
        writer.file.sync_data()?;
        let next = Writer::create(&self.dir, writer.id + 1)?;
        sync_dir(&self.dir)?;
        let handle = next.file.try_clone()?;
        lock(&self.segments).insert(next.id, next.len);
        *writer = next;
        lock(&self.sync.state).file = Some(handle);
        Ok(())
    }

    /// The next record, in order. Only called when the queue counts one waiting.
    pub(crate) fn read_next(&self) -> io::Result<Record> {
        let mut reader = lock(&self.reader);
        loop {
            let Position { segment, offset } = reader.position;
            if reader.file.is_none() {
                reader.file = Some(File::open(segment_path(&self.dir, segment))?);
            }
            let file = reader.file.as_ref().expect("opened above");
            let size = file.metadata()?.len();
            if let Some((data, lines, end)) = read_record(file, offset, size)? {
                reader.position.offset = end;
                return Ok(Record {
                    data,
                    lines,
                    end: reader.position,
                });
            }
            // This segment is done: the next one holds the record.
            let next = lock(&self.segments)
                .range(segment + 1..)
                .next()
                .map(|(id, _)| *id)
                .ok_or_else(|| io::Error::other("a record is counted but no segment holds it"))?;
            reader.position = Position {
                segment: next,
                offset: SEGMENT_MAGIC.len() as u64,
            };
            reader.file = None;
        }
    }

    /// Everything up to `end` was delivered: the cursor moves there, and segments before it are
    /// deleted.
    pub(crate) fn delivered(&self, end: Position) -> io::Result<()> {
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

impl Writer {
    /// A new, empty segment `id` (its header written).
    fn create(dir: &Path, id: u64) -> io::Result<Writer> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, id))?;
        file.write_all(SEGMENT_MAGIC)?;
        Ok(Writer {
            id,
            file,
            len: SEGMENT_MAGIC.len() as u64,
        })
    }
}

/// Takes an exclusive `flock` on `file` without waiting (`WouldBlock` when another holds it); it
/// lasts until the file is closed, or the process ends however it ends.
fn try_lock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes an open descriptor and flags; `file` is open for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Syncs the folder itself, so that a new segment's name survives a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The saved cursor; `None` when there is none yet, or it is damaged (then logged: everything
/// is delivered again).
fn read_cursor(file: &File, name: &str, dir: &Path) -> Option<Position> {
    let mut bytes = [0u8; 20];
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return None;
    }
    let good = len >= 20
        && file.read_exact_at(&mut bytes, 0).is_ok()
        && crc32fast::hash(&bytes[0..16]).to_le_bytes() == bytes[16..20];
    if !good {
        tracing::warn!(output = %name, path = %dir.display(),
            "disk buffer: its cursor is damaged; every line in the buffer is delivered again \
             (some may repeat)");
        return None;
    }
    Some(Position {
        segment: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    })
}

/// Checks the records of segment `id` from `from` on, adding them to `found`; cuts off the
/// first bad one and what follows it (counted, logged). Returns the segment's size after.
fn scan_segment(name: &str, dir: &Path, id: u64, from: u64, found: &mut Found) -> io::Result<u64> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let size = file.metadata()?.len();
    let mut magic = [0u8; 8];
    let header_ok = size >= SEGMENT_MAGIC.len() as u64
        && file.read_exact_at(&mut magic, 0).is_ok()
        && &magic == SEGMENT_MAGIC;
    let mut offset = if header_ok {
        from.max(SEGMENT_MAGIC.len() as u64)
    } else {
        0
    };
    let mut problem = (!header_ok).then(|| "a segment header that is not egresswatch's".to_owned());
    while problem.is_none() {
        match read_record(&file, offset, size) {
            Ok(Some((data, lines, end))) => {
                found.records += 1;
                found.lines += lines;
                found.bytes += data.len() as u64;
                offset = end;
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => problem = Some(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    let Some(problem) = problem else {
        return Ok(size);
    };
    found.corrupt += 1;
    let cut = size - offset;
    tracing::error!(output = %name, segment = %path.display(), offset, bytes_cut = cut,
        "disk buffer: {problem} (a write torn by a crash, or a damaged file); it and the rest \
         of its segment are set aside, counted in \
         egresswatch_output_buffer_corrupt_records_total; the records before it are delivered");
    if header_ok {
        file.set_len(offset)?;
        file.sync_all()?;
        Ok(offset)
    } else {
        // Not ours to cut: kept under another name, out of the buffer.
        let aside = path.with_extension("seg.corrupt");
        std::fs::rename(&path, &aside)?;
        // An empty segment in its place keeps the numbering whole.
        let mut empty = File::create(&path)?;
        empty.write_all(SEGMENT_MAGIC)?;
        empty.sync_all()?;
        Ok(SEGMENT_MAGIC.len() as u64)
    }
}

/// The sync thread: syncs the newest segment if it was written to, every [`SYNC_EVERY`] or at
/// once when a batch with acknowledgements is waiting (then the batches that arrive during one
/// sync share the next: a sender waits one or two syncs, not a tick), and tells the
/// acknowledgements of what that covered; on close, a last sync.
fn sync_loop(sync: &SyncShared, name: &str) {
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
                state.file.as_ref().and_then(|f| f.try_clone().ok())
            } else {
                None
            };
            (file, std::mem::take(&mut state.acks), state.closed)
        };
        let synced = file.map_or(Ok(()), |f| f.sync_data());
        match synced {
            Ok(()) => acks.into_iter().for_each(Ack::delivered),
            Err(e) => {
                // The requests fail (their senders send them again); the lines stay in the
                // buffer and are delivered as usual.
                tracing::error!(output = %name, error = %e, "disk buffer: sync failed");
                drop(acks);
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> OutputHealth {
        crate::metrics::Metrics::new(Default::default()).output("t")
    }

    fn dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("egresswatch-disk-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn batch(n: u64) -> Vec<u8> {
        format!("{{\"n\":{n}}}\n").into_bytes()
    }

    #[test]
    fn delivered_records_are_not_replayed_and_the_rest_are_in_order_after_a_reopen() {
        let dir = dir("replay");
        let (log, found) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        assert_eq!(found.records, 0);
        for n in 0..5 {
            log.append(&batch(n), 1, Vec::new())
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let first = log.read_next().unwrap();
        assert_eq!(first.data, batch(0));
        log.delivered(first.end).unwrap();
        assert_eq!(log.read_next().unwrap().data, batch(1)); // read, not delivered
                                                             // A second user of the folder is refused while it is open.
        let err = DiskLog::open("u", &dir, 1 << 20, stats()).err().unwrap();
        assert!(err.to_string().contains("outputs.u.buffer.path"), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(log);

        let (log, found) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        assert_eq!((found.records, found.lines, found.corrupt), (4, 4, 0));
        for n in 1..5 {
            let r = log.read_next().unwrap();
            assert_eq!(r.data, batch(n));
            log.delivered(r.end).unwrap();
        }
        drop(log);
        let (_log, found) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        assert_eq!(found.records, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_counted_and_those_before_it_are_kept() {
        let dir = dir("torn");
        let (log, _) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        for n in 0..3 {
            log.append(&batch(n), 1, Vec::new())
                .map_err(|(e, _)| e)
                .unwrap();
        }
        drop(log);
        let segment = segment_path(&dir, 0);
        let len = std::fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (log, found) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        assert_eq!((found.records, found.corrupt), (2, 1));
        assert_eq!(log.read_next().unwrap().data, batch(0));
        assert_eq!(log.read_next().unwrap().data, batch(1));
        // What is appended now follows, in a new segment.
        log.append(&batch(9), 1, Vec::new())
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(log.read_next().unwrap().data, batch(9));
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_roll_over_and_delivered_ones_are_deleted() {
        let dir = dir("segments");
        let (log, _) = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
        let big = vec![b'x'; 130 << 10];
        for _ in 0..4 {
            log.append(&big, 1, Vec::new()).map_err(|(e, _)| e).unwrap();
        }
        let segments = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        // 128 KiB segments (an eighth of 1 MiB): one 130 KiB record each.
        assert_eq!(segments(), 4);
        for _ in 0..4 {
            let r = log.read_next().unwrap();
            log.delivered(r.end).unwrap();
        }
        // Only the one the cursor is in is left.
        assert_eq!(segments(), 1);
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
