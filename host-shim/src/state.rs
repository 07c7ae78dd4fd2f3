//! The plugin's model state on disk: a small envelope around the plugin's opaque bytes
//! (`egresswatch_plugin_api::state_file`, shared with the plugin's C face), written atomically
//! and checked when read back.
//!
//! Saving writes `<path>.tmp`, fsyncs it, renames it over `<path>` and fsyncs the directory, so
//! a crash leaves either the old file or the new one. Loading a file that is damaged, of another
//! format, from another plugin, over `state.max_bytes`, or refused by the plugin's `load_state`
//! renames it aside to `<path>.corrupt-<unix time>` (with `-1`, `-2`, ... if that name is taken)
//! and lets the models start learning afresh: it is never silently loaded, and never silently
//! deleted. Only a regular file is read (a FIFO or device at the path is an error, never waited
//! on), and a file whose first bytes are not the magic is refused without reading the rest.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use egresswatch_plugin_api::files::{self, FileError};
pub use egresswatch_plugin_api::state_file::encode;
pub(crate) use egresswatch_plugin_api::state_file::{
    decode, sibling, write_atomically, EnvelopeError, MAGIC,
};

/// Largest state file read unless `state.max_bytes` says otherwise: 1 GiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// What happened when the state file was read at start-up.
#[derive(Debug)]
pub(crate) enum LoadOutcome {
    /// No file: the models start learning.
    Missing,
    /// Loaded into the plugin; the file's size in bytes.
    Loaded(u64),
    /// The file could not be used and was renamed aside; the models start learning afresh.
    SetAside {
        /// Where the file now is.
        moved_to: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
}

/// What reading the state file found, before anything is done about it.
enum Found {
    Missing,
    /// Usable by the plugin; the file's size.
    Usable(u64),
    /// Readable but not usable: why.
    Unusable(String),
}

/// Reads the state file and offers the plugin's bytes to `load`. Only a regular file is
/// opened (a FIFO or a device is an error, never waited on); a file over `max_bytes` or without
/// the envelope's magic bytes is refused before the rest of it is read.
fn examine(
    path: &Path,
    plugin_name: &str,
    max_bytes: u64,
    load: impl FnOnce(&[u8]) -> Result<(), String>,
) -> io::Result<Found> {
    let cannot = |e: &dyn std::fmt::Display| {
        io::Error::other(format!("state.path: cannot read {}: {e}", path.display()))
    };
    let (mut file, size) = match files::open_regular(path, max_bytes) {
        Ok(opened) => opened,
        Err(FileError::Missing) => return Ok(Found::Missing),
        Err(FileError::TooLarge { size, max }) => {
            return Ok(Found::Unusable(format!(
                "it is {size} bytes, over state.max_bytes ({max})"
            )))
        }
        Err(e @ FileError::NotRegular(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "state.path: {} {e}; point state.path at a regular file",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(cannot(&e)),
    };
    let mut magic = [0u8; MAGIC.len()];
    if size < MAGIC.len() as u64 || file.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok(Found::Unusable(EnvelopeError::BadMagic.to_string()));
    }
    let mut bytes = magic.to_vec();
    match files::read_bounded(&mut file, size, max_bytes - MAGIC.len() as u64) {
        Ok(rest) => bytes.extend(rest),
        Err(FileError::TooLarge { .. }) => {
            return Ok(Found::Unusable(format!(
                "it grew while being read, over state.max_bytes ({max_bytes})"
            )))
        }
        Err(e) => return Err(cannot(&e)),
    }
    Ok(match decode(plugin_name, &bytes) {
        Ok(state) => match load(state) {
            Ok(()) => Found::Usable(bytes.len() as u64),
            Err(e) => Found::Unusable(format!("the plugin refused it: {e}")),
        },
        Err(e) => Found::Unusable(e.to_string()),
    })
}

/// Reads the state file and hands it to `load` (the plugin's `load_state`). A file that cannot
/// be used is renamed aside (see [`set_aside`]); only a file that cannot be read at all (not a
/// regular file, no permission) or renamed is an error.
pub(crate) fn load_file(
    path: &Path,
    plugin_name: &str,
    max_bytes: u64,
    load: impl FnOnce(&[u8]) -> Result<(), String>,
) -> io::Result<LoadOutcome> {
    let reason = match examine(path, plugin_name, max_bytes, load)? {
        Found::Missing => return Ok(LoadOutcome::Missing),
        Found::Usable(size) => return Ok(LoadOutcome::Loaded(size)),
        Found::Unusable(reason) => reason,
    };
    let moved_to = set_aside(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "state.path: {} is unusable ({reason}) and could not be renamed aside: {e}",
                path.display()
            ),
        )
    })?;
    Ok(LoadOutcome::SetAside { moved_to, reason })
}

/// Renames `path` to a name no other file has: `<path>.corrupt-<unix time>`, or with `-1`,
/// `-2`, ... appended when that exists. The new name is claimed with a hard link, which fails
/// rather than replace an existing file, so no earlier set-aside file is ever overwritten, even
/// by another process doing the same at the same moment; the old name is then removed.
pub(crate) fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for n in 0u32..10_000 {
        let suffix = if n == 0 {
            format!(".corrupt-{now}")
        } else {
            format!(".corrupt-{now}-{n}")
        };
        let candidate = sibling(path, &suffix);
        match fs::hard_link(path, &candidate) {
            Ok(()) => {
                fs::remove_file(path)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: claim the name by checking, then renaming.
            Err(_) if !candidate.exists() && fs::symlink_metadata(&candidate).is_err() => {
                fs::rename(path, &candidate)?;
                return Ok(candidate);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "10000 set-aside files from the same second already exist",
    ))
}

/// A one-line description of the state file for `egresswatch validate`: whether it exists, is
/// a usable envelope, and whether `load` (the plugin's `load_state` on a throw-away transform)
/// accepts it. Changes nothing on disk.
pub fn describe(
    path: &Path,
    plugin_name: &str,
    max_bytes: u64,
    load: impl FnOnce(&[u8]) -> Result<(), String>,
) -> String {
    match examine(path, plugin_name, max_bytes, load) {
        Ok(Found::Usable(size)) => format!(
            "state file {}: OK ({size} bytes, accepted by the plugin)",
            path.display()
        ),
        Ok(Found::Unusable(reason)) => format!(
            "state file {}: unusable ({reason}); `run` would rename it aside and start learning afresh",
            path.display()
        ),
        Ok(Found::Missing) => {
            format!("state file {}: none yet (created on the first save)", path.display())
        }
        Err(e) => format!("{e}; `run` would refuse to start"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_set_aside() {
        let dir = std::env::temp_dir().join(format!("egw-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        assert!(matches!(
            load_file(&path, "p", DEFAULT_MAX_BYTES, |_| Ok(())).unwrap(),
            LoadOutcome::Missing
        ));
        write_atomically(&path, &encode("p", b"x")).unwrap();
        assert!(matches!(
            load_file(&path, "p", DEFAULT_MAX_BYTES, |b| if b == b"x" {
                Ok(())
            } else {
                Err("?".into())
            })
            .unwrap(),
            LoadOutcome::Loaded(_)
        ));
        match load_file(&path, "p", DEFAULT_MAX_BYTES, |_| Err("bad model".into())).unwrap() {
            LoadOutcome::SetAside { moved_to, reason } => {
                assert!(reason.contains("bad model"));
                assert!(moved_to.exists());
                assert!(!path.exists());
            }
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn set_aside_never_overwrites_an_earlier_file() {
        let dir = std::env::temp_dir().join(format!("egw-state-aside-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        let mut moved = Vec::new();
        for round in 0..5u8 {
            fs::write(&path, [round; 3]).unwrap();
            moved.push(set_aside(&path).unwrap());
            assert!(!path.exists());
        }
        for (round, file) in moved.iter().enumerate() {
            assert_eq!(
                fs::read(file).unwrap(),
                [round as u8; 3],
                "{}",
                file.display()
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversize_and_foreign_files_are_refused_before_being_read_whole() {
        let dir = std::env::temp_dir().join(format!("egw-state-cap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        let never = |_: &[u8]| -> Result<(), String> { panic!("must not be offered") };
        fs::write(&path, encode("p", &[7; 4000])).unwrap();
        match load_file(&path, "p", 2048, never).unwrap() {
            LoadOutcome::SetAside { reason, .. } => {
                assert!(reason.contains("over state.max_bytes (2048)"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        fs::write(&path, b"PK\x03\x04 a zip file").unwrap();
        match load_file(&path, "p", 2048, never).unwrap() {
            LoadOutcome::SetAside { reason, .. } => assert!(reason.contains("magic"), "{reason}"),
            other => panic!("{other:?}"),
        }
        fs::create_dir(&path).unwrap();
        let err = load_file(&path, "p", 2048, never).unwrap_err();
        assert!(
            err.to_string().contains("is a folder, not a regular file"),
            "{err}"
        );
        let described = describe(&path, "p", 2048, never);
        assert!(described.contains("would refuse to start"), "{described}");
        let _ = fs::remove_dir_all(&dir);
    }
}
