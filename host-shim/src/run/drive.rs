//! The engine thread's loop: takes blocks from the readers' channel, processes them, hands
//! each output its lines, and runs the housekeeping, until EOF or a stop signal.
//!
//! It waits with a short timeout so that it notices a stop signal and runs its housekeeping
//! (state saves, metrics) while the input is quiet. Each block is committed to the outputs as
//! soon as it is processed, so a quiet stream is not held back: the delay added is the time
//! to process one block.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::housekeeping::Keeper;
use crate::engine::Engine;
use crate::input::Msg;
use crate::output::Outputs;

/// How often the engine thread checks the stop flag while the input is quiet.
const STOP_POLL: Duration = Duration::from_millis(50);

/// How long, after a stop signal, the engine waits for socket readers to hand over what they
/// have read (they notice the signal within their read timeout).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why [`run`](super::run) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The input ended.
    Eof,
    /// A stop signal arrived; everything read so far was processed and flushed.
    Stopped,
}

/// The engine thread's loop: processes messages from `rx` until every reader is gone (EOF) or
/// `stop` is set. After a stop it processes what the readers have already read: with
/// `wait_for_readers` (socket readers, which notice the stop themselves) until they have all
/// finished, otherwise (standard input, whose read cannot be interrupted) what is queued.
pub(super) fn drive(
    rx: &Receiver<Msg>,
    engine: &mut Engine,
    outputs: &mut Outputs,
    stop: &AtomicBool,
    wait_for_readers: bool,
    housekeeping: &mut Keeper,
) -> io::Result<Finish> {
    let mut stopped_at: Option<Instant> = None;
    let finish = loop {
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        let msg = match stopped_at {
            Some(_) if !wait_for_readers => match rx.try_recv() {
                Ok(msg) => msg,
                Err(_) => break Finish::Stopped,
            },
            Some(at) if at.elapsed() > DRAIN_GRACE => {
                tracing::warn!("input readers did not finish within the drain grace period");
                break Finish::Stopped;
            }
            _ => match rx.recv_timeout(STOP_POLL) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    housekeeping.idle(engine);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) if stopped_at.is_some() => {
                    break Finish::Stopped
                }
                Err(RecvTimeoutError::Disconnected) => break Finish::Eof,
            },
        };
        let started = Instant::now();
        // Lines whose sender waits for their delivery are processed as any others; then each
        // output holding some of them carries the acknowledgement with its batch.
        let (msg, ack) = match msg {
            Msg::Acked { data, ack } => (Msg::Lines(data), Some(ack)),
            msg => (msg, None),
        };
        match msg {
            Msg::Lines(data) => {
                engine.process(&split_lines(&data), outputs)?;
            }
            Msg::Fragment { data, first, last } => {
                engine.write_fragment(&data, first, last, outputs)?;
            }
            Msg::Failed(e) => {
                engine.close_fragment(outputs)?;
                outputs.commit()?;
                return Err(e);
            }
            Msg::Acked { .. } => unreachable!("turned into lines above"),
        }
        if let Some(ack) = ack {
            outputs.attach(&ack);
            ack.delivered();
        }
        outputs.commit()?;
        housekeeping.after_block(engine, started.elapsed());
    };
    engine.close_fragment(outputs)?;
    outputs.commit()?;
    Ok(finish)
}

/// The lines of a block (each ends in `\n`, except perhaps the last), without terminators.
fn split_lines(block: &[u8]) -> Vec<&[u8]> {
    let block = block.strip_suffix(b"\n").unwrap_or(block);
    let mut lines = Vec::with_capacity(block.len() / 256 + 1);
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', block) {
        lines.push(&block[start..nl]);
        start = nl + 1;
    }
    lines.push(&block[start..]);
    lines
}

#[cfg(test)]
mod tests {
    use super::split_lines;

    #[test]
    fn blocks_split_into_lines_as_the_slice_split_did() {
        for block in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"a\n\nb\n",
            b"\n\n",
            b"a\r\nb\r\n",
        ] {
            let trimmed = block.strip_suffix(b"\n").unwrap_or(block);
            let expected: Vec<&[u8]> = trimmed.split(|&b| b == b'\n').collect();
            assert_eq!(
                split_lines(block),
                expected,
                "{:?}",
                String::from_utf8_lossy(block)
            );
        }
    }
}
