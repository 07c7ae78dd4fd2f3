//! What both sides of egresswatch share, linked into each: never part of the plugin ABI, so a
//! change here needs no ABI version, only a rebuild.
//!
//! - [`time`]: RFC 3339 parsing (strict: impossible dates and offsets are errors) and
//!   formatting, and epoch numbers read as seconds or milliseconds.
//! - [`path`]: dotted field paths on JSON values, with the one lookup order every part of
//!   egresswatch reads events with.
//! - [`human`]: numbers, bytes and durations for people, and plain-text tables.
//! - [`names`]: ECS field names, the default anomaly threshold, the labelled attack kinds.
//!
//! Nothing here does I/O or reads a clock.

pub mod human;
pub mod names;
pub mod path;
pub mod time;
