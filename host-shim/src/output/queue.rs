//! The bounded buffer between the engine thread and one output's delivery thread.
//!
//! The engine pushes a [`Batch`] (the lines one input block sent to this output) after each
//! block; the output's own thread pops and delivers it. The buffer is bounded in bytes: when
//! it is full, the output's `when_full` policy decides, as Vector's buffers do: `block` makes the
//! engine wait (backpressure on every input), `drop_newest` drops the batch (counted by the
//! caller). One batch larger than the bound is taken when the buffer is empty, so that any line
//! can pass.
//!
//! With a disk buffer ([`super::disk`]) the batches are not held in memory: a push appends the
//! batch to the buffer's files, the delivery thread reads them back in order, and a batch leaves
//! the buffer (making room) only once it is delivered. Its acknowledgements are told when it is
//! on disk, not when delivered: the disk holds it from then on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use super::deadline::{Deadline, STALL_GRACE};
use super::disk::{Counts, DiskLog, Next, Position};
use crate::ack::Ack;
use crate::config::WhenFull;
use crate::metrics::OutputHealth;
pub(crate) use segments::Segments;

mod segments;

/// How often a blocked push looks at the deadline.
const BLOCKED_POLL: Duration = Duration::from_millis(100);

/// How long the delivery thread waits before it reads a disk buffer again after an error.
const READ_RETRY: Duration = Duration::from_millis(200);

/// Lines on their way to one output.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Whole lines, each ending in `\n`.
    pub(crate) data: Segments,
    /// How many lines.
    pub(crate) lines: u64,
    /// The acknowledgements of the requests these lines came from (HTTP input), told when the
    /// batch is delivered; dropping them unsaid fails those requests.
    pub(crate) acks: Vec<Ack>,
    /// Read from a disk buffer: where its record ends.
    pub(crate) end: Option<Position>,
    /// Written before by the output a reload replaced, which cannot tell whether the peer has
    /// them (a socket's unacknowledged tail): counted in `events_out` then, so counted as
    /// resent, not delivered, now.
    pub(crate) resent: bool,
}

/// What [`Queue::push`] did with a batch.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// Taken.
    Queued,
    /// The buffer was full and the policy is `drop_newest`: the batch was not taken.
    Dropped(Batch),
    /// The buffer was full (`block`) and the push was woken ([`Queue::push_or_hold`]): the
    /// batch was not taken; the caller keeps it.
    Held(Batch),
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
    /// Bytes held: in memory, those not yet taken by the delivery thread; on disk, those of
    /// the records not yet delivered, their headers included.
    bytes: u64,
    closed: bool,
    failed: Option<String>,
    /// On disk: records not yet taken by the delivery thread, and lines not yet delivered.
    waiting: u64,
    lines: u64,
    /// On disk: whether an append failed since the last one that worked (logged once).
    append_failing: bool,
    /// A reload replaced the output: its delivery thread hands what it cannot deliver to the
    /// replacement instead of retrying.
    retired: bool,
    /// On disk: whether a read failed since the last one that worked (logged once).
    read_failing: bool,
    /// On disk: batches delivered whose last lines the peer may not have yet (a socket
    /// output's unacknowledged tail), oldest first ([`Taken`]). The cursor stays before them
    /// until the sink says the peer has them.
    unconfirmed: VecDeque<Taken>,
    /// On disk: the batch the delivery thread has read and not yet settled.
    in_flight: Option<Taken>,
    /// On disk: where the furthest record counted in `events_out` ends (delivered by this
    /// thread or one before it): a record read again up to there, after [`Queue::rewind`], is
    /// marked resent.
    counted_to: Option<Position>,
    /// On disk: what it held at open is not checked yet ([`Queue::check_backlog`]); the
    /// bytes counted for it meanwhile (more than it holds, never less).
    unchecked: Option<u64>,
}

/// A batch read from a disk buffer and not yet past its cursor: where its record ends, its
/// lines, and its bytes of lines.
type Taken = (Position, u64, u64);

/// A bounded FIFO of batches, one per output.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    not_empty: Condvar,
    not_full: Condvar,
    /// The bound; a reload that keeps a disk buffer may change it.
    max_bytes: AtomicU64,
    stats: OutputHealth,
    disk: Option<DiskLog>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("max_bytes", &self.max_bytes())
            .field("disk", &self.disk.as_ref().map(DiskLog::dir))
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// An empty queue of at most `max_bytes`, reporting into `stats`.
    pub(crate) fn new(max_bytes: u64, stats: OutputHealth) -> Self {
        Queue {
            inner: Mutex::new(Inner::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max_bytes: AtomicU64::new(max_bytes),
            stats,
            disk: None,
        }
    }

    /// A queue over a disk buffer of at most `max_bytes` of undelivered lines. What it held at
    /// open is delivered first, once [`Queue::check_backlog`] has checked it (until then its
    /// bytes count as held).
    pub(crate) fn on_disk(disk: DiskLog, max_bytes: u64, stats: OutputHealth) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                bytes: disk.backlog_bytes(),
                unchecked: Some(disk.backlog_bytes()),
                ..Inner::default()
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max_bytes: AtomicU64::new(max_bytes),
            stats,
            disk: Some(disk),
        }
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// A reload kept this disk buffer with a new `max_bytes` (its segments keep their size).
    pub(crate) fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.not_full.notify_all();
    }

    /// Checks what a disk buffer held at open ([`DiskLog::check`], left by an earlier run) and
    /// counts it, to be delivered first: called by the output's own thread before it delivers
    /// anything, so that the input listens meanwhile. A check that fails is tried again every
    /// [`READ_RETRY`] until `deadline`, or until a reload replaces the output (its replacement,
    /// which keeps this queue, checks on from where this one stopped); then the reason.
    /// Nothing to do for a memory queue.
    pub(crate) fn check_backlog(&self, deadline: &Deadline) -> Result<(), String> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        if self.lock().unchecked.is_none() {
            return Ok(());
        }
        let mut logged = false;
        let stop = || deadline.passed() || deadline.replaced();
        let found = loop {
            match disk.check(&stop) {
                Ok(found) => break found,
                Err(e) => {
                    let reason = format!("disk buffer {}: cannot read: {e}", disk.dir().display());
                    if stop() {
                        return Err(reason);
                    }
                    // (Down on /metrics while it cannot read what it holds.)
                    self.stats.failed(reason.clone());
                    if !std::mem::replace(&mut logged, true) {
                        tracing::error!(output = %self.stats.name(), error = %reason,
                            "disk buffer: cannot check what it holds; trying again");
                    }
                    std::thread::sleep(READ_RETRY);
                }
            }
        };
        let mut inner = self.lock();
        let estimate = inner.unchecked.take().unwrap_or(0);
        inner.waiting += found.held.records;
        inner.lines += found.held.lines;
        inner.bytes = inner.bytes.saturating_sub(estimate) + found.held.record_bytes();
        self.stats.pending(true, found.held.bytes, found.held.lines);
        self.stats
            .disk_buffer_found(found.held.lines, found.corrupt);
        if found.held.lines > 0 || found.corrupt > 0 {
            tracing::info!(output = %self.stats.name(), path = %disk.dir().display(),
                lines = found.held.lines, bytes = found.held.bytes, corrupt = found.corrupt,
                "disk buffer: lines left by an earlier run are delivered first");
        }
        self.not_empty.notify_all();
        self.not_full.notify_all();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a batch, applying `when_full` when there is no room. A blocked push waits until
    /// there is room, the output fails, or `deadline` passes. (The engine uses
    /// [`Queue::push_or_hold`].)
    #[cfg(test)]
    pub(crate) fn push(
        &self,
        batch: Batch,
        when_full: WhenFull,
        deadline: &Deadline,
    ) -> Result<Pushed, Refused> {
        self.push_or_hold(batch, when_full, deadline, None)
    }

    /// [`Queue::push`], but a push blocked on a full buffer gives the batch back
    /// ([`Pushed::Held`]) once `wake` is set (SIGHUP: the engine thread takes the reload, which
    /// may move this output, then pushes again).
    pub(crate) fn push_or_hold(
        &self,
        mut batch: Batch,
        when_full: WhenFull,
        deadline: &Deadline,
        wake: Option<&AtomicBool>,
    ) -> Result<Pushed, Refused> {
        let size = batch.data.len() as u64;
        // (On disk, with its record's header.)
        let held = if self.disk.is_some() {
            Counts::one_record(size)
        } else {
            size
        };
        let mut inner = self.lock();
        let mut blocked = false;
        let result = loop {
            let room = inner.bytes == 0 || inner.bytes + held <= self.max_bytes();
            if let Some(reason) = &inner.failed {
                // A disk buffer still takes what fits (kept for the next start) and drops by
                // its policy; nothing will make room any more for a blocked batch.
                if self.disk.is_none() || (!room && when_full == WhenFull::Block) {
                    break Err(Refused::Failed(reason.clone()));
                }
            }
            if room && self.disk.is_none() {
                inner.bytes += size;
                self.stats.pending(true, size, batch.lines);
                inner.items.push_back(batch);
                self.not_empty.notify_one();
                break Ok(Pushed::Queued);
            }
            if let (true, Some(disk)) = (room, &self.disk) {
                let acks = std::mem::take(&mut batch.acks);
                match disk.append(&batch.data.contiguous(), batch.lines, acks) {
                    Ok(()) => {
                        if std::mem::take(&mut inner.append_failing) {
                            tracing::info!(output = %self.stats.name(),
                                "disk buffer: writes again");
                        }
                        inner.bytes += held;
                        inner.lines += batch.lines;
                        inner.waiting += 1;
                        self.stats.pending(true, size, batch.lines);
                        self.not_empty.notify_one();
                        break Ok(Pushed::Queued);
                    }
                    // A disk that cannot take it (full, failing) is a full buffer.
                    Err((e, acks)) => {
                        batch.acks = acks;
                        self.stats
                            .error(format!("disk buffer {}: {e}", disk.dir().display()));
                        if !std::mem::replace(&mut inner.append_failing, true) {
                            tracing::error!(output = %self.stats.name(), error = %e,
                                path = %disk.dir().display(),
                                "disk buffer: cannot write; the buffer counts as full until it \
                                 can");
                        }
                    }
                }
            }
            if when_full == WhenFull::DropNewest {
                break Ok(Pushed::Dropped(batch));
            }
            if deadline.passed() {
                break Err(Refused::Deadline);
            }
            if wake.is_some_and(|wake| wake.load(Ordering::Relaxed)) {
                break Ok(Pushed::Held(batch));
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
            if let (true, Some(disk)) = (inner.waiting > 0, &self.disk) {
                inner.waiting -= 1;
                drop(inner);
                match disk.read_next() {
                    Ok(Next::Record(record)) => {
                        let mut inner = self.lock();
                        inner.in_flight =
                            Some((record.end, record.lines, record.data.len() as u64));
                        let resent = inner.counted_to.is_some_and(|to| record.end <= to);
                        if std::mem::take(&mut inner.read_failing) {
                            tracing::info!(output = %self.stats.name(), "disk buffer: reads again");
                        }
                        return Popped::Batch(Batch {
                            data: record.data.into(),
                            lines: record.lines,
                            acks: Vec::new(),
                            end: Some(record.end),
                            resent,
                        });
                    }
                    Ok(Next::Skipped(skipped)) => {
                        inner = self.lock();
                        // (One of them was counted off above.)
                        inner.waiting = inner
                            .waiting
                            .saturating_sub(skipped.records.saturating_sub(1));
                        inner.bytes = inner.bytes.saturating_sub(skipped.record_bytes());
                        inner.lines = inner.lines.saturating_sub(skipped.lines);
                        self.stats.pending(false, skipped.bytes, skipped.lines);
                        self.stats.disk_buffer_found(0, 1);
                        self.not_full.notify_all();
                        continue;
                    }
                    Err(e) => {
                        // Nothing was taken: tried again after a pause (a file-descriptor
                        // shortage, a disk error that may clear).
                        let reason =
                            format!("disk buffer {}: cannot read: {e}", disk.dir().display());
                        self.stats.error(reason.clone());
                        inner = self.lock();
                        inner.waiting += 1;
                        if !std::mem::replace(&mut inner.read_failing, true) {
                            tracing::error!(output = %self.stats.name(), error = %reason,
                                "disk buffer: cannot read; trying again");
                        }
                        drop(inner);
                        std::thread::sleep(wait.min(READ_RETRY));
                        return Popped::Empty;
                    }
                }
            }
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

    /// A batch from [`Queue::pop_timeout`] was delivered (or given up on): it is no longer
    /// pending. A disk buffer's batch is settled only once delivered (a batch given up on stays
    /// on disk: the delivery thread gives up through [`Queue::fail`], or hands over to a
    /// reload's replacement, without settling it), and its cursor moves past it only once the
    /// sink's `outstanding` lines (written, not yet acknowledged by the peer: the last ones
    /// written) are all after it.
    pub(crate) fn settled(&self, batch: &Batch, outstanding: u64) {
        if let (Some(disk), Some(end)) = (&self.disk, batch.end) {
            let mut inner = self.lock();
            if inner.failed.is_some() {
                return;
            }
            inner.in_flight = None;
            // (Counted in events_out by the caller, as delivered or as resent.)
            inner.counted_to = inner.counted_to.max(Some(end));
            let size = Counts::one_record(batch.data.len() as u64);
            inner.bytes = inner.bytes.saturating_sub(size);
            inner.lines = inner.lines.saturating_sub(batch.lines);
            let taken = (end, batch.lines, batch.data.len() as u64);
            inner.unconfirmed.push_back(taken);
            self.move_cursor(disk, &mut inner, outstanding);
            self.not_full.notify_all();
        }
        self.stats
            .pending(false, batch.data.len() as u64, batch.lines);
    }

    /// The sink says `outstanding` of the lines it wrote are not acknowledged yet: a disk
    /// buffer's cursor moves past the batches wholly before them.
    pub(crate) fn confirm(&self, outstanding: u64) {
        if let Some(disk) = &self.disk {
            let mut inner = self.lock();
            if inner.failed.is_none() {
                self.move_cursor(disk, &mut inner, outstanding);
            }
        }
    }

    fn move_cursor(&self, disk: &DiskLog, inner: &mut Inner, outstanding: u64) {
        let mut after: u64 = inner.unconfirmed.iter().map(|(_, lines, _)| lines).sum();
        let mut to = None;
        while let Some(&(end, lines, _)) = inner.unconfirmed.front() {
            if after - lines < outstanding {
                break;
            }
            after -= lines;
            to = Some(end);
            inner.unconfirmed.pop_front();
        }
        if let Some(end) = to {
            if let Err(e) = disk.delivered(end) {
                // Only the cursor is behind: these lines may be delivered again after a restart.
                tracing::warn!(output = %self.stats.name(), error = %e,
                    "disk buffer: cannot move its cursor past delivered lines");
            }
        }
    }

    /// Whether this is a disk buffer.
    pub(crate) fn is_on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// What a disk buffer still holds, undelivered: lines, and bytes of records with their
    /// headers (kept for the next start).
    pub(crate) fn kept(&self) -> Option<(u64, u64)> {
        self.disk.as_ref()?;
        let inner = self.lock();
        let unconfirmed: u64 = inner.unconfirmed.iter().map(|(_, lines, _)| lines).sum();
        // (Bytes include what it held at open and never checked, whose lines are not known.)
        Some((inner.lines + unconfirmed, inner.bytes))
    }

    /// The disk buffer's folder.
    pub(crate) fn disk_dir(&self) -> Option<&std::path::Path> {
        self.disk.as_ref().map(DiskLog::dir)
    }

    /// No more batches will come: the delivery thread ends when the queue is empty. A disk
    /// buffer syncs what it took, and tells its acknowledgements, before this returns.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        if let Some(disk) = &self.disk {
            disk.close();
        }
    }

    /// A reload replaces the output: takes the batches its delivery thread has not started
    /// (they go to the replacement, first), and closes the queue; from now on the thread hands
    /// a batch it fails to deliver to the replacement ([`Queue::retired`]). (A disk buffer is
    /// only closed: a reload that keeps one keeps its queue, see [`Queue::rewind`], and does
    /// not retire it.)
    pub(crate) fn retire(&self) -> Vec<Batch> {
        if self.disk.is_some() {
            self.close();
            return Vec::new();
        }
        let mut inner = self.lock();
        inner.closed = true;
        inner.retired = true;
        inner.bytes = 0;
        let taken: Vec<Batch> = inner.items.drain(..).collect();
        for batch in &taken {
            self.settled(batch, 0);
        }
        self.not_empty.notify_all();
        self.not_full.notify_all();
        taken
    }

    /// Whether [`Queue::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether a reload replaced the output.
    pub(crate) fn retired(&self) -> bool {
        self.lock().retired
    }

    /// A reload gave this disk-buffered queue's output a new sink, and the delivery thread of
    /// the old one has ended: what that thread read and its peer may not have (the batch it
    /// had in hand, those whose lines the peer had not acknowledged) is read again from the
    /// cursor by the new thread, in order, so that nothing is lost across the switch (what the
    /// old peer had after all repeats). A failure of the old sink ([`Queue::fail`]) is
    /// forgotten: the new one has its own chance. Nothing to do for a memory queue.
    pub(crate) fn rewind(&self) {
        let Some(disk) = &self.disk else {
            return;
        };
        let mut inner = self.lock();
        let mut taken: Vec<Taken> = inner.unconfirmed.drain(..).collect();
        for &(_, lines, bytes) in &taken {
            // (Counted off when they were settled.)
            inner.bytes += Counts::one_record(bytes);
            inner.lines += lines;
            self.stats.pending(true, bytes, lines);
        }
        taken.extend(inner.in_flight.take());
        inner.waiting += taken.len() as u64;
        inner.failed = None;
        disk.rewind(&taken);
        self.not_empty.notify_all();
    }

    /// Puts `batches` before everything queued, whatever the bound: what the output this one
    /// replaces held.
    pub(crate) fn put_front(&self, batches: Vec<Batch>) {
        let mut inner = self.lock();
        for batch in batches.into_iter().rev() {
            inner.bytes += batch.data.len() as u64;
            self.stats
                .pending(true, batch.data.len() as u64, batch.lines);
            inner.items.push_front(batch);
        }
        self.not_empty.notify_all();
    }

    /// Puts back, first, a batch held in memory that [`Queue::pop_timeout`] gave and nobody
    /// delivered (its pending count was never taken off): a replaced delivery thread leaves it to
    /// its replacement.
    pub(crate) fn unpop(&self, batch: Batch) {
        let mut inner = self.lock();
        inner.bytes += batch.data.len() as u64;
        inner.items.push_front(batch);
        self.not_empty.notify_all();
    }

    /// Adds `batch` after everything queued, whatever the bound: the last lines of an output a
    /// reload removed, which it delivers before it ends.
    pub(crate) fn put_back(&self, batch: Batch) {
        let mut inner = self.lock();
        inner.bytes += batch.data.len() as u64;
        self.stats
            .pending(true, batch.data.len() as u64, batch.lines);
        inner.items.push_back(batch);
        self.not_empty.notify_all();
    }

    /// The output failed for good, with `in_hand` lines taken and not delivered: further pushes
    /// are refused with `reason` (a disk buffer takes them while it has room). Returns the lines
    /// that will never be delivered: those in hand and queued, none for a disk buffer (it keeps
    /// them for the next start).
    pub(crate) fn fail(&self, reason: String, in_hand: u64) -> u64 {
        let mut inner = self.lock();
        inner.failed = Some(reason);
        if self.disk.is_some() {
            self.not_full.notify_all();
            return 0;
        }
        let lines = in_hand + inner.items.iter().map(|b| b.lines).sum::<u64>();
        for batch in std::mem::take(&mut inner.items) {
            self.settled(&batch, 0);
        }
        inner.bytes = 0;
        self.not_full.notify_all();
        lines
    }
}

#[cfg(test)]
mod tests;
