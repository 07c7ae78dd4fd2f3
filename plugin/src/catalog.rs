//! The job catalog: job ids (as named by a rule's `machine_learning_job_id`) mapped to detector
//! definitions.
//!
//! A [`JobDef`] says what to model (`function` of `field_name`, split `by`/`over`/`partition`
//! fields), on which time grid (`bucket_span`), for which events (`filters`), and which fields to
//! report as influencers on an alert. The vocabulary follows Elastic's anomaly-detection job
//! configs so a user who knows those can write their own jobs:
//!
//! ```yaml
//! jobs:
//!   - id: rare_destination_country_by_host
//!     description: Rare destination country per host
//!     function: rare
//!     by_field_name: destination.geo.country_name
//!     partition_field_name: host.name
//!     bucket_span: 15m
//!     filters:
//!       - category_contains: network
//!       - field_exists: destination.geo.country_name
//!       - not_shipping_agent
//!     influencers: [source.ip, destination.ip]
//! ```
//!
//! Filters (all must hold for an event to qualify, see [`Filter`]): `category_contains: VALUE`,
//! `field_exists: FIELD`, `not_shipping_agent`, `field_positive: FIELD`,
//! `network_direction_not: [VALUE, ...]`, `private_source: FIELD`, `public_destination: FIELD`.
//!
//! Built-in jobs ([`JobCatalog::builtin`]) re-create Elastic's public network jobs:
//!
//! | id | detector | bucket |
//! |---|---|---|
//! | `rare_destination_country` | `rare` by `destination.geo.country_name` | 15m |
//! | `ded_high_sent_bytes_destination_ip` (+ `_ea`) | `high_sum(source.bytes)` over `destination.ip` | 3h |
//! | `ded_high_sent_bytes_destination_geo_country_iso_code` (+ `_ea`) | `high_sum(source.bytes)` over `destination.geo.country_iso_code` | 3h |
//! | `ded_high_sent_bytes_destination_port` (+ `_ea`) | `high_sum(source.bytes)` over `destination.port` | 3h |
//! | `ded_high_sent_bytes_destination_region_name` (+ `_ea`) | `high_sum(source.bytes)` over `destination.geo.region_name` | 3h |
//!
//! The `_ea` ids are the names Elastic's current rules use (Entity Analytics field variants); the
//! detector is the same. Filters on enriched fields (`destination.geo.*`) are meant to be evaluated
//! after GeoIP enrichment.

use std::collections::BTreeMap;
use std::fmt;

use egresswatch_common::names::fields::{
    DESTINATION_COUNTRY_ISO_CODE, DESTINATION_COUNTRY_NAME, DESTINATION_IP, DESTINATION_PORT,
    SOURCE_BYTES, SOURCE_IP,
};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

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

/// The detector function of a job (Elastic's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Values of the by/over field that rarely or never occur.
    Rare,
    /// Values that are rare within the population of the over field (`freq_rare`).
    FreqRare,
    /// Number of events per bucket, unusual in either direction.
    Count,
    /// Number of events per bucket, unusually high.
    HighCount,
    /// Number of events per bucket, unusually low.
    LowCount,
    /// Sum of `field_name` per bucket, unusual in either direction.
    Sum,
    /// Sum of `field_name` per bucket, unusually high.
    HighSum,
    /// Sum of `field_name` per bucket, unusually low.
    LowSum,
    /// Distinct values of `field_name` per bucket, unusual in either direction.
    DistinctCount,
    /// Distinct values of `field_name` per bucket, unusually high.
    HighDistinctCount,
    /// Mean of `field_name` per bucket, unusual in either direction.
    Mean,
    /// Mean of `field_name` per bucket, unusually high.
    HighMean,
    /// Mean of `field_name` per bucket, unusually low.
    LowMean,
}

impl Function {
    /// The configuration name (`"high_sum"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Rare => "rare",
            Function::FreqRare => "freq_rare",
            Function::Count => "count",
            Function::HighCount => "high_count",
            Function::LowCount => "low_count",
            Function::Sum => "sum",
            Function::HighSum => "high_sum",
            Function::LowSum => "low_sum",
            Function::DistinctCount => "distinct_count",
            Function::HighDistinctCount => "high_distinct_count",
            Function::Mean => "mean",
            Function::HighMean => "high_mean",
            Function::LowMean => "low_mean",
        }
    }

    /// True when the function analyses a numeric or categorical `field_name`
    /// (sum, mean, distinct count), which then must be set.
    pub fn needs_field_name(self) -> bool {
        matches!(
            self,
            Function::Sum
                | Function::HighSum
                | Function::LowSum
                | Function::DistinctCount
                | Function::HighDistinctCount
                | Function::Mean
                | Function::HighMean
                | Function::LowMean
        )
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// One detector: what to model, on which events, on which time grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDef {
    /// Job id, as named by rules' `machine_learning_job_id`.
    pub id: String,
    /// Detector function.
    pub function: Function,
    /// Field analysed by the function (`source.bytes` for `high_sum`); unused by `rare`/`count`.
    #[serde(default)]
    pub field_name: Option<String>,
    /// Field whose values are modelled separately against their own history (`by_field_name`);
    /// for `rare`, the field whose values are judged rare.
    #[serde(default, rename = "by_field_name")]
    pub by_field: Option<String>,
    /// Field naming the population members compared with each other (`over_field_name`).
    #[serde(default, rename = "over_field_name")]
    pub over_field: Option<String>,
    /// Field splitting the job into fully independent models (`partition_field_name`).
    #[serde(default, rename = "partition_field_name")]
    pub partition_field: Option<String>,
    /// Bucket length in seconds; configured as `bucket_span: "15m"` (units `s`, `m`, `h`, `d`) or
    /// as an integer number of seconds.
    #[serde(
        rename = "bucket_span",
        deserialize_with = "deserialize_bucket_span",
        serialize_with = "serialize_bucket_span"
    )]
    pub bucket_span_secs: u64,
    /// Conditions an event must meet to be counted (all of them).
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Fields copied onto an alert to help explain it.
    #[serde(default)]
    pub influencers: Vec<String>,
    /// What the job looks for, in one line.
    #[serde(default)]
    pub description: String,
}

impl JobDef {
    /// The job with every field it reads resolved to the scanner's [`FieldId`]s.
    pub fn bind(&self, schema: &mut SchemaBuilder) -> BoundJob {
        let mut field = |f: &Option<String>| f.as_deref().map(|path| schema.field(path));
        BoundJob {
            field_name: if self.function.needs_field_name() {
                field(&self.field_name)
            } else {
                None
            },
            by: field(&self.by_field),
            over: field(&self.over_field),
            partition: field(&self.partition_field),
            filters: self.filters.iter().map(|f| f.bind(schema)).collect(),
            influencers: self.influencers.iter().map(|p| schema.field(p)).collect(),
        }
    }

    /// Checks the definition and returns every problem found (empty when valid).
    pub fn validate(&self) -> Vec<CatalogError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| {
            problems.push(CatalogError::Invalid {
                job_id: self.id.clone(),
                field: field.to_owned(),
                message,
            })
        };
        if self.id.trim().is_empty() {
            bad("id", "must not be empty".into());
        }
        if self.bucket_span_secs == 0 {
            bad("bucket_span", "must be longer than zero".into());
        }
        if self.function.needs_field_name() && self.field_name.is_none() {
            bad(
                "field_name",
                format!("function `{}` needs a field_name", self.function),
            );
        }
        if matches!(self.function, Function::Rare | Function::FreqRare)
            && self.by_field.is_none()
            && self.over_field.is_none()
        {
            bad(
                "by_field_name",
                format!(
                    "function `{}` needs a by_field_name or over_field_name",
                    self.function
                ),
            );
        }
        if self.function == Function::FreqRare && self.over_field.is_none() {
            bad(
                "over_field_name",
                "function `freq_rare` needs an over_field_name".into(),
            );
        }
        let fields = [
            ("field_name", &self.field_name),
            ("by_field_name", &self.by_field),
            ("over_field_name", &self.over_field),
            ("partition_field_name", &self.partition_field),
        ];
        for (name, value) in fields {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                bad(name, "must not be empty when given".into());
            }
        }
        problems
    }
}

/// A [`JobDef`]'s fields as [`FieldId`]s: what the detector reads per event.
#[derive(Debug, Clone)]
pub struct BoundJob {
    /// The filters, in order.
    pub filters: Vec<BoundFilter>,
    /// The analysed field, when the function needs one.
    pub field_name: Option<FieldId>,
    /// `by_field_name`.
    pub by: Option<FieldId>,
    /// `over_field_name`.
    pub over: Option<FieldId>,
    /// `partition_field_name`.
    pub partition: Option<FieldId>,
    /// The influencers, in the order of [`JobDef::influencers`].
    pub influencers: Vec<FieldId>,
}

impl BoundJob {
    /// True when the event meets every filter of the job.
    pub fn qualifies(&self, event: &Event<'_>) -> bool {
        self.filters.iter().all(|f| f.matches(event))
    }
}

fn deserialize_bucket_span<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Span {
        Secs(u64),
        Text(String),
    }
    match Span::deserialize(d)? {
        Span::Secs(s) => Ok(s),
        Span::Text(t) => parse_bucket_span(&t).map_err(serde::de::Error::custom),
    }
}

fn serialize_bucket_span<S: serde::Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_bucket_span(*secs))
}

/// Parses a bucket span such as `"15m"`, `"3h"`, `"1d"`, `"90s"` or `"900"` (seconds) into
/// seconds. The span must be a whole, non-zero number of seconds.
pub fn parse_bucket_span(text: &str) -> Result<u64, CatalogError> {
    let t = text.trim();
    let bad = || CatalogError::BucketSpan {
        value: text.to_owned(),
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(bad()),
    }
}

/// Formats seconds in the shortest exact unit (`900` -> `"15m"`, `10800` -> `"3h"`).
pub fn format_bucket_span(secs: u64) -> String {
    match secs {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Problems with job definitions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogError {
    /// A bucket span that is not a whole positive number of seconds with a known unit.
    #[error("invalid bucket_span `{value}`: expected a positive duration like \"15m\", \"3h\", \"1d\" or \"90s\"")]
    BucketSpan {
        /// The value as given.
        value: String,
    },
    /// A field of a job definition is invalid.
    #[error("job `{job_id}`: field `{field}` {message}")]
    Invalid {
        /// The job at fault.
        job_id: String,
        /// The configuration key at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two user jobs share an id.
    #[error("job `{job_id}` is defined more than once")]
    Duplicate {
        /// The repeated id.
        job_id: String,
    },
}

/// All known jobs, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobCatalog {
    jobs: BTreeMap<String, JobDef>,
}

/// Influencers reported for the data-exfiltration jobs: who sent (host, user, source address) and
/// where to (destination address and country).
const DED_INFLUENCERS: [&str; 5] = [
    "host.name",
    "user.name",
    SOURCE_IP,
    DESTINATION_IP,
    DESTINATION_COUNTRY_NAME,
];

impl JobCatalog {
    /// The built-in jobs (see the module documentation).
    pub fn builtin() -> Self {
        let mut jobs = vec![JobDef {
            id: "rare_destination_country".into(),
            function: Function::Rare,
            field_name: None,
            by_field: Some(DESTINATION_COUNTRY_NAME.into()),
            over_field: None,
            partition_field: None,
            bucket_span_secs: 15 * 60,
            filters: vec![
                Filter::CategoryContains("network".into()),
                Filter::FieldExists(DESTINATION_COUNTRY_NAME.into()),
                Filter::NotShippingAgent,
            ],
            influencers: strings(&[
                "destination.as.organization.name",
                SOURCE_IP,
                DESTINATION_IP,
            ]),
            description: "Destination countries rarely or never seen in network events".into(),
        }];
        let ded = [
            ("destination_ip", DESTINATION_IP, "destination IP addresses"),
            (
                "destination_geo_country_iso_code",
                DESTINATION_COUNTRY_ISO_CODE,
                "destination countries",
            ),
            ("destination_port", DESTINATION_PORT, "destination ports"),
            (
                "destination_region_name",
                "destination.geo.region_name",
                "destination regions",
            ),
        ];
        for (suffix, over, what) in ded {
            let def = JobDef {
                id: format!("ded_high_sent_bytes_{suffix}"),
                function: Function::HighSum,
                field_name: Some(SOURCE_BYTES.into()),
                by_field: None,
                over_field: Some(over.into()),
                partition_field: None,
                bucket_span_secs: 3 * 3600,
                filters: ded_filters(over),
                influencers: strings(&DED_INFLUENCERS),
                description: format!(
                    "Unusually many bytes sent from internal hosts to {what}, against the population"
                ),
            };
            let ea = JobDef {
                id: format!("{}_ea", def.id),
                ..def.clone()
            };
            jobs.push(def);
            jobs.push(ea);
        }
        Self {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        }
    }

    /// Adds user-defined jobs; a job with the id of an existing one replaces it. Every user job is
    /// validated first and all problems are returned together (the catalog is then unchanged).
    pub fn with_overrides(
        mut self,
        user_jobs: impl IntoIterator<Item = JobDef>,
    ) -> Result<Self, Vec<CatalogError>> {
        let mut problems = Vec::new();
        let mut seen = BTreeMap::new();
        for job in user_jobs {
            problems.extend(job.validate());
            if seen.contains_key(&job.id) {
                problems.push(CatalogError::Duplicate {
                    job_id: job.id.clone(),
                });
            }
            seen.insert(job.id.clone(), job);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        self.jobs.extend(seen);
        Ok(self)
    }

    /// The job with this id.
    pub fn get(&self, id: &str) -> Option<&JobDef> {
        self.jobs.get(id)
    }

    /// True when a job with this id exists.
    pub fn contains(&self, id: &str) -> bool {
        self.jobs.contains_key(id)
    }

    /// All jobs, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &JobDef> {
        self.jobs.values()
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True when the catalog holds no job.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn ded_filters(over_field: &str) -> Vec<Filter> {
    let mut filters = vec![
        Filter::FieldPositive(SOURCE_BYTES.into()),
        Filter::FieldExists(DESTINATION_PORT.into()),
        Filter::NetworkDirectionNot(strings(&["internal", "inbound"])),
        Filter::PrivateSource(SOURCE_IP.into()),
        Filter::PublicDestination(DESTINATION_IP.into()),
    ];
    if over_field != DESTINATION_IP && over_field != DESTINATION_PORT {
        filters.push(Filter::FieldExists(over_field.into()));
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::Scanner;
    use serde_json::{json, Value};
    use std::sync::Arc;

    /// Replaces the (existing, nested) field at `path`.
    fn set(event: &mut Value, path: &str, value: Value) {
        let pointer = format!("/{}", path.replace('.', "/"));
        *event.pointer_mut(&pointer).expect("field exists") = value;
    }

    /// Whether `event` qualifies for `job`, read as the detector reads it.
    fn qualifies(job: &JobDef, event: &Value) -> bool {
        let mut schema = SchemaBuilder::new();
        let bound = job.bind(&mut schema);
        let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
        let line = event.to_string();
        let scanned = scanner.scan(&line).unwrap();
        bound.qualifies(&scanned)
    }

    fn exfil_event() -> Value {
        json!({
            "@timestamp": "2024-05-01T10:00:00Z",
            "event": {"category": ["network"]},
            "network": {"direction": "outbound"},
            "source": {"ip": "10.1.2.3", "bytes": 123456},
            "destination": {"ip": "8.8.8.8", "port": 443,
                            "geo": {"country_iso_code": "US", "region_name": "California"}},
        })
    }

    #[test]
    fn builtin_has_all_named_jobs() {
        let c = JobCatalog::builtin();
        for id in [
            "rare_destination_country",
            "ded_high_sent_bytes_destination_ip",
            "ded_high_sent_bytes_destination_ip_ea",
            "ded_high_sent_bytes_destination_geo_country_iso_code",
            "ded_high_sent_bytes_destination_geo_country_iso_code_ea",
            "ded_high_sent_bytes_destination_port",
            "ded_high_sent_bytes_destination_port_ea",
            "ded_high_sent_bytes_destination_region_name",
            "ded_high_sent_bytes_destination_region_name_ea",
        ] {
            let job = c.get(id).unwrap_or_else(|| panic!("missing {id}"));
            assert!(job.validate().is_empty(), "{id}: {:?}", job.validate());
        }
        assert_eq!(c.len(), 9);
        let rare = c.get("rare_destination_country").unwrap();
        assert_eq!(rare.function, Function::Rare);
        assert_eq!(rare.bucket_span_secs, 900);
        let ded = c.get("ded_high_sent_bytes_destination_port_ea").unwrap();
        assert_eq!(ded.function, Function::HighSum);
        assert_eq!(ded.over_field.as_deref(), Some("destination.port"));
        assert_eq!(ded.bucket_span_secs, 10_800);
        assert!(c.get("high_count_network_events").is_none());
    }

    #[test]
    fn rare_country_filters() {
        let job = JobCatalog::builtin()
            .get("rare_destination_country")
            .unwrap()
            .clone();
        let ok = json!({"event.category": ["network"], "destination.geo.country_name": "Iran",
                        "process": {"name": "curl"}});
        assert!(qualifies(&job, &ok));
        let no_country = json!({"event": {"category": "network"}});
        assert!(!qualifies(&job, &no_country));
        let not_network = json!({"event": {"category": ["process"]},
                                 "destination": {"geo": {"country_name": "Iran"}}});
        assert!(!qualifies(&job, &not_network));
        for agent in [
            "filebeat",
            "Filebeat.EXE",
            "elastic-agent.exe",
            "winlogbeat",
        ] {
            let ev = json!({"event": {"category": ["network"]},
                            "destination": {"geo": {"country_name": "Iran"}},
                            "process": {"name": agent}});
            assert!(!qualifies(&job, &ev), "{agent}");
        }
    }

    #[test]
    fn ded_filters_each_condition() {
        let c = JobCatalog::builtin();
        let job = c.get("ded_high_sent_bytes_destination_ip").unwrap();
        assert!(qualifies(job, &exfil_event()));

        let tweaks: [(&str, Value); 9] = [
            ("source.bytes", json!(0)),
            ("source.bytes", json!("x")),
            ("destination.port", Value::Null),
            ("network.direction", json!("inbound")),
            ("network.direction", json!("Internal")),
            ("source.ip", json!("8.8.4.4")),
            ("destination.ip", json!("192.168.1.1")),
            ("destination.ip", json!("203.0.113.5")),
            ("destination.ip", json!("not-an-ip")),
        ];
        for (field, value) in tweaks {
            let mut ev = exfil_event();
            set(&mut ev, field, value.clone());
            assert!(!qualifies(job, &ev), "{field}={value} should not qualify");
        }
        // Direction absent is fine; string byte counts are fine.
        let mut ev = exfil_event();
        ev["network"] = json!({});
        set(&mut ev, "source.bytes", json!("2048"));
        assert!(qualifies(job, &ev));

        let region = c
            .get("ded_high_sent_bytes_destination_region_name_ea")
            .unwrap();
        assert!(qualifies(region, &exfil_event()));
        let mut ev = exfil_event();
        ev["destination"]["geo"] = json!({});
        assert!(!qualifies(region, &ev));
    }

    #[test]
    fn shipping_agents() {
        assert!(is_shipping_agent("packetbeat"));
        assert!(is_shipping_agent("MetricBeat.exe"));
        assert!(!is_shipping_agent("filebeat2"));
        assert!(!is_shipping_agent(".exe"));
        assert!(!is_shipping_agent("é.exe"));
        assert!(!is_shipping_agent("chrome.exe"));
    }

    #[test]
    fn bucket_spans() {
        assert_eq!(parse_bucket_span("15m").unwrap(), 900);
        assert_eq!(parse_bucket_span("3h").unwrap(), 10_800);
        assert_eq!(parse_bucket_span("1d").unwrap(), 86_400);
        assert_eq!(parse_bucket_span("90s").unwrap(), 90);
        assert_eq!(parse_bucket_span("600").unwrap(), 600);
        for bad in [
            "",
            "0m",
            "m",
            "15 m",
            "1.5h",
            "15min",
            "-3h",
            "99999999999999999999d",
        ] {
            assert!(parse_bucket_span(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bucket_span(900), "15m");
        assert_eq!(format_bucket_span(10_800), "3h");
        assert_eq!(format_bucket_span(90), "90s");
    }

    #[test]
    fn user_job_deserialises_and_overrides() {
        let job: JobDef = serde_json::from_value(json!({
            "id": "rare_destination_country",
            "function": "rare",
            "by_field_name": "destination.geo.country_name",
            "partition_field_name": "host.name",
            "bucket_span": "1h",
            "filters": [{"category_contains": "network"}, "not_shipping_agent",
                        {"network_direction_not": ["inbound"]},
                        {"public_destination": "destination.ip"}],
            "influencers": ["source.ip"]
        }))
        .unwrap();
        assert_eq!(job.bucket_span_secs, 3600);
        assert_eq!(job.partition_field.as_deref(), Some("host.name"));
        assert_eq!(job.filters.len(), 4);
        let c = JobCatalog::builtin().with_overrides([job]).unwrap();
        assert_eq!(c.len(), 9);
        assert_eq!(
            c.get("rare_destination_country").unwrap().bucket_span_secs,
            3600
        );

        let round = serde_json::to_value(c.get("rare_destination_country").unwrap()).unwrap();
        assert_eq!(round["bucket_span"], json!("1h"));
        assert_eq!(
            round["by_field_name"],
            json!("destination.geo.country_name")
        );
    }

    #[test]
    fn user_job_rejects_unknown_keys_and_bad_values() {
        let unknown = serde_json::from_value::<JobDef>(json!({
            "id": "x", "function": "rare", "by_field_name": "a", "bucket_span": "15m",
            "by_field": "oops"
        }));
        assert!(unknown.is_err());
        let bad_fn = serde_json::from_value::<JobDef>(json!({
            "id": "x", "function": "sometimes", "bucket_span": "15m"
        }));
        assert!(bad_fn.is_err());
        let bad_span = serde_json::from_value::<JobDef>(json!({
            "id": "x", "function": "count", "bucket_span": "15 minutes"
        }));
        assert!(bad_span.is_err());
    }

    #[test]
    fn with_overrides_collects_all_problems() {
        let mk = |id: &str, function, field_name: Option<&str>| JobDef {
            id: id.into(),
            function,
            field_name: field_name.map(Into::into),
            by_field: None,
            over_field: None,
            partition_field: None,
            bucket_span_secs: 60,
            filters: vec![],
            influencers: vec![],
            description: String::new(),
        };
        let errs = JobCatalog::builtin()
            .with_overrides([
                mk("a", Function::HighSum, None),
                mk("b", Function::Rare, None),
                mk("c", Function::Count, None),
                mk("c", Function::Count, None),
            ])
            .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs.iter().any(|e| e.to_string().contains("job `a`")));
        assert!(errs.iter().any(|e| e.to_string().contains("job `b`")));
        assert!(errs
            .iter()
            .any(|e| matches!(e, CatalogError::Duplicate { job_id } if job_id == "c")));
    }
}
