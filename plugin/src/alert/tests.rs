use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::fields::Scanner;
use crate::rules::{MitreRef, RuleMetadata, Severity, Technique, Threat};

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
        references: vec!["https://example.org/r".into()],
        author: vec!["egresswatch".into()],
        license: Some("Apache-2.0".into()),
        threat: vec![
            Threat {
                framework: "MITRE ATT&CK".into(),
                tactic: mitre("TA0001"),
                technique: vec![Technique {
                    id: "T1566".into(),
                    name: "Phishing".into(),
                    reference: "r".into(),
                    subtechnique: vec![mitre("T1566.001")],
                }],
            },
            Threat {
                framework: "MITRE ATT&CK".into(),
                tactic: mitre("TA0010"),
                technique: vec![],
            },
        ],
        metadata: RuleMetadata::default(),
    }
}

struct Fixture {
    scanner: Scanner,
    fields: AlertFields,
    detail: AlertDetail,
}

fn fixture(function: Function) -> Fixture {
    let mut schema = SchemaBuilder::new();
    let name = schema.field("destination.geo.country_name");
    let iso = schema.field("destination.geo.country_iso_code");
    let fields = AlertFields::register(&mut schema, name, iso);
    let influencers = [
        "source.ip",
        "destination.ip",
        "destination.as.organization.name",
    ]
    .iter()
    .map(|p| (p.to_string(), schema.field(p)))
    .collect();
    Fixture {
        scanner: Scanner::new(Arc::new(schema.build().unwrap())),
        fields,
        detail: AlertDetail {
            job_id: "rare_destination_country".into(),
            function,
            score: 93.5,
            bucket_start: 1_714_554_000,
            actual: Some(15_855_258.4),
            typical: Some(0.25),
            influencers,
            reason: "destination country North Korea seen in 0 of 2,880 buckets".into(),
            extra: vec![
                ("buckets_seen", ExtraValue::Int(2880)),
                ("bucket_sum", ExtraValue::Float(15_855_258.0)),
                ("score", ExtraValue::Float(1.0)),
            ],
            alert: Some(AlertRef {
                id: 0xfeed,
                count: 1,
                suppressed: false,
            }),
        },
    }
}

fn alert(f: &mut Fixture, event: &Value, country: Option<Country>) -> (Value, Vec<Failure>) {
    let line = event.to_string();
    let scanned = f.scanner.scan(&line).unwrap();
    let mut out = String::new();
    let failures = annotate(
        &scanned,
        &f.fields,
        &RuleTexts::new(&rule()),
        &f.detail,
        country,
        &mut out,
    );
    (serde_json::from_str(&out).unwrap(), failures)
}

#[test]
fn a_plain_network_event_becomes_an_ecs_alert() {
    let mut f = fixture(Function::Rare);
    let event = json!({
        "@timestamp": "2024-05-01T09:10:00Z",
        "event": {"category": ["network"]},
        "source": {"ip": "10.0.0.5"},
        "destination": {"ip": "175.45.176.1"},
    });
    let (ev, failures) = alert(&mut f, &event, Country::from_iso_code("KP"));
    assert!(failures.is_empty());
    assert_eq!(ev["event"]["kind"], "alert");
    assert_eq!(ev["event"]["category"], json!(["network"]));
    assert_eq!(ev["event"]["severity"], 21);
    assert_eq!(ev["event"]["risk_score"], 21);
    assert_eq!(ev["rule"]["id"], "35f86980-1fb1-4dff-b311-3be941549c8d");
    assert_eq!(ev["rule"]["uuid"], ev["rule"]["id"]);
    assert_eq!(ev["rule"]["ruleset"], "egresswatch");
    assert_eq!(ev["rule"]["author"], json!(["egresswatch"]));
    assert_eq!(ev["rule"]["reference"], json!(["https://example.org/r"]));
    assert_eq!(ev["rule"]["license"], "Apache-2.0");
    assert_eq!(ev["destination"]["geo"]["country_name"], "North Korea");
    assert_eq!(ev["destination"]["geo"]["country_iso_code"], "KP");
    // Elastic's shape: one object per tactic, techniques and sub-techniques below it.
    assert_eq!(ev["threat"][0]["framework"], "MITRE ATT&CK");
    assert_eq!(ev["threat"][0]["tactic"]["id"], "TA0001");
    assert_eq!(ev["threat"][0]["technique"][0]["id"], "T1566");
    assert_eq!(
        ev["threat"][0]["technique"][0]["subtechnique"][0]["id"],
        "T1566.001"
    );
    assert_eq!(ev["threat"][1]["tactic"]["id"], "TA0010");
    let e = &ev["egresswatch"];
    assert_eq!(e["rule"]["id"], ev["rule"]["id"]);
    assert_eq!(e["rule"]["severity"], "low");
    assert_eq!(
        e["rule"]["tags"],
        json!(["Rule Type: ML", "Use Case: Threat Detection"])
    );
    assert_eq!(e["threat"], ev["threat"]);
    assert_eq!(e["job_id"], "rare_destination_country");
    assert_eq!(e["function"], "rare");
    assert_eq!(e["score"], 93.5);
    assert_eq!(e["anomaly_threshold"], 75);
    assert_eq!(e["bucket_start"], "2024-05-01T09:00:00Z");
    assert_eq!(e["typical"], 0.25);
    assert_eq!(
        e["influencers"],
        json!([{"field": "source.ip", "value": "10.0.0.5"},
               {"field": "destination.ip", "value": "175.45.176.1"}])
    );
    assert_eq!(e["buckets_seen"], 2880);
    assert_eq!(
        e["alert"],
        json!({"id": "000000000000feed", "count": 1, "suppressed": false})
    );
    assert!(ev.get("tags").is_none());
}

#[test]
fn a_suppressed_follower_keeps_its_detection_but_is_not_a_new_alert() {
    let mut f = fixture(Function::Rare);
    f.detail.alert = Some(AlertRef {
        id: 0xfeed,
        count: 7,
        suppressed: true,
    });
    let event = json!({"event": {"category": ["network"]}, "destination": {"ip": "175.45.176.1"}});
    let (ev, failures) = alert(&mut f, &event, Country::from_iso_code("KP"));
    assert!(failures.is_empty());
    assert_eq!(
        ev["egresswatch"]["alert"],
        json!({"id": "000000000000feed", "count": 7, "suppressed": true})
    );
    assert_eq!(ev["egresswatch"]["score"], 93.5);
    assert_eq!(ev["egresswatch"]["rule"]["name"], rule().name);
    assert_eq!(ev["destination"]["geo"]["country_iso_code"], "KP");
    assert!(ev["event"].get("kind").is_none(), "{ev}");
    assert!(ev["event"].get("severity").is_none(), "{ev}");
    assert!(
        ev.get("rule").is_none() && ev.get("threat").is_none(),
        "{ev}"
    );
}

#[test]
fn sums_are_whole_numbers_and_our_keys_win_over_extras() {
    let mut f = fixture(Function::HighSum);
    let line = r#"{"source":{"ip":"10.0.0.5"}}"#;
    let scanned = f.scanner.scan(line).unwrap();
    let mut out = String::new();
    annotate(
        &scanned,
        &f.fields,
        &RuleTexts::new(&rule()),
        &f.detail,
        None,
        &mut out,
    );
    assert!(out.contains(r#""actual":15855258,"#), "{out}");
    assert!(out.contains(r#""bucket_sum":15855258"#), "{out}");
    assert_eq!(out.matches(r#""score":"#).count(), 1, "{out}");
    assert!(
        out.starts_with(r#"{"source":{"ip":"10.0.0.5"},"egresswatch":{"#),
        "{out}"
    );
}

#[test]
fn the_source_events_own_fields_are_all_kept() {
    let mut f = fixture(Function::Rare);
    let event = json!({
        "event": {"kind": "event", "severity": 3, "risk_score": 99.0},
        "event.kind": "signal",
        "rule": {"name": "Allow-Outbound", "id": "pan-42"},
        "threat": "botnet",
        "tags": ["zeek", "prod"],
        "destination": {"ip": "175.45.176.1", "geo": {"country_name": "North Korea"}},
    });
    let (ev, failures) = alert(&mut f, &event, None);
    assert!(failures.is_empty());
    assert_eq!(ev["event"]["kind"], "event");
    assert_eq!(ev["event.kind"], "signal");
    assert_eq!(ev["event"]["severity"], 3);
    assert_eq!(ev["event"]["risk_score"], 99.0);
    assert_eq!(
        ev["rule"],
        json!({"name": "Allow-Outbound", "id": "pan-42"})
    );
    assert_eq!(ev["threat"], "botnet");
    assert_eq!(ev["tags"], json!(["zeek", "prod"]));
    assert_eq!(ev["egresswatch"]["rule"]["name"], rule().name);
    assert_eq!(ev["egresswatch"]["threat"][0]["tactic"]["id"], "TA0001");
}

#[test]
fn what_cannot_be_written_is_reported_and_the_rest_is_written() {
    let mut f = fixture(Function::Rare);
    let event = json!({"egresswatch": "mine", "destination": {"ip": "1.2.3.4", "geo": 7}});
    let (ev, failures) = alert(&mut f, &event, Country::from_iso_code("KP"));
    assert_eq!(ev["egresswatch"], "mine");
    assert_eq!(ev["destination"]["geo"], 7);
    assert_eq!(ev["rule"]["id"], "35f86980-1fb1-4dff-b311-3be941549c8d");
    assert_eq!(
        failures,
        vec![
            Failure {
                field: ROOT,
                collision: Collision::Exists
            },
            Failure {
                field: "destination.geo.country_name",
                collision: Collision::Blocked
            },
            Failure {
                field: "destination.geo.country_iso_code",
                collision: Collision::Blocked
            },
        ]
    );
}

#[test]
fn numbers() {
    let number = |x: f64, whole: bool| {
        let mut out = String::new();
        push_number(&mut out, x, whole);
        out
    };
    assert_eq!(number(f64::NAN, false), "null");
    assert_eq!(number(2.5, false), "2.5");
    assert_eq!(number(2.5, true), "3");
    assert_eq!(number(3.0, false), "3");
    assert_eq!(number(-7.0, true), "-7");
    assert_eq!(number(1e300, false), "1e+300");
    // As serde_json writes numbers.
    for x in [0.1, 1.0 / 3.0, -2.5e-7, 123_456.789, 9.5e15, 1e300] {
        let serde = serde_json::Number::from_f64(x).map(|n| n.to_string());
        assert_eq!(Some(number(x, false)), serde, "{x}");
    }
}

#[test]
fn json_strings_escape_as_serde_json_does() {
    for text in [
        "plain",
        "",
        "quote \" back \\ slash",
        "tab\tnl\ncr\r",
        "\u{1}\u{1f}\u{7f}",
        "é ✓ 😀",
    ] {
        assert_eq!(
            json_str(text),
            serde_json::to_string(text).unwrap(),
            "{text:?}"
        );
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
    assert_eq!(rfc3339(-62_167_219_200), "0000-01-01T00:00:00Z");
    assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    assert_eq!(rfc3339(253_402_300_800), "10000-01-01T00:00:00Z");
}
