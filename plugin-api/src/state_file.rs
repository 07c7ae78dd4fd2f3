//! The state file's envelope, shared by every face that saves the detector's state (the
//! `egresswatch` host, the C face): one format, so that a file saved by one is loaded by the
//! other.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `EGWSTATE` |
//! | 4 | host format version ([`FORMAT_VERSION`]) |
//! | 2 + n | plugin name length, then the name (UTF-8) |
//! | 8 + m | plugin state length, then the plugin's bytes (its own format, with its own version) |
//! | 8 | FNV-1a 64 checksum of everything before it |
//!
//! [`write_atomically`] writes `<path>.tmp`, fsyncs it, renames it over `<path>` and fsyncs the
//! directory, so a crash leaves either the old file or the new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// First bytes of every state file.
pub const MAGIC: &[u8; 8] = b"EGWSTATE";

/// Version of the host envelope.
pub const FORMAT_VERSION: u32 = 1;

/// Why a state file could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Does not start with [`MAGIC`].
    #[error("not an egresswatch state file (bad magic bytes)")]
    BadMagic,
    /// Another envelope version.
    #[error(
        "state file format {found} is not supported (this egresswatch reads {FORMAT_VERSION})"
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

/// Wraps the plugin's state bytes in the host envelope.
pub fn encode(plugin_name: &str, plugin_state: &[u8]) -> Vec<u8> {
    let name = plugin_name.as_bytes();
    let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let name = &name[..usize::from(name_len)];
    let mut out = Vec::with_capacity(8 + 4 + 2 + name.len() + 8 + plugin_state.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(plugin_state.len() as u64).to_le_bytes());
    out.extend_from_slice(plugin_state);
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Checks the envelope and returns the plugin's bytes.
pub fn decode<'a>(plugin_name: &str, file: &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let mut rest = &file[MAGIC.len()..];
    let version = u32::from_le_bytes(take::<4>(&mut rest)?);
    if version != FORMAT_VERSION {
        return Err(EnvelopeError::Version { found: version });
    }
    let name_len = usize::from(u16::from_le_bytes(take::<2>(&mut rest)?));
    let name = take_slice(&mut rest, name_len)?;
    let state_len = usize::try_from(u64::from_le_bytes(take::<8>(&mut rest)?))
        .map_err(|_| EnvelopeError::Truncated)?;
    let state = take_slice(&mut rest, state_len)?;
    let sum = u64::from_le_bytes(take::<8>(&mut rest)?);
    if !rest.is_empty() {
        return Err(EnvelopeError::Truncated);
    }
    if fnv1a(&file[..file.len() - 8]) != sum {
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

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Writes `bytes` to `path` atomically: `<path>.tmp`, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = sibling(path, ".tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Make the rename itself durable; not every platform can open a directory for this.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
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
        assert_eq!(decode("p", &file).unwrap(), b"model bytes");
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
