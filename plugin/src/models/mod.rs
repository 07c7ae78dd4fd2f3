//! Anomaly models: the per-event scoring core of egresswatch.
//!
//! A *model* reproduces one Elastic ML detector (`rare`, `high_sum`) inline: it sees one event at a
//! time, on event time, and answers with a score 0-100 for that event. The caller (the job layer)
//! extracts the fields, builds an [`Observation`], and compares [`Scored::score`] with the rule's
//! `anomaly_threshold`; it must not flag while [`Scored::learning`] is set.
//!
//! # Design choices
//!
//! - **Event time only.** No clock, no I/O: time comes in [`Observation::time_ms`]. Buckets are
//!   `time_ms.div_euclid(bucket_span)`; the newest bucket seen is the *head*. Events for a bucket
//!   up to `lateness_buckets` behind the head still count into their own bucket; older ("far-late")
//!   events are scored against the model but change nothing. The host's clock comes along in
//!   [`Observation::arrival_ms`] only to bound how far ahead an event may be believed: one
//!   forged timestamp cannot age a model (see [`engine::Clock`]).
//! - **One score mapping.** Both models turn a probability `p` of what was seen into a score with
//!   the same monotone curve of `-log10 p` ([`engine::score_from_log10_p`]), so 75 means the same
//!   surprise in both.
//! - **Bounded, spray-resistant memory.** Every tracked key goes through [`engine::KeyTable`]: new
//!   keys wait in a small probationary table, established keys are only displaced by keys that
//!   have built up more evidence than them (see its docs for the policy).
//! - **Mergeable state.** State is counts, decayed weights and histograms keyed by 64-bit keyed
//!   hashes, serialised with postcard by [`Model::save`]; nothing depends on arrival order beyond
//!   the bucket clock, so state can be partitioned by key upstream.
//! - **No allocation per event.** [`Scored`] is plain numbers; the reason text is built on demand
//!   by [`Scored::reason`], which the caller only calls for flagged events.

use std::fmt;

pub mod engine;
pub mod high_sum;
pub mod rare;

pub use engine::ModelConfig;
pub use high_sum::{HighSum, HighSumConfig};
pub use rare::{Rare, RareConfig};

use crate::catalog::Function;
use engine::round_count;

/// One model as the registry knows it: the ML function it implements, its default settings, and
/// how to build it from settings.
#[derive(Clone, Copy)]
pub struct Registration {
    /// The Elastic ML function the model reproduces.
    pub function: Function,
    /// The model's default time grid, learning, forgetting and memory settings.
    pub defaults: fn() -> ModelConfig,
    /// Builds the model with the given settings (its other parameters at their defaults).
    pub build: fn(ModelConfig) -> Result<Box<dyn Model>, ModelError>,
}

/// Every model, one line each: a new model is its own file plus a line here.
pub const REGISTRY: &[Registration] = &[rare::REGISTRATION, high_sum::REGISTRATION];

/// The model that implements `function`, if there is one yet.
pub fn registration(function: Function) -> Option<&'static Registration> {
    REGISTRY.iter().find(|r| r.function == function)
}

/// Version written at the front of every saved state; bumped on any layout change (3: keys are
/// rapidhash, no longer SipHash-1-3, so a state of version 2 is refused and the models relearn;
/// 4: `high_sum` saves the closed buckets it is still folding, after everything else).
pub const STATE_VERSION: u32 = 4;

/// The previous version, still read: [`engine::decode_state`] takes the bytes that make a state
/// of that version one of this version.
pub const PREVIOUS_STATE_VERSION: u32 = 3;

/// One event as a model sees it: the fields the job extracted from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    /// Event time in milliseconds since the Unix epoch (`@timestamp`).
    pub time_ms: i64,
    /// When the host received the event, by its clock (ms since the epoch): bounds how far
    /// ahead of it an event's time is believed (see [`engine::Clock`]).
    pub arrival_ms: i64,
    /// The `by` field value (for `rare`: the value whose rarity is scored).
    pub by: Option<&'a str>,
    /// The `over` field value (population analysis: the entity).
    pub over: Option<&'a str>,
    /// The `partition` field value (a separate model per value).
    pub partition: Option<&'a str>,
    /// The numeric field (for `high_sum`: the bytes of this event). Ignored by `rare`.
    pub value: f64,
}

/// The score of one event and the numbers behind it. Plain data: building it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Anomaly score 0-100 (Elastic bands: 75 critical, 50 major, 25 minor, 3 warning).
    pub score: f64,
    /// True while the model (this partition) is still learning: never flag such an event.
    pub learning: bool,
    /// True when the event was older than the lateness window: scored, but not learned from.
    pub far_late: bool,
    /// Start of the event's bucket, ms since the epoch.
    pub bucket_start_ms: i64,
    /// Length of a bucket in ms.
    pub bucket_span_ms: i64,
    /// What was seen (rare: share of past buckets with this value; high_sum: the running sum).
    /// What was expected is [`Scored::typical`].
    pub actual: f64,
    /// Model-specific figures for the reason and the alert's extra fields, and what was
    /// expected.
    pub detail: Detail,
}

// At 136 bytes the detector copied each `Scored` with a `memcpy` call, about 30 instructions
// per model and event (measured in #12, see `Scored::typical`): a field that makes it larger
// must be weighed against that.
const _: () = assert!(std::mem::size_of::<Scored>() <= 128);

/// A `high_sum` event's typical sum ([`Scored::typical`]) in the form the model holds it.
///
/// An established entity's typical sum is the exponential of its log-mean: `exp` costs about 50
/// instructions, and the figure is read only for alerts and score records, so it is taken there
/// ([`Typical::value`]), not on every event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Typical {
    /// The figure itself (a new entity's: the population's median).
    Value(f64),
    /// The natural logarithm of the figure (an established entity's log-mean).
    Ln(f32),
}

impl Typical {
    /// The figure.
    pub fn value(self) -> f64 {
        match self {
            Typical::Value(v) => v,
            Typical::Ln(ln) => f64::from(ln).exp(),
        }
    }
}

/// Model-specific figures carried by a [`Scored`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detail {
    /// Figures of a `rare` score.
    Rare {
        /// What was expected: the share of past buckets with the partition's most common value.
        typical: f64,
        /// Past buckets (or entity-buckets with `over`) in which the value appeared, not decayed.
        buckets_with_value: u64,
        /// Past buckets (or entity-buckets) with any data in this partition, not decayed.
        buckets_total: u64,
        /// Start of the first bucket in which the value was seen, if it is tracked.
        first_seen_ms: Option<i64>,
        /// Start of the partition's first bucket (the history the counts cover).
        history_start_ms: i64,
        /// Whether counts are entity-buckets (`over` set) rather than buckets.
        population: bool,
        /// Days before today on which the value appeared (decayed; the reason and the extra
        /// fields round it: rounding is about 24 instructions, and only alerts read it).
        days_with_value: f64,
        /// Days before today with data in this partition (decayed; rounded where it is read).
        days_total: f64,
        /// Buckets in the value's current session, this one included.
        session_buckets: u64,
        /// The value's longest session before this one, in buckets (0: never seen).
        longest_session: u64,
    },
    /// Figures of a `high_sum` score.
    HighSum {
        /// What was expected: the entity's typical bucket sum, or the population's median for
        /// an entity not established yet.
        typical: Typical,
        /// The entity's running sum in this bucket, including this event.
        bucket_sum: f64,
        /// 99.9th percentile of completed bucket sums across the population (0 when unknown).
        population_p99_9: f64,
        /// Completed buckets in which this entity had data (decayed; rounded where it is read).
        entity_buckets_seen: f64,
    },
}

/// A value in the alert's extra fields.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraValue {
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
}

impl Scored {
    /// What was expected (rare: share of past buckets with the partition's most common value;
    /// high_sum: the entity's typical bucket sum, or the population median for a new entity).
    ///
    /// Kept in the [`Detail`]: in its variant it leaves `Scored` at 128 bytes, where a field of
    /// its own made it 136, and a `Scored` that size was copied by a `memcpy` call (~30
    /// instructions) per model and event.
    pub fn typical(&self) -> f64 {
        match self.detail {
            Detail::Rare { typical, .. } => typical,
            Detail::HighSum { typical, .. } => typical.value(),
        }
    }

    /// A human reason for the alert. `field` is the field's display name (e.g. "destination
    /// country"), `value` the value or entity it is about (e.g. "North Korea", "203.0.113.7").
    ///
    /// Written piece by piece into one string sized once (no `format!`, no string per number):
    /// it is on every alert's path.
    pub fn reason(&self, field: &str, value: &str) -> String {
        use egresswatch_common::human::{push_bytes, push_count, push_duration_ms};
        let mut text = String::with_capacity(field.len() + value.len() + 160);
        match self.detail {
            Detail::Rare {
                buckets_with_value,
                buckets_total,
                history_start_ms,
                population,
                days_with_value,
                days_total,
                session_buckets,
                longest_session,
                ..
            } => {
                text.push_str(field);
                text.push(' ');
                text.push_str(value);
                text.push_str(" seen in ");
                push_count(&mut text, buckets_with_value);
                text.push_str(" of ");
                push_count(&mut text, buckets_total);
                text.push(' ');
                push_duration_ms(&mut text, self.bucket_span_ms);
                text.push_str(if population {
                    " entity-buckets over "
                } else {
                    " buckets over "
                });
                push_duration_ms(&mut text, (self.bucket_start_ms - history_start_ms).max(0));
                if buckets_with_value > 0 {
                    text.push_str(", on ");
                    push_count(&mut text, round_count(days_with_value));
                    text.push_str(" of ");
                    push_count(&mut text, round_count(days_total));
                    text.push_str(" days");
                }
                if session_buckets > longest_session.max(1) {
                    let mut n = itoa::Buffer::new();
                    text.push_str("; now ");
                    text.push_str(n.format(session_buckets));
                    text.push(' ');
                    push_duration_ms(&mut text, self.bucket_span_ms);
                    text.push_str(" buckets in a row");
                    if longest_session > 0 {
                        text.push_str(" (longest before: ");
                        text.push_str(n.format(longest_session));
                        text.push(')');
                    }
                }
            }
            Detail::HighSum {
                bucket_sum,
                population_p99_9,
                ..
            } => {
                push_bytes(&mut text, bucket_sum);
                text.push_str(" sent to ");
                text.push_str(field);
                text.push(' ');
                text.push_str(value);
                text.push_str(" in this ");
                push_duration_ms(&mut text, self.bucket_span_ms);
                text.push_str(" bucket; typical ");
                push_bytes(&mut text, self.typical());
                text.push_str(", 99.9th percentile of ");
                text.push_str(field);
                text.push_str(" values ");
                push_bytes(&mut text, population_p99_9);
            }
        }
        text
    }

    /// The alert's extra fields: rare: `buckets_with_value`, `buckets_total`, `days_with_value`,
    /// `days_total`, `session_buckets`, `first_seen_ms`;
    /// high_sum: `bucket_sum`, `population_p99_9`, `entity_buckets_seen`.
    pub fn extra(&self) -> Vec<(&'static str, ExtraValue)> {
        let clamp = |n: u64| ExtraValue::Int(i64::try_from(n).unwrap_or(i64::MAX));
        match self.detail {
            Detail::Rare {
                buckets_with_value,
                buckets_total,
                first_seen_ms,
                days_with_value,
                days_total,
                session_buckets,
                ..
            } => {
                let mut v = vec![
                    ("buckets_with_value", clamp(buckets_with_value)),
                    ("buckets_total", clamp(buckets_total)),
                    ("days_with_value", clamp(round_count(days_with_value))),
                    ("days_total", clamp(round_count(days_total))),
                    ("session_buckets", clamp(session_buckets)),
                ];
                if let Some(t) = first_seen_ms {
                    v.push(("first_seen_ms", ExtraValue::Int(t)));
                }
                v
            }
            Detail::HighSum {
                bucket_sum,
                population_p99_9,
                entity_buckets_seen,
                ..
            } => vec![
                ("bucket_sum", ExtraValue::Float(bucket_sum)),
                ("population_p99_9", ExtraValue::Float(population_p99_9)),
                (
                    "entity_buckets_seen",
                    clamp(round_count(entity_buckets_seen)),
                ),
            ],
        }
    }
}

/// What a model reports for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelStatus {
    /// True while no partition has finished learning yet.
    pub learning: bool,
    /// Most buckets with data seen by any partition.
    pub buckets_seen: u64,
    /// Buckets a partition needs before it may flag.
    pub learning_buckets: u64,
    /// Partitions tracked.
    pub partitions: usize,
    /// Established keys tracked.
    pub tracked_entities: usize,
    /// Probationary keys tracked.
    pub probationary_entities: usize,
    /// Approximate heap bytes of the model state (tables at their capacity).
    pub approx_bytes: usize,
    /// Keys evicted so far.
    pub evictions: u64,
    /// Events that arrived after their bucket had closed (scored, not learned).
    pub far_late_events: u64,
    /// Events whose time was not believed (too far ahead of the host clock or of the others):
    /// counted into the current bucket, never moving the clock.
    pub future_events: u64,
    /// Events that could not be scored (missing field, bad value or time, partition cap).
    pub unscored_events: u64,
}

/// A detector that scores events one at a time.
pub trait Model: Send {
    /// Scores one event and learns from it. `None` when the event cannot be scored (a required
    /// field missing, a non-finite value, a time outside the representable range, or a new
    /// partition beyond the cap).
    fn observe(&mut self, obs: &Observation<'_>) -> Option<Scored>;
    /// Learning progress, sizes and counters.
    fn status(&self) -> ModelStatus;
    /// Writes the full state (postcard) into `out`, to persist or ship, without building it
    /// in memory first: a save adds a buffer's worth to the heap, not the state's size. What is
    /// written is what [`Model::load`] reads back. A failing `out` ends the save with an error;
    /// what was written before it is then incomplete.
    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), ModelError>;
    /// Replaces the state with saved bytes. On error the current state is kept.
    fn load(&mut self, bytes: &[u8]) -> Result<(), ModelError>;
}

/// A problem with a model's configuration or saved state.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration is invalid; every problem found is listed.
    #[error("invalid model configuration: {}", ConfigProblems(.0))]
    Config(Vec<ConfigProblem>),
    /// The state could not be encoded or decoded.
    #[error("model state codec: {0}")]
    Codec(#[from] postcard::Error),
    /// The saved state was written by another state layout version.
    #[error("model state version {found} is not supported (expected {expected})")]
    Version {
        /// Version found in the bytes.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// A value of the saved state is out of range (a damaged or crafted state).
    #[error("model state: {field} is {value}, out of range")]
    Invalid {
        /// The state field at fault.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// Parts of the saved state disagree with each other, in a way no version of the model
    /// writes (a crafted state, or one from another writer).
    #[error("model state: {field} disagrees with the rest of the state: {what}")]
    Inconsistent {
        /// The state field at fault.
        field: &'static str,
        /// What is wrong with it.
        what: String,
    },
    /// The saved state belongs to another model kind or an incompatible configuration.
    #[error("model state does not match the configuration: {field} is {state} in the state, {config} in the configuration")]
    Mismatch {
        /// The configuration key that differs.
        field: &'static str,
        /// Its value in the state.
        state: String,
        /// Its value in the configuration.
        config: String,
    },
}

/// One invalid configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The configuration key at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

struct ConfigProblems<'a>(&'a [ConfigProblem]);

impl fmt::Display for ConfigProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason as it was written with `format!` before it was built piece by piece: the
    /// oracle the new text must match byte for byte.
    fn formatted_reason(s: &Scored, field: &str, value: &str) -> String {
        use egresswatch_common::human::{bytes, count, duration_ms};
        let span = duration_ms(s.bucket_span_ms);
        match s.detail {
            Detail::Rare {
                buckets_with_value,
                buckets_total,
                history_start_ms,
                population,
                days_with_value,
                days_total,
                session_buckets,
                longest_session,
                ..
            } => {
                let unit = if population {
                    "entity-buckets"
                } else {
                    "buckets"
                };
                let history = (s.bucket_start_ms - history_start_ms).max(0);
                let mut text = format!(
                    "{field} {value} seen in {} of {} {span} {unit} over {}",
                    count(buckets_with_value),
                    count(buckets_total),
                    duration_ms(history)
                );
                if buckets_with_value > 0 {
                    let round = |d: f64| d.round() as u64;
                    let (with, total) = (count(round(days_with_value)), count(round(days_total)));
                    text.push_str(&format!(", on {with} of {total} days"));
                }
                if session_buckets > longest_session.max(1) {
                    text.push_str(&format!("; now {session_buckets} {span} buckets in a row"));
                    if longest_session > 0 {
                        text.push_str(&format!(" (longest before: {longest_session})"));
                    }
                }
                text
            }
            Detail::HighSum {
                bucket_sum,
                population_p99_9,
                ..
            } => format!(
                "{} sent to {field} {value} in this {span} bucket; typical {}, 99.9th percentile \
                 of {field} values {}",
                bytes(bucket_sum),
                bytes(s.typical()),
                bytes(population_p99_9)
            ),
        }
    }

    #[test]
    fn the_reason_reads_as_it_did_with_format() {
        let mut checked = 0;
        let mut x = 0.37_f64;
        for i in 0..3000u64 {
            x = (x * 3.7 + 0.11).fract();
            let big = 10f64.powf(x * 13.0);
            let span = [900_000, 10_800_000, 5_400_000, 60_000, 86_400_000][i as usize % 5];
            let start = 1_700_000_000_000 + i as i64 * 900_000;
            // The decayed counts: every third score's on or just under a half, where rounding
            // half up (the reason's and the extra fields'), half to even and truncating differ.
            let half = [0.5, 2.49, 2.5, 3.5][i as usize % 4];
            let (days_with, days_total, entity_buckets) = if i % 3 == 0 {
                (half, half + 1.0, half + 2.0)
            } else {
                (
                    (i % 5) as f64 * x * 1.5,
                    (i % 31 + 1) as f64 + x,
                    i as f64 * x,
                )
            };
            let scored = |detail| Scored {
                score: 80.0,
                learning: false,
                far_late: false,
                bucket_start_ms: start,
                bucket_span_ms: span,
                actual: big,
                detail,
            };
            let rare = scored(Detail::Rare {
                typical: x,
                buckets_with_value: i % 7 * 1_234,
                buckets_total: i * 977,
                first_seen_ms: None,
                history_start_ms: start - (i as i64 % 40) * 3_600_000 - 1_000,
                population: i % 2 == 0,
                days_with_value: days_with,
                days_total,
                session_buckets: i % 9,
                longest_session: i % 4,
            });
            // Half the high_sum scores hold a log-mean (an established entity's), which is
            // read as its exp taken in f64.
            let ln = (big * x).ln() as f32;
            let typical = [Typical::Value(big * x), Typical::Ln(ln)][i as usize % 2];
            let sum = scored(Detail::HighSum {
                typical,
                bucket_sum: big,
                population_p99_9: big / (1.0 + x * 1e4),
                entity_buckets_seen: entity_buckets,
            });
            let extra = |s: &Scored, name: &str| {
                let found = s.extra().into_iter().find(|(n, _)| *n == name);
                found.map(|(_, v)| v)
            };
            let rounded = |d: f64| Some(ExtraValue::Int(d.round() as i64));
            assert_eq!(extra(&rare, "days_with_value"), rounded(days_with));
            assert_eq!(extra(&rare, "days_total"), rounded(days_total));
            assert_eq!(extra(&sum, "entity_buckets_seen"), rounded(entity_buckets));
            let expected = [big * x, f64::from(ln).exp()][i as usize % 2];
            assert_eq!(sum.typical().to_bits(), expected.to_bits(), "{sum:?}");
            for s in [rare, sum] {
                let (field, value) = ("destination.ip", "203.0.113.7");
                assert_eq!(s.reason(field, value), formatted_reason(&s, field, value));
                checked += 1;
            }
        }
        assert_eq!(checked, 6000);
    }

    #[test]
    fn the_registry_builds_each_model_with_its_own_defaults() {
        for function in [Function::Rare, Function::HighSum] {
            let entry = registration(function).expect("registered");
            let mut config = (entry.defaults)();
            assert!(config.problems().is_empty(), "{function}: {config:?}");
            config.learning_buckets = 3;
            let model = (entry.build)(config).expect("builds");
            assert_eq!(model.status().learning_buckets, 3);
        }
        assert!(registration(Function::Count).is_none());
        let mut bad = (registration(Function::Rare).unwrap().defaults)();
        bad.max_entities = 1;
        assert!((registration(Function::Rare).unwrap().build)(bad).is_err());
    }
}
