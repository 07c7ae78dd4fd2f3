//! The disk buffer's files: the record format, the cursor, the folder lock and the check of
//! a segment at start.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::storage::Storage;
use super::{Found, Position, Segment, FIRST_RECORD, RECORD_HEADER, SEGMENT_MAGIC};

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

pub(super) fn checksum(len: u64, lines: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&lines.to_le_bytes());
    h.update(data);
    h.finalize()
}

/// Reads a record at `offset` of `file`, whose records end at `end`. `Ok(None)`: no record
/// there. An `InvalidData` error: a torn or damaged record; any other, a read that failed.
pub(super) fn read_record(
    storage: &dyn Storage,
    file: &File,
    offset: u64,
    end: u64,
) -> io::Result<Option<(Vec<u8>, u64, u64)>> {
    if offset >= end {
        return Ok(None);
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if end - offset < RECORD_HEADER {
        return Err(bad("a record header cut short"));
    }
    let mut head = [0u8; RECORD_HEADER as usize];
    storage.read_exact_at(file, &mut head, offset)?;
    let len = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
    let lines = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if len > end - offset - RECORD_HEADER {
        return Err(bad("a record cut short"));
    }
    let mut data = Vec::with_capacity(len as usize);
    storage.read_onto(file, offset + RECORD_HEADER, len, &mut data)?;
    if data.len() as u64 != len {
        return Err(bad("a record cut short"));
    }
    if checksum(len, lines, &data) != crc {
        return Err(bad("a record that fails its checksum"));
    }
    Ok(Some((data, lines, offset + RECORD_HEADER + len)))
}

/// Takes an exclusive `flock` on `file` without waiting (`WouldBlock` when another holds it); it
/// lasts until the file is closed, or the process ends however it ends.
pub(super) fn try_lock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes an open descriptor and flags; `file` is open for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The saved cursor; `None` when there is none yet, or it is damaged (then logged: everything
/// is delivered again).
pub(super) fn read_cursor(file: &File, name: &str, dir: &Path) -> Option<Position> {
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

/// Checks the records of the segment at `path` from `from` on, adding them to `found`. The
/// first bad one ends its readable part: it and what follows stay in the file, unread (counted,
/// logged), until the segment is deleted. Writes nothing.
pub(super) fn scan_segment(
    storage: &dyn Storage,
    name: &str,
    path: &Path,
    from: u64,
    found: &mut Found,
) -> io::Result<Segment> {
    let file = storage.open(path)?;
    let size = file.metadata()?.len();
    let mut magic = [0u8; 8];
    // (A read that fails is an error, not a bad header: the segment is not skipped for it.)
    if size >= FIRST_RECORD {
        storage.read_exact_at(&file, &mut magic, 0)?;
    }
    let header_ok = size >= FIRST_RECORD && &magic == SEGMENT_MAGIC;
    let mut segment = Segment {
        size,
        end: size,
        ..Segment::default()
    };
    let mut offset = from.max(FIRST_RECORD);
    let mut problem = (!header_ok).then(|| "a segment header that is not egresswatch's".to_owned());
    while problem.is_none() {
        match read_record(storage, &file, offset, size) {
            Ok(Some((data, lines, end))) => {
                segment.held.add(lines, data.len() as u64);
                offset = end;
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => problem = Some(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    found.held.records += segment.held.records;
    found.held.lines += segment.held.lines;
    found.held.bytes += segment.held.bytes;
    if let Some(problem) = problem {
        let offset = if header_ok { offset } else { 0 };
        segment.end = offset;
        found.corrupt += 1;
        tracing::error!(output = %name, segment = %path.display(), offset,
            bytes_skipped = size - offset,
            "disk buffer: {problem} (a write torn by a crash, or a damaged file); it and the rest \
             of its segment are skipped (left in the file until the segment is deleted), counted \
             in egresswatch_output_buffer_corrupt_records_total; the records before it are \
             delivered");
    }
    Ok(segment)
}
