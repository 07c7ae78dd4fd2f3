//! The ordering stage: while several connections of a listener are open, their lines go to the
//! detector in event-time order, so that senders that interleave hours of event time (Fluent
//! Bit's `tcp` output with its default 2 workers, a backlog flush) are judged as one ordered
//! stream would be. The models' verdict on an event depends on what they saw before it, and a
//! bucket clock that moved ahead by hours treats everything older as far late.
//!
//! Each connection's lines keep their own order (so each connection's output order is kept);
//! between connections, the line with the oldest event time goes first. A line may go only when
//! no other open connection could still send an older one: a connection with nothing queued
//! whose last event is older than the line (or that has sent nothing yet) holds it, until that
//! connection sends, ends, or the engine has waited for it, idle, for the window
//! (`input.order_window_ms`): then the held connection goes on without waiting for the quiet
//! one (its lines are counted in `egresswatch_input_order_released_early_total`) until it is
//! next in order again. Time spent processing is not counted, so a slow output never releases
//! lines early while the other connection has data queued.
//!
//! Memory: each connection has at most [`LANE_BLOCKS`](crate::input::lane::LANE_BLOCKS)
//! messages handed over and not processed; a held connection's reader waits for its credit
//! (backpressure on that sender only), and the engine always empties the shared channel.
//!
//! Cost: with one connection open (and nothing held), a message is processed as it comes, as
//! without this stage. Otherwise each line's event time is read by a search for the configured
//! time field's key (`"@timestamp":`, the first one preceded by `{` or `,`) and its value (RFC
//! 3339, or epoch seconds or milliseconds, as the plugin reads them); no JSON parse. A line
//! without a readable time takes the time of the line before it on its connection; a
//! connection none of whose lines has one holds nobody back.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use memchr::memmem;

use crate::engine::Engine;
use crate::input::lane::{Lane, Lanes};
use crate::input::listen::InputStats;
use crate::input::{Msg, READ_BLOCK_BYTES};
use crate::output::Outputs;

/// The time of a line before any line of its connection had one: it goes at once.
const UNKNOWN: i64 = i64::MIN;

/// What a connection has shown of its event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing yet: it may hold the oldest events.
    Nothing,
    /// Lines, none with a readable time: it is not ordered.
    NoTime,
    /// The time of its last line queued.
    Time(i64),
}

/// One message of a connection, queued.
enum Item {
    /// Lines: `(start, end)` of each (the end past its `\n`) with its time; `next` goes next.
    Lines {
        data: Vec<u8>,
        lines: Vec<(usize, usize, i64)>,
        next: usize,
    },
    /// A piece of a line too long to hold, handed over as a line of its own.
    Fragment {
        data: Vec<u8>,
        first: bool,
        last: bool,
        time: i64,
    },
}

impl Item {
    fn head_time(&self) -> i64 {
        match self {
            Item::Lines { lines, next, .. } => lines[*next].2,
            Item::Fragment { time, .. } => *time,
        }
    }

    fn remaining_lines(&self) -> u64 {
        match self {
            Item::Lines { lines, next, .. } => (lines.len() - next) as u64,
            Item::Fragment { last, .. } => u64::from(*last),
        }
    }
}

/// One connection's queue.
struct Queue {
    lane: Arc<Lane>,
    items: VecDeque<Item>,
    seen: Seen,
    /// Idle time the engine spent waiting, with this queue's head next in order, for connections
    /// with nothing queued.
    waited: Duration,
    /// It waited the window: it goes on without waiting for quiet connections until it is next
    /// in order without waiting.
    overdue: bool,
}

impl Queue {
    /// The newest event time another connection's line may have to go before this
    /// connection could send an older one: its head when it has lines queued; when not, its
    /// last line's time (or [`UNKNOWN`] if it has sent nothing yet); `None` when it can send
    /// nothing more or its lines have no time.
    fn limit(&self) -> Option<i64> {
        if let Some(head) = self.head_time() {
            return Some(head);
        }
        if self.lane.ended() && self.lane.in_flight() == 0 {
            return None;
        }
        match self.seen {
            Seen::Nothing => Some(UNKNOWN),
            Seen::NoTime => None,
            Seen::Time(last) => Some(last),
        }
    }

    /// Whether this connection, with nothing queued, may still send a line older than `time`.
    fn holds(&self, time: i64) -> bool {
        self.items.is_empty() && self.limit().is_some_and(|limit| limit < time)
    }

    fn head_time(&self) -> Option<i64> {
        self.items.front().map(Item::head_time)
    }
}

/// The ordering stage of the engine thread; see the module documentation.
pub(super) struct Order {
    lanes: Arc<Lanes>,
    /// `input.order_window_ms`; zero turns ordering off.
    window: Duration,
    key: memmem::Finder<'static>,
    queues: Vec<Queue>,
    /// The queue whose head was held by quiet connections at the last release. Invariant:
    /// `Some` whenever lines are queued (with a non-zero window), except between a `sync` that
    /// forgot a finished queue (the index may have moved) and the next release, which
    /// [`Order::idle`] runs at once; `None` when nothing is queued.
    held: Option<usize>,
    /// Lines on their way to the engine.
    merged: Vec<u8>,
    stats: Arc<InputStats>,
    /// Whether a release past a quiet connection was logged.
    logged_early: bool,
}

impl Order {
    /// A stage for the connections of `lanes`, ordering by `time_field` for up to `window`.
    pub(super) fn new(
        lanes: Option<Arc<Lanes>>,
        window: Duration,
        time_field: &str,
        stats: Arc<InputStats>,
    ) -> Self {
        let key = format!("\"{time_field}\"");
        Order {
            lanes: lanes.unwrap_or_default(),
            window,
            key: memmem::Finder::new(key.as_bytes()).into_owned(),
            queues: Vec::new(),
            held: None,
            merged: Vec::new(),
            stats,
            logged_early: false,
        }
    }

    /// A reload's new `input.order_window_ms`. Called only between the engine loop's turns,
    /// each of which runs `idle` before `push`: with a window of 0, `idle` lets everything
    /// queued go, so `push` may process at once (a call elsewhere would need a release there).
    pub(super) fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Takes the lanes of new connections; forgets finished ones with nothing queued.
    fn sync(&mut self) {
        for lane in self.lanes.take_new() {
            self.queues.push(Queue {
                lane,
                items: VecDeque::new(),
                seen: Seen::Nothing,
                waited: Duration::ZERO,
                overdue: false,
            });
        }
        let before = self.queues.len();
        self.queues
            .retain(|q| !(q.items.is_empty() && q.lane.ended() && q.lane.in_flight() == 0));
        if self.queues.len() != before {
            // Its index named a queue that may have moved; a line it held back may go now.
            self.held = None;
        }
    }

    /// Whether any line is held.
    fn holding(&self) -> bool {
        self.queues.iter().any(|q| !q.items.is_empty())
    }

    /// Takes a message of the connection `lane`: processes it at once while it is the only
    /// connection open and nothing is held; otherwise queues it and processes what may go.
    pub(super) fn push(
        &mut self,
        lane: Arc<Lane>,
        msg: Msg,
        engine: &mut Engine,
        outputs: &mut Outputs,
    ) -> io::Result<()> {
        self.sync();
        // Alone: no other connection is open (this one may have ended since it sent this).
        let open = self.lanes.open_count();
        let alone = open == 0 || (open == 1 && !lane.ended());
        if self.window.is_zero() || (alone && !self.holding()) {
            // With no window, the turn's `idle` let everything queued go (`set_window`).
            debug_assert!(!self.window.is_zero() || !self.holding());
            let done = process(msg, engine, outputs);
            lane.give_back();
            return done;
        }
        let Some(q) = self.queues.iter().position(|q| Arc::ptr_eq(&q.lane, &lane)) else {
            // A lane the listener registered is always known; process rather than lose it.
            let done = process(msg, engine, outputs);
            lane.give_back();
            return done;
        };
        let queue = &mut self.queues[q];
        let item = match msg {
            Msg::Lines(block) => {
                let data = block.into_buf().into_vec();
                let lines = timed_lines(&data, &self.key, &mut queue.seen);
                Item::Lines {
                    data,
                    lines,
                    next: 0,
                }
            }
            Msg::Fragment { data, first, last } => Item::Fragment {
                data,
                first,
                last,
                time: match queue.seen {
                    Seen::Time(t) => t,
                    _ => UNKNOWN,
                },
            },
            other => {
                lane.give_back();
                return process(other, engine, outputs);
            }
        };
        match &item {
            Item::Lines { lines, .. } if lines.is_empty() => lane.give_back(),
            _ => queue.items.push_back(item),
        }
        self.release(engine, outputs, false)
    }

    /// The engine waited `idle` for input: a head held by quiet connections has waited that
    /// much longer; past the window it goes on.
    pub(super) fn idle(
        &mut self,
        idle: Duration,
        engine: &mut Engine,
        outputs: &mut Outputs,
    ) -> io::Result<()> {
        // Lines queued with nothing held: a `sync` (this one or `push`'s) forgot a finished
        // connection they may have waited for (one that closed without sending: a health
        // check), so they go now if they may; without this release nothing would look at them
        // again until some connection sent more. A reload that turned ordering off
        // (window zero) lets everything queued go, each connection's lines in their order and
        // none counted as early: `push` then queues nothing more, and it always comes after an
        // `idle` with the same window (a reload runs between the engine's turns), so no new
        // message goes ahead of its connection's queued lines.
        self.sync();
        let off = self.window.is_zero();
        if (off || self.held.is_none()) && self.holding() {
            self.release(engine, outputs, off)?;
        }
        let Some(q) = self.held else {
            return Ok(());
        };
        let queue = &mut self.queues[q];
        queue.waited += idle;
        if queue.waited < self.window || queue.overdue {
            return Ok(());
        }
        queue.overdue = true;
        if !self.logged_early {
            self.logged_early = true;
            tracing::warn!(
                connection = queue.lane.id,
                window_ms = self.window.as_millis(),
                "input: a connection's lines waited input.order_window_ms for another \
                 connection with older events that sent nothing; they go on (counted in \
                 egresswatch_input_order_released_early_total; logged once)"
            );
        }
        self.release(engine, outputs, false)
    }

    /// Processes everything held, in order (at the end of the run).
    pub(super) fn finish(&mut self, engine: &mut Engine, outputs: &mut Outputs) -> io::Result<()> {
        self.sync();
        self.release(engine, outputs, true)
    }

    /// Processes the lines that may go, oldest first; `all` ignores connections that may still
    /// send older ones.
    fn release(&mut self, engine: &mut Engine, outputs: &mut Outputs, all: bool) -> io::Result<()> {
        self.held = None;
        while let Some((c, head)) = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.head_time().map(|t| (i, t)))
            .min_by_key(|&(i, t)| (t, i))
        {
            let waits = !all
                && head != UNKNOWN
                && self
                    .queues
                    .iter()
                    .enumerate()
                    .any(|(i, q)| i != c && q.holds(head));
            if waits && !self.queues[c].overdue {
                self.held = Some(c);
                break;
            }
            if !waits {
                self.queues[c].overdue = false;
                self.queues[c].waited = Duration::ZERO;
            }
            // Its lines go while none is newer than what another connection has queued or
            // (unless it is past its window) than the last line of one that has not.
            let bound = self
                .queues
                .iter()
                .enumerate()
                .filter(|&(i, q)| i != c && (!q.items.is_empty() || !(all || waits)))
                .filter_map(|(_, q)| q.limit())
                .min()
                .unwrap_or(i64::MAX);
            let queue = &mut self.queues[c];
            let mut item = queue.items.pop_front().expect("the head is there");
            let taken = match &mut item {
                Item::Lines { data, lines, next } => {
                    let from = *next;
                    while *next < lines.len() && (*next == from || lines[*next].2 <= bound) {
                        *next += 1;
                    }
                    let (start, end) = (lines[from].0, lines[*next - 1].1);
                    self.merged.extend_from_slice(&data[start..end]);
                    if data[end - 1] != b'\n' {
                        self.merged.push(b'\n');
                    }
                    (*next - from) as u64
                }
                Item::Fragment { .. } => 0,
            };
            if waits {
                let early = match &item {
                    Item::Fragment { last, .. } => u64::from(*last),
                    Item::Lines { .. } => taken,
                };
                self.stats.order_early.fetch_add(early, Ordering::Relaxed);
            }
            match item {
                Item::Lines {
                    next, ref lines, ..
                } if next < lines.len() => {
                    queue.items.push_front(item);
                }
                Item::Lines { .. } => queue.lane.give_back(),
                Item::Fragment {
                    data, first, last, ..
                } => {
                    let lane = Arc::clone(&queue.lane);
                    self.flush(engine, outputs)?;
                    engine.write_fragment(&data, first, last, outputs)?;
                    lane.give_back();
                }
            }
            if self.merged.len() >= READ_BLOCK_BYTES {
                self.flush(engine, outputs)?;
            }
        }
        self.flush(engine, outputs)
    }

    /// Processes the lines gathered.
    fn flush(&mut self, engine: &mut Engine, outputs: &mut Outputs) -> io::Result<()> {
        if self.merged.is_empty() {
            return Ok(());
        }
        let done = engine.process(&self.merged, outputs);
        self.merged.clear();
        done
    }
}

impl Drop for Order {
    /// Readers waiting for credit go on (and find the engine gone); lines still held (the run
    /// failed) are counted as read and not delivered.
    fn drop(&mut self) {
        let held: u64 = self
            .queues
            .iter()
            .flat_map(|q| &q.items)
            .map(Item::remaining_lines)
            .sum();
        self.stats.undelivered.fetch_add(held, Ordering::Relaxed);
        self.lanes.engine_gone();
    }
}

/// Processes a message as it comes.
pub(super) fn process(msg: Msg, engine: &mut Engine, outputs: &mut Outputs) -> io::Result<()> {
    match msg {
        Msg::Lines(block) => engine.process_block(block, outputs),
        Msg::Fragment { data, first, last } => engine.write_fragment(&data, first, last, outputs),
        Msg::Conn { msg, .. } => process(*msg, engine, outputs),
        Msg::Failed(e) => Err(e),
        Msg::Acked { data, ack } => {
            engine.process(&data, outputs)?;
            outputs.attach(&ack);
            ack.delivered();
            Ok(())
        }
    }
}

/// The lines of `data` with their event times, updating what the connection has `seen`.
fn timed_lines(data: &[u8], key: &memmem::Finder<'_>, seen: &mut Seen) -> Vec<(usize, usize, i64)> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |n| start + n + 1);
        let time = match event_time(&data[start..end], key) {
            Some(t) => {
                *seen = Seen::Time(t);
                t
            }
            None => match *seen {
                Seen::Time(t) => t,
                Seen::Nothing | Seen::NoTime => {
                    *seen = Seen::NoTime;
                    UNKNOWN
                }
            },
        };
        lines.push((start, end, time));
        start = end;
    }
    lines
}

/// The event time of `line` in ms: the value of the first key `key` (quoted) that follows `{`
/// or `,`, as RFC 3339 text or epoch seconds or milliseconds (a number or numeric text).
fn event_time(line: &[u8], key: &memmem::Finder<'_>) -> Option<i64> {
    let skip_ws = |mut i: usize| {
        while line.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    for at in key.find_iter(line) {
        let before = line[..at].iter().rev().find(|b| !b.is_ascii_whitespace());
        if !matches!(before, Some(b'{' | b',')) {
            continue;
        }
        let colon = skip_ws(at + key.needle().len());
        if line.get(colon) != Some(&b':') {
            continue;
        }
        let value = skip_ws(colon + 1);
        let rest = line.get(value..)?;
        return if rest.first() == Some(&b'"') {
            let len = memchr::memchr2(b'"', b'\\', &rest[1..])?;
            let text = std::str::from_utf8(&rest[1..=len]).ok()?;
            egresswatch_common::time::parse_rfc3339_ms(text).or_else(|| {
                text.trim()
                    .parse()
                    .ok()
                    .and_then(egresswatch_common::time::epoch_number_ms)
            })
        } else {
            let len = rest
                .iter()
                .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E'))
                .unwrap_or(rest.len());
            std::str::from_utf8(&rest[..len])
                .ok()?
                .parse()
                .ok()
                .and_then(egresswatch_common::time::epoch_number_ms)
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(line: &str) -> Option<i64> {
        event_time(line.as_bytes(), &memmem::Finder::new("\"@timestamp\""))
    }

    #[test]
    fn the_time_is_read_from_the_key_not_from_a_string_that_looks_like_it() {
        let t = Some(1_793_520_930_123);
        assert_eq!(
            time(r#"{"@timestamp":"2026-11-01T08:15:30.123Z","a":1}"#),
            t
        );
        assert_eq!(
            time(r#"{"a":1, "@timestamp" : "2026-11-01T08:15:30.123Z"}"#),
            t
        );
        assert_eq!(time(r#"{"@timestamp":1793520930.123}"#), t);
        assert_eq!(time(r#"{"@timestamp":"1793520930123"}"#), t);
        // A value equal to the key, an escaped copy in a string, a key that only ends so.
        assert_eq!(
            time(
                r#"{"m":"@timestamp","x":"\"@timestamp\":1","@timestamp":"2026-11-01T08:15:30.123Z"}"#
            ),
            t
        );
        assert_eq!(time(r#"{"\"@timestamp":5}"#), None);
        assert_eq!(time(r#"{"@timestamp":"yesterday"}"#), None);
        assert_eq!(time(r#"{"@timestamp":"#), None);
        assert_eq!(time("not json"), None);
    }

    #[test]
    fn lines_without_a_time_take_their_connections_last_one() {
        let key = memmem::Finder::new("\"@timestamp\"");
        let mut seen = Seen::Nothing;
        let data = b"x\n{\"@timestamp\":1000}\ny\n{\"@timestamp\":2000}";
        let lines = timed_lines(data, &key, &mut seen);
        let times: Vec<i64> = lines.iter().map(|l| l.2).collect();
        assert_eq!(times, [UNKNOWN, 1_000_000, 1_000_000, 2_000_000]);
        assert_eq!(lines.last().map(|l| l.1), Some(data.len()));
        assert_eq!(seen, Seen::Time(2_000_000));
        let mut seen = Seen::Nothing;
        timed_lines(b"a\nb\n", &key, &mut seen);
        assert_eq!(seen, Seen::NoTime);
    }

    /// An ordering stage (window `window`) over three connections, in front of an engine that
    /// passes every line to an output the test reads, driven as the engine's loop does.
    struct Stage {
        order: Order,
        lanes: Arc<Lanes>,
        engine: Engine,
        outputs: Outputs,
        out: crate::engine::tests::Sink,
    }

    impl Stage {
        fn new(window: Duration) -> (Stage, [Arc<Lane>; 3]) {
            use crate::config::{BatchConfig, UnreadablePolicy};
            use crate::engine::tests::{engine, Picks, Sink};

            let out = Sink::default();
            let lanes = Arc::new(Lanes::default());
            let opened = [lanes.open(1), lanes.open(2), lanes.open(3)];
            let stage = Stage {
                order: Order::new(
                    Some(Arc::clone(&lanes)),
                    window,
                    "@timestamp",
                    Arc::default(),
                ),
                lanes,
                engine: engine(Picks, BatchConfig::default(), UnreadablePolicy::Pass),
                outputs: Outputs::from_writers(vec![("default".into(), Box::new(out.clone()))]),
                out,
            };
            (stage, opened)
        }

        /// The engine waited `ms` for input.
        fn wait(&mut self, ms: u64) {
            let idle = Duration::from_millis(ms);
            self.order
                .idle(idle, &mut self.engine, &mut self.outputs)
                .unwrap();
        }

        /// A turn of the engine's loop: a wait, then `text` from `lane`.
        fn turn(&mut self, lane: &Arc<Lane>, text: String) {
            self.wait(50);
            self.push(lane, text);
        }

        /// The engine received `text` from `lane`.
        fn push(&mut self, lane: &Arc<Lane>, text: String) {
            lane.take_credit();
            let msg = Msg::Lines(crate::input::Block::new(text.into_bytes()));
            let (engine, outputs) = (&mut self.engine, &mut self.outputs);
            self.order
                .push(Arc::clone(lane), msg, engine, outputs)
                .unwrap();
            outputs.commit().unwrap();
        }

        /// Lines counted as released early.
        fn early(&self) -> u64 {
            self.order.stats.order_early.load(Ordering::Relaxed)
        }

        /// What the output received so far.
        fn delivered(&mut self) -> String {
            let (_, undelivered) = self.outputs.finish();
            assert!(undelivered.is_empty(), "{undelivered:?}");
            String::from_utf8_lossy(&self.out.0.lock().unwrap()).into_owned()
        }
    }

    fn line(who: &str, hour: u32, n: u32) -> String {
        format!("{{\"@timestamp\":\"2026-11-01T{hour:02}:00:00.{n:03}Z\",\"{who}\":{n}}}\n")
    }

    fn lines(who: &str, hour: u32, n: std::ops::Range<u32>) -> String {
        n.map(|n| line(who, hour, n)).collect()
    }

    /// A reload that sets `order_window_ms: 0` while lines are queued (two connections' lines
    /// held by a third that sent nothing) lets them all go at the engine's next wait, each
    /// connection's in its order, none counted as early, and before a new message of one of
    /// them. Before: that wait let only the held connection's lines go (as early), `push`
    /// processed the new message at once, ahead of its connection's older queued lines, and
    /// when the holder closed between the wait and that push, the lines still queued were never
    /// looked at again.
    #[test]
    fn a_reload_to_window_zero_lets_queued_lines_go_in_each_connections_order() {
        let (mut stage, [quiet, early, late]) = Stage::new(Duration::from_secs(600));
        stage.turn(&early, lines("early", 1, 0..3));
        stage.turn(&late, lines("late", 5, 0..3));
        assert!(
            stage.order.holding() && stage.order.held.is_some(),
            "the quiet one holds both"
        );
        stage.order.set_window(Duration::ZERO);
        // The holder closes between the engine's wait and the message it received.
        stage.wait(50);
        stage.lanes.close(&quiet);
        stage.push(&late, line("late", 5, 3));
        stage.wait(50);
        stage.wait(50);
        assert!(!stage.order.holding(), "nothing is left queued");
        assert_eq!(stage.early(), 0);
        let expected = lines("early", 1, 0..3) + &lines("late", 5, 0..4);
        assert_eq!(stage.delivered(), expected);
    }

    /// An unrelated connection that closes (a health check) while a quiet, still-open one holds
    /// another's lines does not stop the window: they go once it has passed, counted as early.
    /// Before: the close forgot which queue was held, so the window never ran for it again.
    #[test]
    fn an_unrelated_close_does_not_stop_the_window() {
        let (mut stage, [quiet, sender, check]) = Stage::new(Duration::from_millis(500));
        stage.turn(&sender, lines("sender", 5, 0..10));
        stage.wait(300);
        stage.lanes.close(&check);
        stage.wait(300);
        assert!(!quiet.ended(), "the holder is still open");
        assert!(!stage.order.holding(), "nothing is left queued");
        assert_eq!(stage.early(), 10);
        assert_eq!(stage.delivered(), lines("sender", 5, 0..10));
    }
}
