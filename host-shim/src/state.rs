//! The plugin's model state on disk: a small envelope around the plugin's opaque bytes
//! (`egresswatch_plugin_api::state_file`, shared with the plugin's C face), written atomically
//! and checked when read back.
//!
//! Saving streams: the plugin writes its bytes through the ABI into a temporary file beside
//! `<path>` (`<path>.tmp.<pid>.<n>`) as it encodes them (neither side holds the state whole);
//! the file is then fsynced, renamed over `<path>` and the directory fsynced, so a crash or a
//! failed save leaves either the old file or the new one, and a failed save removes its
//! temporary file. Loading reads the file whole (bounded by
//! `state.max_bytes`) and hands it to the plugin in one piece. Loading a file that is damaged, of another
//! format, from another plugin, over `state.max_bytes`, or refused by the plugin's `load_state`
//! renames it aside to `<path>.corrupt-<unix time>` (with `-1`, `-2`, ... if that name is taken)
//! and lets the models start learning afresh: it is never silently loaded, and never silently
//! deleted. Only a regular file is read (a FIFO or device at the path is an error, never waited
//! on), and a file whose first bytes are not the magic is refused without reading the rest.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use egresswatch_plugin_api::files::{self, FileError};
pub use egresswatch_plugin_api::state_file::encode;
pub(crate) use egresswatch_plugin_api::state_file::{
    decode, sibling, EnvelopeError, StateFile, MAGIC,
};

use crate::loader::SaveError;

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

/// Saves a state to `path`: `save` writes the plugin's bytes (the plugin's
/// `save_state_to`) into the file as a stream, which is put in place only when complete. Returns
/// the file's size; an error names the path, and leaves the file at `path` as it was.
pub(crate) fn save(
    path: &Path,
    plugin_name: &str,
    save: impl FnOnce(&mut dyn Write) -> Result<(), SaveError>,
) -> Result<u64, String> {
    let writing = |e: &dyn std::fmt::Display| format!("writing {}: {e}", path.display());
    let mut file = StateFile::create(path, plugin_name).map_err(|e| writing(&e))?;
    match save(&mut file) {
        Ok(()) => file.commit().map_err(|e| writing(&e)),
        Err(SaveError::Write(e)) => Err(writing(&e)),
        Err(e @ SaveError::Plugin(_)) => Err(format!(
            "saving to {}: the plugin failed: {e}",
            path.display()
        )),
    }
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

    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
    use egresswatch_plugin_api::{
        baseline, PluginError, SinkWriter, StateSinkMut, Transform_TO, Verdict,
    };

    use crate::loader::Transform;

    /// The state of [`Streams`]: 300 kB of a pattern.
    fn pattern() -> Vec<u8> {
        (0..300_000u32).map(|i| (i % 241) as u8).collect()
    }

    /// A plugin transform whose state is [`pattern`], streamed in pieces of 10 kB (or, in the
    /// baseline layout, only ever returned whole); with `ignore_errors`, it writes every piece
    /// whatever the sink answers and reports success.
    struct Streams {
        ignore_errors: bool,
    }

    impl egresswatch_plugin_api::Transform for Streams {
        fn process(
            &mut self,
            events: RSlice<'_, RStr<'_>>,
            _: i64,
        ) -> RResult<RVec<Verdict>, PluginError> {
            RResult::ROk(events.iter().map(|_| Verdict::PASS).collect())
        }
        fn routes(&self) -> RResult<RVec<RString>, PluginError> {
            RResult::ROk(RVec::new())
        }
        fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
            RResult::ROk(pattern().into())
        }
        fn load_state(&mut self, _: RSlice<'_, u8>) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
        fn save_state_to(&self, sink: StateSinkMut<'_>) -> RResult<(), PluginError> {
            let mut out = SinkWriter::new(sink);
            for piece in pattern().chunks(10_000) {
                if out.write_all(piece).is_err() && !self.ignore_errors {
                    let e = out.into_error().expect("the sink's error");
                    return RResult::RErr(e);
                }
            }
            RResult::ROk(())
        }
    }

    impl baseline::Transform for Streams {
        fn process(
            &mut self,
            events: RSlice<'_, RStr<'_>>,
            now_ms: i64,
        ) -> RResult<RVec<Verdict>, PluginError> {
            egresswatch_plugin_api::Transform::process(self, events, now_ms)
        }
        fn routes(&self) -> RResult<RVec<RString>, PluginError> {
            RResult::ROk(RVec::new())
        }
        fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
            RResult::ROk(pattern().into())
        }
        fn load_state(&mut self, _: RSlice<'_, u8>) -> RResult<(), PluginError> {
            RResult::ROk(())
        }
    }

    /// Passes `left` bytes on to `out`, then fails as a full disk does.
    struct FailsAfter<'w> {
        out: &'w mut dyn Write,
        left: usize,
    }

    impl Write for FailsAfter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left (test)",
                ));
            }
            let n = self.out.write(&buf[..buf.len().min(self.left)])?;
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.out.flush()
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("egw-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_streamed_save_round_trips_and_one_failing_midway_keeps_the_previous_file() {
        let dir = temp("state-stream");
        let path = dir.join("s.bin");
        let full = Transform::Full(Transform_TO::from_value(
            Streams {
                ignore_errors: false,
            },
            TD_Opaque,
        ));
        let size = save(&path, "p", |out| full.save_state_to(out)).unwrap();
        let previous = fs::read(&path).unwrap();
        assert_eq!(size, previous.len() as u64);
        assert_eq!(decode("p", &previous).unwrap(), pattern().as_slice());
        for left in [0, 25_000, 299_999] {
            let err = save(&path, "p", |out| {
                full.save_state_to(&mut FailsAfter { out, left })
            })
            .unwrap_err();
            assert!(
                err.contains(&format!("writing {}: no space left (test)", path.display())),
                "after {left} bytes: {err}"
            );
            assert_eq!(fs::read(&path).unwrap(), previous, "after {left} bytes");
            assert_eq!(
                fs::read_dir(&dir).unwrap().count(),
                1,
                "a temporary file left"
            );
        }
        // A plugin that writes on after the sink failed and says all went well: refused too.
        let careless = Transform::Full(Transform_TO::from_value(
            Streams {
                ignore_errors: true,
            },
            TD_Opaque,
        ));
        let err = save(&path, "p", |out| {
            careless.save_state_to(&mut FailsAfter { out, left: 25_000 })
        })
        .unwrap_err();
        assert!(err.contains("no space left (test)"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), previous);
        // A plugin that fails on its own is named as such, with the path.
        let err = save(&path, "p", |_| {
            Err(SaveError::Plugin(PluginError::new(
                egresswatch_plugin_api::ErrorKind::State,
                "model broken (test)",
            )))
        })
        .unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("the plugin failed") && err.contains("model broken (test)"));
        assert_eq!(fs::read(&path).unwrap(), previous);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_plugin_without_the_streamed_save_still_saves() {
        let dir = temp("state-baseline");
        let path = dir.join("s.bin");
        let older = Transform::Baseline(baseline::Transform_TO::from_value(
            Streams {
                ignore_errors: false,
            },
            TD_Opaque,
        ));
        save(&path, "p", |out| older.save_state_to(out)).unwrap();
        assert_eq!(
            decode("p", &fs::read(&path).unwrap()).unwrap(),
            pattern().as_slice()
        );
        // A plugin of the full layout that does not override the method gets the ABI's default:
        // saved whole, written in one piece.
        struct Whole;
        impl egresswatch_plugin_api::Transform for Whole {
            fn process(
                &mut self,
                _: RSlice<'_, RStr<'_>>,
                _: i64,
            ) -> RResult<RVec<Verdict>, PluginError> {
                RResult::ROk(RVec::new())
            }
            fn routes(&self) -> RResult<RVec<RString>, PluginError> {
                RResult::ROk(RVec::new())
            }
            fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
                RResult::ROk(RVec::from(&b"whole"[..]))
            }
            fn load_state(&mut self, _: RSlice<'_, u8>) -> RResult<(), PluginError> {
                RResult::ROk(())
            }
        }
        let whole = Transform::Full(Transform_TO::from_value(Whole, TD_Opaque));
        save(&path, "p", |out| whole.save_state_to(out)).unwrap();
        assert_eq!(decode("p", &fs::read(&path).unwrap()).unwrap(), b"whole");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_files_are_set_aside() {
        let dir = std::env::temp_dir().join(format!("egw-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        assert!(matches!(
            load_file(&path, "p", DEFAULT_MAX_BYTES, |_| Ok(())).unwrap(),
            LoadOutcome::Missing
        ));
        fs::write(&path, encode("p", b"x")).unwrap();
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
