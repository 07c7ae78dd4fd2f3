//! Wall clock with one thread and with two (`detector.threads`), for the speed-up issue #12
//! asks for. Run with
//! `cargo build --release -p egresswatch-cli -p egresswatch-plugin && cargo bench -p egresswatch-plugin --bench threads`.
//!
//! Wall-clock time depends on what else the machine runs, so every measurement interleaves
//! the two thread counts round after round (both see the same load), reports medians and
//! their ratio, and prints the load average before and after: on a busy machine the ratio
//! says little (two threads need two free cores), and events per second say something only
//! with the load beside them.
//!
//! - `end_to_end`: `egresswatch run` (the release program and plugin beside this bench),
//!   standard input from a file of generated events (`egresswatch generate --hosts 100
//!   --events-per-host-per-hour 50`: about 490,000 events of 380 bytes, a few thousand
//!   destinations; `--input FILE` for another), standard output to
//!   `/dev/null`, both rules, GeoIP on, flagged events annotated. Start-up (loading the plugin,
//!   the rules, the GeoIP database) is the median of runs with no events, subtracted.
//! - `batches`: `Detector::process` in-process over `examples/data/sample.ndjson` in batches of
//!   16 to 1024 events (the host hands over up to `batch.max_events`, 1024 by default, and as
//!   many as one read brings: about 600 of these events per 256 KiB): what handing a batch to
//!   the helper costs shows as the ratio falling with the batch size. Batches under 32 events
//!   are evaluated on one thread whatever the setting.
//!
//! Options: `--rounds N` (default 7), `--input FILE`, `--skip=end_to_end`, `--skip=batches`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use setup::{detector, option, program, workspace, write_run_config, NOW_MS};

#[path = "common/setup.rs"]
mod setup;

/// Thread counts compared.
const THREADS: [u16; 2] = [1, 2];

/// Batch sizes of the `batches` part.
const BATCHES: [usize; 5] = [16, 32, 64, 256, 1024];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = option(&args, "--rounds").map_or(7, |n| n.parse().expect("--rounds N"));
    let skip = |part: &str| args.contains(&format!("--skip={part}"));
    println!("load average before: {}", load());
    if !skip("end_to_end") {
        match program() {
            Some(exe) => end_to_end(&exe, option(&args, "--input").map(PathBuf::from), rounds),
            None => println!(
                "end_to_end: not run: build the program and plugin first \
                 (cargo build --release -p egresswatch-cli -p egresswatch-plugin)"
            ),
        }
    }
    if !skip("batches") {
        batches(rounds);
    }
    println!("load average after: {}", load());
}

/// `/proc/loadavg`'s three averages.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The `end_to_end` part.
fn end_to_end(exe: &Path, input: Option<PathBuf>, rounds: usize) {
    let tmp = std::env::temp_dir().join(format!("egresswatch-threads-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temporary folder");
    let generated = input.is_none();
    let input = input.unwrap_or_else(|| {
        let path = tmp.join("events.ndjson");
        let status = Command::new(exe)
            .args([
                "generate",
                "--hosts",
                "100",
                "--events-per-host-per-hour",
                "50",
            ])
            .stdout(File::create(&path).expect("input file"))
            .stderr(Stdio::null())
            .status()
            .expect("egresswatch generate runs");
        assert!(status.success(), "egresswatch generate failed");
        path
    });
    let events = std::fs::read(&input)
        .expect("reading the input")
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    let empty = tmp.join("empty.ndjson");
    File::create(&empty).expect("empty input");
    let configs: Vec<PathBuf> = THREADS
        .iter()
        .map(|&t| {
            let path = tmp.join(format!("threads-{t}.yaml"));
            write_run_config(&path, t);
            path
        })
        .collect();
    let run = |config: &Path, input: &Path| {
        let started = Instant::now();
        let status = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .stdin(File::open(input).expect("input"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("egresswatch run runs");
        assert!(status.success(), "egresswatch run failed");
        started.elapsed()
    };
    let mut startup = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); THREADS.len()];
    for _ in 0..rounds {
        startup.push(run(&configs[0], &empty));
        for (config, times) in configs.iter().zip(&mut times) {
            times.push(run(config, &input));
        }
    }
    let startup = median(startup);
    println!(
        "\nend_to_end: `egresswatch run`, {events} events of {}, {rounds} rounds interleaved; \
         start-up {:.1} ms subtracted\n",
        if generated {
            "`egresswatch generate --hosts 100 --events-per-host-per-hour 50`".to_owned()
        } else {
            input.display().to_string()
        },
        startup.as_secs_f64() * 1e3
    );
    println!("| threads | median s | events/s | speed-up |");
    println!("|---:|---:|---:|---:|");
    let mut one = None;
    for (&threads, times) in THREADS.iter().zip(times) {
        let busy = median(times).saturating_sub(startup).as_secs_f64();
        let rate = events as f64 / busy;
        let one = *one.get_or_insert(rate);
        println!(
            "| {threads} | {busy:.3} | {:.0}k | {:.2}x |",
            rate / 1e3,
            rate / one
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The `batches` part.
fn batches(rounds: usize) {
    let path = workspace().join("examples/data/sample.ndjson");
    let text = std::fs::read_to_string(&path).expect("reading the sample");
    let lines: Vec<&str> = text.lines().collect();
    let pass = |threads: u16, batch: usize| {
        let mut detector = detector(true, threads);
        let started = Instant::now();
        for chunk in lines.chunks(batch) {
            std::hint::black_box(detector.process(chunk.iter().copied(), NOW_MS));
        }
        started.elapsed()
    };
    let mut times = vec![vec![Vec::new(); THREADS.len()]; BATCHES.len()];
    for _ in 0..rounds {
        for (b, &batch) in BATCHES.iter().enumerate() {
            for (t, &threads) in THREADS.iter().enumerate() {
                times[b][t].push(pass(threads, batch));
            }
        }
    }
    println!(
        "\nbatches: `Detector::process` in-process, {} events of the sample, {rounds} rounds \
         interleaved\n",
        lines.len()
    );
    println!("| events per batch | 1 thread, events/s | 2 threads, events/s | speed-up |");
    println!("|---:|---:|---:|---:|");
    for (&batch, times) in BATCHES.iter().zip(times) {
        let rates: Vec<f64> = times
            .into_iter()
            .map(|t| lines.len() as f64 / median(t).as_secs_f64())
            .collect();
        println!(
            "| {batch} | {:.0}k | {:.0}k | {:.2}x |",
            rates[0] / 1e3,
            rates[1] / 1e3,
            rates[1] / rates[0]
        );
    }
}
