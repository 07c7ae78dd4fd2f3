use abi_stable::std_types::ROption;
use egresswatch_plugin_api::{Metric, ScoreExtra};
use serde_json::json;

use super::*;
use crate::geo::mmdb_writer::{MmdbWriter, Value as Mmdb};

mod bytes;
mod lifecycle;
mod state;
mod threads;

const RARE_RULE: &str = "35f86980-1fb1-4dff-b311-3be941549c8d";
const EXFIL_RULE: &str = "cc653d77-ddd2-45b1-9197-c75ad19df66c";
/// 2026-10-01T00:00:00Z.
const T0: i64 = 1_790_812_800_000;
const MIN15: i64 = 15 * 60 * 1000;
/// Two days of 15-minute buckets: after them a never-seen country is news.
const BASE: i64 = 2 * 96;
const HOURS3: i64 = 3 * 3600 * 1000;

/// The host's clock in these tests: a year after the events, so that every event time is
/// believed.
const NOW: i64 = T0 + 365 * 24 * 3600 * 1000;

/// Evaluation at [`NOW`].
trait At {
    fn at(&mut self, line: &str) -> Verdict;
}

impl At for Detector {
    fn at(&mut self, line: &str) -> Verdict {
        self.evaluate(line, NOW)
    }
}

fn rules_dir() -> String {
    format!("{}/../rules", env!("CARGO_MANIFEST_DIR"))
}

fn detector(extra: serde_json::Value) -> Detector {
    // GeoIP off unless a test configures it: the tests give countries in the events.
    let mut config = json!({ "rules": [rules_dir()], "geoip": "off" });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Detector::from_json(&config.to_string()).expect("detector builds")
}

fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    format!(
        "{}.{:03}Z",
        &crate::alert::rfc3339(secs)[..19],
        ms.rem_euclid(1000)
    )
}

/// A network event to `ip`, optionally with a country name and bytes sent.
fn event(ms: i64, ip: &str, country: Option<&str>, bytes: Option<serde_json::Value>) -> String {
    let mut e = json!({
        "@timestamp": iso(ms),
        "event": {"category": ["network"]},
        "source": {"ip": "10.1.2.3"},
        "destination": {"ip": ip, "port": 443},
        "network": {"direction": "outbound"},
    });
    if let Some(c) = country {
        e["destination"]["geo"] = json!({ "country_name": c });
    }
    if let Some(b) = bytes {
        e["source"]["bytes"] = b;
    }
    e.to_string()
}

fn annotated(verdict: &Verdict) -> Option<serde_json::Value> {
    match &verdict.replacement {
        ROption::RSome(text) => Some(serde_json::from_str(text.as_str()).unwrap()),
        ROption::RNone => None,
    }
}

/// `buckets` 15-minute buckets of traffic to three routine countries.
fn rare_baseline(d: &mut Detector, buckets: i64) {
    let routine = [
        ("8.8.8.8", "United States"),
        ("78.46.34.21", "Germany"),
        ("52.95.1.1", "Ireland"),
    ];
    for b in 0..buckets {
        for (ip, country) in routine {
            let v = d.at(&event(T0 + b * MIN15 + 60_000, ip, Some(country), None));
            assert_eq!(v, Verdict::PASS, "routine traffic flagged in bucket {b}");
        }
    }
}

#[test]
fn a_never_seen_country_is_flagged_after_learning_with_the_rules_alert_fields() {
    let mut d = detector(json!({}));
    rare_baseline(&mut d, BASE);
    let t = T0 + BASE * MIN15 + 5_000;
    let verdict = d.at(&event(t, "175.45.179.109", Some("North Korea"), None));
    let alert = annotated(&verdict).expect("flagged");
    assert_eq!(alert["rule"]["id"], RARE_RULE);
    assert_eq!(alert["event"]["kind"], "alert");
    let score = alert["egresswatch"]["score"].as_f64().unwrap();
    assert!(score >= 75.0, "{score}");
    assert_eq!(alert["egresswatch"]["job_id"], "rare_destination_country");
    assert!(alert["egresswatch"]["influencers"]
        .as_array()
        .unwrap()
        .contains(&json!({"field": "destination.ip", "value": "175.45.179.109"})));
    let reason = alert["egresswatch"]["reason"].as_str().unwrap();
    assert!(reason.contains("North Korea seen in 0 of 192"), "{reason}");
    // Routine countries in the same bucket still pass.
    let routine = d.at(&event(t + 1000, "8.8.8.8", Some("United States"), None));
    assert_eq!(routine, Verdict::PASS);
}

#[test]
fn nothing_is_flagged_while_learning_and_metrics_say_so() {
    let mut d = detector(json!({}));
    rare_baseline(&mut d, 10);
    let v = d.at(&event(
        T0 + 10 * MIN15,
        "175.45.179.109",
        Some("North Korea"),
        None,
    ));
    assert_eq!(v, Verdict::PASS);
    let metrics = d.metrics();
    let value = |name: &str, job: Option<&str>| {
        metrics
            .iter()
            .find(|m| {
                m.name.as_str() == name
                    && job.is_none_or(|j| m.labels.iter().any(|l| l.value.as_str() == j))
            })
            .map(|m| m.value)
    };
    assert_eq!(
        value("egresswatch_job_learning", Some("rare_destination_country")),
        Some(1.0)
    );
    assert_eq!(value("egresswatch_detector_flagged_total", None), Some(0.0));
}

#[test]
fn shipping_agents_and_non_network_events_are_ignored() {
    let mut d = detector(json!({}));
    rare_baseline(&mut d, BASE);
    let t = T0 + BASE * MIN15;
    let mut agent: serde_json::Value =
        serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
    agent["process"] = json!({"name": "Filebeat.exe"});
    assert_eq!(d.at(&agent.to_string()), Verdict::PASS);
    let mut process: serde_json::Value =
        serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
    process["event"]["category"] = json!(["process"]);
    assert_eq!(d.at(&process.to_string()), Verdict::PASS);
}

/// Writes a tiny country database in one of the two layouts; private space is (wrongly)
/// given a country, as some real databases do.
fn tiny_db(name: &str, geolite2: bool) -> std::path::PathBuf {
    let record = |code: &str, english: &str| {
        if geolite2 {
            Mmdb::geolite2_country(code, english)
        } else {
            Mmdb::ip_location_db(code)
        }
    };
    let kind = if geolite2 {
        "GeoLite2-Country"
    } else {
        "country"
    };
    let mut w = MmdbWriter::new(kind, 6, 28).unwrap();
    w.insert("8.8.8.0/24", record("US", "United States"))
        .unwrap();
    w.insert("78.46.0.0/15", record("DE", "Germany")).unwrap();
    w.insert("52.95.0.0/16", record("IE", "Ireland")).unwrap();
    w.insert("175.45.176.0/22", record("KP", "North Korea"))
        .unwrap();
    w.insert("10.0.0.0/8", record("AU", "Australia")).unwrap();
    let path = std::env::temp_dir().join(format!("ew-detector-{name}-{}.mmdb", std::process::id()));
    std::fs::write(&path, w.build().unwrap()).unwrap();
    path
}

fn enrichment_through(layout: &str, geolite2: bool) {
    let db = tiny_db(layout, geolite2);
    let mut d = detector(json!({ "geoip": { "database": db } }));
    for b in 0..BASE {
        for ip in ["8.8.8.8", "78.46.34.21", "52.95.1.1"] {
            assert_eq!(d.at(&event(T0 + b * MIN15, ip, None, None)), Verdict::PASS);
        }
    }
    let t = T0 + BASE * MIN15;
    let alert = annotated(&d.at(&event(t, "175.45.179.109", None, None))).expect("flagged");
    assert_eq!(alert["destination"]["geo"]["country_iso_code"], "KP");
    assert_eq!(alert["destination"]["geo"]["country_name"], "North Korea");
    // Events the detector cannot place pass untouched: no IP, a bad IP, private space.
    for ip in [
        None,
        Some("not-an-ip"),
        Some("10.9.9.9"),
        Some("192.168.1.1"),
    ] {
        let mut e: serde_json::Value =
            serde_json::from_str(&event(t, "0.0.0.0", None, None)).unwrap();
        match ip {
            Some(ip) => e["destination"]["ip"] = json!(ip),
            None => {
                e["destination"].as_object_mut().unwrap().remove("ip");
            }
        }
        assert_eq!(d.at(&e.to_string()), Verdict::PASS, "{ip:?}");
    }
    std::fs::remove_file(db).unwrap();
}

/// A detector with the tiny country database that has learnt 40 buckets of three routine
/// countries; returns it and the time of the next bucket.
fn learnt_with_geoip(name: &str) -> (Detector, i64, std::path::PathBuf) {
    let db = tiny_db(name, false);
    let mut d = detector(json!({ "geoip": { "database": db } }));
    for b in 0..BASE {
        for ip in ["8.8.8.8", "78.46.34.21", "52.95.1.1"] {
            assert_eq!(d.at(&event(T0 + b * MIN15, ip, None, None)), Verdict::PASS);
        }
    }
    (d, T0 + BASE * MIN15, db)
}

#[test]
fn a_repeated_or_dotted_destination_cannot_hide_the_address_downstream_sees() {
    let (mut d, t, db) = learnt_with_geoip("evasion");
    let head = format!(
        r#"{{"@timestamp":"{}","event":{{"category":["network"]}},"source":{{"ip":"10.1.2.3"}},"#,
        iso(t)
    );
    for (i, members) in [
        // A harmless address first, the real one last (downstream keeps the last).
        r#""destination":{"ip":"8.8.8.8","port":443},"destination":{"ip":"175.45.179.109","port":443}"#,
        // A dotted harmless address beside the nested real one, in either order.
        r#""destination.ip":"8.8.8.8","destination":{"ip":"175.45.179.109","port":443}"#,
        r#""destination":{"ip":"175.45.179.109","port":443},"destination.ip":"8.8.8.8""#,
        // A harmless country in an object that a repeated key then replaces.
        r#""destination":{"ip":"8.8.8.8","geo":{"country_name":"United States"}},"destination":{"ip":"175.45.179.109"}"#,
    ]
    .iter()
    .enumerate()
    {
        let line = format!("{head}{members}}}");
        let verdict = d.at(&line);
        // What a JSON reader downstream gets (serde_json keeps the last of a repeated key).
        let out = annotated(&verdict).unwrap_or_else(|| panic!("case {i} not flagged"));
        // The flagged event comes out with the address it was judged on, and its country.
        assert_eq!(out["destination"]["ip"], "175.45.179.109", "case {i}: {out}");
        assert_eq!(
            out["destination"]["geo"]["country_name"], "North Korea",
            "case {i}: {out}"
        );
        // Every original member is still there, byte for byte.
        let text = verdict.replacement.as_ref().map(|t| t.to_string()).unwrap();
        for part in members.split("},") {
            assert!(text.contains(part.trim_end_matches('}')), "case {i}: {part}");
        }
    }
    std::fs::remove_file(db).unwrap();
}

#[test]
fn what_the_scanner_accepts_is_annotated_and_what_it_refuses_is_unreadable() {
    let (mut d, t, db) = learnt_with_geoip("hostile-values");
    let base = event(t, "175.45.179.109", None, None);
    for (i, extra) in [
        r#""note":"\ud800""#.to_owned(),
        r#""ratio":1e999"#.to_owned(),
        format!(r#""big":{}"#, "7".repeat(400)),
        format!(r#""deep":{}0{}"#, "[".repeat(120), "]".repeat(120)),
    ]
    .iter()
    .enumerate()
    {
        let line = format!("{},{extra}}}", &base[..base.len() - 1]);
        let verdict = d.at(&line);
        let text = verdict
            .replacement
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| panic!("case {i}: flagged but not annotated"));
        assert!(text.contains(extra.as_str()), "case {i}: value rewritten");
        assert!(text.contains(r#""country_name":"North Korea""#), "case {i}");
    }
    let too_deep = format!(
        r#"{},"deep":{}0{}}}"#,
        &base[..base.len() - 1],
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(d.at(&too_deep), Verdict::UNREADABLE);
    std::fs::remove_file(db).unwrap();
}

fn scored_by(d: &Detector, job: &str) -> u64 {
    d.metrics()
        .iter()
        .find(|m| {
            m.name.as_str() == "egresswatch_job_scored_total"
                && m.labels.iter().any(|l| l.value.as_str() == job)
        })
        .map_or(0, |m| m.value as u64)
}

#[test]
fn without_a_geoip_section_the_bundled_database_lets_the_country_job_score() {
    let sample = std::fs::read_to_string(format!(
        "{}/../examples/data/sample.ndjson",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let lines: Vec<&str> = sample.lines().take(3000).collect();
    let config = json!({ "rules": [rules_dir()] }).to_string();
    let mut on = Detector::from_json(&config).unwrap();
    on.process(lines.iter().copied(), NOW);
    // The sample's events carry no country: only GeoIP can give the job something to read.
    assert!(lines.iter().all(|l| !l.contains("country_name")));
    assert!(scored_by(&on, "rare_destination_country") > 1000);
    let off = json!({ "rules": [rules_dir()], "geoip": "off" }).to_string();
    let mut off = Detector::from_json(&off).unwrap();
    off.process(lines.iter().copied(), NOW);
    assert_eq!(scored_by(&off, "rare_destination_country"), 0);
    assert!(Detector::from_json(&json!({"geoip": "sometimes"}).to_string()).is_err());
}

#[test]
fn skipping_the_scores_below_the_floor_changes_no_verdict() {
    // Without score records the models skip the scores that cannot reach the lowest
    // threshold; with them every score is computed. The sample (bundled GeoIP) and a chunked
    // upload must give the same verdicts, alerts included, either way.
    let sample = std::fs::read_to_string(format!(
        "{}/../examples/data/sample.ndjson",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut lines: Vec<String> = sample.lines().map(str::to_owned).collect();
    for b in 0..30 {
        for k in 0..20i64 {
            let bytes = json!(300_000 * (1 + (k * 7 + b * 3) % 40));
            let t = T0 + b * HOURS3 + k * 60_000;
            let ip = format!("52.95.{}.1", 10 + k);
            lines.push(event(t, &ip, Some("Ireland"), Some(bytes)));
        }
    }
    for i in 0..15 {
        let t = T0 + 30 * HOURS3 + 60_000 + i * 30_000;
        lines.push(event(
            t,
            "198.51.7.9",
            Some("Ireland"),
            Some(json!(200_000_000)),
        ));
    }
    let config: DetectorConfig = serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
    let run = |score_records: bool| {
        let options = BuildOptions {
            score_records,
            ..BuildOptions::default()
        };
        let mut d = Detector::with_options(config.clone(), options).unwrap();
        let verdicts: Vec<Verdict> = lines
            .chunks(1024)
            .flat_map(|c| d.process(c.iter().map(String::as_str), NOW))
            .collect();
        (verdicts, d.take_scores())
    };
    let (floored, _) = run(false);
    let (exact, records) = run(true);
    let flagged = exact.iter().filter(|v| **v != Verdict::PASS).count();
    println!("{flagged} flagged of {}", exact.len());
    assert!(flagged >= 10, "{flagged}");
    assert!(floored == exact);
    // The last batch's records: scores above 0 below the threshold, the ones skipped.
    assert!(records.iter().any(|r| r.score > 0.0 && !r.flagged));
}

#[test]
fn a_job_needing_a_field_geoip_cannot_fill_is_named() {
    let d = detector(json!({
        "geoip": {},
        "jobs": [{"id": "rare_destination_country", "function": "rare",
                  "by_field_name": "destination.geo.region_name", "bucket_span": "15m"}]
    }));
    let warnings = d.warnings().join("\n");
    assert!(
        warnings.contains("job rare_destination_country needs destination.geo.region_name"),
        "{warnings}"
    );
    assert!(!detector(json!({"geoip": {}}))
        .warnings()
        .iter()
        .any(|w| w.contains("cannot fill")));
}

#[test]
fn events_that_never_qualify_are_reported_once_with_the_fields_expected() {
    let mut d = detector(json!({}));
    let line = r#"{"src_ip":"10.0.0.1","dest_ip":"8.8.8.8","bytes_out":1000}"#;
    for _ in 0..NO_QUALIFYING_WARNING_AFTER + 5 {
        assert_eq!(d.at(line), Verdict::PASS);
    }
    let said: Vec<&String> = d
        .warnings()
        .iter()
        .filter(|w| w.contains("none qualified"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("rare_destination_country (event.category"),
        "{}",
        said[0]
    );
    assert!(said[0].contains("destination.ip"), "{}", said[0]);
}

#[test]
fn enrichment_with_an_ip_location_db_database() {
    enrichment_through("iplocation", false);
}

#[test]
fn enrichment_with_a_geolite2_database() {
    enrichment_through("geolite2", true);
}

#[test]
fn a_missing_database_is_an_error_naming_the_path() {
    let err = Detector::from_json(
        &json!({"rules": [rules_dir()], "geoip": {"database": "/nope/x.mmdb"}}).to_string(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Config));
    assert_eq!(err.problems[0].path.as_str(), "geoip.database");
    assert!(err.message.contains("/nope/x.mmdb"), "{}", err.message);
}

/// A detector whose country job is redefined with two of the bytes job's filters (the two jobs
/// share them), with `threads` threads.
fn sharing_detector(threads: u16) -> Detector {
    detector(json!({
        "threads": threads,
        "jobs": [{"id": "rare_destination_country", "function": "rare",
                  "by_field_name": "destination.geo.country_name", "bucket_span": "15m",
                  "filters": [{"field_positive": "source.bytes"},
                              {"private_source": "source.ip"}]}]
    }))
}

/// Events to a public address with a country, one in three with bytes sent; and how many.
fn some_with_bytes(n: i64) -> (Vec<String>, u64) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let bytes = (i % 3 == 0).then(|| json!(1000 + i));
            event(T0 + i * 60_000, "8.8.8.8", Some("Chile"), bytes)
        })
        .collect();
    (lines, (n as u64).div_ceil(3))
}

/// Two jobs with filters in common: the common filters are checked once per event, and each
/// event is judged afresh. A verdict kept from the event before would have the events without
/// bytes qualify (all 40 counted as qualified, and the country job scoring them).
#[test]
fn filters_two_jobs_share_are_judged_afresh_for_each_event() {
    let mut d = sharing_detector(1);
    assert_eq!(d.shared_filters.len(), 2);
    let (lines, with_bytes) = some_with_bytes(40);
    for line in &lines {
        d.at(line);
    }
    assert_eq!(d.metrics.qualified, with_bytes);
    let scored: Vec<u64> = d.jobs.iter().map(|j| j.scored).collect();
    assert_eq!(scored, [with_bytes, with_bytes]);
}

/// The same through `process`, the host's path, one batch on one thread and on two (where a
/// helper scans ahead): each event of the batch is judged afresh.
#[test]
fn filters_two_jobs_share_are_judged_afresh_in_a_batch_on_one_thread_or_two() {
    let (lines, with_bytes) = some_with_bytes(4 * MIN_SHARED as i64);
    for threads in [1, 2] {
        let mut d = sharing_detector(threads);
        d.process(lines.iter().map(String::as_str), NOW);
        assert_eq!(d.metrics.qualified, with_bytes, "threads: {threads}");
        let scored: Vec<u64> = d.jobs.iter().map(|j| j.scored).collect();
        assert_eq!(scored, [with_bytes, with_bytes], "threads: {threads}");
    }
}
