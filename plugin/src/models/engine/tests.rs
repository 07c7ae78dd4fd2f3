//! Tests of the `engine` module, in their own file to keep `engine.rs` short.

use super::*;

#[test]
fn score_curve_is_monotone_and_bounded() {
    let mut last = -1.0;
    for i in 0..1000 {
        let s = score_from_log10_p(f64::from(i) * 0.01);
        assert!(s >= last && (0.0..=100.0).contains(&s));
        last = s;
    }
    assert_eq!(score_from_log10_p(f64::NAN), 0.0);
    assert_eq!(score_from_log10_p(50.0), 100.0);
}

#[test]
fn below_the_floor_probability_the_score_is_below_the_floor() {
    assert_eq!(floor_probability(0.0), None);
    for floor in [0.5, 3.0, 20.0, 50.0, 74.9, 75.0, 75.1, 90.0, 99.0, 100.0] {
        let p = floor_probability(floor).expect("a floor");
        assert!(p > 0.0 && p < 1.0, "{floor}: {p}");
        // Any probability from the bound up scores below the floor, with room to spare.
        let at = score_from_log10_p(-p.log10());
        assert!(at < floor, "{floor}: {at}");
        // And the bound is not loose: half of it again would score at least the floor
        // (below 1 at low floors, where halfway to 1 is the bound).
        let closer = score_from_log10_p(-(p / 2.0).log10());
        assert!(closer >= floor - 1e-9 || p >= 0.5, "{floor}: {closer}");
    }
}

#[test]
fn clock_open_late_far_late() {
    let mut c = Clock::new(900, 1);
    let t0 = 1_700_000_100_000_i64;
    let b0 = (t0 / 900_000) as i32;
    let live = |c: &mut Clock, t: i64| c.place(t, t);
    assert_eq!(live(&mut c, t0), Some((Slot::Open(b0), Some(b0 - 1))));
    assert_eq!(
        live(&mut c, t0 + 900_000),
        Some((Slot::Open(b0 + 1), Some(b0)))
    );
    assert_eq!(live(&mut c, t0), Some((Slot::Open(b0), None)));
    assert_eq!(
        live(&mut c, t0 - 900_000),
        Some((Slot::FarLate(b0 - 1), None))
    );
    // A quiet hour in a live stream: the host's clock vouches for the jump.
    assert_eq!(
        live(&mut c, t0 + 5 * 900_000),
        Some((Slot::Open(b0 + 5), Some(b0 + 4)))
    );
    assert_eq!(c.place(i64::MAX, i64::MAX), None);
    assert_eq!(c.future_events(), 0);
}

#[test]
fn a_loaded_clock_with_a_zero_span_is_refused() {
    // The fuzz-found state: a valid envelope whose clock span is 0.
    let bytes = postcard::to_allocvec(&(0i64, 1i32, Some(5i32), Vec::<i64>::new(), 0u64)).unwrap();
    let clock: Clock = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(clock.span_ms(), 0);
    let config = crate::models::RareConfig::default().model;
    let err = clock.check(&config).unwrap_err();
    assert!(err.to_string().contains("bucket_span_secs"), "{err}");
    let bytes =
        postcard::to_allocvec(&(900_000i64, 99i32, Some(5i32), vec![1i64; 9], 0u64)).unwrap();
    let clock: Clock = postcard::from_bytes(&bytes).unwrap();
    assert!(clock.check(&config).is_err());
}

#[test]
fn one_far_future_event_never_moves_the_clock() {
    let span = 3 * 3_600_000;
    let t0 = 1_700_000_000_000_i64 / span * span;
    let b0 = (t0 / span) as i32;
    // Live: an event 23 h ahead of the host's clock is taken to happen 10 minutes ahead.
    let mut live = Clock::new(10_800, 1);
    live.place(t0, t0);
    assert_eq!(
        live.place(t0 + 23 * 3_600_000, t0),
        Some((Slot::Open(b0), None))
    );
    assert_eq!(live.head(), Some(b0));
    assert_eq!(live.future_events(), 1);
    // Replay (the host's clock is years ahead): the jump has no quorum and lands in the head.
    let wall = t0 + 1_000 * 86_400_000;
    let mut replay = Clock::new(10_800, 1);
    replay.place(t0, wall);
    assert_eq!(
        replay.place(t0 + 23 * 3_600_000, wall),
        Some((Slot::Open(b0), None))
    );
    assert_eq!(
        replay.place(t0 + 60_000, wall),
        Some((Slot::Open(b0), None))
    );
    assert_eq!(replay.head(), Some(b0));
    assert_eq!(replay.future_events(), 1);
    // Normal progression goes on, one bucket at a time.
    assert_eq!(
        replay.place(t0 + span, wall),
        Some((Slot::Open(b0 + 1), Some(b0)))
    );
    // A real gap (a quiet night in the replayed logs): once three events ahead of the head
    // have been seen, the clock moves to the earliest of them, never to the forged one.
    let morning = t0 + 5 * span;
    assert_eq!(
        replay.place(morning, wall),
        Some((Slot::Open(b0 + 1), None))
    );
    assert_eq!(
        replay.place(morning + 1_000, wall),
        Some((Slot::Open(b0 + 5), Some(b0 + 4)))
    );
    assert_eq!(
        replay.place(morning + 2_000, wall),
        Some((Slot::Open(b0 + 5), None))
    );
    assert_eq!(replay.future_events(), 2);
    // Three forged events in a row could move a replay's clock; a live stream's host clock
    // bounds them (above).
    let mut fresh = Clock::new(10_800, 1);
    fresh.place(t0, wall);
    for i in 0..2 {
        fresh.place(t0 + 30 * span + i, wall);
        fresh.place(t0 + 60_000, wall);
    }
    assert_eq!(fresh.head(), Some(b0));
}

#[test]
fn normal_tail() {
    assert!((normal_neg_log10_sf(0.0) - std::f64::consts::LOG10_2).abs() < 1e-4);
    assert!((normal_neg_log10_sf(3.0) - 2.8697).abs() < 1e-3);
    let a = normal_neg_log10_sf(4.999);
    let b = normal_neg_log10_sf(5.001);
    assert!((a - b).abs() < 0.02, "{a} {b}");
}

/// An entry with a fixed weight, for the key table's tests.
#[derive(Debug, Clone, Copy)]
struct Fixed(f64);

impl Tracked for Fixed {
    fn weight(&self, _now: i32, _decay: &Decay) -> f64 {
        self.0
    }
    fn last_bucket(&self) -> i32 {
        0
    }
    fn promotable(&self) -> bool {
        self.0 >= 1.5
    }
}

#[test]
fn promotion_gives_back_the_memory_of_an_emptied_probation_tier() {
    let decay = Decay::new(56.0);
    let mut table = KeyTable::new(40_000);
    for key in 0..8_000u64 {
        table.entry(key, 0, &decay, || Fixed(2.0));
    }
    assert_eq!(table.probation_len(), 8_000);
    let before = table.approx_bytes();
    table.maintain(1, &decay);
    assert_eq!((table.established_len(), table.probation_len()), (8_000, 0));
    // The keys now live in the established tier only: without giving back probation's
    // memory the table would hold about twice `before`.
    let after = table.approx_bytes();
    assert!(
        after < before * 3 / 2,
        "{after} bytes after promotion, {before} before"
    );
    // A small tier keeps its room (no shrinking below 256 keys' worth).
    for key in 10_000..10_100u64 {
        table.entry(key, 1, &decay, || Fixed(1.0));
    }
    let small = table.approx_bytes();
    table.maintain(2, &decay);
    assert_eq!(table.approx_bytes(), small);
}

#[test]
fn tabled_decay_factors_are_the_computed_ones_bit_for_bit() {
    for half_life in [56.0, 2880.0, 2880.0 / 96.0, 0.5, 0.0] {
        let decay = Decay::new(half_life);
        let ln_factor = if half_life > 0.0 {
            -std::f64::consts::LN_2 / half_life
        } else {
            0.0
        };
        for age in -2..40i64 {
            let computed = if age <= 0 {
                1.0
            } else {
                (ln_factor * age as f64).exp()
            };
            assert_eq!(
                decay.factor(age).to_bits(),
                computed.to_bits(),
                "half-life {half_life}, age {age}"
            );
        }
    }
}

#[test]
fn a_change_that_makes_a_key_promotable_promotes_it_when_there_is_room() {
    let decay = Decay::new(56.0);
    let mut table = KeyTable::new(8); // 6 established, 2 on probation
    for key in 0..6u64 {
        table.change(key, 0, &decay, || Fixed(1.0), |v| v.0 = 2.0);
        // At once, not at the next maintenance.
        assert_eq!(table.established_len(), key as usize + 1);
    }
    assert_eq!(table.probation_len(), 0);
    // The established tier is full: the next one waits on probation for the maintenance, which
    // ranks it against the established keys (all as heavy: it stays).
    table.change(6, 0, &decay, || Fixed(1.0), |v| v.0 = 2.0);
    assert_eq!((table.established_len(), table.probation_len()), (6, 1));
    table.change(7, 0, &decay, || Fixed(1.0), |_| ());
    assert_eq!((table.established_len(), table.probation_len()), (6, 2));
    table.maintain(1, &decay);
    assert_eq!((table.established_len(), table.probation_len()), (6, 2));
    assert_eq!(table.get(6).map(|v| v.0), Some(2.0));
}

#[test]
fn which_keys_a_full_table_keeps_does_not_depend_on_their_arrival_order() {
    // Keys of equal weight (as in a spray): shedding a full probation tier and promoting into
    // too little room both break ties. A sender controls the arrival order, so it must not
    // decide which keys stay or move up.
    let decay = Decay::new(56.0);
    let keys: Vec<u64> = (1..=16u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let orders: [Vec<u64>; 3] = [
        keys.clone(),
        keys.iter().rev().copied().collect(),
        keys.iter()
            .step_by(2)
            .chain(keys.iter().skip(1).step_by(2))
            .copied()
            .collect(),
    ];
    let outcome = |order: &[u64], weight: f64| {
        let mut table = KeyTable::new(64); // 48 established, 16 on probation
        for key in 100..140u64 {
            table.change(key, 0, &decay, || Fixed(2.0), |_| ()); // promoted at once: room 8
        }
        for &key in order {
            table.entry(key, 0, &decay, || Fixed(weight));
        }
        table.entry(7, 0, &decay, || Fixed(weight)); // probation full: make room
        let state = |k: &u64| (table.get(*k).is_some(), table.is_established(*k));
        keys.iter().map(state).collect::<Vec<_>>()
    };
    // Weight 1: nothing promotable, so the full tier's heavier half (8 of 16, all tied) moves
    // into the 8 free established places. Weight 2: all promotable, 8 of them fit. Either way
    // every key stays and the tie-break picks which 8 move up.
    for weight in [1.0, 2.0] {
        let first = outcome(&orders[0], weight);
        assert!(first.iter().all(|(present, _)| *present));
        assert_eq!(first.iter().filter(|(_, up)| *up).count(), 8);
        for order in &orders[1..] {
            assert_eq!(outcome(order, weight), first, "weight {weight}");
        }
    }
}

#[test]
fn round_count_rounds_as_round_does() {
    let mut xs = vec![
        0.0,
        -0.0,
        0.5,
        1.5,
        2.5,
        0.49999999999999994,
        4_503_599_627_370_495.5,
        9_007_199_254_740_993.0,
        1.8e19,
        1.9e19,
        -0.4,
        -0.6,
        -3.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    // Decayed counts as the models report them, and the halves and their neighbours.
    let mut x: f64 = 1e-3;
    while x < 1e7 {
        xs.extend([
            x,
            x.floor() + 0.5,
            f64::from_bits((x.floor() + 0.5).to_bits() - 1),
        ]);
        x *= 1.013;
    }
    for x in xs {
        assert_eq!(round_count(x), x.round() as u64, "{x:e}");
    }
}
