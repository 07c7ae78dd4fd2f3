//! The field scanner: the few fields the jobs read, taken from an event line in one pass.
//!
//! Most of an event is of no interest to the detector: of the twenty-odd keys of an ECS network
//! event the jobs read eight or nine. Parsing it into a tree (an allocation per key and value)
//! or even walking it with serde's visitor (a `String` path built per key, a linear search of
//! the wanted paths) costs several times what the detection itself costs. [`Scanner::scan`]
//! instead makes one pass over the bytes, as a validating JSON parser would, and stops to look
//! only at the keys on a wanted path:
//!
//! - **Keys are matched against a table per nesting level, built once.** [`SchemaBuilder`]
//!   turns the wanted paths into a trie whose nodes (root, `destination`, `destination.geo`, ...)
//!   each hold an open-addressed hash table of the key segments that lead on. A key is hashed
//!   from its first and last eight bytes; for keys up to sixteen bytes, comparing those two
//!   words and the length is the whole comparison. No path string is built per event.
//! - **Nested and dotted keys are one field.** A key with dots is split at them and walked
//!   through the same trie, so `{"destination":{"geo":{"country_name":..}}}`,
//!   `{"destination.geo.country_name":..}` and `{"destination":{"geo.country_name":..}}` all give
//!   `destination.geo.country_name`. Escaped keys (`"destin\u0061tion"`) are decoded first, as
//!   any JSON reader downstream would decode them.
//! - **Everything else is skipped, and still validated.** Values under keys that lead nowhere
//!   are skipped by a non-recursive walk that checks the full JSON grammar (a line that is not
//!   exactly one JSON object is unreadable, see [`ScanError`]). Strings are not read byte by
//!   byte: once per line, a bit mask of the three bytes that matter in a string (`"`, `\` and
//!   control characters) is built sixteen bytes at a time (SSE2), and a string without escapes
//!   ends at its first marked byte (a shift and a count of trailing zeros); an escaped string
//!   is checked eight bytes at a time (SWAR). Validation costs little: skipping unwanted
//!   numbers, literals and strings without checking them measured 1% fewer instructions.
//!   UTF-8 is not checked again: the host hands over `&str`, already validated.
//! - **Values stay where they are.** A wanted value is recorded as a span of the line (strings
//!   without escapes are borrowed; the rare escaped one is decoded into a buffer the scanner
//!   reuses), numbers are converted once, and IP addresses are parsed once, on first use, for
//!   every reader (filters, GeoIP, allow-list). Nothing is allocated per event once the
//!   scanner's buffers have grown to the size of the events it sees.
//!
//! Readers ([`Event`]) address fields by [`FieldId`], resolved when the detector is built.
//!
//! **One reading of an event** (the detector reads it, the alert is written into it, and both
//! agree with what a JSON reader downstream sees):
//!
//! - *Duplicate keys*: the last occurrence in an object wins, as serde_json (Vector), Go,
//!   Python and JavaScript readers keep it; an earlier occurrence, and everything inside it, is
//!   not read. (Elasticsearch itself refuses such a document by default.) Spotting a repeated
//!   wanted key costs a bit test; the rare event that has one is scanned a second time, exactly.
//! - *Dotted and nested forms of one field*: the most nested form wins, whatever the order:
//!   at each level a single-segment key is preferred to a dotted one, so for
//!   `destination.geo.country_name` the order is `{"destination":{"geo":{"country_name"}}}`,
//!   `{"destination":{"geo.country_name"}}`, `{"destination.geo":{"country_name"}}`,
//!   `{"destination.geo.country_name"}`. That is the form pipeline tools (Vector's VRL paths,
//!   Logstash field references, Elasticsearch ingest processors such as `geoip`) read. An event
//!   holding two different forms is counted as conflicting ([`Event::conflicting`]).
//! - *Groups* ([`SchemaBuilder::group`]: `rule`, `threat`, `egresswatch`, which alerts must not
//!   write twice) exist ([`Event::writable`] answers [`Collision::Exists`]) when anything is at
//!   their path or below it, in any form: `{"rule":{..}}`, `{"rule":"x"}`, `{"rule.name":..}`
//!   and `{"rule.zzz":..}` alike, whether or not `rule.name` is wanted too. Their value is what
//!   is at the path itself; with only dotted keys below it, a group is present with no text
//!   of its own.
//! - *Arrays* are not descended into: ECS paths do not index arrays. A wanted field whose value is
//!   an array is kept whole (for `event.category`, the strings in it); an array where an object
//!   on a wanted path belongs (`"destination": [{"ip": ..}, ..]`) is skipped: nothing in it is
//!   read, and nothing is written there.
//! - *Numbers and strings* are taken as JSON defines them: `1e999` and a 400-digit integer are
//!   numbers (read as not finite, so as absent where a number is needed); a lone surrogate
//!   escape (`"\ud800"`) is a string (read with U+FFFD in its place). What the scanner accepts,
//!   [`Event::write`] can annotate, since the annotation is inserted into the original bytes.
//!   More than [`MAX_DEPTH`] levels of nesting make the event unreadable for both.
//!
//! **Writing** ([`Event::write`]): new fields are inserted into the original line at offsets the
//! scan recorded (the end of the object that holds the field's nearest existing parent, in the
//! same preferred form), never replacing a byte that was there. A field that exists in any form
//! is not written ([`Collision::Exists`]), nor one whose parent path holds something other than
//! an object ([`Collision::Blocked`]).

use std::fmt;

mod event;
pub(crate) mod grammar;
mod parser;
mod scanner;
mod schema;
mod slot;
#[cfg(test)]
mod tests;

pub use event::{push_json_str, Add, Collision, Event};
pub use scanner::{Scanned, Scanner};
pub use schema::{Schema, SchemaBuilder};

/// Most levels of arrays and objects an event may nest, counting the event itself: serde_json's
/// limit (its recursion limit of 128 refuses the 128th level), so that serde-based readers
/// downstream, such as Vector's JSON codec, accept exactly what is accepted here.
pub const MAX_DEPTH: u32 = 127;

/// Most segments a wanted path may have (`destination.geo.country_name` has three).
pub const MAX_SEGMENTS: usize = 16;

/// A wanted field, by index; resolved from its path when the detector is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldId(u16);

/// Why a line is not one readable JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct ScanError {
    /// What is wrong.
    pub kind: ScanErrorKind,
    /// Byte offset in the line where it was found.
    pub offset: usize,
}

/// The kinds of [`ScanError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanErrorKind {
    /// The line is not a JSON object (an array, a string, empty, ...).
    NotAnObject,
    /// A byte that the JSON grammar does not allow here, or the line ended too early.
    Syntax,
    /// A raw control character (below U+0020) inside a string.
    ControlCharacter,
    /// A backslash escape that JSON does not define.
    BadEscape,
    /// A malformed number (`01`, `1.`, `-`, `1e`).
    BadNumber,
    /// More than [`MAX_DEPTH`] levels of nesting.
    TooDeep,
    /// Something other than whitespace after the object.
    TrailingCharacters,
    /// A line of 4 GiB or more.
    TooLong,
}

impl fmt::Display for ScanErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScanErrorKind::NotAnObject => "not a JSON object",
            ScanErrorKind::Syntax => "invalid JSON",
            ScanErrorKind::ControlCharacter => "control character in a string",
            ScanErrorKind::BadEscape => "invalid escape in a string",
            ScanErrorKind::BadNumber => "invalid number",
            ScanErrorKind::TooDeep => "nested too deeply",
            ScanErrorKind::TrailingCharacters => "characters after the JSON object",
            ScanErrorKind::TooLong => "line too long",
        })
    }
}

/// A wanted path that cannot be matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The path is empty or has an empty segment (`a..b`, `.a`, `a.`).
    #[error("invalid field path `{0}`")]
    InvalidPath(String),
    /// The path has more than [`MAX_SEGMENTS`] segments.
    #[error("field path `{0}` has more than {MAX_SEGMENTS} segments")]
    TooDeep(String),
    /// More distinct fields than a [`FieldId`] can number.
    #[error("too many distinct fields ({0})")]
    TooMany(usize),
}
