//! One thread or several: the same verdicts, scores, counters and state, event for event.

use abi_stable::std_types::RStr;
use egresswatch_plugin_api::{ErrorKind, Transform};

use super::*;

/// A detector with `threads` threads, every score recorded, no learning period and a low
/// threshold (so that many events are flagged, annotated and routed), the bundled GeoIP.
fn detector_with(threads: u16) -> Detector {
    let config = json!({
        "rules": [rules_dir()],
        "threads": threads,
        "actions": { "rules": { EXFIL_RULE: { "annotate": true, "route": "anomalies" } } },
    });
    let options = BuildOptions {
        score_records: true,
        learning_buckets: Some(0),
        threshold: Some(20.0),
        ..BuildOptions::default()
    };
    Detector::build(&config.to_string(), options).expect("detector builds")
}

/// Runs `lines` through a detector of each thread count in batches of the sizes `batches`
/// cycles through, and asserts that every batch's verdicts and score records, and in the end
/// the counters and saved state, are the same. Every other batch is scanned by the helper
/// alone (the calling thread never scans: on a loaded machine it could otherwise scan every
/// chunk itself, and the test would not cross threads). Returns the flagged events.
fn same_on_one_and_two_threads(lines: &[String], batches: &[usize]) -> usize {
    let (mut one, mut two) = (detector_with(1), detector_with(2));
    let mut flagged = 0;
    let mut rest = lines;
    for (n, &size) in batches.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        if let Some(helpers) = two.stage.as_mut().and_then(|s| s.helpers.as_mut()) {
            helpers.caller_scans = n % 2 == 0;
        }
        let (batch, after) = rest.split_at(size.min(rest.len()));
        let at = lines.len() - rest.len();
        rest = after;
        let events = || batch.iter().map(String::as_str);
        let (a, b) = (one.process(events(), NOW), two.process(events(), NOW));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a, b, "verdict of line {}", at + i);
        }
        assert_eq!(a.len(), b.len());
        flagged += a.iter().filter(|v| v.route.is_some()).count();
        assert_eq!(
            one.take_scores(),
            two.take_scores(),
            "scores of lines {at}.."
        );
    }
    let helpers = two.stage.as_ref().and_then(|s| s.helpers.as_ref());
    let helped = helpers.map_or(0, |h| h.helped.load(std::sync::atomic::Ordering::Relaxed));
    assert!(helped > 0, "the helper scanned no chunk");
    // All but the GeoIP cache's hits and misses: its hash is seeded at random per detector.
    let metrics = |d: &Detector| -> Vec<Metric> {
        d.metrics()
            .into_iter()
            .filter(|m| !m.name.as_str().starts_with("egresswatch_geoip_cache_"))
            .collect()
    };
    assert_eq!(metrics(&one), metrics(&two));
    assert_eq!(one.save_state().unwrap(), two.save_state().unwrap());
    flagged
}

/// Batch sizes around the chunk, the shared minimum and the ring (256 events), and one event.
const BATCHES: [usize; 8] = [1024, 1, 31, 32, 33, 257, 5000, 700];

#[test]
fn the_sample_gives_the_same_verdicts_and_scores_on_one_and_two_threads() {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/data/sample.ndjson",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let flagged = same_on_one_and_two_threads(&lines, &BATCHES);
    assert!(
        flagged > 10,
        "only {flagged} events flagged: the comparison says little"
    );
}

/// Events to many destinations, with what makes a scan go out of its way: escaped strings and
/// keys, dotted keys, repeated keys (a second pass), unreadable lines, countries given or left
/// to GeoIP, numbers as strings.
fn many_destinations(count: usize) -> Vec<String> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|i| {
            let r = next();
            let ms = T0 + (i as i64) * 20_000;
            let ip = format!(
                "{}.{}.{}.{}",
                [23, 45, 81, 104, 151, 185, 203][(r % 7) as usize],
                (r >> 8) % 256,
                (r >> 16) % 256,
                1 + (r >> 24) % 254
            );
            let bytes = 100 + (r >> 32) % 5_000 + if r % 97 == 0 { 40_000_000 } else { 0 };
            let country = ["Germany", "France", "Brazil", "North Korea"][((r >> 40) % 4) as usize];
            match (r >> 44) % 16 {
                0 => "{\"not json".to_owned(),
                1 => format!(
                    r#"{{"@timestamp":"{}","event.category":["network"],"destination.ip":"{ip}","source":{{"ip":"10.0.0.1","bytes":"{bytes}"}},"network.direction":"outbound"}}"#,
                    iso(ms)
                ),
                2 => format!(
                    r#"{{"@timestamp":"{}","event":{{"category":["network"]}},"destin\u0061tion":{{"ip":"{ip}","geo":{{"country_name":"C\u00f4te {country}"}}}},"source":{{"ip":"10.0.0.1","bytes":{bytes}}},"network":{{"direction":"outbound"}}}}"#,
                    iso(ms)
                ),
                3 => format!(
                    r#"{{"@timestamp":"{}","event":{{"category":["network"]}},"destination":{{"ip":"8.8.8.8"}},"destination":{{"ip":"{ip}"}},"source":{{"ip":"10.0.0.1","bytes":{bytes}}},"network":{{"direction":"outbound"}}}}"#,
                    iso(ms)
                ),
                4..=9 => {
                    let geo = format!(r#","geo":{{"country_name":"{country}"}}"#);
                    event(ms, &ip, None, Some(json!(bytes))).replacen(
                        &format!(r#""ip":"{ip}""#),
                        &format!(r#""ip":"{ip}"{geo}"#),
                        1,
                    )
                }
                _ => event(ms, &ip, None, Some(json!(bytes))),
            }
        })
        .collect()
}

#[test]
fn many_destinations_give_the_same_verdicts_and_scores_on_one_and_two_threads() {
    let lines = many_destinations(30_000);
    let flagged = same_on_one_and_two_threads(&lines, &BATCHES);
    assert!(
        flagged > 10,
        "only {flagged} events flagged: the comparison says little"
    );
}

#[test]
fn a_helper_that_panics_fails_its_batch_with_an_error_and_the_next_batch_is_evaluated() {
    let lines = many_destinations(1_500);
    let events = |range: std::ops::Range<usize>| -> Vec<RStr<'_>> {
        lines[range].iter().map(|l| RStr::from_str(l)).collect()
    };
    let mut d = detector_with(2);
    let first = Transform::process(&mut d, events(0..500).as_slice().into(), NOW).unwrap();
    assert_eq!(first.len(), 500);
    let helpers = d.stage.as_mut().and_then(|s| s.helpers.as_mut()).unwrap();
    helpers.panic = true;
    let failed = Transform::process(&mut d, events(500..1000).as_slice().into(), NOW);
    let error = failed.into_result().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Panic);
    assert!(error.message.contains("test hook"), "{}", error.message);
    // The stage was lost with the panic: the next batch starts new helpers and is judged.
    let after = Transform::process(&mut d, events(1000..1500).as_slice().into(), NOW).unwrap();
    assert_eq!(after.len(), 500);
    let helpers = d.stage.as_ref().and_then(|s| s.helpers.as_ref()).unwrap();
    assert!(!helpers.panic, "the helpers of the failed batch are gone");
}

#[test]
fn a_helper_a_ring_ahead_sleeps_until_a_chunk_is_judged_and_is_woken_then() {
    let d = detector_with(2);
    let helpers = {
        let mut helpers = Helpers::start(1, &d.schema).unwrap();
        helpers.caller_scans = false;
        helpers.sleep_at_once = true;
        helpers
    };
    let mut scanner = Scanner::new(Arc::clone(&d.schema));
    let text = many_destinations(40 * crate::detector::threads::CHUNK);
    let lines: Vec<&str> = text.iter().map(String::as_str).collect();
    // Judging is slow (a sleep per event): the helper fills the ring, finds no room, sleeps.
    let mut judged = Vec::new();
    let mut check = d.scanner();
    helpers.run(&mut scanner, &lines, |i, line, record| {
        let (scanned, here) = (record.event(line, &d.schema), check.scan(line));
        assert_eq!(scanned.is_ok(), here.is_ok(), "line {i} scanned");
        judged.push(i);
        std::thread::sleep(std::time::Duration::from_micros(50));
    });
    assert_eq!(judged, (0..lines.len()).collect::<Vec<_>>());
    assert_eq!(
        helpers.helped.load(std::sync::atomic::Ordering::Relaxed),
        40,
        "the helper scanned every chunk"
    );
    assert!(
        helpers
            .woke_helpers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the calling thread never woke the helper waiting for room"
    );
}
