//! Turning a flagged event into an alert: the fields egresswatch adds.
//!
//! [`annotate`] writes the fields below into the event, through [`event::insert`], so an event
//! that uses dotted keys (`"event.kind": "event"`) has them replaced where they are and a nested
//! event gets nested objects. Nothing is removed or renamed; fields that exist are overwritten
//! only where the table says so. Either every field is written or, on error, the event is left
//! exactly as it was.
//!
//! | field | type | value |
//! |---|---|---|
//! | `event.kind` | keyword | `"alert"` (overwrites the existing value: the event is now an alert) |
//! | `event.risk_score` | float | the rule's `risk_score` (0-100) |
//! | `event.severity` | long | number for the rule's `severity`, as Elastic maps it: low 21, medium 47, high 73, critical 99 |
//! | `rule.id` | keyword | the rule's `rule_id` |
//! | `rule.uuid` | keyword | the rule's `rule_id` (a UUID in Elastic's rules) |
//! | `rule.name` | keyword | the rule's `name` |
//! | `rule.description` | keyword | the rule's `description` |
//! | `rule.ruleset` | keyword | `"egresswatch"` |
//! | `tags` | keyword[] | the rule's `tags` appended to the event's (no repeats); a string `tags` becomes an array; a `tags` of another type is left alone |
//! | `threat.framework` | keyword | the rules' framework (`"MITRE ATT&CK"`); an array if the rule mixes frameworks |
//! | `threat.tactic.id` / `.name` / `.reference` | keyword[] | the rule's tactics, in rule order, without repeats |
//! | `threat.technique.id` / `.name` / `.reference` | keyword[] | the rule's techniques |
//! | `threat.technique.subtechnique.id` / `.name` / `.reference` | keyword[] | the rule's sub-techniques |
//! | `egresswatch.job_id` | keyword | job that scored the event |
//! | `egresswatch.function` | keyword | detector function (`rare`, `high_sum`) |
//! | `egresswatch.score` | float | anomaly score 0-100 |
//! | `egresswatch.anomaly_threshold` | long | the rule's `anomaly_threshold` (when set) |
//! | `egresswatch.severity` | keyword | the rule's `severity` word (ECS `event.severity` is numeric) |
//! | `egresswatch.bucket_start` | date | start of the event's bucket, RFC 3339 UTC (`2024-05-01T09:00:00Z`) |
//! | `egresswatch.actual` | float | the value seen (bucket sum, or occurrences) when the model gives one |
//! | `egresswatch.typical` | float | the value expected when the model gives one |
//! | `egresswatch.influencers` | object | each influencer field of the job present in the event, `{"source.ip": "10.0.0.5"}` |
//! | `egresswatch.reason` | text | one sentence a person can act on |
//! | `egresswatch.<key>` | any | each entry of [`AlertDetail::extra`] (model-specific); the keys above take precedence |
//!
//! Threat fields are written only when the rule has `[[rule.threat]]` entries; other `threat.*`
//! fields of the event (such as `threat.indicator.*`) are kept.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::catalog::Function;
use crate::event::{self, InsertError};
use crate::rules::Rule;

/// Value written to `rule.ruleset`.
pub const RULESET: &str = "egresswatch";
/// Value written to `event.kind`.
pub const EVENT_KIND_ALERT: &str = "alert";
/// Top-level object holding egresswatch's own alert fields.
pub const ROOT: &str = "egresswatch";

/// What the model found, to be written into the alert.
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
    /// The value seen, when the model has one (bucket sum; occurrences for `rare`).
    pub actual: Option<f64>,
    /// The value expected, when the model has one.
    pub typical: Option<f64>,
    /// Influencer field paths of the job; their values are copied from the event.
    pub influencers: Vec<String>,
    /// Short reason a person can act on.
    pub reason: String,
    /// Model-specific extra fields, written under `egresswatch.`.
    pub extra: Map<String, Value>,
}

/// Why an event could not be annotated; the event is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot annotate event: {0}")]
pub struct AnnotateError(#[from] pub InsertError);

/// Adds the alert fields described in the module documentation to `event`.
///
/// All or nothing: on error (the event is not an object, or a field path is blocked by an
/// existing scalar such as `"rule": "x"`) the event is left as it was.
pub fn annotate(event: &mut Value, rule: &Rule, detail: &AlertDetail) -> Result<(), AnnotateError> {
    let mut out = event.clone();
    write_all(&mut out, rule, detail)?;
    *event = out;
    Ok(())
}

fn write_all(ev: &mut Value, rule: &Rule, d: &AlertDetail) -> Result<(), InsertError> {
    // Influencer values are read before anything is written.
    let mut influencers = Map::new();
    for field in &d.influencers {
        if let Some(v) = event::get_present(ev, field) {
            influencers.insert(field.clone(), v.clone());
        }
    }

    let mut put = |path: &str, value: Value| event::insert(ev, path, value).map(drop);

    put("event.kind", EVENT_KIND_ALERT.into())?;
    put("event.risk_score", rule.risk_score.into())?;
    put("event.severity", rule.severity.score().into())?;
    put("rule.id", rule.rule_id.as_str().into())?;
    put("rule.uuid", rule.rule_id.as_str().into())?;
    put("rule.name", rule.name.as_str().into())?;
    put("rule.description", rule.description.as_str().into())?;
    put("rule.ruleset", RULESET.into())?;

    if !rule.threat.is_empty() {
        let mut frameworks = Vec::new();
        let mut tactics = Triple::default();
        let mut techniques = Triple::default();
        let mut subs = Triple::default();
        for t in &rule.threat {
            if !frameworks.contains(&t.framework) {
                frameworks.push(t.framework.clone());
            }
            tactics.push(&t.tactic.id, &t.tactic.name, &t.tactic.reference);
            for te in &t.technique {
                techniques.push(&te.id, &te.name, &te.reference);
                for s in &te.subtechnique {
                    subs.push(&s.id, &s.name, &s.reference);
                }
            }
        }
        let framework = match frameworks.len() {
            1 => Value::String(frameworks.remove(0)),
            _ => frameworks.into(),
        };
        put("threat.framework", framework)?;
        for (prefix, triple) in [
            ("threat.tactic", tactics),
            ("threat.technique", techniques),
            ("threat.technique.subtechnique", subs),
        ] {
            if triple.ids.is_empty() {
                continue;
            }
            put(&format!("{prefix}.id"), triple.ids.into())?;
            put(&format!("{prefix}.name"), triple.names.into())?;
            put(&format!("{prefix}.reference"), triple.references.into())?;
        }
    }

    for (key, value) in &d.extra {
        put(&format!("{ROOT}.{key}"), value.clone())?;
    }
    put(&format!("{ROOT}.job_id"), d.job_id.as_str().into())?;
    put(&format!("{ROOT}.function"), d.function.as_str().into())?;
    put(&format!("{ROOT}.score"), number(d.score))?;
    if let Some(t) = rule.anomaly_threshold {
        put(&format!("{ROOT}.anomaly_threshold"), t.into())?;
    }
    put(&format!("{ROOT}.severity"), rule.severity.as_str().into())?;
    put(
        &format!("{ROOT}.bucket_start"),
        rfc3339(d.bucket_start).into(),
    )?;
    if let Some(a) = d.actual {
        put(&format!("{ROOT}.actual"), number(a))?;
    }
    if let Some(t) = d.typical {
        put(&format!("{ROOT}.typical"), number(t))?;
    }
    put(&format!("{ROOT}.influencers"), Value::Object(influencers))?;
    put(&format!("{ROOT}.reason"), d.reason.as_str().into())?;

    append_tags(ev, &rule.tags)
}

/// Parallel id/name/reference arrays, without repeated ids.
#[derive(Default)]
struct Triple {
    ids: Vec<String>,
    names: Vec<String>,
    references: Vec<String>,
}

impl Triple {
    fn push(&mut self, id: &str, name: &str, reference: &str) {
        if self.ids.iter().any(|i| i == id) {
            return;
        }
        self.ids.push(id.to_owned());
        self.names.push(name.to_owned());
        self.references.push(reference.to_owned());
    }
}

fn append_tags(ev: &mut Value, tags: &[String]) -> Result<(), InsertError> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut list: Vec<Value> = match event::get(ev, "tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Ok(()),
    };
    for tag in tags {
        if !list.iter().any(|v| v.as_str() == Some(tag)) {
            list.push(Value::String(tag.clone()));
        }
    }
    event::insert(ev, "tags", Value::Array(list)).map(drop)
}

/// A JSON number, or `null` for NaN and infinities.
fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(epoch_secs: i64) -> String {
    let days = epoch_secs.div_euclid(86_400);
    let secs = epoch_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{MitreRef, RuleMetadata, Severity, Technique, Threat};
    use serde_json::json;
    use std::path::PathBuf;

    fn mitre(id: &str) -> MitreRef {
        MitreRef {
            id: id.into(),
            name: format!("name {id}"),
            reference: format!("https://attack.mitre.org/{id}/"),
        }
    }

    fn rule() -> Rule {
        Rule {
            source: PathBuf::from("rules/rare_destination_country.toml"),
            rule_id: "35f86980-1fb1-4dff-b311-3be941549c8d".into(),
            name: "Network Traffic to Rare Destination Country".into(),
            rule_type: "machine_learning".into(),
            description: "Rare country.".into(),
            risk_score: 21,
            severity: Severity::Low,
            anomaly_threshold: Some(75),
            job_ids: vec!["rare_destination_country".into()],
            tags: vec!["Rule Type: ML".into(), "Use Case: Threat Detection".into()],
            references: vec![],
            author: vec![],
            license: None,
            threat: vec![
                Threat {
                    framework: "MITRE ATT&CK".into(),
                    tactic: mitre("TA0001"),
                    technique: vec![Technique {
                        id: "T1566".into(),
                        name: "Phishing".into(),
                        reference: "r".into(),
                        subtechnique: vec![mitre("T1566.001"), mitre("T1566.002")],
                    }],
                },
                Threat {
                    framework: "MITRE ATT&CK".into(),
                    tactic: mitre("TA0010"),
                    technique: vec![Technique {
                        id: "T1041".into(),
                        name: "Exfiltration Over C2 Channel".into(),
                        reference: "r".into(),
                        subtechnique: vec![],
                    }],
                },
                Threat {
                    framework: "MITRE ATT&CK".into(),
                    tactic: mitre("TA0003"),
                    technique: vec![],
                },
            ],
            metadata: RuleMetadata::default(),
        }
    }

    fn detail() -> AlertDetail {
        let mut extra = Map::new();
        extra.insert("buckets_seen".into(), json!(2880));
        extra.insert("score".into(), json!("ignored: ours wins"));
        AlertDetail {
            job_id: "rare_destination_country".into(),
            function: Function::Rare,
            score: 93.5,
            bucket_start: 1_714_554_000,
            actual: Some(1.0),
            typical: None,
            influencers: vec![
                "source.ip".into(),
                "destination.ip".into(),
                "destination.as.organization.name".into(),
            ],
            reason: "destination country North Korea seen in 0 of 2,880 buckets".into(),
            extra,
        }
    }

    #[test]
    fn annotates_nested_event() {
        let mut ev = json!({
            "@timestamp": "2024-05-01T09:10:00Z",
            "event": {"kind": "event", "category": ["network"]},
            "source": {"ip": "10.0.0.5"},
            "destination": {"ip": "175.45.176.1", "geo": {"country_name": "North Korea"}},
            "tags": ["zeek"],
            "threat": {"indicator": {"type": "ipv4-addr"}}
        });
        annotate(&mut ev, &rule(), &detail()).unwrap();

        assert_eq!(ev["event"]["kind"], "alert");
        assert_eq!(ev["event"]["category"], json!(["network"]));
        assert_eq!(ev["event"]["risk_score"], 21);
        assert_eq!(ev["event"]["severity"], 21);
        assert_eq!(ev["rule"]["id"], "35f86980-1fb1-4dff-b311-3be941549c8d");
        assert_eq!(ev["rule"]["uuid"], ev["rule"]["id"]);
        assert_eq!(
            ev["rule"]["name"],
            "Network Traffic to Rare Destination Country"
        );
        assert_eq!(ev["rule"]["ruleset"], "egresswatch");
        assert_eq!(ev["rule"]["description"], "Rare country.");
        assert_eq!(
            ev["tags"],
            json!(["zeek", "Rule Type: ML", "Use Case: Threat Detection"])
        );
        assert_eq!(ev["threat"]["framework"], "MITRE ATT&CK");
        assert_eq!(
            ev["threat"]["tactic"]["id"],
            json!(["TA0001", "TA0010", "TA0003"])
        );
        assert_eq!(ev["threat"]["tactic"]["name"][1], "name TA0010");
        assert_eq!(ev["threat"]["technique"]["id"], json!(["T1566", "T1041"]));
        assert_eq!(
            ev["threat"]["technique"]["subtechnique"]["id"],
            json!(["T1566.001", "T1566.002"])
        );
        assert_eq!(ev["threat"]["indicator"]["type"], "ipv4-addr");

        let e = &ev["egresswatch"];
        assert_eq!(e["job_id"], "rare_destination_country");
        assert_eq!(e["function"], "rare");
        assert_eq!(e["score"], 93.5);
        assert_eq!(e["anomaly_threshold"], 75);
        assert_eq!(e["severity"], "low");
        assert_eq!(e["bucket_start"], "2024-05-01T09:00:00Z");
        assert_eq!(e["actual"], 1.0);
        assert!(e.get("typical").is_none());
        assert_eq!(
            e["influencers"],
            json!({"source.ip": "10.0.0.5", "destination.ip": "175.45.176.1"})
        );
        assert_eq!(e["reason"], detail().reason);
        assert_eq!(e["buckets_seen"], 2880);
        assert_eq!(ev["@timestamp"], "2024-05-01T09:10:00Z");
    }

    #[test]
    fn annotates_dotted_event_in_place() {
        let mut ev = json!({
            "event.kind": "event",
            "event.category": "network",
            "source.ip": "10.0.0.5",
            "destination.ip": "175.45.176.1",
            "tags": "zeek",
            "rule.name": "upstream"
        });
        annotate(&mut ev, &rule(), &detail()).unwrap();
        let obj = ev.as_object().unwrap();
        // Existing dotted keys are updated where they are, not duplicated as nested objects.
        assert_eq!(obj["event.kind"], "alert");
        assert_eq!(
            obj["rule.name"],
            "Network Traffic to Rare Destination Country"
        );
        assert!(ev["event"].get("kind").is_none());
        assert!(ev["rule"].get("name").is_none());
        // New fields are added; the event still reads the same through event::get.
        assert_eq!(event::get_str(&ev, "event.category"), Some("network"));
        assert_eq!(event::get_str(&ev, "rule.ruleset"), Some("egresswatch"));
        assert_eq!(
            ev["tags"],
            json!(["zeek", "Rule Type: ML", "Use Case: Threat Detection"])
        );
        assert_eq!(
            ev["egresswatch"]["influencers"]["source.ip"],
            json!("10.0.0.5")
        );
        // Key order: original keys first, in their order.
        let keys: Vec<&String> = obj.keys().collect();
        assert_eq!(
            keys[..6],
            [
                "event.kind",
                "event.category",
                "source.ip",
                "destination.ip",
                "tags",
                "rule.name"
            ]
        );
    }

    #[test]
    fn blocked_event_is_left_unchanged() {
        let original = json!({"rule": "not an object", "a": 1});
        let mut ev = original.clone();
        let err = annotate(&mut ev, &rule(), &detail()).unwrap_err();
        assert!(err.to_string().contains("rule"), "{err}");
        assert_eq!(ev, original);

        let mut s = json!("text");
        assert!(annotate(&mut s, &rule(), &detail()).is_err());
        assert_eq!(s, json!("text"));
    }

    #[test]
    fn tags_of_unexpected_type_are_kept() {
        let mut ev = json!({"tags": 7});
        annotate(&mut ev, &rule(), &detail()).unwrap();
        assert_eq!(ev["tags"], 7);
    }

    #[test]
    fn no_threat_no_threat_fields_and_nan_is_null() {
        let mut r = rule();
        r.threat.clear();
        r.tags.clear();
        let mut d = detail();
        d.score = f64::NAN;
        let mut ev = json!({});
        annotate(&mut ev, &r, &d).unwrap();
        assert!(ev.get("threat").is_none());
        assert!(ev.get("tags").is_none());
        assert_eq!(ev["egresswatch"]["score"], Value::Null);
    }

    #[test]
    fn severity_numbers() {
        for (sev, n) in [
            (Severity::Low, 21),
            (Severity::Medium, 47),
            (Severity::High, 73),
            (Severity::Critical, 99),
        ] {
            let mut r = rule();
            r.severity = sev;
            let mut ev = json!({});
            annotate(&mut ev, &r, &detail()).unwrap();
            assert_eq!(ev["event"]["severity"], n);
            assert_eq!(ev["egresswatch"]["severity"], sev.as_str());
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_554_000), "2024-05-01T09:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
