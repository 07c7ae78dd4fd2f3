use super::*;

#[test]
fn yaml_and_toml_give_the_same_config() {
    let yaml =
        "batch:\n  max_events: 7\noutputs:\n  anomalies:\n    type: file\n    path: a.ndjson\n";
    let toml =
        "[batch]\nmax_events = 7\n[outputs.anomalies]\ntype = \"file\"\npath = \"a.ndjson\"\n";
    let a = HostConfig::parse(yaml, false).unwrap();
    let b = HostConfig::parse(toml, true).unwrap();
    assert_eq!(a.batch.max_events, 7);
    assert_eq!(b.batch.max_events, 7);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.batch.max_line_bytes, 1 << 20);
}

#[test]
fn nesting_is_limited_with_the_line_named() {
    // 100k levels: a plain YAML parse takes minutes (quadratic in the flow depth).
    let deep = format!(
        "batch: {{}}\ndetector: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = HostConfig::parse(&deep, false).unwrap_err();
    assert_eq!(
        err,
        "line 2: nested deeper than 64 levels of mappings and sequences"
    );
    let mappings = format!("detector: {}1{}\n", "{a: ".repeat(65), "}".repeat(65));
    let err = HostConfig::parse(&mappings, false).unwrap_err();
    assert!(err.contains("nested deeper than 64"), "{err}");
    let ok = format!("detector: {}1{}\n", "{a: ".repeat(60), "}".repeat(60));
    assert!(HostConfig::parse(&ok, false).is_ok());
    // TOML's own parser stops early; its message does not echo a megabyte-long line.
    let deep = format!(
        "detector = {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = HostConfig::parse(&deep, true).unwrap_err();
    assert!(
        err.starts_with("TOML parse error at line 1, column "),
        "{err}"
    );
    assert!(err.len() < 200, "{err}");
}

#[test]
fn unknown_fields_are_named_with_their_position() {
    let err = HostConfig::parse("batch:\n  max_event: 7\n", false).unwrap_err();
    assert!(err.contains("max_event"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn every_problem_is_reported() {
    let config = HostConfig::parse(
        "batch: {max_events: 0}\nfail_closed: true\nunreadable: errors\n",
        false,
    )
    .unwrap();
    let problems = config.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("batch.max_events"));
}

#[test]
fn adapters_state_and_metrics_are_checked() {
    let config = HostConfig::parse(
        "input: {type: tcp, address: 'localhost:'}\n\
         outputs: {default: {type: tcp, address: 'vector:6000'}, b: {type: tcp, address: x}}\n\
         state: {path: s.bin, interval_secs: 0}\n\
         metrics: {address: '0.0.0.0:9900'}\n",
        false,
    )
    .unwrap();
    let problems = config.problems();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].starts_with("input.address"), "{problems:?}");
    assert!(problems[1].starts_with("outputs.b.address"), "{problems:?}");
    assert!(
        problems[2].starts_with("state.interval_secs"),
        "{problems:?}"
    );
    assert!(problems[3].contains("allow_non_loopback"), "{problems:?}");

    let config = HostConfig::parse(
        "metrics: {address: '0.0.0.0:9900', allow_non_loopback: true}\n\
         input: {type: unix, path: in.sock}\nstate: {path: s.bin}\n",
        false,
    )
    .unwrap();
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    assert_eq!(config.state.unwrap().interval_secs, 60);
}

#[test]
fn http_outputs_are_checked() {
    let config = HostConfig::parse(
        "outputs:\n  default: {type: http, url: 'http://vector:8080/events'}\n  \
         a: {type: http, url: 'https://[::1]/x', request_timeout_secs: 0}\n  \
         b: {type: http, url: 'ftp://x/'}\n  c: {type: http, url: 'http://u:p@x/'}\n",
        false,
    )
    .unwrap();
    let problems = config.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("outputs.a.request_timeout_secs"));
    assert!(problems[1].starts_with("outputs.b.url"), "{problems:?}");
    assert!(problems[2].contains("credentials"), "{problems:?}");
    assert!(check_url("http://127.0.0.1:9/").is_ok());
    let config = HostConfig::parse(
        "input: {type: http, address: '127.0.0.1:8080', tls: {cert_file: '', key_file: k}}\n\
         outputs:\n  a: {type: http, url: 'http://x/', tls: {ca_file: ca.pem}}\n  \
         b: {type: http, url: 'https://x/', tls: {cert_file: c.pem}}\n  \
         c: {type: http, url: 'https://x/', tls: {ca_file: ca.pem, cert_file: c, key_file: k}}\n",
        false,
    )
    .unwrap();
    let problems = config.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("input.tls.cert_file"),
        "{problems:?}"
    );
    assert!(problems[1].contains("not https"), "{problems:?}");
    assert!(problems[2].contains("go together"), "{problems:?}");
    assert!(check_url("http://bad host/").is_err());
}

#[test]
fn tcp_tls_blocks_are_checked_like_the_http_ones() {
    let config = HostConfig::parse(
        "input: {type: tcp, address: '0.0.0.0:9000', tls: {cert_file: c, key_file: '', client_ca_file: ca}}\n\
         outputs:\n  a: {type: tcp, address: 'vector:6000', tls: {key_file: k}}\n  \
         b: {type: tcp, address: 'vector:6000', tls: {ca_file: ''}}\n  \
         c: {type: tcp, address: 'vector:6000', tls: {ca_file: ca, cert_file: c, key_file: k}}\n  \
         d: {type: tcp, address: '10.0.0.9:6000', tls: {server_name: siem.example}}\n  \
         e: {type: http, url: 'https://10.0.0.9/', tls: {server_name: siem.example}}\n",
        false,
    )
    .unwrap();
    let problems = config.problems();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert_eq!(
        problems[..3],
        [
            "input.tls.key_file: must not be empty",
            "outputs.a.tls: cert_file and key_file go together",
            "outputs.b.tls.ca_file: must not be empty",
        ],
    );
    assert!(
        problems[3].starts_with("outputs.e.tls.server_name: not supported on an http output"),
        "{problems:?}"
    );
    let unknown = HostConfig::parse(
        "input: {type: tcp, address: '127.0.0.1:9000', tls: {cert_file: c, key_file: k, verify: no}}",
        false,
    );
    assert!(unknown.is_err(), "an unknown tls key is refused");
}

#[test]
fn routes_without_outputs_are_reported() {
    let config = HostConfig::parse("outputs: {pager: {type: stdout}}", false).unwrap();
    let missing = config.missing_routes(&["pager".into(), "anomalies".into(), "default".into()]);
    assert_eq!(missing.len(), 1);
    assert!(missing[0].contains("anomalies"));
}
