//! Tests of the disk buffer's deferred start-up check and of its segment roll, through the
//! fault seam ([`super::disk_queue`]'s `Faulty`): a damaged record the check finds corrects
//! what the queue counted for the backlog; a check stopped by a read error goes on from the
//! segment that failed and counts each record once; a sync failing inside the roll to a new
//! segment fails the requests waiting on the old one, there and then.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::disk::{DiskLog, Next};
use super::disk_queue::{
    batch, dir, faulty, faulty_queue, left_by_an_earlier_run, line, popped, record, segment_files,
    stats, told, Op, EIO,
};
use super::queue::{Deadline, Pushed, Queue};
use crate::ack::{Ack, Outcome as Told};
use crate::config::WhenFull;

/// A segment's first record starts after its 8-byte header; a record's data after its 20-byte
/// header.
const FIRST_RECORD: u64 = 8;
const RECORD_HEADER: u64 = 20;

/// Writes one byte over `at` in the segment file `name` of `dir`, as a bad sector would.
fn damage(dir: &std::path::Path, name: &str, at: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name))
        .unwrap();
    file.write_all_at(b"X", at).unwrap();
}

#[test]
fn a_damaged_record_found_by_the_deferred_check_corrects_what_the_queue_counted() {
    let dir = dir("check-damaged");
    left_by_an_earlier_run(&dir, 4);
    let record = RECORD_HEADER + line(0).len() as u64;
    // The third record's data is damaged: it and the fourth are skipped by the check.
    let segment = segment_files(&dir)[0].clone();
    damage(&dir, &segment, FIRST_RECORD + 2 * record + RECORD_HEADER);
    let stats = stats();
    let log = DiskLog::open("t", &dir, 1 << 20, stats.clone()).unwrap();
    assert_eq!(log.backlog_bytes(), 4 * record, "the estimate: all of it");
    let queue = Queue::on_disk(log, 3 * record, stats.clone());
    let none = Deadline::default();
    // Until checked, the estimate counts as held: no room.
    assert!(matches!(
        queue.push(batch(9), WhenFull::DropNewest, &none),
        Ok(Pushed::Dropped(_))
    ));
    queue.check_backlog(&none).unwrap();
    // Once checked, what it found: two records, and room for one more.
    assert_eq!(queue.kept(), Some((2, 2 * record)));
    assert_eq!(stats.status().pending_lines, 2);
    assert!(matches!(
        queue.push(batch(9), WhenFull::DropNewest, &none),
        Ok(Pushed::Queued)
    ));
    for n in [0, 1, 9] {
        let b = popped(&queue);
        assert_eq!(b.data, line(n));
        queue.settled(&b, 0);
    }
    assert_eq!(queue.kept(), Some((0, 0)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Line `n`, about 40 KiB long.
fn long_line(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(40_000)).into_bytes()
}

#[test]
fn a_check_stopped_by_a_read_error_goes_on_from_that_segment_and_counts_each_record_once() {
    let dir = dir("check-resumed");
    {
        // Segments of 64 KiB: two records of 40 KiB in each of two.
        let log = DiskLog::open("t", &dir, 1 << 19, stats()).unwrap();
        for n in 0..4 {
            log.append(&long_line(n), 1, Vec::new())
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    assert_eq!(segment_files(&dir).len(), 2);
    let stats = stats();
    let (queue, faults) = faulty_queue(&dir, &stats);
    // (Opening read each segment's header.)
    assert_eq!(faults.calls(Op::Read), 2);
    // The check reads the first segment (its header, then each record's header and data: 5
    // reads) and the second's header and first record header; then two reads fail: the first
    // record's data, then the header again when it goes on.
    faults.fail_after(Op::Read, 7, 2, EIO);
    queue.check_backlog(&Deadline::default()).unwrap();
    // The first segment was read once: 2 at open, 5 + 2 + 1, then 1 failed, then 5.
    assert_eq!(faults.calls(Op::Read), 2 + 5 + 2 + 1 + 1 + 5);
    let record = RECORD_HEADER + long_line(0).len() as u64;
    assert_eq!(
        queue.kept(),
        Some((4, 4 * record)),
        "each record counted once"
    );
    assert_eq!(stats.status().pending_lines, 4);
    for n in 0..4 {
        let b = popped(&queue);
        assert_eq!(b.data, long_line(n));
        queue.settled(&b, 0);
    }
    assert_eq!(queue.kept(), Some((0, 0)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sync_failing_inside_the_segment_roll_fails_the_requests_waiting_on_the_old_segment() {
    let dir = dir("roll-sync");
    let (log, faults) = faulty(&dir);
    // The sync thread is held in its sync of the first segment (100 ms after a write)...
    let (started, go) = faults.hold_next_sync();
    log.append(&line(0), 1, Vec::new())
        .map_err(|(e, _)| e)
        .unwrap();
    started.recv_timeout(Duration::from_secs(30)).unwrap();
    // ... which a damaged record then takes out of use: the next batch starts a second segment
    // without syncing the first (the thread holds it), and waits for its sync.
    damage(&dir, &segment_files(&dir)[0], FIRST_RECORD + RECORD_HEADER);
    assert!(matches!(log.read_next().unwrap(), Next::Skipped(_)));
    let segment = 128 << 10;
    let full = format!("{{\"n\":1,\"pad\":\"{}\"}}\n", "x".repeat(segment)).into_bytes();
    let (ack, mut waiting) = Ack::new();
    log.append(&full, 1, vec![ack]).map_err(|(e, _)| e).unwrap();
    // The second segment is full: the next batch rolls to a third, and the roll's sync of the
    // second fails.
    faults.fail(Op::Sync, 1, EIO);
    let (ack, mut next) = Ack::new();
    log.append(&line(2), 1, vec![ack])
        .map_err(|(e, _)| e)
        .unwrap();
    // Failed by the roll itself (the sync thread is still held), not told after a later sync
    // of the new segment.
    assert_eq!(told(&mut waiting), Told::Failed);
    go.send(()).unwrap();
    assert_eq!(told(&mut next), Told::Delivered);
    assert_eq!(segment_files(&dir).len(), 3);
    // Nothing left the buffer: the failed request's line is read back (its sender sends it
    // again: a repeat, not a loss).
    assert_eq!(record(&log), full);
    assert_eq!(record(&log), line(2));
    let _ = std::fs::remove_dir_all(&dir);
}
