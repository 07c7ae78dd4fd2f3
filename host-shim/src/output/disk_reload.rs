//! Tests of a reload that keeps an output's disk buffer: the queue and its files stay, the
//! delivery thread is replaced, and the new one reads again from the cursor what the old one
//! had read and its peer may not have (at least once, in order), also when a second reload
//! replaces the new one before it ran.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::disk_queue::{batch, deliver, dir, faulty_queue, line, lock, popped, stats, Collected};
use super::queue::{Deadline, Popped};
use super::sink::{Sink, SinkError, WriterSink};
use super::worker::{self, Turn};
use crate::config::WhenFull;

#[test]
fn a_rewind_reads_again_from_the_cursor_what_was_read_and_not_confirmed_and_counts_it_again() {
    let dir = dir("rewind");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..5 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    let record = 20 + line(0).len() as u64;
    // The old thread: 0 delivered and acknowledged, 1 delivered but its line not acknowledged
    // by the peer yet, 2 in hand.
    let first = popped(&queue);
    queue.settled(&first, 0);
    let unacknowledged = popped(&queue);
    queue.settled(&unacknowledged, 1);
    let _in_hand = popped(&queue);
    assert_eq!(
        queue.kept(),
        Some((4, 3 * record)),
        "1 is off the bytes once settled"
    );
    // It ended; the new thread reads on from the cursor: 1 and 2 again, then 3 and 4.
    queue.rewind();
    assert_eq!(queue.kept(), Some((4, 4 * record)));
    assert_eq!(stats.status().pending_lines, 4);
    for n in 1..5 {
        let b = popped(&queue);
        assert_eq!(b.data, line(n), "in order from the cursor");
        // 1 was counted in events_out when delivered: counted as resent now.
        assert_eq!(b.resent, n == 1, "{n}");
        queue.settled(&b, 0);
    }
    assert!(matches!(queue.pop_timeout(Duration::ZERO), Popped::Empty));
    assert_eq!(queue.kept(), Some((0, 0)));
    assert_eq!(stats.status().pending_lines, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lines_counted_before_a_rewind_still_count_as_resent_after_a_second_one() {
    let dir = dir("rewind-twice");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..3 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    // The old thread delivered 0 and 1 (counted), the peer acknowledged neither.
    for outstanding in [1, 2] {
        let b = popped(&queue);
        queue.settled(&b, outstanding);
    }
    queue.rewind();
    // Its replacement is replaced before it read anything, and the next one after it read 0
    // again, in hand: 0 and 1 were still counted once, by the first thread.
    queue.rewind();
    assert_eq!(popped(&queue).data, line(0));
    queue.rewind();
    for n in 0..3 {
        let b = popped(&queue);
        assert_eq!(b.data, line(n));
        assert_eq!(b.resent, n < 2, "{n}");
        queue.settled(&b, 0);
    }
    assert_eq!(queue.kept(), Some((0, 0)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sink whose peer takes nothing: each delivery says it started, waits until let go, then
/// fails.
struct Stuck {
    started: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

impl Sink for Stuck {
    fn deliver(&mut self, _data: &[u8], _deadline: &Deadline) -> Result<(), SinkError> {
        let _ = self.started.send(());
        let _ = self.go.recv();
        Err(SinkError::Retry("the peer took nothing".into()))
    }

    fn describe(&self) -> String {
        "stuck".into()
    }
}

/// Starts a delivery thread over `queue` through `sink`, which delivers once `after` (the
/// thread of the output it replaces) has ended.
fn start(
    sink: Box<dyn Sink>,
    queue: &Arc<super::queue::Queue>,
    deadline: &Deadline,
    after: Option<std::thread::JoinHandle<worker::Outcome>>,
) -> std::thread::JoinHandle<worker::Outcome> {
    let stats = stats();
    let (thread, gate) = worker::spawn(
        "t",
        sink,
        Arc::clone(queue),
        stats,
        deadline.clone(),
        Arc::default(),
    )
    .unwrap();
    let turn = Turn {
        after: after.into_iter().collect(),
        wait_for: Vec::new(),
    };
    assert!(gate.open(turn).is_ok());
    thread
}

/// A sink writing into `out`.
fn into(out: &Collected) -> Box<dyn Sink> {
    Box::new(WriterSink::writer(Box::new(out.clone())))
}

#[test]
fn two_reloads_during_one_hand_over_lose_nothing_of_a_disk_buffer() {
    let dir = dir("two-reloads");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..4 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    // The running output's peer takes nothing: it holds line 0 in hand.
    let (started, on_start) = mpsc::channel();
    let (go, on_go) = mpsc::channel();
    let old_deadline = Deadline::default();
    let stuck = Box::new(Stuck { started, go: on_go });
    let old = start(stuck, &queue, &old_deadline, None);
    on_start.recv_timeout(Duration::from_secs(30)).unwrap();
    // A reload gives the output a new peer; a second replaces that before the old one ends.
    old_deadline.set_replaced();
    let (first, second) = (Collected::default(), Collected::default());
    let first_deadline = Deadline::default();
    let first_thread = start(into(&first), &queue, &first_deadline, Some(old));
    first_deadline.set_replaced();
    let second_thread = start(into(&second), &queue, &none, Some(first_thread));
    queue.push(batch(4), WhenFull::Block, &none).unwrap();
    // The old output's delivery fails: it stops and leaves its batch on disk.
    go.send(()).unwrap();
    queue.close();
    let outcome = second_thread.join().unwrap();
    assert_eq!((outcome.undelivered, outcome.error), (0, None));
    assert!(lock(&first.0).is_empty(), "replaced before it ran");
    let all: Vec<u8> = (0..5).flat_map(line).collect();
    assert_eq!(*lock(&second.0), all, "every line once, in order");
    assert_eq!(queue.kept(), Some((0, 0)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_keeping_the_disk_buffer_delivers_what_the_old_thread_delivered_no_more_than_once() {
    // A peer that took everything (a file): nothing is read again after the switch.
    let dir = dir("switch-live");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..3 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    let (old_out, new_out) = (Collected::default(), Collected::default());
    let old_deadline = Deadline::default();
    let old = deliver(&queue, &old_out, &stats, &old_deadline);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while lock(&old_out.0).len() < 3 * line(0).len() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    old_deadline.set_replaced();
    let old = old.recv_timeout(Duration::from_secs(30)).expect("it stops");
    assert_eq!(old.undelivered, 0);
    queue.push(batch(3), WhenFull::Block, &none).unwrap();
    // (Its thread has ended: what it reports is given back as another thread's.)
    let ended = std::thread::spawn(worker::Outcome::default);
    let thread = start(into(&new_out), &queue, &none, Some(ended));
    queue.close();
    assert_eq!(thread.join().unwrap().undelivered, 0);
    let before: Vec<u8> = (0..3).flat_map(line).collect();
    assert_eq!(*lock(&old_out.0), before);
    assert_eq!(*lock(&new_out.0), line(3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer into `out` that takes `room` bytes, then, on its next write, says it started, waits
/// until let go, and fails (the disk under a file filled up).
struct Halting {
    out: Collected,
    room: usize,
    started: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

impl std::io::Write for Halting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            let _ = self.started.send(());
            let _ = self.go.recv();
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        lock(&self.out.0).extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts an output over `queue` writing to `file`, which has room for line 0 and 3 bytes of
/// line 1: once it has written those and fails, its thread waits until the returned sender
/// lets it go on (failing).
fn tearing_line_1(
    file: &Collected,
    queue: &Arc<super::queue::Queue>,
    deadline: &Deadline,
) -> (std::thread::JoinHandle<worker::Outcome>, mpsc::Sender<()>) {
    let (started, on_start) = mpsc::channel();
    let (go, on_go) = mpsc::channel();
    let halting = Halting {
        out: file.clone(),
        room: line(0).len() + 3,
        started,
        go: on_go,
    };
    let sink = Box::new(WriterSink::writer(Box::new(halting)));
    let old = start(sink, queue, deadline, None);
    on_start.recv_timeout(Duration::from_secs(30)).unwrap();
    (old, go)
}

#[test]
fn a_file_output_replaced_partway_through_a_disk_batch_writes_nothing_twice() {
    let dir = dir("switch-torn");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    let three: Vec<u8> = (0..3).flat_map(line).collect();
    queue
        .push(
            super::queue::Batch {
                data: three.clone().into(),
                lines: 3,
                acks: Vec::new(),
                end: None,
                resent: false,
            },
            WhenFull::Block,
            &none,
        )
        .unwrap();
    // The old output writes line 0 and part of line 1 of the batch, then its file fails.
    let file = Collected::default();
    let old_deadline = Deadline::default();
    let (old, go) = tearing_line_1(&file, &queue, &old_deadline);
    // Replaced by an output to the same file, which reads the batch again from the cursor and
    // writes only what was not written.
    old_deadline.set_replaced();
    let new = start(into(&file), &queue, &none, Some(old));
    go.send(()).unwrap();
    queue.push(batch(3), WhenFull::Block, &none).unwrap();
    queue.close();
    let outcome = new.join().unwrap();
    assert_eq!((outcome.undelivered, outcome.error), (0, None));
    let all: Vec<u8> = (0..4).flat_map(line).collect();
    assert_eq!(
        String::from_utf8_lossy(&lock(&file.0)),
        String::from_utf8_lossy(&all)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_record_found_damaged_when_read_again_is_not_resumed_into_the_next() {
    let dir = dir("torn-damaged");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    // A record larger than a segment (128 KiB here): the next one goes to a new segment, so
    // that the damage found in the first does not end what is read of it.
    let lines = 15_000;
    let first: Vec<u8> = (0..lines).flat_map(line).collect();
    let torn = super::queue::Batch {
        data: first.clone().into(),
        lines,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    queue.push(torn, WhenFull::Block, &none).unwrap();
    queue.push(batch(lines), WhenFull::Block, &none).unwrap();
    assert_eq!(super::disk_queue::segment_files(&dir).len(), 2);
    // The old output writes line 0 and part of line 1 of the first record, then its file fails.
    let file = Collected::default();
    let old_deadline = Deadline::default();
    let (old, go) = tearing_line_1(&file, &queue, &old_deadline);
    // That record is damaged on disk (its last byte) before it is read again.
    let segment = dir.join(&super::disk_queue::segment_files(&dir)[0]);
    let mut bytes = std::fs::read(&segment).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    std::fs::write(&segment, bytes).unwrap();
    // Replaced by an output to the same file: the damaged record is skipped, and the next one
    // is written whole, not from where the old output stopped in the other.
    old_deadline.set_replaced();
    let new = start(into(&file), &queue, &none, Some(old));
    go.send(()).unwrap();
    queue.close();
    let outcome = new.join().unwrap();
    assert_eq!((outcome.undelivered, outcome.error), (0, None));
    let expected = [&line(0)[..], &line(1)[..3], &line(lines)].concat();
    assert_eq!(
        String::from_utf8_lossy(&lock(&file.0)),
        String::from_utf8_lossy(&expected)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_line_is_finished_by_the_next_output_when_its_first_replacement_is_replaced_at_once() {
    let dir = dir("torn-passed-on");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    let three: Vec<u8> = (0..3).flat_map(line).collect();
    let torn = super::queue::Batch {
        data: three.clone().into(),
        lines: 3,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    queue.push(torn, WhenFull::Block, &none).unwrap();
    let file = Collected::default();
    let old_deadline = Deadline::default();
    let (old, go) = tearing_line_1(&file, &queue, &old_deadline);
    // A reload replaces it with an output to the same file, and the next one replaces that
    // before it delivered anything.
    old_deadline.set_replaced();
    let mid_deadline = Deadline::default();
    mid_deadline.set_replaced();
    let mid = start(into(&file), &queue, &mid_deadline, Some(old));
    let last = start(into(&file), &queue, &none, Some(mid));
    go.send(()).unwrap();
    queue.close();
    let outcome = last.join().unwrap();
    assert_eq!((outcome.undelivered, outcome.error), (0, None));
    assert_eq!(
        String::from_utf8_lossy(&lock(&file.0)),
        String::from_utf8_lossy(&three),
        "line 1 finished, nothing written twice"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket-like sink whose peer acknowledges nothing: every line it delivered stays
/// outstanding. Once its output is replaced, its check of the peer fails (`fails`) or keeps
/// making a little progress without ever ending (otherwise). Says whether its unconfirmed tail
/// was taken (a TCP connection reset).
struct Unacknowledged {
    written: u64,
    fails: bool,
    taken: Arc<std::sync::atomic::AtomicBool>,
}

impl Sink for Unacknowledged {
    fn deliver(&mut self, data: &[u8], _deadline: &Deadline) -> Result<(), SinkError> {
        self.written += memchr::memchr_iter(b'\n', data).count() as u64;
        Ok(())
    }

    fn settle(&mut self, deadline: &Deadline) -> Result<u64, SinkError> {
        if !deadline.replaced() {
            return Ok(self.written);
        }
        if self.fails {
            return Err(SinkError::Retry("the peer went away".into()));
        }
        // (A slow peer: one more byte acknowledged each time, never all.)
        self.written += 1;
        Ok(self.written)
    }

    fn take_unconfirmed(&mut self) -> Vec<u8> {
        self.taken.store(true, std::sync::atomic::Ordering::Relaxed);
        Vec::new()
    }

    fn outstanding_lines(&self) -> u64 {
        self.written
    }

    fn describe(&self) -> String {
        "unacknowledged".into()
    }
}

/// Delivers line 0 through an [`Unacknowledged`] sink, replaces the output (by one writing to
/// the same peer when `same_target`), and returns whether the sink's tail was taken once its
/// thread ended.
fn replaced_unacknowledged(test: &str, fails: bool, same_target: bool) -> bool {
    let dir = dir(test);
    let (queue, _) = faulty_queue(&dir, &stats());
    queue
        .push(batch(0), WhenFull::Block, &Deadline::default())
        .unwrap();
    let taken = Arc::default();
    let sink = Unacknowledged {
        written: 0,
        fails,
        taken: Arc::clone(&taken),
    };
    let deadline = Deadline::default();
    let old = start(Box::new(sink), &queue, &deadline, None);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while queue.kept() != Some((1, 0)) {
        assert!(std::time::Instant::now() < until, "never delivered");
        std::thread::sleep(Duration::from_millis(5));
    }
    if same_target {
        deadline.set_same_target();
    }
    deadline.set_replaced();
    // Bounded: a peer that keeps acknowledging a little does not hold the switch.
    let (tell, told) = mpsc::channel();
    std::thread::spawn(move || tell.send(old.join().unwrap()));
    let outcome = told
        .recv_timeout(Duration::from_secs(30))
        .expect("the old output stops");
    assert_eq!(outcome.undelivered, 0);
    assert_eq!(queue.kept(), Some((1, 0)), "line 0 stays, unconfirmed");
    let _ = std::fs::remove_dir_all(&dir);
    taken.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn an_old_connection_to_the_same_peer_is_reset_and_its_wait_for_acknowledgements_is_bounded() {
    // The same peer: its old connection must not deliver after the new one.
    assert!(replaced_unacknowledged("same-peer", true, true));
    // Another peer: closed, not reset (what it acknowledged stays readable).
    assert!(!replaced_unacknowledged("other-peer", true, false));
    // A slow peer that keeps acknowledging a little: the wait ends after STALL_GRACE.
    assert!(replaced_unacknowledged("slow-peer", false, true));
}

/// An output replaced while idle (waiting for a batch) wakes to the batch `add` puts in its
/// kept disk queue: it leaves the batch to its replacement, which delivers it.
fn replaced_while_idle_leaves_the_batch(test: &str, add: impl FnOnce(&super::queue::Queue)) {
    let dir = dir(test);
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let (old_out, new_out) = (Collected::default(), Collected::default());
    let deadline = Deadline::default();
    let old = start(into(&old_out), &queue, &deadline, None);
    // (Idle, waiting for a batch.)
    std::thread::sleep(Duration::from_millis(50));
    deadline.set_replaced();
    add(&queue);
    let none = Deadline::default();
    let new = start(into(&new_out), &queue, &none, Some(old));
    queue.close();
    assert_eq!(new.join().unwrap().undelivered, 0);
    assert!(
        lock(&old_out.0).is_empty(),
        "the old output took a new line"
    );
    assert_eq!(*lock(&new_out.0), line(0), "the batch lost");
    assert_eq!(stats.status().pending_lines, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_output_replaced_while_it_waited_for_a_batch_leaves_it_to_its_replacement() {
    replaced_while_idle_leaves_the_batch("idle-replaced", |queue| {
        let none = Deadline::default();
        queue.push(batch(0), WhenFull::Block, &none).unwrap();
    });
}

#[test]
fn a_memory_batch_a_replaced_output_took_from_its_disk_queue_goes_to_its_replacement() {
    // What a removed output left at the same target is put in the kept disk queue as batches
    // held in memory.
    replaced_while_idle_leaves_the_batch("idle-replaced-memory", |queue| queue.put_back(batch(0)));
}

#[test]
fn a_line_torn_in_a_file_is_finished_there_by_an_output_two_reloads_later() {
    let dir = dir("torn-a-b-a");
    let stats = stats();
    let (queue, _) = faulty_queue(&dir, &stats);
    let none = Deadline::default();
    for n in 0..2 {
        queue.push(batch(n), WhenFull::Block, &none).unwrap();
    }
    // The old output tears line 0 in file A (inode 7)...
    let (a, b) = (Collected::default(), Collected::default());
    let (started, on_start) = mpsc::channel();
    let (go, on_go) = mpsc::channel();
    let halting = Halting {
        out: a.clone(),
        room: 3,
        started,
        go: on_go,
    };
    let old_deadline = Deadline::default();
    let sink = Box::new(WriterSink::retried(Box::new(halting), 7));
    let old = start(sink, &queue, &old_deadline, None);
    on_start.recv_timeout(Duration::from_secs(30)).unwrap();
    // ... a reload moves it to file B (inode 8), the next back to A before B wrote anything.
    old_deadline.set_replaced();
    let b_deadline = Deadline::default();
    let to_b = WriterSink::retried(Box::new(b.clone()), 8);
    let first = start(Box::new(to_b), &queue, &b_deadline, Some(old));
    b_deadline.set_replaced();
    let to_a = WriterSink::retried(Box::new(a.clone()), 7);
    let second = start(Box::new(to_a), &queue, &none, Some(first));
    go.send(()).unwrap();
    queue.close();
    assert_eq!(second.join().unwrap().undelivered, 0);
    assert!(lock(&b.0).is_empty());
    let all: Vec<u8> = (0..2).flat_map(line).collect();
    assert_eq!(
        String::from_utf8_lossy(&lock(&a.0)),
        String::from_utf8_lossy(&all),
        "line 0 finished, not written again after its beginning"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
