//! The bodies of egresswatch's fuzz targets.
//!
//! Each target is a function from bytes to nothing that panics when it finds a bug: a panic in
//! the code under test, or a broken invariant the target checks. The same functions run in two
//! places:
//!
//! - under `cargo +nightly fuzz run <target>` (the `fuzz/` crate; each of its targets is one
//!   line calling the function here), with coverage guidance and sanitizers;
//! - on stable, as ordinary tests (`tests/corpus.rs`), which replay every checked-in seed in
//!   `fuzz/corpus/<target>/` and every past crash in `fuzz/regressions/<target>/`.
//!
//! [`TARGETS`] lists them by name; a target's name is its folder name in both places.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use egresswatch::config::positions::KeyLines;
use egresswatch::config::HostConfig;
use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::fields::{FieldId, Scanner, SchemaBuilder};
use egresswatch_plugin::geo::{GeoCache, GeoDb};
use egresswatch_plugin::{Detector, DetectorConfig};
use egresswatch_tools::replay::presets::{Converter, Format, Line, Preset};
use serde_json::Value;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("detector_fresh", detector_fresh),
    ("detector_long_lived", detector_long_lived),
    ("state", state),
    ("rules_toml", rules_toml),
    ("host_config", host_config),
    ("replay_lines", replay_lines),
    ("mmdb", mmdb),
    ("scanner_vs_serde", scanner_vs_serde),
];

/// 2026-11-01T00:00:00Z, the start of the bundled sample, in epoch milliseconds.
const T0: i64 = 1_793_491_200_000;

/// The host's clock for a fresh detector's batch: five days after [`T0`], past the seeds.
const FRESH_NOW: i64 = T0 + 5 * 86_400_000;

/// The repository root (this crate's parent folder).
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The detector the targets drive: the repository's rules, the shipped GeoIP database, and a
/// learning period of two buckets so that an input of a few dozen events can reach flagging.
fn build_detector() -> Detector {
    let config = serde_json::json!({
        "rules": [root().join("rules")],
        "geoip": {
            "database": root().join("data/geo/geo-whois-asn-country.mmdb"),
            "cache_entries": 4096,
        },
    });
    let options = BuildOptions {
        hash_seed: 0x5eed,
        learning_buckets: Some(2),
        ..BuildOptions::default()
    };
    Detector::build(&config.to_string(), options).expect("the fuzz detector builds")
}

/// A detector shared by every input of a target, and the state it started from.
struct Shared {
    detector: Mutex<Detector>,
    initial: Vec<u8>,
}

impl Shared {
    fn new(detector: Detector) -> Shared {
        let initial = detector
            .save_state()
            .expect("a fresh detector saves its state");
        Shared {
            detector: Mutex::new(detector),
            initial,
        }
    }

    /// The detector, with its models back at `state` (its initial state when `None`).
    fn reset(&self, state: Option<&[u8]>) -> MutexGuard<'_, Detector> {
        let mut detector = self.detector.lock().unwrap_or_else(|e| e.into_inner());
        detector
            .load_state(state.unwrap_or(&self.initial))
            .expect("a state the detector saved itself loads again");
        detector
    }
}

/// The lines of an input that the host would hand to the plugin: split at `\n`, and only the
/// valid UTF-8 ones (the host passes the others through without asking the plugin).
fn lines(data: &[u8]) -> Vec<&str> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .collect()
}

/// Runs `events` through `detector` as one batch and checks each verdict against its event.
fn process_and_check(detector: &mut Detector, events: &[&str], now_ms: i64) {
    let verdicts = detector.process(events.iter().copied(), now_ms);
    assert_eq!(verdicts.len(), events.len(), "one verdict per event");
    for (line, verdict) in events.iter().zip(&verdicts) {
        if let Some(text) = verdict.replacement.as_ref().into_option() {
            check_replacement(line, text.as_str());
        }
    }
}

/// What an annotated event must satisfy: one line (no `\n`, and no `\r` the original did not
/// hold: JSON allows a raw `\r` only as white space, and annotation keeps the original bytes),
/// and (when the original is strict JSON) a JSON object that keeps every field of the original
/// with its value.
fn check_replacement(original: &str, replacement: &str) {
    let carriage_returns = |text: &str| text.bytes().filter(|&b| b == b'\r').count();
    assert!(
        !replacement.contains('\n') && carriage_returns(replacement) <= carriage_returns(original),
        "replacement adds a line terminator: {replacement:?}"
    );
    let Ok(Value::Object(before)) = serde_json::from_str::<Value>(original) else {
        return;
    };
    let after: Value = serde_json::from_str(replacement).unwrap_or_else(|e| {
        panic!("replacement of a valid event is not JSON ({e}):\n{original}\n{replacement}")
    });
    keeps_fields(&Value::Object(before), &after, "");
}

/// Every leaf of `before` is in `after` at the same path with the same value.
fn keeps_fields(before: &Value, after: &Value, path: &str) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, value) in b {
                let here = format!("{path}/{key}");
                let Some(kept) = a.get(key) else {
                    panic!("annotation removed {here}");
                };
                keeps_fields(value, kept, &here);
            }
        }
        _ => assert_eq!(before, after, "annotation changed {path}"),
    }
}

/// The detector on event lines, from its initial state each time: every input is one batch of
/// lines (the bytes between `\n`s), evaluated at a fixed clock. Checks that a verdict comes
/// back per line and that annotations are single lines that keep every original field.
pub fn detector_fresh(data: &[u8]) {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    let shared = SHARED.get_or_init(|| Shared::new(build_detector()));
    let mut detector = shared.reset(None);
    process_and_check(&mut detector, &lines(data), FRESH_NOW);
}

/// The detector on event lines, never reset: state built by earlier inputs shapes later ones,
/// as in a long run (models near their caps, evictions, many buckets). The clock advances a
/// second per input. A crash found here may need the inputs before it to reproduce.
pub fn detector_long_lived(data: &[u8]) {
    static SHARED: OnceLock<Mutex<(Detector, i64)>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| Mutex::new((build_detector(), FRESH_NOW)));
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    let (detector, now) = &mut *guard;
    *now += 1000;
    let now = *now;
    process_and_check(detector, &lines(data), now);
}

/// Events that give every job a few buckets of history (the detector learns for two), then
/// a new country and a large upload: loaded states are exercised by scoring, flagging and
/// annotating.
fn baseline_events() -> Vec<String> {
    let mut events = Vec::new();
    let event = |ms: i64, ip: &str, bytes: u64| {
        serde_json::json!({
            "@timestamp": egresswatch_common::time::format_rfc3339_ms(ms),
            "event": {"category": ["network"]},
            "source": {"ip": "10.1.2.3", "bytes": bytes},
            "destination": {"ip": ip, "port": 443},
            "network": {"direction": "outbound"},
        })
        .to_string()
    };
    const BUCKET_3H: i64 = 3 * 3_600_000;
    for bucket in 0..6 {
        for (k, ip) in ["8.8.8.8", "78.46.34.21", "52.95.1.1", "1.1.1.1"]
            .iter()
            .enumerate()
        {
            let ms = T0 + bucket * BUCKET_3H + k as i64 * 60_000;
            events.push(event(ms, ip, 20_000 + 1000 * k as u64));
        }
    }
    let end = T0 + 6 * BUCKET_3H;
    events.push(event(end, "175.45.176.1", 5_000));
    events.push(event(end + 1000, "93.184.216.34", 4_000_000_000));
    events
}

/// The state decoder: `load_state` on the input, then a batch on the loaded models, then the
/// round trip: what the detector saves from a loaded state loads again, is as large when saved
/// again, and judges the next events exactly as the state it came from.
///
/// The first byte chooses how the input is read. Even: the rest is the plugin's state bytes as
/// they are. Odd: the rest patches a valid state (one saved after [`baseline_events`]) in place,
/// as `(offset: u16 LE, byte)` triples, so that a state whose framing and checksums are right
/// but whose values are hostile (a zero span, a huge count) is reached at once; the offsets
/// count from the start when the first byte is 1 modulo 4, from the end when it is 3 (where the
/// index of model sizes and its length lie). The host's envelope decoder also reads the raw
/// input.
pub fn state(data: &[u8]) {
    static SHARED: OnceLock<(Shared, Vec<u8>)> = OnceLock::new();
    let (shared, valid) = SHARED.get_or_init(|| {
        let shared = Shared::new(build_detector());
        let valid = {
            let mut detector = shared.reset(None);
            let events = baseline_events();
            let refs: Vec<&str> = events.iter().map(String::as_str).collect();
            detector.process(refs, FRESH_NOW);
            detector.save_state().expect("saving a trained detector")
        };
        (shared, valid)
    });
    let _ = egresswatch_plugin_api::state_file::decode("egresswatch-plugin", data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut patched = valid.clone();
        let len = patched.len();
        for patch in rest.chunks_exact(3) {
            let offset = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % len;
            let at = if mode % 4 == 3 {
                len - 1 - offset
            } else {
                offset
            };
            patched[at] = patch[2];
        }
        patched
    };
    let mut detector = shared.reset(None);
    if detector.load_state(&bytes).is_err() {
        return;
    }
    let events = baseline_events();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    process_and_check(&mut detector, &refs, FRESH_NOW + 3_600_000);
    let saved = detector
        .save_state()
        .expect("a loaded state that scored a batch saves");
    detector
        .load_state(&saved)
        .unwrap_or_else(|e| panic!("a state the detector saved does not load: {e}"));
    let again = detector.save_state().expect("saving again");
    assert_eq!(
        saved.len(),
        again.len(),
        "saving a just-loaded state changed its size"
    );
    // A state and its re-save (whose map order may differ) judge the next events alike.
    let next: Vec<String> = baseline_events()
        .iter()
        .map(|e| e.replace("2026-11-01", "2026-11-02"))
        .collect();
    let next: Vec<&str> = next.iter().map(String::as_str).collect();
    detector.load_state(&saved).expect("loads again");
    let first = detector.process(next.iter().copied(), FRESH_NOW + 86_400_000);
    detector.load_state(&again).expect("the re-save loads");
    let second = detector.process(next.iter().copied(), FRESH_NOW + 86_400_000);
    assert_eq!(
        first, second,
        "a state and its re-save judge events differently"
    );
    drop(detector);
    drop(shared.reset(None));
}

/// The rule file parser on any text: no panic, and a rule it accepts serialises.
pub fn rules_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = egresswatch_plugin::rules::parse_rule(Path::new("fuzz.toml"), text) {
        serde_json::to_string(&rule).expect("a parsed rule serialises");
        assert!(
            !rule.rule_id.trim().is_empty(),
            "a rule without an id was accepted"
        );
    }
}

/// The host configuration as YAML and as TOML: parsing, the consistency checks, the key lines,
/// and the plugin's parse of the `detector:` section the host hands it.
pub fn host_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for is_toml in [false, true] {
        let lines = if is_toml {
            KeyLines::toml(text)
        } else {
            KeyLines::yaml(text)
        };
        let _ = lines.nearest("detector.geoip.database");
        if let Ok(config) = HostConfig::parse(text, is_toml) {
            let _ = config.problems();
            let json = config.detector_json();
            let _ = DetectorConfig::parse(&json);
        }
    }
}

/// The replay presets' line parsers (Zeek TSV and JSON, Suricata EVE, Argus), each reading the
/// input as one file, and format detection on its first line. A converted event must be a
/// JSON object.
pub fn replay_lines(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Format::detect(text.lines().next().unwrap_or(""));
    for format in Format::PRESETS {
        let mut converter = Converter::new(Preset::builtin(format));
        for line in text.split('\n') {
            if let Ok(Line::Event(event, _)) = converter.convert(line) {
                assert!(event.is_object(), "{format:?} made a non-object event");
                serde_json::to_string(&event).expect("a converted event serialises");
            }
        }
    }
}

/// The MaxMind DB reader and the lookup cache: opening any bytes as a database, then looking
/// up fixed addresses and addresses taken from the input, through the cache (twice, so that
/// hits are compared too) and directly. The cache must answer as the database does.
pub fn mmdb(data: &[u8]) {
    let Ok(db) = GeoDb::from_bytes(data.to_vec(), "fuzz.mmdb") else {
        return;
    };
    let _ = (db.database_type(), db.build_epoch());
    let db = std::sync::Arc::new(db);
    let mut cache = GeoCache::new(std::sync::Arc::clone(&db), 2);
    let mut probes: Vec<IpAddr> = [
        "8.8.8.8",
        "1.1.1.1",
        "77.88.8.8",
        "175.45.176.1",
        "2a00:1450::1",
        "2001:4860::8888",
        "::ffff:8.8.4.4",
        "64:ff9b::808:808",
    ]
    .iter()
    .map(|s| s.parse().expect("probe address"))
    .collect();
    for chunk in data.rchunks_exact(16).take(8) {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(chunk);
        probes.push(IpAddr::from(octets));
        probes.push(IpAddr::from([octets[0], octets[1], octets[2], octets[3]]));
    }
    for _ in 0..2 {
        for &ip in &probes {
            assert_eq!(
                cache.country(ip),
                db.country(ip),
                "cache and database differ on {ip}"
            );
        }
    }
}

/// Paths [`scanner_vs_serde`] reads: prefixes of one another, a segment over sixteen bytes,
/// and the detector's own.
const SCANNED_PATHS: &[&str] = &[
    "a",
    "a.b",
    "a.b.c",
    "b",
    "ab.c",
    "a.segment_over_sixteen_bytes",
    "destination.ip",
    "destination.geo.country_name",
    "event.category",
    "source.bytes",
];

/// The field scanner against serde_json on one line (the bytes up to the first `\n`): what
/// serde_json refuses as JSON the scanner refuses; what serde_json reads as an object the
/// scanner reads, and every wanted field holds what `egresswatch_common::path::get` finds in
/// serde_json's tree (the same lookup order: last of a repeated key, most nested form), as
/// JSON text that serde_json reads back to the same value.
pub fn scanner_vs_serde(data: &[u8]) {
    static SCANNER: OnceLock<Mutex<(Scanner, Vec<FieldId>)>> = OnceLock::new();
    let data = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let shared = SCANNER.get_or_init(|| {
        let mut schema = SchemaBuilder::new();
        let ids = SCANNED_PATHS.iter().map(|p| schema.field(p)).collect();
        let schema = schema.build().expect("the paths are valid");
        Mutex::new((Scanner::new(std::sync::Arc::new(schema)), ids))
    });
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    let (scanner, ids) = &mut *guard;
    let ours = scanner.scan(line);
    if serde_json::from_str::<serde::de::IgnoredAny>(line).is_err() {
        assert!(
            ours.is_err(),
            "serde_json refuses what the scanner reads: {line:?}"
        );
        return;
    }
    // serde_json's tree also refuses numbers out of f64's range, which are JSON.
    let Ok(tree @ Value::Object(_)) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let event = ours.unwrap_or_else(|e| panic!("scanner refuses a JSON object ({e}): {line:?}"));
    for (path, id) in SCANNED_PATHS.iter().zip(ids.iter()) {
        let expected = egresswatch_common::path::get(&tree, path);
        let found = event.raw(*id).map(|raw| {
            serde_json::from_str::<Value>(&raw).unwrap_or_else(|e| {
                panic!("{path}: the scanner's text {raw:?} is not JSON ({e}): {line:?}")
            })
        });
        assert_eq!(found.as_ref(), expected, "{path} in {line:?}");
    }
}
