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
        BoundFilter {
            field: schema.field(self.field()),
            filter: self.clone(),
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
#[derive(Debug, Clone)]
pub struct BoundFilter {
    filter: Filter,
    field: FieldId,
}

impl BoundFilter {
    /// True when `event` meets the condition.
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let field = self.field;
        match &self.filter {
            Filter::CategoryContains(value) => event.contains(field, value),
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

/// True when a `process.name` is one of the Elastic shipping agents (`filebeat`, `Filebeat.exe`,
/// ...), compared case-insensitively with an optional `.exe` suffix. Does not allocate.
pub fn is_shipping_agent(process_name: &str) -> bool {
    let name = process_name.trim();
    let base = match name.len().checked_sub(4) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(".exe") => {
            &name[..cut]
        }
        _ => name,
    };
    SHIPPING_AGENTS.iter().any(|a| a.eq_ignore_ascii_case(base))
}
