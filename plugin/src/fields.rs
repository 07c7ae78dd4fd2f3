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
//!   from its first and last eight bytes and its length; for keys up to sixteen bytes, comparing
//!   those two words and the length is the whole comparison. No path string is built per event.
//! - **Nested and dotted keys are one field.** A key with dots is split at them and walked
//!   through the same trie, so `{"destination":{"geo":{"country_name":..}}}`,
//!   `{"destination.geo.country_name":..}` and `{"destination":{"geo.country_name":..}}` all give
//!   `destination.geo.country_name`. Escaped keys (`"destin\u0061tion"`) are decoded first, as
//!   any JSON reader downstream would decode them.
//! - **Everything else is skipped, and still validated.** Values under keys that lead nowhere
//!   are skipped by a non-recursive walk that checks the full JSON grammar (a line that is not
//!   exactly one JSON object is unreadable, see [`ScanError`]); string contents are skimmed
//!   eight bytes at a time (SWAR) for the three bytes that matter: `"`, `\` and control
//!   characters. UTF-8 is not checked again: the host hands over `&str`, already validated.
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

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::net;

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

/// Collects the wanted paths and hands out their [`FieldId`]s.
#[derive(Debug, Default)]
pub struct SchemaBuilder {
    paths: Vec<String>,
    /// Per path: whether any key below it counts as the field being present.
    groups: Vec<bool>,
}

impl SchemaBuilder {
    /// A builder with no field.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `path`, added if new.
    pub fn field(&mut self, path: &str) -> FieldId {
        let index = match self.paths.iter().position(|p| p == path) {
            Some(index) => index,
            None => {
                self.paths.push(path.to_owned());
                self.groups.push(false);
                self.paths.len() - 1
            }
        };
        // Checked against u16 in `build`; ids past it are never used.
        FieldId(u16::try_from(index).unwrap_or(NONE))
    }

    /// The id of `path` as a *group*: present when the path or anything below it is
    /// (`rule` is present for `{"rule":{..}}`, `{"rule":"x"}` and `{"rule.name":"x"}` alike).
    pub fn group(&mut self, path: &str) -> FieldId {
        let id = self.field(path);
        self.groups[usize::from(id.0)] = true;
        id
    }

    /// Builds the per-level key tables.
    pub fn build(self) -> Result<Schema, SchemaError> {
        if self.paths.len() >= usize::from(NONE) {
            return Err(SchemaError::TooMany(self.paths.len()));
        }
        let mut trie = vec![TrieNode::default()];
        let mut chains = Vec::with_capacity(self.paths.len());
        for (index, path) in self.paths.iter().enumerate() {
            let segments: Vec<&str> = path.split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(SchemaError::InvalidPath(path.clone()));
            }
            if segments.len() > MAX_SEGMENTS {
                return Err(SchemaError::TooDeep(path.clone()));
            }
            let mut node = 0;
            let mut chain = Chain {
                segments: segments.iter().map(|s| (*s).into()).collect(),
                nodes: vec![ROOT],
            };
            for (i, segment) in segments.iter().enumerate() {
                let at = match trie[node].keys.iter().position(|(k, _)| k == segment) {
                    Some(at) => at,
                    None => {
                        trie[node]
                            .keys
                            .push(((*segment).to_owned(), TrieEntry::default()));
                        trie[node].keys.len() - 1
                    }
                };
                if i + 1 == segments.len() {
                    trie[node].keys[at].1.field = Some(index);
                    trie[node].keys[at].1.group = self.groups[index];
                } else {
                    node = match trie[node].keys[at].1.child {
                        Some(child) => child,
                        None => {
                            trie.push(TrieNode {
                                depth: i + 1,
                                ..TrieNode::default()
                            });
                            let child = trie.len() - 1;
                            trie[node].keys[at].1.child = Some(child);
                            child
                        }
                    };
                    chain.nodes.push(u16::try_from(node).unwrap_or(NONE));
                }
            }
            chains.push(chain);
        }
        if trie.len() >= usize::from(NONE) {
            return Err(SchemaError::TooMany(trie.len()));
        }
        let nodes = trie.iter().map(Node::build).collect();
        Ok(Schema {
            paths: self.paths,
            groups: self.groups,
            nodes,
            chains,
        })
    }
}

#[derive(Default)]
struct TrieNode {
    /// Segments of the path leading here.
    depth: usize,
    keys: Vec<(String, TrieEntry)>,
}

#[derive(Default, Clone, Copy)]
struct TrieEntry {
    field: Option<usize>,
    child: Option<usize>,
    group: bool,
}

/// A field's path: its segments, and the trie node reached after each proper prefix (the root
/// first), which is where its parent objects are recorded.
#[derive(Debug)]
struct Chain {
    segments: Vec<Box<str>>,
    nodes: Vec<u16>,
}

/// "No field" / "no child node" in a [`Target`].
const NONE: u16 = u16::MAX;

/// Where a key leads: a field ending there, a node below it, or both.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// Field ending here, or [`NONE`].
    field: u16,
    /// Node the key leads to, or [`NONE`].
    child: u16,
    /// The field is a group: keys below it count as it.
    group: bool,
}

/// One key segment of a node's table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// First eight bytes of the key, zero-padded.
    a: u64,
    /// Last eight bytes of the key when it is longer than eight, else 0.
    b: u64,
    /// Key length; 0 marks an empty slot (an empty key segment never matches).
    len: u32,
    /// Index in [`Schema::long_keys`] for keys over sixteen bytes.
    long: u32,
    target: Target,
}

const EMPTY: Entry = Entry {
    a: 0,
    b: 0,
    len: 0,
    long: 0,
    target: Target {
        field: NONE,
        child: NONE,
        group: false,
    },
};

/// One nesting level: the key segments that lead on from it, in an open-addressed table.
#[derive(Debug)]
struct Node {
    /// The weight of this level's break in a value's rank (see [`rank_bit`]).
    bit: u16,
    mask: usize,
    entries: Box<[Entry]>,
    /// Segments over sixteen bytes, compared in full after their words matched.
    long_keys: Vec<Box<[u8]>>,
}

impl Node {
    fn build(node: &TrieNode) -> Node {
        let mut long_keys: Vec<Box<[u8]>> = Vec::new();
        // At most a quarter full: an unknown key usually meets an empty slot at once.
        let size = (node.keys.len() * 4).next_power_of_two().max(8);
        let mut entries = vec![EMPTY; size].into_boxed_slice();
        let mask = size - 1;
        for (key, entry) in &node.keys {
            let bytes = key.as_bytes();
            let (a, b) = key_words(bytes, 0, bytes.len());
            let long = if bytes.len() > 16 {
                long_keys.push(bytes.into());
                u32::try_from(long_keys.len() - 1).unwrap_or(u32::MAX)
            } else {
                0
            };
            let narrow = |i: Option<usize>| i.map_or(NONE, |i| u16::try_from(i).unwrap_or(NONE));
            let mut slot = hash(a, b, bytes.len()) & mask;
            while entries[slot].len != 0 {
                slot = (slot + 1) & mask;
            }
            entries[slot] = Entry {
                a,
                b,
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                long,
                target: Target {
                    field: narrow(entry.field),
                    child: narrow(entry.child),
                    group: entry.group,
                },
            };
        }
        Node {
            bit: rank_bit(node.depth),
            mask,
            entries,
            long_keys,
        }
    }

    #[cold]
    fn long_is(&self, index: u32, key: &[u8]) -> bool {
        self.long_keys
            .get(index as usize)
            .is_some_and(|k| **k == *key)
    }

    /// Looks `key[s..e]` up among this node's segments: the target, `None` when the key
    /// leads nowhere, or [`Dotted`] when it missed and has a dot (to be walked segment by
    /// segment).
    #[inline(always)]
    fn lookup(&self, key: &[u8], s: usize, e: usize) -> Result<Option<(Target, usize)>, Dotted> {
        let len = e - s;
        let (a, b) = key_words(key, s, e);
        let mut slot = hash(a, b, len) & self.mask;
        loop {
            let Some(entry) = self.entries.get(slot) else {
                return Ok(None);
            };
            if entry.len == 0 {
                break;
            }
            if entry.a == a && entry.b == b && entry.len as usize == len {
                if len <= 16 || self.long_is(entry.long, &key[s..e]) {
                    return Ok(Some((entry.target, slot)));
                }
                break;
            }
            slot = (slot + 1) & self.mask;
        }
        // The two words cover keys up to sixteen bytes (and are zero past the key).
        let dots = ONES * u64::from(b'.');
        let dotted = if len <= 16 {
            (zero_bytes(a ^ dots) | zero_bytes(b ^ dots)) != 0
        } else {
            key[s..e].contains(&b'.')
        };
        if dotted {
            Err(Dotted)
        } else {
            Ok(None)
        }
    }
}

/// A key that missed and has a dot: to be resolved segment by segment.
struct Dotted;

/// The wanted paths as per-level key tables; shared by every [`Scanner`] of a detector.
#[derive(Debug)]
pub struct Schema {
    paths: Vec<String>,
    /// Per path: whether it is a group ([`SchemaBuilder::group`]).
    groups: Vec<bool>,
    nodes: Vec<Node>,
    chains: Vec<Chain>,
}

impl Schema {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when no field is wanted.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Every wanted path, in [`FieldId`] order, and whether it is a group (present when
    /// anything below it is): for faces that read the fields themselves (the C face).
    pub fn fields(&self) -> impl Iterator<Item = (&str, bool)> {
        self.paths
            .iter()
            .map(String::as_str)
            .zip(self.groups.iter().copied())
    }
}

/// The root node of every schema.
const ROOT: u16 = 0;

/// The weight, in a value's rank, of an object break after `depth` segments: earlier breaks
/// weigh more, so that comparing ranks prefers the most nested form (a single-segment key at
/// each level before a dotted one). The root (depth 0) has no break.
fn rank_bit(depth: usize) -> u16 {
    match depth {
        0 => 0,
        d => 1 << (MAX_SEGMENTS - d.min(MAX_SEGMENTS)),
    }
}

#[inline(always)]
fn hash(a: u64, b: u64, len: usize) -> usize {
    let h = (a ^ b.rotate_left(23)).wrapping_add(len as u64);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

/// The eight bytes at `at` as a little-endian word, if there are eight. (`at` is an offset in
/// a line shorter than 4 GiB, so `at + 8` cannot overflow.)
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> Option<u64> {
    if at + 8 > bytes.len() {
        return None;
    }
    let chunk: &[u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(*chunk))
}

/// `LOW_BYTES[n]` keeps the low `n` bytes of a word.
const LOW_BYTES: [u64; 8] = [
    0,
    0xff,
    0xffff,
    0xff_ffff,
    0xffff_ffff,
    0xff_ffff_ffff,
    0xffff_ffff_ffff,
    0xff_ffff_ffff_ffff,
];

/// The words a key is hashed and compared by: its first eight bytes (zero-padded) and, when
/// longer than eight, its last eight. Bytes after the key in `bytes` are masked off.
#[inline(always)]
fn key_words(bytes: &[u8], s: usize, e: usize) -> (u64, u64) {
    let len = e - s;
    match word(bytes, s) {
        Some(w) if len > 8 => (w, word(bytes, e - 8).unwrap_or(0)),
        Some(w) if len == 8 => (w, 0),
        Some(w) => (w & LOW_BYTES[len & 7], 0),
        None => padded_words(&bytes[s..e]),
    }
}

/// [`key_words`] for a key too close to the end of its buffer to load a word.
#[cold]
fn padded_words(key: &[u8]) -> (u64, u64) {
    let mut pad = [0u8; 8];
    let n = key.len().min(8);
    pad[..n].copy_from_slice(&key[..n]);
    let b = if key.len() > 8 {
        word(key, key.len() - 8).unwrap_or(0)
    } else {
        0
    };
    (u64::from_le_bytes(pad), b)
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Absent,
    Null,
    True,
    False,
    /// A string without escapes: `start..end` of the line, quotes excluded.
    Str,
    /// A string with escapes, decoded: `start..end` of the scanner's buffer.
    Decoded,
    /// A value set after the scan (enrichment): [`Slot::fixed`].
    Fixed,
    /// A number: [`Slot::num`], its text `start..end` of the line; `int` when integral text.
    Num,
    /// An array, `start..end` of the line, brackets included.
    Array,
    /// An object, `start..end` of the line, braces included.
    Object,
}

/// An IP address, parsed on first use.
#[derive(Debug, Clone, Copy)]
enum IpMemo {
    Unparsed,
    Invalid,
    Valid(IpAddr),
}

/// One wanted field's value in the current event.
#[derive(Debug, Clone)]
struct Slot {
    kind: Kind,
    /// The form it was read in (see [`rank_bit`]): a higher rank replaces it.
    rank: u16,
    /// For [`Kind::Num`]: the text is an integer (no fraction or exponent).
    int: bool,
    start: u32,
    end: u32,
    num: f64,
    fixed: &'static str,
    ip: Cell<IpMemo>,
}

impl Slot {
    fn absent() -> Slot {
        Slot {
            kind: Kind::Absent,
            rank: 0,
            int: false,
            start: 0,
            end: 0,
            num: 0.0,
            fixed: "",
            ip: Cell::new(IpMemo::Unparsed),
        }
    }
}

/// What the scan saw of one trie node: the object that holds its fields, in the preferred form
/// (where new fields under it are inserted), and whether a non-object stands in its place.
#[derive(Debug, Clone, Copy, Default)]
struct NodeSeen {
    /// An object for this node was seen.
    present: bool,
    /// The object had no members.
    empty: bool,
    /// Its form (see [`rank_bit`]).
    rank: u16,
    /// Offset of its closing `}`.
    close: u32,
    /// Something other than an object stands at this path (`"destination": "x"`, an array).
    blocked: bool,
}

/// Scans event lines for the fields of one [`Schema`]; keeps its buffers between events.
#[derive(Debug)]
pub struct Scanner {
    schema: Arc<Schema>,
    slots: Vec<Slot>,
    nodes: Vec<NodeSeen>,
    /// Offsets of keys a later occurrence of the same key replaces (second, exact pass only).
    superseded: Vec<u32>,
    /// Decoded escaped strings of the current event.
    scratch: String,
    /// The current key, when it had escapes.
    key: String,
}

impl Scanner {
    /// A scanner for `schema`.
    pub fn new(schema: Arc<Schema>) -> Self {
        Scanner {
            slots: vec![Slot::absent(); schema.len()],
            nodes: vec![NodeSeen::default(); schema.nodes.len()],
            superseded: Vec::new(),
            schema,
            scratch: String::new(),
            key: String::new(),
        }
    }

    /// The schema scanned for.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Scans one line (without its terminator). Fails when it is not exactly one JSON object.
    pub fn scan<'s>(&'s mut self, line: &'s str) -> Result<Event<'s>, ScanError> {
        if u32::try_from(line.len()).is_err() {
            return Err(fail(ScanErrorKind::TooLong, 0));
        }
        self.superseded.clear();
        let flags = self.pass(line, false)?;
        let flags = if flags.duplicates {
            // A wanted key repeated in one object: read again, skipping what is replaced.
            self.pass(line, true)?
        } else {
            flags
        };
        Ok(Event {
            line,
            schema: &self.schema,
            slots: &mut self.slots,
            nodes: &self.nodes,
            scratch: &self.scratch,
            conflicting: flags.conflicting,
        })
    }

    fn pass(&mut self, line: &str, exact: bool) -> Result<PassFlags, ScanError> {
        for slot in &mut self.slots {
            slot.kind = Kind::Absent;
        }
        for node in &mut self.nodes {
            *node = NodeSeen::default();
        }
        self.scratch.clear();
        let b = line.as_bytes();
        let mut p = Parser {
            text: line,
            schema: &self.schema,
            slots: &mut self.slots,
            nodes: &mut self.nodes,
            scratch: &mut self.scratch,
            key: &mut self.key,
            superseded: &mut self.superseded,
            exact,
            flags: PassFlags::default(),
        };
        let pos = skip_ws(b, 0);
        if b.get(pos) != Some(&b'{') {
            return Err(fail(ScanErrorKind::NotAnObject, pos));
        }
        let pos = skip_ws(b, p.walk(pos + 1)?);
        if pos != b.len() {
            return Err(fail(ScanErrorKind::TrailingCharacters, pos));
        }
        Ok(p.flags)
    }
}

/// What one pass noticed.
#[derive(Debug, Clone, Copy, Default)]
struct PassFlags {
    /// A wanted key occurs twice in one object.
    duplicates: bool,
    /// A field was read in two different forms (dotted and nested).
    conflicting: bool,
}

/// The wanted fields of one scanned event.
#[derive(Debug)]
pub struct Event<'s> {
    line: &'s str,
    schema: &'s Schema,
    slots: &'s mut [Slot],
    nodes: &'s [NodeSeen],
    scratch: &'s str,
    conflicting: bool,
}

/// A member to insert: the node whose object receives it, the rest of its path below that
/// node, and its JSON value.
type Member<'a> = (u16, &'a [Box<str>], Value<'a>);

/// A value [`Event::write`] inserts.
#[derive(Debug, Clone, Copy)]
enum Value<'t> {
    /// JSON text, as given.
    Text(&'t str),
    /// Comma-separated JSON values, written inside brackets.
    Array(&'t str),
}

impl Value<'_> {
    /// Bytes it takes.
    fn len(&self) -> usize {
        match self {
            Value::Text(t) => t.len(),
            Value::Array(t) => t.len() + 2,
        }
    }

    fn push_to(&self, out: &mut String) {
        match self {
            Value::Text(t) => out.push_str(t),
            Value::Array(t) => {
                out.push('[');
                out.push_str(t);
                out.push(']');
            }
        }
    }
}

/// What [`Event::write`] inserts at one offset.
#[derive(Debug, Clone, Copy)]
enum Insert<'t> {
    /// Values appended to an existing array, after a comma when it has some.
    Items { comma: bool, items: &'t str },
    /// The new members of a node's object, after a comma when it has some.
    Members { node: u16, empty: bool },
}

/// Why a field was not written by [`Event::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collision {
    /// The field is already in the event (in some form, maybe `null`); it is never replaced.
    Exists,
    /// A parent path holds something other than an object (`"rule": "x"` for `rule.id`, or an
    /// array), so the field has nowhere to go without replacing it.
    Blocked,
}

/// A field to add with [`Event::write`].
#[derive(Debug, Clone, Copy)]
pub enum Add<'t> {
    /// The field, with its value as JSON text.
    Field(FieldId, &'t str),
    /// JSON values (comma-separated text) appended to the array the field holds; the field is
    /// created as an array when absent.
    Append(FieldId, &'t str),
}

impl<'s> Event<'s> {
    fn slot(&self, id: FieldId) -> &Slot {
        &self.slots[usize::from(id.0)]
    }

    /// The field as a string, when it is one.
    pub fn str(&self, id: FieldId) -> Option<&str> {
        let slot = self.slot(id);
        let (s, e) = (slot.start as usize, slot.end as usize);
        match slot.kind {
            Kind::Str => self.line.get(s..e),
            Kind::Decoded => self.scratch.get(s..e),
            Kind::Fixed => Some(slot.fixed),
            _ => None,
        }
    }

    /// The field as a finite number: a JSON number or a string holding one (`"1024"`).
    pub fn number(&self, id: FieldId) -> Option<f64> {
        let slot = self.slot(id);
        let n = match slot.kind {
            Kind::Num => slot.num,
            _ => self.str(id)?.trim().parse().ok()?,
        };
        n.is_finite().then_some(n)
    }

    /// The field as the text of an entity key: a string as it is, an integer as written
    /// (`443`), another number formatted without a needless fraction.
    pub fn key_text(&self, id: FieldId) -> Option<std::borrow::Cow<'_, str>> {
        let slot = self.slot(id);
        if slot.kind == Kind::Num {
            if slot.int {
                return self
                    .line
                    .get(slot.start as usize..slot.end as usize)
                    .map(Into::into);
            }
            let n = self.number(id)?;
            return Some(if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{}", n as i64).into()
            } else {
                n.to_string().into()
            });
        }
        self.str(id).map(Into::into)
    }

    /// True when the field is the string `needle`, or an array holding it.
    pub fn contains(&self, id: FieldId, needle: &str) -> bool {
        let slot = self.slot(id);
        if slot.kind == Kind::Array {
            let raw = &self.line[slot.start as usize..slot.end as usize];
            return array_contains(raw, needle);
        }
        self.str(id) == Some(needle)
    }

    /// True when the field is present and not `null`.
    pub fn present(&self, id: FieldId) -> bool {
        !matches!(self.slot(id).kind, Kind::Absent | Kind::Null)
    }

    /// The field as an IP address (`10.1.2.3`, `2001:db8::1`, `[::1]`, `fe80::1%eth0`), parsed
    /// once per event whoever asks.
    pub fn ip(&self, id: FieldId) -> Option<IpAddr> {
        let slot = self.slot(id);
        // The memo is reset whenever a slot takes a string; other kinds are never addresses.
        if !matches!(slot.kind, Kind::Str | Kind::Decoded | Kind::Fixed) {
            return None;
        }
        match slot.ip.get() {
            IpMemo::Valid(ip) => Some(ip),
            IpMemo::Invalid => None,
            IpMemo::Unparsed => {
                let ip = self.str(id).and_then(net::parse_ip);
                slot.ip.set(ip.map_or(IpMemo::Invalid, IpMemo::Valid));
                ip
            }
        }
    }

    /// The field's value as JSON text (as written in the event when it was read from it).
    pub fn raw(&self, id: FieldId) -> Option<std::borrow::Cow<'_, str>> {
        let slot = self.slot(id);
        let (s, e) = (slot.start as usize, slot.end as usize);
        match slot.kind {
            Kind::Absent => None,
            Kind::Str => self.line.get(s - 1..e + 1).map(Into::into),
            Kind::Decoded | Kind::Fixed => {
                serde_json::to_string(self.str(id)?).ok().map(Into::into)
            }
            _ => self.line.get(s..e).map(Into::into),
        }
    }

    /// True when some field was read in two different forms (a dotted and a nested key): the
    /// preferred one was read, and readers that merge forms may see both.
    pub fn conflicting(&self) -> bool {
        self.conflicting
    }

    /// Whether `id` could be added to the event: `Ok` when it is absent and its parent path is
    /// free.
    pub fn writable(&self, id: FieldId) -> Result<(), Collision> {
        self.place(id).map(drop)
    }

    /// Where a new field goes: the node whose object receives it and how many of the field's
    /// segments that node covers.
    fn place(&self, id: FieldId) -> Result<(u16, usize), Collision> {
        // A value set after the scan (enrichment) is not in the line: it can be written.
        if !matches!(self.slot(id).kind, Kind::Absent | Kind::Fixed) {
            return Err(Collision::Exists);
        }
        let chain = &self.schema.chains[usize::from(id.0)];
        for (covered, &node) in chain.nodes.iter().enumerate().rev() {
            let seen = self.nodes[usize::from(node)];
            if seen.blocked {
                return Err(Collision::Blocked);
            }
            if seen.present || node == ROOT {
                return Ok((node, covered));
            }
        }
        Err(Collision::Blocked)
    }

    /// Writes the line with `adds` inserted into `out` (cleared first); the original bytes are
    /// all kept, in order. Returns the adds that could not be written, and why.
    ///
    /// The inserted text is rendered straight into `out` between the copied runs of the line:
    /// no intermediate string per insertion (a flagged event's alert is a few kilobytes, and
    /// this runs on every flagged event).
    pub fn write(&self, adds: &[Add<'_>], out: &mut String) -> Vec<(FieldId, Collision)> {
        let mut refused = Vec::new();
        // New members per receiving node: the rest of the path below it, and the JSON value.
        let mut members: Vec<Member<'_>> = Vec::with_capacity(adds.len());
        // Where text goes: (offset, what), in the order the adds name them; sorted (stably) by
        // offset below.
        let mut inserts: Vec<(usize, Insert<'_>)> = Vec::with_capacity(adds.len());
        let mut extra = 0;
        for add in adds {
            let (id, value) = match *add {
                Add::Append(id, items) if self.slot(id).kind == Kind::Array => {
                    let slot = self.slot(id);
                    let close = slot.end as usize - 1;
                    let inner = self.line[slot.start as usize + 1..close].trim();
                    extra += items.len() + 1;
                    inserts.push((
                        close,
                        Insert::Items {
                            comma: !inner.is_empty(),
                            items,
                        },
                    ));
                    continue;
                }
                Add::Append(id, items) => (id, Value::Array(items)),
                Add::Field(id, value) => (id, Value::Text(value)),
            };
            match self.place(id) {
                Ok((node, covered)) => {
                    let chain = &self.schema.chains[usize::from(id.0)];
                    let rest = &chain.segments[covered..];
                    extra += value.len() + rest.iter().map(|s| s.len() + 4).sum::<usize>();
                    members.push((node, rest, value));
                }
                Err(why) => refused.push((id, why)),
            }
        }
        // One insertion per receiving object, before its closing brace.
        let mut nodes: Vec<u16> = members.iter().map(|m| m.0).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            let seen = self.nodes[usize::from(node)];
            let close = if seen.present {
                seen.close as usize
            } else {
                // The root object always exists: its brace is the last one of the line.
                self.line.rfind('}').unwrap_or(0)
            };
            let empty = if seen.present {
                seen.empty
            } else {
                self.line[..close].trim_end().ends_with('{')
            };
            inserts.push((close, Insert::Members { node, empty }));
        }
        inserts.sort_by_key(|i| i.0);
        out.clear();
        out.reserve(self.line.len() + extra + 16);
        let mut from = 0;
        let mut items: Vec<(&[Box<str>], Value<'_>)> = Vec::with_capacity(members.len());
        for (at, insert) in &inserts {
            out.push_str(&self.line[from..*at]);
            match *insert {
                Insert::Items { comma, items } => {
                    if comma {
                        out.push(',');
                    }
                    out.push_str(items);
                }
                Insert::Members { node, empty } => {
                    if !empty {
                        out.push(',');
                    }
                    items.clear();
                    items.extend(members.iter().filter(|m| m.0 == node).map(|m| (m.1, m.2)));
                    render_members(&items, out);
                }
            }
            from = *at;
        }
        out.push_str(&self.line[from..]);
        refused
    }

    /// Sets a field after the scan (GeoIP enrichment).
    pub fn set(&mut self, id: FieldId, value: &'static str) {
        let slot = &mut self.slots[usize::from(id.0)];
        slot.kind = Kind::Fixed;
        slot.fixed = value;
        slot.ip.set(IpMemo::Unparsed);
    }
}

/// Writes `items` (paths relative to one object, with JSON values) as that object's members,
/// nesting the ones that share a first segment: `geo.country_name` and `geo.country_iso_code`
/// become `"geo":{"country_name":..,"country_iso_code":..}`.
fn render_members(items: &[(&[Box<str>], Value<'_>)], out: &mut String) {
    // Items already written (as part of a nested object); a write takes a handful of fields.
    let mut few = [false; 16];
    let mut many = Vec::new();
    let done: &mut [bool] = match few.get_mut(..items.len()) {
        Some(few) => few,
        None => {
            many.resize(items.len(), false);
            &mut many
        }
    };
    let mut first = true;
    for i in 0..items.len() {
        if done[i] {
            continue;
        }
        let (path, value) = items[i];
        let Some((head, rest)) = path.split_first() else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, head);
        out.push(':');
        if rest.is_empty() {
            value.push_to(out);
            done[i] = true;
            continue;
        }
        // Every item under the same head, in order, goes into one nested object.
        let mut below = Vec::new();
        for (j, (other, v)) in items.iter().enumerate().skip(i) {
            if !done[j] && other.len() > 1 && other[0] == *head {
                below.push((&other[1..], *v));
                done[j] = true;
            }
        }
        out.push('{');
        render_members(&below, out);
        out.push('}');
    }
}

/// Appends `text` to `out` as a JSON string, escaped as serde_json escapes it. Text with
/// nothing to escape (field names, most values) is copied in one piece.
pub fn push_json_str(out: &mut String, text: &str) {
    let b = text.as_bytes();
    out.reserve(text.len() + 2);
    out.push('"');
    let mut from = 0;
    let mut pos = 0;
    loop {
        // Eight bytes at a time to the next byte that needs escaping: `"`, `\` or a control.
        while let Some(w) = word(b, pos) {
            let stops = string_stops(w);
            if stops != 0 {
                pos += (stops.trailing_zeros() / 8) as usize;
                break;
            }
            pos += 8;
        }
        while b
            .get(pos)
            .is_some_and(|&c| c >= 0x20 && c != b'"' && c != b'\\')
        {
            pos += 1;
        }
        let Some(&c) = b.get(pos) else {
            break;
        };
        out.push_str(&text[from..pos]);
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        pos += 1;
        from = pos;
    }
    out.push_str(&text[from..]);
    out.push('"');
}

/// Whether a validated JSON array holds the string `needle`.
fn array_contains(raw: &str, needle: &str) -> bool {
    let b = raw.as_bytes();
    let mut pos = 1;
    let mut decoded = String::new();
    loop {
        pos = skip_ws(b, pos);
        match b.get(pos) {
            Some(b'"') => {
                let Ok((end, escaped)) = string_end(b, pos + 1) else {
                    return false;
                };
                let text = &raw[pos + 1..end - 1];
                let found = if !escaped {
                    text == needle
                } else {
                    decoded.clear();
                    decode(text, &mut decoded);
                    decoded == needle
                };
                if found {
                    return true;
                }
                pos = end;
            }
            Some(b']') => return false,
            _ => match skip_value(b, pos, 1) {
                Ok(end) => pos = end,
                Err(_) => return false,
            },
        }
        pos = skip_ws(b, pos);
        if b.get(pos) != Some(&b',') {
            return false;
        }
        pos += 1;
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero (exact for the lowest such byte; bytes above
/// it may be marked falsely, which is harmless since only the lowest is used).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// High bit set in each byte of `x` below `n` (`n` at most 0x80; exact for the lowest such
/// byte, like [`zero_bytes`]).
#[inline(always)]
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// Marks the bytes of a string's contents the scanner must stop at: `"`, `\`, controls.
/// `"` (0x22) xor 2 is 0x20 and the controls (below 0x20) stay below it, so one comparison
/// finds both.
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    bytes_below(w ^ (ONES * 0x02), 0x21) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

#[cold]
fn fail(kind: ScanErrorKind, offset: usize) -> ScanError {
    ScanError { kind, offset }
}

#[inline(always)]
fn skip_ws(b: &[u8], pos: usize) -> usize {
    // Shippers write JSON without white space between tokens: one comparison in the common
    // case (every JSON white space byte is at most a space, every token byte is above it).
    match b.get(pos) {
        Some(&c) if c > b' ' => pos,
        _ => skip_ws_run(b, pos),
    }
}

#[inline(never)]
fn skip_ws_run(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// Finds the end of a string whose contents start at `pos`, checking them; returns the
/// position after the closing quote and whether the string had escapes.
#[inline(always)]
fn string_end(b: &[u8], mut pos: usize) -> Result<(usize, bool), ScanError> {
    let mut escaped = false;
    loop {
        if let Some(w) = word(b, pos) {
            let stops = string_stops(w);
            if stops == 0 {
                pos += 8;
                continue;
            }
            let at = stops.trailing_zeros() / 8;
            pos += at as usize;
            // The closing quote, the common stop, read from the word already loaded.
            if (w >> (at * 8)) as u8 == b'"' {
                return Ok((pos + 1, escaped));
            }
        }
        match b.get(pos) {
            Some(b'"') => return Ok((pos + 1, escaped)),
            Some(b'\\') => {
                pos = escape(b, pos)?;
                escaped = true;
            }
            Some(&c) if c >= 0x20 => pos += 1,
            Some(_) => return Err(fail(ScanErrorKind::ControlCharacter, pos)),
            None => return Err(fail(ScanErrorKind::Syntax, pos)),
        }
    }
}

/// Checks the escape at `pos` (a backslash); returns the position after it.
fn escape(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    match b.get(pos + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(pos + 2),
        Some(b'u')
            if b.get(pos + 2..pos + 6)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
        {
            Ok(pos + 6)
        }
        _ => Err(fail(ScanErrorKind::BadEscape, pos)),
    }
}

#[inline(always)]
fn digits(b: &[u8], mut pos: usize) -> usize {
    while b.get(pos).is_some_and(u8::is_ascii_digit) {
        pos += 1;
    }
    pos
}

/// Checks a number starting at `pos`; returns the position after it and whether it is an
/// integer (no fraction, no exponent).
#[inline(always)]
fn number_end(b: &[u8], mut pos: usize) -> Result<(usize, bool), ScanError> {
    if b.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match b.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => pos = digits(b, pos + 1),
        _ => return Err(fail(ScanErrorKind::BadNumber, pos)),
    }
    match b.get(pos) {
        Some(b'.' | b'e' | b'E') => number_tail(b, pos).map(|end| (end, false)),
        _ => Ok((pos, true)),
    }
}

/// The fraction and exponent of a number, from `pos` (at `.`, `e` or `E`).
fn number_tail(b: &[u8], mut pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) == Some(&b'.') {
        if !b.get(pos + 1).is_some_and(u8::is_ascii_digit) {
            return Err(fail(ScanErrorKind::BadNumber, pos));
        }
        pos = digits(b, pos + 1);
    }
    if matches!(b.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(b.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        if !b.get(pos).is_some_and(u8::is_ascii_digit) {
            return Err(fail(ScanErrorKind::BadNumber, pos));
        }
        pos = digits(b, pos);
    }
    Ok(pos)
}

/// Checks `text` (`true`, `false` or `null`) at `pos`; returns the position after it.
#[inline(always)]
fn literal(b: &[u8], pos: usize, text: &[u8]) -> Result<usize, ScanError> {
    if b.get(pos..pos + text.len()) == Some(text) {
        Ok(pos + text.len())
    } else {
        Err(fail(ScanErrorKind::Syntax, pos))
    }
}

/// Skips one value of any kind at `pos`, checking its grammar; `depth` containers are open
/// around it. Strings and numbers, the common case, are handled inline.
#[inline(always)]
fn skip_value(b: &[u8], pos: usize, depth: u32) -> Result<usize, ScanError> {
    match b.get(pos) {
        Some(b'"') => string_end(b, pos + 1).map(|(end, _)| end),
        Some(b'-' | b'0'..=b'9') => number_end(b, pos).map(|(end, _)| end),
        _ => skip_nested(b, pos, depth),
    }
}

/// [`skip_value`] for any value, containers included, without recursion: open containers are
/// a stack of bits (1 object, 0 array).
fn skip_nested(b: &[u8], mut pos: usize, depth: u32) -> Result<usize, ScanError> {
    let mut stack: u128 = 0;
    let mut open: u32 = 0;
    loop {
        // A value.
        match b.get(pos) {
            Some(b'"') => pos = string_end(b, pos + 1)?.0,
            Some(b'-' | b'0'..=b'9') => pos = number_end(b, pos)?.0,
            Some(&c @ (b'{' | b'[')) => {
                if depth + open >= MAX_DEPTH {
                    return Err(fail(ScanErrorKind::TooDeep, pos));
                }
                pos = skip_ws(b, pos + 1);
                let object = c == b'{';
                let close = if object { b'}' } else { b']' };
                if b.get(pos) == Some(&close) {
                    pos += 1;
                } else {
                    open += 1;
                    stack = (stack << 1) | u128::from(object);
                    if object {
                        pos = member_key(b, pos)?;
                    }
                    continue;
                }
            }
            Some(b't') => pos = literal(b, pos, b"true")?,
            Some(b'f') => pos = literal(b, pos, b"false")?,
            Some(b'n') => pos = literal(b, pos, b"null")?,
            _ => return Err(fail(ScanErrorKind::Syntax, pos)),
        }
        // After a value: the next member or element, or closing brackets.
        loop {
            if open == 0 {
                return Ok(pos);
            }
            pos = skip_ws(b, pos);
            let in_object = stack & 1 == 1;
            match b.get(pos) {
                Some(b',') => {
                    pos = skip_ws(b, pos + 1);
                    if in_object {
                        pos = member_key(b, pos)?;
                    }
                    break;
                }
                Some(b'}') if in_object => {}
                Some(b']') if !in_object => {}
                _ => return Err(fail(ScanErrorKind::Syntax, pos)),
            }
            pos += 1;
            open -= 1;
            stack >>= 1;
        }
    }
}

/// In a skipped object, at a key: the key, the colon and the whitespace before the value.
#[inline(always)]
fn member_key(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) != Some(&b'"') {
        return Err(fail(ScanErrorKind::Syntax, pos));
    }
    let (pos, _) = string_end(b, pos + 1)?;
    colon(b, pos)
}

/// At the colon after a key (maybe after whitespace); returns the position of the value.
#[inline(always)]
fn colon(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    let pos = if b.get(pos) == Some(&b':') {
        pos + 1
    } else {
        let pos = skip_ws(b, pos);
        if b.get(pos) != Some(&b':') {
            return Err(fail(ScanErrorKind::Syntax, pos));
        }
        pos + 1
    };
    Ok(skip_ws(b, pos))
}

/// The parser state of one pass.
struct Parser<'a, 'x> {
    text: &'a str,
    schema: &'x Schema,
    slots: &'x mut [Slot],
    nodes: &'x mut [NodeSeen],
    scratch: &'x mut String,
    key: &'x mut String,
    superseded: &'x mut Vec<u32>,
    /// The second, exact pass: keys in `superseded` are skipped.
    exact: bool,
    flags: PassFlags,
}

/// An open object on a wanted path.
#[derive(Clone, Copy)]
struct Frame {
    node: u16,
    /// Its form (see [`rank_bit`]).
    rank: u16,
    /// The field the object itself is, or [`NONE`].
    field: u16,
    /// Offset of its `{`.
    start: u32,
    /// Table slots of the plain keys matched in it so far (bit `slot % 64`).
    matched: u64,
    /// A dotted or escaped key was matched in it.
    complex: bool,
    /// It had no member.
    empty: bool,
}

impl Frame {
    fn new(node: u16, rank: u16, field: u16, start: usize) -> Frame {
        Frame {
            node,
            rank,
            field,
            start: start as u32,
            matched: 0,
            complex: false,
            empty: true,
        }
    }
}

impl Parser<'_, '_> {
    /// Walks the event object from `pos` just after its `{`, descending into the objects on a
    /// wanted path and skipping everything else. Returns the position after its `}`.
    ///
    /// Iterative: the wanted objects currently open are a small stack (a wanted path has at
    /// most [`MAX_SEGMENTS`] segments, so no deeper stack is ever needed).
    fn walk(&mut self, mut pos: usize) -> Result<usize, ScanError> {
        let b = self.text.as_bytes();
        let schema = self.schema;
        let mut stack = [Frame::new(ROOT, 0, NONE, 0); MAX_SEGMENTS + 1];
        let mut open = 0;
        let mut frame = Frame::new(ROOT, 0, NONE, pos - 1);
        let mut table = &schema.nodes[usize::from(ROOT)];
        'objects: loop {
            // `pos` is just after an object's `{`.
            if self.exact {
                self.supersede(pos, open as u32 + 1)?;
            }
            pos = skip_ws(b, pos);
            let mut closed = b.get(pos) == Some(&b'}');
            if closed {
                pos += 1;
            }
            loop {
                if closed {
                    // `pos` is just after the object's `}`.
                    self.close(&frame, pos - 1);
                    if open == 0 {
                        return Ok(pos);
                    }
                    open -= 1;
                    frame = stack[open];
                    table = &schema.nodes[usize::from(frame.node)];
                } else {
                    // A member: its key, then its value.
                    if b.get(pos) != Some(&b'"') {
                        return Err(fail(ScanErrorKind::Syntax, pos));
                    }
                    frame.empty = false;
                    let key_at = pos;
                    let start = pos + 1;
                    let (after, escaped) = string_end(b, start)?;
                    pos = colon(b, after)?;
                    let depth = open as u32 + 1;
                    let target = match table.lookup(b, start, after - 1) {
                        Ok(None) if !escaped => None,
                        Ok(Some((target, slot))) if !escaped => {
                            let bit = 1u64 << (slot % 64);
                            self.flags.duplicates |= frame.matched & bit != 0;
                            frame.matched |= bit;
                            Some(target)
                        }
                        // Dotted or escaped: walk the segments.
                        _ => {
                            let target = self.resolve(frame.node, start, after - 1, escaped);
                            if target.is_some() {
                                self.flags.duplicates |= frame.complex;
                                frame.complex = true;
                            }
                            target
                        }
                    };
                    let target = match target {
                        Some(_) if self.exact && self.superseded.contains(&(key_at as u32)) => None,
                        t => t,
                    };
                    match target {
                        Some(t) if t.child != NONE && b.get(pos) == Some(&b'{') => {
                            if depth >= MAX_DEPTH {
                                return Err(fail(ScanErrorKind::TooDeep, pos));
                            }
                            let Some(slot) = stack.get_mut(open) else {
                                return Err(fail(ScanErrorKind::TooDeep, pos));
                            };
                            *slot = frame;
                            open += 1;
                            table = &schema.nodes[usize::from(t.child)];
                            frame = Frame::new(t.child, frame.rank | table.bit, t.field, pos);
                            pos += 1;
                            continue 'objects;
                        }
                        Some(t) => {
                            if t.child != NONE {
                                // Not an object where one belongs: nothing can go below it.
                                self.nodes[usize::from(t.child)].blocked = true;
                            }
                            pos = if t.field != NONE {
                                self.value(pos, t.field, frame.rank, depth)?
                            } else {
                                skip_value(b, pos, depth)?
                            };
                        }
                        None => pos = skip_value(b, pos, depth)?,
                    }
                }
                // After a member's value: the next member, or the end of the object.
                if b.get(pos) != Some(&b',') {
                    pos = skip_ws(b, pos);
                }
                match b.get(pos) {
                    Some(b',') => {
                        pos = skip_ws(b, pos + 1);
                        closed = false;
                    }
                    Some(b'}') => {
                        pos += 1;
                        closed = true;
                    }
                    _ => return Err(fail(ScanErrorKind::Syntax, pos)),
                }
            }
        }
    }

    /// Records a wanted object that just closed at `close` (its `}`).
    #[inline]
    fn close(&mut self, frame: &Frame, close: usize) {
        let seen = &mut self.nodes[usize::from(frame.node)];
        if !seen.present || frame.rank >= seen.rank {
            *seen = NodeSeen {
                present: true,
                empty: frame.empty,
                rank: frame.rank,
                close: close as u32,
                blocked: seen.blocked,
            };
        }
        if frame.field != NONE {
            self.record(
                frame.field,
                Kind::Object,
                frame.rank,
                frame.start as usize,
                close + 1,
            );
        }
    }

    /// Exact pass: notes the keys of the object starting at `pos` (after its `{`) that a later
    /// key of the same name replaces.
    #[cold]
    fn supersede(&mut self, pos: usize, depth: u32) -> Result<(), ScanError> {
        let b = self.text.as_bytes();
        let mut keys: Vec<(String, u32)> = Vec::new();
        let mut pos = skip_ws(b, pos);
        if b.get(pos) == Some(&b'}') {
            return Ok(());
        }
        loop {
            if b.get(pos) != Some(&b'"') {
                return Err(fail(ScanErrorKind::Syntax, pos));
            }
            let (after, escaped) = string_end(b, pos + 1)?;
            let raw = &self.text[pos + 1..after - 1];
            let mut name = String::new();
            if escaped {
                decode(raw, &mut name);
            } else {
                name.push_str(raw);
            }
            keys.push((name, pos as u32));
            pos = skip_ws(b, skip_value(b, colon(b, after)?, depth)?);
            match b.get(pos) {
                Some(b',') => pos = skip_ws(b, pos + 1),
                Some(b'}') => break,
                _ => return Err(fail(ScanErrorKind::Syntax, pos)),
            }
        }
        for (i, (name, at)) in keys.iter().enumerate() {
            if keys[i + 1..].iter().any(|(later, _)| later == name) {
                self.superseded.push(*at);
            }
        }
        Ok(())
    }

    /// Resolves a key with escapes or dots through the trie, from `node`. A group field met on
    /// the way (`rule` for `"rule.name"`) is the key's target.
    #[cold]
    fn resolve(&mut self, node: u16, start: usize, end: usize, escaped: bool) -> Option<Target> {
        let schema = self.schema;
        let (key, mut s, end) = if escaped {
            self.key.clear();
            decode(&self.text[start..end], self.key);
            (self.key.as_bytes(), 0, self.key.len())
        } else {
            (self.text.as_bytes(), start, end)
        };
        let mut node = node;
        loop {
            let e = key[s..end]
                .iter()
                .position(|&c| c == b'.')
                .map_or(end, |i| s + i);
            if e == s {
                return None;
            }
            let (target, _) = schema.nodes[usize::from(node)]
                .lookup(key, s, e)
                .ok()
                .flatten()?;
            if e == end || (target.group && target.child == NONE) {
                return Some(target);
            }
            if target.child == NONE {
                return None;
            }
            node = target.child;
            s = e + 1;
        }
    }

    /// The value at `pos` of wanted field `field`, read in form `rank`; returns the position
    /// after it.
    #[inline]
    fn value(&mut self, pos: usize, field: u16, rank: u16, depth: u32) -> Result<usize, ScanError> {
        let b = self.text.as_bytes();
        let (end, kind) = match b.get(pos) {
            Some(b'"') => {
                let (end, escaped) = string_end(b, pos + 1)?;
                self.record_string(field, rank, pos + 1, end - 1, escaped);
                return Ok(end);
            }
            Some(b'-' | b'0'..=b'9') => {
                let (end, int) = number_end(b, pos)?;
                self.record_number(field, rank, pos, end, int);
                return Ok(end);
            }
            Some(b't') => (literal(b, pos, b"true")?, Kind::True),
            Some(b'f') => (literal(b, pos, b"false")?, Kind::False),
            Some(b'n') => (literal(b, pos, b"null")?, Kind::Null),
            Some(b'[') => (skip_nested(b, pos, depth)?, Kind::Array),
            Some(b'{') => (skip_nested(b, pos, depth)?, Kind::Object),
            _ => return Err(fail(ScanErrorKind::Syntax, pos)),
        };
        self.record(field, kind, rank, pos, end);
        Ok(end)
    }

    /// The slot of `field` when a value in form `rank` takes it: when it is empty, or holds a
    /// value of a less preferred form (or of the same form: a repeated key, the later wins).
    #[inline]
    fn claim(&mut self, field: u16, rank: u16) -> Option<&mut Slot> {
        let slot = &mut self.slots[usize::from(field)];
        if slot.kind == Kind::Absent {
            return Some(slot);
        }
        if slot.rank != rank {
            self.flags.conflicting = true;
        }
        (rank >= slot.rank).then_some(slot)
    }

    #[inline]
    fn record(&mut self, field: u16, kind: Kind, rank: u16, start: usize, end: usize) {
        if let Some(slot) = self.claim(field, rank) {
            slot.kind = kind;
            slot.rank = rank;
            slot.start = start as u32;
            slot.end = end as u32;
            slot.ip.set(IpMemo::Unparsed);
        }
    }

    #[inline]
    fn record_string(&mut self, field: u16, rank: u16, start: usize, end: usize, escaped: bool) {
        if escaped {
            let from = self.scratch.len();
            decode(&self.text[start..end], self.scratch);
            let to = self.scratch.len();
            self.record(field, Kind::Decoded, rank, from, to);
        } else {
            self.record(field, Kind::Str, rank, start, end);
        }
    }

    #[inline]
    fn record_number(&mut self, field: u16, rank: u16, start: usize, end: usize, int: bool) {
        let text = &self.text.as_bytes()[start..end];
        if let Some(slot) = self.claim(field, rank) {
            slot.kind = Kind::Num;
            slot.rank = rank;
            slot.int = int;
            slot.start = start as u32;
            slot.end = end as u32;
            slot.num = parse_number(text, int);
        }
    }
}

/// The value of validated JSON number text (infinite when out of range, as `1e999` is).
fn parse_number(text: &[u8], int: bool) -> f64 {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if int && digits.len() <= 19 {
        let n = digits.iter().fold(0u64, |n, d| {
            n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        let n = n as f64;
        return if negative { -n } else { n };
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Appends the decoded contents of a validated JSON string (without quotes) to `out`. A `\u`
/// escape of a lone surrogate, which no Rust string can hold, becomes U+FFFD.
fn decode(raw: &str, out: &mut String) {
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest.as_bytes()[i + 1..];
        let (ch, used) = match esc.first() {
            Some(b'n') => ('\n', 2),
            Some(b't') => ('\t', 2),
            Some(b'r') => ('\r', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'u') => {
                let hi = hex4(&esc[1..]);
                let lo = (esc.get(5) == Some(&b'\\') && esc.get(6) == Some(&b'u'))
                    .then(|| hex4(&esc[7..]));
                match (hi, lo) {
                    (0xD800..=0xDBFF, Some(lo @ 0xDC00..=0xDFFF)) => {
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c).unwrap_or('\u{FFFD}'), 12)
                    }
                    _ => (char::from_u32(hi).unwrap_or('\u{FFFD}'), 6),
                }
            }
            // `"`, `\` and `/` stand for themselves.
            Some(&c) => (char::from(c), 2),
            None => break,
        };
        out.push(ch);
        rest = &rest[i + used..];
    }
    out.push_str(rest);
}

/// Four hex digits (validated by the scanner) as a number.
fn hex4(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .take(4)
        .fold(0, |n, &c| n * 16 + char::from(c).to_digit(16).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(paths: &[&str]) -> (Scanner, Vec<FieldId>) {
        let mut b = SchemaBuilder::new();
        let ids = paths.iter().map(|p| b.field(p)).collect();
        (Scanner::new(Arc::new(b.build().unwrap())), ids)
    }

    const PATHS: [&str; 6] = [
        "destination.geo.country_name",
        "destination.ip",
        "event.category",
        "source.bytes",
        "process.name",
        "a.very.long.segment_name_over_sixteen_bytes.x",
    ];

    #[test]
    fn nested_dotted_and_mixed_shapes_read_the_same() {
        let (mut s, f) = schema(&PATHS);
        for line in [
            r#"{"destination":{"geo":{"country_name":"Chile"},"ip":"1.2.3.4"},"source":{"bytes":12}}"#,
            r#"{"destination.geo.country_name":"Chile","destination.ip":"1.2.3.4","source.bytes":"12"}"#,
            r#"{"destination":{"geo.country_name":"Chile","ip":"1.2.3.4"},"source.bytes":12.0}"#,
            r#"{"destination.geo":{"country_name":"Chile"},"destin\u0061tion":{"ip":"1.2.3.4"},"source\u002ebytes":1.2e1}"#,
        ] {
            let e = s.scan(line).unwrap();
            assert_eq!(e.str(f[0]), Some("Chile"), "{line}");
            assert_eq!(e.str(f[1]), Some("1.2.3.4"), "{line}");
            assert_eq!(e.ip(f[1]), "1.2.3.4".parse().ok(), "{line}");
            assert_eq!(e.number(f[3]), Some(12.0), "{line}");
            assert!(!e.present(f[4]), "{line}");
        }
    }

    #[test]
    fn long_keys_and_keys_near_the_end_of_the_line() {
        let (mut s, f) = schema(&PATHS);
        let e = s
            .scan(r#"{"a":{"very":{"long":{"segment_name_over_sixteen_bytes":{"x":5}}}}}"#)
            .unwrap();
        assert_eq!(e.number(f[5]), Some(5.0));
        let e = s
            .scan(r#"{"a.very.long.segment_name_over_sixteen_bytez.x":5}"#)
            .unwrap();
        assert!(!e.present(f[5]));
        let (mut s, f) = schema(&["k", "kk"]);
        let e = s.scan(r#"{"kk":1,"k":2}"#).unwrap();
        assert_eq!((e.number(f[0]), e.number(f[1])), (Some(2.0), Some(1.0)));
    }

    #[test]
    fn arrays_escapes_nulls_and_unwanted_fields() {
        let (mut s, f) = schema(&PATHS);
        let line = r#"{"event":{"category":["network",3,{"a":[]},"w\u0065b"]},"x":{"y":[1,{"z":2}]},"process":{"name":"a\"b\u00e9\ud83d\ude00\ud800"},"destination":{"ip":null}}"#;
        let e = s.scan(line).unwrap();
        assert!(e.contains(f[2], "network"));
        assert!(e.contains(f[2], "web"));
        assert!(!e.contains(f[2], "process"));
        assert_eq!(e.str(f[4]), Some("a\"b\u{e9}\u{1F600}\u{FFFD}"));
        assert!(!e.present(f[1]));
        assert_eq!(e.ip(f[1]), None);
    }

    #[test]
    fn the_most_nested_form_wins_whatever_the_order() {
        let (mut s, f) = schema(&PATHS);
        for line in [
            r#"{"destination.ip":"1.1.1.1","destination":{"ip":"2.2.2.2"}}"#,
            r#"{"destination":{"ip":"2.2.2.2"},"destination.ip":"1.1.1.1"}"#,
        ] {
            let mut e = s.scan(line).unwrap();
            assert_eq!(e.str(f[1]), Some("2.2.2.2"), "{line}");
            assert!(e.conflicting(), "{line}");
            e.set(f[0], "Peru");
            assert_eq!(e.str(f[0]), Some("Peru"));
        }
        // Every form of a three-segment path, most preferred first.
        let forms = [
            r#""destination":{"geo":{"country_name":"A"}}"#,
            r#""destination":{"geo.country_name":"B"}"#,
            r#""destination.geo":{"country_name":"C"}"#,
            r#""destination.geo.country_name":"D""#,
        ];
        for first in 0..forms.len() {
            let mut members: Vec<&str> = forms[first..].to_vec();
            members.reverse();
            let line = format!("{{{}}}", members.join(","));
            let e = s.scan(&line).unwrap();
            let expected = ["A", "B", "C", "D"][first];
            assert_eq!(e.str(f[0]), Some(expected), "{line}");
        }
        let e = s.scan(r#"{"destination":{"ip":"2.2.2.2"}}"#).unwrap();
        assert!(!e.conflicting());
    }

    #[test]
    fn a_repeated_key_is_read_as_its_last_occurrence_with_all_below_it() {
        let (mut s, f) = schema(&PATHS);
        // The first `destination` object, country included, is replaced by the second.
        let line = r#"{"destination":{"ip":"8.8.8.8","geo":{"country_name":"United States"}},"destination":{"ip":"5.6.7.8"}}"#;
        let e = s.scan(line).unwrap();
        assert_eq!(e.str(f[1]), Some("5.6.7.8"));
        assert!(!e.present(f[0]));
        // A repeated leaf, and a repeated dotted key.
        let e = s.scan(r#"{"source":{"bytes":1,"bytes":2},"destination.ip":"1.1.1.1","destination.ip":"2.2.2.2"}"#).unwrap();
        assert_eq!(e.number(f[3]), Some(2.0));
        assert_eq!(e.str(f[1]), Some("2.2.2.2"));
        // A replaced nested form uncovers a dotted one that was there all along.
        let line = r#"{"destination.geo.country_name":"Chile","destination":{"geo":{"country_name":"Peru"}},"destination":{"ip":"1.1.1.1"}}"#;
        let e = s.scan(line).unwrap();
        assert_eq!(e.str(f[0]), Some("Chile"));
        // The same key escaped differently is the same key.
        let e = s
            .scan(r#"{"destination":{"ip":"1.1.1.1"},"destin\u0061tion":{"ip":"3.3.3.3"}}"#)
            .unwrap();
        assert_eq!(e.str(f[1]), Some("3.3.3.3"));
        // Agrees with serde_json, which keeps the last value of a repeated key.
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["destination"]["ip"], "1.1.1.1");
        assert!(v["destination"].get("geo").is_none());
    }

    #[test]
    fn arrays_where_an_object_belongs_are_skipped_and_block_writing() {
        let (mut s, f) = schema(&PATHS);
        let line = r#"{"destination":[{"ip":"1.2.3.4"},{"ip":"5.6.7.8"}],"source":{"bytes":3}}"#;
        let e = s.scan(line).unwrap();
        assert!(!e.present(f[1]));
        assert_eq!(e.writable(f[0]), Err(Collision::Blocked));
        assert_eq!(e.number(f[3]), Some(3.0));
    }

    fn writer_schema() -> (Scanner, Vec<FieldId>) {
        let mut b = SchemaBuilder::new();
        let ids = vec![
            b.field("destination.geo.country_name"),
            b.field("destination.geo.country_iso_code"),
            b.field("event.kind"),
            b.group("rule"),
            b.field("tags"),
            b.field("destination.ip"),
        ];
        (Scanner::new(Arc::new(b.build().unwrap())), ids)
    }

    fn write(s: &mut Scanner, line: &str, adds: &[Add<'_>]) -> (String, Vec<(FieldId, Collision)>) {
        let e = s.scan(line).unwrap();
        let mut out = String::new();
        let refused = e.write(adds, &mut out);
        serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
        (out, refused)
    }

    #[test]
    fn fields_are_inserted_into_the_preferred_object_and_nothing_is_replaced() {
        let (mut s, f) = writer_schema();
        let adds = [
            Add::Field(f[0], r#""Iran""#),
            Add::Field(f[1], r#""IR""#),
            Add::Field(f[2], r#""alert""#),
            Add::Field(f[3], r#"{"id":"x"}"#),
            Add::Append(f[4], r#""ml""#),
        ];
        let (out, refused) = write(
            &mut s,
            r#"{"destination":{"ip":"5.6.7.8"},"event":{"kind":"event"},"tags":["zeek"]}"#,
            &adds,
        );
        assert_eq!(
            out,
            r#"{"destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran","country_iso_code":"IR"}},"event":{"kind":"event"},"tags":["zeek","ml"],"rule":{"id":"x"}}"#
        );
        assert_eq!(refused, vec![(f[2], Collision::Exists)]);
        // Dotted events: the root receives nested objects; existing dotted keys count.
        let (out, refused) = write(
            &mut s,
            r#"{"destination.ip":"5.6.7.8","event.kind":"event","rule.name":"pan","tags":[]}"#,
            &adds,
        );
        assert_eq!(
            out,
            r#"{"destination.ip":"5.6.7.8","event.kind":"event","rule.name":"pan","tags":["ml"],"destination":{"geo":{"country_name":"Iran","country_iso_code":"IR"}}}"#
        );
        assert_eq!(
            refused,
            vec![(f[2], Collision::Exists), (f[3], Collision::Exists)]
        );
        // Into the nested form when both exist, next to the address that was read.
        let (out, _) = write(
            &mut s,
            r#"{"destination.ip":"1.1.1.1","destination":{"ip":"5.6.7.8"}, "x" : { } }"#,
            &adds[..1],
        );
        assert_eq!(
            out,
            r#"{"destination.ip":"1.1.1.1","destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran"}}, "x" : { } }"#
        );
        // Empty objects take no comma; blocked and present-but-null paths are refused.
        let (out, _) = write(&mut s, r#"{ }"#, &adds[2..3]);
        assert_eq!(out, r#"{ "event":{"kind":"alert"}}"#);
        let (_, refused) = write(
            &mut s,
            r#"{"destination":{"geo":"x"},"tags":"zeek"}"#,
            &adds,
        );
        assert!(refused.contains(&(f[0], Collision::Blocked)));
        assert!(refused.contains(&(f[4], Collision::Exists)));
        let (_, refused) = write(
            &mut s,
            r#"{"destination":{"geo":{"country_name":null}}}"#,
            &adds[..1],
        );
        assert_eq!(refused, vec![(f[0], Collision::Exists)]);
        // The replaced occurrence of a repeated key receives nothing.
        let (out, _) = write(
            &mut s,
            r#"{"destination":{"ip":"8.8.8.8"},"destination":{"ip":"5.6.7.8"}}"#,
            &adds[..1],
        );
        assert_eq!(
            out,
            r#"{"destination":{"ip":"8.8.8.8"},"destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran"}}}"#
        );
    }

    #[test]
    fn whatever_is_accepted_can_be_written() {
        let (mut s, f) = writer_schema();
        for line in [
            r#"{"destination":{"ip":"5.6.7.8","as":{"name":"\ud800"}},"n":1e999}"#,
            &format!(
                r#"{{"big":{},"destination.ip":"5.6.7.8"}}"#,
                "9".repeat(400)
            ),
            &format!(r#"{{"deep":{}1{}}}"#, "[".repeat(125), "]".repeat(125)),
        ] {
            let e = s.scan(line).unwrap();
            let mut out = String::new();
            let refused = e.write(&[Add::Field(f[0], r#""Iran""#)], &mut out);
            assert!(refused.is_empty(), "{line}");
            assert!(out.len() > line.len());
            assert!(s.scan(&out).is_ok(), "{out}");
        }
    }

    #[test]
    fn numbers_and_key_text() {
        let (mut s, f) = schema(&["n"]);
        for (text, number, key) in [
            ("443", Some(443.0), Some("443")),
            ("-0", Some(0.0), Some("-0")),
            ("443.0", Some(443.0), Some("443")),
            ("1.5e3", Some(1500.0), Some("1500")),
            ("0.25", Some(0.25), Some("0.25")),
            (
                "18446744073709551616",
                Some(18446744073709551616.0),
                Some("18446744073709551616"),
            ),
            ("1e999", None, None),
            ("\" 77 \"", Some(77.0), Some(" 77 ")),
            ("\"NaN\"", None, Some("NaN")),
            ("true", None, None),
        ] {
            let line = format!("{{\"n\":{text}}}");
            let e = s.scan(&line).unwrap();
            assert_eq!(e.number(f[0]), number, "{text}");
            assert_eq!(e.key_text(f[0]).as_deref(), key, "{text}");
        }
    }

    #[test]
    fn only_single_json_objects_are_accepted() {
        let (mut s, _) = schema(&PATHS);
        for bad in [
            "[1,2]",
            "\"text\"",
            "",
            "   ",
            "{\"a\":1",
            "{\"a\":1} trailing",
            "{\"a\":1}{}",
            "{\"a\":[1,}",
            "{\"a\":[1 2]}",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":.5}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":\"x\ty\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"unterminated}",
            "{\"destination\":{\"ip\":\"1\",}}",
            "{\"destination\":{\"ip\" \"1\"}}",
            "{\"destination\":[}",
            "{\"a\":{\"b\":1]}",
            "{\"a\":[1}",
            "\u{feff}{}",
            "{'a':1}",
        ] {
            assert!(s.scan(bad).is_err(), "{bad:?}");
        }
        for good in [
            "{}",
            " \t{ } \r",
            "{\"a\" : {\"b\": [true, null, false, -0.5e+3, \"\\u00e9\\/\"]}}",
            "{\"destination\":{}}",
            "{\"destination\":[{\"ip\":1}],\"event\":{\"category\":[]}}",
            "{\"\":1,\"destination.\":2,\".ip\":3,\"destination..ip\":4}",
        ] {
            assert!(s.scan(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn nesting_is_limited_like_serde_json() {
        let (mut s, _) = schema(&PATHS);
        for depth in [2, 126, 127, 128, 129, 400] {
            let line = format!(
                "{{\"x\":{}1{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            let ours = s.scan(&line).is_ok();
            let serde = serde_json::from_str::<serde_json::Value>(&line).is_ok();
            assert_eq!(ours, serde, "depth {depth}");
            assert_eq!(ours, depth <= MAX_DEPTH as usize, "depth {depth}");
        }
        // Through wanted objects as well: the event, `destination`, then arrays.
        for (arrays, ok) in [(125, true), (126, false)] {
            let line = format!(
                "{{\"destination\":{{\"geo\":{}1{}}}}}",
                "[".repeat(arrays),
                "]".repeat(arrays)
            );
            assert_eq!(s.scan(&line).is_ok(), ok, "{arrays}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        let (mut s, _) = schema(&PATHS);
        let samples = [
            r#"{"destination":{"ip":"1.2.3.4","geo":{"country_name":"X"}},"tags":["a"]}"#,
            r#"{"a":"\u0000"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":12345678901234567890123}"#,
            r#"{"a":1E+2,"b":-0,"c":0.0e-0}"#,
            r#"{"a":[[],{},[{}],""]}"#,
            r#"{"a":"\/\b\f\n\r\t\"\\"}"#,
            "{\"a\":\"\u{7f}\u{80}\u{10ffff}\"}",
            r#"{"a" :1 , "b":2 }"#,
            r#"{"a":1 ,}"#,
            r#"{"a":+1}"#,
            r#"{"a":1.5E}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":truex}"#,
            r#"{"a":"ab"c}"#,
        ];
        for line in samples {
            let ours = s.scan(line).is_ok();
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
            assert_eq!(ours, serde, "{line}");
        }
    }

    #[test]
    fn invalid_paths_are_refused() {
        for bad in ["", "a..b", ".a", "a."] {
            let mut b = SchemaBuilder::new();
            b.field(bad);
            assert_eq!(b.build().unwrap_err(), SchemaError::InvalidPath(bad.into()));
        }
        let mut b = SchemaBuilder::new();
        b.field(&["x"; MAX_SEGMENTS + 1].join("."));
        assert!(matches!(b.build(), Err(SchemaError::TooDeep(_))));
    }

    #[test]
    fn a_field_that_is_also_a_prefix() {
        let (mut s, f) = schema(&["rule", "rule.name"]);
        let e = s.scan(r#"{"rule":{"name":"pan"}}"#).unwrap();
        assert!(e.present(f[0]));
        assert_eq!(e.str(f[1]), Some("pan"));
        let e = s.scan(r#"{"rule":"x","rule.name":"y"}"#).unwrap();
        assert!(e.present(f[0]));
        assert_eq!(e.str(f[1]), Some("y"));
        // A group is present through any key below it.
        let mut b = SchemaBuilder::new();
        let rule = b.group("rule");
        let mut s = Scanner::new(Arc::new(b.build().unwrap()));
        for line in [
            r#"{"rule":{}}"#,
            r#"{"rule.name":"y"}"#,
            r#"{"rule.a.b":null}"#,
        ] {
            let e = s.scan(line).unwrap();
            assert_eq!(e.writable(rule), Err(Collision::Exists), "{line}");
        }
        let e = s.scan(r#"{"rules":1,"x":{"rule":1}}"#).unwrap();
        assert_eq!(e.writable(rule), Ok(()));
    }
}
