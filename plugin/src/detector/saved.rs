//! The byte layout of a saved detector state, written as a stream and read back from bytes.
//!
//! A save never holds the state in memory: each model writes its own bytes straight into the
//! output, one model after the other. A model's size is known only once it is written, so the
//! sizes go in an index after the models, and the index's own size last:
//!
//! | what | encoding |
//! | --- | --- |
//! | format version ([`STATE_FORMAT_VERSION`]) | `u32` (postcard: a varint) |
//! | every job's model, one after the other | the model's own bytes ([`Model::save`]) |
//! | the index | postcard `(Vec<(job id, definition, model bytes: u64)>, open alert episodes)` |
//! | the index's length | 8 bytes, little-endian |
//!
//! The version comes first so that a state of another format is named as such. Reading takes
//! the index from the end and borrows each model's bytes where they lie: loading copies no model.
//!
//! Format 3, which the release before wrote (one postcard value: the version, then each job's
//! id, definition and model bytes, then the episodes), is still read, so that an upgrade keeps
//! what the models learnt.
//!
//! [`Model::save`]: crate::models::Model::save

use std::io::{self, Write};

use egresswatch_plugin_api::{ErrorKind, PluginError};

use super::STATE_FORMAT_VERSION;
use crate::models::ModelError;
use crate::suppression::SavedEpisodes;

/// Open alert episodes as saved: job id, rule id, episodes.
pub(super) type SavedAlerts = Vec<(String, String, SavedEpisodes)>;

/// The index: each job's id, definition and model size, in the order of the models; then the
/// open alert episodes.
type Index = (Vec<(String, Vec<(String, String)>, u64)>, SavedAlerts);

/// A saved state as read back, borrowing the models' bytes from what was read.
pub(super) struct SavedState<'a> {
    pub(super) jobs: Vec<SavedJob<'a>>,
    pub(super) alerts: SavedAlerts,
}

/// One job as read back.
pub(super) struct SavedJob<'a> {
    pub(super) id: String,
    /// The job's definition when the model was saved.
    pub(super) definition: Vec<(String, String)>,
    /// The model's bytes.
    pub(super) model: &'a [u8],
}

/// One job to write: its id, definition, and how to write its model.
pub(super) struct JobToSave<'a> {
    pub(super) id: &'a str,
    pub(super) definition: Vec<(String, String)>,
    pub(super) model: &'a dyn Fn(&mut dyn Write) -> Result<(), ModelError>,
}

/// Writes a state of `jobs` and `alerts` into `out`, each model as it encodes itself. When
/// `out` fails, the error says what it said (postcard replaces a writer's error with its own
/// `SerializeBufferFull`).
pub(super) fn write(
    out: &mut dyn Write,
    format: u32,
    jobs: &[JobToSave<'_>],
    alerts: &SavedAlerts,
) -> Result<(), PluginError> {
    let mut out = Counted {
        out,
        written: 0,
        error: None,
    };
    let result = write_parts(&mut out, format, jobs, alerts);
    match (result, out.error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(refuse(format!("writing the state: {e}"))),
        (Err(e), None) => Err(e),
    }
}

fn write_parts(
    out: &mut Counted<'_>,
    format: u32,
    jobs: &[JobToSave<'_>],
    alerts: &SavedAlerts,
) -> Result<(), PluginError> {
    let encoding = |e: postcard::Error| refuse(format!("encoding the state: {e}"));
    let written = |e: io::Error| refuse(format!("writing the state: {e}"));
    postcard::to_io(&format, &mut *out).map_err(encoding)?;
    let mut index = Vec::with_capacity(jobs.len());
    for job in jobs {
        let before = out.written;
        (job.model)(&mut *out).map_err(|e| refuse(format!("saving job {}: {e}", job.id)))?;
        index.push((job.id, &job.definition, out.written - before));
    }
    // Ids, definitions and episodes: small next to the models.
    let index = postcard::to_allocvec(&(index, alerts)).map_err(encoding)?;
    out.write_all(&index).map_err(written)?;
    out.write_all(&(index.len() as u64).to_le_bytes())
        .map_err(written)?;
    out.flush().map_err(written)
}

fn refuse(message: String) -> PluginError {
    PluginError::new(ErrorKind::State, message)
}

/// The output, counting the bytes written and keeping the first error it gave.
struct Counted<'w> {
    out: &'w mut dyn Write,
    written: u64,
    error: Option<String>,
}

impl Counted<'_> {
    fn keep<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            self.error.get_or_insert_with(|| e.to_string());
        }
        result
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.out.write(buf);
        if let Ok(n) = result {
            self.written += n as u64;
        }
        self.keep(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.out.flush();
        self.keep(result)
    }
}

/// Reads a state written by [`write`] (the version first, then the index from the end; nothing
/// may lie between the models and the index), or one of format 3.
pub(super) fn read(state: &[u8]) -> Result<SavedState<'_>, String> {
    let decoding = |e: postcard::Error| format!("decoding state: {e}");
    let (format, rest) = postcard::take_from_bytes::<u32>(state).map_err(decoding)?;
    if format == 3 {
        return read_format_3(state);
    }
    if format != STATE_FORMAT_VERSION {
        return Err(format!(
            "state format {format} is not supported (this plugin reads 3 and \
             {STATE_FORMAT_VERSION})"
        ));
    }
    let truncated = || format!("decoding state: truncated ({} bytes)", state.len());
    let (rest, len) = rest.split_last_chunk::<8>().ok_or_else(truncated)?;
    let (models, index) = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .and_then(|len| rest.len().checked_sub(len))
        .map(|at| rest.split_at(at))
        .ok_or_else(truncated)?;
    let ((jobs, alerts), after): (Index, _) = postcard::take_from_bytes(index).map_err(decoding)?;
    if !after.is_empty() {
        return Err(format!(
            "decoding state: {} bytes after the index",
            after.len()
        ));
    }
    let mut models = models;
    let mut saved = Vec::with_capacity(jobs.len());
    for (id, definition, size) in jobs {
        let model;
        (model, models) = usize::try_from(size)
            .ok()
            .and_then(|n| models.split_at_checked(n))
            .ok_or_else(|| {
                format!(
                    "decoding state: job {id}: a model of {size} bytes, {} left",
                    models.len()
                )
            })?;
        saved.push(SavedJob {
            id,
            definition,
            model,
        });
    }
    if !models.is_empty() {
        return Err(format!(
            "decoding state: {} bytes that no job's model takes",
            models.len()
        ));
    }
    Ok(SavedState {
        jobs: saved,
        alerts,
    })
}

/// A job as format 3 saved it: id, definition, the model's bytes.
type JobFormat3<'a> = (String, Vec<(String, String)>, &'a [u8]);

/// Reads a state of format 3: `(version, jobs, episodes)` as one postcard value, each model's
/// bytes borrowed where they lie.
fn read_format_3(state: &[u8]) -> Result<SavedState<'_>, String> {
    let (_, jobs, alerts): (u32, Vec<JobFormat3<'_>>, SavedAlerts) =
        postcard::from_bytes(state).map_err(|e| format!("decoding state (format 3): {e}"))?;
    let jobs = jobs
        .into_iter()
        .map(|(id, definition, model)| SavedJob {
            id,
            definition,
            model,
        })
        .collect();
    Ok(SavedState { jobs, alerts })
}

/// Writes `state` back with format version `format` (for tests that alter a saved state).
#[cfg(test)]
pub(super) fn rewrite(state: &SavedState<'_>, format: u32) -> Vec<u8> {
    let writers: Vec<_> = state
        .jobs
        .iter()
        .map(|job| {
            move |out: &mut dyn Write| -> Result<(), ModelError> {
                out.write_all(job.model)
                    .map_err(|_| ModelError::Codec(postcard::Error::SerializeBufferFull))
            }
        })
        .collect();
    let jobs: Vec<JobToSave<'_>> = state
        .jobs
        .iter()
        .zip(&writers)
        .map(|(job, model)| JobToSave {
            id: &job.id,
            definition: job.definition.clone(),
            model,
        })
        .collect();
    let mut out = Vec::new();
    write(&mut out, format, &jobs, &state.alerts).expect("a Vec takes every byte");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that writes `len` bytes of a pattern in pieces of `piece` bytes.
    fn pattern(len: usize, piece: usize) -> impl Fn(&mut dyn Write) -> Result<(), ModelError> {
        move |out: &mut dyn Write| {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for part in bytes.chunks(piece) {
                out.write_all(part)
                    .map_err(|_| ModelError::Codec(postcard::Error::SerializeBufferFull))?;
            }
            Ok(())
        }
    }

    fn saved(sizes: &[usize]) -> Vec<u8> {
        let models: Vec<_> = sizes.iter().map(|&n| pattern(n, 1000)).collect();
        let ids: Vec<String> = (0..sizes.len()).map(|i| format!("job{i}")).collect();
        let jobs: Vec<JobToSave<'_>> = models
            .iter()
            .zip(&ids)
            .map(|(model, id)| JobToSave {
                id,
                definition: vec![("function".to_owned(), format!("f-{id}"))],
                model,
            })
            .collect();
        let mut out = Vec::new();
        write(&mut out, STATE_FORMAT_VERSION, &jobs, &SavedAlerts::new()).unwrap();
        out
    }

    #[test]
    fn models_of_any_size_come_back_where_they_lie() {
        let sizes = [0, 1, 65_535, 65_536, 200_017];
        let out = saved(&sizes);
        let state = read(&out).unwrap();
        assert_eq!(state.jobs.len(), sizes.len());
        for (i, (job, &n)) in state.jobs.iter().zip(&sizes).enumerate() {
            let expected: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            assert_eq!(job.model, expected.as_slice(), "{}", job.id);
            assert_eq!(job.id, format!("job{i}"));
            assert_eq!(job.definition[0].1, format!("f-job{i}"));
        }
        // Borrowed from the bytes read, not copied.
        let range = out.as_ptr_range();
        assert!(state
            .jobs
            .iter()
            .all(|j| range.contains(&j.model.as_ptr()) || j.model.is_empty()));
    }

    #[test]
    fn truncated_or_padded_states_are_refused() {
        let out = saved(&[70_000, 5]);
        for cut in [out.len() - 1, out.len() - 9, 40_000, 3, 1] {
            assert!(read(&out[..cut]).is_err(), "cut at {cut} read as whole");
        }
        // A byte more between the models and the index: no model takes it.
        let index_len = u64::from_le_bytes(out[out.len() - 8..].try_into().unwrap()) as usize;
        let at = out.len() - 8 - index_len;
        let mut padded = out.clone();
        padded.insert(at, 0);
        let err = read(&padded).err().unwrap();
        assert!(err.contains("1 bytes that no job's model takes"), "{err}");
    }
}
