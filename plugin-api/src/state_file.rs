//! The state file's envelope, shared by every face that saves the detector's state (the
//! `egresswatch` host, the C face): one format, so that a file saved by one is loaded by the
//! other.
//!
//! Layout (all integers little-endian), version 2:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `EGWSTATE` |
//! | 4 | host format version ([`FORMAT_VERSION`]) |
//! | 2 + n | plugin name length, then the name (UTF-8) |
//! | m | the plugin's bytes (its own format, with its own version) |
//! | 8 | m, the length of the plugin's bytes |
//! | 8 | FNV-1a 64 checksum of everything before it |
//!
//! The length and the checksum come after the plugin's bytes so that a file can be written as
//! the plugin produces them, never held whole ([`StateFile`]). Version 1 had the length in
//! front of the plugin's bytes (`8 + m` where version 2 has `m + 8`); such files are still read.
//!
//! [`StateFile`] writes `<path>.tmp.<pid>.<n>` (a name of its own, created new), fsyncs it,
//! renames it over `<path>` and fsyncs the directory, so a crash or a failed save leaves either
//! the old file or the new one, and two savers on one path never write into the same file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// First bytes of every state file.
pub const MAGIC: &[u8; 8] = b"EGWSTATE";

/// Version of the host envelope this build writes (2: length and checksum after the plugin's
/// bytes). Files of version 1 are read too.
pub const FORMAT_VERSION: u32 = 2;

/// Why a state file could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Does not start with [`MAGIC`].
    #[error("not an egresswatch state file (bad magic bytes)")]
    BadMagic,
    /// Another envelope version.
    #[error(
        "state file format {found} is not supported (this egresswatch reads 1 and {FORMAT_VERSION})"
    )]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Shorter than its lengths say, or trailing bytes.
    #[error("state file is truncated or has trailing bytes")]
    Truncated,
    /// The checksum does not match.
    #[error("state file checksum mismatch (file damaged)")]
    Checksum,
    /// Written by another plugin.
    #[error("state file was written by plugin `{found}`, not `{expected}`")]
    OtherPlugin {
        /// The plugin loaded now.
        expected: String,
        /// The plugin named in the file.
        found: String,
    },
}

/// The envelope around plugin bytes written through it: [`Envelope::begin`] writes the header,
/// every write is the plugin's bytes (counted and hashed on the way), [`Envelope::finish`]
/// writes the length and the checksum.
pub struct Envelope<W: Write> {
    out: W,
    hash: Fnv1a,
    len: u64,
}

impl<W: Write> Envelope<W> {
    /// Writes the header (magic, version, plugin name) into `out`.
    pub fn begin(out: W, plugin_name: &str) -> io::Result<Self> {
        let name = plugin_name.as_bytes();
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let mut envelope = Envelope {
            out,
            hash: Fnv1a::new(),
            len: 0,
        };
        envelope.put(MAGIC)?;
        envelope.put(&FORMAT_VERSION.to_le_bytes())?;
        envelope.put(&name_len.to_le_bytes())?;
        envelope.put(&name[..usize::from(name_len)])?;
        Ok(envelope)
    }

    /// Writes envelope bytes (not the plugin's: not counted in its length).
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        Ok(())
    }

    /// Bytes of the plugin's written so far.
    pub fn plugin_bytes(&self) -> u64 {
        self.len
    }

    /// Writes the trailer (length, checksum) and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&self.len.to_le_bytes())?;
        let sum = self.hash.value();
        self.out.write_all(&sum.to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Envelope<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Wraps the plugin's state bytes in the host envelope, in memory.
pub fn encode(plugin_name: &str, plugin_state: &[u8]) -> Vec<u8> {
    let envelope = || -> io::Result<Vec<u8>> {
        let mut out = Envelope::begin(Vec::with_capacity(plugin_state.len() + 64), plugin_name)?;
        out.write_all(plugin_state)?;
        out.finish()
    };
    envelope().expect("a Vec takes every byte")
}

/// Checks the envelope (version 1 or 2) and returns the plugin's bytes.
pub fn decode<'a>(plugin_name: &str, file: &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let mut rest = &file[MAGIC.len()..];
    let version = u32::from_le_bytes(take::<4>(&mut rest)?);
    if version != 1 && version != FORMAT_VERSION {
        return Err(EnvelopeError::Version { found: version });
    }
    let name_len = usize::from(u16::from_le_bytes(take::<2>(&mut rest)?));
    let name = take_slice(&mut rest, name_len)?;
    let state = if version == 1 {
        let state_len = usize::try_from(u64::from_le_bytes(take::<8>(&mut rest)?))
            .map_err(|_| EnvelopeError::Truncated)?;
        take_slice(&mut rest, state_len)?
    } else {
        let state_len = rest.len().checked_sub(16).ok_or(EnvelopeError::Truncated)?;
        let state = take_slice(&mut rest, state_len)?;
        if u64::from_le_bytes(take::<8>(&mut rest)?) != state_len as u64 {
            return Err(EnvelopeError::Truncated);
        }
        state
    };
    let sum = u64::from_le_bytes(take::<8>(&mut rest)?);
    if !rest.is_empty() {
        return Err(EnvelopeError::Truncated);
    }
    let mut hash = Fnv1a::new();
    hash.update(&file[..file.len() - 8]);
    if hash.value() != sum {
        return Err(EnvelopeError::Checksum);
    }
    let name = String::from_utf8_lossy(name);
    if name != plugin_name {
        return Err(EnvelopeError::OtherPlugin {
            expected: plugin_name.to_owned(),
            found: name.into_owned(),
        });
    }
    Ok(state)
}

fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], EnvelopeError> {
    let bytes = take_slice(rest, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn take_slice<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], EnvelopeError> {
    if rest.len() < n {
        return Err(EnvelopeError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// FNV-1a 64, fed piece by piece.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn value(&self) -> u64 {
        self.0
    }
}

/// A state file being written as a stream: the plugin's bytes go through it (it is a
/// [`Write`]) into a temporary file beside `<path>`, `<path>.tmp.<pid>.<n>`, inside the
/// envelope; [`StateFile::commit`] ends the envelope, fsyncs, renames the file over `<path>` and
/// fsyncs the directory. Dropped without a commit (a failed save), it removes its temporary
/// file: the file at `<path>` is not touched until the new one is complete on disk. A commit
/// after any write failed is refused, whatever the writer's caller made of the error. A crash
/// during a save can leave a temporary file behind; nothing reads it.
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    envelope: Option<Envelope<BufWriter<File>>>,
    /// The first write error, kept for [`StateFile::take_error`].
    error: Option<io::Error>,
}

impl StateFile {
    /// Creates the temporary file (a new one: never an existing file or what a symbolic link
    /// points at) and writes the envelope's header.
    pub fn create(path: &Path, plugin_name: &str) -> io::Result<Self> {
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        let tmp = sibling(path, &format!(".tmp.{}.{n}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut state = StateFile {
            path: path.to_owned(),
            tmp,
            envelope: None,
            error: None,
        };
        let envelope = Envelope::begin(BufWriter::with_capacity(1 << 16, file), plugin_name);
        match envelope {
            Ok(envelope) => state.envelope = Some(envelope),
            Err(e) => {
                let _ = fs::remove_file(&state.tmp);
                return Err(e);
            }
        }
        Ok(state)
    }

    fn envelope(&mut self) -> io::Result<&mut Envelope<BufWriter<File>>> {
        self.envelope
            .as_mut()
            .ok_or_else(|| io::Error::other("the state file is already committed"))
    }

    /// Bytes of the plugin's written so far.
    pub fn plugin_bytes(&self) -> u64 {
        self.envelope.as_ref().map_or(0, Envelope::plugin_bytes)
    }

    /// The first error a write gave, if any: what to report when a save through this file
    /// failed, rather than what the writer's caller made of it.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Where the bytes go until the commit.
    pub fn temporary_path(&self) -> &Path {
        &self.tmp
    }

    fn keep<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            if self.error.is_none() {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        }
        result
    }

    /// Completes the file and puts it in place; returns its size in bytes.
    pub fn commit(mut self) -> io::Result<u64> {
        if let Some(e) = &self.error {
            // Dropping `self` removes the temporary file.
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        let envelope = self
            .envelope
            .take()
            .ok_or_else(|| io::Error::other("the state file is already committed"))?;
        let result = (|| {
            let file = envelope
                .finish()?
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            let size = file.metadata()?.len();
            drop(file);
            fs::rename(&self.tmp, &self.path)?;
            Ok(size)
        })();
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Make the rename itself durable; not every platform can open a directory for this.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(size)
    }
}

impl Write for StateFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.envelope().and_then(|e| e.write(buf));
        self.keep(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.envelope().and_then(Write::flush);
        self.keep(result)
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        // A commit took the envelope; anything else is an abandoned save.
        if self.envelope.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `<path><suffix>`, e.g. `state.bin.tmp`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let file = encode("p", b"model bytes");
        assert_eq!(&file[8..12], &2u32.to_le_bytes(), "written as version 2");
        assert_eq!(decode("p", &file).unwrap(), b"model bytes");
        assert_eq!(decode("p", &encode("p", b"")).unwrap(), b"");
    }

    #[test]
    fn a_version_1_file_is_still_read() {
        // Version 1, laid out by hand: the length in front of the plugin's bytes.
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&1u16.to_le_bytes());
        file.push(b'p');
        file.extend_from_slice(&11u64.to_le_bytes());
        file.extend_from_slice(b"model bytes");
        let mut hash = Fnv1a::new();
        hash.update(&file);
        file.extend_from_slice(&hash.value().to_le_bytes());
        assert_eq!(decode("p", &file).unwrap(), b"model bytes");
        file[25] ^= 1; // inside the plugin bytes
        assert_eq!(decode("p", &file), Err(EnvelopeError::Checksum));
    }

    #[test]
    fn a_state_file_is_written_as_a_stream_and_only_a_commit_replaces_the_old_one() {
        let dir = std::env::temp_dir().join(format!("egw-state-file-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        let plugin: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut file = StateFile::create(&path, "p").unwrap();
        let tmp = file.temporary_path().to_owned();
        for piece in plugin.chunks(7_000) {
            file.write_all(piece).unwrap();
        }
        assert_eq!(file.plugin_bytes(), plugin.len() as u64);
        assert!(!path.exists(), "nothing at the path before the commit");
        let size = file.commit().unwrap();
        let written = fs::read(&path).unwrap();
        assert_eq!(size, written.len() as u64);
        assert_eq!(decode("p", &written).unwrap(), plugin.as_slice());
        assert!(!tmp.exists());
        // A save abandoned midway (dropped without a commit) leaves the old file as it was.
        let mut abandoned = StateFile::create(&path, "p").unwrap();
        // Two saves at once write into files of their own.
        let mut other = StateFile::create(&path, "p").unwrap();
        assert_ne!(abandoned.temporary_path(), other.temporary_path());
        abandoned.write_all(&plugin[..100_000]).unwrap();
        other.write_all(b"other").unwrap();
        let tmp = abandoned.temporary_path().to_owned();
        assert!(tmp.exists());
        drop(abandoned);
        assert!(!tmp.exists(), "the abandoned temporary file is removed");
        assert_eq!(fs::read(&path).unwrap(), written);
        other.commit().unwrap();
        assert_eq!(decode("p", &fs::read(&path).unwrap()).unwrap(), b"other");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_is_detected() {
        let file = encode("p", b"model bytes");
        assert_eq!(decode("p", b"garbage"), Err(EnvelopeError::BadMagic));
        assert_eq!(
            decode("p", &file[..file.len() - 3]),
            Err(EnvelopeError::Truncated)
        );
        let mut flipped = file.clone();
        flipped[25] ^= 1; // inside the plugin bytes
        assert_eq!(decode("p", &flipped), Err(EnvelopeError::Checksum));
        let mut version = file.clone();
        version[8] = 9;
        assert_eq!(
            decode("p", &version),
            Err(EnvelopeError::Version { found: 9 })
        );
        assert!(matches!(
            decode("q", &file),
            Err(EnvelopeError::OtherPlugin { .. })
        ));
    }
}
