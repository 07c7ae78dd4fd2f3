//! What `rare` keeps per partition: each value's decayed presence and session, the open
//! buckets, and the daily novelty rate.

use serde::{Deserialize, Serialize};

use super::NOVELTY_DAYS;
use crate::models::engine::{check_weight, invalid, Decay, Decayed, KeyMap, Tracked};
use crate::models::ModelError;

/// No bucket: the marker of "never" in bucket fields.
pub(super) const NEVER: i32 = i32::MIN;

/// Per-value history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct ValueEntry {
    /// Decayed buckets with the value, valid at bucket `at`.
    pub(super) count: f32,
    pub(super) at: i32,
    /// Buckets with the value, not decayed.
    pub(super) raw: u32,
    pub(super) first: i32,
    pub(super) last: i32,
    /// Decayed days with the value (today included once it appeared), valid at day `day`, the
    /// last day it appeared.
    pub(super) days: f32,
    pub(super) day: i32,
    /// Buckets in the current session.
    pub(super) session: u16,
    /// Longest session before the current one, in buckets.
    pub(super) longest: u16,
    /// Bucket at which the current session's persistence was reported ([`NEVER`]: not yet).
    pub(super) reported: i32,
}

impl ValueEntry {
    pub(super) fn decayed(&self, now: i32, decay: &Decay) -> f64 {
        f64::from(self.count) * decay.factor(i64::from(now) - i64::from(self.at))
    }

    /// Decayed days with the value before `today`.
    pub(super) fn days_before(&self, today: i32, day_decay: &Decay) -> f64 {
        let d = f64::from(self.days) * day_decay.factor(i64::from(today) - i64::from(self.day));
        if self.day >= today {
            (d - 1.0).max(0.0)
        } else {
            d
        }
    }

    pub(super) fn check(&self) -> Result<(), ModelError> {
        check_weight("value.count", f64::from(self.count))?;
        check_weight("value.days", f64::from(self.days))?;
        if self.first > self.last {
            return Err(invalid("value.first", self.first));
        }
        Ok(())
    }
}

impl Tracked for ValueEntry {
    fn weight(&self, now: i32, decay: &Decay) -> f64 {
        self.decayed(now, decay)
    }
    fn last_bucket(&self) -> i32 {
        self.last
    }
    fn promotable(&self) -> bool {
        self.raw >= 2
    }
}

/// Keys already counted in one open bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct OpenBucket {
    pub(super) bucket: i32,
    pub(super) seen: KeyMap<()>,
}

/// One day's novelty: buckets with data, and buckets that brought a never-seen value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct DayNovelty {
    pub(super) buckets: u32,
    pub(super) novel: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Partition {
    /// Decayed units (buckets, or entity-buckets with `over`) with data.
    pub(super) total: Decayed,
    pub(super) raw_total: u64,
    /// Buckets with data, not decayed (learning progress).
    pub(super) buckets: u64,
    /// Decayed count of the most common value (for `typical`).
    pub(super) top: Decayed,
    pub(super) first_bucket: i32,
    pub(super) open: Vec<OpenBucket>,
    /// Decayed days with data before `day` (in days).
    pub(super) days: Decayed,
    /// The current day, and its novelty so far.
    pub(super) day: i32,
    pub(super) today: DayNovelty,
    /// Last bucket counted as novel (one per bucket).
    pub(super) novel_bucket: i32,
    /// The previous days' novelty, oldest first, at most [`NOVELTY_DAYS`].
    pub(super) history: Vec<DayNovelty>,
    /// `ν` for today (1 until a day has been seen: the novelty path is off).
    pub(super) novelty: f64,
    /// Buckets since learning ended and those that brought a never-seen value, while no whole
    /// day is history yet (the first day's `ν`).
    pub(super) settled: DayNovelty,
}

impl Partition {
    pub(super) fn new(first_bucket: i32, day: i32) -> Self {
        Partition {
            total: Decayed::default(),
            raw_total: 0,
            buckets: 0,
            top: Decayed::default(),
            first_bucket,
            open: Vec::new(),
            days: Decayed {
                value: 0.0,
                at: day,
            },
            day,
            today: DayNovelty::default(),
            novel_bucket: NEVER,
            history: Vec::new(),
            novelty: 1.0,
            settled: DayNovelty::default(),
        }
    }

    /// Moves to a later day: today's novelty joins the history and `ν` is recomputed.
    pub(super) fn roll_to(&mut self, day: i32, day_decay: &Decay) {
        if day <= self.day {
            return;
        }
        if self.today.buckets > 0 {
            self.days.add(1.0, self.day, day, day_decay);
            if self.history.len() >= NOVELTY_DAYS {
                self.history.remove(0);
            }
            self.history.push(self.today);
        }
        self.days.add(0.0, day, day, day_decay);
        self.day = day;
        self.today = DayNovelty::default();
        self.novelty = lower_median_rate(&self.history);
    }

    pub(super) fn check(&self) -> Result<(), ModelError> {
        self.total.check("partition.total")?;
        self.top.check("partition.top")?;
        self.days.check("partition.days")?;
        if self.history.len() > NOVELTY_DAYS {
            return Err(invalid("partition.history", self.history.len()));
        }
        if self
            .history
            .iter()
            .chain([&self.today, &self.settled])
            .any(|d| d.novel > d.buckets)
        {
            return Err(invalid("partition.history.novel", "more than its buckets"));
        }
        if !(0.0..=1.0).contains(&self.novelty) {
            return Err(invalid("partition.novelty", self.novelty));
        }
        Ok(())
    }
}

/// `ν` on the partition's first day, before any whole day is history: the share of the buckets
/// since learning ended, before this one, that brought a never-seen value (while learning,
/// everything is new). 1 (no novelty path) before such a bucket.
pub(super) fn first_day_novelty(part: &Partition, bucket: i32, counted: bool) -> f64 {
    let buckets = part.settled.buckets.saturating_sub(u32::from(counted));
    let novel =
        (part.settled.novel).saturating_sub(u32::from(counted && part.novel_bucket == bucket));
    if buckets == 0 {
        1.0
    } else {
        f64::from(novel.min(buckets)) / f64::from(buckets)
    }
}

/// The lower median of the days' novel share (1 without days: no novelty path).
fn lower_median_rate(days: &[DayNovelty]) -> f64 {
    let mut rates: Vec<f64> = days
        .iter()
        .filter(|d| d.buckets > 0)
        .map(|d| f64::from(d.novel) / f64::from(d.buckets))
        .collect();
    if rates.is_empty() {
        return 1.0;
    }
    rates.sort_by(f64::total_cmp);
    rates[(rates.len() - 1) / 2]
}
