//! Driving the engine from a byte stream: read lines, process them, write them, until EOF or a
//! stop signal.
//!
//! A reader thread reads large blocks and hands over only complete lines; the processing thread
//! waits for them with a short timeout so that it notices a stop signal even while the input is
//! quiet. Each block is written and flushed as soon as it is processed, so a quiet stream is not
//! held back waiting for a full batch: the flush delay is the time to process one block.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::output::Outputs;

/// Size of each read from the input.
const READ_BLOCK_BYTES: usize = 256 * 1024;

/// Blocks in flight between the reader thread and the processing thread.
const BLOCKS_IN_FLIGHT: usize = 4;

/// How often the processing thread checks the stop flag while the input is quiet.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Complete lines read from the input: the bytes, each line ending in `\n` except possibly the
/// last block's last line at EOF.
struct Block(Vec<u8>);

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The input ended.
    Eof,
    /// A stop signal arrived; everything read so far was processed and flushed.
    Stopped,
}

/// Reads NDJSON from `input` until EOF or until `stop` is set, processing and writing every
/// complete line. Returns how it finished.
pub fn run<R: Read + Send + 'static>(
    input: R,
    engine: &mut Engine,
    outputs: &mut Outputs,
    stop: &Arc<AtomicBool>,
) -> io::Result<Finish> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Block>>(BLOCKS_IN_FLIGHT);
    std::thread::Builder::new()
        .name("egresswatch-reader".into())
        .spawn(move || read_blocks(input, &tx))?;

    loop {
        let block = match rx.recv_timeout(STOP_POLL) {
            Ok(block) => block?,
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(Finish::Stopped);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(Finish::Eof),
        };
        process_block(&block, engine, outputs)?;
        if stop.load(Ordering::Relaxed) {
            // Stop reading, but finish what has already been read.
            while let Ok(block) = rx.try_recv() {
                process_block(&block?, engine, outputs)?;
            }
            return Ok(Finish::Stopped);
        }
    }
}

/// Splits a block into lines, processes them and flushes the outputs.
fn process_block(block: &Block, engine: &mut Engine, outputs: &mut Outputs) -> io::Result<()> {
    let data = block.0.strip_suffix(b"\n").unwrap_or(&block.0);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    engine.process(&lines, outputs)?;
    outputs.flush()
}

/// The reader thread: sends blocks of complete lines; at EOF sends the unterminated tail as a
/// last line. Ends when the input ends, fails, or the receiver is gone.
fn read_blocks<R: Read>(mut input: R, tx: &mpsc::SyncSender<io::Result<Block>>) {
    let mut pending: Vec<u8> = Vec::with_capacity(READ_BLOCK_BYTES);
    loop {
        let start = pending.len();
        pending.resize(start + READ_BLOCK_BYTES, 0);
        let n = match input.read(&mut pending[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                pending.truncate(start);
                continue;
            }
            Err(e) => {
                pending.truncate(start);
                let _ = tx.send(Err(e));
                return;
            }
        };
        pending.truncate(start + n);
        if n == 0 {
            if !pending.is_empty() {
                let _ = tx.send(Ok(Block(pending)));
            }
            return;
        }
        // Hand over everything up to the last newline; keep the unterminated tail.
        if let Some(last_nl) = pending[start..].iter().rposition(|&b| b == b'\n') {
            let cut = start + last_nl + 1;
            let tail = pending.split_off(cut);
            let block = std::mem::replace(&mut pending, tail);
            pending.reserve(READ_BLOCK_BYTES);
            if tx.send(Ok(Block(block))).is_err() {
                return;
            }
        }
    }
}
