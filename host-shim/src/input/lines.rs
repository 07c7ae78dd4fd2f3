//! Framing: cutting a byte stream into blocks of complete lines for the engine.
//!
//! A reader holds at most `max_line_bytes` plus one read of an unterminated line. A line that
//! grows past that is known to be oversize (it will bypass the detector anyway), so it is
//! streamed through as [`Msg::Fragment`]s instead of being buffered whole; while it streams,
//! that reader holds the feed's order lock so that no other connection's lines land inside it.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::{Feed, Msg, READ_BLOCK_BYTES};

/// How long a reader that was told to stop keeps reading to complete a line it has begun.
const LINE_GRACE: Duration = Duration::from_secs(1);

/// Reads `input` until EOF (or until `stop` is set, for inputs with a read timeout), sending
/// complete lines, streaming oversize lines as fragments, and at the end the unterminated tail
/// as a last line. After a stop it goes on reading for up to a second when a line is
/// unfinished, so that a stop does not cut a line the peer is in the middle of sending.
/// Read timeouts (`WouldBlock`, `TimedOut`) are waited through. Returns the input's error, after sending everything read before it.
pub(crate) fn read_lines<R: Read>(
    mut input: R,
    feed: &Feed,
    max_line_bytes: usize,
    stop: Option<&AtomicBool>,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::with_capacity(READ_BLOCK_BYTES);
    // Held while an oversize line streams through, so that it reaches the outputs unbroken.
    let mut streaming: Option<MutexGuard<'_, ()>> = None;
    let mut first_fragment = true;
    let mut stop_seen: Option<Instant> = None;
    loop {
        let mut failure = None;
        let stopping = stop.is_some_and(|s| s.load(Ordering::Relaxed)) && {
            // Finish the line in progress (briefly) rather than cut it.
            let at = *stop_seen.get_or_insert_with(Instant::now);
            (pending.is_empty() && streaming.is_none()) || at.elapsed() > LINE_GRACE
        };
        let n = if stopping {
            0
        } else {
            let start = pending.len();
            pending.resize(start + READ_BLOCK_BYTES, 0);
            match input.read(&mut pending[start..]) {
                Ok(n) => {
                    pending.truncate(start + n);
                    n
                }
                Err(e) => {
                    pending.truncate(start);
                    match e.kind() {
                        io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut => continue,
                        _ => {
                            failure = Some(e);
                            0
                        }
                    }
                }
            }
        };
        if n == 0 {
            // EOF, stop or failure: hand over what is left.
            let sent = if streaming.is_some() {
                feed.send_locked(Msg::Fragment {
                    data: pending,
                    first: first_fragment,
                    last: true,
                })
            } else if !pending.is_empty() {
                feed.send(Msg::Lines(pending))
            } else {
                true
            };
            drop(streaming);
            return match failure {
                Some(e) => Err(e),
                None if sent => Ok(()),
                None => Err(io::Error::other("the engine stopped")),
            };
        }
        loop {
            if streaming.is_some() {
                if let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(nl + 1);
                    pending.pop();
                    let data = std::mem::replace(&mut pending, rest);
                    if !feed.send_locked(Msg::Fragment {
                        data,
                        first: first_fragment,
                        last: true,
                    }) {
                        return Err(io::Error::other("the engine stopped"));
                    }
                    streaming = None;
                    continue;
                }
                let keep = incomplete_utf8_tail(&pending);
                let tail = pending.split_off(pending.len() - keep);
                let data = std::mem::replace(&mut pending, tail);
                if !feed.send_locked(Msg::Fragment {
                    data,
                    first: first_fragment,
                    last: false,
                }) {
                    return Err(io::Error::other("the engine stopped"));
                }
                first_fragment = false;
                pending.reserve(READ_BLOCK_BYTES);
                break;
            }
            // Hand over everything up to the last newline; keep the unterminated tail.
            if let Some(last_nl) = pending.iter().rposition(|&b| b == b'\n') {
                let tail = pending.split_off(last_nl + 1);
                let block = std::mem::replace(&mut pending, tail);
                if !feed.send(Msg::Lines(block)) {
                    return Err(io::Error::other("the engine stopped"));
                }
                pending.reserve(READ_BLOCK_BYTES);
            }
            if pending.len() > max_line_bytes {
                streaming = Some(feed.lock());
                first_fragment = true;
                continue;
            }
            break;
        }
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `bytes` (0 to 3), so that fragments are
/// cut between characters.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], max: usize) -> Vec<Msg> {
        let (feed, rx) = Feed::channel();
        let input = input.to_vec();
        let t = std::thread::spawn(move || read_lines(&input[..], &feed, max, None));
        let msgs: Vec<Msg> = rx.iter().collect();
        t.join().unwrap().unwrap();
        msgs
    }

    #[test]
    fn long_lines_stream_as_fragments_between_complete_lines() {
        let mut input = b"a\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * READ_BLOCK_BYTES));
        input.extend_from_slice(b"\nb\nc");
        let msgs = collect(&input, 100);
        let mut rebuilt = Vec::new();
        let mut fragments = 0;
        for msg in msgs {
            match msg {
                Msg::Lines(data) => rebuilt.extend(data),
                Msg::Fragment { data, last, .. } => {
                    fragments += 1;
                    assert!(data.len() <= READ_BLOCK_BYTES + 100);
                    rebuilt.extend(data);
                    if last {
                        rebuilt.push(b'\n');
                    }
                }
                Msg::Failed(e) => panic!("{e}"),
            }
        }
        assert!(fragments >= 3, "{fragments}");
        assert_eq!(rebuilt, input);
    }

    #[test]
    fn utf8_tails_are_found() {
        assert_eq!(incomplete_utf8_tail(b"ab"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
    }
}
