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

mod filter;
#[cfg(test)]
mod tests;

pub use filter::{
    is_shipping_agent, BoundFilter, Filter, FIELD_EVENT_CATEGORY, FIELD_NETWORK_DIRECTION,
    FIELD_PROCESS_NAME, SHIPPING_AGENTS,
};
pub(crate) use filter::{SharedFilters, Verdicts};

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
            shared: Vec::new(),
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
    /// The job's own filters, in order: all of them until [`SharedFilters::share`] moves those
    /// other jobs have too.
    pub(crate) filters: Vec<BoundFilter>,
    /// The indices of the job's filters that [`SharedFilters::share`] moved to the set it
    /// returned: checked after the job's own.
    pub(crate) shared: Vec<usize>,
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
    /// True when the event meets every filter of the job: its own, then those
    /// [`SharedFilters::share`] moved to `shared` (the set it returned; an empty set for a job
    /// bound alone). `verdicts` are the event's: what the shared filters answered, kept for the
    /// next job that asks; a new event starts from [`Verdicts::default`]. The one place the
    /// whole condition is written, for the scoring loop and the tests; `inline(always)` keeps
    /// it as cheap as the two checks written in the loop.
    #[inline(always)]
    pub(crate) fn qualifies(
        &self,
        event: &Event<'_>,
        shared: &SharedFilters,
        verdicts: &mut Verdicts,
    ) -> bool {
        self.filters.iter().all(|f| f.matches(event))
            && shared.qualify(&self.shared, event, verdicts)
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
