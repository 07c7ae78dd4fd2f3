//! Turning a flagged event into an alert: the fields egresswatch adds, and where.
//!
//! **Collision policy: add, never replace.** An annotated event is the original event, every
//! byte of it, plus the detection. The fields are inserted into the original line at offsets
//! the scan recorded ([`crate::fields::Event::write`]); nothing is re-serialised, removed,
//! renamed or overwritten.
//!
//! - The whole detection always goes under `egresswatch`, our namespace: the rule that fired
//!   (`egresswatch.rule.*`), its MITRE mapping (`egresswatch.threat`) and what the model found.
//!   A SIEM query on `egresswatch.rule.id` finds every alert, whatever the event carried.
//! - The ECS fields Elastic's own alerts use are written too, each only where the event has
//!   none: `event.kind`, `event.severity`, `event.risk_score`, `rule.*` and `threat` (the last
//!   two as wholes: a rule half from the firewall and half from egresswatch would be worse than
//!   either). So a plain network event becomes an ECS alert, and a PAN-OS or Suricata event keeps
//!   its own `rule.name`, severity and `threat.*` while our rule sits in `egresswatch.rule`.
//! - The rule's tags go to `egresswatch.rule.tags`; the event's own `tags` are left alone.
//! - A country added by GeoIP is written at `destination.geo.country_name` /
//!   `country_iso_code` (only ever absent there, since enrichment runs only then), in the same
//!   `destination` object the address was read from.
//! - A *suppressed follower* ([`crate::suppression`]: a later flagged event of an alert's
//!   episode) is not a new alert: it gets only the `egresswatch` object (with
//!   `egresswatch.alert.id` naming its alert) and the GeoIP country, none of the ECS alert fields.
//! - What cannot be written at all (an event with its own `egresswatch` field, a `destination.geo`
//!   that is not an object) is reported to the caller as a [`Failure`]: the event is still an
//!   alert (counted and routed), with the detection wherever it could go.
//!
//! | field | type | value |
//! |---|---|---|
//! | `event.kind` | keyword | `"alert"` (when absent) |
//! | `event.severity` | long | the rule's severity as Elastic numbers it: low 21, medium 47, high 73, critical 99 (when absent) |
//! | `event.risk_score` | float | the rule's `risk_score` (when absent) |
//! | `rule.id`, `rule.uuid` | keyword | the rule's `rule_id` (when the event has no `rule`) |
//! | `rule.name`, `rule.description` | keyword, text | the rule's (likewise) |
//! | `rule.ruleset` | keyword | `"egresswatch"` (likewise) |
//! | `rule.author`, `rule.reference`, `rule.license` | keyword | the rule's, when it has them (likewise) |
//! | `threat` | object[] | the rule's `[[rule.threat]]` as Elastic writes it: `framework`, `tactic{id,name,reference}`, `technique[{id,name,reference,subtechnique[..]}]` (when absent) |
//! | `destination.geo.country_name` / `country_iso_code` | keyword | from GeoIP, when the event had no country |
//! | `egresswatch.rule.*` | | `id`, `uuid`, `name`, `description`, `ruleset`, `severity` (word), `risk_score`, `tags`, `author`, `reference`, `license` |
//! | `egresswatch.threat` | object[] | as `threat` |
//! | `egresswatch.job_id` | keyword | job that scored the event |
//! | `egresswatch.function` | keyword | detector function (`rare`, `high_sum`) |
//! | `egresswatch.score` | float | anomaly score 0-100 |
//! | `egresswatch.anomaly_threshold` | long | the rule's `anomaly_threshold` (when set) |
//! | `egresswatch.severity` | keyword | the rule's `severity` word |
//! | `egresswatch.bucket_start` | date | start of the event's bucket, RFC 3339 UTC (`2024-05-01T09:00:00Z`) |
//! | `egresswatch.actual` / `typical` | double | what was seen / expected; whole numbers (bytes) for sums |
//! | `egresswatch.influencers` | object[] | `{"field": "source.ip", "value": "10.0.0.5"}` for each influencer of the job present in the event |
//! | `egresswatch.reason` | text | one sentence a person can act on |
//! | `egresswatch.alert` | object | `id` (keyword: the alert's id, 16 hex digits), `count` (long: flagged events of its episode so far), `suppressed` (boolean: true on a follower) |
//! | `egresswatch.<key>` | long or double | the model's own figures ([`AlertDetail::extra`]): counts and bytes as integers |

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

use crate::catalog::Function;
use crate::fields::{push_json_str, Add, Collision, Event, FieldId, SchemaBuilder};
use crate::geo::Country;
use crate::models::ExtraValue;
use crate::rules::Rule;
use crate::suppression::AlertRef;

#[cfg(test)]
mod tests;

/// Value written to `rule.ruleset`.
pub const RULESET: &str = "egresswatch";
/// Value written to `event.kind`.
pub const EVENT_KIND_ALERT: &str = "alert";
/// Top-level object holding egresswatch's own alert fields.
pub const ROOT: &str = "egresswatch";

/// Keys egresswatch writes in its object; a model's extra figure of the same name is dropped.
const OWN_KEYS: [&str; 13] = [
    "rule",
    "threat",
    "job_id",
    "function",
    "score",
    "anomaly_threshold",
    "severity",
    "bucket_start",
    "actual",
    "typical",
    "influencers",
    "reason",
    "alert",
];

/// The event fields alerts write, resolved for the scanner when the detector is built.
#[derive(Debug, Clone)]
pub struct AlertFields {
    event_kind: FieldId,
    event_severity: FieldId,
    event_risk_score: FieldId,
    rule: FieldId,
    threat: FieldId,
    root: FieldId,
    country_name: FieldId,
    country_iso: FieldId,
}

impl AlertFields {
    /// Registers the fields alerts write, so that every scan records whether they are there
    /// and where their parent objects end.
    pub fn register(
        schema: &mut SchemaBuilder,
        country_name: FieldId,
        country_iso: FieldId,
    ) -> Self {
        AlertFields {
            event_kind: schema.field("event.kind"),
            event_severity: schema.field("event.severity"),
            event_risk_score: schema.field("event.risk_score"),
            rule: schema.group("rule"),
            threat: schema.group("threat"),
            root: schema.group(ROOT),
            country_name,
            country_iso,
        }
    }
}

/// A rule's part of every alert, serialised once when the detector is built.
#[derive(Debug, Clone)]
pub struct RuleTexts {
    /// The ECS `rule` object.
    ecs_rule: String,
    /// `egresswatch.rule`.
    ours: String,
    /// `threat`, when the rule maps to MITRE.
    threat: Option<String>,
    severity_score: String,
    risk_score: String,
    severity_word: String,
    threshold: Option<u8>,
}

impl RuleTexts {
    /// The texts for `rule`.
    pub fn new(rule: &Rule) -> Self {
        let mut ecs = serde_json::Map::new();
        ecs.insert("id".into(), rule.rule_id.clone().into());
        ecs.insert("uuid".into(), rule.rule_id.clone().into());
        ecs.insert("name".into(), rule.name.clone().into());
        ecs.insert("description".into(), rule.description.clone().into());
        ecs.insert("ruleset".into(), RULESET.into());
        if !rule.author.is_empty() {
            ecs.insert("author".into(), rule.author.clone().into());
        }
        if !rule.references.is_empty() {
            ecs.insert("reference".into(), rule.references.clone().into());
        }
        if let Some(license) = &rule.license {
            ecs.insert("license".into(), license.clone().into());
        }
        let mut ours = ecs.clone();
        ours.insert("severity".into(), rule.severity.as_str().into());
        ours.insert("risk_score".into(), rule.risk_score.into());
        ours.insert("tags".into(), rule.tags.clone().into());
        let threat = (!rule.threat.is_empty())
            .then(|| serde_json::to_string(&rule.threat).unwrap_or_default());
        RuleTexts {
            ecs_rule: Value::Object(ecs).to_string(),
            ours: Value::Object(ours).to_string(),
            threat,
            severity_score: rule.severity.score().to_string(),
            risk_score: rule.risk_score.to_string(),
            severity_word: json_str(rule.severity.as_str()),
            threshold: rule.anomaly_threshold,
        }
    }
}

/// What the model found, to be written into the alert (the detector fills it from the score;
/// which figures it carries is the models' business, how they are written is this module's).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertDetail {
    /// Job that scored the event.
    pub job_id: String,
    /// Detector function of the job.
    pub function: Function,
    /// Anomaly score, 0-100.
    pub score: f64,
    /// Start of the event's bucket, in seconds since the Unix epoch (UTC).
    pub bucket_start: i64,
    /// The value seen, when the model has one (bucket sum; share of buckets for `rare`).
    pub actual: Option<f64>,
    /// The value expected, when the model has one.
    pub typical: Option<f64>,
    /// Influencer fields of the job, by path; their values are copied from the event.
    pub influencers: Vec<(String, FieldId)>,
    /// Short reason a person can act on.
    pub reason: String,
    /// Model-specific figures, written under `egresswatch.`.
    pub extra: Vec<(&'static str, ExtraValue)>,
    /// The alert the event is, or (suppressed) belongs to; written at `egresswatch.alert`.
    pub alert: Option<AlertRef>,
}

/// A part of the detection that could not be written on the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The field that was not written (`egresswatch`, `destination.geo.country_name`).
    pub field: &'static str,
    /// Why.
    pub collision: Collision,
}

/// Path of the country name GeoIP adds.
const COUNTRY_NAME: &str = "destination.geo.country_name";
/// Path of the country code GeoIP adds.
const COUNTRY_ISO: &str = "destination.geo.country_iso_code";

/// Writes the alert for `event` into `out` (the original line with the alert fields inserted);
/// returns what could not be written. `out` is the original line unchanged when nothing could.
pub fn annotate(
    event: &Event<'_>,
    fields: &AlertFields,
    rule: &RuleTexts,
    detail: &AlertDetail,
    country: Option<Country>,
    out: &mut String,
) -> Vec<Failure> {
    let members = members(event, fields, rule, detail, country);
    let adds: Vec<Add<'_>> = members
        .iter()
        .map(|(id, _, value)| Add::Field(*id, value))
        .collect();
    failures(fields, event.write(&adds, out))
}

/// The alert for `event` as a set of fields instead of text inserted into the line (for faces
/// that hold the event as a structure, such as the C face): each field [`annotate`] would
/// write, by path, with its JSON value, is pushed to `out`; returns what could not be written,
/// as [`annotate`] does. Where a field goes (the nearest existing parent object in the form
/// the event is read in) is the caller's to find, as [`Event::write`] does for a line.
pub fn fields(
    event: &Event<'_>,
    fields: &AlertFields,
    rule: &RuleTexts,
    detail: &AlertDetail,
    country: Option<Country>,
    out: &mut Vec<(&'static str, String)>,
) -> Vec<Failure> {
    let mut refused = Vec::new();
    for (id, path, value) in members(event, fields, rule, detail, country) {
        match event.writable(id) {
            Ok(()) => out.push((path, value.into_owned())),
            Err(collision) => refused.push((id, collision)),
        }
    }
    failures(fields, refused)
}

/// Every field of the alert: its id, its path and its value as JSON text.
fn members<'r>(
    event: &Event<'_>,
    fields: &AlertFields,
    rule: &'r RuleTexts,
    detail: &AlertDetail,
    country: Option<Country>,
) -> Vec<(FieldId, &'static str, Cow<'r, str>)> {
    // Room for every member at once (ours, four ECS fields, the threat, two country fields):
    // grown from one, the list was reallocated twice an alert (-403 Ir measured, #12).
    let mut members = Vec::with_capacity(8);
    members.push((fields.root, ROOT, Cow::Owned(ours(event, rule, detail))));
    // A suppressed follower is not a new alert: no ECS alert fields.
    if !detail.alert.is_some_and(|a| a.suppressed) {
        members.extend([
            (fields.event_kind, "event.kind", Cow::Borrowed("\"alert\"")),
            (
                fields.event_severity,
                "event.severity",
                Cow::Borrowed(rule.severity_score.as_str()),
            ),
            (
                fields.event_risk_score,
                "event.risk_score",
                Cow::Borrowed(rule.risk_score.as_str()),
            ),
            (fields.rule, "rule", Cow::Borrowed(rule.ecs_rule.as_str())),
        ]);
        if let Some(threat) = &rule.threat {
            members.push((fields.threat, "threat", Cow::Borrowed(threat.as_str())));
        }
    }
    if let Some(country) = country {
        members.push((
            fields.country_name,
            COUNTRY_NAME,
            json_str(country.name()).into(),
        ));
        members.push((
            fields.country_iso,
            COUNTRY_ISO,
            json_str(country.iso_code()).into(),
        ));
    }
    debug_assert!(members.len() <= 8, "the list's room is for eight members");
    members
}

/// The refused fields that are failures: ECS fields the event already has are not (ours is in
/// `egresswatch`, by policy).
fn failures(fields: &AlertFields, refused: Vec<(FieldId, Collision)>) -> Vec<Failure> {
    refused
        .into_iter()
        .filter_map(|(id, collision)| {
            let field = if id == fields.root {
                ROOT
            } else if id == fields.country_name {
                COUNTRY_NAME
            } else if id == fields.country_iso {
                COUNTRY_ISO
            } else {
                return None;
            };
            Some(Failure { field, collision })
        })
        .collect()
}

/// The `egresswatch` object. Written piece by piece into one buffer: no `format!`, no string
/// per number or per escaped text (a flagged event's alert is on the hot path of an attack).
fn ours(event: &Event<'_>, rule: &RuleTexts, d: &AlertDetail) -> String {
    let sums = matches!(
        d.function,
        Function::Sum | Function::HighSum | Function::LowSum
    );
    // Room for all of it at once: growing a string of kilobytes copies it each time.
    let threat = rule.threat.as_ref().map_or(0, String::len);
    let mut o = String::with_capacity(rule.ours.len() + threat + 2 * d.reason.len() + 1024);
    o.push_str("{\"rule\":");
    o.push_str(&rule.ours);
    if let Some(threat) = &rule.threat {
        o.push_str(",\"threat\":");
        o.push_str(threat);
    }
    o.push_str(",\"job_id\":");
    push_json_str(&mut o, &d.job_id);
    o.push_str(",\"function\":\"");
    o.push_str(d.function.as_str());
    o.push_str("\",\"score\":");
    push_number(&mut o, d.score, false);
    if let Some(t) = rule.threshold {
        o.push_str(",\"anomaly_threshold\":");
        o.push_str(itoa::Buffer::new().format(t));
    }
    o.push_str(",\"severity\":");
    o.push_str(&rule.severity_word);
    o.push_str(",\"bucket_start\":\"");
    push_rfc3339(&mut o, d.bucket_start);
    o.push('"');
    if let Some(a) = d.actual {
        o.push_str(",\"actual\":");
        push_number(&mut o, a, sums);
    }
    if let Some(t) = d.typical {
        o.push_str(",\"typical\":");
        push_number(&mut o, t, sums);
    }
    o.push_str(",\"influencers\":[");
    let mut first = true;
    for (path, id) in &d.influencers {
        let Some(value) = event.raw(*id).filter(|_| event.present(*id)) else {
            continue;
        };
        if !first {
            o.push(',');
        }
        first = false;
        o.push_str("{\"field\":");
        push_json_str(&mut o, path);
        o.push_str(",\"value\":");
        o.push_str(&value);
        o.push('}');
    }
    o.push_str("],\"reason\":");
    push_json_str(&mut o, &d.reason);
    if let Some(a) = &d.alert {
        o.push_str(",\"alert\":{\"id\":\"");
        push_hex16(&mut o, a.id);
        o.push_str("\",\"count\":");
        o.push_str(itoa::Buffer::new().format(a.count));
        o.push_str(if a.suppressed {
            ",\"suppressed\":true}"
        } else {
            ",\"suppressed\":false}"
        });
    }
    for (key, value) in &d.extra {
        if OWN_KEYS.contains(key) {
            continue;
        }
        o.push(',');
        push_json_str(&mut o, key);
        o.push(':');
        match value {
            ExtraValue::Int(i) => o.push_str(itoa::Buffer::new().format(*i)),
            ExtraValue::Float(f) => push_number(&mut o, *f, sums),
        }
    }
    o.push('}');
    o
}

/// A JSON string.
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_json_str(&mut out, text);
    out
}

/// A 64-bit id as 16 lowercase hex digits (as [`AlertRef::id_text`] writes it).
fn push_hex16(out: &mut String, id: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(HEX[((id >> (shift * 4)) & 0xf) as usize]));
    }
}

/// Appends a JSON number: whole when `whole` (bytes and counts: a long in Elasticsearch, exact
/// beyond a float's 24 bits), `null` for NaN and infinities; otherwise the shortest text that
/// reads back as `x`, as serde_json writes it.
fn push_number(out: &mut String, x: f64, whole: bool) {
    if !x.is_finite() {
        out.push_str("null");
    } else if (whole && x.abs() < 9e18) || (x.fract() == 0.0 && x.abs() < 9e15) {
        out.push_str(itoa::Buffer::new().format(x.round() as i64));
    } else {
        out.push_str(zmij::Buffer::new().format_finite(x));
    }
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(epoch_secs: i64) -> String {
    let mut out = String::with_capacity(20);
    push_rfc3339(&mut out, epoch_secs);
    out
}

/// Appends [`rfc3339`]'s text to `out`.
fn push_rfc3339(out: &mut String, epoch_secs: i64) {
    let (year, month, day) =
        egresswatch_common::time::civil_from_days(epoch_secs.div_euclid(86_400));
    let secs = epoch_secs.rem_euclid(86_400);
    if (0..10_000).contains(&year) {
        let two = |out: &mut String, n: i64| {
            out.push(char::from(b'0' + (n / 10) as u8));
            out.push(char::from(b'0' + (n % 10) as u8));
        };
        two(out, year / 100);
        two(out, year % 100);
        out.push('-');
        two(out, month);
        out.push('-');
        two(out, day);
        out.push('T');
        two(out, secs / 3600);
        out.push(':');
        two(out, secs % 3600 / 60);
        out.push(':');
        two(out, secs % 60);
        out.push('Z');
    } else {
        // Years outside 0..=9999 (never from a real clock): as `format!` pads them.
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        );
    }
}
