//! The bounded data behind the plots: a time axis whose bins double in length as the replay
//! goes on, the (time bin, score, kind) cells a score plot draws, and events per time bin.
//! Memory stays flat however many events are replayed.

use std::collections::HashSet;

/// Most time bins a plot keeps; past that, bins double in length (memory stays flat however
/// many events are replayed).
pub(super) const MAX_TIME_BINS: usize = 1024;

/// A time axis of equal bins that doubles its bin length whenever an event falls past its last
/// bin, starting from the first event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Timeline {
    origin: Option<i64>,
    /// Bin length in ms (0 until the first event).
    bin_ms: i64,
}

impl Timeline {
    /// The bin of `time_ms` and by how many doublings the axis grew to hold it.
    fn place(&mut self, time_ms: i64) -> (usize, u32) {
        let origin = *self.origin.get_or_insert(time_ms);
        if self.bin_ms == 0 {
            self.bin_ms = 1000;
        }
        let offset = (time_ms - origin).max(0);
        let mut doublings = 0;
        while offset / self.bin_ms >= MAX_TIME_BINS as i64 {
            self.bin_ms *= 2;
            doublings += 1;
        }
        ((offset / self.bin_ms) as usize, doublings)
    }

    /// The middle of bin `i`, epoch ms.
    pub(super) fn center(&self, i: usize) -> i64 {
        self.origin.unwrap_or(0) + i as i64 * self.bin_ms + self.bin_ms / 2
    }
}

/// What a score plot shows of a rule's scored events: which (time bin, whole score, kind)
/// cells hold at least one event. Kinds: 0 scored, 1 labelled attack, 2 flagged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scatter {
    timeline: Timeline,
    cells: HashSet<(u32, u8, u8)>,
}

impl Scatter {
    /// Adds one scored event.
    pub fn add(&mut self, time_ms: i64, score: f64, flagged: bool, attack: bool) {
        let (bin, doublings) = self.timeline.place(time_ms);
        if doublings > 0 {
            self.cells = self
                .cells
                .drain()
                .map(|(b, s, k)| (b >> doublings, s, k))
                .collect();
        }
        let score = score.clamp(0.0, 100.0).round() as u8;
        let bin = bin as u32;
        self.cells.insert((bin, score, u8::from(flagged) * 2));
        if attack {
            self.cells.insert((bin, score, 1));
        }
    }

    /// The cells as (time, score, kind), for drawing.
    pub(super) fn points(&self) -> impl Iterator<Item = (i64, f64, u8)> + '_ {
        self.cells
            .iter()
            .map(|&(b, s, k)| (self.timeline.center(b as usize), f64::from(s), k))
    }
}

/// Events per time bin.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    timeline: Timeline,
    bins: Vec<u64>,
}

impl Counts {
    /// Counts one event.
    pub fn add(&mut self, time_ms: i64) {
        let (bin, doublings) = self.timeline.place(time_ms);
        for _ in 0..doublings {
            self.bins = self.bins.chunks(2).map(|pair| pair.iter().sum()).collect();
        }
        if self.bins.len() <= bin {
            self.bins.resize(bin + 1, 0);
        }
        self.bins[bin] += 1;
    }

    /// (bin middle, count) of the non-empty bins.
    pub(super) fn bins(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (self.timeline.center(i), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_data_stays_bounded_over_a_long_replay() {
        let mut scores = Scatter::default();
        let mut counts = Counts::default();
        // Ten years of events, one every ten minutes.
        let step = 600_000;
        let n = 10 * 365 * 24 * 6;
        for i in 0..n {
            scores.add(i * step, (i % 100) as f64, i % 1000 == 0, false);
            counts.add(i * step);
        }
        assert!(counts.bins.len() <= MAX_TIME_BINS);
        assert_eq!(counts.bins.iter().sum::<u64>(), n as u64);
        assert!(
            scores.cells.len() <= MAX_TIME_BINS * 101 * 2,
            "{}",
            scores.cells.len()
        );
        let last = scores.points().map(|p| p.0).max().unwrap();
        assert!((last - (n - 1) * step).abs() < 2 * scores.timeline.bin_ms);
    }
}
