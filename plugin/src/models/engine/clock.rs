//! The event-time bucket clock: open buckets, closes, lateness, and the future events it does
//! not believe (see the module documentation).

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::state::invalid;
use crate::models::ModelError;

/// Where an event falls on the bucket clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An open bucket (the head or within lateness): count the event into it.
    Open(i32),
    /// A closed bucket: score only.
    FarLate(i32),
}

/// How far ahead of the host's clock an event's time is believed.
pub const FUTURE_SKEW_MS: i64 = 10 * 60 * 1000;
/// Events more than this far behind the host's clock mean the host's clock says nothing about
/// them (a replay of old logs): jumps of the model clock then need a quorum of events.
const ARRIVAL_VOUCHES_MS: i64 = 24 * 3600 * 1000;
/// Events ahead of the head by two buckets or more that move the clock (the earliest of them).
pub const CLOCK_QUORUM: usize = 3;

/// The event-time bucket clock of one job, which no single event can move far.
///
/// The head (newest bucket) moves forward one bucket at a time as events arrive. A jump of two
/// buckets or more is believed when the host's clock vouches for it (the event is at most a day
/// behind the host's clock and not ahead of it: a live stream after a quiet spell), or, when it
/// cannot (a replay of old logs), once [`CLOCK_QUORUM`] events ahead of the head have been seen:
/// the head then moves to the earliest of them. An event further ahead of the host's clock than
/// [`FUTURE_SKEW_MS`] is taken to happen at that bound. An event whose jump is not believed is
/// counted into the head bucket and counted as a *future* event: one forged or skewed timestamp
/// never ages the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    span_ms: i64,
    lateness: i32,
    head: Option<i32>,
    /// Times of recent events two buckets or more ahead of the head, not yet believed.
    pending: Vec<i64>,
    /// Events whose time was not believed (clamped to the host clock or to the head).
    future: u64,
    /// The head bucket's time range `[start, end)` in ms, set when the head is: an event in it
    /// (most events) is placed without a division. Empty until then (and after a load).
    #[serde(skip)]
    head_ms: (i64, i64),
}

impl Clock {
    /// A clock with buckets of `span_secs` seconds and `lateness` open buckets behind the head.
    pub fn new(span_secs: u32, lateness: u32) -> Self {
        Clock {
            span_ms: i64::from(span_secs.max(1)) * 1000,
            lateness: i32::try_from(lateness).unwrap_or(i32::MAX),
            head: None,
            pending: Vec::new(),
            future: 0,
            head_ms: (0, 0),
        }
    }

    /// Moves the head to `bucket`.
    fn set_head(&mut self, bucket: i32) {
        self.head = Some(bucket);
        let start = self.start_ms(bucket);
        self.head_ms = (start, start.saturating_add(self.span_ms));
    }

    /// Bucket length in ms.
    pub fn span_ms(&self) -> i64 {
        self.span_ms
    }

    /// The newest bucket seen.
    pub fn head(&self) -> Option<i32> {
        self.head
    }

    /// Start of a bucket in ms.
    pub fn start_ms(&self, bucket: i32) -> i64 {
        i64::from(bucket) * self.span_ms
    }

    /// Oldest open bucket for the current head.
    pub fn oldest_open(&self) -> Option<i32> {
        self.head.map(|h| h.saturating_sub(self.lateness))
    }

    /// Events whose time was not believed so far.
    pub fn future_events(&self) -> u64 {
        self.future
    }

    /// The bucket of `time_ms`; `None` beyond `i32`, and for `i32::MIN`, which `high_sum`'s
    /// records of sums take for "no bucket" (some 2,000 years BC with 60 s buckets).
    fn bucket(&self, time_ms: i64) -> Option<i32> {
        i32::try_from(time_ms.div_euclid(self.span_ms))
            .ok()
            .filter(|&b| b != i32::MIN)
    }

    /// Places an event of time `time_ms` that the host received at `arrival_ms` (its clock).
    /// Returns its slot and, when the head moved forward, the new oldest open bucket: the caller
    /// must close every open bucket older than it. `None` for a time whose bucket index does not
    /// fit the state's 32-bit bucket numbers.
    ///
    /// An event in the head bucket (nearly all of them) is placed here, inlined in the model's
    /// event; the other cases stay out of line in `place_elsewhere` (as a call, the whole of
    /// `place` cost about 17 Ir more per model per event).
    #[inline]
    pub fn place(&mut self, time_ms: i64, arrival_ms: i64) -> Option<(Slot, Option<i32>)> {
        let limit = arrival_ms.saturating_add(FUTURE_SKEW_MS);
        if let (Some(h), true) = (self.head, time_ms <= limit) {
            if (self.head_ms.0..self.head_ms.1).contains(&time_ms) {
                return Some((Slot::Open(h), None));
            }
        }
        self.place_elsewhere(time_ms, arrival_ms, limit)
    }

    /// [`Clock::place`] of an event outside the head bucket (or of the first event, or one
    /// from beyond the allowed skew); `limit` is the latest time trusted.
    #[inline(never)]
    fn place_elsewhere(
        &mut self,
        time_ms: i64,
        arrival_ms: i64,
        limit: i64,
    ) -> Option<(Slot, Option<i32>)> {
        let mut distrusted = false;
        let time_ms = if time_ms > limit {
            distrusted = true;
            limit
        } else {
            time_ms
        };
        let bucket = self.bucket(time_ms)?;
        let Some(h) = self.head else {
            self.set_head(bucket);
            self.future += u64::from(distrusted);
            return Some((
                Slot::Open(bucket),
                Some(bucket.saturating_sub(self.lateness)),
            ));
        };
        if bucket <= h {
            if self.head_ms == (0, 0) {
                // A loaded clock: its head's range, for the next events.
                self.set_head(h);
            }
            self.future += u64::from(distrusted);
            let slot = if bucket >= h.saturating_sub(self.lateness) {
                Slot::Open(bucket)
            } else {
                Slot::FarLate(bucket)
            };
            return Some((slot, None));
        }
        let vouched = arrival_ms.saturating_sub(time_ms) <= ARRIVAL_VOUCHES_MS;
        let to = if bucket == h.saturating_add(1) || vouched {
            Some(bucket)
        } else {
            if self.pending.len() >= CLOCK_QUORUM {
                self.pending.remove(0);
            }
            self.pending.push(time_ms);
            (self.pending.len() >= CLOCK_QUORUM)
                .then(|| self.pending.iter().min().and_then(|&t| self.bucket(t)))
                .flatten()
        };
        match to {
            Some(to) => {
                self.future += u64::from(distrusted);
                self.set_head(to);
                let span = self.span_ms;
                self.pending
                    .retain(|&t| t.div_euclid(span) > i64::from(to) + 1);
                let slot = if bucket <= to {
                    Slot::Open(bucket)
                } else {
                    // A pending event further ahead than the quorum's earliest: not yet.
                    self.future += 1;
                    Slot::Open(to)
                };
                Some((slot, Some(to.saturating_sub(self.lateness))))
            }
            None => {
                self.future += 1;
                Some((Slot::Open(h), None))
            }
        }
    }

    /// Checks a loaded clock against the configuration: span, lateness and pending events.
    pub fn check(&self, config: &ModelConfig) -> Result<(), ModelError> {
        config.check_saved_span(self.span_ms)?;
        if !(0..=16).contains(&self.lateness) {
            return Err(invalid("clock.lateness", self.lateness));
        }
        if self.pending.len() > CLOCK_QUORUM {
            return Err(invalid("clock.pending", self.pending.len()));
        }
        Ok(())
    }
}
