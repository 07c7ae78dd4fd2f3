//! Versioned state encoding (postcard), and the checks of a loaded state's values.

use std::io::{BufWriter, Write};

use serde::{Deserialize, Serialize};

use super::hash::KeyMap;
use crate::models::{ModelError, PREVIOUS_STATE_VERSION, STATE_VERSION};

/// The error for a loaded state value out of range.
pub fn invalid(field: &'static str, value: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        field,
        value: value.to_string(),
    }
}

/// Checks that a loaded weight is a finite number, not negative.
pub fn check_weight(field: &'static str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, value))
    }
}

/// Kind byte written after the version in saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `rare` model.
    Rare = 1,
    /// A `high_sum` model.
    HighSum = 2,
}

/// Encodes a state behind a `(version, kind)` header into `out`, through a 64 KiB buffer (postcard
/// writes a byte at a time; the buffer turns that into few calls of `out`).
pub fn encode_state<T: Serialize>(
    kind: Kind,
    state: &T,
    out: &mut dyn Write,
) -> Result<(), ModelError> {
    let mut out = BufWriter::with_capacity(1 << 16, out);
    postcard::to_io(&(STATE_VERSION, kind as u8), &mut out)?;
    postcard::to_io(state, &mut out)?;
    // postcard flushes at the end of each value; a failure there is its `SerializeBufferFull`.
    Ok(())
}

/// Decodes a state written by [`encode_state`], checking the header first. A state of
/// [`PREVIOUS_STATE_VERSION`] is read too: followed by `upgrade`, its bytes are those of the same
/// state in this version (fields added at the end, with their empty value); an empty `upgrade`
/// reads it as it is, without a copy.
pub fn decode_state<T: for<'de> Deserialize<'de>>(
    kind: Kind,
    bytes: &[u8],
    upgrade: &[u8],
) -> Result<T, ModelError> {
    let ((version, found), rest): ((u32, u8), &[u8]) = postcard::take_from_bytes(bytes)?;
    if version != STATE_VERSION && version != PREVIOUS_STATE_VERSION {
        return Err(ModelError::Version {
            found: version,
            expected: STATE_VERSION,
        });
    }
    if found != kind as u8 {
        return Err(ModelError::Mismatch {
            field: "model",
            state: found.to_string(),
            config: (kind as u8).to_string(),
        });
    }
    if version == PREVIOUS_STATE_VERSION && !upgrade.is_empty() {
        return Ok(postcard::from_bytes(&[rest, upgrade].concat())?);
    }
    Ok(postcard::from_bytes(rest)?)
}

/// Approximate heap bytes of a map at its capacity (hashbrown: one control byte per slot, slots
/// a power of two at most 7/8 full).
pub fn map_bytes<V>(m: &KeyMap<V>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    let slots = (cap * 8 / 7).next_power_of_two();
    slots * (std::mem::size_of::<(u64, V)>() + 1)
}
