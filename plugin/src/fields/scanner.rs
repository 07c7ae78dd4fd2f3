//! [`Scanner`]: one or two passes of the [`Parser`](super::parser) over a line, and the buffers
//! kept between events; [`Scanned`]: what one scan records, kept apart from the scanner so that
//! one thread may scan events for another to read.

use std::sync::Arc;

use super::event::Event;
use super::grammar::{fail, index_stops, skip_ws, Indexed};
use super::parser::{superseded_keys, Parser, PassFlags};
use super::schema::Schema;
use super::slot::{Kind, NodeSeen, Slot};
use super::{ScanError, ScanErrorKind};

/// Scans event lines for the fields of one [`Schema`]; keeps its buffers between events.
#[derive(Debug)]
pub struct Scanner {
    schema: Arc<Schema>,
    /// What [`Scanner::scan`] records.
    out: Scanned,
    /// Offsets of keys a later occurrence of the same key replaces (empty but for the second,
    /// exact pass).
    superseded: Vec<u32>,
    /// The current key, when it had escapes.
    key: String,
    /// The line's string stops ([`index_stops`]).
    stops: Vec<u64>,
}

/// What scanning one line recorded: the wanted fields' values as spans of the line (or of its
/// own buffer, for decoded strings), and where the wanted objects are. It borrows nothing:
/// [`Scanned::event`] reads it back with the line it was scanned from. Buffers are kept, so a
/// record reused for one event after another stops allocating.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub(super) slots: Vec<Slot>,
    pub(super) nodes: Vec<NodeSeen>,
    /// Decoded escaped strings of the event.
    scratch: String,
    conflicting: bool,
    /// Whether the last scan read the line.
    outcome: Result<(), ScanError>,
}

impl Scanned {
    /// An empty record for the fields of `schema`.
    pub fn new(schema: &Schema) -> Self {
        Scanned {
            slots: vec![Slot::absent(); schema.len()],
            nodes: vec![NodeSeen::default(); schema.nodes.len()],
            scratch: String::new(),
            conflicting: false,
            outcome: Err(fail(ScanErrorKind::NotAnObject, 0)),
        }
    }

    /// The event scanned into this record, read with `line`, the line it was scanned from
    /// (another line gives wrong values or a panic, never undefined behaviour), and the schema it was
    /// scanned for; or why the line could not be read.
    pub fn event<'s>(
        &'s mut self,
        line: &'s str,
        schema: &'s Schema,
    ) -> Result<Event<'s>, ScanError> {
        self.outcome?;
        Ok(Event {
            line,
            schema,
            slots: &mut self.slots,
            nodes: &self.nodes,
            scratch: &self.scratch,
            conflicting: self.conflicting,
        })
    }
}

impl Scanner {
    /// A scanner for `schema`.
    pub fn new(schema: Arc<Schema>) -> Self {
        Scanner {
            out: Scanned::new(&schema),
            superseded: Vec::new(),
            schema,
            key: String::new(),
            stops: Vec::new(),
        }
    }

    /// The schema scanned for.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Scans one line (without its terminator). Fails when it is not exactly one JSON object.
    pub fn scan<'s>(&'s mut self, line: &'s str) -> Result<Event<'s>, ScanError> {
        let flags = self.run(line)?;
        Ok(Event {
            line,
            schema: &self.schema,
            slots: &mut self.out.slots,
            nodes: &self.out.nodes,
            scratch: &self.out.scratch,
            conflicting: flags.conflicting,
        })
    }

    /// Scans one line into `out`, a record made for this scanner's schema; read it back with
    /// [`Scanned::event`]. (The record takes the place of the scanner's own for the scan: two
    /// swaps of a few words, and [`Scanner::scan`]'s code is left exactly as it is.)
    pub fn scan_into(&mut self, line: &str, out: &mut Scanned) {
        debug_assert_eq!(
            out.slots.len(),
            self.schema.len(),
            "record of another schema"
        );
        std::mem::swap(&mut self.out, out);
        let flags = self.run(line);
        std::mem::swap(&mut self.out, out);
        out.conflicting = flags.is_ok_and(|f| f.conflicting);
        out.outcome = flags.map(|_| ());
    }

    /// The scan into the scanner's own record: one pass, and a second, exact one when a wanted
    /// key is repeated.
    fn run(&mut self, line: &str) -> Result<PassFlags, ScanError> {
        if u32::try_from(line.len()).is_err() {
            return Err(fail(ScanErrorKind::TooLong, 0));
        }
        self.superseded.clear();
        index_stops(line.as_bytes(), &mut self.stops);
        let flags = self.pass(line)?;
        if flags.duplicates {
            // A wanted key repeated in one object: read again, skipping what is replaced.
            // Each replaced key is marked in the stop index at its first byte too, so that
            // the walk finds it no plain key and takes the path where replaced keys are
            // tested (a mark elsewhere than at a `"` only sends a string to the checked path:
            // `Indexed::plain_end`).
            superseded_keys(line, Indexed(&self.stops), &mut self.superseded)?;
            for &at in &self.superseded {
                let first = at as usize + 1;
                if let Some(block) = self.stops.get_mut(first / 64) {
                    *block |= 1 << (first % 64);
                }
            }
            self.pass(line)
        } else {
            Ok(flags)
        }
    }

    fn pass(&mut self, line: &str) -> Result<PassFlags, ScanError> {
        let out = &mut self.out;
        for slot in &mut out.slots {
            slot.kind = Kind::Absent;
        }
        for node in &mut out.nodes {
            *node = NodeSeen::default();
        }
        out.scratch.clear();
        let b = line.as_bytes();
        let mut p = Parser {
            text: line,
            schema: &self.schema,
            slots: &mut out.slots,
            nodes: &mut out.nodes,
            scratch: &mut out.scratch,
            key: &mut self.key,
            superseded: &self.superseded,
            strings: Indexed(&self.stops),
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
