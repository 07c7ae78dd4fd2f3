//! [`Filter`]: the conditions an event must meet to be counted by a job, as configured and as
//! bound to the scanner's fields ([`BoundFilter`]).

use serde::{Deserialize, Serialize};

use crate::fields::{Event, FieldId, SchemaBuilder};
use crate::net;

/// ECS field holding the event categories.
pub const FIELD_EVENT_CATEGORY: &str = "event.category";
/// ECS field holding the process name, for [`Filter::NotShippingAgent`].
pub const FIELD_PROCESS_NAME: &str = "process.name";
/// ECS field holding the traffic direction, for [`Filter::NetworkDirectionNot`].
pub const FIELD_NETWORK_DIRECTION: &str = "network.direction";

/// Processes of the Elastic shipping agents themselves, whose traffic the network jobs ignore
/// (compared case-insensitively, with or without `.exe`).
pub const SHIPPING_AGENTS: [&str; 5] = [
    "elastic-agent",
    "filebeat",
    "metricbeat",
    "packetbeat",
    "winlogbeat",
];

/// The lengths of the names in [`SHIPPING_AGENTS`] as a bit mask: bit `n` is set when some
/// name is `n` bytes long (all are under 64).
const AGENT_NAME_LENGTHS: u64 = {
    let mut lengths = 0;
    let mut i = 0;
    while i < SHIPPING_AGENTS.len() {
        lengths |= 1 << SHIPPING_AGENTS[i].len();
        i += 1;
    }
    lengths
};

/// A condition an event must meet to be counted by a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// `event.category` (string or array) contains this value, e.g. `network`.
    CategoryContains(String),
    /// The field is present and not null.
    FieldExists(String),
    /// `process.name` is absent or is not one of [`SHIPPING_AGENTS`].
    NotShippingAgent,
    /// The field is a number (or numeric string) greater than zero.
    FieldPositive(String),
    /// `network.direction` is absent or none of these values (case-insensitive).
    NetworkDirectionNot(Vec<String>),
    /// The field is an IP address in a private range ([`net::is_private_source`]).
    PrivateSource(String),
    /// The field is a publicly routable IP address ([`net::is_public_destination`]).
    PublicDestination(String),
}

impl Filter {
    /// The filter with its field resolved to the scanner's [`FieldId`].
    pub fn bind(&self, schema: &mut SchemaBuilder) -> BoundFilter {
        let only = match self {
            Filter::CategoryContains(value) => serde_json::to_string(&[value]).ok(),
            _ => None,
        };
        BoundFilter {
            field: schema.field(self.field()),
            filter: self.clone(),
            only,
        }
    }

    /// The event field the filter reads.
    pub fn field(&self) -> &str {
        match self {
            Filter::CategoryContains(_) => FIELD_EVENT_CATEGORY,
            Filter::NotShippingAgent => FIELD_PROCESS_NAME,
            Filter::NetworkDirectionNot(_) => FIELD_NETWORK_DIRECTION,
            Filter::FieldExists(field)
            | Filter::FieldPositive(field)
            | Filter::PrivateSource(field)
            | Filter::PublicDestination(field) => field,
        }
    }
}

/// A [`Filter`] whose field is resolved; what the detector checks per event.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundFilter {
    filter: Filter,
    field: FieldId,
    /// For [`Filter::CategoryContains`]: the array holding the value alone, as JSON text
    /// (`["network"]`, as ECS events write it): an event whose field is exactly that qualifies
    /// without the array being read.
    only: Option<String>,
}

impl BoundFilter {
    /// True when `event` meets the condition. Inlined into the loops of
    /// [`super::BoundJob::qualifies`] and [`SharedFilters::qualify`]: out of line, each of the
    /// eight filters an event meets cost a call (~19 instructions each with the dispatch;
    /// `#[inline]` alone was not taken).
    #[inline(always)]
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let field = self.field;
        match &self.filter {
            Filter::CategoryContains(value) => {
                // Only an array's text begins with `[`: no other kind can be `only`.
                self.only
                    .as_deref()
                    .is_some_and(|only| event.array_text(field) == Some(only))
                    || event.contains(field, value)
            }
            Filter::FieldExists(_) => event.present(field),
            Filter::NotShippingAgent => event.str(field).is_none_or(|n| !is_shipping_agent(n)),
            Filter::FieldPositive(_) => event.number(field).is_some_and(|n| n > 0.0),
            Filter::NetworkDirectionNot(values) => {
                event.str(field).is_none_or(|dir| !is_one_of(values, dir))
            }
            Filter::PrivateSource(_) => event.ip(field).is_some_and(net::is_private_source),
            Filter::PublicDestination(_) => event.ip(field).is_some_and(net::is_public_destination),
        }
    }
}

/// The filters more than one job has: Elastic's four data-exfiltration jobs
/// (`ded_high_sent_bytes_*`) have the same five filters, so with their rules loaded together each
/// of the five is checked once per event instead of four times. A job holds the indices of its
/// shared filters ([`super::BoundJob::shared`]); its other filters stay its own.
#[derive(Debug, Default)]
pub(crate) struct SharedFilters {
    filters: Vec<BoundFilter>,
}

/// Which shared filters the current event has been checked against, and which of those it met:
/// one bit per filter, for the first 64 (a filter past them is checked each time a job asks). A
/// new event starts from the default, nothing checked.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Verdicts {
    checked: u64,
    met: u64,
}

impl SharedFilters {
    /// Moves every filter that appears twice or more among the `jobs`' own filters (the same
    /// condition on the same field, in two jobs or twice in one) into the shared set, each job
    /// keeping its index in [`super::BoundJob::shared`]. Those indices are into this set only:
    /// called once on a set of jobs bound together, never on jobs that already share.
    pub(crate) fn share<'j>(jobs: impl IntoIterator<Item = &'j mut super::BoundJob>) -> Self {
        let mut jobs: Vec<&mut super::BoundJob> = jobs.into_iter().collect();
        debug_assert!(
            jobs.iter().all(|j| j.shared.is_empty()),
            "the jobs share filters already"
        );
        let all: Vec<&BoundFilter> = jobs.iter().flat_map(|j| &j.filters).collect();
        let mut shared = SharedFilters::default();
        for (i, filter) in all.iter().enumerate() {
            let repeated = all[i + 1..].contains(filter);
            if repeated && !shared.filters.contains(filter) {
                shared.filters.push((*filter).clone());
            }
        }
        for job in &mut jobs {
            let own = std::mem::take(&mut job.filters);
            for filter in own {
                match shared.filters.iter().position(|f| *f == filter) {
                    Some(index) => job.shared.push(index),
                    None => job.filters.push(filter),
                }
            }
        }
        shared
    }

    /// How many filters are shared.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when `event` meets every shared filter at `indices`, checked in order up to the
    /// first it fails; `verdicts` are the event's, kept for the next job that asks. Part of
    /// [`super::BoundJob::qualifies`], which the scoring loop calls.
    #[inline]
    pub(super) fn qualify(
        &self,
        indices: &[usize],
        event: &Event<'_>,
        verdicts: &mut Verdicts,
    ) -> bool {
        indices.iter().all(|&index| {
            let bit = if index < 64 { 1u64 << index } else { 0 };
            if verdicts.checked & bit != 0 {
                return verdicts.met & bit != 0;
            }
            let met = self.filters[index].matches(event);
            verdicts.checked |= bit;
            if met {
                verdicts.met |= bit;
            }
            met
        })
    }
}

/// True when `text` is one of `values`, ASCII case aside. Out of line: inlined into the scoring
/// loop, the comparison loop cost more than the call (callgrind `detector` case, #12).
#[inline(never)]
fn is_one_of(values: &[String], text: &str) -> bool {
    values.iter().any(|v| v.eq_ignore_ascii_case(text))
}

/// True when a `process.name` is one of the Elastic shipping agents (`filebeat`, `Filebeat.exe`,
/// ...), compared case-insensitively with an optional `.exe` suffix. Does not allocate.
///
/// Runs on every event: a name that begins and ends with a printable ASCII character (it has
/// no white space to trim) is not trimmed, its `.exe` is found in one word comparison, and a
/// name without it that does not have the length of an agent's name is answered without
/// comparing it (most names end in `.exe`, and an agent's name with `.exe` has the length of
/// common ones such as `chrome.exe`: compared byte by byte, ~47 Ir an event, now ~20,
/// callgrind `detector` case, #12).
pub fn is_shipping_agent(process_name: &str) -> bool {
    let b = process_name.as_bytes();
    let name = if b.first().is_some_and(u8::is_ascii_graphic)
        && b.last().is_some_and(u8::is_ascii_graphic)
    {
        b
    } else {
        process_name.trim().as_bytes()
    };
    let base = without_exe(name);
    base.len() < 64
        && AGENT_NAME_LENGTHS & (1 << base.len()) != 0
        && SHIPPING_AGENTS
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(base))
}

/// `name` without a final `.exe` in any case. The four bytes are read as one word: a byte ORed
/// with `0x20` is `e` (`x`) only when it is `e` or `E` (`x` or `X`), and the dot is compared as
/// it is.
#[inline]
fn without_exe(name: &[u8]) -> &[u8] {
    const EXE: u32 = u32::from_le_bytes(*b".exe");
    match name.split_last_chunk::<4>() {
        Some((base, &tail)) if u32::from_le_bytes(tail) | 0x2020_2000 == EXE => base,
        _ => name,
    }
}
