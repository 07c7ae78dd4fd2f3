//! [`Scanner`]: one or two passes of the [`Parser`](super::parser) over a line, and the buffers
//! kept between events.

use std::sync::Arc;

use super::event::Event;
use super::grammar::{fail, index_stops, skip_ws, Indexed};
use super::parser::{Parser, PassFlags};
use super::schema::Schema;
use super::slot::{Kind, NodeSeen, Slot};
use super::{ScanError, ScanErrorKind};

/// Scans event lines for the fields of one [`Schema`]; keeps its buffers between events.
#[derive(Debug)]
pub struct Scanner {
    schema: Arc<Schema>,
    slots: Vec<Slot>,
    pub(super) nodes: Vec<NodeSeen>,
    /// Offsets of keys a later occurrence of the same key replaces (second, exact pass only).
    superseded: Vec<u32>,
    /// Decoded escaped strings of the current event.
    scratch: String,
    /// The current key, when it had escapes.
    key: String,
    /// The line's string stops ([`index_stops`]).
    stops: Vec<u64>,
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
            stops: Vec::new(),
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
        index_stops(line.as_bytes(), &mut self.stops);
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
            strings: Indexed(&self.stops),
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
