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
//! | `detector` | `Detector::process` in-process: scan, GeoIP, filters, models, verdict, alerts |
//! | `detector_no_alerts` | the same with `annotate: false`: flagged events are counted, not written |
//! | `detector_2_threads` | `detector` with `threads: 2`: the instructions of both threads together (the others run with `threads: 1`) |
//! | `end_to_end` | `egresswatch run` (the release binary and plugin beside this bench), stdin from a file, stdout to `/dev/null` |
//!
//! Annotation costs `(detector - detector_no_alerts) / flagged` per flagged event (the flagged
//! events are counted by running the detector once outside callgrind); it is printed below the
//! table. `end_to_end` needs the release build of the program and the plugin:
//! `cargo build --release -p egresswatch-cli -p egresswatch-plugin` (the README's command does
//! both); without them the case says so and is left out.
//!
//! Options: `--input FILE` (default `examples/data/sample.ndjson`, with the bundled GeoIP
//! database), `--lines N` (first N lines only), `--skip=CASE` (leave a case out; repeatable),
//! `--case NAME` (run one case; what the driver runs under callgrind). The first case measured
//! is the reference of the ratio column.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::IgnoredAny;
use setup::{detector, option, program, workspace, write_run_config, NOW_MS};

#[path = "common/setup.rs"]
mod setup;

const CASES: [&str; 6] = [
    "serde_parse_only",
    "scanner",
    "detector",
    "detector_no_alerts",
    "detector_2_threads",
    "end_to_end",
];

/// Events handed over per call, as the host does by default.
const BATCH: usize = 1024;

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
            let mut scanner = detector(true, 1).scanner();
            for line in lines {
                std::hint::black_box(scanner.scan(line).is_ok());
            }
        }
        "detector" | "detector_no_alerts" | "detector_2_threads" => {
            let threads = if case == "detector_2_threads" { 2 } else { 1 };
            let mut detector = detector(case != "detector_no_alerts", threads);
            for chunk in lines.chunks(BATCH) {
                let batch = chunk.iter().map(String::as_str);
                std::hint::black_box(detector.process(batch, NOW_MS));
            }
        }
        other => panic!("unknown case {other}; cases: {CASES:?}"),
    }
}

/// Total instructions of one run under callgrind: of this binary for an in-process case, of
/// the `egresswatch` program for `end_to_end`.
fn callgrind_ir(case: &str, input: &Path, lines: Option<usize>, events: usize) -> u64 {
    let out = std::env::temp_dir().join(format!(
        "egresswatch-callgrind-{}-{case}-{events}.out",
        std::process::id()
    ));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    let mut stdin_file = None;
    if case == "end_to_end" {
        // The program reads the first `events` lines from a file on stdin.
        let text: String = read_lines(input, lines)
            .iter()
            .take(events)
            .flat_map(|l| [l.as_str(), "\n"])
            .collect();
        let path = std::env::temp_dir().join(format!(
            "egresswatch-callgrind-{}-{events}.ndjson",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("writing the end-to-end input");
        let config = end_to_end_config();
        cmd.arg(program().expect("checked by drive"))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(std::fs::File::open(&path).expect("end-to-end input"))
            .stdout(std::fs::File::create("/dev/null").expect("/dev/null"));
        stdin_file = Some(path);
    } else {
        let exe = std::env::current_exe().expect("own path");
        cmd.arg(exe)
            .args(["--case", case, "--events", &events.to_string()])
            .arg("--input")
            .arg(input);
        if let Some(n) = lines {
            cmd.args(["--lines", &n.to_string()]);
        }
    }
    let output = cmd
        .output()
        .expect("valgrind must be installed (apt-get install valgrind)");
    if let Some(path) = stdin_file {
        let _ = std::fs::remove_file(path);
    }
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

/// The configuration of the `end_to_end` case: the `detector` case's detector, on one thread,
/// every event to stdout, flagged ones annotated.
fn end_to_end_config() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("egresswatch-callgrind-{}.yaml", std::process::id()));
    write_run_config(&path, 1);
    path
}

/// Events the detector flags in `input` (run once, natively).
fn flagged(input: &Path, lines: Option<usize>) -> usize {
    let lines = read_lines(input, lines);
    let mut detector = detector(true, 1);
    lines
        .chunks(BATCH)
        .map(|chunk| {
            detector
                .process(chunk.iter().map(String::as_str), NOW_MS)
                .iter()
                .filter(|v| v.replacement.is_some())
                .count()
        })
        .sum()
}

fn drive(input: &Path, lines: Option<usize>, args: &[String]) {
    let count = read_lines(input, lines).len();
    assert!(count > 0, "{} has no lines", input.display());
    let mut only: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|c| !args.contains(&format!("--skip={c}")))
        .collect();
    println!(
        "callgrind, {} events of {} (start-up subtracted)\n",
        count,
        input.display()
    );
    let mut missing = false;
    if only.contains(&"end_to_end") && program().is_none() {
        missing = true;
        only.retain(|c| *c != "end_to_end");
    }
    println!("| case | Ir/event | ratio to {} |", only[0]);
    println!("|---|---:|---:|");
    let mut reference = None;
    let mut per_case = Vec::new();
    for case in only {
        let full = callgrind_ir(case, input, lines, usize::MAX);
        let base = callgrind_ir(case, input, lines, 0);
        let per = full.saturating_sub(base) as f64 / count as f64;
        let reference = *reference.get_or_insert(per);
        println!("| {case} | {per:.0} | {:.2}x |", per / reference);
        per_case.push((case, per));
    }
    if missing {
        println!(
            "| end_to_end | not run: build the program and plugin first \
             (cargo build --release -p egresswatch-cli -p egresswatch-plugin) | |"
        );
    }
    let find = |name: &str| per_case.iter().find(|c| c.0 == name).map(|c| c.1);
    if let (Some(on), Some(off)) = (find("detector"), find("detector_no_alerts")) {
        let flagged = flagged(input, lines);
        if flagged > 0 {
            let per_alert = (on - off) * count as f64 / flagged as f64;
            println!("\nannotation: {per_alert:.0} Ir per flagged event ({flagged} flagged)");
        }
    }
}
