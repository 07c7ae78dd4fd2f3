//! What the scan records per wanted field ([`Slot`]) and per trie node ([`NodeSeen`]).

use std::cell::Cell;
use std::net::IpAddr;

/// What a slot holds. [`Kind::Absent`] and [`Kind::Implied`] come first, in that order: a
/// value read takes a slot holding either with one comparison (`Parser::claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Absent,
    /// A group present only through keys below it (`"rule.zzz"` for group `rule`): its object
    /// exists in the dotted reading but is written nowhere in the line, so it has no text.
    Implied,
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
pub(super) enum IpMemo {
    Unparsed,
    Invalid,
    Valid(IpAddr),
}

/// One wanted field's value in the current event.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) kind: Kind,
    /// The form it was read in (see [`rank_bit`]): a higher rank replaces it.
    pub(super) rank: u16,
    /// For [`Kind::Num`]: the text is an integer (no fraction or exponent).
    pub(super) int: bool,
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) num: f64,
    pub(super) fixed: &'static str,
    pub(super) ip: Cell<IpMemo>,
}

impl Slot {
    pub(super) fn absent() -> Slot {
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
pub(super) struct NodeSeen {
    /// An object for this node was seen.
    pub(super) present: bool,
    /// Its form (see [`rank_bit`]).
    pub(super) rank: u16,
    /// Offset of its closing `}`.
    pub(super) close: u32,
    /// Something other than an object stands at this path (`"destination": "x"`, an array).
    pub(super) blocked: bool,
}

// `Parser::claim` takes a slot holding either of the first two kinds with `kind <= Implied`.
const _: () = assert!(Kind::Absent as u8 == 0 && Kind::Implied as u8 == 1);
