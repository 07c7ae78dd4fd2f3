//! The GeoIP cache: a destination address to its country, through the per-thread cache in
//! front of the bundled database, as the detector enriches each event. Run with
//! `cargo bench -p egresswatch-plugin --bench geo_cache`.
//!
//! | axis | values |
//! |---|---|
//! | input | the `destination.ip` of each event of `sample` (mostly hits) and `spread` (every lookup a miss; see `common`) |
//! | config | `default`: the default capacity (65,536 entries); `small`: 1,024 entries; `no_cache`: the database alone, for the cache's gain |

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use egresswatch_plugin::geo::{GeoCache, GeoDb, DEFAULT_CACHE_CAPACITY};

use common::{inputs, Param, SAMPLES};

fn addresses(lines: &[String]) -> Vec<IpAddr> {
    lines
        .iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("sample is JSON");
            event["destination"]["ip"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .expect("sample events have a destination address")
        })
        .collect()
}

fn params() -> Vec<Param<Vec<IpAddr>, Option<usize>>> {
    let mut params = Vec::new();
    for (input_name, lines) in inputs() {
        let configs = [
            ("default", Some(DEFAULT_CACHE_CAPACITY)),
            ("small", Some(1024)),
            ("no_cache", None),
        ];
        for (config_name, capacity) in configs {
            params.push(Param {
                slug: format!("{input_name}/{config_name}"),
                input: addresses(&lines),
                config: capacity,
            });
        }
    }
    params
}

fn bench(c: &mut Criterion) {
    let db = Arc::new(GeoDb::bundled().expect("bundled GeoIP database"));
    let mut group = c.benchmark_group("geo_cache");
    group.sample_size(SAMPLES);
    for param in params() {
        group.throughput(Throughput::Elements(param.input.len() as u64));
        let id = BenchmarkId::from_parameter(&param.slug);
        match param.config {
            // A fresh cache per run: the input's own hits and misses, not the previous run's.
            Some(capacity) => group.bench_with_input(id, &param.input, |b, ips| {
                b.iter_batched(
                    || GeoCache::new(Arc::clone(&db), capacity),
                    |mut cache| {
                        for &ip in ips {
                            std::hint::black_box(cache.country(ip));
                        }
                        cache
                    },
                    BatchSize::LargeInput,
                )
            }),
            None => group.bench_with_input(id, &param.input, |b, ips| {
                b.iter(|| {
                    for &ip in ips {
                        std::hint::black_box(db.country(ip));
                    }
                })
            }),
        };
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
