use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::fields::Scanner;

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
    qualifies_alone(&bound, &scanned)
}

/// Whether a job bound alone (it shares no filter) qualifies a scanned event.
fn qualifies_alone(job: &BoundJob, event: &Event<'_>) -> bool {
    job.qualifies(event, &SharedFilters::default(), &mut Verdicts::default())
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
    // White space around the name is trimmed, Unicode white space too.
    assert!(is_shipping_agent(" filebeat"));
    assert!(is_shipping_agent("Winlogbeat.EXE\t"));
    assert!(is_shipping_agent("\u{a0}elastic-agent\u{2003}"));
    assert!(!is_shipping_agent(" filebeat x"));
    assert!(!is_shipping_agent("filebeat.ex"));
    assert!(!is_shipping_agent("filebeat.exe.exe"));
    assert!(is_shipping_agent("elastic-agent.eXe"));
}

/// The `.exe` of an agent's name is found in one word comparison: every ASCII byte in each of
/// its four places answers as a case-insensitive comparison of the suffix would.
#[test]
fn only_a_dot_exe_in_any_case_is_taken_off_an_agents_name() {
    for place in 0..4 {
        for byte in 0..=127u8 {
            let mut suffix = *b".exe";
            suffix[place] = byte;
            let name = format!("filebeat{}", String::from_utf8_lossy(&suffix));
            let expected = suffix.eq_ignore_ascii_case(b".exe");
            assert_eq!(is_shipping_agent(&name), expected, "{name:?}");
        }
    }
}

#[test]
fn the_category_is_read_in_every_form() {
    let job = &JobCatalog::builtin()
        .get("rare_destination_country")
        .unwrap()
        .clone();
    let mut ev = exfil_event();
    ev["destination"]["geo"] = json!({"country_name": "Chile"});
    assert!(qualifies(job, &ev));
    for (category, expected) in [
        (json!(["network"]), true),
        (json!("network"), true),
        (json!(["host", "network"]), true),
        (json!([["network"]]), false),
        (json!(["networks"]), false),
        (json!("Network"), false),
        (json!([]), false),
        (json!(null), false),
    ] {
        ev["event"]["category"] = category.clone();
        assert_eq!(qualifies(job, &ev), expected, "{category}");
    }
    // Written with white space or escapes, `["network"]` is still the one value.
    let line = ev
        .to_string()
        .replace("\"category\":null", "\"category\":[ \"network\" ]");
    let mut schema = SchemaBuilder::new();
    let bound = job.bind(&mut schema);
    let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
    assert!(
        qualifies_alone(&bound, &scanner.scan(&line).unwrap()),
        "{line}"
    );
    let escaped = line.replace("[ \"network\" ]", "[\"netw\\u006frk\"]");
    assert!(
        qualifies_alone(&bound, &scanner.scan(&escaped).unwrap()),
        "{escaped}"
    );
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

/// Elastic's four data-exfiltration jobs and the country job bound together: the five filters
/// the four share are checked once per event, and every job qualifies each event exactly as it
/// does alone (events that meet and fail shared and own filters; that each event starts from
/// fresh verdicts in the scoring loop is `filters_two_jobs_share_are_judged_afresh*`'s, in the
/// detector's tests).
#[test]
fn filters_several_jobs_have_are_shared_and_judge_each_event_as_alone() {
    let catalog = JobCatalog::builtin();
    let ids = [
        "ded_high_sent_bytes_destination_ip_ea",
        "ded_high_sent_bytes_destination_geo_country_iso_code_ea",
        "ded_high_sent_bytes_destination_port_ea",
        "ded_high_sent_bytes_destination_region_name_ea",
        "rare_destination_country",
    ];
    let mut schema = SchemaBuilder::new();
    let mut together: Vec<BoundJob> = ids
        .iter()
        .map(|id| catalog.get(id).unwrap().bind(&mut schema))
        .collect();
    let alone = together.clone();
    let shared = SharedFilters::share(&mut together);
    assert_eq!(shared.len(), 5);
    let owns: Vec<usize> = together.iter().map(|job| job.filters.len()).collect();
    assert_eq!(owns, [0, 1, 0, 1, 3]);
    let shares: Vec<usize> = together.iter().map(|job| job.shared.len()).collect();
    assert_eq!(shares, [5, 5, 5, 5, 0]);

    let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
    let mut events = Vec::new();
    for (field, value) in [
        ("source.bytes", json!(1)),
        ("source.bytes", json!(0)),
        ("source.ip", json!("10.9.9.9")),
        ("network.direction", json!("inbound")),
        ("destination.ip", json!("8.8.4.4")),
        ("destination.ip", json!("192.168.1.1")),
        ("source.ip", json!("8.8.4.4")),
        ("destination.port", Value::Null),
    ] {
        for geo in [
            json!({"country_iso_code": "US", "region_name": "California"}),
            json!({}),
        ] {
            let mut ev = exfil_event();
            set(&mut ev, field, value.clone());
            ev["destination"]["geo"] = geo.clone();
            events.push(ev.clone());
            ev["destination"]["geo"]["country_name"] = json!("Chile");
            events.push(ev);
        }
    }
    let mut met = [0; 5];
    for ev in &events {
        let line = ev.to_string();
        let scanned = scanner.scan(&line).unwrap();
        let mut verdicts = Verdicts::default();
        for (j, (job, single)) in together.iter().zip(&alone).enumerate() {
            let expected = qualifies_alone(single, &scanned);
            assert_eq!(
                job.qualifies(&scanned, &shared, &mut verdicts),
                expected,
                "{} {line}",
                ids[j]
            );
            met[j] += usize::from(expected);
        }
    }
    // Each job met some events and missed others.
    assert!(met.iter().all(|&n| n > 0 && n < events.len()), "{met:?}");
}

/// Two jobs with different conditions on the same field (`field_exists` and `field_positive`
/// on `source.bytes`) share neither; the condition they both have (`private_source`) is
/// shared. An event with no bytes sent meets the first job's condition, not the second's.
#[test]
fn different_conditions_on_one_field_are_not_shared() {
    let ded = JobCatalog::builtin()
        .get("ded_high_sent_bytes_destination_ip")
        .unwrap()
        .clone();
    let with = |first: Filter| JobDef {
        filters: vec![first, Filter::PrivateSource("source.ip".into())],
        ..ded.clone()
    };
    let mut schema = SchemaBuilder::new();
    let mut jobs = [
        with(Filter::FieldExists("source.bytes".into())).bind(&mut schema),
        with(Filter::FieldPositive("source.bytes".into())).bind(&mut schema),
    ];
    let shared = SharedFilters::share(&mut jobs);
    assert_eq!(shared.len(), 1);
    let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
    for (bytes, expected) in [(json!(0), [true, false]), (json!(10), [true, true])] {
        let mut ev = exfil_event();
        set(&mut ev, "source.bytes", bytes);
        let line = ev.to_string();
        let scanned = scanner.scan(&line).unwrap();
        let mut verdicts = Verdicts::default();
        let got = jobs
            .each_ref()
            .map(|job| job.qualifies(&scanned, &shared, &mut verdicts));
        assert_eq!(got, expected, "{line}");
    }
}

/// More shared filters than the verdicts' 64 bits: those past them are checked each time a job
/// asks, and both jobs still judge every event by all 70 (an event missing any one field, the
/// first or the last, qualifies for neither).
#[test]
fn shared_filters_past_sixty_four_are_checked_each_time() {
    let ded = JobCatalog::builtin()
        .get("ded_high_sent_bytes_destination_ip")
        .unwrap()
        .clone();
    let fields: Vec<String> = (0..70).map(|i| format!("f{i}")).collect();
    let job = JobDef {
        filters: fields
            .iter()
            .map(|f| Filter::FieldExists(f.clone()))
            .collect(),
        ..ded
    };
    let mut schema = SchemaBuilder::new();
    let mut jobs = [job.bind(&mut schema), job.bind(&mut schema)];
    let shared = SharedFilters::share(&mut jobs);
    assert_eq!(shared.len(), 70);
    let mut scanner = Scanner::new(Arc::new(schema.build().unwrap()));
    for missing in [None, Some(0), Some(63), Some(64), Some(69)] {
        let event: serde_json::Map<String, Value> = fields
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != missing)
            .map(|(_, f)| (f.clone(), json!(1)))
            .collect();
        let line = Value::Object(event).to_string();
        let scanned = scanner.scan(&line).unwrap();
        let mut verdicts = Verdicts::default();
        for job in &jobs {
            assert!(job.filters.is_empty());
            let met = job.qualifies(&scanned, &shared, &mut verdicts);
            assert_eq!(met, missing.is_none(), "missing {missing:?}");
        }
    }
}
