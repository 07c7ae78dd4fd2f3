//! The detector per batch as the host's engine calls it: in-process (the `rlib`) and through
//! the loaded plugin (the `cdylib` behind the stable ABI), so that the ABI's cost is a measured
//! ratio. Run with `cargo bench -p egresswatch --bench engine`.
//!
//! | axis | values |
//! |---|---|
//! | input | `sample`, `spread` (see `common`) |
//! | config | `rules_and_geoip`: the repository's rules, the bundled GeoIP database; `rules_only`: GeoIP off (the country job then sees only events that carry a country) |
//!
//! Each case runs `in_process` and `loaded_plugin`. The bench builds the plugin itself and loads
//! it from beside its own binary, so a `CARGO_TARGET_DIR` is honoured.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use abi_stable::std_types::RStr;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use egresswatch::loader;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;
use egresswatch_plugin_api::BuildOption;

use common::{inputs, workspace, Param, SAMPLES};

/// Events handed over per call, as the host does by default.
const BATCH: usize = 1024;

/// The clock handed over with each batch (after the sample's events, as in a live run).
const NOW_MS: i64 = 1_800_000_000_000;

fn params() -> Vec<Param<Vec<String>, String>> {
    let configs = [
        (
            "rules_and_geoip",
            serde_json::json!({
                "rules": ["rules"],
                "geoip": { "database": "data/geo/geo-whois-asn-country.mmdb" },
            }),
        ),
        (
            "rules_only",
            serde_json::json!({ "rules": ["rules"], "geoip": false }),
        ),
    ];
    let mut params = Vec::new();
    for (input_name, lines) in inputs() {
        for (config_name, config) in &configs {
            params.push(Param {
                slug: format!("{input_name}/{config_name}"),
                input: lines.clone(),
                config: config.to_string(),
            });
        }
    }
    params
}

/// Builds the plugin and returns its path: in the folder this bench runs from
/// (`<target>/<profile>/deps/engine-*`), wherever the target directory is, with the bench's own
/// profile (`release` under `cargo bench`, `debug` under `cargo test --benches`).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench runs from <target>/<profile>/deps");
    let mut args = vec!["build", "--quiet", "-p", "egresswatch-plugin"];
    if dir.ends_with("release") {
        args.push("--release");
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(&args)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the plugin failed");
    dir.join(loader::library_file_name())
}

fn bench(c: &mut Criterion) {
    let plugin = loader::load(&plugin_path()).expect("plugin loads");
    let base_dir = workspace();
    let mut group = c.benchmark_group("engine");
    group.sample_size(SAMPLES);
    for param in params() {
        let lines = &param.input;
        group.throughput(Throughput::Elements(lines.len() as u64));
        let id = BenchmarkId::new("in_process", &param.slug);
        group.bench_with_input(id, &param.config, |b, config| {
            b.iter_batched(
                || {
                    let options = BuildOptions {
                        base_dir: Some(base_dir.clone()),
                        ..BuildOptions::default()
                    };
                    Detector::build(config, options).expect("detector builds")
                },
                |mut detector| {
                    for chunk in lines.chunks(BATCH) {
                        let batch = chunk.iter().map(String::as_str);
                        std::hint::black_box(detector.process(batch, NOW_MS));
                    }
                    detector
                },
                BatchSize::LargeInput,
            )
        });
        let id = BenchmarkId::new("loaded_plugin", &param.slug);
        group.bench_with_input(id, &param.config, |b, config| {
            b.iter_batched(
                || {
                    let base = base_dir.to_string_lossy().as_ref().into();
                    let options = vec![BuildOption::BaseDir(base)];
                    plugin.construct(config, options).expect("transform builds")
                },
                |mut transform| {
                    let mut batch: Vec<RStr<'_>> = Vec::with_capacity(BATCH);
                    for chunk in lines.chunks(BATCH) {
                        batch.clear();
                        batch.extend(chunk.iter().map(|l| RStr::from_str(l)));
                        std::hint::black_box(transform.process(batch.as_slice().into(), NOW_MS));
                    }
                    transform
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
