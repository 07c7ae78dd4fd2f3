//! Tests of the outputs as the engine thread drives them: a reload whose new output cannot
//! start, removed outputs taken over, and a batch taken whole or copied.

use super::*;
use crate::line_buf::{LineBuf, KEEP_WHOLE};

#[test]
fn a_reload_whose_output_thread_cannot_start_loses_nothing_and_keeps_the_output() {
    let dir = std::env::temp_dir().join(format!("egresswatch-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = |file: &str| {
        let path = dir.join(file);
        let text = format!(
            "outputs:\n  default: {{ type: file, path: '{}' }}\n",
            path.display()
        );
        HostConfig::parse(&text, false).unwrap()
    };
    let (a, b) = (config("a.ndjson"), config("b.ndjson"));
    let metrics = Metrics::new(Default::default());
    let mut outputs = Outputs::open(&a, &Deadline::default(), &metrics).unwrap();
    outputs.write_line(DEFAULT_OUTPUT, b"one").unwrap();
    outputs.commit().unwrap();
    // The system has no thread left for the new output.
    worker::fail_next_spawn();
    let changes = outputs.prepare(&b, &[DEFAULT_OUTPUT.to_owned()], &metrics);
    let refused = changes.err().expect("refused").to_string();
    assert!(
        refused.contains("output default: cannot be started"),
        "{refused}"
    );
    // The old output goes on: nothing lost.
    outputs.write_line(DEFAULT_OUTPUT, b"two").unwrap();
    outputs.commit().unwrap();
    let (_, undelivered) = outputs.finish();
    assert!(undelivered.is_empty(), "{undelivered:?}");
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    assert_eq!(read("a.ndjson") + &read("b.ndjson"), "one\ntwo\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Outputs `names`, each a TCP output to `address`.
fn to_peer(address: &str, names: &[&str]) -> HostConfig {
    let outputs: Vec<String> = names
        .iter()
        .map(|name| format!("{name}: {{ type: tcp, address: '{address}' }}"))
        .collect();
    let text = format!("outputs: {{ {} }}\n", outputs.join(", "));
    HostConfig::parse(&text, false).unwrap()
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Outputs `a` and `b` to a peer that is down, holding `one` and `two`, removed by a reload
/// while they fail (they go on retrying): the outputs, the peer's address, and the socket that
/// holds its port meanwhile (bound, not listening: connections are refused, and no other bind
/// or outgoing connection gets the port).
fn removed_while_failing(metrics: &Metrics) -> (Outputs, String, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let down = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    down.bind(&any.into()).unwrap();
    let address = down.local_addr().unwrap().as_socket().unwrap().to_string();
    // (Far off: only a reload makes them hand over.)
    let deadline = Deadline::new(&Arc::default(), Duration::from_secs(600));
    let mut outputs = Outputs::open(&to_peer(&address, &["a", "b"]), &deadline, metrics).unwrap();
    outputs.write_line("a", b"one").unwrap();
    outputs.write_line("b", b"two").unwrap();
    outputs.commit().unwrap();
    // (Each has its line in hand once it failed to deliver it: the probe, then the line.)
    let waited = Instant::now();
    while ["a", "b"]
        .iter()
        .any(|n| metrics.output(n).status().errors < 2)
    {
        assert!(waited.elapsed() < Duration::from_secs(60), "never tried");
        std::thread::sleep(Duration::from_millis(5));
    }
    let removed = outputs.prepare(&to_peer(&address, &[]), &names(&["a", "b"]), metrics);
    outputs.apply(removed.unwrap(), metrics);
    (outputs, address, down)
}

#[test]
fn a_new_output_takes_over_every_removed_output_still_failing_where_it_writes() {
    let metrics = Metrics::new(Default::default());
    let (mut outputs, address, down) = removed_while_failing(&metrics);
    // The next one adds an output to the same peer: it takes over both, not just the last.
    let added = outputs.prepare(&to_peer(&address, &["c"]), &names(&["c"]), &metrics);
    outputs.apply(added.unwrap(), &metrics);
    let waited_for: Vec<&String> = outputs.retired.iter().map(|(n, _)| n).collect();
    assert!(waited_for.is_empty(), "only waited for: {waited_for:?}");
    // The peer comes up: every line arrives, none is left undelivered.
    drop(down);
    let peer = std::net::TcpListener::bind(&address).unwrap();
    let received = Arc::new(std::sync::Mutex::new(String::new()));
    let shared = Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in peer.incoming() {
            let Ok(mut conn) = conn else { return };
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = io::Read::read_to_string(&mut conn, &mut text);
                shared.lock().unwrap().push_str(&text);
            });
        }
    });
    let (_, undelivered) = outputs.finish();
    assert!(undelivered.is_empty(), "{undelivered:?}");
    let waited = Instant::now();
    while received.lock().unwrap().len() < "one\ntwo\n".len() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "lines never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut lines: Vec<String> = received.lock().unwrap().lines().map(Into::into).collect();
    lines.sort();
    assert_eq!(lines, ["one", "two"]);
}

#[test]
fn what_outputs_hand_to_one_whose_thread_died_before_it_started_is_named_at_the_end() {
    let metrics = Metrics::new(Default::default());
    let (mut outputs, address, _down) = removed_while_failing(&metrics);
    // The next reload adds an output to the same peer, whose thread ends (a panic) before
    // the reload lets it go: both removed ones hand it their lines all the same.
    worker::end_next_thread();
    let added = outputs.prepare(&to_peer(&address, &["c"]), &names(&["c"]), &metrics);
    let added = added.unwrap();
    let waited = Instant::now();
    while !added
        .0
        .iter()
        .all(|(_, c)| c.as_ref().unwrap().0.ended.is_set())
    {
        assert!(waited.elapsed() < Duration::from_secs(60), "never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    outputs.apply(added, &metrics);
    let (_, undelivered) = outputs.finish();
    assert_eq!(
        undelivered,
        [Undelivered {
            name: "c".into(),
            lines: 2,
            reason: "its delivery thread ended before it started".into(),
        }]
    );
}

#[test]
fn a_block_far_larger_than_its_lines_is_not_kept_as_the_batch() {
    let mut outputs = Outputs::from_writers(vec![(
        DEFAULT_OUTPUT.to_owned(),
        Box::new(io::sink()) as Box<dyn io::Write + Send>,
    )]);
    let batch = |outputs: &Outputs| outputs.outputs[DEFAULT_OUTPUT].batch.to_vec();
    let mut small = Vec::with_capacity(1 << 20);
    small.extend_from_slice(b"one\n");
    outputs
        .write_owned(DEFAULT_OUTPUT, small.into(), 1)
        .unwrap();
    assert_eq!(batch(&outputs), b"one\n");
    assert!(outputs.outputs[DEFAULT_OUTPUT].batch.capacity() < 1 << 20);
    outputs.commit().unwrap();
    // A full block is taken as it is (no copy).
    let full = vec![b'x'; 100_000];
    let at = full.as_ptr();
    outputs.write_owned(DEFAULT_OUTPUT, full.into(), 1).unwrap();
    assert_eq!(outputs.outputs[DEFAULT_OUTPUT].batch.as_ptr(), at);
    outputs.commit().unwrap();
}

#[test]
fn a_batch_far_larger_than_its_lines_gives_its_room_back_when_handed_over() {
    let mut outputs = Outputs::from_writers(vec![(
        DEFAULT_OUTPUT.to_owned(),
        Box::new(io::sink()) as Box<dyn io::Write + Send>,
    )]);
    // Room made for a whole block (as the engine does), then one short line written: the
    // rest of the block went to other outputs.
    outputs.reserve(DEFAULT_OUTPUT, 256 * 1024).unwrap();
    outputs.write_line(DEFAULT_OUTPUT, b"one").unwrap();
    let output = outputs.outputs.get_mut(DEFAULT_OUTPUT).unwrap();
    let batch = output.take_batch().unwrap();
    assert_eq!(batch.data, b"one\n".to_vec());
    assert!(
        batch.data.capacity() <= KEEP_WHOLE,
        "{}",
        batch.data.capacity()
    );
    // A batch with at most twice its bytes of room, or 64 KiB, is handed over as it is (no
    // copy, its room kept); past that bound its room is given back.
    for (room, bytes, kept) in [
        (100_000, 100_000, true),
        (100_000, 60_000, true),
        (100_000, 50_000, true),
        (100_001, 50_000, false),
        (KEEP_WHOLE, 1_000, true),
        (KEEP_WHOLE + 1, 1_000, false),
    ] {
        let (at, data) = handed_over(&mut outputs, room, bytes);
        assert_eq!(data.len(), bytes, "{room} {bytes}");
        assert!(data[..bytes - 1].iter().all(|&b| b == b'x') && data[bytes - 1] == b'\n');
        if kept {
            assert_eq!(
                (data.as_ptr(), data.capacity()),
                (at, room),
                "{room} {bytes}"
            );
        } else {
            assert_eq!(data.capacity(), bytes, "{room} {bytes}");
        }
    }
}

/// One line of `bytes` (with its terminator) written into `room` made in `default`, then
/// taken: where the buffer was (its capacity checked to be `room`), and the bytes taken.
fn handed_over(outputs: &mut Outputs, room: usize, bytes: usize) -> (*const u8, Vec<u8>) {
    outputs.reserve(DEFAULT_OUTPUT, room).unwrap();
    outputs
        .write_line(DEFAULT_OUTPUT, &vec![b'x'; bytes - 1])
        .unwrap();
    let output = outputs.outputs.get_mut(DEFAULT_OUTPUT).unwrap();
    assert_eq!(output.batch.capacity(), room);
    let at = output.batch.as_ptr();
    (at, output.take_batch().unwrap().data.into_vec())
}

/// Runs `write` over outputs whose `default` is a file, once with a memory buffer and once with
/// a disk buffer (the `buffer` part of its configuration, given to `write` for messages), and
/// returns for each that part, what the file holds once they finished, and the lines delivered.
fn through_a_file(tag: &str, write: impl Fn(&mut Outputs, &str)) -> Vec<(String, String, u64)> {
    let dir = std::env::temp_dir().join(format!("egresswatch-{tag}-{}", std::process::id()));
    let on_disk = format!(
        ", buffer: {{ type: disk, path: '{}' }}",
        dir.join("buf").display()
    );
    let mut found = Vec::new();
    for buffer in [String::new(), on_disk] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "outputs:\n  default: {{ type: file, path: '{}'{buffer} }}\n",
            dir.join("out.ndjson").display()
        );
        let config = HostConfig::parse(&text, false).unwrap();
        let metrics = Metrics::new(Default::default());
        let mut outputs = Outputs::open(&config, &Deadline::default(), &metrics).unwrap();
        write(&mut outputs, &buffer);
        let (statuses, undelivered) = outputs.finish();
        assert!(undelivered.is_empty(), "{undelivered:?}");
        let written = std::fs::read_to_string(dir.join("out.ndjson")).unwrap();
        found.push((buffer, written, statuses[0].delivered));
    }
    let _ = std::fs::remove_dir_all(&dir);
    found
}

#[test]
fn blocks_that_begin_inside_their_buffers_are_queued_and_written_from_their_start() {
    // A reader's blocks begin up to a page into their buffers: what lies before must never be
    // written, whether the batch waits in memory or is appended to a disk buffer and read back.
    let found = through_a_file("offset", |outputs, buffer| {
        for (front, lines) in [(4_000, "one\ntwo\n"), (17, "three\n")] {
            let mut vec = b"junk\n".repeat(front / 5 + 1);
            vec.truncate(front);
            vec.extend_from_slice(lines.as_bytes());
            let at = vec[front..].as_ptr();
            let block = LineBuf::at(vec, front);
            let count = block.iter().filter(|&&b| b == b'\n').count() as u64;
            outputs.write_owned(DEFAULT_OUTPUT, block, count).unwrap();
            // Taken whole, as its batch.
            assert_eq!(
                outputs.outputs[DEFAULT_OUTPUT].batch.as_ptr(),
                at,
                "{buffer}"
            );
            outputs.commit().unwrap();
        }
    });
    for (buffer, written, _) in found {
        assert_eq!(written, "one\ntwo\nthree\n", "{buffer}");
    }
}

#[test]
fn a_batch_sharing_a_block_is_written_as_its_pieces_in_order_from_memory_or_disk() {
    // A reader's block (beginning inside its buffer) whose second line was flagged: its other
    // lines stay in the block, the replacement is written between them. A file output writes
    // the pieces; a disk buffer's record holds them together and gives them back the same.
    let found = through_a_file("shared", |outputs, buffer| {
        let block = Arc::new(LineBuf::at(b"junk\none\nflag\nthree\nfour\n".to_vec(), 5));
        outputs
            .write_shared(DEFAULT_OUTPUT, &block, 0..4, 1)
            .unwrap();
        outputs.write_line(DEFAULT_OUTPUT, b"FLAGGED").unwrap();
        outputs
            .write_shared(DEFAULT_OUTPUT, &block, 9..20, 2)
            .unwrap();
        let batch = &outputs.outputs[DEFAULT_OUTPUT].batch;
        assert_eq!(batch.shared_bytes(), 15, "{buffer}");
        outputs.commit().unwrap();
    });
    for (buffer, written, delivered) in found {
        assert_eq!(written, "one\nFLAGGED\nthree\nfour\n", "{buffer}");
        assert_eq!(delivered, 4, "{buffer}");
    }
}
