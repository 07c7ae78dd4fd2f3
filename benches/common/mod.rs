//! What the per-area benches share: the shape of their parameter tables and the events they
//! are fed.
//!
//! Every bench is a table of [`Param`] rows, one criterion case each, named `area/slug`: the
//! input axis (which events) crossed with the bench's own configuration axis. The inputs are
//! the bundled sample (`examples/data/sample.ndjson`: 14,909 generated ECS network events,
//! a few hundred destinations seen again and again) and the same events spread over a new
//! destination address each ([`spread`]): every GeoIP lookup a cache miss, every destination
//! new to a model.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Samples per case: ten runs over the whole input each (criterion's default of 100 would take
/// minutes per case on the shared 2-core machine).
pub const SAMPLES: usize = 10;

/// One bench case (Vector's shape): its name, what is fed in, how the measured part is set up.
pub struct Param<I, C> {
    /// `input/config`, the case's name in criterion's report.
    pub slug: String,
    pub input: I,
    pub config: C,
}

/// The repository root (benches read its sample events, rules and GeoIP database).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The input axis: `(name, event lines)`.
pub fn inputs() -> Vec<(&'static str, Vec<String>)> {
    let path = workspace().join("examples/data/sample.ndjson");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let sample: Vec<String> = text.lines().map(str::to_owned).collect();
    let spread = spread(&sample);
    vec![("sample", sample), ("spread", spread)]
}

/// The events with `destination.ip` replaced by a distinct public address each (counting up
/// from 20.0.0.0, all routable, in the order of the events).
fn spread(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut event: serde_json::Value = serde_json::from_str(line).expect("sample is JSON");
            let n = u32::from(Ipv4Addr::new(20, 0, 0, 0)) + u32::try_from(i).expect("few events");
            event["destination"]["ip"] = Ipv4Addr::from(n).to_string().into();
            event.to_string()
        })
        .collect()
}
