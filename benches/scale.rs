//! The detector at scale: per-event instructions, state bytes per tracked destination, the cost
//! of one bucket close, and the memory a state save adds, at 1k to 10M distinct destinations.
//! Run with `cargo bench -p egresswatch-plugin --bench scale` (`-- --sizes 1000,100000` for
//! fewer sizes; `--events N` measured events per size, default 20,000; `--memory-only` for the
//! memory and close-time columns without the callgrind runs). Besides the state's bytes per
//! tracked destination, the table gives its growth from the previous size per destination added:
//! the fixed part (histograms per partition, the other model, caches) weighs on small sizes.
//!
//! For each size N the binary drives itself in two processes:
//! 1. `--case prepare` (native): the detector as the bench input configures it (both rules,
//!    GeoIP; learning over after one bucket so that every event is scored; flagged events
//!    counted, not annotated, so that the figures are the detection's), with `max_entities` 4N so that every destination can be tracked (a quarter of the
//!    cap is the probation tier new destinations enter), is fed three 3h buckets in which each
//!    of N destinations (distinct public addresses) receives one upload, in time order. The
//!    first bucket closes when the third starts, so N destinations are tracked and two buckets
//!    hold N open sums each. It reports the heap that state takes (a counting allocator:
//!    bytes live after the warm-up minus before; that includes the GeoIP cache's growth, which
//!    is not state (a lookup cache, bounded by `geoip.cache_entries`, never saved) and is
//!    given apart too, measured on a cache of its own fed the same addresses: see
//!    [`geo_cache_growth`]), the tracked destinations (the job's
//!    `tracked_entities`), the peak heap of the state save over the running heap (the save as
//!    the host does it: streamed into a state file, envelope included), and the wall and CPU
//!    time of the event that closes the next bucket (N sums) and of the events after it (see
//!    below), on the prepared detector (load stated with the figures; never asserted). Then,
//!    the detector dropped, the peak heap of loading that file into a new detector (read whole,
//!    then `load_state`) over the heap the loaded detector takes.
//! 2. `--case measure` under `valgrind --tool=callgrind --collect-atstart=no
//!    --toggle-collect=*scale_measured_window*`: loads that state (not counted), makes the
//!    measured events (not counted: destinations picked at random among the N, in the open
//!    head bucket), then counts only `scale_measured_window`, which hands them to
//!    `Detector::process` in batches of 1024. Ir/event = that count / events. The `close`
//!    case hands over, one event per call, the event that closes the bucket of N open sums and
//!    the [`after_close`] events that follow it (a close's sums are folded a bounded number per
//!    event: these see the whole fold through), with `--dump-after=scale::scale_measured_window`:
//!    one callgrind dump per event, so the bench reports the closing event's Ir and the worst
//!    single event's. That case runs for sizes up to [`WORST_EVENT_MAX_SIZE`] (a dump per
//!    event; 10M would need ~80,000).
//!
//! Instruction counts do not see cache misses, which grow with the state: the prepare case
//! times the same events natively (the closing one, and the slowest of it and those after),
//! given beside the Ir for that reason: wall time, which on a loaded machine includes whatever
//! the scheduler gave other processes in the middle of an event, and the thread's CPU time,
//! which does not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use egresswatch_common::time::format_rfc3339_ms;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::geo::{GeoCache, GeoDb, DEFAULT_CACHE_CAPACITY};
use egresswatch_plugin::Detector;
use egresswatch_plugin_api::state_file::{self, StateFile};

/// The plugin's name in the state file's envelope.
const PLUGIN: &str = "egresswatch-plugin";

/// Heap bytes live and the peak since the last [`reset_peak`], for the state-size figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

const SIZES: [usize; 4] = [1_000, 100_000, 1_000_000, 10_000_000];
/// Events per call, as the host hands them over by default.
const BATCH: usize = 1024;
const BUCKET_MS: i64 = 3 * 3600 * 1000;
/// Start of the first bucket: 2026-11-02T00:00:00Z (3h-aligned).
const START_MS: i64 = 1_793_577_600_000;
/// Buckets of the warm-up: the first two close as the third and fourth start (a destination
/// seen in two closed buckets leaves probation).
const PASSES: i64 = 4;
/// Largest size whose worst event around a close is counted by callgrind.
const WORST_EVENT_MAX_SIZE: usize = 1_000_000;

/// Events handed over after the one that closes a bucket of `size` sums: what the fold needs
/// at 256 sums an event (`models::high_sum`) and a few more, so the last folding event is among
/// them.
fn after_close(size: usize) -> usize {
    size / 256 + 64
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The GeoIP database the detector is configured with (relative to the workspace).
const GEO_DATABASE: &str = "data/geo/geo-whois-asn-country.mmdb";

fn detector(size: usize) -> Detector {
    let config = serde_json::json!({
        // One thread, so that the Ir and CPU times are the detection's, comparable over time
        // (callgrind would count a scan thread's hand-off too).
        "threads": 1,
        "rules": ["rules"],
        "geoip": { "database": GEO_DATABASE },
        "models": { "max_entities": (4 * size).max(1_000_000) },
        "actions": { "default": { "annotate": false } },
    })
    .to_string();
    let options = BuildOptions {
        base_dir: Some(workspace()),
        learning_buckets: Some(1),
        ..BuildOptions::default()
    };
    Detector::build(&config, options).expect("detector builds")
}

/// Destination `i` of a run: distinct for every `i` below 2^29, all in 11.0.0.0-43.255.255.255
/// (public, no reserved range), scattered so that neighbours are not in one network.
fn destination(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("fewer than 2^29 destinations");
    Ipv4Addr::from(
        u32::from(Ipv4Addr::new(11, 0, 0, 0)) + (i.wrapping_mul(2_654_435_761) & ((1 << 29) - 1)),
    )
}

/// An outbound ECS network event from a private host to `dst` at `time_ms`.
fn event(time_ms: i64, dst: Ipv4Addr, bytes: u64) -> String {
    format!(
        "{{\"@timestamp\":\"{}\",\"event\":{{\"kind\":\"event\",\"category\":[\"network\"],\"type\":[\"connection\",\"end\"]}},\"source\":{{\"ip\":\"10.10.{}.{}\",\"port\":54310,\"bytes\":{bytes}}},\"destination\":{{\"ip\":\"{dst}\",\"port\":443,\"bytes\":2514}},\"network\":{{\"transport\":\"tcp\",\"direction\":\"outbound\"}},\"host\":{{\"name\":\"ws-01\"}}}}",
        format_rfc3339_ms(time_ms),
        bytes % 7,
        1 + bytes % 200,
    )
}

/// A deterministic byte count for destination `i` in pass `pass` (1 kB to ~1 MB).
fn bytes_of(i: usize, pass: i64) -> u64 {
    let h = (i as u64 ^ (pass as u64) << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1_000 + (h >> 44)
}

/// Hands `lines` to the detector in batches; returns the verdicts' count.
fn feed(detector: &mut Detector, lines: &[String], now_ms: i64) -> usize {
    let mut verdicts = 0;
    for chunk in lines.chunks(BATCH) {
        verdicts += detector
            .process(chunk.iter().map(String::as_str), now_ms)
            .len();
    }
    verdicts
}

/// The heap a GeoIP cache of the detector's capacity grows by in the warm-up, on a cache of
/// its own asked for the warm-up's destinations in the warm-up's order: the detector's (a
/// per-thread lookup cache, bounded by `geoip.cache_entries`, not saved) grows the same way,
/// give or take one doubling (each cache hashes with its own random seed, which moves a
/// little the point at which three quarters of its ways are in use). Every pass counts: an
/// address that lost its way to another of its set in one pass fills one again in the next.
fn geo_cache_growth(size: usize) -> usize {
    let db = GeoDb::open(workspace().join(GEO_DATABASE)).expect("the GeoIP database opens");
    let mut cache = GeoCache::new(Arc::new(db), DEFAULT_CACHE_CAPACITY);
    let before = live();
    for _ in 0..PASSES {
        for i in 0..size {
            std::hint::black_box(cache.country(IpAddr::V4(destination(i))));
        }
    }
    live() - before
}

/// The job's tracked and probationary destinations, from the detector's metrics.
fn tracked(detector: &Detector) -> (f64, f64) {
    let job = "ded_high_sent_bytes_destination_ip_ea";
    let get = |name: &str| {
        detector
            .metrics()
            .iter()
            .filter(|m| m.name.as_str() == name)
            .find(|m| m.labels.iter().any(|l| l.value.as_str() == job))
            .map_or(0.0, |m| m.value)
    };
    (
        get("egresswatch_job_tracked_entities"),
        get("egresswatch_job_probationary_entities"),
    )
}

fn state_path(size: usize) -> PathBuf {
    std::env::temp_dir().join(format!(
        "egresswatch-scale-{}-{size}.state",
        std::process::id()
    ))
}

/// Time of the last pass's event `i`: the passes' events in time order, a bucket each.
fn time_of(size: usize, pass: i64, i: usize) -> i64 {
    START_MS + pass * BUCKET_MS + (i as i64 * (BUCKET_MS - 1000)) / size as i64
}

fn prepare(size: usize, state: &Path) {
    let before = live();
    let mut detector = detector(size);
    let built = live();
    let started = Instant::now();
    // The warm-up's events one call each, for its slowest event (CPU time, see below): the
    // closes of its first buckets fold N new destinations into the entity table (which grows
    // as they come) and promote them.
    let mut warm_worst = (0.0, 0, 0);
    for pass in 0..PASSES {
        let mut i = 0;
        while i < size {
            let end = (i + 64 * BATCH).min(size);
            let lines: Vec<String> = (i..end)
                .map(|j| event(time_of(size, pass, j), destination(j), bytes_of(j, pass)))
                .collect();
            let now = time_of(size, pass, end - 1) + 1000;
            for (j, line) in (i..).zip(&lines) {
                let c = thread_cpu_ms();
                feed(&mut detector, std::slice::from_ref(line), now);
                let ms = thread_cpu_ms() - c;
                if ms > warm_worst.0 {
                    warm_worst = (ms, pass, j);
                }
            }
            i = end;
        }
    }
    let warm = started.elapsed().as_secs_f64();
    let running = live();
    let (established, probation) = tracked(&detector);
    let entities = established + probation;
    reset_peak();
    let mut out = StateFile::create(state, PLUGIN).expect("creating the state file");
    detector.save_state_to(&mut out).expect("state saves");
    let file = out.commit().expect("writing the state");
    let save_peak = PEAK.load(Ordering::Relaxed) - running;
    // The close of a bucket of N open sums, on this process's detector (it is not used again).
    // Then the events after it, one call each, timed one by one.
    let (lines, now) = close_and_after(size);
    // Wall time, and this thread's CPU time: the work of the event, cache misses included,
    // without the time the scheduler of a loaded machine gives to other processes meanwhile.
    let (wall, cpu): (Vec<f64>, Vec<f64>) = lines
        .iter()
        .map(|line| {
            let (t, c) = (Instant::now(), thread_cpu_ms());
            feed(&mut detector, std::slice::from_ref(line), now);
            (t.elapsed().as_secs_f64() * 1000.0, thread_cpu_ms() - c)
        })
        .unzip();
    let close_ms = wall[0];
    let (slowest, worst_ms) = worst(&wall);
    let (slowest_cpu, worst_cpu_ms) = worst(&cpu);
    let mut sorted = wall.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2];
    drop(detector);
    let geo = geo_cache_growth(size);
    let (load_peak, loaded) = load_peak(size, state);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split(' ').next().unwrap_or("?");
    println!(
        "prepared {size}: warm-up {warm:.1} s, slowest event {:.3} ms CPU (bucket {}, event {}); detector built {} B; state {} B on the heap for {entities:.0} tracked ({probation:.0} on probation) = {:.1} B per tracked destination, of which the GeoIP cache's growth {geo} B = {:.1} B ({:.1} B without it); state file {file} B; save peak +{save_peak} B = {:.1}% of the running heap ({} B); close of the next bucket {close_ms:.3} ms wall ({:.3} ms CPU), slowest of it and the {} events after {worst_ms:.3} ms wall (event {slowest}; median {median_ms:.3} ms; load average {load}), {worst_cpu_ms:.3} ms CPU (event {slowest_cpu}); load peak +{load_peak} B = {:.1}% of the loaded heap ({loaded} B)",
        warm_worst.0,
        warm_worst.1,
        warm_worst.2,
        built - before,
        running - built,
        (running - built) as f64 / entities.max(1.0),
        geo as f64 / entities.max(1.0),
        (running - built).saturating_sub(geo) as f64 / entities.max(1.0),
        save_peak as f64 * 100.0 / running as f64,
        running,
        cpu[0],
        lines.len() - 1,
        load_peak as f64 * 100.0 / loaded as f64,
    );
    println!(
        "PREPARED {size} {entities} {} {file} {save_peak} {running} {close_ms:.3} {worst_ms:.3} {worst_cpu_ms:.3} {load_peak} {loaded} {geo}",
        running - built
    );
}

/// Loads the state file into a new detector as the host does (the file read whole, its
/// envelope checked, the plugin's bytes handed to `load_state`); returns the peak heap of that
/// over the heap the loaded detector then takes, and that heap.
fn load_peak(size: usize, state: &Path) -> (usize, usize) {
    let mut detector = detector(size);
    reset_peak();
    let bytes = std::fs::read(state).expect("reading the state");
    let plugin = state_file::decode(PLUGIN, &bytes).expect("a state file");
    detector.load_state(plugin).expect("state loads");
    drop(bytes);
    let loaded = live();
    (PEAK.load(Ordering::Relaxed) - loaded, loaded)
}

/// This thread's CPU time in ms.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// The largest figure and its index.
fn worst(figures: &[f64]) -> (usize, f64) {
    figures
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0.0), |a, (k, ms)| if ms > a.1 { (k, ms) } else { a })
}

/// Where the counted instructions of a `measure` run go: its only caller is the toggle.
#[inline(never)]
fn scale_measured_window(detector: &mut Detector, lines: &[String], now_ms: i64) -> usize {
    feed(detector, lines, now_ms)
}

/// `events` events from `at` on, 50 s apart in all, to destinations at random among the N (a
/// fixed LCG).
fn random_events(size: usize, events: usize, at: i64) -> Vec<String> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..events)
        .map(|k| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = ((x >> 33) as usize) % size;
            event(
                at + (k as i64 * 50_000) / events as i64,
                destination(i),
                bytes_of(i, 9),
            )
        })
        .collect()
}

/// The event that closes the bucket of N open sums (the next bucket starts), then
/// [`after_close`] events in that next bucket; and the host clock to hand them over with.
fn close_and_after(size: usize) -> (Vec<String>, i64) {
    let at = START_MS + PASSES * BUCKET_MS + 60_000;
    let mut lines = vec![event(at, destination(0), 1_000)];
    lines.extend(random_events(size, after_close(size), at + 1000));
    (lines, at + 60_000)
}

fn measure(size: usize, state: &Path, events: usize, close: bool) {
    let mut detector = detector(size);
    let bytes = std::fs::read(state).expect("reading the state");
    let plugin = state_file::decode(PLUGIN, &bytes).expect("a state file");
    detector.load_state(plugin).expect("state loads");
    drop(bytes);
    if close {
        // One call per event: callgrind dumps after each.
        let (lines, now) = close_and_after(size);
        for line in &lines {
            std::hint::black_box(scale_measured_window(
                &mut detector,
                std::slice::from_ref(line),
                now,
            ));
        }
    } else {
        // In the head bucket's last minute.
        let at = START_MS + PASSES * BUCKET_MS - 60_000;
        let lines = random_events(size, events, at);
        std::hint::black_box(scale_measured_window(&mut detector, &lines, at + 60_000));
    }
}

fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The Ir of a callgrind output file (its `totals:` or `summary:` line).
fn total_ir(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("callgrind output has a total")
}

/// Runs `case` under callgrind; returns the Ir counted, one figure per dump (one in all for
/// `measure`; one per event for `close`, which dumps after each).
fn callgrind(size: usize, state: &Path, events: usize, case: &str) -> Vec<u64> {
    let dir = std::env::temp_dir().join(format!(
        "egresswatch-scale-{}-{size}-{case}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir for callgrind's output");
    let out = dir.join("callgrind.out");
    let mut valgrind = Command::new("valgrind");
    valgrind.args([
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=*scale_measured_window*",
    ]);
    if case == "close" {
        // A dump option takes the exact name (no wildcard, unlike --toggle-collect).
        valgrind.arg("--dump-after=scale::scale_measured_window");
    }
    let output = valgrind
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe().expect("own path"))
        .args([
            "--case",
            case,
            "--size",
            &size.to_string(),
            "--events",
            &events.to_string(),
        ])
        .arg("--state")
        .arg(state)
        .output()
        .expect("valgrind must be installed (apt-get install valgrind)");
    assert!(
        output.status.success(),
        "callgrind run of {case} at {size} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Dumps are `callgrind.out.N` in order, then `callgrind.out` with what is left (nothing
    // counted, for `close`).
    let mut dumps: Vec<(u64, u64)> = std::fs::read_dir(&dir)
        .expect("callgrind output")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let n = match path.extension().and_then(|x| x.to_str()) {
                Some("out") => u64::MAX,
                Some(n) => n.parse().ok()?,
                None => return None,
            };
            let text = std::fs::read_to_string(&path).ok()?;
            Some((n, total_ir(&text)))
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    dumps.sort_unstable();
    let irs: Vec<u64> = dumps
        .into_iter()
        .filter(|&(n, ir)| n != u64::MAX || ir > 0)
        .map(|(_, ir)| ir)
        .collect();
    assert!(
        irs.iter().any(|&ir| ir > 0),
        "nothing counted: the toggle function was not found"
    );
    irs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: usize =
        option(&args, "--events").map_or(20_000, |n| n.parse().expect("--events N"));
    if let Some(case) = option(&args, "--case") {
        let size: usize = option(&args, "--size")
            .expect("--size N")
            .parse()
            .expect("--size N");
        let state = PathBuf::from(option(&args, "--state").expect("--state FILE"));
        match case.as_str() {
            "prepare" => prepare(size, &state),
            "measure" => measure(size, &state, events, false),
            "close" => measure(size, &state, events, true),
            other => panic!("unknown case {other}"),
        }
        return;
    }
    let sizes: Vec<usize> = option(&args, "--sizes").map_or(SIZES.to_vec(), |s| {
        s.split(',')
            .map(|n| n.trim().parse().expect("--sizes N,N,..."))
            .collect()
    });
    // Each row is printed as soon as its size is measured (a 10M size takes a while).
    println!("scale: {events} measured events per size (detector in-process, both rules, GeoIP)\n");
    let memory_only = args.iter().any(|a| a == "--memory-only");
    println!("| destinations | tracked | Ir/event | vs the first size | state B/tracked | of which the GeoIP cache | without the GeoIP cache | B/tracked over the previous size | state file B | save peak over running | load peak over loaded | closing event Ir | worst event Ir around the close | closing event wall ms | worst event wall ms | worst event CPU ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut first = None;
    // The state's growth from the previous size: what a destination costs without the fixed
    // part (per-partition histograms, the other model, caches), which dominates small sizes.
    let mut previous: Option<(f64, f64)> = None;
    for &size in &sizes {
        let state = state_path(size);
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["--case", "prepare", "--size", &size.to_string(), "--state"])
            .arg(&state)
            .output()
            .expect("running the prepare case");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "prepare {size} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f: Vec<f64> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PREPARED "))
            .expect("prepare reports")
            .split(' ')
            .map(|v| v.parse().expect("a figure"))
            .collect();
        eprintln!("{}", stdout.lines().next().unwrap_or_default());
        let (per_event, vs_first) = if memory_only {
            ("-".to_owned(), "-".to_owned())
        } else {
            let per_event = callgrind(size, &state, events, "measure")[0] as f64 / events as f64;
            let first = *first.get_or_insert(per_event);
            (
                format!("{per_event:.0}"),
                format!("{:.2}x", per_event / first),
            )
        };
        let (close, worst) = if !memory_only && size <= WORST_EVENT_MAX_SIZE {
            let irs = callgrind(size, &state, events, "close");
            let worst = irs.iter().copied().max().unwrap_or(0);
            eprintln!(
                "close at {size}: {} events counted; closing event {} Ir, worst {worst} Ir (event {})",
                irs.len(),
                irs[0],
                irs.iter().position(|&ir| ir == worst).unwrap_or(0),
            );
            (irs[0].to_string(), worst.to_string())
        } else {
            ("-".to_string(), "-".to_string())
        };
        let _ = std::fs::remove_file(&state);
        let marginal = match previous {
            Some((tracked, bytes)) if f[1] > tracked => {
                format!("{:.1}", (f[2] - bytes) / (f[1] - tracked))
            }
            _ => "-".to_owned(),
        };
        previous = Some((f[1], f[2]));
        // PREPARED size tracked state_bytes file_bytes save_peak running close_ms worst_ms
        // worst_cpu_ms load_peak loaded geo_cache_bytes
        println!(
            "| {size} | {:.0} | {per_event} | {vs_first} | {:.1} | {:.1} | {:.1} | {marginal} | {:.0} | {:.1}% | {:.1}% | {close} | {worst} | {:.3} | {:.3} | {:.3} |",
            f[1],
            f[2] / f[1].max(1.0),
            f[11] / f[1].max(1.0),
            (f[2] - f[11]).max(0.0) / f[1].max(1.0),
            f[3],
            f[4] * 100.0 / f[5].max(1.0),
            f[9] * 100.0 / f[10].max(1.0),
            f[6],
            f[7],
            f[8],
        );
    }
}
