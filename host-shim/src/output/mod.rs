//! Named outputs: where lines go once the detector has spoken.
//!
//! Every output is independent: the engine thread appends each line to the output's current
//! batch ([`Outputs::write_line`], a copy into a buffer, or [`Outputs::write_shared`], a range
//! of a reader's block the batch shares, and nothing else), and after each input
//! block hands the batches over ([`Outputs::commit`]) to each output's bounded buffer
//! ([`queue`]). Each output has its own delivery thread ([`worker`]) with its own retry loop, so
//! a down output holds only its own buffer; when that buffer is full, the output's `when_full`
//! policy decides whether the engine waits (`block`: backpressure) or the batch is dropped
//! (`drop_newest`: counted, logged). The buffer is in memory, or on disk ([`disk`]: kept across
//! restarts and crashes, delivered first at the next start). Sinks: standard output and files
//! ([`sink::WriterSink`]), TCP (plain or TLS: [`tls_stream`]) and Unix sockets ([`socket`]),
//! HTTP ([`http`]: acknowledged by the peer's 2xx).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egresswatch_plugin_api::DEFAULT_OUTPUT;

mod build;
mod deadline;
mod disk;
#[cfg(test)]
mod disk_checks;
#[cfg(test)]
mod disk_queue;
#[cfg(test)]
mod disk_reload;
mod http;
mod queue;
mod sink;
mod socket;
mod tls_stream;
mod worker;

pub use crate::metrics::OutputStatus;
pub(crate) use queue::Deadline;

use crate::ack::Ack;
use crate::config::{BufferConfig, BufferKind, HostConfig, OutputConfig, WhenFull};
use crate::line_buf::LineBuf;
use crate::metrics::{Metrics, OutputHealth};
pub(crate) use build::same_folder;
use build::{open_buffer, set_up_if_open, sink};
use queue::{Batch, Pushed, Queue, Refused, Segments};
pub(crate) use sink::reopen_files;
use sink::{Sink, WriterSink};
use worker::{Ended, Gate, Outcome, Turn};

/// Capacity an output's batch buffer takes at its first line after a commit (a batch taken
/// whole, [`Outputs::write_owned`], or sized by [`Outputs::reserve`], allocates nothing more).
const BATCH_CAPACITY: usize = 64 * 1024;

/// How often dropped lines are logged (the first drop at once, then a summary this often).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The named outputs, as the engine thread sees them.
pub(crate) struct Outputs {
    outputs: BTreeMap<String, Output>,
    deadline: Deadline,
    /// Outputs a reload removed, finishing what they hold (until their own deadline).
    retired: Vec<(String, Output)>,
    /// Outputs a reload removed or replaced whose thread may still run: a new output of the
    /// same name or target waits for them.
    ending: Vec<Ending>,
}

/// An output a reload removed or replaced, as a new one sees it.
struct Ending {
    name: String,
    target: String,
    ended: Arc<Ended>,
}

struct Output {
    /// Lines written since the last commit.
    batch: Segments,
    lines: u64,
    /// The acknowledgements of the requests whose lines are in `batch`.
    acks: Vec<Ack>,
    queue: Arc<Queue>,
    when_full: WhenFull,
    stats: OutputHealth,
    worker: Option<JoinHandle<Outcome>>,
    /// Where it writes ([`Sink::target`]).
    target: String,
    /// Set when its delivery thread has ended.
    ended: Arc<Ended>,
    /// When its delivery thread gives up: the run's deadline, or earlier once a reload
    /// replaced or removed it.
    deadline: Deadline,
    /// When drops were last logged, and how many since.
    drops: Option<(Instant, u64)>,
    /// Lines its buffer refused (the output had failed, or the deadline passed).
    refused: u64,
}

impl Output {
    /// Makes room for `bytes` more: a batch just handed over has no buffer, and takes
    /// [`BATCH_CAPACITY`] at least for its first line.
    fn room(&mut self, bytes: usize) {
        if self.batch.own_capacity() == 0 {
            self.batch.reserve(bytes.max(BATCH_CAPACITY));
        }
    }

    /// The lines written since the last commit, taken. A buffer far larger than its lines
    /// gives its spare room back first, as [`Outputs::write_owned`] does for a block: the
    /// engine makes room in `default` for the rest of a plugin batch's lines before writing
    /// them one by one ([`Outputs::reserve`]), and most of them may go elsewhere.
    fn take_batch(&mut self) -> Option<Batch> {
        if self.batch.is_empty() {
            return None;
        }
        if !self.batch.keeps_whole() {
            self.batch.fit();
        }
        Some(Batch {
            data: std::mem::take(&mut self.batch),
            lines: std::mem::take(&mut self.lines),
            acks: std::mem::take(&mut self.acks),
            end: None,
            resent: false,
        })
    }

    /// Hands the batch to the buffer, applying the `when_full` policy. Returns whether it was
    /// taken (or dropped by the policy): a push blocked on a full buffer stops waiting once
    /// `wake` is set, and the output keeps the batch.
    fn commit(
        &mut self,
        name: &str,
        deadline: &Deadline,
        wake: Option<&AtomicBool>,
    ) -> io::Result<bool> {
        let Some(batch) = self.take_batch() else {
            return Ok(true);
        };
        let lines = batch.lines;
        match self
            .queue
            .push_or_hold(batch, self.when_full, deadline, wake)
        {
            Ok(Pushed::Queued) => Ok(true),
            Ok(Pushed::Dropped(batch)) => {
                self.stats.dropped(batch.lines);
                batch.acks.into_iter().for_each(Ack::dropped);
                log_drops(name, &mut self.drops, batch.lines);
                Ok(true)
            }
            Ok(Pushed::Held(batch)) => {
                // (Nothing was written since it was taken.)
                (self.batch, self.lines, self.acks) = (batch.data, batch.lines, batch.acks);
                Ok(false)
            }
            Err(Refused::Failed(reason)) => {
                self.refused += lines;
                Err(io::Error::other(format!(
                    "outputs.{name}: failed: {reason}"
                )))
            }
            Err(Refused::Deadline) => {
                self.refused += lines;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("outputs.{name}: its buffer was still full at the delivery deadline"),
                ))
            }
        }
    }
}

/// An output that did not deliver everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The output.
    pub name: String,
    /// Lines it never delivered.
    pub lines: u64,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outputs.{}: {} line(s) not delivered ({})",
            self.name, self.lines, self.reason
        )
    }
}

impl Outputs {
    /// Opens every output the configuration names (`default` is standard output unless
    /// configured otherwise) and starts their delivery threads. They give up on what they
    /// cannot deliver once `deadline` passes. Each output reports to `metrics`.
    pub(crate) fn open(
        config: &HostConfig,
        deadline: &Deadline,
        metrics: &Metrics,
    ) -> io::Result<Self> {
        let mut outputs = Outputs {
            outputs: BTreeMap::new(),
            deadline: deadline.clone(),
            retired: Vec::new(),
            ending: Vec::new(),
        };
        if !config.outputs.contains_key(DEFAULT_OUTPUT) {
            metrics.output(DEFAULT_OUTPUT).set_up(true);
            outputs.start(
                DEFAULT_OUTPUT,
                Box::new(WriterSink::stdout()),
                &BufferConfig::default(),
                metrics.output(DEFAULT_OUTPUT),
            )?;
        }
        for (name, output) in &config.outputs {
            let stats = metrics.output(name);
            let sink = sink(config, name, output, &stats)?;
            set_up_if_open(output, &stats);
            // (A disk buffer's folder, relative to the config file.)
            let mut buffer = output.buffer().clone();
            buffer.path = buffer.path.map(|p| config.resolve(&p));
            outputs.start(name, sink, &buffer, stats)?;
        }
        Ok(outputs)
    }

    /// Outputs over writers, for tests.
    #[cfg(test)]
    pub(crate) fn from_writers(writers: Vec<(String, Box<dyn io::Write + Send>)>) -> Self {
        let mut outputs = Outputs {
            outputs: BTreeMap::new(),
            deadline: Deadline::default(),
            retired: Vec::new(),
            ending: Vec::new(),
        };
        for (name, writer) in writers {
            outputs
                .start(
                    &name,
                    Box::new(WriterSink::writer(writer)),
                    &BufferConfig::default(),
                    Metrics::new(Default::default()).output(&name),
                )
                .expect("start an output thread");
        }
        outputs
    }

    /// The named output's batch (tests check how its buffer grows and whether it is a copy).
    #[cfg(test)]
    pub(crate) fn batch(&self, name: &str) -> &Segments {
        &self.outputs[name].batch
    }

    /// Starts output `name`: its buffer (a disk buffer's `path` resolved already) and its
    /// delivery thread.
    fn start(
        &mut self,
        name: &str,
        sink: Box<dyn Sink>,
        buffer: &BufferConfig,
        stats: OutputHealth,
    ) -> io::Result<()> {
        let ready = self.ready(name, sink, buffer, stats, None)?;
        self.put_in_place(name, ready, Vec::new(), None);
        Ok(())
    }

    /// Output `name` made: its buffer (`kept`: the running one's, a disk buffer a reload keeps),
    /// and its delivery thread started, waiting at its gate. Dropped, the thread ends having
    /// done nothing.
    fn ready(
        &self,
        name: &str,
        sink: Box<dyn Sink>,
        buffer: &BufferConfig,
        stats: OutputHealth,
        kept: Option<Arc<Queue>>,
    ) -> io::Result<Ready> {
        let queue = match kept {
            Some(queue) => queue,
            None => Arc::new(open_buffer(name, buffer, &stats)?),
        };
        let deadline = self.deadline.child();
        let (target, describe) = (sink.target(), sink.describe());
        let ended = Arc::new(Ended::default());
        let (shared, health) = (Arc::clone(&queue), stats.clone());
        let (worker, gate) = worker::spawn(
            name,
            sink,
            shared,
            health,
            deadline.clone(),
            Arc::clone(&ended),
        )?;
        Ok(Ready {
            queue,
            max_bytes: buffer.max_bytes,
            when_full: buffer.when_full,
            stats,
            worker,
            gate,
            target,
            describe,
            ended,
            deadline,
        })
    }

    /// Puts `ready` in place as output `name`, holding `pending` (lines not yet handed to a
    /// buffer), and lets its thread go: it delivers once `after` (the threads of the outputs
    /// it replaces, joined in order) and every other output still finishing that had its name
    /// or writes where it writes have ended. Cannot fail.
    fn put_in_place(
        &mut self,
        name: &str,
        ready: Ready,
        after: Vec<JoinHandle<Outcome>>,
        pending: Option<Batch>,
    ) {
        self.ending.retain(|e| !e.ended.is_set());
        let wait_for = self
            .ending
            .iter()
            .filter(|e| e.name == name || e.target == ready.target)
            .map(|e| Arc::clone(&e.ended))
            .collect();
        let mut worker = Some(ready.worker);
        if let Err(turn) = ready.gate.open(Turn { after, wait_for }) {
            // (Its thread ended before it was let go: only a panic does that. What those it
            // replaces hand over is kept for the next output there, or named at the end.)
            tracing::error!(output = %name, replaced = turn.after.len(),
                "the output's delivery thread ended before it started; its lines are held until \
                 the end of the run");
            if !turn.after.is_empty() {
                match worker::stranded(name, turn.after) {
                    Ok(joiner) => worker = Some(joiner),
                    Err(e) => tracing::error!(output = %name, error = %e,
                        "cannot start a thread to collect what the outputs it replaces hold: \
                         their lines are not named at the end of the run"),
                }
            }
        }
        let (batch, lines, acks) = pending.map_or_else(
            || (Segments::default(), 0, Vec::new()),
            |b| (b.data, b.lines, b.acks),
        );
        self.outputs.insert(
            name.to_owned(),
            Output {
                batch,
                lines,
                acks,
                queue: ready.queue,
                when_full: ready.when_full,
                stats: ready.stats,
                worker,
                target: ready.target,
                ended: ready.ended,
                deadline: ready.deadline,
                drops: None,
                refused: 0,
            },
        );
    }

    /// Appends one line (without terminator) and a newline to the named output's batch, or to
    /// `default`'s when there is no output of that name.
    pub(crate) fn write_line(&mut self, name: &str, line: &[u8]) -> io::Result<()> {
        let output = self.get(name)?;
        output.room(line.len() + 1);
        output.batch.extend_from_slice(line);
        output.batch.push(b'\n');
        output.lines += 1;
        Ok(())
    }

    /// Appends `lines` consecutive lines, `\n`-separated, without the last terminator, and a
    /// newline: one copy for a run of lines.
    pub(crate) fn write_run(&mut self, name: &str, run: &[u8], lines: u64) -> io::Result<()> {
        let output = self.get(name)?;
        output.room(run.len() + 1);
        output.batch.extend_from_slice(run);
        output.batch.push(b'\n');
        output.lines += lines;
        Ok(())
    }

    /// Appends `lines` lines, each ending in `\n`, that lie in `range` of `block`, without
    /// copying them: the batch shares the block (a reader's, whose other lines were flagged) and
    /// the sink writes the pieces together ([`queue::Segments`]).
    pub(crate) fn write_shared(
        &mut self,
        name: &str,
        block: &Arc<LineBuf>,
        range: Range<usize>,
        lines: u64,
    ) -> io::Result<()> {
        let output = self.get(name)?;
        output.batch.push_shared(block, range);
        output.lines += lines;
        Ok(())
    }

    /// Appends `lines` lines, each ending in `\n`, that `data` holds: taken as the batch when
    /// nothing was written to the output since the last commit (no copy), appended otherwise.
    pub(crate) fn write_owned(&mut self, name: &str, data: LineBuf, lines: u64) -> io::Result<()> {
        let output = self.get(name)?;
        // A buffer far larger than its lines is copied, not kept: the queue bounds the bytes
        // of its batches, not their capacity, and a reader's block (256 KiB or more) holding
        // one small event would otherwise be held whole while an output is down.
        if output.batch.is_empty() && data.keeps_whole() {
            output.batch = data.into();
        } else {
            output.batch.extend_from_slice(&data);
        }
        output.lines += lines;
        Ok(())
    }

    /// Appends part of a line, without terminator; [`Outputs::finish_line`] ends it.
    pub(crate) fn write_partial(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let output = self.get(name)?;
        output.room(bytes.len());
        output.batch.extend_from_slice(bytes);
        Ok(())
    }

    /// Makes room at once for `bytes` more in the named output's batch (or `default`'s), so
    /// that the lines written next do not grow it step by step (each step a copy of what it
    /// holds): the engine asks for the rest of a plugin batch's worth before it writes its
    /// lines one by one.
    pub(crate) fn reserve(&mut self, name: &str, bytes: usize) -> io::Result<()> {
        self.get(name)?.batch.reserve(bytes);
        Ok(())
    }

    /// Ends a line begun with [`Outputs::write_partial`].
    pub(crate) fn finish_line(&mut self, name: &str) -> io::Result<()> {
        let output = self.get(name)?;
        output.batch.push(b'\n');
        output.lines += 1;
        Ok(())
    }

    fn get(&mut self, name: &str) -> io::Result<&mut Output> {
        let key = if self.outputs.contains_key(name) {
            name
        } else {
            DEFAULT_OUTPUT
        };
        self.outputs
            .get_mut(key)
            .ok_or_else(|| io::Error::other("no default output"))
    }

    /// Ties the lines written since the last commit to `ack`: each output holding some of them
    /// carries a copy of it with their batch, and says it delivered once the batch is.
    pub(crate) fn attach(&mut self, ack: &Ack) {
        for output in self.outputs.values_mut() {
            if !output.batch.is_empty() {
                output.acks.push(ack.clone());
            }
        }
    }

    /// Hands every output's batch to its buffer, applying its `when_full` policy. Errs when an
    /// output has failed for good, or its buffer stayed full past the delivery deadline.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        self.commit_or_hold(None).map(|_| ())
    }

    /// [`Outputs::commit`], but an output whose full `block` buffer holds the engine up stops
    /// waiting once `wake` is set (SIGHUP) and keeps its batch, so that the engine thread can
    /// take the reload (which may move that output) and commit again. Returns whether every
    /// batch was handed over.
    pub(crate) fn commit_or_hold(&mut self, wake: Option<&AtomicBool>) -> io::Result<bool> {
        // Every output gets its batch even when one fails: a failed route must not cost
        // `default` the block.
        let mut first = Ok(true);
        for (name, output) in &mut self.outputs {
            match output.commit(name, &self.deadline, wake) {
                Ok(true) => {}
                Ok(false) => {
                    if first.is_ok() {
                        first = Ok(false);
                    }
                }
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Each output's figures now.
    pub(crate) fn statuses(&self) -> Vec<OutputStatus> {
        self.outputs.values().map(|o| o.stats.status()).collect()
    }

    /// Lets every output deliver what it holds (until the deadline, which the caller sets) and
    /// stops them. Returns each output's figures, and what was not delivered, per output.
    pub(crate) fn finish(&mut self) -> (Vec<OutputStatus>, Vec<Undelivered>) {
        let mut undelivered = Vec::new();
        for (name, output) in &mut self.outputs {
            if let Err(e) = output.commit(name, &self.deadline, None) {
                tracing::debug!(error = %e, "last commit at shutdown");
            }
            output.queue.close();
        }
        let mut retired = std::mem::take(&mut self.retired);
        let current = self.outputs.iter_mut().map(|(n, o)| (n.as_str(), o));
        for (name, output) in retired
            .iter_mut()
            .map(|(n, o)| (n.as_str(), o))
            .chain(current)
        {
            let outcome = output
                .worker
                .take()
                .map(|w| w.join().unwrap_or_default())
                .unwrap_or_default();
            let mut lines = outcome.lines_left();
            let mut reason = outcome.error;
            if output.refused > 0 {
                lines += output.refused;
                reason.get_or_insert_with(|| {
                    "its buffer was still full at the delivery deadline".to_owned()
                });
            }
            if let (Some((kept, bytes)), Some(dir)) = (output.queue.kept(), output.queue.disk_dir())
            {
                if kept > 0 || bytes > 0 {
                    tracing::warn!(output = %name, lines = kept, bytes, path = %dir.display(),
                        "not delivered by the deadline: kept in the output's disk buffer, \
                         delivered first at the next start");
                }
            }
            if let Some((_, n)) = output.drops.take().filter(|(_, n)| *n > 0) {
                tracing::warn!(output = %name, dropped = n, "output buffer full: lines dropped (drop_newest)");
            }
            if lines > 0 {
                undelivered.push(Undelivered {
                    name: name.to_owned(),
                    lines,
                    reason: reason.unwrap_or_else(|| "unknown".to_owned()),
                });
            }
        }
        (self.statuses(), undelivered)
    }
}

/// What a reload changes in the outputs: for each output added or changed, the new one, built
/// (files opened, certificates read, its delivery thread started, waiting at its gate); for
/// each one removed, `None`. Dropped (the reload refused), the new threads end having done
/// nothing.
pub(crate) struct Changes(Vec<(String, Option<(Ready, OutputConfig)>)>);

/// An output made and its delivery thread started, not yet in place ([`Outputs::ready`]).
pub(crate) struct Ready {
    queue: Arc<Queue>,
    /// Its buffer's bound (set on a kept disk buffer when put in place).
    max_bytes: u64,
    when_full: WhenFull,
    stats: OutputHealth,
    worker: JoinHandle<Outcome>,
    gate: Gate,
    target: String,
    describe: String,
    ended: Arc<Ended>,
    deadline: Deadline,
}

impl Outputs {
    /// Builds the outputs `names` as `config` describes them (a reload's new configuration),
    /// without touching the running ones: an output that cannot be built (a file that cannot
    /// be opened, a certificate that cannot be read, a thread that cannot be started) is an
    /// error naming it, and the reload is refused. A name `config` no longer has is a removal
    /// (`default`, unless configured, is standard output).
    pub(crate) fn prepare(
        &self,
        config: &HostConfig,
        names: &[String],
        metrics: &Metrics,
    ) -> io::Result<Changes> {
        let stdout = OutputConfig::Stdout {
            buffer: BufferConfig::default(),
        };
        let mut changes = Vec::new();
        for name in names {
            let output = match config.outputs.get(name) {
                Some(output) => output,
                None if name == DEFAULT_OUTPUT => &stdout,
                None => {
                    changes.push((name.clone(), None));
                    continue;
                }
            };
            let stats = metrics.output(name);
            let built = sink(config, name, output, &stats)?;
            let mut buffer = output.buffer().clone();
            buffer.path = buffer.path.map(|p| config.resolve(&p));
            let kept = self.kept_buffer(name, &buffer);
            let ready = self.ready(name, built, &buffer, stats, kept).map_err(|e| {
                io::Error::new(e.kind(), format!("output {name}: cannot be started: {e}"))
            })?;
            changes.push((name.clone(), Some((ready, output.clone()))));
        }
        Ok(Changes(changes))
    }

    /// Puts `changes` in place (a reload, between blocks); it cannot fail. Each changed
    /// output's buffer is closed, and its delivery thread goes on delivering what it holds
    /// until its own deadline (`shutdown_timeout_secs` from now), as at a stop; the new output
    /// takes the lines from now on (and those written since the last commit) and delivers them
    /// once the old one has finished, so that nothing is lost between them and each output's
    /// order is kept; it also waits for any other output still finishing that had its name or
    /// writes to the same place (removed by an earlier reload, or renamed), so that no two
    /// threads write to one file or peer. A removed output finishes the same way, with the
    /// lines written to it since the last commit. What a replaced or removed output could not
    /// deliver is logged by it and reported at the end of the run.
    pub(crate) fn apply(&mut self, changes: Changes, metrics: &Metrics) {
        // Every old one first: a new output waits for any old one of its name or target, even
        // one listed after it (a rename).
        let mut replaced = BTreeMap::new();
        for (name, change) in &changes.0 {
            let Some(mut old) = self.outputs.remove(name) else {
                continue;
            };
            old.deadline.start();
            self.ending.push(Ending {
                name: name.clone(),
                target: old.target.clone(),
                ended: Arc::clone(&old.ended),
            });
            let pending = old.take_batch();
            if let Some((ready, _)) = change {
                // What it has not started goes to the replacement; what it fails to deliver
                // from now on too. A disk buffer the replacement keeps stays open: the old
                // thread stops between batches, and the new one reads on from the cursor.
                let held = if Arc::ptr_eq(&ready.queue, &old.queue) {
                    ready.queue.set_max_bytes(ready.max_bytes);
                    if ready.target == old.target {
                        old.deadline.set_same_target();
                    }
                    Vec::new()
                } else {
                    old.queue.retire()
                };
                old.deadline.set_replaced();
                let worker = old.worker.take();
                replaced.insert(name.clone(), (worker, old.refused, held, pending));
            } else {
                if let Some(batch) = pending {
                    old.queue.put_back(batch);
                }
                old.queue.close();
                self.retired.push((name.clone(), old));
            }
        }
        for (name, change) in changes.0 {
            let Some((ready, output)) = change else {
                metrics.forget_output(&name);
                tracing::info!(output = %name, "output removed by the reload; it finishes delivering what it holds");
                continue;
            };
            let (replaced_one, mut carried, held, pending) =
                replaced.remove(&name).unwrap_or_default();
            // Each output an earlier reload removed, still finishing, with its name or target
            // (added back, or renamed): replaced by this one as if it had never been removed, so
            // that it stops retrying and hands over what it holds instead of holding this one
            // up; removed before, so before the one of its name this reload replaced.
            let (mut after, mut handed) = (Vec::new(), Vec::new());
            for (old_name, mut old) in self.take_retired(&name, &ready.target) {
                handed.extend(old.queue.retire());
                old.deadline.set_replaced();
                after.extend(old.worker.take());
                carried += old.refused;
                tracing::info!(output = %name, removed = %old_name,
                    "an output removed by an earlier reload is still finishing where this \
                     one writes: it hands what it has not delivered to this one");
            }
            after.extend(replaced_one);
            handed.extend(held);
            set_up_if_open(&output, &ready.stats);
            tracing::info!(output = %name, target = %ready.describe,
                "output rebuilt by the reload; it delivers once the one it replaces, and any \
                 other still finishing that writes to the same place, has finished what it \
                 holds");
            // (Before its thread goes: what the old thread hands back goes before these.)
            ready.queue.put_front(handed);
            self.put_in_place(&name, ready, after, pending);
            if let Some(output) = self.outputs.get_mut(&name) {
                output.refused = carried;
            }
        }
    }
}

impl Outputs {
    /// The running output `name`'s buffer, when `buffer` (a reload's new settings, `path`
    /// resolved) keeps it: a disk buffer in the same folder. The new output then takes the same
    /// queue with a new delivery thread, instead of opening the folder again (locked while the
    /// queue lives).
    fn kept_buffer(&self, name: &str, buffer: &BufferConfig) -> Option<Arc<Queue>> {
        let (BufferKind::Disk, Some(dir)) = (buffer.kind, &buffer.path) else {
            return None;
        };
        let output = self.outputs.get(name)?;
        let running = output.queue.disk_dir()?;
        same_folder(running, dir).then(|| Arc::clone(&output.queue))
    }

    /// Takes every output a reload removed that is still finishing and had `name` or writes to
    /// `target`, in the order they were removed.
    fn take_retired(&mut self, name: &str, target: &str) -> Vec<(String, Output)> {
        let (taken, kept) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(n, o)| {
                (n == name || o.target == target) && o.worker.is_some() && !o.ended.is_set()
            });
        self.retired = kept;
        taken
    }
}

/// Logs drops: the first at once, then how many every [`DROP_LOG_EVERY`].
fn log_drops(name: &str, drops: &mut Option<(Instant, u64)>, lines: u64) {
    match drops {
        None => {
            tracing::warn!(output = %name, lines,
                "output buffer full: dropping the newest lines (when_full: drop_newest); \
                 counted in egresswatch_output_dropped_total");
            *drops = Some((Instant::now(), 0));
        }
        Some((at, n)) => {
            *n += lines;
            if at.elapsed() >= DROP_LOG_EVERY {
                tracing::warn!(output = %name, dropped = *n,
                    "output buffer full: lines dropped since the last report (drop_newest)");
                *drops = Some((Instant::now(), 0));
            }
        }
    }
}

#[cfg(test)]
mod tests;
