//! Tests of the disk buffer under its queue and delivery thread.
//!
//! Fault injection: the disk buffer over the real files with chosen calls failing ([`Faulty`]),
//! as a full or failing disk would: a write cut short by a full disk leaves nothing behind and
//! counts as a full buffer (`when_full` applies); a half-made segment is removed; a failed
//! sync fails the requests waiting on it and on its segment; a read error is retried and never
//! ends the output, but does not keep it past its deadline either. Also: `max_bytes` counts
//! the record headers, and opening reads nothing of what the buffer holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::disk::storage::{Files, Storage};
use super::disk::{DiskLog, Found, Next};
use super::queue::{Batch, Deadline, Popped, Pushed, Queue, Refused};
use super::sink::WriterSink;
use super::worker;
use crate::ack::{Ack, Outcome as Told};
use crate::config::WhenFull;
use crate::metrics::OutputHealth;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Op {
    Create,
    Append,
    Sync,
    SyncDir,
    Open,
    Read,
}

/// The real files ([`Files`]), with the next calls of an operation failing on demand.
#[derive(Default)]
pub(super) struct Faulty {
    /// Per operation: how many of its next calls pass first, how many then fail, and with
    /// which `errno`.
    failing: Mutex<HashMap<Op, (u64, u64, i32)>>,
    /// Calls made, per operation.
    calls: Mutex<HashMap<Op, u64>>,
    /// When set, the next sync says it started, then waits to be let go.
    hold_sync: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Faulty {
    pub(super) fn fail(&self, op: Op, times: u64, errno: i32) {
        self.fail_after(op, 0, times, errno);
    }

    /// Lets the next `pass` calls of `op` through, then fails `times` of them.
    pub(super) fn fail_after(&self, op: Op, pass: u64, times: u64, errno: i32) {
        lock(&self.failing).insert(op, (pass, times, errno));
    }

    pub(super) fn calls(&self, op: Op) -> u64 {
        lock(&self.calls).get(&op).copied().unwrap_or(0)
    }

    /// Counts a call of `op`; its error if it is to fail.
    fn call(&self, op: Op) -> io::Result<()> {
        *lock(&self.calls).entry(op).or_default() += 1;
        match lock(&self.failing).get_mut(&op) {
            Some((pass, _, _)) if *pass > 0 => {
                *pass -= 1;
                Ok(())
            }
            Some((_, times, errno)) if *times > 0 => {
                *times -= 1;
                Err(io::Error::from_raw_os_error(*errno))
            }
            _ => Ok(()),
        }
    }

    /// Holds the next sync: returns where it says it started, and what lets it go.
    pub(super) fn hold_next_sync(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started, on_start) = mpsc::channel();
        let (go, on_go) = mpsc::channel();
        *lock(&self.hold_sync) = Some((started, on_go));
        (on_start, go)
    }
}

impl Storage for Faulty {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.call(Op::Create)?;
        Files.create(path)
    }

    fn append(&self, file: &File, parts: &[&[u8]]) -> io::Result<()> {
        if let Err(e) = self.call(Op::Append) {
            // Cut short, as by a full disk: the first part and half of the rest are written.
            let all = parts.concat();
            let half = parts[0].len() + (all.len() - parts[0].len()) / 2;
            Files.append(file, &[&all[..half.max(1)]])?;
            return Err(e);
        }
        Files.append(file, parts)
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        Files.truncate(file, len)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        // (Whether it fails is decided as it starts.)
        let result = self.call(Op::Sync);
        let held = lock(&self.hold_sync).take();
        if let Some((started, go)) = held {
            started.send(()).unwrap();
            go.recv().unwrap();
        }
        result?;
        Files.sync(file)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.call(Op::SyncDir)?;
        Files.sync_dir(dir)
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        self.call(Op::Open)?;
        Files.open(path)
    }

    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.call(Op::Read)?;
        Files.read_exact_at(file, buf, offset)
    }

    fn read_onto(&self, file: &File, offset: u64, len: u64, data: &mut Vec<u8>) -> io::Result<()> {
        self.call(Op::Read)?;
        Files.read_onto(file, offset, len, data)
    }
}

const ENOSPC: i32 = libc::ENOSPC;
pub(super) const EIO: i32 = libc::EIO;

pub(super) fn stats() -> OutputHealth {
    crate::metrics::Metrics::new(Default::default()).output("t")
}

pub(super) fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egresswatch-diskq-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(super) fn faulty(dir: &Path) -> (DiskLog, Arc<Faulty>) {
    let storage = Arc::new(Faulty::default());
    let log = DiskLog::open_with(
        "t",
        dir,
        1 << 20,
        stats(),
        Arc::clone(&storage) as Arc<dyn Storage>,
    )
    .unwrap();
    (log, storage)
}

pub(super) fn line(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n}}}\n").into_bytes()
}

pub(super) fn record(log: &DiskLog) -> Vec<u8> {
    match log.read_next().unwrap() {
        Next::Record(r) => r.data,
        Next::Skipped(c) => panic!("skipped {c:?}"),
    }
}

pub(super) fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

/// What became of a request, once told (at most 30 s).
pub(super) fn told(told: &mut tokio::sync::oneshot::Receiver<Told>) -> Told {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match told.try_recv() {
            Ok(outcome) => return outcome,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the request was never told: {e}"),
        }
    }
}

#[test]
fn a_write_cut_short_by_a_full_disk_leaves_nothing_of_it_and_the_next_batch_follows() {
    let dir = dir("short-write");
    let (log, faults) = faulty(&dir);
    log.append(&line(0), 1, Vec::new())
        .map_err(|(e, _)| e)
        .unwrap();
    faults.fail(Op::Append, 1, ENOSPC);
    let (ack, _told) = Ack::new();
    let (e, handed_back) = log.append(&line(1), 1, vec![ack]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(ENOSPC));
    assert_eq!(
        handed_back.len(),
        1,
        "the request's acknowledgement is handed back"
    );
    log.append(&line(2), 1, Vec::new())
        .map_err(|(e, _)| e)
        .unwrap();
    // The half-written record was cut off: the next one follows the first whole.
    assert_eq!(record(&log), line(0));
    assert_eq!(record(&log), line(2));
    drop(log);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!((found.held.records, found.corrupt), (2, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_segment_half_made_on_a_full_disk_is_removed_and_the_next_batch_makes_it_again() {
    let dir = dir("half-made");
    let (log, faults) = faulty(&dir);
    // The folder cannot be synced after the new file's name, then its header is cut short.
    faults.fail(Op::SyncDir, 1, EIO);
    assert!(log.append(&line(0), 1, Vec::new()).is_err());
    assert_eq!(segment_files(&dir), Vec::<String>::new());
    faults.fail(Op::Append, 1, ENOSPC);
    assert!(log.append(&line(1), 1, Vec::new()).is_err());
    assert_eq!(segment_files(&dir), Vec::<String>::new());
    // The disk takes it again: the buffer is not wedged on a name it left behind.
    log.append(&line(2), 1, Vec::new())
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(segment_files(&dir), [format!("{:020}.seg", 0)]);
    assert_eq!(record(&log), line(2));
    drop(log);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!((found.held.records, found.corrupt), (1, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

pub(super) fn batch(n: u64) -> Batch {
    Batch {
        data: line(n).into(),
        lines: 1,
        acks: Vec::new(),
        end: None,
        resent: false,
    }
}

pub(super) fn faulty_queue(dir: &Path, stats: &OutputHealth) -> (Arc<Queue>, Arc<Faulty>) {
    let storage = Arc::new(Faulty::default());
    let log = DiskLog::open_with(
        "t",
        dir,
        1 << 20,
        stats.clone(),
        Arc::clone(&storage) as Arc<dyn Storage>,
    )
    .unwrap();
    (
        Arc::new(Queue::on_disk(log, 1 << 20, stats.clone())),
        storage,
    )
}

pub(super) fn popped(queue: &Queue) -> Batch {
    match queue.pop_timeout(Duration::ZERO) {
        Popped::Batch(b) => b,
        other => panic!("no batch: {other:?}"),
    }
}

#[test]
fn a_disk_that_cannot_take_a_batch_is_a_full_buffer_drop_newest_drops_it() {
    let dir = dir("full-drop");
    let stats = stats();
    let (queue, faults) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    faults.fail(Op::Append, 1, ENOSPC);
    let (ack, _told) = Ack::new();
    let mut first = batch(0);
    first.acks.push(ack);
    let Ok(Pushed::Dropped(dropped)) = queue.push(first, WhenFull::DropNewest, &none) else {
        panic!("not dropped");
    };
    // Handed back whole, its request's acknowledgement with it (the caller counts the drop
    // and tells the request).
    assert_eq!((dropped.data.into_vec(), dropped.acks.len()), (line(0), 1));
    assert!(stats.status().errors >= 1);
    assert!(matches!(
        queue.push(batch(1), WhenFull::DropNewest, &none),
        Ok(Pushed::Queued)
    ));
    assert_eq!(popped(&queue).data, line(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_disk_that_cannot_take_a_batch_is_a_full_buffer_block_waits_until_it_can() {
    let dir = dir("full-block");
    let stats = stats();
    let (queue, faults) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    queue.push(batch(0), WhenFull::Block, &none).unwrap();
    let before = faults.calls(Op::Append);
    faults.fail(Op::Append, 3, ENOSPC);
    let (ack, mut told_1) = Ack::new();
    let mut second = batch(1);
    second.acks.push(ack);
    assert!(matches!(
        queue.push(second, WhenFull::Block, &none),
        Ok(Pushed::Queued)
    ));
    // Tried until the disk took it, the engine waiting meanwhile.
    assert_eq!(faults.calls(Op::Append), before + 4);
    assert!(stats.status().blocked_seconds > 0.0);
    assert!(!stats.status().blocked);
    assert_eq!(told(&mut told_1), Told::Delivered, "told once synced");
    assert_eq!(popped(&queue).data, line(0));
    assert_eq!(popped(&queue).data, line(1));
    // With the deadline passed, the batch is refused (named by the caller) instead.
    faults.fail(Op::Append, u64::MAX, ENOSPC);
    let passed = Deadline::default();
    passed.start();
    assert!(matches!(
        queue.push(batch(2), WhenFull::Block, &passed),
        Err(Refused::Deadline)
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_sync_fails_the_requests_waiting_and_those_written_to_its_segment_after_it() {
    let dir = dir("sync");
    let (log, faults) = faulty(&dir);
    let (mut told_0, mut told_1, mut told_2) = (None, None, None);
    let append = |n: u64, told: &mut Option<_>| {
        let (ack, on) = Ack::new();
        *told = Some(on);
        log.append(&line(n), 1, vec![ack])
            .map_err(|(e, _)| e)
            .unwrap();
    };
    faults.fail(Op::Sync, 1, EIO);
    let (started, go) = faults.hold_next_sync();
    append(0, &mut told_0);
    // The sync thread is in the sync that fails when the next batch is written to the same
    // segment.
    started.recv_timeout(Duration::from_secs(30)).unwrap();
    append(1, &mut told_1);
    go.send(()).unwrap();
    assert_eq!(told(told_0.as_mut().unwrap()), Told::Failed);
    // Its later sync succeeds (Linux reports a failed write-back once) but vouches for
    // nothing: what was lost may be before it.
    assert_eq!(told(told_1.as_mut().unwrap()), Told::Failed);
    assert!(faults.calls(Op::Sync) >= 1);
    // The next batch goes to a new segment, and its sync holds.
    append(2, &mut told_2);
    assert_eq!(told(told_2.as_mut().unwrap()), Told::Delivered);
    assert_eq!(segment_files(&dir).len(), 2);
    // Nothing was dropped from the buffer: the failed requests' lines are delivered (their
    // senders send them again: repeats, not loss).
    for n in 0..3 {
        assert_eq!(record(&log), line(n));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_error_is_tried_again_and_loses_nothing() {
    let dir = dir("read");
    let stats = stats();
    let (queue, faults) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..2 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    faults.fail(Op::Open, 2, libc::EMFILE);
    for _ in 0..2 {
        assert!(matches!(queue.pop_timeout(Duration::ZERO), Popped::Empty));
    }
    faults.fail(Op::Read, 2, EIO);
    for _ in 0..2 {
        assert!(matches!(queue.pop_timeout(Duration::ZERO), Popped::Empty));
    }
    assert_eq!(stats.status().errors, 4);
    assert_eq!(popped(&queue).data, line(0));
    assert_eq!(popped(&queue).data, line(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer the test can read.
#[derive(Clone, Default)]
pub(super) struct Collected(pub(super) Arc<Mutex<Vec<u8>>>);

impl Write for Collected {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs a delivery thread over `queue` into `out`; its outcome arrives on the receiver.
pub(super) fn deliver(
    queue: &Arc<Queue>,
    out: &Collected,
    stats: &OutputHealth,
    deadline: &Deadline,
) -> mpsc::Receiver<worker::Outcome> {
    let sink = Box::new(WriterSink::writer(Box::new(out.clone())));
    let (thread, gate) = worker::spawn(
        "t",
        sink,
        Arc::clone(queue),
        stats.clone(),
        deadline.clone(),
        Arc::default(),
    )
    .unwrap();
    assert!(gate.open(worker::Turn::default()).is_ok());
    let (tell, told) = mpsc::channel();
    std::thread::spawn(move || tell.send(thread.join().unwrap()));
    told
}

#[test]
fn read_errors_never_end_an_output_but_do_not_keep_it_past_its_deadline() {
    let dir = dir("read-worker");
    let stats = stats();
    let (queue, faults) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    faults.fail(Op::Read, 5, EIO);
    for n in 0..3 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    let out = Collected::default();
    let ended = deliver(&queue, &out, &stats, &none);
    let all = [line(0), line(1), line(2)].concat();
    let until = Instant::now() + Duration::from_secs(30);
    while *lock(&out.0) != all && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*lock(&out.0), all, "delivered in order after the errors");
    assert!(faults.calls(Op::Read) > 5);
    queue.close();
    let outcome = ended.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((outcome.undelivered, outcome.error), (0, None));
    drop(queue);

    // A disk that stays unreadable: at the deadline the output ends, and what it could not
    // read stays in the buffer for the next start.
    let dir = self::dir("read-worker-2");
    let (queue, faults) = faulty_queue(&dir, &stats);
    for n in 3..5 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    faults.fail(Op::Read, u64::MAX, EIO);
    queue.close();
    let passed = Deadline::default();
    passed.start();
    let out = Collected::default();
    let outcome = deliver(&queue, &out, &stats, &passed)
        .recv_timeout(Duration::from_secs(30))
        .expect("the output ended at its deadline");
    assert_eq!(outcome.undelivered, 0, "kept, not lost");
    assert_eq!(queue.kept().map(|(lines, _)| lines), Some(2));
    assert!(lock(&out.0).is_empty());
    drop(queue);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats.clone()).unwrap());
    assert_eq!(found.held.lines, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_bytes_counts_each_record_with_its_header_also_for_what_a_start_finds() {
    let dir = dir("bound");
    let thirty = || Batch {
        data: vec![b'x'; 30].into(),
        lines: 1,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    let pushed = |q: &Queue| match q.push(thirty(), WhenFull::DropNewest, &Deadline::default()) {
        Ok(Pushed::Queued) => true,
        Ok(Pushed::Dropped(_)) => false,
        other => panic!("{other:?}"),
    };
    // Records of 30 bytes of lines and a 20-byte header: two fill 100 bytes.
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    let queue = Queue::on_disk(log, 100, stats());
    assert!(pushed(&queue) && pushed(&queue));
    assert!(!pushed(&queue), "a third would hold 150 bytes");
    drop(queue);
    // What a start finds counts the same way.
    let (log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(found.held.record_bytes(), 100);
    let queue = Queue::on_disk(log, 100, stats());
    queue.check_backlog(&Deadline::default()).unwrap();
    assert!(!pushed(&queue));
    // A delivered record makes room for one.
    let Popped::Batch(first) = queue.pop_timeout(Duration::ZERO) else {
        panic!("a record was found");
    };
    queue.settled(&first, 0);
    assert!(pushed(&queue));
    assert!(!pushed(&queue));
    drop(queue);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk buffer in `dir` holding lines 0 to `lines - 1`, one per record, as a run left it.
pub(super) fn left_by_an_earlier_run(dir: &Path, lines: u64) {
    let log = DiskLog::open("t", dir, 1 << 20, stats()).unwrap();
    for n in 0..lines {
        log.append(&line(n), 1, Vec::new())
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[test]
fn opening_a_disk_buffer_reads_only_its_headers_and_what_it_holds_goes_first_once_checked() {
    let dir = dir("lazy");
    left_by_an_earlier_run(&dir, 3);
    let none = Deadline::default();
    let (log, faults) = faulty(&dir);
    // Opening (what happens before the input listens) reads each segment's header only.
    assert_eq!((faults.calls(Op::Open), faults.calls(Op::Read)), (1, 1));
    // Until checked, their bytes count as held: a buffer they fill takes nothing more.
    let full = log.backlog_bytes();
    assert_eq!(full, 3 * (20 + line(0).len() as u64));
    let queue = Queue::on_disk(log, full, stats());
    assert!(matches!(
        queue.push(batch(3), WhenFull::DropNewest, &none),
        Ok(Pushed::Dropped(_))
    ));
    drop(queue);
    let stats = stats();
    let (log, faults) = faulty(&dir);
    let queue = Queue::on_disk(log, 1 << 20, stats.clone());
    // Lines are taken before the check, and go after what the buffer held.
    queue.push(batch(3), WhenFull::Block, &none).unwrap();
    assert_eq!(stats.status().pending_lines, 1);
    assert_eq!(faults.calls(Op::Read), 1);
    queue.check_backlog(&none).unwrap();
    assert!(faults.calls(Op::Read) > 1);
    assert_eq!(stats.status().pending_lines, 4);
    for n in 0..4 {
        let b = popped(&queue);
        assert_eq!(b.data, line(n));
        queue.settled(&b, 0);
    }
    assert_eq!(queue.kept(), Some((0, 0)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An opened disk buffer and what it held, checked.
pub(super) fn checked(log: DiskLog) -> (DiskLog, Found) {
    let found = log.check(&|| false).unwrap();
    (log, found)
}

#[test]
fn a_segment_that_cannot_be_read_at_all_fails_the_start_naming_the_folder() {
    let dir = dir("unreadable");
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    log.append(&line(0), 1, Vec::new())
        .map_err(|(e, _)| e)
        .unwrap();
    drop(log);
    // Not a file: its header cannot be read.
    std::fs::create_dir(dir.join(format!("{:020}.seg", 7))).unwrap();
    let err = DiskLog::open("t", &dir, 1 << 20, stats())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("outputs.t.buffer.path"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_before_the_check_keeps_the_unchecked_backlog_and_counts_its_bytes() {
    let dir = dir("stopped");
    left_by_an_earlier_run(&dir, 3);
    let log = DiskLog::open("t", &dir, 1 << 20, stats()).unwrap();
    let backlog = log.backlog_bytes();
    let queue = Queue::on_disk(log, 1 << 20, stats());
    let passed = Deadline::default();
    passed.start();
    // The stop came first: the check does not read the backlog through, and what the buffer
    // keeps (reported at the end) counts its bytes.
    assert!(queue.check_backlog(&passed).is_err());
    assert_eq!(queue.kept(), Some((0, backlog)));
    drop(queue);
    let (_log, found) = checked(DiskLog::open("t", &dir, 1 << 20, stats()).unwrap());
    assert_eq!(found.held.records, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
