//! The generator's tests: determinism, the shape of events and labels, the attacks.

use super::calendar::{parse_rfc3339, weekday};
use super::*;
use egresswatch_common::time::DAY_MS;
use serde_json::Value;

fn small(scenario: Scenario) -> GenerateArgs {
    GenerateArgs {
        hosts: 8,
        days: 4,
        seed: 7,
        scenario,
        ..GenerateArgs::default()
    }
}

fn run(args: &GenerateArgs) -> (String, String, GenerateSummary) {
    let mut out = Vec::new();
    let mut labels = Vec::new();
    let summary = generate(args, &mut out, Some(&mut labels)).expect("generate");
    (
        String::from_utf8(out).expect("utf8"),
        String::from_utf8(labels).expect("utf8"),
        summary,
    )
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let a = run(&small(Scenario::Default));
    let b = run(&small(Scenario::Default));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    let c = run(&GenerateArgs {
        seed: 8,
        ..small(Scenario::Default)
    });
    assert_ne!(a.0, c.0);
}

#[test]
fn lines_parse_with_fields_in_time_order() {
    let args = GenerateArgs {
        with_geo: true,
        ..small(Scenario::Default)
    };
    let (out, _, summary) = run(&args);
    let start = parse_rfc3339(&args.start).expect("start");
    let end = start + 4 * DAY_MS;
    let mut prev = String::new();
    let mut n = 0u64;
    let mut agents = 0u64;
    for line in out.lines() {
        n += 1;
        let v: Value = serde_json::from_str(line).expect("json");
        let ts = v["@timestamp"].as_str().expect("@timestamp");
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z'));
        let ms = parse_rfc3339(ts).expect("ts parses");
        assert!(ms >= start && ms < end);
        assert!(*ts >= *prev.as_str(), "{prev} then {ts}");
        prev = ts.to_owned();
        assert_eq!(get(&v, "event.kind"), "event");
        assert_eq!(get(&v, "event.category"), &serde_json::json!(["network"]));
        assert_eq!(
            get(&v, "event.type"),
            &serde_json::json!(["connection", "end"])
        );
        assert_eq!(get(&v, "event.dataset"), "egresswatch.generated");
        let src: std::net::Ipv4Addr = get(&v, "source.ip")
            .as_str()
            .expect("source.ip")
            .parse()
            .expect("ip");
        assert!(src.is_private());
        let dst: std::net::Ipv4Addr = get(&v, "destination.ip")
            .as_str()
            .expect("destination.ip")
            .parse()
            .expect("ip");
        assert!(!dst.is_private() && !dst.is_documentation() && !dst.is_loopback());
        for f in [
            "source.port",
            "source.bytes",
            "destination.port",
            "destination.bytes",
        ] {
            assert!(get(&v, f).is_u64(), "{f} in {line}");
        }
        assert!(get(&v, "source.bytes").as_u64() > Some(0));
        for f in [
            "destination.geo.country_name",
            "destination.geo.country_iso_code",
            "network.transport",
            "host.name",
            "process.name",
        ] {
            assert!(get(&v, f).is_string(), "{f} in {line}");
        }
        assert_eq!(get(&v, "network.direction"), "outbound");
        let process = get(&v, "process.name").as_str().unwrap_or("");
        if process == "filebeat.exe" || process == "elastic-agent.exe" {
            agents += 1;
            assert_eq!(get(&v, "destination.geo.country_iso_code"), "FI");
        }
    }
    assert_eq!(n, summary.events);
    assert!(agents > 0 && agents * 10 < n, "{agents} of {n}");
}

#[test]
fn labels_point_at_matching_lines() {
    let args = GenerateArgs {
        with_geo: true,
        ..small(Scenario::Default)
    };
    let (out, labels, summary) = run(&args);
    let lines: Vec<&str> = out.lines().collect();
    let mut per_kind = std::collections::BTreeMap::new();
    for label in labels.lines() {
        let l: Value = serde_json::from_str(label).expect("label json");
        let n = l["line"].as_u64().expect("line") as usize;
        let e: Value = serde_json::from_str(lines[n - 1]).expect("event json");
        assert_eq!(&l["destination.ip"], get(&e, "destination.ip"));
        assert_eq!(l["@timestamp"], e["@timestamp"]);
        assert!(e.get("attack").is_none() && e.get("label").is_none());
        *per_kind
            .entry(l["attack"].as_str().expect("attack").to_owned())
            .or_insert(0u64) += 1;
    }
    let expected: std::collections::BTreeMap<String, u64> =
        summary.attacks.iter().cloned().collect();
    assert_eq!(per_kind, expected);
    assert_eq!(
        summary
            .attacks
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["c2", "upload", "slow_exfil"]
    );
    assert!(summary.attacks.iter().all(|(_, n)| *n > 0));
}

#[test]
fn quiet_has_no_labels() {
    let (out, labels, summary) = run(&small(Scenario::Quiet));
    assert!(labels.is_empty());
    assert!(summary.attacks.is_empty());
    assert!(!out.is_empty());
    // No business partners either.
    let (partner, _, _) = run(&small(Scenario::Partner));
    assert!(partner.lines().count() > out.lines().count());
}

#[test]
fn attacks_are_purely_additive() {
    let (base, base_labels, _) = run(&small(Scenario::Partner));
    assert!(base_labels.is_empty());
    for scenario in [
        Scenario::Default,
        Scenario::C2,
        Scenario::Upload,
        Scenario::SlowExfil,
    ] {
        let (out, labels, _) = run(&small(scenario));
        let attack_lines: std::collections::HashSet<usize> = labels
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("label")["line"]
                    .as_u64()
                    .expect("line") as usize
            })
            .collect();
        let rest: Vec<&str> = out
            .lines()
            .enumerate()
            .filter(|(i, _)| !attack_lines.contains(&(i + 1)))
            .map(|(_, l)| l)
            .collect();
        assert_eq!(rest, base.lines().collect::<Vec<_>>(), "{scenario:?}");
    }
}

#[test]
fn upload_sums_to_plan_within_one_bucket() {
    let args = small(Scenario::Upload);
    let cfg = Config::new(&args).expect("config");
    let plan = plan_attacks(&cfg);
    let bucket = plan.upload_bucket.expect("upload fits");
    assert!((2_000_000_000..=5_000_000_000).contains(&plan.upload_bytes));
    let (out, labels, summary) = run(&args);
    assert_eq!(
        summary.attacks,
        vec![("upload".to_owned(), plan.upload.len() as u64)]
    );
    let lines: Vec<&str> = out.lines().collect();
    let mut sum = 0u64;
    for label in labels.lines() {
        let l: Value = serde_json::from_str(label).expect("label");
        assert_eq!(l["attack"], "upload");
        let e: Value = serde_json::from_str(lines[l["line"].as_u64().expect("line") as usize - 1])
            .expect("event");
        let ms = parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts");
        assert!(ms >= bucket && ms < bucket + BUCKET_MS);
        sum += get(&e, "source.bytes").as_u64().expect("bytes");
    }
    assert_eq!(sum, plan.upload_bytes);
}

#[test]
fn c2_beacons_to_a_country_nothing_else_reaches() {
    let args = GenerateArgs {
        with_geo: true,
        ..small(Scenario::C2)
    };
    let (out, labels, _) = run(&args);
    let labelled: std::collections::HashSet<u64> = labels
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("label")["line"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    let start = parse_rfc3339(&args.start).expect("start");
    let mut times = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let e: Value = serde_json::from_str(line).expect("event");
        let kp = get(&e, "destination.geo.country_iso_code") == "KP";
        assert_eq!(kp, labelled.contains(&(i as u64 + 1)), "{line}");
        if kp {
            times.push(parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts"));
        }
    }
    assert!(times[0] >= start + 2 * DAY_MS);
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!((4 * 60_000..=18 * 60_000).contains(&gap), "gap {gap}");
    }
}

#[test]
fn default_volume_and_backup() {
    let args = GenerateArgs::default();
    let mut out = Vec::new();
    let summary = generate(&args, &mut out, None).expect("generate");
    let expected = 50.0 * 96.0 * 6.0;
    let benign = summary.events as f64;
    assert!(benign > expected && benign < expected * 1.5, "{benign}");
    // Every 3 h bucket carries 1-3 GB of backup.
    let mut per_bucket = std::collections::BTreeMap::new();
    for line in String::from_utf8(out).expect("utf8").lines() {
        if line.contains("\"restic\"") {
            let e: Value = serde_json::from_str(line).expect("event");
            let ms = parse_rfc3339(e["@timestamp"].as_str().expect("ts")).expect("ts");
            *per_bucket.entry(ms.div_euclid(BUCKET_MS)).or_insert(0u64) +=
                get(&e, "source.bytes").as_u64().expect("bytes");
        }
    }
    assert_eq!(per_bucket.len(), 32);
    assert!(per_bucket
        .values()
        .all(|b| (1_000_000_000..3_000_000_000).contains(b)));
}

#[test]
fn rfc3339_round_trip_and_weekday() {
    let ms = parse_rfc3339("2026-11-01T00:00:00Z").expect("parse");
    assert_eq!(ms, 1_793_491_200_000);
    assert_eq!(weekday(ms), 6, "2026-11-01 is a Sunday");
    let mut cache = TsCache::default();
    assert_eq!(cache.format(ms + 3_723_456), "2026-11-01T01:02:03.456Z");
    assert_eq!(
        parse_rfc3339("2026-11-01T02:00:00.5+02:00").expect("offset"),
        ms + 500
    );
    for bad in [
        "2026-13-01T00:00:00Z",
        "2026-11-01",
        "2026-11-01T00:00:00Q",
        "x",
    ] {
        assert!(parse_rfc3339(bad).is_err(), "{bad}");
    }
    let args = GenerateArgs {
        start: "yesterday".into(),
        ..GenerateArgs::default()
    };
    let err = generate(&args, &mut Vec::new(), None).expect_err("bad start");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn clap_defaults_match_default_impl() {
    use clap::{Args, Command, FromArgMatches};
    let cmd = GenerateArgs::augment_args(Command::new("generate"));
    let m = cmd
        .try_get_matches_from(["generate"])
        .expect("parse defaults");
    let parsed = GenerateArgs::from_arg_matches(&m).expect("from matches");
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", GenerateArgs::default())
    );
    let cmd = GenerateArgs::augment_args(Command::new("generate"));
    assert!(cmd
        .try_get_matches_from(["generate", "--start", "soon"])
        .is_err());
}
