//! The models alone: each event's observation scored and learned by the `rare` and `high_sum`
//! models of Elastic's two jobs, fresh from empty, as the detector drives them. Run with
//! `cargo bench -p egresswatch-plugin --bench models`.
//!
//! | axis | values |
//! |---|---|
//! | input | `sample`, `spread` (see `common`): what the job extracts from each event, with the destination's country from the bundled GeoIP database |
//! | config | `rare`: `rare` by `destination.geo.country_name` (15m buckets); `high_sum`: `high_sum(source.bytes)` over `destination.ip` (3h buckets); default settings |

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use egresswatch_common::time::parse_rfc3339_ms;
use egresswatch_plugin::geo::GeoDb;
use egresswatch_plugin::models::{HighSumConfig, Model, Observation, RareConfig};

use common::{inputs, Param, SAMPLES};

/// What a job reads from one event, owned.
struct Fields {
    time_ms: i64,
    destination_ip: String,
    country: Option<&'static str>,
    bytes: f64,
}

fn fields(lines: &[String], geo: &GeoDb) -> Vec<Fields> {
    lines
        .iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("sample is JSON");
            let destination_ip = event["destination"]["ip"].as_str().unwrap_or("").to_owned();
            let country = destination_ip
                .parse()
                .ok()
                .and_then(|ip| geo.country(ip))
                .map(|c| c.name());
            Fields {
                time_ms: event["@timestamp"]
                    .as_str()
                    .and_then(parse_rfc3339_ms)
                    .expect("sample events have a time"),
                destination_ip,
                country,
                bytes: event["source"]["bytes"].as_f64().unwrap_or(0.0),
            }
        })
        .collect()
}

/// Which model, and how it sees an event.
#[derive(Clone, Copy)]
enum Job {
    Rare,
    HighSum,
}

impl Job {
    fn build(self) -> Box<dyn Model> {
        match self {
            Job::Rare => Box::new(RareConfig::default().build().expect("defaults are valid")),
            Job::HighSum => Box::new(
                HighSumConfig::default()
                    .build()
                    .expect("defaults are valid"),
            ),
        }
    }

    fn observation(self, f: &Fields) -> Observation<'_> {
        let (by, over, value) = match self {
            Job::Rare => (f.country, None, 0.0),
            Job::HighSum => (None, Some(f.destination_ip.as_str()), f.bytes),
        };
        Observation {
            time_ms: f.time_ms,
            arrival_ms: f.time_ms,
            by,
            over,
            partition: None,
            value,
        }
    }
}

fn params() -> Vec<Param<Vec<Fields>, Job>> {
    let geo = GeoDb::bundled().expect("bundled GeoIP database");
    let mut params = Vec::new();
    for (input_name, lines) in inputs() {
        for (config_name, job) in [("rare", Job::Rare), ("high_sum", Job::HighSum)] {
            params.push(Param {
                slug: format!("{input_name}/{config_name}"),
                input: fields(&lines, &geo),
                config: job,
            });
        }
    }
    params
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("models");
    group.sample_size(SAMPLES);
    for param in params() {
        let job = param.config;
        group.throughput(Throughput::Elements(param.input.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(&param.slug),
            &param.input,
            |b, events| {
                b.iter_batched(
                    || job.build(),
                    |mut model| {
                        for f in events {
                            std::hint::black_box(model.observe(&job.observation(f)));
                        }
                        model
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
