//! Reading the files an operator names (configuration, rule files, the GeoIP database, the
//! state file), shared by the host and the plugin because both read such files.
//!
//! Only regular files are read, and never more than a stated number of bytes. The file is
//! opened with `O_NONBLOCK`, so a FIFO put where a file was expected is refused at once instead
//! of blocking until some writer appears, and its type and size are taken from the open handle
//! (`fstat`), so nothing can be swapped in between the check and the read. `O_NONBLOCK` has no
//! effect on reads from a regular file.

use std::fmt;
use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug)]
pub enum FileError {
    /// Nothing at the path.
    Missing,
    /// Something other than a regular file is there; says what, e.g. `a FIFO`.
    NotRegular(&'static str),
    /// The file is larger than the limit.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// Any other I/O failure (permissions, ...).
    Io(io::Error),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Missing => f.write_str("no such file"),
            FileError::NotRegular(kind) => write!(f, "is {kind}, not a regular file"),
            FileError::TooLarge { size, max } => {
                write!(f, "is {size} bytes, over the limit of {max} bytes")
            }
            FileError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileError {}

impl From<FileError> for io::Error {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io(e) => e,
            FileError::Missing => io::Error::new(io::ErrorKind::NotFound, "no such file"),
            other @ FileError::NotRegular(_) => {
                io::Error::new(io::ErrorKind::InvalidInput, other.to_string())
            }
            other @ FileError::TooLarge { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, other.to_string())
            }
        }
    }
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            FileError::Missing
        } else {
            FileError::Io(e)
        }
    }
}

/// A file type in words, for messages: `a regular file`, `a folder`, `a FIFO`, ...
pub fn describe_type(t: &FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "an unknown kind of file"
    }
}

/// Opens `path` (following symbolic links) for reading if it is a regular file of at most
/// `max_bytes`; returns the file and its size.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, u64), FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(describe_type(&meta.file_type())));
    }
    if meta.len() > max_bytes {
        return Err(FileError::TooLarge {
            size: meta.len(),
            max: max_bytes,
        });
    }
    Ok((file, meta.len()))
}

/// Reads the rest of an open file, failing if it holds more than `max_bytes` (a file that grew
/// since it was opened).
pub fn read_bounded(file: &mut File, size_hint: u64, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size_hint.min(max_bytes)).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(FileError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    Ok(bytes)
}

/// Reads a regular file of at most `max_bytes`.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    let (mut file, size) = open_regular(path, max_bytes)?;
    read_bounded(&mut file, size, max_bytes)
}

/// Reads a regular UTF-8 text file of at most `max_bytes`.
pub fn read_regular_text(path: &Path, max_bytes: u64) -> Result<String, FileError> {
    String::from_utf8(read_regular(path, max_bytes)?).map_err(|e| {
        FileError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// Line numbers of byte offsets in a text, found by binary search over the line starts, so
/// that reporting many positions in one large file stays linear.
#[derive(Debug, Clone)]
pub struct LineIndex {
    /// Offset of the first byte of each line after the first.
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `text`.
    pub fn new(text: &str) -> LineIndex {
        LineIndex {
            starts: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1)
                .collect(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("egw-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_within_the_limit_are_read_and_nothing_else() {
        let dir = temp("kinds");
        let file = dir.join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular(&file, 9),
            Err(FileError::TooLarge { size: 10, max: 9 })
        ));
        assert!(matches!(
            read_regular(&dir.join("nope"), 10),
            Err(FileError::Missing)
        ));
        assert!(matches!(
            read_regular(&dir, 10),
            Err(FileError::NotRegular("a folder"))
        ));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Would block for ever on a plain open; refused at once.
            let err = read_regular(&fifo, 10).unwrap_err();
            assert!(matches!(err, FileError::NotRegular("a FIFO")), "{err}");
            assert_eq!(err.to_string(), "is a FIFO, not a regular file");
        }
        std::fs::write(&file, b"\xff\xfe").unwrap();
        let err = read_regular_text(&file, 10).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_index_numbers_lines_from_one() {
        let index = LineIndex::new("ab\ncd\n\nef");
        let lines: Vec<usize> = (0..10).map(|o| index.line(o)).collect();
        assert_eq!(lines, [1, 1, 1, 2, 2, 2, 3, 4, 4, 4]);
        assert_eq!(LineIndex::new("").line(0), 1);
    }
}
