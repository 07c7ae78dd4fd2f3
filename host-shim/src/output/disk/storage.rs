//! The file operations of the disk buffer that can fail while it runs (making, writing, cutting
//! and syncing segments; opening and reading them), behind one trait: [`Files`] does them on
//! the real files, and the fault-injection tests (`output/disk_queue.rs`) fail chosen calls, as a full or
//! failing disk would, around the same real files.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Segment file operations; see the module documentation.
pub(crate) trait Storage: Send + Sync {
    /// Makes the segment file `path` for appending; an error if it exists.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Appends `parts` to `file`, in as few system calls as the kernel allows (one,
    /// normally, so that a crash rarely leaves a header without its data). After an error
    /// part of them may have been written.
    fn append(&self, file: &File, parts: &[&[u8]]) -> io::Result<()>;
    /// Cuts `file` to `len` bytes.
    fn truncate(&self, file: &File, len: u64) -> io::Result<()>;
    /// Syncs `file`'s data to the disk (`fdatasync`).
    fn sync(&self, file: &File) -> io::Result<()>;
    /// Syncs the folder `dir` itself, so that a new entry's name survives a power loss.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens the segment file `path` for reading.
    fn open(&self, path: &Path) -> io::Result<File>;
    /// Reads exactly `buf.len()` bytes of `file` at `offset`.
    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads up to `len` bytes of `file` at `offset` onto the end of `data` (fewer at the end
    /// of the file).
    fn read_onto(&self, file: &File, offset: u64, len: u64, data: &mut Vec<u8>) -> io::Result<()>;
}

/// The real files.
pub(crate) struct Files;

impl Storage for Files {
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().create_new(true).append(true).open(path)
    }

    fn append(&self, file: &File, parts: &[&[u8]]) -> io::Result<()> {
        let mut bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices: &mut [IoSlice<'_>] = &mut bufs;
        while !slices.is_empty() {
            let mut out = file;
            match out.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn read_onto(&self, file: &File, offset: u64, len: u64, data: &mut Vec<u8>) -> io::Result<()> {
        // Into spare capacity: zeroing a buffer first cost as much as the checksum.
        let mut at = file;
        at.seek(SeekFrom::Start(offset))?;
        at.take(len).read_to_end(data)?;
        Ok(())
    }
}
