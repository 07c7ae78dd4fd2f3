//! [`Filter`]: the conditions an event must meet to be counted by a job, as configured and as
//! bound to the scanner's fields ([`BoundFilter`]).

use std::cell::Cell;

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

/// The lengths of the names in [`SHIPPING_AGENTS`], without and with `.exe`, as a bit mask:
/// bit `n` is set when some name is `n` bytes long (all are under 64).
const AGENT_NAME_LENGTHS: u64 = {
    let mut lengths = 0;
    let mut i = 0;
    while i < SHIPPING_AGENTS.len() {
        lengths |= 1 << SHIPPING_AGENTS[i].len();
        lengths |= 1 << (SHIPPING_AGENTS[i].len() + ".exe".len());
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
    /// True when `event` meets the condition. Inlined into [`super::BoundJob::qualifies`]'s
    /// loop: out of line, each of the eight filters an event meets cost a call (~19
    /// instructions each with the dispatch; `#[inline]` alone was not taken).
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
            Filter::NetworkDirectionNot(values) => event
                .str(field)
                .is_none_or(|dir| !values.iter().any(|v| v.eq_ignore_ascii_case(dir))),
            Filter::PrivateSource(_) => event.ip(field).is_some_and(net::is_private_source),
            Filter::PublicDestination(_) => event.ip(field).is_some_and(net::is_public_destination),
        }
    }
}

/// One of a job's filters as the detector checks it: the job's own, or one that several jobs
/// have, checked once per event in [`SharedFilters`].
#[derive(Debug, Clone)]
pub enum Check {
    /// A filter no other job has.
    Own(BoundFilter),
    /// The index of the filter in the [`SharedFilters`].
    Shared(usize),
}

impl Check {
    /// True when `event` meets the filter; a shared filter is checked at most once per event.
    #[inline(always)]
    pub fn matches(&self, event: &Event<'_>, shared: &SharedFilters) -> bool {
        match self {
            Check::Own(filter) => filter.matches(event),
            Check::Shared(index) => shared.matches(*index, event),
        }
    }
}

/// The filters more than one job has, with their verdicts on the current event: Elastic's four
/// data-exfiltration jobs (`ded_high_sent_bytes_*`) have the same five filters, so with their
/// rules loaded together each of the five is checked once per event instead of four times.
#[derive(Debug, Default)]
pub struct SharedFilters {
    filters: Vec<BoundFilter>,
    /// Each filter's verdict on the current event, `None` until it is checked.
    verdicts: Vec<Cell<Option<bool>>>,
}

impl SharedFilters {
    /// Moves every filter that appears twice or more among the checks of `jobs` (the same
    /// condition on the same field, in two jobs or twice in one) into the shared set, leaving
    /// [`Check::Shared`] in their place. Those checks must then be judged against this set: an
    /// index into another set is out of its range.
    pub fn share<'j>(jobs: impl IntoIterator<Item = &'j mut Vec<Check>>) -> Self {
        let mut jobs: Vec<&mut Vec<Check>> = jobs.into_iter().collect();
        let own = |check: &Check| match check {
            Check::Own(filter) => Some(filter.clone()),
            Check::Shared(_) => None,
        };
        let all: Vec<BoundFilter> = jobs.iter().flat_map(|c| c.iter().filter_map(own)).collect();
        let mut shared = SharedFilters::default();
        for (i, filter) in all.iter().enumerate() {
            let repeated = all.iter().skip(i + 1).any(|other| other == filter);
            if repeated && !shared.filters.iter().any(|f| f == filter) {
                shared.filters.push(filter.clone());
                shared.verdicts.push(Cell::new(None));
            }
        }
        for check in jobs.iter_mut().flat_map(|checks| checks.iter_mut()) {
            if let Check::Own(filter) = check {
                if let Some(index) = shared.filters.iter().position(|f| f == filter) {
                    *check = Check::Shared(index);
                }
            }
        }
        shared
    }

    /// Forgets the verdicts: called before the jobs check a new event.
    #[inline]
    pub fn next_event(&self) {
        for verdict in &self.verdicts {
            verdict.set(None);
        }
    }

    /// How many filters are shared.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.filters.len()
    }

    #[inline]
    fn matches(&self, index: usize, event: &Event<'_>) -> bool {
        let verdict = &self.verdicts[index];
        verdict.get().unwrap_or_else(|| {
            let met = self.filters[index].matches(event);
            verdict.set(Some(met));
            met
        })
    }
}

/// True when a `process.name` is one of the Elastic shipping agents (`filebeat`, `Filebeat.exe`,
/// ...), compared case-insensitively with an optional `.exe` suffix. Does not allocate.
///
/// Runs on every event: a name that does not have the length of an agent's name, with or
/// without `.exe`, is answered without comparing it, and a name that begins and ends with a
/// printable ASCII character (it has no white space to trim) is not trimmed.
pub fn is_shipping_agent(process_name: &str) -> bool {
    let b = process_name.as_bytes();
    let name = if b.first().is_some_and(u8::is_ascii_graphic)
        && b.last().is_some_and(u8::is_ascii_graphic)
    {
        process_name
    } else {
        process_name.trim()
    };
    if name.len() >= 64 || AGENT_NAME_LENGTHS & (1 << name.len()) == 0 {
        return false;
    }
    let base = match name.len().checked_sub(4) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(".exe") => {
            &name[..cut]
        }
        _ => name,
    };
    SHIPPING_AGENTS.iter().any(|a| a.eq_ignore_ascii_case(base))
}
