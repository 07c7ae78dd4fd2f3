use super::*;

use egresswatch_plugin_api::{Label, MetricKind};

fn metric(name: &str, kind: MetricKind, labels: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        name: name.into(),
        help: format!("help of {name}").into(),
        kind,
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        value,
    }
}

fn metrics() -> Metrics {
    let m = Metrics::new(BuildInfo {
        version: "1.2.3".into(),
        commit: "abc1234".into(),
        plugin: "p".into(),
        plugin_version: "0.1".into(),
        abi_version: "0.2.0".into(),
    });
    {
        let mut s = m.snapshot();
        s.host.lines_in = 4;
        s.connections_open = 2;
        s.connections_accepted = 5;
    }
    m.output("default").delivered(3);
    m.observe_batch(0.0003);
    m.observe_batch(10.0);
    m.set_plugin(vec![
        metric("plugin_learning", MetricKind::GAUGE, &[("job", "a")], 1.0),
        metric(
            "plugin_flagged_total",
            MetricKind::COUNTER,
            &[("rule", "Rare \"x\"")],
            2.0,
        ),
        metric("plugin_learning", MetricKind::GAUGE, &[("job", "b")], 0.0),
        metric("plugin_learning", MetricKind::COUNTER, &[("job", "c")], 7.0),
        metric("bad name", MetricKind::GAUGE, &[], 1.0),
        metric("egresswatch_events_in_total", MetricKind::COUNTER, &[], 9.0),
    ]);
    m
}

#[test]
fn renders_host_plugin_process_and_build_families() {
    let text = metrics().render(false);
    assert!(
        text.contains(
            "# TYPE egresswatch_events_in_total counter\negresswatch_events_in_total 4\n"
        ),
        "{text}"
    );
    assert!(text.contains("egresswatch_events_out_total{output=\"default\"} 3\n"));
    assert!(
        text.contains("egresswatch_input_connections_open 2\n"),
        "{text}"
    );
    assert!(text.contains("egresswatch_input_connections_accepted_total 5\n"));
    assert!(
        text.contains("# TYPE plugin_learning gauge\nplugin_learning{exported_job=\"a\"} 1\nplugin_learning{exported_job=\"b\"} 0\n"),
        "{text}"
    );
    assert!(!text.contains("exported_job=\"c\""), "another kind: {text}");
    assert!(
        text.contains("# TYPE plugin_flagged_total counter\n"),
        "{text}"
    );
    assert!(text.contains("rule=\"Rare \\\"x\\\"\"} 2\n"), "{text}");
    assert!(!text.contains("bad name"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("egresswatch_events_in_total "))
            .count(),
        1,
        "a plugin family with a host name is left out: {text}"
    );
    assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
    assert!(text.contains("egresswatch_batch_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert!(text.contains("egresswatch_build_info{version=\"1.2.3\",commit=\"abc1234\""));
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    assert!(!text.contains("# EOF"));
    let om = metrics().render(true);
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE egresswatch_events_in counter\negresswatch_events_in_total 4\n"));
}

#[test]
fn the_text_parses_with_one_type_per_family_and_no_job_label() {
    let text = metrics().render(false);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(scrape.samples.len() > 25, "{}", scrape.samples.len());
    for sample in &scrape.samples {
        assert!(
            !matches!(sample.value, prometheus_parse::Value::Untyped(_))
            // The parser reads a histogram's `_sum` and `_count` as untyped samples.
            || ["_sum", "_count"].iter().any(|s| sample
                .metric
                .strip_suffix(s)
                .is_some_and(|h| text.contains(&format!("# TYPE {h} histogram\n")))),
            "{} has no TYPE of its own family",
            sample.metric
        );
        assert!(sample.labels.get("job").is_none(), "{}", sample.metric);
    }
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let unique: HashSet<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(types.len(), unique.len(), "a family twice: {types:?}");
}

#[test]
fn health_needs_every_input_bound_and_every_output_up() {
    let m = metrics();
    assert!(m.health().0, "nothing declared: healthy");
    m.input_declared("input");
    let out = m.output("default");
    // `metrics()` delivered to it, which set it up.
    out.set_up(false);
    let (healthy, body) = m.health();
    assert!(!healthy, "{body}");
    m.input_bound("input", "tcp://127.0.0.1:9000");
    assert!(!m.health().0, "the output is not up yet");
    out.set_up(true);
    let (healthy, body) = m.health();
    assert!(healthy, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["inputs"][0]["address"], "tcp://127.0.0.1:9000");
    out.set_up(false);
    out.error("connection refused");
    out.set_pending_bytes(1234);
    let (healthy, body) = m.health();
    assert!(!healthy);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["outputs"][0]["last_error"], "connection refused");
    assert_eq!(json["outputs"][0]["pending_bytes"], 1234);
    let text = m.render(false);
    assert!(
        text.contains("egresswatch_output_up{output=\"default\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("egresswatch_output_errors_total{output=\"default\"} 1\n"));
    assert!(text.contains("egresswatch_output_pending_bytes{output=\"default\"} 1234\n"));
    assert!(
        !text.contains("egresswatch_output_last_error_timestamp_seconds{output=\"default\"} 0\n")
    );
}
