//! The scan itself: one iterative walk of an event object that descends into the objects on a
//! wanted path, records wanted values in their slots and skips everything else.

use std::mem::MaybeUninit;

use super::grammar::{
    after_member, colon, colon_peek, fail, literal, number_end, peek, skip_array, skip_nested,
    skip_value, skip_value_at, skip_ws, string_end_checked, Indexed, Strings,
};
use super::schema::{has_dot, Schema, Target, MISS, NONE, ROOT};
use super::slot::{IpMemo, Kind, NodeSeen, Slot};
use super::{ScanError, ScanErrorKind, MAX_DEPTH, MAX_SEGMENTS};

/// What one pass noticed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PassFlags {
    /// A wanted key occurs twice in one object.
    pub(super) duplicates: bool,
    /// A field was read in two different forms (dotted and nested).
    pub(super) conflicting: bool,
}

/// The parser state of one pass.
pub(super) struct Parser<'a, 'x> {
    pub(super) text: &'a str,
    pub(super) schema: &'x Schema,
    pub(super) slots: &'x mut [Slot],
    pub(super) nodes: &'x mut [NodeSeen],
    pub(super) scratch: &'x mut String,
    pub(super) key: &'x mut String,
    /// Offsets of the keys a later key of the same name replaces ([`superseded_keys`]), in
    /// order, which are skipped: empty but in the second, exact pass.
    pub(super) superseded: &'x [u32],
    /// Where the line's strings end; in the exact pass, also the first byte of each key in
    /// `superseded`.
    pub(super) strings: Indexed<'x>,
    pub(super) flags: PassFlags,
}

// The stack of open wanted objects holds `MAX_SEGMENTS + 1` frames (the event and an object
// per segment of the longest path): an object that fits in it is within `MAX_DEPTH` levels,
// so the walk does not test the depth when it descends. It is more than enough: the current
// frame is not on it, and each descent goes at least one trie level down (a dotted key goes
// several) from a node with a child, so at most `MAX_SEGMENTS - 1` slots are used and its end
// is never reached (the walk still returns `TooDeep` there rather than panic).
const _: () = assert!(MAX_SEGMENTS + 1 < MAX_DEPTH as usize);

/// An open object on a wanted path: two words, saved and restored whole when a wanted object
/// opens or closes. (The field the object is, [`Node::field`](super::schema::Node), and
/// whether it had a member, read from the line when an alert is written into it, are not kept
/// here: with them a frame took three words, each saved, restored and kept up to date.)
#[derive(Clone, Copy)]
struct Frame {
    /// Table slots of the plain keys matched in it so far (bit `slot % 64`); every bit once a
    /// dotted or escaped key was matched in it, since such a key may spell any other.
    matched: u64,
    node: u16,
    /// Its form (see [`rank_bit`]).
    rank: u16,
    /// Offset of its `{`.
    start: u32,
}

impl Frame {
    fn new(node: u16, rank: u16, start: usize) -> Frame {
        Frame {
            matched: 0,
            node,
            rank,
            start: start as u32,
        }
    }
}

impl Parser<'_, '_> {
    /// Walks the event object from `pos` just after its `{`, descending into the objects on a
    /// wanted path and skipping everything else. Returns the position after its `}`.
    ///
    /// Iterative: the wanted objects currently open are a small stack (a wanted path has at
    /// most [`MAX_SEGMENTS`] segments, so no deeper stack is ever needed).
    ///
    /// `#[inline]`: its one caller, [`Scanner::pass`](super::Scanner), is in another module,
    /// so another codegen unit, and thin LTO does not import a function this large across
    /// units. Out of line, every access to the parser's fields is a load or store through
    /// `self`; inlined where the [`Parser`] is built, its fields become locals in registers:
    /// 368 instructions per event less (callgrind, README's benchmarks).
    #[inline]
    pub(super) fn walk(&mut self, mut pos: usize) -> Result<usize, ScanError> {
        let b = self.text.as_bytes();
        let schema = self.schema;
        // Left uninitialised: zeroing it was a `memset` call per event (some 40 instructions),
        // and a frame is only read back after it was written (see the `assume_init` below).
        let mut stack = [MaybeUninit::<Frame>::uninit(); MAX_SEGMENTS + 1];
        let mut open = 0;
        let mut frame = Frame::new(ROOT, 0, pos - 1);
        let mut table = &schema.nodes[usize::from(ROOT)];
        'objects: loop {
            // `pos` is just after an object's `{`.
            // While `closed` is false, `pos` is at a key's opening quote: each place that
            // reads the byte checks it there (just below, and `after_member`), so that no byte
            // is carried round the loop. A new way into the member branch must check it too.
            let (at, c) = peek(b, pos);
            pos = at;
            let mut closed = c == b'}';
            if closed {
                pos += 1;
            } else if c != b'"' {
                return Err(fail(ScanErrorKind::Syntax, pos));
            }
            loop {
                if closed {
                    // `pos` is just after the object's `}`.
                    self.close(&frame, table.field, pos - 1);
                    if open == 0 {
                        return Ok(pos);
                    }
                    open -= 1;
                    // SAFETY: slots `0..open` hold frames. `open` is local to this walk and
                    // starts at 0; it grows only in the descent below, right after that writes
                    // `stack[open]`, and shrinks only here, one at a time, so the slot read is
                    // one the descent wrote. (`Frame` is `Copy`: reading it consumes nothing.)
                    frame = unsafe { stack[open].assume_init() };
                    table = &schema.nodes[usize::from(frame.node)];
                } else {
                    // A member: its key, then its value.
                    let start = pos + 1;
                    // A key that leads nowhere is [`MISS`], not `None`: wanted or not, a
                    // member takes the same two tests below, where an `Option` cost a test
                    // of its own and the target's fields moved between registers.
                    let v;
                    let target = match self.strings.plain_end(b, start) {
                        // A key without escapes (nearly all): looked up as it is.
                        Some(after) => {
                            (pos, v) = colon_peek(b, after)?;
                            match table.find(b, start, after - 1) {
                                Some(entry) => {
                                    let bit = entry.bit;
                                    // A plain key repeated, or one that an escaped or dotted
                                    // key of this object may spell the same: the exact pass
                                    // decides.
                                    if frame.matched & bit != 0 {
                                        self.flags.duplicates = true;
                                    }
                                    frame.matched |= bit;
                                    entry.target
                                }
                                None if !table.dotted || !has_dot(b, start, after - 1) => MISS,
                                None => self.complex_key(
                                    &mut frame.matched,
                                    frame.node,
                                    start,
                                    after,
                                    false,
                                ),
                            }
                        }
                        // Escaped (or bad), or replaced by a later key: checked, then skipped
                        // when replaced (`complex_key`), else decoded and walked.
                        //
                        // Only these come here. The index marks every `"`, `\` and control
                        // byte, so a valid key without escapes stops first at its closing
                        // quote. Any other key that came here would still resolve right, only
                        // costing an exact pass.
                        //
                        // In the exact pass, a replaced key's first byte is marked too
                        // (`Scanner::run`), so it comes here, and the test for it stays off
                        // the path of the keys that are not replaced.
                        //
                        // An empty key cannot be marked (its first byte is its closing quote)
                        // and needs no test: it leads nowhere.
                        None => {
                            let (after, escaped) = string_end_checked(b, start)?;
                            (pos, v) = colon_peek(b, after)?;
                            self.complex_key(&mut frame.matched, frame.node, start, after, escaped)
                        }
                    };
                    if target.child != NONE {
                        if v == b'{' {
                            // Within the stack, so within `MAX_DEPTH` (asserted above `Frame`).
                            let Some(slot) = stack.get_mut(open) else {
                                return Err(fail(ScanErrorKind::TooDeep, pos));
                            };
                            slot.write(frame);
                            open += 1;
                            table = &schema.nodes[usize::from(target.child)];
                            frame = Frame::new(target.child, frame.rank | table.bit, pos);
                            pos += 1;
                            continue 'objects;
                        }
                        // Not an object where one belongs: nothing can go below it.
                        self.nodes[usize::from(target.child)].blocked = true;
                    }
                    // The value is `open + 1` levels down (computed here, where it is used: not
                    // kept for the whole member).
                    pos = if target.field != NONE {
                        self.value(b, pos, v, target.field, frame.rank, open as u32 + 1)?
                    } else {
                        skip_value_at(b, self.strings, pos, v, open as u32 + 1)?
                    };
                }
                // After a member's value: the next member, or the end of the object.
                (pos, closed) = after_member(b, pos)?;
            }
        }
    }

    /// Records a wanted object that just closed at `close` (its `}`); `field` is the field the
    /// object itself is, or [`NONE`].
    #[inline]
    fn close(&mut self, frame: &Frame, field: u16, close: usize) {
        let seen = &mut self.nodes[usize::from(frame.node)];
        if !seen.present || frame.rank >= seen.rank {
            *seen = NodeSeen {
                present: true,
                rank: frame.rank,
                close: close as u32,
                blocked: seen.blocked,
            };
        }
        if field != NONE {
            self.record(
                field,
                Kind::Object,
                frame.rank,
                frame.start as usize,
                close + 1,
            );
        }
    }

    /// The target of a key with dots or escapes (`start..after`: its contents and closing
    /// quote), in the object whose mask of matched keys is `matched`, or [`MISS`] when a later
    /// key replaces it. On a match, flags a possible repeat and marks every key of the object
    /// as matched (see `Frame::matched`).
    #[cold]
    #[inline(never)]
    fn complex_key(
        &mut self,
        matched: &mut u64,
        node: u16,
        start: usize,
        after: usize,
        escaped: bool,
    ) -> Target {
        // Replaced by a later key (exact pass; only keys that leave the plain-key path can
        // be): skipped. Tested here, out of the walk: a binary search inlined there cost the
        // plain keys' path 36 instructions an event (its registers came out differently).
        if self.superseded.binary_search(&(start as u32 - 1)).is_ok() {
            return MISS;
        }
        match self.resolve(node, start, after - 1, escaped) {
            Some(target) => {
                // `destin\u0061tion` after `destination` is the same key.
                self.flags.duplicates |= *matched != 0;
                *matched = u64::MAX;
                target
            }
            None => MISS,
        }
    }

    /// Resolves a key with escapes or dots through the trie, from `node`: its target, or
    /// `None`. Every group field the key passes on the way down (`rule` for `"rule.name"`,
    /// `"rule.zzz"` or `"rule..x"`) is present through it ([`imply`]), whatever follows and
    /// whether or not the rest leads anywhere.
    ///
    /// The exact pass does not resolve a replaced key (`complex_key` returns [`MISS`] for it
    /// first): the key that replaces it has the same name in the same object, so it implies
    /// the same groups.
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
            let target = schema.nodes[usize::from(node)].target(key, s, e)?;
            if e == end {
                return Some(target);
            }
            if target.group {
                imply(self.slots, target.field);
            }
            if target.child == NONE {
                return None;
            }
            node = target.child;
            s = e + 1;
        }
    }

    /// The value at `pos` of wanted field `field`, read in form `rank`; returns the position
    /// after it. `b` is the line (`self.text`), passed in: read from `self`, the walk kept a
    /// second copy of it on the stack and loaded it again for each value.
    #[inline]
    fn value(
        &mut self,
        b: &[u8],
        pos: usize,
        c: u8,
        field: u16,
        rank: u16,
        depth: u32,
    ) -> Result<usize, ScanError> {
        let (end, kind) = match c {
            b'"' => {
                let (end, escaped) = self.strings.end(b, pos + 1)?;
                self.record_string(field, rank, pos + 1, end - 1, escaped);
                return Ok(end);
            }
            b'-' | b'0'..=b'9' => {
                let (end, int) = number_end(b, pos)?;
                self.record_number(&b[pos..end], field, rank, pos, end, int);
                return Ok(end);
            }
            b't' => (literal(b, pos, b"true")?, Kind::True),
            b'f' => (literal(b, pos, b"false")?, Kind::False),
            b'n' => (literal(b, pos, b"null")?, Kind::Null),
            b'[' => (skip_array(b, self.strings, pos, depth)?, Kind::Array),
            b'{' => (skip_nested(b, self.strings, pos, depth)?, Kind::Object),
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
        // Empty, or a group present only through keys below it, which any value of its own
        // replaces (one comparison for both: the two kinds come first).
        if slot.kind <= Kind::Implied {
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

    /// Records the number `text`, which is `start..end` of the line: both are passed, the
    /// offsets to be recorded and the bytes to be parsed, sliced by `value`, which holds the
    /// line (the parser's own copy of it is not loaded again).
    #[inline]
    fn record_number(
        &mut self,
        text: &[u8],
        field: u16,
        rank: u16,
        start: usize,
        end: usize,
        int: bool,
    ) {
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

/// Puts in `out`, in order, the offsets (of the opening quote) of the keys of `text` that a
/// later key of the same name in the same object replaces, in the event and every object
/// reached from it through objects (the walk descends into no array). Time in `n log n` of the
/// keys of an object: a line may hold an object of many thousands. For the exact pass: `text` is a line
/// the first pass read whole, so its nesting is within [`MAX_DEPTH`](super::MAX_DEPTH), which
/// bounds the recursion. Objects the walk does not open are gone through too: their marks only
/// send their keys to the checked string path.
#[cold]
pub(super) fn superseded_keys(
    text: &str,
    strings: Indexed<'_>,
    out: &mut Vec<u32>,
) -> Result<(), ScanError> {
    let b = text.as_bytes();
    let pos = skip_ws(b, 0);
    if b.get(pos) != Some(&b'{') {
        return Err(fail(ScanErrorKind::NotAnObject, pos));
    }
    object_superseded(text, strings, pos + 1, 1, out)?;
    // In order, for the walk's binary search.
    out.sort_unstable();
    Ok(())
}

/// [`superseded_keys`] of the object whose members start at `pos` (after its `{`), with its
/// values `depth` levels down; returns the position after its `}`.
fn object_superseded(
    text: &str,
    strings: Indexed<'_>,
    pos: usize,
    depth: u32,
    out: &mut Vec<u32>,
) -> Result<usize, ScanError> {
    let b = text.as_bytes();
    let mut keys: Vec<(String, u32)> = Vec::new();
    let mut pos = skip_ws(b, pos);
    if b.get(pos) != Some(&b'}') {
        loop {
            if b.get(pos) != Some(&b'"') {
                return Err(fail(ScanErrorKind::Syntax, pos));
            }
            let (after, escaped) = strings.end(b, pos + 1)?;
            let raw = &text[pos + 1..after - 1];
            let mut name = String::new();
            if escaped {
                decode(raw, &mut name);
            } else {
                name.push_str(raw);
            }
            keys.push((name, pos as u32));
            let value = colon(b, after)?;
            pos = if b.get(value) == Some(&b'{') {
                object_superseded(text, strings, value + 1, depth + 1, out)?
            } else {
                skip_value(b, strings, value, depth)?
            };
            pos = skip_ws(b, pos);
            match b.get(pos) {
                Some(b',') => pos = skip_ws(b, pos + 1),
                Some(b'}') => break,
                _ => return Err(fail(ScanErrorKind::Syntax, pos)),
            }
        }
    }
    // By name, then by place (a stable sort keeps the order of the keys): of each run of one
    // name, all but the last are replaced. Sorted rather than each key compared with every
    // later one, which took time in the square of an object's keys, for any object now.
    keys.sort_by(|x, y| x.0.cmp(&y.0));
    for pair in keys.windows(2) {
        if pair[0].0 == pair[1].0 {
            out.push(pair[0].1);
        }
    }
    Ok(pos + 1)
}

/// Records group `field` as present through a key below it ([`Kind::Implied`]) when nothing
/// else is recorded for it: a value at the group's own path, in any form, is its value, and
/// replaces the mark when read later ([`Parser::claim`]), so the order of the keys does not
/// matter. Never counted as conflicting: readers that merge dotted and nested forms merge a
/// group's members, however each is written.
fn imply(slots: &mut [Slot], field: u16) {
    let slot = &mut slots[usize::from(field)];
    if slot.kind == Kind::Absent {
        slot.kind = Kind::Implied;
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
pub(super) fn decode(raw: &str, out: &mut String) {
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
