//! The field scanner alone: one pass over each event line for the wanted fields, the first
//! thing the detector does per event. Run with
//! `cargo bench -p egresswatch-plugin --bench scan`.
//!
//! | axis | values |
//! |---|---|
//! | input | `sample`, `spread` (see `common`), `dotted`: the sample with every nested key written as one dotted key (`{"destination.ip": ..}`), the form some shippers send |
//! | config | `detector`: the fields the default detector reads (both rules); `one_field`: `destination.ip` only |

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::fields::{Scanner, SchemaBuilder};
use egresswatch_plugin::Detector;

use common::{inputs, workspace, Param, SAMPLES};

/// The scanner of the default detector (the repository's rules, the bundled GeoIP database).
fn detector_scanner() -> Scanner {
    let options = BuildOptions {
        base_dir: Some(workspace()),
        ..BuildOptions::default()
    };
    let config = serde_json::json!({ "rules": ["rules"] }).to_string();
    Detector::build(&config, options)
        .expect("detector builds")
        .scanner()
}

fn one_field_scanner() -> Scanner {
    let mut schema = SchemaBuilder::new();
    schema.field("destination.ip");
    Scanner::new(Arc::new(schema.build().expect("one path")))
}

/// `{"a":{"b":1}}` as `{"a.b":1}`, recursively; arrays and values as they are.
fn dotted(line: &str) -> String {
    fn flatten(
        prefix: &str,
        value: serde_json::Value,
        out: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        match value {
            serde_json::Value::Object(members) => {
                for (key, value) in members {
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&path, value, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other);
            }
        }
    }
    let mut out = serde_json::Map::new();
    flatten(
        "",
        serde_json::from_str(line).expect("sample is JSON"),
        &mut out,
    );
    serde_json::Value::Object(out).to_string()
}

/// How a case's scanner is made: which fields it looks for.
type MakeScanner = fn() -> Scanner;

fn params() -> Vec<Param<Vec<String>, MakeScanner>> {
    let mut inputs = inputs();
    let dotted_lines = inputs[0].1.iter().map(|l| dotted(l)).collect();
    inputs.push(("dotted", dotted_lines));
    let configs: [(&str, MakeScanner); 2] = [
        ("detector", detector_scanner),
        ("one_field", one_field_scanner),
    ];
    let mut params = Vec::new();
    for (input_name, lines) in &inputs {
        for (config_name, config) in configs {
            params.push(Param {
                slug: format!("{input_name}/{config_name}"),
                input: lines.clone(),
                config,
            });
        }
    }
    params
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    group.sample_size(SAMPLES);
    for param in params() {
        let mut scanner = (param.config)();
        group.throughput(Throughput::Elements(param.input.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(&param.slug),
            &param.input,
            |b, lines| {
                b.iter(|| {
                    for line in lines {
                        let event = scanner.scan(line).expect("sample events are readable");
                        std::hint::black_box(event.conflicting());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
