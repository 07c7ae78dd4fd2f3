//! A batch on several threads: helpers scan events ahead while the calling thread runs the
//! filters and models on them, in event order.
//!
//! The scan (reading the wanted fields out of a line) is stateless and more than half of what
//! the detector spends per event; everything after it (GeoIP's cache, the models, alert
//! episodes, counters) is state that must see events in their order. So the batch is cut into
//! chunks of [`CHUNK`] events. Helpers, and the calling thread whenever the next chunk it needs
//! is not scanned yet, claim the next unclaimed chunk and scan its events into [`Scanned`]
//! records; the calling thread judges the records chunk after chunk, in order. The verdicts,
//! scores and model state are those of one thread by construction: only the scan moves, and a
//! record holds exactly what a scan on the calling thread would have returned.
//!
//! Records live in a ring of [`RING`] chunks: a chunk is claimed only once the chunk that held
//! its place before has been judged, so memory stays bounded whatever the batch size, and no
//! thread ever holds a claim it cannot work on. Each chunk sits behind its own mutex, taken by
//! one thread at a time by this protocol (never waited on): the atomics say whose turn it is,
//! the mutex lets safe code hand the records over.
//!
//! The helpers are the threads of a private rayon pool, started on the first batch that is
//! worth sharing ([`MIN_SHARED`]) and kept for the detector's life. A batch is handed to them
//! with [`rayon::ThreadPool::in_place_scope`], which lets them borrow the batch's lines and
//! returns only when they are done. A helper that panics marks the batch failed, so nobody
//! waits on a chunk it will never finish; rayon then resumes its panic on the calling thread,
//! where the plugin's boundary turns it into an error for the batch
//! ([`egresswatch_plugin_api::catch_panic`]); the next batch starts a new pool.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::Duration;

use crate::fields::{Scanned, Scanner, Schema};

/// Events per chunk: what a thread claims at once. Small enough that the calling thread,
/// judging, rarely waits for a helper to finish one; large enough that claiming costs little.
pub(super) const CHUNK: usize = 16;

/// Chunks in the ring of records: how far the scan may run ahead of the judging.
const RING: usize = 16;

/// Batches smaller than this are evaluated on the calling thread alone: handing a batch to a
/// helper and waiting for it costs about what scanning a few events does.
pub(super) const MIN_SHARED: usize = 2 * CHUNK;

/// No chunk: what a ring slot's `ready` holds before its chunk is scanned.
const NONE: usize = usize::MAX;

/// Spins before a waiting thread yields its core, then yields before it sleeps: about a
/// chunk's scan (16 events, some tens of microseconds) in all, so that the usual wait, for
/// the chunk a helper is finishing, ends awake, and a longer one costs no CPU time (under a
/// CPU quota too).
const SPINS: u32 = 64;
const YIELDS: u32 = 64;

/// Longest sleep of a waiting thread before it looks again: the calling thread is woken as
/// soon as its chunk is ready, and a helper waiting for the ring to have room as soon as half
/// of it has (this is only a safety net). A helper left asleep for the whole nap would lose
/// its lead: the calling thread judges a ring of chunks in about 110 us (16 x 16 events at
/// about 0.43 us each), then would have to scan the next chunks itself.
const NAP: Duration = Duration::from_micros(200);

/// Chunks judged that wake a helper asleep on a full ring: half the ring, so that it wakes to
/// a run of chunks to scan rather than going back to sleep after each.
const WAKE_AFTER: usize = RING / 2;

/// The helpers and the ring of records, kept between batches.
pub(super) struct Helpers {
    pool: rayon::ThreadPool,
    /// One scanner per helper (its buffers), locked by that helper for a batch.
    scanners: Vec<Mutex<Scanner>>,
    ring: Vec<Slot>,
    /// Index of the next chunk to claim.
    next: AtomicUsize,
    /// Chunks judged so far.
    judged: AtomicUsize,
    /// A helper panicked, or the calling thread stopped judging: the batch is over.
    stop: AtomicBool,
    /// The calling thread sleeps until a chunk is ready: whoever makes one ready wakes it.
    caller_asleep: AtomicBool,
    /// Helpers asleep on a full ring: the calling thread wakes them once it has judged
    /// `wake_at` chunks. Entries of helpers that woke on their own are woken for nothing
    /// (their next sleep returns at once, and they look again).
    helpers_asleep: Mutex<Vec<Thread>>,
    /// Chunks judged at which the helpers asleep are woken ([`NONE`]: none asleep); read
    /// without the lock after every chunk.
    wake_at: AtomicUsize,
    /// Test hook: helpers panic as they start on a batch.
    #[cfg(test)]
    pub(super) panic: bool,
    /// Test hook: the calling thread never scans (helpers scan every chunk).
    #[cfg(test)]
    pub(super) caller_scans: bool,
    /// Test count of the chunks helpers scanned.
    #[cfg(test)]
    pub(super) helped: AtomicUsize,
    /// Test hook: a helper finding the ring full sleeps at once (no spins first).
    #[cfg(test)]
    pub(super) sleep_at_once: bool,
    /// Test count of the times the calling thread woke sleeping helpers.
    #[cfg(test)]
    pub(super) woke_helpers: AtomicUsize,
}

/// One ring slot: the records of the chunk in it, and which chunk is scanned in them.
struct Slot {
    records: Mutex<Vec<Scanned>>,
    /// The index of the chunk whose scan is in `records`, or [`NONE`].
    ready: AtomicUsize,
}

/// One batch: its lines, how many chunks they make, and the thread that judges them.
#[derive(Clone, Copy)]
struct Batch<'b, 'l> {
    lines: &'b [&'l str],
    chunks: usize,
    caller: &'b Thread,
}

impl<'l> Batch<'_, 'l> {
    /// The lines of chunk `c`.
    fn chunk(&self, c: usize) -> &[&'l str] {
        let start = c * CHUNK;
        &self.lines[start..(start + CHUNK).min(self.lines.len())]
    }
}

impl Helpers {
    /// `count` helper threads (at least one) scanning for `schema`.
    pub(super) fn start(count: usize, schema: &Arc<Schema>) -> Result<Self, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(count.max(1))
            .thread_name(|i| format!("egresswatch-scan-{i}"))
            .build()
            .map_err(|e| format!("starting the detector's scan threads: {e}"))?;
        Ok(Helpers {
            pool,
            scanners: (0..count.max(1))
                .map(|_| Mutex::new(Scanner::new(Arc::clone(schema))))
                .collect(),
            ring: (0..RING)
                .map(|_| Slot {
                    records: Mutex::new(vec![Scanned::new(schema); CHUNK]),
                    ready: AtomicUsize::new(NONE),
                })
                .collect(),
            next: AtomicUsize::new(0),
            judged: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            caller_asleep: AtomicBool::new(false),
            helpers_asleep: Mutex::new(Vec::new()),
            wake_at: AtomicUsize::new(NONE),
            #[cfg(test)]
            panic: false,
            #[cfg(test)]
            caller_scans: true,
            #[cfg(test)]
            helped: AtomicUsize::new(0),
            #[cfg(test)]
            sleep_at_once: false,
            #[cfg(test)]
            woke_helpers: AtomicUsize::new(0),
        })
    }

    /// Scans `lines` on the helpers and the calling thread, and calls `judge` on the calling
    /// thread for every line, in order, with its record. `scanner` is the calling thread's.
    pub(super) fn run<'l>(
        &self,
        scanner: &mut Scanner,
        lines: &[&'l str],
        mut judge: impl FnMut(usize, &'l str, &mut Scanned),
    ) {
        let caller = std::thread::current();
        let batch = Batch {
            lines,
            chunks: lines.len().div_ceil(CHUNK),
            caller: &caller,
        };
        for slot in &self.ring {
            slot.ready.store(NONE, Ordering::Relaxed);
        }
        self.next.store(0, Ordering::Relaxed);
        self.judged.store(0, Ordering::Relaxed);
        self.stop.store(false, Ordering::Relaxed);
        // Nobody sleeps between batches (a helper's nap ended with its last one).
        self.wake_at.store(NONE, Ordering::Relaxed);
        // Published to the helpers by the pool's hand-over (a release/acquire pair).
        self.pool.in_place_scope(|scope| {
            for scanner in &self.scanners {
                scope.spawn(move |_| self.help(scanner, batch));
            }
            // Whatever way the calling thread leaves (a model panicking too), the helpers must
            // not wait for judging that will not come.
            let _stop = Stop(&self.stop);
            for c in 0..batch.chunks {
                let Some(mut records) = self.wait_for(c, scanner, batch) else {
                    return; // a helper failed; its panic is resumed when the scope ends
                };
                let start = c * CHUNK;
                for (i, (line, record)) in batch.chunk(c).iter().zip(records.iter_mut()).enumerate()
                {
                    judge(start + i, line, record);
                }
                drop(records);
                // Said before the look at the sleepers, as they say they sleep before their
                // last look at it: a helper going to sleep sees this chunk judged, or is woken.
                self.judged.store(c + 1, Ordering::SeqCst);
                if c + 1 >= self.wake_at.load(Ordering::SeqCst) {
                    self.wake_helpers();
                }
            }
        });
    }

    /// A helper's part of a batch: scans chunks until none is left to claim.
    fn help(&self, scanner: &Mutex<Scanner>, batch: Batch<'_, '_>) {
        let _stop = OnPanic(&self.stop);
        #[cfg(test)]
        assert!(!self.panic, "test hook: a helper panics");
        let mut scanner = scanner.lock().unwrap_or_else(|e| e.into_inner());
        let mut spins = 0;
        while !self.stop.load(Ordering::Relaxed) {
            #[cfg(test)]
            if self.sleep_at_once {
                spins = spins.max(SPINS);
            }
            match self.claim(batch) {
                Claim::Chunk(c) => {
                    self.scan(c, &mut scanner, batch);
                    #[cfg(test)]
                    self.helped.fetch_add(1, Ordering::Relaxed);
                    spins = 0;
                }
                Claim::Done => return,
                // The calling thread is a ring behind: asleep until it has judged half of it
                // (no yields first: the wait is at least a chunk's judging).
                Claim::Full if spins >= SPINS => self.sleep_until_judged(),
                Claim::Full => pause(&mut spins),
            }
        }
    }

    /// A helper's sleep while the ring is full: until the calling thread has judged
    /// [`WAKE_AFTER`] more chunks (or the batch stops, or the nap ends).
    fn sleep_until_judged(&self) {
        let wake_at = self.judged.load(Ordering::SeqCst) + WAKE_AFTER;
        {
            let mut asleep = self
                .helpers_asleep
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            asleep.push(std::thread::current());
            self.wake_at.fetch_min(wake_at, Ordering::SeqCst);
        }
        // The last look, after saying when to be woken: chunks judged since are seen here, or
        // their judging wakes this thread.
        if self.judged.load(Ordering::SeqCst) < wake_at && !self.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(NAP);
        }
    }

    /// Wakes the helpers asleep until a chunk is judged.
    #[cold]
    fn wake_helpers(&self) {
        let mut asleep = self
            .helpers_asleep
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for helper in asleep.drain(..) {
            helper.unpark();
        }
        self.wake_at.store(NONE, Ordering::SeqCst);
        #[cfg(test)]
        self.woke_helpers.fetch_add(1, Ordering::Relaxed);
    }

    /// The records of chunk `c` once scanned (by the calling thread itself when it can claim a
    /// chunk while it waits); `None` when a helper failed.
    fn wait_for(
        &self,
        c: usize,
        scanner: &mut Scanner,
        batch: Batch<'_, '_>,
    ) -> Option<MutexGuard<'_, Vec<Scanned>>> {
        let slot = &self.ring[c % RING];
        let mut spins = 0;
        while slot.ready.load(Ordering::Acquire) != c {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            #[cfg(test)]
            let claim = if self.caller_scans {
                self.claim(batch)
            } else {
                Claim::Done
            };
            #[cfg(not(test))]
            let claim = self.claim(batch);
            match claim {
                Claim::Chunk(k) => {
                    self.scan(k, scanner, batch);
                    spins = 0;
                }
                Claim::Done | Claim::Full if spins >= SPINS + YIELDS => {
                    // Asleep until the chunk's scanner wakes it: said before the last look,
                    // so that a chunk made ready in between is seen or wakes it.
                    self.caller_asleep.store(true, Ordering::SeqCst);
                    if slot.ready.load(Ordering::SeqCst) != c && !self.stop.load(Ordering::SeqCst) {
                        std::thread::park_timeout(NAP);
                    }
                    self.caller_asleep.store(false, Ordering::SeqCst);
                }
                Claim::Done | Claim::Full => pause(&mut spins),
            }
        }
        // Never contended: whoever scanned the chunk has let go of it before saying so.
        Some(slot.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Claims the next chunk, if its ring slot has been judged.
    fn claim(&self, batch: Batch<'_, '_>) -> Claim {
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            if next >= batch.chunks {
                return Claim::Done;
            }
            if next >= self.judged.load(Ordering::Acquire) + RING {
                return Claim::Full;
            }
            match self.next.compare_exchange_weak(
                next,
                next + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Claim::Chunk(next),
                Err(now) => next = now,
            }
        }
    }

    /// Scans chunk `c` into its ring slot and says it is ready.
    fn scan(&self, c: usize, scanner: &mut Scanner, batch: Batch<'_, '_>) {
        let slot = &self.ring[c % RING];
        {
            let mut records = slot.records.lock().unwrap_or_else(|e| e.into_inner());
            for (line, record) in batch.chunk(c).iter().zip(records.iter_mut()) {
                scanner.scan_into(line, record);
            }
        }
        slot.ready.store(c, Ordering::SeqCst);
        if self.caller_asleep.load(Ordering::SeqCst) {
            batch.caller.unpark();
        }
    }
}

/// What [`Helpers::claim`] found.
enum Claim {
    Chunk(usize),
    /// Every chunk is claimed.
    Done,
    /// The next chunk's ring slot is still to be judged.
    Full,
}

/// Waits a little: spins first, then gives the core away (the machine may have fewer free
/// cores than threads); the callers sleep once both are done.
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins <= SPINS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Sets the flag when dropped: the calling thread has stopped judging.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sets the flag when dropped while panicking: a helper failed.
struct OnPanic<'a>(&'a AtomicBool);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}
