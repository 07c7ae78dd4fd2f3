//! Throughput of the detector over the bundled sample events, in-process (the `rlib`) and
//! through the loaded plugin (the `cdylib` behind the stable ABI), so that the ABI's cost is a
//! measured ratio. Run with `cargo bench --bench throughput`.

use std::path::{Path, PathBuf};
use std::process::Command;

use abi_stable::std_types::RStr;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use egresswatch::loader;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;
use egresswatch_plugin_api::BuildOption;

/// Events handed over per call, as the host does by default.
const BATCH: usize = 1024;

/// The clock handed over with each batch (after the sample's events, as in a live run).
const NOW_MS: i64 = 1_800_000_000_000;

/// One benchmark case.
struct Param {
    slug: &'static str,
    /// Directory the configuration's relative paths are resolved against.
    base_dir: PathBuf,
    config: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample_lines() -> Vec<String> {
    let path = workspace().join("examples/data/sample.ndjson");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(str::to_owned).collect()
}

fn params() -> Vec<Param> {
    let base = workspace();
    vec![Param {
        slug: "rules_and_geoip",
        base_dir: base,
        config: serde_json::json!({
            "rules": ["rules"],
            "geoip": { "database": "data/geo/geo-whois-asn-country.mmdb" },
        })
        .to_string(),
    }]
}

/// Builds the release plugin (the bench profile's artifacts live in `target/release`).
fn plugin_path() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "--quiet", "--release", "-p", "egresswatch-plugin"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the plugin failed");
    workspace()
        .join("target/release")
        .join(loader::library_file_name())
}

fn bench(c: &mut Criterion) {
    let lines = sample_lines();
    let plugin = loader::load(&plugin_path()).expect("plugin loads");
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(lines.len() as u64));
    for param in params() {
        group.bench_function(format!("{}/in_process", param.slug), |b| {
            b.iter_batched(
                || {
                    let options = BuildOptions {
                        base_dir: Some(param.base_dir.clone()),
                        ..BuildOptions::default()
                    };
                    Detector::build(&param.config, options).expect("detector builds")
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
        group.bench_function(format!("{}/loaded_plugin", param.slug), |b| {
            b.iter_batched(
                || {
                    let base = param.base_dir.to_string_lossy().as_ref().into();
                    let options = vec![BuildOption::BaseDir(base)];
                    plugin
                        .construct(&param.config, options)
                        .expect("transform builds")
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
