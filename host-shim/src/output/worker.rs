//! Each output's own delivery thread: takes batches from its buffer in order and delivers each
//! through the output's [`Sink`], retrying a failed batch with exponential backoff and jitter
//! until it is delivered or the delivery deadline passes. A down output therefore holds only
//! its own buffer; whether the engine waits for it is the buffer's `when_full` policy.

use std::io;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::disk::Position;
use super::queue::{Batch, Deadline, Popped, Queue, STALL_GRACE};
pub(crate) use super::sink::{Sink, SinkError};
use crate::ack::Ack;
use crate::metrics::OutputHealth;

/// First retry delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How an output's thread ended.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Lines it never delivered.
    pub(crate) undelivered: u64,
    /// Why, when some were not delivered.
    pub(crate) error: Option<String>,
    /// Replaced by a reload: the batch it could not deliver, for its replacement to deliver.
    handed_over: Vec<Batch>,
    /// Replaced as it failed partway through a line of a file: where, and how much of that
    /// line (the first of `handed_over`) is written.
    torn: Option<Box<Torn>>,
}

/// A line an output replaced by a reload wrote only the beginning of.
#[derive(Debug)]
struct Torn {
    /// Where ([`Sink::target`]), for messages.
    path: String,
    /// The file ([`Sink::written_to`]).
    file: String,
    /// Bytes written.
    written: usize,
    /// The batch it is in (`None`: not known, never finished in place).
    batch: Option<InBatch>,
}

/// Which batch a torn line is in: a disk record, by where it ends; a batch held in memory, by
/// where its first byte is (`Segments::first_byte`: it stays there while the batch is handed
/// over and queued, no other live batch's first byte is there, and a join that moves it moves
/// the mark of a line torn elsewhere with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InBatch {
    Record(Position),
    Memory(usize),
}

impl InBatch {
    fn of(batch: &Batch) -> InBatch {
        match batch.end {
            Some(end) => InBatch::Record(end),
            None => InBatch::Memory(batch.data.first_byte()),
        }
    }
}

impl Torn {
    /// Logs that the line's beginning stays where it is, at the end of that file, and that
    /// `output`, the replacement, writes the line whole.
    fn left_behind(&self, output: &str) {
        tracing::warn!(output = %output, path = %self.path, bytes = self.written,
            "the output the reload replaced stopped partway through a line: its beginning is \
             left at the end of that file, and the line is written whole to the new one");
    }
}

impl Batch {
    /// Takes the first line off as a batch of its own (the acknowledgements stay with the
    /// rest, delivered after it); the batch holds more than one line.
    fn take_first_line(&mut self) -> Batch {
        let line = {
            let data = self.data.contiguous();
            let end = memchr::memchr(b'\n', &data).map_or(data.len(), |nl| nl + 1);
            data[..end].to_vec()
        };
        self.data.advance(line.len());
        self.lines -= 1;
        Batch {
            data: line.into(),
            lines: 1,
            acks: Vec::new(),
            end: None,
            resent: self.resent,
        }
    }
}

impl Outcome {
    /// Two outputs a reload replaced with one (output `name`, writing to `file`,
    /// [`Sink::written_to`]), this one first: what both could not deliver, in that order. A line
    /// torn by the first that hands any over is finished, as `file` ends with its beginning
    /// (when it tore it there), but for one the second tore in `file` in the batch it hands
    /// over: that file then ends with this one's beginning, so it goes first, split off its
    /// batch. A torn line that heads none of what is handed over (the second's behind the
    /// first's batches, or one carried and left in a queue) is written whole, logged.
    fn then(mut self, mut next: Outcome, file: &str, name: &str) -> Outcome {
        let torn = next.torn.take();
        if self.handed_over.is_empty() {
            // What the second hands over comes first: only its torn line heads it (one the
            // first carried heads nothing now, unless the second hands nothing over either).
            if torn.is_some() || !next.handed_over.is_empty() {
                if let Some(before) = std::mem::replace(&mut self.torn, torn) {
                    before.left_behind(name);
                }
            }
        } else if let Some(torn) = torn {
            if torn.file == file && !next.handed_over.is_empty() {
                let line = match next.handed_over[0].lines {
                    0 | 1 => next.handed_over.remove(0),
                    _ => next.handed_over[0].take_first_line(),
                };
                let torn = Box::new(Torn {
                    batch: Some(InBatch::of(&line)),
                    ..*torn
                });
                if let Some(first) = self.torn.replace(torn) {
                    first.left_behind(name);
                }
                self.handed_over.insert(0, line);
            } else {
                torn.left_behind(name);
            }
        }
        self.handed_over.extend(next.handed_over);
        Outcome {
            undelivered: self.undelivered + next.undelivered,
            error: match (self.error, next.error) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            },
            handed_over: self.handed_over,
            torn: self.torn,
        }
    }

    /// Lines it never delivered, with those it handed over that no output took (its
    /// successor's thread ended before it started).
    pub(crate) fn lines_left(&self) -> u64 {
        self.undelivered + self.handed_over.iter().map(|b| b.lines).sum::<u64>()
    }

    /// This outcome (an output replaced by a reload) followed by `later`'s (its successor).
    fn and(self, later: Outcome) -> Outcome {
        let error = match (self.error, later.error) {
            (Some(a), Some(b)) => Some(format!("{a}; then {b}")),
            (Some(a), None) => Some(format!("before a reload replaced it: {a}")),
            (None, b) => b,
        };
        Outcome {
            undelivered: self.undelivered + later.undelivered,
            error,
            handed_over: later.handed_over,
            torn: later.torn,
        }
    }
}

/// How long the delivery thread waits for a batch before it checks on what it already wrote.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Set once an output's delivery thread has ended (however it ended): an output that writes to
/// the same place waits for it.
#[derive(Debug, Default)]
pub(crate) struct Ended {
    ended: Mutex<bool>,
    cv: Condvar,
}

impl Ended {
    /// Whether the thread has ended.
    pub(crate) fn is_set(&self) -> bool {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            ended = self.cv.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Sets [`Ended`] when dropped: at the end of the delivery thread, even one that panicked.
struct SetOnDrop(Arc<Ended>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// What a new output's delivery thread waits for before it delivers anything.
#[derive(Default)]
pub(crate) struct Turn {
    /// The threads of the outputs it replaces (its queue retired: the one of its name, and
    /// those an earlier reload removed that write where it writes): joined in order, and what
    /// they could not deliver is delivered first, in that order.
    pub(crate) after: Vec<JoinHandle<Outcome>>,
    /// Other outputs still finishing that write to the same place (or had the same name): a
    /// removed output, a replaced one of another name. Waited for, so that no two threads
    /// write to one file or peer at once and the lines keep their order.
    pub(crate) wait_for: Vec<Arc<Ended>>,
}

/// Lets a delivery thread started by [`spawn`] go. Dropped unopened (a reload refused after
/// the thread was started), the thread ends at once, having done nothing.
pub(crate) struct Gate(mpsc::Sender<Turn>);

impl Gate {
    /// Lets the thread go, once `turn`'s threads have ended. Gives `turn` back if the thread is
    /// gone (it does nothing before this, so only a panic could end it).
    pub(crate) fn open(self, turn: Turn) -> Result<(), Turn> {
        self.0.send(turn).map_err(|e| e.0)
    }
}

/// Starts an output's delivery thread, which waits at its [`Gate`] until it is let go, then for
/// its [`Turn`] (the threads it waits for have ended, so that an output replacing another, a
/// reload, keeps its lines' order and never writes to the same file or peer at the same time),
/// then runs the delivery loop until its queue is closed and empty and everything written is
/// settled, or it gives up (a fatal error, or an error after the deadline). What the thread it
/// replaces did not deliver is added to what this one reports. `ended` is set when the thread
/// ends. Started before it is needed, so that a reload that cannot start it is refused before
/// anything running changes.
pub(crate) fn spawn(
    name: &str,
    sink: Box<dyn Sink>,
    queue: Arc<Queue>,
    stats: OutputHealth,
    deadline: Deadline,
    ended: Arc<Ended>,
) -> io::Result<(JoinHandle<Outcome>, Gate)> {
    #[cfg(test)]
    if FAIL_NEXT_SPAWN.with(|fail| fail.take()) {
        return Err(io::Error::other("cannot start a thread (test)"));
    }
    #[cfg(test)]
    let ends_at_once = END_NEXT_THREAD.with(|end| end.take());
    let name = name.to_owned();
    let (gate, turn) = mpsc::channel::<Turn>();
    let handle = std::thread::Builder::new()
        .name(format!("egresswatch-out-{name}"))
        .spawn(move || {
            let _ended = SetOnDrop(ended);
            #[cfg(test)]
            if ends_at_once {
                return Outcome::default();
            }
            let Ok(turn) = turn.recv() else {
                return Outcome::default();
            };
            let mut before = joined(turn.after, &sink.written_to(), &name);
            for other in &turn.wait_for {
                other.wait();
            }
            let mut worker = Worker {
                name,
                sink,
                queue,
                stats,
                deadline,
                jitter: Jitter::new(),
                torn_elsewhere: None,
                resume: None,
            };
            if let Some(before) = before.as_mut() {
                worker.take_over(before);
            }
            let mut outcome = worker.start();
            // (Replaced before it wrote anything: a line torn in this file or another is still
            // torn.)
            if outcome.torn.is_none() {
                outcome.torn = worker.resume.take().or(worker.torn_elsewhere.take());
            }
            match before {
                Some(before) => before.and(outcome),
                None => outcome,
            }
        })?;
    Ok((handle, Gate(gate)))
}

/// What the threads `after` (of the outputs output `name` replaces, writing to `file` now)
/// could not deliver, joined in order ([`Outcome::then`]).
fn joined(after: Vec<JoinHandle<Outcome>>, file: &str, name: &str) -> Option<Outcome> {
    let outcomes = after.into_iter().map(|h| h.join().unwrap_or_default());
    outcomes.reduce(|first, next| first.then(next, file, name))
}

/// Joins `after` in order on a thread of its own, for an output whose delivery thread ended
/// before it was let go (only a panic does that): what they hand over stays in its outcome, for
/// the output that replaces this one next, or named as not delivered at the end of the run
/// ([`Outcome::lines_left`]).
pub(crate) fn stranded(
    name: &str,
    after: Vec<JoinHandle<Outcome>>,
) -> io::Result<JoinHandle<Outcome>> {
    let name = name.to_owned();
    std::thread::Builder::new()
        .name("egresswatch-out-stranded".into())
        .spawn(move || {
            let mut outcome = joined(after, "", &name).unwrap_or_default();
            if !outcome.handed_over.is_empty() {
                outcome.error.get_or_insert_with(|| {
                    "its delivery thread ended before it started".to_owned()
                });
            }
            outcome
        })
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's next [`spawn`] fail, as when the system has no threads left.
    static FAIL_NEXT_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Makes the thread this thread's next [`spawn`] starts end at once, as a panic would.
    static END_NEXT_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the thread this thread's next [`spawn`] starts end at once, before its gate opens
/// (tests).
#[cfg(test)]
pub(crate) fn end_next_thread() {
    END_NEXT_THREAD.with(|end| end.set(true));
}

/// Makes this thread's next [`spawn`] fail (tests).
#[cfg(test)]
pub(crate) fn fail_next_spawn() {
    FAIL_NEXT_SPAWN.with(|fail| fail.set(true));
}

/// One output's delivery thread.
struct Worker {
    name: String,
    sink: Box<dyn Sink>,
    queue: Arc<Queue>,
    stats: OutputHealth,
    deadline: Deadline,
    jitter: Jitter,
    /// A line the output it replaced tore in another file than this one writes to, until this
    /// one delivers its first batch (which writes that line whole): passed on if this one is
    /// replaced before, so that an output writing to that file again finishes it.
    torn_elsewhere: Option<Box<Torn>>,
    /// A line the output it replaced tore in this file, finished when the batch it is in comes
    /// next ([`Torn::batch`]), not in another one (its disk record found damaged when read
    /// again, or a batch queued before it).
    resume: Option<Box<Torn>>,
}

impl Worker {
    /// Takes over from the output a reload replaced, whose thread has ended (`before`): a disk
    /// buffer kept by the reload is read again from its cursor ([`Queue::rewind`]); what a
    /// memory buffer's thread could not deliver goes first; a line of a file it stopped partway
    /// through is finished in the same file.
    fn take_over(&mut self, before: &mut Outcome) {
        self.queue.rewind();
        let name = &self.name;
        let held = std::mem::take(&mut before.handed_over);
        if !held.is_empty() {
            let lines: u64 = held.iter().map(|b| b.lines).sum();
            tracing::info!(output = %name, lines,
                "the output the reload replaced could not deliver these lines; its \
                 replacement delivers them first");
            self.queue.put_front(held);
        }
        match before.torn.take() {
            // The same file: what it wrote of the line is finished, not written twice.
            Some(torn) if torn.file == self.sink.written_to() => self.resume = Some(torn),
            Some(torn) => {
                torn.left_behind(name);
                self.torn_elsewhere = Some(torn);
            }
            None => {}
        }
    }

    /// Finishes, in `batch`, the line the output it replaced tore in this file, when `batch` is
    /// the one that line is in; otherwise (its disk record found damaged when read again, and
    /// skipped, or another batch queued before it) that line's beginning stays at the end of the
    /// file, and `batch` is written whole.
    fn resume_in(&mut self, torn: &Torn, batch: &Batch) {
        if torn.batch == Some(InBatch::of(batch)) {
            self.sink.resume(torn.written);
        } else {
            tracing::warn!(output = %self.name, path = %torn.path, bytes = torn.written,
                "the output the reload replaced stopped partway through a line that is not \
                 written next (its record found damaged when read again, or another batch \
                 first): its beginning is left at the end of the file");
        }
    }

    /// Checks what a disk buffer held at open (the input listening meanwhile), then delivers.
    fn start(&mut self) -> Outcome {
        if let Err(reason) = self.queue.check_backlog(&self.deadline) {
            if self.replaced() && !self.deadline.passed() {
                // Its replacement keeps the buffer and checks on.
                return self.hand_back();
            }
            let reason = format!("its disk buffer could not be read: {reason}");
            let undelivered = self.queue.fail(reason.clone(), 0);
            tracing::error!(output = %self.name, undelivered, error = %reason, "output gave up");
            return Outcome {
                undelivered,
                error: Some(reason),
                ..Outcome::default()
            };
        }
        self.run()
    }

    /// Whether a reload replaced the output: its queue retired (a memory buffer), or its
    /// deadline marked (a disk buffer, whose queue the replacement keeps).
    fn replaced(&self) -> bool {
        self.queue.retired() || self.deadline.replaced()
    }

    fn run(&mut self) -> Outcome {
        if !self.replaced() {
            self.sink.probe(&self.deadline);
        }
        loop {
            // Replaced by a reload that keeps the disk buffer: it stops here, between batches.
            if self.queue.is_on_disk() && self.deadline.replaced() {
                return self.end_replaced();
            }
            let popped = match self.queue.pop_timeout(IDLE_POLL) {
                // A disk buffer it cannot read back, at the end: it keeps what it holds.
                Popped::Empty if self.queue.is_closed() && self.deadline.passed() => Popped::Closed,
                popped => popped,
            };
            match popped {
                Popped::Batch(mut batch) => {
                    // Replaced while it waited for this batch (a reload that keeps the disk
                    // buffer): not delivered here. A record read from disk stays in flight, read
                    // again by the replacement; a batch held in memory (what a removed output
                    // left, put in this queue) goes back to the front for the replacement.
                    if self.queue.is_on_disk() && self.deadline.replaced() {
                        if batch.end.is_none() {
                            self.queue.unpop(batch);
                        }
                        return self.end_replaced();
                    }
                    if let Some(torn) = self.resume.take() {
                        self.resume_in(&torn, &batch);
                    }
                    if !self.sink.takes_pieces() {
                        let was = InBatch::of(&batch);
                        batch.data.join();
                        // A line torn in another file may be in this batch: it is known by
                        // where the batch's bytes are now.
                        if let Some(torn) = self.torn_elsewhere.as_mut() {
                            if torn.batch == Some(was) {
                                torn.batch = Some(InBatch::of(&batch));
                            }
                        }
                    }
                    let delivered = self.with_retries(batch.lines, |sink, deadline| {
                        sink.deliver_segments(&batch.data, deadline).map(|()| 0)
                    });
                    if delivered.is_ok() {
                        self.torn_elsewhere = None;
                        self.count(&batch, batch.lines);
                        batch.acks.drain(..).for_each(Ack::delivered);
                    }
                    // (A disk buffer keeps what the peer has not acknowledged yet, and a batch
                    // not delivered: it stays past the cursor.)
                    if !self.queue.is_on_disk() {
                        self.queue.settled(&batch, 0);
                    } else if delivered.is_ok() {
                        let outstanding = self.sink.outstanding_lines();
                        self.queue.settled(&batch, outstanding);
                    }
                    if let Err(mut outcome) = delivered {
                        if let Some(torn) = outcome.torn.as_mut() {
                            torn.batch = Some(InBatch::of(&batch));
                        }
                        if self.queue.retired() {
                            self.hand_over(batch, &mut outcome);
                            // What it took over from the output it replaced, put in its queue
                            // after a second reload had retired it (and taken what it held).
                            outcome.handed_over.extend(self.queue.retire());
                        }
                        return outcome;
                    }
                }
                // Quiet: see whether what was written earlier still needs writing again (a
                // connection that broke after the last batch).
                Popped::Empty => {
                    match self.with_retries(0, |sink, deadline| sink.settle(deadline)) {
                        Ok(outstanding) => self.queue.confirm(outstanding),
                        Err(outcome) => return outcome,
                    }
                }
                // The end: wait until the peer has everything, or the deadline (replaced by a
                // reload: until the peer has taken nothing for a moment).
                Popped::Closed => {
                    let settled = self.settle_all(None);
                    if let Ok(outstanding) = settled {
                        self.queue.confirm(outstanding);
                    }
                    return match settled {
                        // (A disk buffer keeps what is not acknowledged for the next start.)
                        Ok(0) => Outcome::default(),
                        Ok(_) if self.queue.is_on_disk() => Outcome::default(),
                        // Replaced by a reload: the replacement writes it again.
                        Ok(_) if self.queue.retired() => Outcome {
                            handed_over: self.unconfirmed().into_iter().collect(),
                            ..Outcome::default()
                        },
                        Ok(lines) => Outcome {
                            undelivered: lines,
                            error: Some(format!(
                                "{}: not acknowledged by the peer by the delivery deadline",
                                self.sink.describe()
                            )),
                            handed_over: Vec::new(),
                            torn: None,
                        },
                        Err(outcome) => outcome,
                    };
                }
            }
        }
    }

    /// Waits until the peer has acknowledged everything written, or the deadline (replaced by a
    /// reload: until the peer has taken nothing for a moment), or `until`; returns how many
    /// lines it has not.
    fn settle_all(&mut self, until: Option<Instant>) -> Result<u64, Outcome> {
        let mut acknowledged = (u64::MAX, Instant::now());
        self.with_retries(0, |sink, deadline| {
            let outstanding = sink.settle(deadline)?;
            if outstanding != acknowledged.0 {
                acknowledged = (outstanding, Instant::now());
            }
            let stalled = deadline.gives_up_stalled(acknowledged.1)
                || until.is_some_and(|until| Instant::now() >= until);
            if outstanding > 0 && !deadline.passed() && !stalled {
                let (until, replaced) = (Instant::now(), deadline.replaced());
                sleep_until(until + Duration::from_millis(20), deadline, replaced);
                return Err(SinkError::Pending);
            }
            Ok(outstanding)
        })
    }

    /// Replaced by a reload that keeps the disk buffer, between batches: waits for the peer to
    /// acknowledge what it wrote (as at the end, [`Worker::settle_all`], but [`STALL_GRACE`] at
    /// most: it only spares repeats, the disk holds the rest) so that less repeats, moves the
    /// cursor past what it has, and stops; its replacement reads the rest again.
    fn end_replaced(&mut self) -> Outcome {
        match self.settle_all(Some(Instant::now() + STALL_GRACE)) {
            Ok(outstanding) => {
                self.queue.confirm(outstanding);
                tracing::info!(output = %self.name, unacknowledged_lines = outstanding,
                    "output replaced by a reload: it stops, and its replacement delivers on \
                     from the disk buffer's cursor");
                self.hand_back()
            }
            Err(outcome) => outcome,
        }
    }

    /// Replaced by a reload, it stops: what it wrote that the peer may not have goes to the
    /// replacement. With a memory buffer, as a batch (the batch in hand is added by the caller,
    /// [`Worker::hand_over`]), and a TCP connection is reset so that its kernel does not send
    /// that too. A disk buffer still holds it past its cursor, and the replacement reads it
    /// again from there ([`Queue::rewind`]). A connection to another peer is closed, not reset,
    /// when the thread ends (what that peer's kernel acknowledged and the peer has not read yet
    /// stays readable; what it had not may then arrive twice); one to the peer the replacement
    /// writes to is reset, so that its old lines never arrive after the replacement's. A file's
    /// bytes of the batch it stopped in are named ([`Outcome::torn`]) so that they are not
    /// written twice.
    fn hand_back(&mut self) -> Outcome {
        if !self.queue.is_on_disk() {
            return Outcome {
                handed_over: self.unconfirmed().into_iter().collect(),
                ..Outcome::default()
            };
        }
        if self.deadline.same_target() {
            drop(self.sink.take_unconfirmed());
        }
        let written = self.sink.take_written();
        Outcome {
            // (The caller names the batch.)
            torn: (written > 0).then(|| {
                Box::new(Torn {
                    path: self.sink.target(),
                    file: self.sink.written_to(),
                    written,
                    batch: None,
                })
            }),
            ..Outcome::default()
        }
    }

    /// Hands the batch in hand, which it failed to deliver, to the output that replaces this one
    /// (a reload): for a sink whose writes are final (a file), only what it did not write, from
    /// the start of the line it stopped in ([`Outcome::torn`] says how much of that is
    /// written), so that nothing is written twice and no line is left torn.
    fn hand_over(&mut self, mut batch: Batch, outcome: &mut Outcome) {
        let written = self.sink.take_written().min(batch.data.len());
        // (Nothing written, the usual case for all but files: no copy of a batch in pieces.)
        let (line, done) = match written {
            0 => (0, 0),
            _ => {
                let data = batch.data.contiguous();
                let line = memchr::memrchr(b'\n', &data[..written]).map_or(0, |nl| nl + 1);
                let done = memchr::memchr_iter(b'\n', &data[..line]).count() as u64;
                (line, done)
            }
        };
        if line > 0 {
            self.count(&batch, done);
            batch.data.advance(line);
            batch.lines -= done;
        }
        if batch.data.is_empty() {
            batch.acks.drain(..).for_each(Ack::delivered);
            return;
        }
        if written > line && outcome.handed_over.is_empty() {
            outcome.torn = Some(Box::new(Torn {
                path: self.sink.target(),
                file: self.sink.written_to(),
                written: written - line,
                batch: Some(InBatch::of(&batch)),
            }));
        }
        outcome.handed_over.push(batch);
    }

    /// Counts `lines` of `batch` as delivered, or as resent when the output this one replaced
    /// wrote (and counted) them before.
    fn count(&self, batch: &Batch, lines: u64) {
        if batch.resent {
            self.stats.resent(lines);
        } else {
            self.stats.delivered(lines);
        }
    }

    /// What the sink wrote that its peer may not have, as a batch for the output that replaces
    /// this one (a reload).
    fn unconfirmed(&mut self) -> Option<Batch> {
        let data = self.sink.take_unconfirmed();
        let lines = memchr::memchr_iter(b'\n', &data).count() as u64;
        (lines > 0).then_some(Batch {
            data: data.into(),
            lines,
            acks: Vec::new(),
            end: None,
            resent: true,
        })
    }

    /// Runs `op` until it succeeds, retrying failures with backoff and jitter; gives up on a
    /// fatal error or once the deadline has passed, failing the queue: `lines` (those of the
    /// batch in hand) and everything queued are then undelivered (kept, with a disk buffer).
    fn with_retries(
        &mut self,
        lines: u64,
        mut op: impl FnMut(&mut dyn Sink, &Deadline) -> Result<u64, SinkError>,
    ) -> Result<u64, Outcome> {
        let mut backoff = BACKOFF_START;
        let mut failures = 0u64;
        loop {
            match op(self.sink.as_mut(), &self.deadline) {
                Ok(n) => {
                    // (A delivered batch marks the output up; a check that found nothing to do
                    // says nothing about the peer.)
                    if failures > 0 {
                        self.stats.set_up(true);
                        tracing::info!(output = %self.name, target = %self.sink.describe(),
                            failures, "output delivers again");
                    }
                    return Ok(n);
                }
                Err(SinkError::Pending) => {}
                Err(e) => {
                    failures += 1;
                    self.stats.failed(e.message());
                    // (Read before the queue: a reload retires it, then marks the deadline.)
                    let replaced = self.deadline.replaced();
                    if self.replaced() {
                        // Replaced by a reload: what it cannot deliver goes to the replacement
                        // (the batch in hand, by the caller, or left on disk).
                        let reason = format!("{}: {}", self.sink.describe(), e.message());
                        tracing::warn!(output = %self.name, error = %reason,
                            "output replaced by a reload and failing: it stops, and its \
                             replacement delivers what it held");
                        return Err(self.hand_back());
                    }
                    if matches!(e, SinkError::Fatal(_)) || self.deadline.passed() {
                        let reason = format!("{}: {}", self.sink.describe(), e.message());
                        let undelivered = self
                            .queue
                            .fail(reason.clone(), lines + self.sink.outstanding_lines());
                        tracing::error!(output = %self.name, undelivered, error = %reason,
                            "output gave up");
                        return Err(Outcome {
                            undelivered,
                            error: Some(reason),
                            handed_over: Vec::new(),
                            torn: None,
                        });
                    }
                    if failures == 1 {
                        tracing::warn!(output = %self.name, target = %self.sink.describe(),
                            error = %e.message(),
                            "output cannot deliver; holding its events and retrying");
                    } else {
                        tracing::debug!(output = %self.name, error = %e.message(), ?backoff,
                            "output retry failed");
                    }
                    let until = Instant::now() + self.jitter.spread(backoff);
                    sleep_until(until, &self.deadline, replaced);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Sleeps until `until` in short steps, waking early when the deadline passes or a reload
/// replaces the output (a retry's wait, so that its replacement gets what it holds at once):
/// when [`Deadline::replaced`] is no longer `replaced` (as read before the caller last looked
/// at the queue).
fn sleep_until(until: Instant, deadline: &Deadline, replaced: bool) {
    while Instant::now() < until && !deadline.passed() && deadline.replaced() == replaced {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// Spreads retry delays so that many outputs (or many instances) do not retry in step: a delay
/// `d` becomes a uniform draw from `d/2 ..= d`.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn spread(&mut self, d: Duration) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.0 % (half.as_nanos() as u64 + 1))
    }
}

#[cfg(test)]
mod tests;
