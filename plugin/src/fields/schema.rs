//! The wanted paths as a trie of per-level key tables ([`SchemaBuilder`] -> [`Schema`]), and
//! the key hashing the scan matches keys with.

use super::grammar::{zero_bytes, ONES};
use super::{FieldId, SchemaError, MAX_SEGMENTS};

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

    /// The id of `path` as a *group*: it exists ([`Event::writable`] answers `Exists`) when
    /// the path or anything below it is there (`rule` for `{"rule":{..}}`, `{"rule":"x"}` and
    /// `{"rule.name":"x"}` alike, whether or not `rule.name` is a wanted field too). Its value
    /// is the one written at the path itself, read as any field's (the most nested form
    /// first); a group with nothing at its path but keys below it (`{"rule.name":"x"}`,
    /// `{"x":{"rule.q":null}}` for `x.rule`) is present with no text ([`Event::raw`] is
    /// `None`): in the dotted reading its object exists, but it is written nowhere in the
    /// line. A field asked for with [`SchemaBuilder::field`] on the same path is the same
    /// field, read the same way.
    ///
    /// [`Event::writable`]: super::Event::writable
    /// [`Event::raw`]: super::Event::raw
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
        let mut nodes: Vec<Node> = trie.iter().map(Node::build).collect();
        for node in &trie {
            for (_, entry) in &node.keys {
                if let Some(child) = entry.child {
                    nodes[child].field = narrow(entry.field);
                }
            }
        }
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
pub(super) struct Chain {
    pub(super) segments: Vec<Box<str>>,
    pub(super) nodes: Vec<u16>,
}

/// A trie node or field index as a `u16` ([`NONE`] past it: `build` refuses that many).
fn narrow(i: Option<usize>) -> u16 {
    i.map_or(NONE, |i| u16::try_from(i).unwrap_or(NONE))
}

/// "No field" / "no child node" in a [`Target`].
pub(super) const NONE: u16 = u16::MAX;

/// Where a key leads: a field ending there, a node below it, or both.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    /// Field ending here, or [`NONE`].
    pub(super) field: u16,
    /// Node the key leads to, or [`NONE`].
    pub(super) child: u16,
    /// The field is a group: a dotted key passing through it makes it present.
    pub(super) group: bool,
}

/// One key segment of a node's table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// First eight bytes of the key; a shorter key's bytes, last first, zero-padded
    /// ([`key_words`]).
    a: u64,
    /// Last eight bytes of the key when it is longer than eight, else 0.
    b: u64,
    /// Key length; [`VACANT`] marks an empty slot.
    len: u32,
    /// Index in [`Node::long_keys`] for keys over sixteen bytes.
    long: u32,
    pub(super) target: Target,
    /// The entry's bit in an object's mask of the keys matched in it (bit `slot % 64`), kept
    /// as the mask itself: no shift per matched key.
    pub(super) bit: u64,
}

/// Where a key that leads nowhere leads.
pub(super) const MISS: Target = Target {
    field: NONE,
    child: NONE,
    group: false,
};

/// The length of an empty slot's key: no key a scan looks up is as long (a line of 4 GiB or
/// more is refused, and a key is shorter than its line). A wanted segment that long, which
/// would take a 4 GiB path, would be clamped to it and look like an empty slot.
const VACANT: u32 = u32::MAX;

const EMPTY: Entry = Entry {
    a: 0,
    b: 0,
    len: VACANT,
    long: 0,
    bit: 0,
    target: MISS,
};

/// One nesting level: the key segments that lead on from it, in an open-addressed table.
#[derive(Debug)]
pub(super) struct Node {
    /// The weight of this level's break in a value's rank (see [`rank_bit`]).
    pub(super) bit: u16,
    /// The field whose path leads to this node (an object there is that field), or [`NONE`].
    pub(super) field: u16,
    /// Whether a dotted key can lead anywhere from here: some key of this level leads to a
    /// node below it or is a group field (what `Parser::resolve` needs of a key's first
    /// segment). At a level without one, a key that is not in the table is not looked at for
    /// dots: whatever it holds, it leads nowhere.
    pub(super) dotted: bool,
    /// A power of two in size (at least eight).
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
            let mut slot = hash(a, b) & mask;
            while entries[slot].len != VACANT {
                slot = (slot + 1) & mask;
            }
            entries[slot] = Entry {
                a,
                b,
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                long,
                bit: 1 << (slot % 64),
                target: Target {
                    field: narrow(entry.field),
                    child: narrow(entry.child),
                    group: entry.group,
                },
            };
        }
        Node {
            bit: rank_bit(node.depth),
            field: NONE,
            dotted: node
                .keys
                .iter()
                .any(|(_, entry)| entry.child.is_some() || entry.group),
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

    /// [`Node::find`] for a key over sixteen bytes that met an entry with its words and length
    /// but other bytes between them (`http_request_2xx_count` for `http_request_5xx_count`):
    /// the probe is gone through again, each such entry compared in full, so that the key's
    /// own entry further along the chain is found. Given only the key and out of line (the
    /// probe in [`Node::find`] with the search continued in place measured 56 to 126
    /// instructions per event worse: the walk's registers come out differently).
    #[cold]
    #[inline(never)]
    fn find_long(&self, key: &[u8]) -> Option<&Entry> {
        let (a, b) = key_words(key, 0, key.len());
        let mask = self.entries.len().wrapping_sub(1);
        let mut slot = hash(a, b) & mask;
        loop {
            let entry = self.entries.get(slot)?;
            if entry.a == a
                && entry.b == b
                && entry.len as usize == key.len()
                && self.long_is(entry.long, key)
            {
                return Some(entry);
            }
            if entry.len == VACANT {
                return None;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Looks `key[s..e]` up among this node's segments: its entry, or `None` when the key is
    /// not one of them (it may still be a dotted path through them: [`has_dot`]).
    ///
    /// An entry reference (one register) rather than a target and a slot: the scan reads only
    /// the entry's fields it needs, where unpacking a returned target cost some ten
    /// instructions per key.
    #[inline(always)]
    pub(super) fn find(&self, key: &[u8], s: usize, e: usize) -> Option<&Entry> {
        let len = e - s;
        let (a, b) = key_words(key, s, e);
        // The mask from the table's length rather than a field of its own: LLVM then knows
        // that a masked slot is within the table, and drops the bounds check (and the load).
        let mask = self.entries.len().wrapping_sub(1);
        let mut slot = hash(a, b) & mask;
        loop {
            let entry = self.entries.get(slot)?;
            // The length compared in 32 bits (no widening of `entry.len`): a key is shorter
            // than its line, and a line of 4 GiB or more is refused before it is scanned. (Were
            // it cut, a key over sixteen bytes is still compared in full: no wrong match.)
            // The match first, the empty slot after it: a found key takes no test for an empty
            // slot, which no key matches (no key is [`VACANT`] bytes long). A key over sixteen
            // bytes is then compared in full; when it is not this entry's key, its own may lie
            // further along ([`Node::find_long`]).
            if entry.a == a && entry.b == b && entry.len == len as u32 {
                return if len <= 16 || self.long_is(entry.long, &key[s..e]) {
                    Some(entry)
                } else {
                    self.find_long(&key[s..e])
                };
            }
            if entry.len == VACANT {
                return None;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The target of `key[s..e]` among this node's segments.
    #[inline]
    pub(super) fn target(&self, key: &[u8], s: usize, e: usize) -> Option<Target> {
        self.find(key, s, e).map(|entry| entry.target)
    }
}

/// Whether `key[s..e]` has a dot (so may be a path of segments).
#[inline(always)]
pub(super) fn has_dot(key: &[u8], s: usize, e: usize) -> bool {
    if e - s > 16 {
        return key[s..e].contains(&b'.');
    }
    // The two words cover keys up to sixteen bytes (and are zero outside the key).
    let (a, b) = key_words(key, s, e);
    let dots = ONES * u64::from(b'.');
    (zero_bytes(a ^ dots) | zero_bytes(b ^ dots)) != 0
}

/// The wanted paths as per-level key tables; shared by every [`Scanner`](super::Scanner) of a
/// detector.
#[derive(Debug)]
pub struct Schema {
    paths: Vec<String>,
    /// Per path: whether it is a group ([`SchemaBuilder::group`]).
    groups: Vec<bool>,
    pub(super) nodes: Vec<Node>,
    pub(super) chains: Vec<Chain>,
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
pub(super) const ROOT: u16 = 0;

/// The weight, in a value's rank, of an object break after `depth` segments: earlier breaks
/// weigh more, so that comparing ranks prefers the most nested form (a single-segment key at
/// each level before a dotted one). The root (depth 0) has no break.
fn rank_bit(depth: usize) -> u16 {
    match depth {
        0 => 0,
        d => 1 << (MAX_SEGMENTS - d.min(MAX_SEGMENTS)),
    }
}

/// A key's hash, from its two words ([`key_words`]): `a ^ b`, multiplied. Neither the length
/// nor a rotation of one word is mixed in (two instructions a key less), so keys with equal or
/// swapped words collide, and so do keys of different lengths with the same words (a 9 to 16
/// byte key's words overlap; a short key's zero padding can be spelled `\u0000`, before the
/// key since its word has the key's last byte lowest). A collision
/// costs a probe, never a wrong match or a miss: [`Node::find`] compares both words and the
/// length, and a key over sixteen bytes in full, probing on past another key with its words.
#[inline(always)]
fn hash(a: u64, b: u64) -> usize {
    ((a ^ b).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
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

/// The words a key is hashed and compared by. A key of eight bytes or more: its first eight
/// bytes and, when longer than eight, its last eight (else 0). A shorter key: its bytes in
/// reverse order, zero-padded, and 0 ([`short_word`]). The key is `bytes[s..e]`, with
/// `s <= e <= bytes.len()`.
///
/// A short key's word is the eight bytes that end where the key ends, byte-swapped: `e >= 8`
/// is tested (a key in the buffer's first eight bytes takes [`padded_words`]), and the test
/// `e <= bytes.len()` folds into the caller's, which found the key's closing quote in the
/// line. Read from where the key starts, the word took two comparisons with the line's length
/// (eight bytes may not follow a short key).
#[inline(always)]
pub(super) fn key_words(bytes: &[u8], s: usize, e: usize) -> (u64, u64) {
    let len = e - s;
    if len >= 8 {
        if let Some(key) = bytes.get(s..e) {
            // Both words lie within a key of eight bytes or more: once the key is in `bytes`,
            // no further bounds check (where a word read from `bytes` took two for each word).
            if let (Some(a), Some(b)) = (key.first_chunk::<8>(), key.last_chunk::<8>()) {
                let b = if len > 8 { u64::from_le_bytes(*b) } else { 0 };
                return (u64::from_le_bytes(*a), b);
            }
        }
    } else if let Some(w) = bytes.get(..e).and_then(<[u8]>::last_chunk::<8>) {
        return (short_word(u64::from_le_bytes(*w), len), 0);
    }
    padded_words(&bytes[s..e])
}

/// The word of a key of `len` bytes (under eight) from `last`, the eight bytes (little-endian)
/// that end where the key ends: the key's bytes, last first, and zeros above them.
#[inline(always)]
fn short_word(last: u64, len: usize) -> u64 {
    last.swap_bytes() & LOW_BYTES[len]
}

/// [`key_words`] for a key shorter than eight bytes that ends within the first eight bytes of
/// its buffer (a longer key holds its words itself): the key is copied to the end of eight
/// zero bytes, which stand for the bytes before it.
#[cold]
fn padded_words(key: &[u8]) -> (u64, u64) {
    let mut pad = [0u8; 8];
    pad[8 - key.len()..].copy_from_slice(key);
    (short_word(u64::from_le_bytes(pad), key.len()), 0)
}
