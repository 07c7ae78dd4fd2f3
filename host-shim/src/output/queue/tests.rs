//! Tests of the queue: a retired queue's hand-over, the `when_full` policies, and a disk
//! queue's cursor and what it keeps.

use super::*;
use std::sync::Arc;

fn batch(n: usize) -> Batch {
    Batch {
        data: vec![b'x'; n].into(),
        lines: 1,
        acks: Vec::new(),
        end: None,
        resent: false,
    }
}

#[test]
fn a_retired_queue_gives_up_what_was_not_started_and_its_replacement_puts_it_first() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let (old, new) = (
        Queue::new(100, stats.clone()),
        Queue::new(10, stats.clone()),
    );
    let none = Deadline::default();
    for n in [1, 2, 3] {
        old.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    // The delivery thread has the first in hand.
    let Popped::Batch(in_hand) = old.pop_timeout(Duration::ZERO) else {
        panic!("queued")
    };
    assert!(!old.retired());
    let held = old.retire();
    assert!(old.retired());
    assert_eq!(
        held.iter().map(|b| b.data.len()).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(matches!(old.pop_timeout(Duration::ZERO), Popped::Closed));
    // Lines pushed since the reload are behind what the old queue held, then what the old
    // thread hands back goes before both, whatever the bound (10 bytes here).
    new.push(batch(4), WhenFull::Block, &none).unwrap();
    new.put_front(held);
    new.put_front(vec![in_hand]);
    let order: Vec<usize> = std::iter::from_fn(|| match new.pop_timeout(Duration::ZERO) {
        Popped::Batch(b) => Some(b.data.len()),
        _ => None,
    })
    .collect();
    assert_eq!(order, [1, 2, 3, 4]);
}

#[test]
fn full_buffers_block_or_drop_by_policy_and_an_oversize_batch_passes_alone() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let q = Queue::new(10, stats.clone());
    let none = Deadline::default();
    assert!(matches!(
        q.push(batch(25), WhenFull::Block, &none),
        Ok(Pushed::Queued)
    ));
    assert!(matches!(
        q.push(batch(1), WhenFull::DropNewest, &none),
        Ok(Pushed::Dropped(_))
    ));
    assert_eq!(stats.status().pending_bytes, 25);
    let passed = Deadline::default();
    passed.start();
    assert!(matches!(
        q.push(batch(1), WhenFull::Block, &passed),
        Err(Refused::Deadline)
    ));
    // A blocked push goes through once the delivery thread takes the batch.
    let q = Arc::new(q);
    let taker = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            let Popped::Batch(b) = q.pop_timeout(Duration::from_secs(10)) else {
                panic!("a batch was queued");
            };
            q.settled(&b, 0);
            b.data.len()
        })
    };
    assert!(matches!(
        q.push(batch(3), WhenFull::Block, &none),
        Ok(Pushed::Queued)
    ));
    assert_eq!(taker.join().unwrap(), 25);
    assert!(stats.status().blocked_seconds > 0.0);
    assert_eq!(q.fail("gone".into(), 2), 3);
    assert!(matches!(
        q.push(batch(1), WhenFull::Block, &none),
        Err(Refused::Failed(r)) if r == "gone"
    ));
    assert_eq!(stats.status().pending_bytes, 0);
    assert!(matches!(
        q.pop_timeout(Duration::from_millis(1)),
        Popped::Empty
    ));
    q.close();
    assert!(matches!(q.pop_timeout(Duration::ZERO), Popped::Closed));
}

#[test]
fn a_disk_queue_keeps_what_it_did_not_deliver_when_its_output_gives_up() {
    let dir = std::env::temp_dir().join(format!("egresswatch-queue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let log = DiskLog::open("t", &dir, 1 << 20, stats.clone()).unwrap();
    let q = Queue::on_disk(log, 1 << 20, stats.clone());
    let none = Deadline::default();
    for _ in 0..3 {
        assert!(matches!(
            q.push(batch(10), WhenFull::Block, &none),
            Ok(Pushed::Queued)
        ));
    }
    let Popped::Batch(first) = q.pop_timeout(Duration::ZERO) else {
        panic!("a batch was pushed");
    };
    q.settled(&first, 0);
    let Popped::Batch(in_hand) = q.pop_timeout(Duration::ZERO) else {
        panic!("a batch was pushed");
    };
    // Given up on with one batch in hand: nothing is lost, two lines are kept.
    assert_eq!(q.fail("gone".into(), in_hand.lines), 0);
    q.settled(&in_hand, 0);
    assert_eq!(q.kept(), Some((2, 60)), "two records of 10 + 20 bytes");
    assert_eq!(stats.status().pending_lines, 2);
    q.close();
    drop(q);
    let found = DiskLog::open("t", &dir, 1 << 20, stats)
        .and_then(|log| log.check(&|| false))
        .unwrap();
    assert_eq!((found.held.records, found.held.lines), (2, 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_disk_queue_keeps_its_cursor_before_what_the_peer_has_not_acknowledged() {
    let dir = std::env::temp_dir().join(format!("egresswatch-unacked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let log = DiskLog::open("t", &dir, 1 << 20, stats.clone()).unwrap();
    let q = Queue::on_disk(log, 1 << 20, stats.clone());
    let none = Deadline::default();
    for _ in 0..4 {
        assert!(matches!(
            q.push(batch(10), WhenFull::Block, &none),
            Ok(Pushed::Queued)
        ));
    }
    let pop = || match q.pop_timeout(Duration::ZERO) {
        Popped::Batch(b) => b,
        _ => panic!("a batch was pushed"),
    };
    let (a, b, c) = (pop(), pop(), pop());
    q.settled(&a, 0);
    // Written to a socket whose peer has acknowledged none of it.
    q.settled(&b, 1);
    q.settled(&c, 2);
    // The peer acknowledged b's line, not c's.
    q.confirm(1);
    // (Bytes on disk: 10 of lines and a 20-byte header.)
    assert_eq!(q.kept(), Some((2, 30)), "c unacknowledged, d not taken");
    assert_eq!(q.fail("gone".into(), 1), 0);
    q.close();
    drop(q);
    let found = DiskLog::open("t", &dir, 1 << 20, stats)
        .and_then(|log| log.check(&|| false))
        .unwrap();
    assert_eq!(found.held.records, 2, "c and d are delivered again");
    let _ = std::fs::remove_dir_all(&dir);
}
