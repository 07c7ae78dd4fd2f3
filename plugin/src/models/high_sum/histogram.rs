//! The log-binned histogram of an entity population's bucket sums, and the tail it is scored
//! against.

use serde::{Deserialize, Serialize};

use super::{BINS_PER_OCTAVE, NBINS, TAIL_INDEX};
use crate::models::engine::{check_weight, invalid, Decay};
use crate::models::ModelError;

/// The bin of a sum.
#[inline]
pub(super) fn bin_of(x: f64) -> usize {
    if x < 1.0 {
        0
    } else {
        let b = 1.0 + (x.log2() * BINS_PER_OCTAVE).floor();
        if b >= (NBINS - 1) as f64 {
            NBINS - 1
        } else {
            b as usize
        }
    }
}

/// Lower edge of bin `b` (bin 0 holds [0, 1)).
#[inline]
fn lower_edge(b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        ((b - 1) as f64 / BINS_PER_OCTAVE).exp2()
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct TailCache {
    /// surv[b] = weight of bins >= b; len NBINS + 1.
    surv: Vec<f64>,
    /// Where the tail is extrapolated from (the 99th percentile, or the largest sum while the
    /// histogram holds under 100), and the weight of sums at or above it.
    knee: f64,
    knee_weight: f64,
    pub(super) p99_9: f64,
    pub(super) median: f64,
}

/// A decayed log-scale histogram of completed bucket sums.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Histogram {
    pub(super) bins: Vec<f64>,
    pub(super) total: f64,
    at: i32,
    #[serde(skip)]
    pub(super) cache: TailCache,
}

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            bins: vec![0.0; NBINS],
            total: 0.0,
            at: i32::MIN,
            cache: TailCache::default(),
        }
    }

    /// Brings the bins to bucket `now`.
    fn decay_to(&mut self, now: i32, decay: &Decay) {
        if self.at != now {
            if self.at != i32::MIN {
                let f = decay.factor(i64::from(now) - i64::from(self.at));
                for b in &mut self.bins {
                    *b *= f;
                }
                self.total *= f;
            }
            self.at = now;
        }
    }

    /// Adds `counts[b]` sums of weight `weight` to each bin `b`, at bucket `now`: one closed
    /// bucket's sums, all of the same age.
    pub(super) fn add_counts(&mut self, counts: &[u32], weight: f64, now: i32, decay: &Decay) {
        self.decay_to(now, decay);
        let mut n = 0u64;
        for (b, &c) in self.bins.iter_mut().zip(counts) {
            if c > 0 {
                *b += f64::from(c) * weight;
                n += u64::from(c);
            }
        }
        self.total += n as f64 * weight;
    }

    /// Smallest sum `x` with at most `tail_weight` of the sums at or above it, from the bins
    /// (log-linear inside a bin).
    fn empirical_quantile(&self, surv: &[f64], tail_weight: f64) -> f64 {
        match (0..=NBINS).find(|&b| surv[b] <= tail_weight) {
            Some(b) if b > 0 => {
                let w = self.bins[b - 1];
                let frac = if w > 0.0 {
                    ((surv[b - 1] - tail_weight) / w).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                let lo = lower_edge(b - 1).max(1.0);
                lo * (frac / BINS_PER_OCTAVE).exp2()
            }
            _ => 0.0,
        }
    }

    /// Recomputes the survival table, the knee, the tail index and the quantiles.
    ///
    /// The tail above the 99th percentile is not read from the few sums up there but
    /// extrapolated from it with a Pareto tail of index [`TAIL_INDEX`]: one huge or forged sum,
    /// or a handful of benign big ones, do not move where a new sum starts to be extreme.
    pub(super) fn refresh(&mut self) {
        let mut surv = vec![0.0; NBINS + 1];
        for b in (0..NBINS).rev() {
            surv[b] = surv[b + 1] + self.bins[b];
        }
        let n = self.total;
        if n <= 1e-9 || !self.bins.iter().any(|&w| w > 1e-9) {
            self.cache = TailCache::default();
            return;
        }
        let knee_weight = (0.01 * n).max(1.0).min(n);
        let knee = self.empirical_quantile(&surv, knee_weight).max(1.0);
        let quantile = |w: f64| -> f64 {
            if w >= knee_weight {
                self.empirical_quantile(&surv, w)
            } else {
                knee * (knee_weight / w.max(1e-12)).powf(1.0 / TAIL_INDEX)
            }
        };
        let p99_9 = quantile(0.001 * n);
        let median = quantile(0.5 * n);
        self.cache = TailCache {
            surv,
            knee,
            knee_weight,
            p99_9,
            median,
        };
    }

    /// Probability that a completed sum is >= `s` (smoothed; see module docs).
    #[inline]
    pub(super) fn p_at_least(&self, s: f64) -> f64 {
        let c = &self.cache;
        if c.surv.is_empty() {
            return 1.0;
        }
        let n1 = self.total + 1.0;
        if s >= c.knee {
            return ((c.knee_weight + 0.5) / n1 * (c.knee / s).powf(TAIL_INDEX)).min(1.0);
        }
        let b = bin_of(s);
        let lo = lower_edge(b).max(1.0);
        let frac_above = if b == 0 {
            1.0
        } else {
            (1.0 - (s / lo).log2() * BINS_PER_OCTAVE).clamp(0.0, 1.0)
        };
        ((c.surv[b + 1] + self.bins[b] * frac_above + 0.5) / n1).min(1.0)
    }

    /// The sum from which `p_at_least(s) * per_bucket` may fall below `floor_p` (see
    /// [`floor_probability`]): for every smaller sum it is at least `floor_p`, so the event
    /// scores below the floor whatever its entity's own history says (that can only raise `p`).
    /// Below the knee `p_at_least(s)` is at least the weight of the bins above the sum's (plus
    /// the smoothing); one bin of slack covers rounding in [`bin_of`]. Beyond the knee the
    /// Pareto tail is inverted exactly.
    pub(super) fn reach(&self, per_bucket: f64, floor_p: f64) -> f64 {
        let c = &self.cache;
        if c.surv.is_empty() {
            return f64::INFINITY;
        }
        let n1 = self.total + 1.0;
        let high = |p: f64| (p * per_bucket).min(1.0) >= floor_p;
        let below_knee = match (0..NBINS).find(|&b| !high((c.surv[b + 1] + 0.5) / n1)) {
            Some(b) => lower_edge(b.saturating_sub(1)),
            None => f64::INFINITY,
        };
        if below_knee < c.knee {
            return below_knee;
        }
        let tail = (c.knee_weight + 0.5) / n1 * c.knee * per_bucket / floor_p;
        c.knee.max(tail)
    }

    pub(super) fn check(&self, field: &'static str) -> Result<(), ModelError> {
        if self.bins.len() != NBINS {
            return Err(invalid(field, format!("{} bins", self.bins.len())));
        }
        check_weight(field, self.total)?;
        self.bins.iter().try_for_each(|&w| check_weight(field, w))
    }
}
