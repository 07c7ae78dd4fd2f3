//! The disk buffer's own tests: replay, damaged records at start and while running, segments.

use super::*;

fn stats() -> OutputHealth {
    crate::metrics::Metrics::new(Default::default()).output("t")
}

fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egresswatch-disk-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn batch(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n}}}\n").into_bytes()
}

fn append(log: &DiskLog, data: &[u8]) {
    log.append(data, 1, Vec::new()).map_err(|(e, _)| e).unwrap();
}

fn record(log: &DiskLog) -> Record {
    match log.read_next().unwrap() {
        Next::Record(r) => r,
        Next::Skipped(c) => panic!("skipped {c:?}"),
    }
}

fn held(found: &Found) -> (u64, u64) {
    (found.held.records, found.corrupt)
}

#[test]
fn delivered_records_are_not_replayed_and_the_rest_are_in_order_after_a_reopen() {
    let dir = dir("replay");
    let (log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (0, 0));
    for n in 0..5 {
        append(&log, &batch(n));
    }
    let first = record(&log);
    assert_eq!(first.data, batch(0));
    log.delivered(first.end).unwrap();
    // Read, not delivered.
    assert_eq!(record(&log).data, batch(1));
    // A second user of the folder is refused while it is open.
    let err = DiskLog::open("u", &dir, 1 << 20, stats()).err().unwrap();
    assert!(err.to_string().contains("outputs.u.buffer.path"), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(log);

    let (log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (4, 0));
    for n in 1..5 {
        let r = record(&log);
        assert_eq!(r.data, batch(n));
        log.delivered(r.end).unwrap();
    }
    drop(log);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_last_record_is_skipped_and_counted_and_those_before_it_are_kept() {
    let dir = dir("torn");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    for n in 0..3 {
        append(&log, &batch(n));
    }
    drop(log);
    let segment = segment_path(&dir, 0);
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(len - 3).unwrap();
    let (log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (2, 1));
    assert_eq!(record(&log).data, batch(0));
    assert_eq!(record(&log).data, batch(1));
    // What is appended now follows, in a new segment.
    append(&log, &batch(9));
    assert_eq!(record(&log).data, batch(9));
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_record_mid_segment_is_skipped_with_what_follows_and_nothing_is_cut() {
    let dir = dir("mid");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    for n in 0..3 {
        append(&log, &batch(n));
    }
    drop(log);
    // The second record's data: after the magic, record 0 (header + data), its header.
    let segment = segment_path(&dir, 0);
    let at = FIRST_RECORD + RECORD_HEADER + batch(0).len() as u64 + RECORD_HEADER;
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(b"X", at).unwrap();
    let size = std::fs::metadata(&segment).unwrap().len();
    let (log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (1, 1));
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        size,
        "nothing cut"
    );
    assert_eq!(record(&log).data, batch(0));
    append(&log, &batch(7));
    assert_eq!(record(&log).data, batch(7));
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_damaged_while_running_is_skipped_with_the_rest_of_its_segment_and_counted() {
    let dir = dir("running");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    for n in 0..3 {
        append(&log, &batch(n));
    }
    assert_eq!(record(&log).data, batch(0));
    let segment = segment_path(&dir, 0);
    let at = FIRST_RECORD + RECORD_HEADER + batch(0).len() as u64 + RECORD_HEADER;
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(b"X", at).unwrap();
    let Next::Skipped(skipped) = log.read_next().unwrap() else {
        panic!("the damaged record was read");
    };
    assert_eq!(
        skipped,
        Counts {
            records: 2,
            lines: 2,
            bytes: 2 * batch(1).len() as u64
        }
    );
    // The segment is not written to again: what follows is read.
    append(&log, &batch(5));
    assert_eq!(record(&log).data, batch(5));
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn segments_roll_over_and_delivered_ones_are_deleted_and_a_start_writes_none() {
    let dir = dir("segments");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    let segments = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    assert_eq!(segments(), 0, "made on the first append");
    let big = vec![b'x'; 130 << 10];
    for _ in 0..4 {
        append(&log, &big);
    }
    // 128 KiB segments (an eighth of 1 MiB): one 130 KiB record each.
    assert_eq!(segments(), 4);
    for _ in 0..4 {
        let r = record(&log);
        log.delivered(r.end).unwrap();
    }
    // Only the one the cursor is in is left.
    assert_eq!(segments(), 1);
    drop(log);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(held(&found), (0, 0));
    assert_eq!(segments(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_segment_name_taken_by_something_else_is_passed_over() {
    let dir = dir("taken");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    std::fs::create_dir(segment_path(&dir, 0)).unwrap();
    assert!(log.append(&batch(0), 1, Vec::new()).is_err());
    append(&log, &batch(1));
    assert_eq!(record(&log).data, batch(1));
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An opened disk buffer and what it held, checked.
fn checked(log: DiskLog) -> (DiskLog, Found) {
    let found = log.check(&|| false).unwrap();
    (log, found)
}
