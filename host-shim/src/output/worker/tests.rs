//! Tests of the delivery thread: a file output replaced partway through a line (the same file,
//! or one renamed since), and a retry's wait ended by a reload.

use super::*;
use crate::config::WhenFull;
use crate::output::queue::Segments;
use crate::output::sink::WriterSink;
use std::io::Write;

/// A file on a disk that has room for `room` bytes (shared, as one file is), then fails.
struct SmallDisk {
    file: Arc<Mutex<Vec<u8>>>,
    room: usize,
}

impl Write for SmallDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.file.lock().unwrap();
        let n = buf.len().min(self.room.saturating_sub(file.len()));
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        file.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// As a file's `writev`: across the pieces, as far as there is room.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut written = 0;
        for buf in bufs {
            match self.write(buf) {
                Ok(n) => written += n,
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink writing into `file`, which has the inode `inode`.
fn file_sink(file: &Arc<Mutex<Vec<u8>>>, room: usize, inode: u64) -> Box<dyn Sink> {
    let writer = SmallDisk {
        file: Arc::clone(file),
        room,
    };
    // (A file's write errors are retried.)
    Box::new(WriterSink::retried(Box::new(writer), inode))
}

/// Starts a delivery thread and lets it go at once, after `after` (joined in order).
fn start(
    sink: Box<dyn Sink>,
    queue: &Arc<Queue>,
    stats: &OutputHealth,
    after: impl IntoIterator<Item = JoinHandle<Outcome>>,
) -> JoinHandle<Outcome> {
    let ended = Arc::default();
    let none = Deadline::default();
    let (thread, gate) = spawn("t", sink, Arc::clone(queue), stats.clone(), none, ended).unwrap();
    let turn = Turn {
        after: after.into_iter().collect(),
        wait_for: Vec::new(),
    };
    assert!(gate.open(turn).is_ok());
    thread
}

#[test]
fn a_file_output_replaced_partway_through_a_line_leaves_it_whole_and_writes_nothing_twice() {
    // Batches from index 0 of their buffers, and batches that begin inside them (a reader's
    // blocks taken whole), the bytes before written by no output.
    for front in [0, 100] {
        replaced_partway_through_a_line(|data| {
            crate::line_buf::LineBuf::at([&b"x\n".repeat(front / 2), data].concat(), front).into()
        });
    }
    // A batch in pieces (a reader's block shared, lines written between its runs), cut
    // partway through a shared piece: its first line written into the batch, the rest shared.
    replaced_partway_through_a_line(|data| {
        let first = memchr::memchr(b'\n', data).map_or(data.len(), |nl| nl + 1);
        let block = Arc::new(crate::line_buf::LineBuf::at(
            [&b"skipped\n"[..], &data[first..]].concat(),
            8,
        ));
        let mut pieces = Segments::from(data[..first].to_vec());
        pieces.push_shared(&block, 0..block.len());
        pieces
    });
}

/// A file output fails partway through a line of a batch whose bytes `shape` lays out, and a
/// reload replaces it.
fn replaced_partway_through_a_line(shape: impl Fn(&[u8]) -> Segments) {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let file = Arc::new(Mutex::new(Vec::new()));
    let none = Deadline::default();
    let old_queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    let batch = |data: &[u8]| Batch {
        data: shape(data),
        lines: memchr::memchr_iter(b'\n', data).count() as u64,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    old_queue
        .push(batch(b"one\ntwo\nthree\n"), WhenFull::Block, &none)
        .unwrap();
    // The disk fills up 6 bytes in, partway through `two`: the output retries.
    let old = start(file_sink(&file, 6, 7), &old_queue, &stats, None);
    let waited = std::time::Instant::now();
    while file.lock().unwrap().len() < 6 {
        assert!(waited.elapsed() < Duration::from_secs(30), "never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A reload replaces it with an output to the same file (room made meanwhile).
    assert!(old_queue.retire().is_empty(), "the batch is in hand");
    let new_queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    new_queue
        .push(batch(b"four\n"), WhenFull::Block, &none)
        .unwrap();
    new_queue.close();
    let new = start(
        file_sink(&file, usize::MAX, 7),
        &new_queue,
        &stats,
        Some(old),
    );
    let outcome = new.join().unwrap();
    assert_eq!(outcome.undelivered, 0, "{:?}", outcome.error);
    assert_eq!(
        String::from_utf8_lossy(&file.lock().unwrap()),
        "one\ntwo\nthree\nfour\n"
    );
    assert_eq!(stats.status().delivered, 4);
}

/// Starts a file output (its file has room for `room` bytes) delivering `data`, waits until it
/// has filled its file, and retires its queue, as a reload removing it and adding an output it
/// hands over to does. Returns its thread.
fn tearing(
    file: &Arc<Mutex<Vec<u8>>>,
    room: usize,
    inode: u64,
    data: &[u8],
    stats: &OutputHealth,
) -> JoinHandle<Outcome> {
    let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    let batch = Batch {
        data: data.to_vec().into(),
        lines: memchr::memchr_iter(b'\n', data).count() as u64,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    queue
        .push(batch, WhenFull::Block, &Deadline::default())
        .unwrap();
    let thread = start(file_sink(file, room, inode), &queue, stats, None);
    let waited = std::time::Instant::now();
    while file.lock().unwrap().len() < room {
        assert!(waited.elapsed() < Duration::from_secs(30), "never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(queue.retire().is_empty(), "the batch is in hand");
    thread
}

#[test]
fn a_line_the_second_of_two_replaced_outputs_tore_in_the_new_file_is_finished_first() {
    // The torn line alone in what the second hands over, and followed by another.
    for rest in ["", "b3\n"] {
        second_of_two_tore_in_the_new_file(rest);
    }
}

/// Two outputs, each tearing a line in its own file (a full disk), are removed by a reload;
/// the next adds one with the first's name writing to the second's file: it replaces both. The
/// second's batch has `rest` after its torn line.
fn second_of_two_tore_in_the_new_file(rest: &str) {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let (first, second) = (Arc::default(), Arc::default());
    let a = tearing(&first, 4, 7, b"a1\na2\n", &stats);
    let b = tearing(&second, 4, 8, format!("b1\nb2\n{rest}").as_bytes(), &stats);
    let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    queue.close();
    let sink = file_sink(&second, usize::MAX, 8);
    let outcome = start(sink, &queue, &stats, [a, b]).join().unwrap();
    assert_eq!(outcome.undelivered, 0, "{:?}", outcome.error);
    // The second file ends with `b2`'s beginning: that line is finished before anything else
    // goes there. (`a2`'s beginning is left in the first file; it is written whole.)
    assert_eq!(&*first.lock().unwrap(), b"a1\na");
    assert_eq!(
        String::from_utf8_lossy(&second.lock().unwrap()),
        format!("b1\nb2\na2\n{rest}")
    );
    assert_eq!(stats.status().delivered, 4 + rest.lines().count() as u64);
}

#[test]
fn a_torn_line_carried_by_an_output_that_hands_nothing_over_is_not_resumed_in_anothers_batch() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    // The first carries a line torn in file 7 (it wrote elsewhere since; that line waits in a
    // queue, not handed over); the second hands over a batch it tore nothing in.
    let carrier = Outcome {
        torn: Some(Box::new(Torn {
            path: "f".into(),
            file: "1:7".into(),
            written: 1,
            batch: None,
        })),
        ..Outcome::default()
    };
    let second = Outcome {
        handed_over: vec![Batch {
            data: b"x1\n".to_vec().into(),
            lines: 1,
            acks: Vec::new(),
            end: None,
            resent: false,
        }],
        ..Outcome::default()
    };
    let after = [carrier, second].map(|outcome| std::thread::spawn(move || outcome));
    let file = Arc::default();
    let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    queue.close();
    let outcome = start(file_sink(&file, usize::MAX, 7), &queue, &stats, after);
    assert_eq!(outcome.join().unwrap().undelivered, 0);
    assert_eq!(String::from_utf8_lossy(&file.lock().unwrap()), "x1\n");
}

#[test]
fn a_torn_line_carried_to_a_queue_with_other_batches_before_it_is_not_resumed_in_those() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let none = Deadline::default();
    let batch = |data: &[u8]| Batch {
        data: data.to_vec().into(),
        lines: 1,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    // The carried line's batch waits in the new queue behind what another output it replaces
    // had queued (`apply` puts those first).
    let (first, torn) = (batch(b"z1\n"), batch(b"x1\n"));
    let carried = Outcome {
        torn: Some(Box::new(Torn {
            path: "f".into(),
            file: "1:7".into(),
            written: 1,
            batch: Some(InBatch::of(&torn)),
        })),
        ..Outcome::default()
    };
    let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    for b in [first, torn] {
        queue.push(b, WhenFull::Block, &none).unwrap();
    }
    queue.close();
    let after = [Outcome::default(), carried].map(|outcome| std::thread::spawn(move || outcome));
    let file = Arc::default();
    let outcome = start(file_sink(&file, usize::MAX, 7), &queue, &stats, after);
    assert_eq!(outcome.join().unwrap().undelivered, 0);
    assert_eq!(String::from_utf8_lossy(&file.lock().unwrap()), "z1\nx1\n");
}

#[test]
fn what_an_output_took_over_after_a_second_reload_retired_its_queue_all_goes_to_the_next() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let files: [Arc<Mutex<Vec<u8>>>; 4] = Default::default();
    // Two outputs fail partway through their batches; a reload replaces both with one (to a
    // third file, on a full disk too)...
    let a = tearing(&files[0], 4, 7, b"a1\na2\n", &stats);
    let b = tearing(&files[1], 4, 8, b"b1\nb2\n", &stats);
    // ... and the next reload replaces that one before it took their batches over: its queue
    // is retired first, then it puts them in it.
    let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    assert!(queue.retire().is_empty());
    let replaced = start(file_sink(&files[2], 0, 9), &queue, &stats, [a, b]);
    let last = Arc::new(Queue::new(1 << 20, stats.clone()));
    last.close();
    let sink = file_sink(&files[3], usize::MAX, 10);
    let outcome = start(sink, &last, &stats, [replaced]).join().unwrap();
    assert_eq!(outcome.undelivered, 0, "{:?}", outcome.error);
    assert_eq!(
        String::from_utf8_lossy(&files[3].lock().unwrap()),
        "a2\nb2\n",
        "both batches, in order"
    );
    assert_eq!(stats.status().delivered, 4);
}

#[test]
fn a_retry_wait_ends_once_a_reload_replaces_the_output() {
    let deadline = Deadline::default();
    let sleeping = deadline.clone();
    let (woke, woken) = mpsc::channel();
    std::thread::spawn(move || {
        // Far longer than any test: only the reload can end it. (`false`: not replaced
        // when the worker last looked at its queue.)
        sleep_until(Instant::now() + Duration::from_secs(3600), &sleeping, false);
        let _ = woke.send(());
    });
    deadline.set_replaced();
    let ended = woken.recv_timeout(Duration::from_secs(60));
    assert!(ended.is_ok(), "the retry's wait went on after the reload");
}

#[test]
fn a_line_torn_in_a_file_since_renamed_is_written_whole_to_the_new_file_at_its_path() {
    let stats = crate::metrics::Metrics::new(Default::default()).output("t");
    let (renamed, new_file) = (Arc::default(), Arc::default());
    let none = Deadline::default();
    let old_queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    let batch = Batch {
        data: b"one\ntwo\nthree\n".to_vec().into(),
        lines: 3,
        acks: Vec::new(),
        end: None,
        resent: false,
    };
    old_queue.push(batch, WhenFull::Block, &none).unwrap();
    let old = start(file_sink(&renamed, 6, 7), &old_queue, &stats, None);
    let waited = std::time::Instant::now();
    while renamed.lock().unwrap().len() < 6 {
        assert!(waited.elapsed() < Duration::from_secs(30), "never wrote");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its file was renamed (log rotation): the replacement opens a new file at the same
    // path, another inode.
    assert!(old_queue.retire().is_empty(), "the batch is in hand");
    let new_queue = Arc::new(Queue::new(1 << 20, stats.clone()));
    new_queue.close();
    let sink = file_sink(&new_file, usize::MAX, 8);
    let outcome = start(sink, &new_queue, &stats, Some(old)).join().unwrap();
    assert_eq!(outcome.undelivered, 0, "{:?}", outcome.error);
    assert_eq!(&*renamed.lock().unwrap(), b"one\ntw");
    assert_eq!(
        String::from_utf8_lossy(&new_file.lock().unwrap()),
        "two\nthree\n"
    );
}

/// A sink that records, at each attempt, how many pieces its batch was in and whether the
/// shared block was still held; its first attempt fails (retried).
struct Recording {
    pieces: bool,
    block: std::sync::Weak<crate::line_buf::LineBuf>,
    seen: Arc<Mutex<Vec<(usize, usize)>>>,
    failed: bool,
}

impl Sink for Recording {
    fn deliver(&mut self, data: &[u8], deadline: &Deadline) -> Result<(), SinkError> {
        self.deliver_segments(&Segments::from(data.to_vec()), deadline)
    }

    fn takes_pieces(&self) -> bool {
        self.pieces
    }

    fn deliver_segments(&mut self, data: &Segments, _: &Deadline) -> Result<(), SinkError> {
        let held = self.block.strong_count();
        self.seen
            .lock()
            .unwrap()
            .push((data.slices().count(), held));
        if !std::mem::replace(&mut self.failed, true) {
            return Err(SinkError::Retry("not yet".into()));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "recording".into()
    }
}

#[test]
fn a_sink_of_one_buffer_gets_a_batch_in_pieces_joined_once_and_the_block_let_go() {
    for pieces in [false, true] {
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        let queue = Arc::new(Queue::new(1 << 20, stats.clone()));
        let block = Arc::new(crate::line_buf::LineBuf::from(b"one\ntwo\n".to_vec()));
        let mut data = Segments::from(b"zero\n".to_vec());
        data.push_shared(&block, 0..4);
        data.extend_from_slice(b"TWO\n");
        data.push_shared(&block, 4..8);
        let seen = Arc::default();
        let sink = Recording {
            pieces,
            block: Arc::downgrade(&block),
            seen: Arc::clone(&seen),
            failed: false,
        };
        drop(block);
        let batch = Batch {
            data,
            lines: 4,
            acks: Vec::new(),
            end: None,
            resent: false,
        };
        queue
            .push(batch, WhenFull::Block, &Deadline::default())
            .unwrap();
        queue.close();
        let outcome = start(Box::new(sink), &queue, &stats, None).join().unwrap();
        assert_eq!(outcome.undelivered, 0, "{:?}", outcome.error);
        // Two attempts: in one piece, the block let go, at both; or its four pieces kept, two
        // of them the block's.
        let expected = if pieces { (4, 2) } else { (1, 0) };
        assert_eq!(
            *seen.lock().unwrap(),
            [expected, expected],
            "pieces: {pieces}"
        );
    }
}
