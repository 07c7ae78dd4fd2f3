//! [`Event`]: reading the wanted fields of a scanned line, and writing new fields into it.

use std::net::IpAddr;

use super::grammar::{skip_value, skip_ws, string_end, string_stops, word, Swar};
use super::parser::decode;
use super::schema::{Schema, ROOT};
use super::slot::{IpMemo, Kind, NodeSeen, Slot};
use super::FieldId;
use crate::net;

/// The wanted fields of one scanned event.
#[derive(Debug)]
pub struct Event<'s> {
    pub(super) line: &'s str,
    pub(super) schema: &'s Schema,
    pub(super) slots: &'s mut [Slot],
    pub(super) nodes: &'s [NodeSeen],
    pub(super) scratch: &'s str,
    pub(super) conflicting: bool,
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

// The readers below run several times per event for every job (filters, keys, time, the
// address): inlined, each saves a call and lets the caller's match on the kind fold into its
// own (callgrind: Event::str cost ~31 instructions a call out of line).
impl<'s> Event<'s> {
    #[inline(always)]
    fn slot(&self, id: FieldId) -> &Slot {
        &self.slots[usize::from(id.0)]
    }

    /// The field as a string, when it is one.
    #[inline(always)]
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
    #[inline]
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
    #[inline(always)]
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

    /// True when the field is present and not `null`. A group ([`SchemaBuilder::group`]) with
    /// only keys below it is present; one whose own value is `null` is not, whatever is below
    /// it (it still exists: [`Event::writable`] answers [`Collision::Exists`]).
    ///
    /// [`SchemaBuilder::group`]: super::SchemaBuilder::group
    #[inline(always)]
    pub fn present(&self, id: FieldId) -> bool {
        !matches!(self.slot(id).kind, Kind::Absent | Kind::Null)
    }

    /// The field as an IP address (`10.1.2.3`, `2001:db8::1`, `[::1]`, `fe80::1%eth0`), parsed
    /// once per event whoever asks.
    #[inline]
    pub fn ip(&self, id: FieldId) -> Option<IpAddr> {
        let slot = self.slot(id);
        // The memo is reset whenever a slot takes a string; other kinds are never addresses.
        if !matches!(slot.kind, Kind::Str | Kind::Decoded | Kind::Fixed) {
            return None;
        }
        match slot.ip.get() {
            IpMemo::Valid(ip) => Some(ip),
            IpMemo::Invalid => None,
            IpMemo::Unparsed => self.parse_ip(id),
        }
    }

    /// [`Event::ip`]'s first read of a field: parsed and kept in the slot's memo. Out of line:
    /// the memo's answer, what the later readers get, stays small where it is inlined.
    #[inline(never)]
    fn parse_ip(&self, id: FieldId) -> Option<IpAddr> {
        let ip = self.str(id).and_then(net::parse_ip);
        self.slot(id)
            .ip
            .set(ip.map_or(IpMemo::Invalid, IpMemo::Valid));
        ip
    }

    /// The field's value as JSON text (as written in the event when it was read from it).
    /// `None` for a group present only through keys below it ([`SchemaBuilder::group`]): its
    /// object is written nowhere in the line.
    ///
    /// [`SchemaBuilder::group`]: super::SchemaBuilder::group
    pub fn raw(&self, id: FieldId) -> Option<std::borrow::Cow<'_, str>> {
        let slot = self.slot(id);
        let (s, e) = (slot.start as usize, slot.end as usize);
        match slot.kind {
            Kind::Absent | Kind::Implied => None,
            Kind::Str => self.line.get(s - 1..e + 1).map(Into::into),
            Kind::Decoded | Kind::Fixed => {
                serde_json::to_string(self.str(id)?).ok().map(Into::into)
            }
            _ => self.line.get(s..e).map(Into::into),
        }
    }

    /// The field's JSON text when it is an array, brackets included, as written in the event
    /// (what [`Event::raw`] gives for an array, without its copy-on-write wrapping).
    #[inline]
    pub fn array_text(&self, id: FieldId) -> Option<&str> {
        let slot = self.slot(id);
        match slot.kind {
            Kind::Array => self.line.get(slot.start as usize..slot.end as usize),
            _ => None,
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
            // Whether the object has no member: then only whitespace stands between its
            // braces (a member's value never ends in `{`). Found here, for the few events an
            // alert is written into, rather than at every wanted object's close.
            let empty = self.line[..close]
                .trim_end_matches([' ', '\t', '\n', '\r'])
                .ends_with('{');
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
            _ => match skip_value(b, Swar, pos, 1) {
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
