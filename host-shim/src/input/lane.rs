//! Lanes: what the engine's ordering stage ([`crate::run`]'s `order`) and a connection's reader
//! share about that connection.
//!
//! Every accepted connection of a `tcp` or `unix` input gets a [`Lane`], registered with the
//! listener's [`Lanes`] before its reader starts, so that the engine knows of a connection that
//! is open but has not sent anything yet (it may hold the oldest events). A lane is also the
//! connection's credit: its reader may have at most [`LANE_BLOCKS`] messages handed over and
//! not yet processed, and waits before handing over more. The ordering stage may hold a
//! connection's lines while another connection catches up; the credit makes that hold
//! backpressure on that one connection's reader (its sender then waits in the kernel's buffers,
//! as with a slow output), never on the shared channel, which the engine always empties.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Messages one connection may have handed over and not yet processed.
pub(crate) const LANE_BLOCKS: usize = 8;

/// How often a reader waiting for credit checks that the engine is still there.
const CREDIT_POLL: Duration = Duration::from_millis(100);

/// One connection as its reader and the ordering stage see it.
#[derive(Debug)]
pub(crate) struct Lane {
    /// The connection's number, for logs.
    pub(crate) id: u64,
    /// Messages handed over and not yet processed; `None` once the engine is gone.
    in_flight: Mutex<Option<usize>>,
    credit: Condvar,
    /// The reader has finished: nothing more comes from this connection.
    ended: AtomicBool,
}

impl Lane {
    fn new(id: u64) -> Self {
        Lane {
            id,
            in_flight: Mutex::new(Some(0)),
            credit: Condvar::new(),
            ended: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the connection may hand over one more message, and counts it as in flight.
    /// Returns at once when the engine is gone (the hand-over then fails and is counted).
    pub(crate) fn take_credit(&self) {
        let mut in_flight = self.lock();
        loop {
            match in_flight.as_mut() {
                Some(n) if *n < LANE_BLOCKS => {
                    *n += 1;
                    return;
                }
                Some(_) => {
                    in_flight = self
                        .credit
                        .wait_timeout(in_flight, CREDIT_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => return,
            }
        }
    }

    /// One message of this connection was processed (or could not be handed over).
    pub(crate) fn give_back(&self) {
        if let Some(n) = self.lock().as_mut() {
            *n = n.saturating_sub(1);
        }
        self.credit.notify_one();
    }

    /// Messages handed over and not yet processed.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().unwrap_or(0)
    }

    /// Whether the reader has finished.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The engine is gone: a reader waiting for credit goes on (and finds the engine gone).
    fn engine_gone(&self) {
        *self.lock() = None;
        self.credit.notify_all();
    }
}

/// The lanes of one listener's connections.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Lanes registered and not yet taken by the ordering stage ([`Lanes::take_new`]).
    new: Mutex<Vec<Arc<Lane>>>,
    /// Connections whose reader has not finished.
    open: AtomicUsize,
    /// Every lane registered, so that the engine can release their readers when it ends.
    all: Mutex<Vec<std::sync::Weak<Lane>>>,
    /// The last connection number given (the listeners a reload starts share the lanes).
    last_id: std::sync::atomic::AtomicU64,
}

impl Lanes {
    /// A number for a new connection, unique among the lanes' listeners.
    pub(crate) fn next_id(&self) -> u64 {
        self.last_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a new connection's lane.
    pub(crate) fn open(&self, id: u64) -> Arc<Lane> {
        let lane = Arc::new(Lane::new(id));
        self.open.fetch_add(1, Ordering::AcqRel);
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|l| l.strong_count() > 0);
        all.push(Arc::downgrade(&lane));
        drop(all);
        self.new
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&lane));
        lane
    }

    /// The connection of `lane` has finished: everything it sent is handed over.
    pub(crate) fn close(&self, lane: &Lane) {
        lane.ended.store(true, Ordering::Release);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections whose reader has not finished.
    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Lanes registered since the last call.
    pub(crate) fn take_new(&self) -> Vec<Arc<Lane>> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The engine is gone: no reader waits for credit any more.
    pub(crate) fn engine_gone(&self) {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        for lane in all.iter().filter_map(std::sync::Weak::upgrade) {
            lane.engine_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_waits_for_credit_and_is_released_when_the_engine_goes() {
        let lanes = Arc::new(Lanes::default());
        let lane = lanes.open(1);
        assert_eq!(lanes.open_count(), 1);
        for _ in 0..LANE_BLOCKS {
            lane.take_credit();
        }
        assert_eq!(lane.in_flight(), LANE_BLOCKS);
        let waiting = {
            let lane = Arc::clone(&lane);
            std::thread::spawn(move || lane.take_credit())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "no credit left: the reader waits");
        lane.give_back();
        waiting.join().unwrap();
        assert_eq!(lane.in_flight(), LANE_BLOCKS);
        let waiting = {
            let lane = Arc::clone(&lane);
            std::thread::spawn(move || lane.take_credit())
        };
        lanes.engine_gone();
        waiting.join().unwrap();
        lanes.close(&lane);
        assert!(lane.ended());
        assert_eq!(lanes.open_count(), 0);
        assert_eq!(lanes.take_new().len(), 1);
        assert!(lanes.take_new().is_empty());
    }
}
