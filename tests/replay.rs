//! `egresswatch replay`: input presets on small fixtures, the summary numbers on a small
//! generated run (checked against `run`), and the labels scoring on a hand-made case.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use egresswatch_common::path::get as get_path;
use egresswatch_tools::replay::quality::{FixedBytes, Labels, NewCountry, Tally};
use egresswatch_tools::replay::{Format, Inputs, Record, ReplaySettings};

use crate::util;

/// Every record of the inputs, in replay order.
fn records(paths: &[PathBuf], format: Format, settings: &ReplaySettings) -> (Vec<Record>, Inputs) {
    let mut inputs = Inputs::open(paths, format, settings, true).expect("inputs open");
    let mut out = Vec::new();
    while let Some(r) = inputs.next_record().expect("inputs read") {
        out.push(r);
    }
    (out, inputs)
}

fn events(path: &Path, format: Format, settings: &ReplaySettings) -> Vec<(Record, Value)> {
    records(&[path.to_owned()], format, settings)
        .0
        .into_iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.json).expect("converted event is JSON");
            (r, v)
        })
        .collect()
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    get_path(v, path).unwrap_or_else(|| panic!("{path} missing in {v}"))
}

const ZEEK_TSV: &str = "\t#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n\
#fields\t_node_name\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\tlabel\n\
#types\tstring\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\tstring\n\
worker-1\t1601998400.500000\tCb2\t10.0.0.5\t51000\t8.8.8.8\t53\tudp\tdns\t0.25\t37\t77\tSF\tT\tF\t0\tDd\t1\t65\t1\t105\t-\tBenign\n\
worker-1\t1601998366.785668\tCa1\t10.0.0.5\t50000\t93.184.216.34\t443\tTCP\t-\t-\t-\t-\tS0\tF\tT\t0\tS\t2\t120\t0\t0\t-\tMalicious\n\
#close\t2020-10-06-17-40-00\n";

#[test]
fn zeek_tsv_preset() {
    let dir = util::temp_dir("replay_zeek_tsv");
    let path = util::write(&dir, "conn.log", ZEEK_TSV);
    let ev = events(&path, Format::Auto, &ReplaySettings::default());
    assert_eq!(ev.len(), 2);
    // Sorted by time: the second data row (line 9) comes first.
    let (r, e) = &ev[0];
    assert_eq!(r.line, 9);
    assert_eq!(r.time_ms, 1_601_998_366_786);
    assert_eq!(field(e, "@timestamp"), "2020-10-06T15:32:46.786Z");
    assert_eq!(field(e, "source.ip"), "10.0.0.5");
    assert_eq!(field(e, "destination.ip"), "93.184.216.34");
    assert_eq!(field(e, "destination.port"), 443);
    assert_eq!(field(e, "source.bytes"), 120);
    assert_eq!(field(e, "destination.bytes"), 0);
    assert_eq!(field(e, "network.bytes"), 120);
    assert_eq!(field(e, "network.transport"), "tcp");
    assert_eq!(field(e, "network.direction"), "inbound");
    assert!(
        get_path(e, "event.duration").is_none(),
        "unset `-` is left out"
    );
    assert!(get_path(e, "network.protocol").is_none());
    assert_eq!(
        field(e, "event.type"),
        &serde_json::json!(["connection", "start"])
    );
    assert_eq!(field(e, "labels.label"), "Malicious");
    let (r, e) = &ev[1];
    assert_eq!(r.line, 8);
    assert_eq!(field(e, "event.id"), "Cb2");
    assert_eq!(field(e, "event.category"), &serde_json::json!(["network"]));
    assert_eq!(field(e, "event.kind"), "event");
    assert_eq!(field(e, "event.duration"), 250_000_000);
    assert_eq!(
        field(e, "source.bytes"),
        65,
        "orig_ip_bytes, not orig_bytes"
    );
    assert_eq!(field(e, "source.packets"), 1);
    assert_eq!(field(e, "destination.bytes"), 105);
    assert_eq!(field(e, "network.bytes"), 170);
    assert_eq!(field(e, "network.packets"), 2);
    assert_eq!(field(e, "network.protocol"), "dns");
    assert_eq!(field(e, "network.direction"), "outbound");
    assert_eq!(field(e, "observer.name"), "worker-1");
    assert_eq!(
        field(e, "event.type"),
        &serde_json::json!(["connection", "start", "end"])
    );
}

#[test]
fn zeek_tsv_gzip_and_custom_mapping() {
    let dir = util::temp_dir("replay_zeek_gz");
    let path = dir.join("conn.log.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).expect("create"),
        flate2::Compression::default(),
    );
    gz.write_all(ZEEK_TSV.as_bytes()).expect("write gz");
    gz.finish().expect("finish gz");
    let settings: ReplaySettings = serde_json::from_value(serde_json::json!({
        "mappings": {"zeek": {"orig_bytes": "source.bytes", "_node_name": null}},
        "constants": {"host.name": "sensor-1"}
    }))
    .expect("settings");
    let ev = events(&path, Format::Zeek, &settings);
    let e = &ev[1].1;
    assert_eq!(
        field(e, "source.bytes"),
        37,
        "payload bytes by custom mapping"
    );
    assert_eq!(field(e, "network.bytes"), 37 + 105);
    assert_eq!(field(e, "host.name"), "sensor-1");
    assert!(get_path(e, "observer.name").is_none());
}

#[test]
fn zeek_json_preset() {
    let dir = util::temp_dir("replay_zeek_json");
    let path = util::write(
        &dir,
        "conn.log",
        r#"{"ts":30.043784,"uid":"CeX","id.orig_h":"10.0.2.15","id.orig_p":49158,"id.resp_h":"195.113.232.73","id.resp_p":80,"proto":"tcp","service":"http","duration":0.5,"orig_bytes":97,"resp_bytes":179,"conn_state":"SF","local_orig":true,"local_resp":false,"orig_pkts":5,"orig_ip_bytes":309,"resp_pkts":5,"resp_ip_bytes":383}
"#,
    );
    let ev = events(&path, Format::Auto, &ReplaySettings::default());
    assert_eq!(ev.len(), 1);
    let e = &ev[0].1;
    assert_eq!(field(e, "@timestamp"), "1970-01-01T00:00:30.044Z");
    assert_eq!(field(e, "source.ip"), "10.0.2.15");
    assert_eq!(field(e, "source.port"), 49158);
    assert_eq!(field(e, "destination.ip"), "195.113.232.73");
    assert_eq!(field(e, "source.bytes"), 309);
    assert_eq!(field(e, "destination.bytes"), 383);
    assert_eq!(field(e, "network.bytes"), 692);
    assert_eq!(field(e, "network.direction"), "outbound");
    assert_eq!(field(e, "event.duration"), 500_000_000);
}

#[test]
fn suricata_preset() {
    let dir = util::temp_dir("replay_suricata");
    let path = util::write(
        &dir,
        "eve.json",
        concat!(
            r#"{"timestamp":"2021-06-06T15:57:37.272281+0200","flow_id":445348883402532,"event_type":"flow","src_ip":"192.168.1.132","src_port":1900,"dest_ip":"203.0.113.9","dest_port":44232,"proto":"UDP","app_proto":"failed","flow":{"pkts_toserver":12,"pkts_toclient":1,"bytes_toserver":4056,"bytes_toclient":60,"start":"2021-06-06T16:38:55.855844+0200","end":"2021-06-06T16:38:56.963027+0200","age":1,"state":"new"}}"#,
            "\n",
            r#"{"timestamp":"2021-06-06T15:57:38.000000+0200","event_type":"dns","src_ip":"192.168.1.132","dest_ip":"8.8.8.8"}"#,
            "\n"
        ),
    );
    let (_, inputs) = records(
        std::slice::from_ref(&path),
        Format::Auto,
        &ReplaySettings::default(),
    );
    assert_eq!(
        inputs.skipped().values().sum::<u64>(),
        1,
        "the dns event is skipped"
    );
    let ev = events(&path, Format::Suricata, &ReplaySettings::default());
    assert_eq!(ev.len(), 1);
    let e = &ev[0].1;
    assert_eq!(
        field(e, "@timestamp"),
        "2021-06-06T14:38:55.855Z",
        "flow.start"
    );
    assert_eq!(field(e, "source.ip"), "192.168.1.132");
    assert_eq!(field(e, "destination.ip"), "203.0.113.9");
    assert_eq!(field(e, "destination.port"), 44232);
    assert_eq!(field(e, "source.bytes"), 4056);
    assert_eq!(field(e, "destination.bytes"), 60);
    assert_eq!(field(e, "source.packets"), 12);
    assert_eq!(field(e, "network.transport"), "udp");
    assert_eq!(field(e, "network.bytes"), 4116);
    assert_eq!(field(e, "event.start"), "2021-06-06T14:38:55.855Z");
    assert_eq!(field(e, "event.id"), "445348883402532");
    assert!(
        get_path(e, "network.protocol").is_none(),
        "app_proto `failed` dropped"
    );
}

#[test]
fn argus_preset_csv_and_tab() {
    let dir = util::temp_dir("replay_argus");
    let csv = util::write(
        &dir,
        "a.binetflow",
        "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,SrcPkts,Label\n\
         2019/04/04 16:23:00.325010,0.027947,udp,10.8.0.69,48427,  <->,8.8.8.8,53,CON,0,0,2,142,63,1,\n\
         2019/04/04 16:24:00.000000,1.5,icmp,10.8.0.69,0x0303,  ->,93.184.216.34,0x0008,ECO,0,0,4,400,300,3,flow=From-Botnet\n",
    );
    let ev = events(&csv, Format::Auto, &ReplaySettings::default());
    assert_eq!(ev.len(), 2);
    let e = &ev[0].1;
    assert_eq!(field(e, "@timestamp"), "2019-04-04T16:23:00.325Z");
    assert_eq!(field(e, "source.ip"), "10.8.0.69");
    assert_eq!(field(e, "source.port"), 48427);
    assert_eq!(field(e, "destination.ip"), "8.8.8.8");
    assert_eq!(field(e, "source.bytes"), 63);
    assert_eq!(field(e, "destination.bytes"), 79);
    assert_eq!(field(e, "network.bytes"), 142);
    assert_eq!(field(e, "network.packets"), 2);
    assert_eq!(field(e, "destination.packets"), 1);
    assert_eq!(field(e, "event.duration"), 27_947_000);
    assert!(get_path(e, "labels.label").is_none());
    let e = &ev[1].1;
    assert_eq!(field(e, "source.port"), 0x303);
    assert_eq!(field(e, "destination.port"), 8);
    assert_eq!(field(e, "labels.label"), "flow=From-Botnet");

    let tab = util::write(
        &dir,
        "b.binetflow",
        "StartTime\tDur\tProto\tSrcAddr\tSport\tDir\tDstAddr\tDport\tState\tsTos\tdTos\tTotPkts\tTotBytes\tSrcBytes\tSrcPkts\tLabel\n\
         1970/01/01 01:00:00.000000\t0.000000\tllc\t00:00:00:00:00:00\t0\t   ->\t00:00:00:00:00:00\t0\tINT\t\t\t1\t60\t60\t1\tflow=Background\n",
    );
    let ev = events(&tab, Format::Argus, &ReplaySettings::default());
    let e = &ev[0].1;
    assert_eq!(field(e, "@timestamp"), "1970-01-01T01:00:00.000Z");
    assert!(
        get_path(e, "source.ip").is_none(),
        "a MAC address is not an IP"
    );
    assert_eq!(field(e, "source.address"), "00:00:00:00:00:00");
    assert_eq!(field(e, "destination.bytes"), 0);
}

#[test]
fn inputs_merge_in_time_order_with_lines_across_files() {
    let dir = util::temp_dir("replay_merge");
    let a = util::write(
        &dir,
        "a.ndjson",
        "{\"@timestamp\":\"2026-11-01T00:00:02Z\",\"n\":1}\n{\"@timestamp\":\"2026-11-01T00:00:04Z\",\"n\":2}\n",
    );
    let b = util::write(
        &dir,
        "b.ndjson",
        "{\"@timestamp\":\"2026-11-01T00:00:03Z\",\"n\":3}\n",
    );
    let (merged, _) = records(&[a, b], Format::Auto, &ReplaySettings::default());
    let lines: Vec<u64> = merged.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![1, 3, 2]);
}

#[test]
fn labels_scoring_on_a_hand_made_case() {
    let labels = Labels::parse(
        "{\"line\": 2, \"attack\": \"c2\"}\n{\"line\": 3, \"attack\": \"c2\"}\n{\"line\": 5, \"attack\": \"upload\"}\n\
         {\"line\": 7, \"attack\": \"upload\"}\n",
    )
    .expect("labels");
    // Flagged: 2 (c2), 4 (benign), 5 (upload), 9 (benign).
    let mut tally = Tally::default();
    for line in [2, 4, 5, 9] {
        tally.add(line, &labels);
    }
    let q = tally.quality("rule", &labels, 2.0);
    assert_eq!(q.flagged, 4);
    assert_eq!(q.true_positives, 2);
    assert_eq!(q.false_positives, 2);
    assert_eq!(q.precision, Some(0.5));
    assert_eq!(q.recall, Some(0.5));
    assert_eq!(q.flagged_per_day, 2.0);
    assert_eq!(
        q.per_kind,
        vec![("c2".to_owned(), 1, 2), ("upload".to_owned(), 1, 2)]
    );
    assert_eq!((q.alerts, q.episodes_caught), (0, 0), "no alert was named");
    // Per alert: flagged events grouped by the alert they belong to. Alert "a" holds lines 2
    // and 4 (true: line 2 is c2), "b" line 9 (false), "c" line 5 (true); episodes are attack
    // kind and destination: c2 to 1.2.3.4 caught, upload caught.
    let labels = Labels::parse(
        "{\"line\": 2, \"attack\": \"c2\", \"destination.ip\": \"1.2.3.4\"}\n\
         {\"line\": 3, \"attack\": \"c2\", \"destination.ip\": \"1.2.3.4\"}\n\
         {\"line\": 6, \"attack\": \"c2\", \"destination.ip\": \"5.6.7.8\"}\n\
         {\"line\": 5, \"attack\": \"upload\"}\n",
    )
    .expect("labels");
    assert_eq!(labels.episodes(), 3);
    let mut per_alert = Tally::default();
    for (line, alert) in [(2, "a"), (4, "a"), (9, "b"), (5, "c")] {
        per_alert.add(line, &labels);
        per_alert.add_to_alert(line, alert, &labels);
    }
    let q = per_alert.quality("rule", &labels, 2.0);
    assert_eq!((q.alerts, q.true_alerts), (3, 2));
    assert_eq!(q.alert_precision, Some(2.0 / 3.0));
    assert_eq!(q.false_alerts_per_day, 0.5);
    assert_eq!((q.episodes_caught, q.episodes), (2, 3));
    let table = egresswatch_tools::replay::quality::table(&[q], &labels.kinds());
    assert!(table.contains("2/3"), "{table}");
    let labels = Labels::parse(
        "{\"line\": 2, \"attack\": \"c2\"}\n{\"line\": 3, \"attack\": \"c2\"}\n{\"line\": 5, \"attack\": \"upload\"}\n\
         {\"line\": 7, \"attack\": \"upload\"}\n",
    )
    .expect("labels");
    let q = tally.quality("rule", &labels, 2.0);
    let none = Tally::default().quality("silent", &labels, 2.0);
    assert_eq!(none.precision, None);
    assert_eq!(none.recall, Some(0.0));
    let table = egresswatch_tools::replay::quality::table(&[q, none], &labels.kinds());
    assert!(table.contains("50.0%"), "{table}");
    assert!(table.contains("1/2 caught"), "{table}");
    assert!(table.contains("0/2 missed"), "{table}");
}

#[test]
fn baselines_on_hand_made_events() {
    const H: i64 = 3_600_000;
    // Warm-up until hour 2; window 1 day: KP is new at hour 5, DE again new at hour 30.
    let mut country = NewCountry::new(1.0);
    let flagged: Vec<u64> = [
        (0, 1, "US"),
        (1, 2, "DE"),
        (5, 3, "KP"),
        (6, 4, "KP"),
        (30, 5, "DE"),
    ]
    .into_iter()
    .filter(|&(h, _, c)| country.observe(h * H, c, h < 2))
    .map(|(_, line, _)| line)
    .collect();
    assert_eq!(flagged, vec![3, 5]);
    let events = [
        (0, 1, "a", 60.0),
        (1, 2, "a", 60.0), // bucket 0 of a reaches 120
        (2, 3, "a", 10.0), // still over in the same bucket
        (3, 4, "a", 60.0), // new 3h bucket
        (4, 5, "b", 99.0),
    ];
    for (warm_until, expected) in [(0, vec![2, 3]), (2 * H, vec![3])] {
        let mut bytes = FixedBytes::new(3 * H, 100.0);
        let flagged: Vec<u64> = events
            .into_iter()
            .filter(|&(h, _, d, b)| bytes.observe(h * H, d, b, h * H < warm_until))
            .map(|(_, line, _, _)| line)
            .collect();
        assert_eq!(flagged, expected);
    }
}

fn config_for(dir: &Path) -> PathBuf {
    let ws = util::workspace();
    let config = format!(
        "detector:\n  rules: [{}]\n  geoip:\n    database: {}\n",
        ws.join("rules").display(),
        ws.join("data/geo/geo-whois-asn-country.mmdb").display()
    );
    util::write(dir, "config.yaml", config)
}

/// Numbers of a summary row, by rule name: (seen, scored, flagged, per day).
fn summary_row(stdout: &str, name: &str) -> (u64, u64, u64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name} in\n{stdout}"));
    let cells: Vec<&str> = line[name.len()..].split_whitespace().collect();
    let n = |s: &str| s.replace(',', "").parse::<u64>().expect("count");
    (
        n(cells[2]),
        n(cells[3]),
        n(cells[4]),
        cells[5].parse().expect("per day"),
    )
}

#[test]
fn summary_numbers_on_a_generated_run_match_run() {
    let dir = util::temp_dir("replay_summary");
    let config = config_for(&dir);
    let labels = dir.join("labels.ndjson");
    let gen = util::run(
        &[
            "generate",
            "--hosts",
            "4",
            "--days",
            "4",
            "--scenario",
            "default",
            "--labels",
            labels.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    assert!(gen.status.success(), "{}", util::stderr(&gen));
    let input = util::write(&dir, "traffic.ndjson", &gen.stdout);
    let out_dir = dir.join("out");
    let args = [
        "replay",
        "--config",
        config.to_str().expect("utf-8"),
        "--labels",
        labels.to_str().expect("utf-8"),
        "--out-dir",
        out_dir.to_str().expect("utf-8"),
        input.to_str().expect("utf-8"),
    ];
    let replay = util::run(&args, b"");
    assert!(replay.status.success(), "{}", util::stderr(&replay));
    let stdout = String::from_utf8_lossy(&replay.stdout).into_owned();
    let events = gen.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    let replayed: u64 = stdout
        .split("replayed ")
        .nth(1)
        .and_then(|rest| rest.split(" events").next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no event count in {stdout}"));
    assert_eq!(replayed, events, "{stdout}");

    // Same config through `run`: every event it annotates is in flagged.ndjson, once.
    let run = util::run(
        &["run", "--config", config.to_str().expect("utf-8")],
        &gen.stdout,
    );
    assert!(run.status.success(), "{}", util::stderr(&run));
    let run_flagged: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter(|l| l.contains("\"rule\""))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let flagged_text = std::fs::read_to_string(out_dir.join("flagged.ndjson")).expect("flagged");
    let flagged: Vec<Value> = flagged_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(!flagged.is_empty(), "the generated attacks are flagged");
    // Exactly the events `run` flags, written exactly as `run` writes them, in the same order.
    assert_eq!(flagged, run_flagged, "{stdout}");

    // The same events from a pipe (`-`) give the same flagged events.
    let piped_dir = dir.join("piped");
    let piped = util::run(
        &[
            "replay",
            "--config",
            config.to_str().expect("utf-8"),
            "--out-dir",
            piped_dir.to_str().expect("utf-8"),
            "-",
        ],
        &gen.stdout,
    );
    assert!(piped.status.success(), "{}", util::stderr(&piped));
    assert_eq!(
        std::fs::read_to_string(piped_dir.join("flagged.ndjson")).expect("flagged"),
        flagged_text
    );

    // Per rule: flagged <= scored <= seen, per day = flagged / 4 days, and the per-rule counts
    // cover every flagged event.
    let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
    for e in &flagged {
        *by_rule
            .entry(
                field(e, "egresswatch.rule.name")
                    .as_str()
                    .expect("name")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    let mut total = 0;
    for name in [
        "Network Traffic to Rare Destination Country",
        "Potential Data Exfiltration Activity to an Unusual IP Address",
    ] {
        let (seen, scored, flagged_n, per_day) = summary_row(&stdout, name);
        assert!(
            flagged_n <= scored && scored <= seen && seen <= events,
            "{stdout}"
        );
        assert!((per_day - flagged_n as f64 / 4.0).abs() < 0.051, "{stdout}");
        assert!(flagged_n >= by_rule.get(name).copied().unwrap_or(0));
        total += flagged_n;
    }
    assert!(total >= flagged.len() as u64);
    assert!(
        stdout.contains("baseline: country not seen in 7 days"),
        "{stdout}"
    );
    assert!(stdout.contains("precision"), "{stdout}");

    let html = std::fs::read_to_string(out_dir.join("report.html")).expect("report");
    assert!(html.contains("<svg") && html.contains("threshold 75"));
    assert!(!html.contains("<script"));

    // Threshold 0: everything scored is flagged.
    let out0 = dir.join("out0");
    let mut args0 = args.to_vec();
    args0.splice(1..1, ["--threshold", "0"]);
    let at = args0.len() - 2;
    args0[at] = out0.to_str().expect("utf-8");
    let replay0 = util::run(&args0, b"");
    assert!(replay0.status.success(), "{}", util::stderr(&replay0));
    let stdout0 = String::from_utf8_lossy(&replay0.stdout).into_owned();
    let (_, scored, flagged_n, _) =
        summary_row(&stdout0, "Network Traffic to Rare Destination Country");
    assert_eq!(scored, flagged_n, "{stdout0}");
}
