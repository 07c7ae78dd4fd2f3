//! Instructions per event, counted by callgrind: deterministic on a loaded machine, unlike
//! wall-clock time. Run with `cargo bench -p egresswatch-plugin --bench callgrind`.
//!
//! The binary is its own driver: without `--case` it runs itself under
//! `valgrind --tool=callgrind` once per case with the bench input's events and once with none,
//! and reports `(Ir with events - Ir without) / events`, so loading the input and building the
//! detector (start-up) are subtracted. Every case reads the same lines from the same memory:
//!
//! | case | what runs per event |
//! |---|---|
//! | `serde_parse_only` | `serde_json::from_str::<IgnoredAny>`: the reference, a parse that keeps nothing |
//! | `scanner` | the detector's field scanner alone, with the fields the detector reads |
//! | `detector` | `Detector::evaluate` in-process: scan, GeoIP, filters, models, verdict |
//!
//! Options: `--input FILE` (default `examples/data/sample.ndjson`, with the bundled GeoIP
//! database), `--lines N` (first N lines only), `--skip=CASE` (leave a case out; repeatable),
//! `--case NAME` (run one case; what the driver runs under callgrind). The first case measured
//! is the reference of the ratio column.

use std::path::{Path, PathBuf};
use std::process::Command;

use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;
use serde::de::IgnoredAny;

const CASES: [&str; 3] = ["serde_parse_only", "scanner", "detector"];

/// Events handed over per call, as the host does by default.
const BATCH: usize = 1024;

/// The host's clock for every batch (after the sample's events, as in a live run).
const NOW_MS: i64 = 1_800_000_000_000;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn detector() -> Detector {
    let config = serde_json::json!({
        "rules": ["rules"],
        "geoip": { "database": "data/geo/geo-whois-asn-country.mmdb" },
    })
    .to_string();
    let options = BuildOptions {
        base_dir: Some(workspace()),
        ..BuildOptions::default()
    };
    Detector::build(&config, options).expect("detector builds")
}

fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = option(&args, "--input")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("examples/data/sample.ndjson"));
    let lines: Option<usize> = option(&args, "--lines").map(|n| n.parse().expect("--lines N"));
    match option(&args, "--case") {
        Some(case) => {
            let events: usize = option(&args, "--events")
                .map(|n| n.parse().expect("--events N"))
                .unwrap_or(usize::MAX);
            run_case(&case, &input, lines, events);
        }
        None => drive(&input, lines, &args),
    }
}

/// Reads the input once; every case sees the same `Vec<String>`.
fn read_lines(input: &Path, limit: Option<usize>) -> Vec<String> {
    let text = std::fs::read_to_string(input)
        .unwrap_or_else(|e| panic!("reading {}: {e}", input.display()));
    text.lines()
        .take(limit.unwrap_or(usize::MAX))
        .map(str::to_owned)
        .collect()
}

/// Runs one case over the first `events` lines (all set-up is done whatever `events` is).
fn run_case(case: &str, input: &Path, limit: Option<usize>, events: usize) {
    let lines = read_lines(input, limit);
    let lines = &lines[..events.min(lines.len())];
    match case {
        "serde_parse_only" => {
            for line in lines {
                let parsed = serde_json::from_str::<IgnoredAny>(line);
                std::hint::black_box(parsed.is_ok());
            }
        }
        "scanner" => {
            let mut scanner = detector().scanner();
            for line in lines {
                std::hint::black_box(scanner.scan(line).is_ok());
            }
        }
        "detector" => {
            let mut detector = detector();
            for chunk in lines.chunks(BATCH) {
                let batch = chunk.iter().map(String::as_str);
                std::hint::black_box(detector.process(batch, NOW_MS));
            }
        }
        other => panic!("unknown case {other}; cases: {CASES:?}"),
    }
}

/// Total instructions of one run of this binary under callgrind.
fn callgrind_ir(case: &str, input: &Path, lines: Option<usize>, events: usize) -> u64 {
    let out = std::env::temp_dir().join(format!(
        "egresswatch-callgrind-{}-{case}-{events}.out",
        std::process::id()
    ));
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["--case", case, "--events", &events.to_string()])
        .arg("--input")
        .arg(input);
    if let Some(n) = lines {
        cmd.args(["--lines", &n.to_string()]);
    }
    let output = cmd
        .output()
        .expect("valgrind must be installed (apt-get install valgrind)");
    assert!(
        output.status.success(),
        "callgrind run of {case} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("callgrind output");
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("callgrind output has a total")
}

fn drive(input: &Path, lines: Option<usize>, args: &[String]) {
    let count = read_lines(input, lines).len();
    assert!(count > 0, "{} has no lines", input.display());
    let only: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|c| !args.contains(&format!("--skip={c}")))
        .collect();
    println!(
        "callgrind, {} events of {} (start-up subtracted)\n",
        count,
        input.display()
    );
    println!("| case | Ir/event | ratio to serde_parse_only |");
    println!("|---|---:|---:|");
    let mut reference = None;
    for case in only {
        let full = callgrind_ir(case, input, lines, usize::MAX);
        let base = callgrind_ir(case, input, lines, 0);
        let per = full.saturating_sub(base) as f64 / count as f64;
        let reference = *reference.get_or_insert(per);
        println!("| {case} | {per:.0} | {:.2}x |", per / reference);
    }
}
