//! Acknowledgements: how an input that answers its sender (the HTTP input) learns that every
//! line of one request has been delivered.
//!
//! An [`Ack`] travels with the request's lines: the input hands one to the engine with the
//! lines, the engine clones it into the batch of every output that got some of those lines
//! ([`crate::output`]), and each output's delivery thread says [`Ack::delivered`] once its
//! batch is delivered (an HTTP output: answered 2xx; a socket, file or stdout output: written,
//! as such outputs count delivery; an output with a disk buffer: synced into that buffer), or
//! [`Ack::dropped`] when a full `drop_newest` buffer dropped it. A copy dropped without saying
//! either (a batch given up on at the deadline, an engine error) marks the request failed.
//! When the last copy is gone, the input is told [`Outcome::Delivered`] or why not: it never
//! has to count anything, and a copy cannot be forgotten without failing the request.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What became of a request's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every line reached every output it was meant for.
    Delivered,
    /// Some output's buffer was full and its policy is `drop_newest`.
    Dropped,
    /// Some line was not delivered (an output gave up, the deadline passed, an error).
    Failed,
}

const DELIVERED: u8 = 0;
const DROPPED: u8 = 1;
const FAILED: u8 = 2;

struct Shared {
    /// The worst outcome reported so far.
    outcome: AtomicU8,
    tell: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let outcome = match self.outcome.load(Ordering::SeqCst) {
            DELIVERED => Outcome::Delivered,
            DROPPED => Outcome::Dropped,
            _ => Outcome::Failed,
        };
        let tell = self.tell.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(tell) = tell.take() {
            // The input may have stopped waiting (its own timeout): nothing to do then.
            let _ = tell.send(outcome);
        }
    }
}

/// One holder's share of a request's acknowledgement; see the module documentation.
pub(crate) struct Ack {
    shared: Arc<Shared>,
    /// What this copy reports when dropped.
    report: u8,
}

impl Ack {
    /// A new request's acknowledgement, and where its outcome arrives once every copy is gone.
    pub(crate) fn new() -> (Ack, oneshot::Receiver<Outcome>) {
        let (tell, told) = oneshot::channel();
        let shared = Arc::new(Shared {
            outcome: AtomicU8::new(DELIVERED),
            tell: Mutex::new(Some(tell)),
        });
        (
            Ack {
                shared,
                report: FAILED,
            },
            told,
        )
    }

    /// This copy's part is done: its lines were delivered.
    pub(crate) fn delivered(mut self) {
        self.report = DELIVERED;
    }

    /// This copy's lines were dropped by a full buffer's `drop_newest` policy.
    pub(crate) fn dropped(mut self) {
        self.report = DROPPED;
    }
}

impl Clone for Ack {
    /// Another holder's share: it fails the request unless it says otherwise.
    fn clone(&self) -> Self {
        Ack {
            shared: Arc::clone(&self.shared),
            report: FAILED,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.report != DELIVERED {
            self.shared.outcome.fetch_max(self.report, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_comes_when_the_last_copy_goes_and_is_the_worst_reported() {
        let (ack, mut told) = Ack::new();
        let (a, b) = (ack.clone(), ack.clone());
        ack.delivered();
        a.delivered();
        assert!(told.try_recv().is_err(), "one copy is still out");
        b.delivered();
        assert_eq!(told.try_recv().unwrap(), Outcome::Delivered);

        let (ack, mut told) = Ack::new();
        let dropped = ack.clone();
        let forgotten = ack.clone();
        ack.delivered();
        dropped.dropped();
        drop(forgotten);
        assert_eq!(told.try_recv().unwrap(), Outcome::Failed);

        let (ack, mut told) = Ack::new();
        ack.clone().dropped();
        ack.delivered();
        assert_eq!(told.try_recv().unwrap(), Outcome::Dropped);
    }
}
