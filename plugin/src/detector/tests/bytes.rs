//! The bytes job: exfiltration flagged, steady senders and non-public destinations not.

use super::*;

/// 25 3h buckets in which 30 destinations receive a few kB to a few MB each.
pub(super) fn bytes_baseline(d: &mut Detector, buckets: i64) {
    for b in 0..buckets {
        for k in 0..30i64 {
            let ip = format!("52.95.{}.{}", 10 + k, 1 + b % 5);
            let bytes = 2_000 * (1 + (k * 7 + b * 3) % 40) * (1 + k % 5).pow(2);
            let v = d.at(&event(
                T0 + b * HOURS3 + k * 60_000,
                &ip,
                Some("Ireland"),
                Some(json!(bytes)),
            ));
            assert_eq!(v, Verdict::PASS, "baseline flagged at bucket {b}");
        }
    }
}

/// Chunks of a 3 GB upload in 15 flagged, after a baseline where destinations get up to a
/// few hundred MB (so only the sum stands out) and, if `forged`, one event 23 hours ahead;
/// `live`: the host's clock is the events' time, else a year later (a replay).
fn chunked_upload_flags(forged: bool, live: bool) -> usize {
    let mut d = detector(json!({}));
    let clock = |t: i64| if live { t } else { NOW };
    for b in 0..60 {
        for k in 0..30i64 {
            let t = T0 + b * HOURS3 + k * 60_000;
            let bytes = 400_000 * (1 + (k * 7 + b * 3) % 40) * (1 + k % 5).pow(2);
            let ip = format!("52.95.{}.{}", 10 + k, 1 + b % 5);
            let e = event(t, &ip, Some("Ireland"), Some(json!(bytes)));
            d.evaluate(&e, clock(t));
        }
        for k in 0..3 {
            let t = T0 + b * HOURS3 + 3_600_000 + k * 1000;
            let ip = format!("93.184.{b}.{k}");
            let bytes = json!(150_000_000 * (k + 1));
            d.evaluate(&event(t, &ip, Some("Ireland"), Some(bytes)), clock(t));
        }
    }
    let start = T0 + 60 * HOURS3 + 60_000;
    if forged {
        let far = event(start + 23 * 3_600_000, "8.8.4.4", None, Some(json!(1_000)));
        d.evaluate(&far, clock(start));
    }
    (0..15)
        .filter(|i| {
            let t = start + 60_000 + i * 30_000;
            let e = event(t, "198.51.7.9", Some("Ireland"), Some(json!(200_000_000)));
            annotated(&d.evaluate(&e, clock(t))).is_some()
        })
        .count()
}

#[test]
fn one_event_a_day_ahead_does_not_blind_the_bytes_job() {
    // Issue 13: an event at now+23h made every later event "far late": 0 of 15 chunks.
    for live in [true, false] {
        let clean = chunked_upload_flags(false, live);
        let after = chunked_upload_flags(true, live);
        println!("live {live}: {clean} chunks flagged, {after} after a forged time");
        assert!(clean > 0);
        assert_eq!(after, clean, "live {live}");
    }
}

#[test]
fn two_gigabytes_to_a_new_ip_are_flagged_at_the_crossing_event() {
    let mut d = detector(json!({}));
    bytes_baseline(&mut d, 25);
    let start = T0 + 25 * HOURS3;
    let ip = "93.184.216.34";
    for i in 0..5 {
        let v = d.at(&event(
            start + i * 1000,
            ip,
            Some("Ireland"),
            Some(json!(10_000)),
        ));
        assert_eq!(v, Verdict::PASS, "small chunk {i} flagged");
    }
    let mut first_flag = None;
    for i in 0..10 {
        let v = d.at(&event(
            start + 60_000 + i * 1000,
            ip,
            Some("Ireland"),
            Some(json!(200_000_000)),
        ));
        if let Some(alert) = annotated(&v) {
            assert_eq!(alert["egresswatch"]["rule"]["id"], EXFIL_RULE);
            assert!(alert["egresswatch"]["score"].as_f64().unwrap() >= 75.0);
            let reason = alert["egresswatch"]["reason"].as_str().unwrap();
            assert!(
                reason.contains("sent to destination.ip 93.184.216.34 in this 3h bucket"),
                "{reason}"
            );
            first_flag.get_or_insert(i);
        } else {
            assert!(
                first_flag.is_none(),
                "chunk {i} passed after the sum had crossed"
            );
        }
    }
    assert!(first_flag.is_some(), "2 GB to a new IP not flagged");
}

#[test]
fn one_destination_written_as_ipv4_and_as_mapped_ipv6_is_one_sum() {
    // An upload in chunks too small to flag alone, all to `93.184.216.34` or alternating
    // with the address as IPv4-mapped IPv6 text: the sum must cross at the same chunk.
    let first_flagged = |mixed: bool| {
        let mut d = detector(json!({}));
        bytes_baseline(&mut d, 25);
        let start = T0 + 25 * HOURS3;
        (0..40).find(|&i| {
            let ip = if mixed && i % 2 == 1 {
                "::FFFF:93.184.216.34"
            } else {
                "93.184.216.34"
            };
            let e = event(start + i * 1000, ip, Some("Ireland"), Some(json!(CHUNK)));
            annotated(&d.at(&e)).is_some()
        })
    };
    const CHUNK: i64 = 4_000_000;
    let plain = first_flagged(false);
    println!("first flagged chunk: {plain:?}");
    assert!(
        plain.is_some_and(|i| i >= 2),
        "the sum, not one chunk, must flag"
    );
    assert_eq!(first_flagged(true), plain);
}

#[test]
fn a_destination_that_always_receives_gigabytes_is_not_flagged() {
    let mut d = detector(json!({}));
    let backup = "52.216.1.1";
    for b in 0..70 {
        for k in 0..30i64 {
            let ip = format!("52.95.{}.1", 10 + k);
            let v = d.at(&event(
                T0 + b * HOURS3 + k * 1000,
                &ip,
                None,
                Some(json!(50_000 + k * 1000)),
            ));
            assert_eq!(v, Verdict::PASS);
        }
        for chunk in 0..20 {
            let t = T0 + b * HOURS3 + 60_000 + chunk * 1000;
            let v = d.at(&event(t, backup, None, Some(json!(100_000_000))));
            assert_eq!(v, Verdict::PASS, "backup flagged in bucket {b}");
        }
    }
}

#[test]
fn private_reserved_and_allow_listed_destinations_and_bad_bytes_never_flag() {
    let mut d = detector(json!({ "allow_destinations": ["93.184.216.0/24"] }));
    bytes_baseline(&mut d, 25);
    let t = T0 + 25 * HOURS3;
    for ip in [
        "10.2.3.4",
        "172.20.1.1",
        "100.64.1.1",
        "203.0.113.9",
        "224.0.0.5",
        "255.255.255.255",
        "2001:db8::1",
        "fd00::1",
        "93.184.216.34",
    ] {
        for i in 0..5 {
            let v = d.at(&event(t + i, ip, None, Some(json!(5_000_000_000_u64))));
            assert_eq!(v, Verdict::PASS, "{ip} flagged");
        }
    }
    for bytes in [
        None,
        Some(json!("lots")),
        Some(json!(null)),
        Some(json!(-5)),
    ] {
        let v = d.at(&event(t, "93.184.217.1", None, bytes.clone()));
        assert_eq!(v, Verdict::PASS, "{bytes:?}");
    }
}
