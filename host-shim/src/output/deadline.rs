//! When an output's delivery must end: the run's shutdown deadline, and each output's own
//! (a child of the run's) once a reload replaced or removed it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When delivery must end: `timeout` after a stop signal (noticed by whichever thread looks
/// first, so that a thread blocked on a full buffer sees it too) or after [`Deadline::start`]
/// (the end of the input). Outputs give up then, and say what they could not deliver.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deadline(Arc<DeadlineInner>);

#[derive(Debug, Default)]
struct DeadlineInner {
    at: OnceLock<Instant>,
    stop: Option<Arc<AtomicBool>>,
    /// Milliseconds from the start of the countdown (a child uses its parent's).
    timeout_ms: AtomicU64,
    /// A child's deadline is also its parent's, when that comes first.
    parent: Option<Deadline>,
    /// A reload replaced the output (its own, not inherited).
    replaced: AtomicBool,
    /// ... by an output that writes to the same place ([`Deadline::set_same_target`]).
    same_target: AtomicBool,
}

/// How long a replaced output's sink waits on a peer that takes nothing before it counts as a
/// failure, so that the output's replacement gets what it holds.
pub(crate) const STALL_GRACE: Duration = Duration::from_secs(2);

impl Deadline {
    /// A deadline `timeout` after `stop` is set or [`Deadline::start`] is called.
    pub(crate) fn new(stop: &Arc<AtomicBool>, timeout: Duration) -> Self {
        Deadline(Arc::new(DeadlineInner {
            at: OnceLock::new(),
            stop: Some(Arc::clone(stop)),
            timeout_ms: AtomicU64::new(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            parent: None,
            replaced: AtomicBool::new(false),
            same_target: AtomicBool::new(false),
        }))
    }

    /// A deadline of the same timeout that passes when this one does, or earlier: the timeout
    /// after its own [`Deadline::start`] (what a reload gives an output or input it replaces to
    /// finish what it holds).
    pub(crate) fn child(&self) -> Self {
        Deadline(Arc::new(DeadlineInner {
            at: OnceLock::new(),
            stop: None,
            timeout_ms: AtomicU64::new(0),
            parent: Some(self.clone()),
            replaced: AtomicBool::new(false),
            same_target: AtomicBool::new(false),
        }))
    }

    /// A new timeout for a countdown not yet started (a reload's `shutdown_timeout_secs`).
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.0.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The time from the start of the countdown to the deadline.
    fn timeout(&self) -> Duration {
        match &self.0.parent {
            Some(parent) => parent.timeout(),
            None => Duration::from_millis(self.0.timeout_ms.load(Ordering::Relaxed)),
        }
    }

    /// A reload replaced the output this deadline is for (and started its countdown): a retry's
    /// wait ends at once, and a sink waiting on a peer that takes nothing gives up after
    /// [`STALL_GRACE`] instead of at the deadline ([`Deadline::gives_up_stalled`]).
    pub(crate) fn set_replaced(&self) {
        // (Release: what was set before, the same target, is seen with it.)
        self.0.replaced.store(true, Ordering::Release);
    }

    /// Whether a reload replaced the output.
    pub(crate) fn replaced(&self) -> bool {
        self.0.replaced.load(Ordering::Acquire)
    }

    /// The output that replaces this one (before [`Deadline::set_replaced`]) writes to the same
    /// file or peer: a connection this one leaves must not deliver after the new one's.
    pub(crate) fn set_same_target(&self) {
        self.0.same_target.store(true, Ordering::Relaxed);
    }

    /// Whether [`Deadline::set_same_target`] was called.
    pub(crate) fn same_target(&self) -> bool {
        self.0.same_target.load(Ordering::Relaxed)
    }

    /// Whether a sink whose peer has taken nothing since `stalled` stops waiting: the output
    /// was replaced and the grace is over.
    pub(crate) fn gives_up_stalled(&self, stalled: Instant) -> bool {
        self.replaced() && stalled.elapsed() >= STALL_GRACE
    }

    /// Starts the countdown now, unless it has started.
    pub(crate) fn start(&self) {
        let _ = self.0.at.get_or_init(|| {
            Instant::now()
                .checked_add(self.timeout())
                .unwrap_or_else(far_future)
        });
    }

    /// When delivery ends, once the countdown has started.
    pub(crate) fn at(&self) -> Option<Instant> {
        let own = self.own();
        match (own, self.0.parent.as_ref().and_then(Deadline::at)) {
            (Some(own), Some(parent)) => Some(own.min(parent)),
            (own, parent) => own.or(parent),
        }
    }

    /// Its own countdown's end, once started (not its parent's).
    fn own(&self) -> Option<Instant> {
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

/// An instant no deadline reaches (a timeout too large to add).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}
