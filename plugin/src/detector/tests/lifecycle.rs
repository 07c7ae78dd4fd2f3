//! Across calls: hash seeds, score records, alert episodes, options, the clock, saved state.

use super::*;

#[test]
fn the_hash_seed_reaches_the_models_and_a_loaded_state_keeps_its_own() {
    let config = |seed| {
        let config: DetectorConfig =
            serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
        Detector::with_options(
            config,
            BuildOptions {
                hash_seed: seed,
                ..BuildOptions::default()
            },
        )
        .unwrap()
    };
    let (mut a, mut b) = (config(1), config(2));
    rare_baseline(&mut a, BASE);
    rare_baseline(&mut b, BASE);
    let (state_a, state_b) = (a.save_state().unwrap(), b.save_state().unwrap());
    assert_ne!(state_a, state_b, "the seed is part of each model's state");
    // A detector built with another seed that loads `a`'s state saves `a`'s keys again
    // (compared with `a`'s own detector after the same load: a loaded map may iterate in
    // another order than the one it was saved from).
    let mut c = config(3);
    c.load_state(&state_a).unwrap();
    let mut a_again = config(1);
    a_again.load_state(&state_a).unwrap();
    assert_eq!(c.save_state().unwrap(), a_again.save_state().unwrap());
    let e = event(
        T0 + BASE * MIN15,
        "175.45.179.109",
        Some("North Korea"),
        None,
    );
    assert_eq!(a.at(&e), c.at(&e));
    assert!(annotated(&b.at(&e)).is_some());
}

#[test]
fn score_records_cover_every_scored_event_and_match_the_verdicts() {
    let config: DetectorConfig = serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
    let options = BuildOptions {
        score_records: true,
        ..BuildOptions::default()
    };
    let mut d = Detector::with_options(config, options).unwrap();
    rare_baseline(&mut d, BASE);
    let t = T0 + BASE * MIN15;
    let batch = [
        event(t, "8.8.8.8", Some("United States"), None),
        "not json".to_owned(),
        event(t + 1, "175.45.179.109", Some("North Korea"), None),
    ];
    let verdicts = d.process(batch.iter().map(String::as_str), NOW);
    let records = d.take_scores();
    assert!(d.take_scores().is_empty(), "taken once");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].event, 0);
    assert!(!records[0].flagged && records[0].reason.is_empty());
    let flagged = &records[1];
    assert_eq!(flagged.event, 2);
    assert_eq!(flagged.rule_id.as_str(), RARE_RULE);
    assert_eq!(flagged.job_id.as_str(), "rare_destination_country");
    assert_eq!(flagged.function.as_str(), "rare");
    assert_eq!(flagged.subject_field.as_str(), DESTINATION_COUNTRY_NAME);
    assert_eq!(flagged.subject_value.as_str(), "North Korea");
    assert_eq!(flagged.time_ms, t + 1);
    assert!(flagged.flagged && !flagged.learning && flagged.score >= flagged.threshold);
    assert!(
        flagged.reason.contains("North Korea seen in 0 of 192"),
        "{}",
        flagged.reason
    );
    assert!(!flagged.extra.is_empty());
    assert!(annotated(&verdicts[2]).is_some() && annotated(&verdicts[0]).is_none());
    assert_eq!(verdicts[1], Verdict::UNREADABLE);
}

#[test]
fn a_burst_is_one_alert_and_its_followers_reference_it() {
    let burst = |suppress: serde_json::Value| {
        let actions = json!({ "default": { "annotate": true, "suppress": suppress } });
        let config: DetectorConfig =
            serde_json::from_value(json!({ "rules": [rules_dir()], "actions": actions })).unwrap();
        let options = BuildOptions {
            score_records: true,
            ..BuildOptions::default()
        };
        let mut d = Detector::with_options(config, options).unwrap();
        rare_baseline(&mut d, BASE);
        let t = T0 + BASE * MIN15 + 5_000;
        let lines: Vec<String> = (0..5)
            .map(|i| event(t + i * 1000, "175.45.179.109", Some("North Korea"), None))
            .collect();
        let verdicts = d.process(lines.iter().map(String::as_str), NOW);
        let alerts: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|v| annotated(v).expect("flagged"))
            .collect();
        (alerts, d.take_scores(), d.metrics())
    };
    let (alerts, records, metrics) = burst(json!("bucket"));
    let first = &alerts[0];
    assert_eq!(first["event"]["kind"], "alert");
    assert_eq!(first["rule"]["id"], RARE_RULE);
    let id = first["egresswatch"]["alert"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first["egresswatch"]["alert"]["suppressed"], false);
    for (n, follower) in alerts.iter().enumerate().skip(1) {
        let a = &follower["egresswatch"]["alert"];
        assert_eq!(a["id"], id.as_str(), "follower {n} names the alert");
        assert_eq!(a["suppressed"], true);
        assert_eq!(a["count"], n as u64 + 1);
        assert!(follower["event"].get("kind").is_none(), "{follower}");
        assert!(follower.get("rule").is_none(), "{follower}");
        assert_eq!(follower["egresswatch"]["rule"]["id"], RARE_RULE);
    }
    // The score records say the same: one alert, four followers of it.
    let identity: Vec<String> = records
        .iter()
        .filter(|r| r.flagged)
        .map(|r| match r.extra.first().map(|e| e.as_enum()) {
            Some(Ok(ScoreExtra::Alert { id })) => format!("alert {id}"),
            Some(Ok(ScoreExtra::Suppressed { alert_id, count })) => {
                format!("{alert_id} #{count}")
            }
            other => panic!("no alert identity: {other:?}"),
        })
        .collect();
    assert_eq!(
        identity,
        [
            format!("alert {id}"),
            format!("{id} #2"),
            format!("{id} #3"),
            format!("{id} #4"),
            format!("{id} #5")
        ]
    );
    let counter = |metrics: &[Metric], name: &str| {
        metrics
            .iter()
            .find(|m| m.name.as_str() == name)
            .map(|m| m.value)
    };
    assert_eq!(
        counter(&metrics, "egresswatch_detector_flagged_total"),
        Some(5.0)
    );
    assert_eq!(
        counter(&metrics, "egresswatch_detector_suppressed_total"),
        Some(4.0)
    );
    let rare_rule = metrics.iter().find(|m| {
        m.name.as_str() == "egresswatch_rule_suppressed_total"
            && m.labels.iter().any(|l| l.value.as_str() == RARE_RULE)
    });
    assert_eq!(rare_rule.map(|m| m.value), Some(4.0));
    // Suppression off: every flagged event is an alert of its own.
    let (alerts, _, metrics) = burst(json!("off"));
    let ids: BTreeSet<&str> = alerts
        .iter()
        .map(|a| {
            assert_eq!(a["event"]["kind"], "alert");
            a["egresswatch"]["alert"]["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(
        counter(&metrics, "egresswatch_detector_suppressed_total"),
        Some(0.0)
    );
    // A bad setting is refused with its path.
    let err = Detector::from_json(
        &json!({ "rules": [rules_dir()], "actions": { "default": { "suppress": "soon" } } })
            .to_string(),
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains("actions.default.suppress"),
        "{err}"
    );
}

#[test]
fn the_threshold_and_learning_options_replace_the_configured_ones() {
    let config: DetectorConfig = serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
    let options = BuildOptions {
        threshold: Some(0.0),
        learning_buckets: Some(0),
        ..BuildOptions::default()
    };
    let mut d = Detector::with_options(config, options).unwrap();
    // No learning period and threshold 0: the very first event is flagged.
    let v = d.at(&event(T0, "8.8.8.8", Some("United States"), None));
    assert!(annotated(&v).is_some());
}

#[test]
fn the_clock_given_is_the_only_time_without_an_event_time() {
    let mut d = detector(json!({}));
    rare_baseline(&mut d, BASE);
    let mut e: serde_json::Value = serde_json::from_str(&event(
        T0 + BASE * MIN15,
        "175.45.179.109",
        Some("North Korea"),
        None,
    ))
    .unwrap();
    e.as_object_mut().unwrap().remove("@timestamp");
    // Without a time the event is placed at the clock: the bucket after the baseline.
    let alert = annotated(&d.evaluate(&e.to_string(), T0 + BASE * MIN15)).expect("flagged");
    assert_eq!(alert["egresswatch"]["bucket_start"], "2026-10-03T00:00:00Z");
    // An event time more than a day past the clock is not believed either.
    let far = event(T0 + 90 * 86_400_000, "8.8.8.8", Some("United States"), None);
    let mut twin = detector(json!({}));
    rare_baseline(&mut twin, BASE);
    assert_eq!(
        d.evaluate(&far, T0 + BASE * MIN15),
        twin.evaluate(&far, T0 + BASE * MIN15)
    );
}

#[test]
fn state_round_trip_continues_where_it_stopped() {
    let mut a = detector(json!({}));
    rare_baseline(&mut a, BASE);
    let saved = a.save_state().unwrap();
    let mut b = detector(json!({}));
    b.load_state(&saved).unwrap();
    let e = event(
        T0 + BASE * MIN15,
        "175.45.179.109",
        Some("North Korea"),
        None,
    );
    assert_eq!(a.at(&e), b.at(&e));
    assert!(annotated(&b.at(&e)).is_some());
    let err = b.load_state(b"garbage").unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::State));
}
