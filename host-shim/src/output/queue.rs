//! The bounded buffer between the engine thread and one output's delivery thread.
//!
//! The engine pushes a [`Batch`] (the lines one input block sent to this output) after each
//! block; the output's own thread pops and delivers it. The buffer is bounded in bytes: when
//! it is full, the output's `when_full` policy decides, as Vector's buffers do: `block` makes the
//! engine wait (backpressure on every input), `drop_newest` drops the batch (counted by the
//! caller). One batch larger than the bound is taken when the buffer is empty, so that any line
//! can pass.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::ack::Ack;
use crate::config::WhenFull;
use crate::metrics::OutputHealth;

/// How often a blocked push looks at the deadline.
const BLOCKED_POLL: Duration = Duration::from_millis(100);

/// Lines on their way to one output.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Whole lines, each ending in `\n`.
    pub(crate) data: Vec<u8>,
    /// How many lines.
    pub(crate) lines: u64,
    /// The acknowledgements of the requests these lines came from (HTTP input), told when the
    /// batch is delivered; dropping them unsaid fails those requests.
    pub(crate) acks: Vec<Ack>,
}

/// When delivery must end: `timeout` after a stop signal (noticed by whichever thread looks
/// first, so that a thread blocked on a full buffer sees it too) or after [`Deadline::start`]
/// (the end of the input). Outputs give up then, and say what they could not deliver.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deadline(Arc<DeadlineInner>);

#[derive(Debug, Default)]
struct DeadlineInner {
    at: OnceLock<Instant>,
    stop: Option<Arc<AtomicBool>>,
    timeout: Duration,
}

impl Deadline {
    /// A deadline `timeout` after `stop` is set or [`Deadline::start`] is called.
    pub(crate) fn new(stop: &Arc<AtomicBool>, timeout: Duration) -> Self {
        Deadline(Arc::new(DeadlineInner {
            at: OnceLock::new(),
            stop: Some(Arc::clone(stop)),
            timeout,
        }))
    }

    /// Starts the countdown now, unless it has started.
    pub(crate) fn start(&self) {
        let _ = self.0.at.get_or_init(|| Instant::now() + self.0.timeout);
    }

    /// When delivery ends, once the countdown has started.
    pub(crate) fn at(&self) -> Option<Instant> {
        if let Some(at) = self.0.at.get() {
            return Some(*at);
        }
        if self.0.stop.as_ref()?.load(Ordering::Relaxed) {
            self.start();
        }
        self.0.at.get().copied()
    }

    /// Whether the deadline is past.
    pub(crate) fn passed(&self) -> bool {
        self.at().is_some_and(|at| Instant::now() >= at)
    }
}

/// What [`Queue::push`] did with a batch.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// Taken.
    Queued,
    /// The buffer was full and the policy is `drop_newest`: the batch was not taken.
    Dropped(Batch),
}

/// What [`Queue::pop_timeout`] found.
#[derive(Debug)]
pub(crate) enum Popped {
    /// The oldest batch.
    Batch(Batch),
    /// Nothing yet.
    Empty,
    /// Nothing, and nothing more will come.
    Closed,
}

/// Why [`Queue::push`] could not take a batch.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The output failed for good (its thread gave up); the reason.
    Failed(String),
    /// The buffer stayed full until the delivery deadline.
    Deadline,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Batch>,
    bytes: u64,
    closed: bool,
    failed: Option<String>,
}

/// A bounded FIFO of batches, one per output.
#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    not_empty: Condvar,
    not_full: Condvar,
    max_bytes: u64,
    stats: OutputHealth,
}

impl Queue {
    /// An empty queue of at most `max_bytes`, reporting into `stats`.
    pub(crate) fn new(max_bytes: u64, stats: OutputHealth) -> Self {
        Queue {
            inner: Mutex::new(Inner::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max_bytes,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a batch, applying `when_full` when there is no room. A blocked push waits until
    /// there is room, the output fails, or `deadline` passes.
    pub(crate) fn push(
        &self,
        batch: Batch,
        when_full: WhenFull,
        deadline: &Deadline,
    ) -> Result<Pushed, Refused> {
        let size = batch.data.len() as u64;
        let mut inner = self.lock();
        let mut blocked = false;
        let result = loop {
            if let Some(reason) = &inner.failed {
                break Err(Refused::Failed(reason.clone()));
            }
            if inner.items.is_empty() || inner.bytes + size <= self.max_bytes {
                inner.bytes += size;
                self.stats.pending(true, size, batch.lines);
                inner.items.push_back(batch);
                self.not_empty.notify_one();
                break Ok(Pushed::Queued);
            }
            if when_full == WhenFull::DropNewest {
                break Ok(Pushed::Dropped(batch));
            }
            if deadline.passed() {
                break Err(Refused::Deadline);
            }
            if !blocked {
                blocked = true;
                self.stats.set_blocked(true);
            }
            let started = Instant::now();
            inner = self
                .not_full
                .wait_timeout(inner, BLOCKED_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            self.stats.waited(started.elapsed().as_secs_f64());
        };
        if blocked {
            self.stats.set_blocked(false);
        }
        result
    }

    /// The next batch, waiting for one at most `wait`. A batch still counts as pending until
    /// [`Queue::settled`].
    pub(crate) fn pop_timeout(&self, wait: Duration) -> Popped {
        let until = Instant::now() + wait;
        let mut inner = self.lock();
        loop {
            if let Some(batch) = inner.items.pop_front() {
                inner.bytes -= batch.data.len() as u64;
                self.not_full.notify_all();
                return Popped::Batch(batch);
            }
            if inner.closed {
                return Popped::Closed;
            }
            let now = Instant::now();
            if now >= until {
                return Popped::Empty;
            }
            inner = self
                .not_empty
                .wait_timeout(inner, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A batch from [`Queue::pop`] was delivered (or given up on): it is no longer pending.
    pub(crate) fn settled(&self, batch: &Batch) {
        self.stats
            .pending(false, batch.data.len() as u64, batch.lines);
    }

    /// No more batches will come: the delivery thread ends when the queue is empty.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
    }

    /// The output failed for good: further pushes are refused with `reason`. Returns the lines
    /// still queued, which will never be delivered.
    pub(crate) fn fail(&self, reason: String) -> u64 {
        let mut inner = self.lock();
        inner.failed = Some(reason);
        let lines = inner.items.iter().map(|b| b.lines).sum();
        for batch in std::mem::take(&mut inner.items) {
            self.settled(&batch);
        }
        inner.bytes = 0;
        self.not_full.notify_all();
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            data: vec![b'x'; n],
            lines: 1,
            acks: Vec::new(),
        }
    }

    #[test]
    fn full_buffers_block_or_drop_by_policy_and_an_oversize_batch_passes_alone() {
        let stats = crate::metrics::Metrics::new(Default::default()).output("t");
        let q = Queue::new(10, stats.clone());
        let none = Deadline::default();
        assert!(matches!(
            q.push(batch(25), WhenFull::Block, &none),
            Ok(Pushed::Queued)
        ));
        assert!(matches!(
            q.push(batch(1), WhenFull::DropNewest, &none),
            Ok(Pushed::Dropped(_))
        ));
        assert_eq!(stats.status().pending_bytes, 25);
        let passed = Deadline::default();
        passed.start();
        assert!(matches!(
            q.push(batch(1), WhenFull::Block, &passed),
            Err(Refused::Deadline)
        ));
        // A blocked push goes through once the delivery thread takes the batch.
        let q = Arc::new(q);
        let taker = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                let Popped::Batch(b) = q.pop_timeout(Duration::from_secs(10)) else {
                    panic!("a batch was queued");
                };
                q.settled(&b);
                b.data.len()
            })
        };
        assert!(matches!(
            q.push(batch(3), WhenFull::Block, &none),
            Ok(Pushed::Queued)
        ));
        assert_eq!(taker.join().unwrap(), 25);
        assert!(stats.status().blocked_seconds > 0.0);
        assert_eq!(q.fail("gone".into()), 1);
        assert!(matches!(
            q.push(batch(1), WhenFull::Block, &none),
            Err(Refused::Failed(r)) if r == "gone"
        ));
        assert_eq!(stats.status().pending_bytes, 0);
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(1)),
            Popped::Empty
        ));
        q.close();
        assert!(matches!(q.pop_timeout(Duration::ZERO), Popped::Closed));
    }
}
