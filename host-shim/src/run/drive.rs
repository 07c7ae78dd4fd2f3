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
use super::order::{self, Order};
use crate::engine::Engine;
use crate::input::Msg;
use crate::output::{Deadline, Outputs};

/// How often the engine thread checks the stop flag while the input is quiet.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Why [`run`](super::run) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The input ended.
    Eof,
    /// A stop signal arrived; everything read so far was processed and flushed.
    Stopped,
}

/// The engine thread's loop: processes messages from `rx` until every reader is gone (EOF) or
/// `stop` is set. After a stop it goes on processing what the readers hand over until the
/// shutdown `deadline`: with `wait_for_readers` (socket readers, which drain their connections
/// and end themselves) until they have all finished, otherwise (standard input, whose read
/// cannot be interrupted) until nothing more comes for a poll interval. The lines of a
/// listener's connections pass through the ordering stage `order`, which holds what it holds
/// only until the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive(
    rx: &Receiver<Msg>,
    order: &mut Order,
    engine: &mut Engine,
    outputs: &mut Outputs,
    stop: &AtomicBool,
    deadline: &Deadline,
    wait_for_readers: bool,
    housekeeping: &mut Keeper<'_>,
) -> io::Result<Finish> {
    let finish = loop {
        let stopped = stop.load(Ordering::Relaxed);
        if stopped && deadline.passed() {
            tracing::warn!("shutdown_timeout_secs passed while the input was still being read");
            break Finish::Stopped;
        }
        let waiting = Instant::now();
        let received = rx.recv_timeout(STOP_POLL);
        order.idle(waiting.elapsed(), engine, outputs)?;
        let msg = match received {
            Ok(msg) => msg,
            // Standard input: nothing more is coming now; its read cannot be interrupted.
            Err(RecvTimeoutError::Timeout) if stopped && !wait_for_readers => {
                break Finish::Stopped
            }
            Err(RecvTimeoutError::Timeout) => {
                commit(engine, outputs, order, housekeeping)?;
                housekeeping.idle(engine, outputs, order);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) if stopped => break Finish::Stopped,
            Err(RecvTimeoutError::Disconnected) => break Finish::Eof,
        };
        let started = Instant::now();
        match msg {
            Msg::Conn { lane, msg } => order.push(lane, *msg, engine, outputs)?,
            Msg::Failed(e) => {
                order.finish(engine, outputs)?;
                engine.close_fragment(outputs)?;
                outputs.commit()?;
                return Err(e);
            }
            // Lines whose sender waits for their delivery are processed as any others; then
            // each output holding some of them carries the acknowledgement with its batch.
            msg => order::process(msg, engine, outputs)?,
        }
        commit(engine, outputs, order, housekeeping)?;
        housekeeping.after_block(engine, (outputs, order), started.elapsed());
    };
    order.finish(engine, outputs)?;
    engine.close_fragment(outputs)?;
    outputs.commit()?;
    Ok(finish)
}

/// Hands each output its batch. While one waits on a full `block` buffer, a SIGHUP is taken:
/// the wait stops, the reload runs (it may move the output whose full buffer stalls the feed),
/// and the batches are handed over again (to the new outputs, for those it replaced).
fn commit(
    engine: &mut Engine,
    outputs: &mut Outputs,
    order: &mut Order,
    housekeeping: &mut Keeper<'_>,
) -> io::Result<()> {
    loop {
        let wake = housekeeping.reload.wake(engine);
        if outputs.commit_or_hold(wake.as_deref())? {
            return Ok(());
        }
        housekeeping.reload(engine, outputs, order);
    }
}
