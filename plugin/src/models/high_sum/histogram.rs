//! The log-binned histogram of an entity population's bucket sums, and the tail it is scored
//! against.
//!
//! A histogram keeps only the bins from the lowest to the highest that a sum fell in (every
//! bin outside is zero), and its survival table likewise: a population whose sums span three
//! decades takes ~170 of the 897 bins (2.7 kB with its table instead of 14.4 kB), which was
//! most of the state per destination at 1k destinations in `benches/scale.rs`. Every figure
//! read from it is the same, bit for bit, as from all 897 bins: a bin outside reads 0, and the
//! survival weight below the lowest bin is the weight at it (adding zeros changes no sum). It
//! is saved with all 897 bins, as before.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

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
    /// `surv[i]` = weight of bins >= `lo + i`, from the histogram's lowest bin to one past its
    /// highest (see [`TailCache::surv`]); empty when the histogram holds no weight.
    surv: Vec<f64>,
    lo: usize,
    /// Where the tail is extrapolated from (the 99th percentile, or the largest sum while the
    /// histogram holds under 100), and the weight of sums at or above it.
    knee: f64,
    knee_weight: f64,
    pub(super) p99_9: f64,
    pub(super) median: f64,
}

impl TailCache {
    /// Weight of the bins >= `b`: that of the lowest kept bin below it, 0 above the highest.
    #[inline]
    fn surv(&self, b: usize) -> f64 {
        match b.checked_sub(self.lo) {
            Some(i) => self.surv.get(i).copied().unwrap_or(0.0),
            None => self.surv[0],
        }
    }
}

/// A decayed log-scale histogram of completed bucket sums.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "SavedHistogram")]
pub(super) struct Histogram {
    /// Bins `lo..lo + bins.len()`; every other bin is 0. A loaded histogram has all of them
    /// until [`Histogram::trim`].
    pub(super) bins: Vec<f64>,
    pub(super) lo: usize,
    pub(super) total: f64,
    at: i32,
    pub(super) cache: TailCache,
}

/// A histogram as saved: every bin.
#[derive(Deserialize)]
struct SavedHistogram {
    bins: Vec<f64>,
    total: f64,
    at: i32,
}

impl From<SavedHistogram> for Histogram {
    fn from(s: SavedHistogram) -> Self {
        Histogram {
            bins: s.bins,
            lo: 0,
            total: s.total,
            at: s.at,
            cache: TailCache::default(),
        }
    }
}

/// Written as the histogram of every bin it replaced (the same bytes).
impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Bins<'a>(&'a Histogram);
        impl Serialize for Bins<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let h = self.0;
                let n = NBINS.max(h.lo + h.bins.len());
                let mut seq = serializer.serialize_seq(Some(n))?;
                (0..n).try_for_each(|b| seq.serialize_element(&h.bin(b)))?;
                seq.end()
            }
        }
        let mut s = serializer.serialize_struct("Histogram", 3)?;
        s.serialize_field("bins", &Bins(self))?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("at", &self.at)?;
        s.end()
    }
}

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            bins: Vec::new(),
            lo: 0,
            total: 0.0,
            at: i32::MIN,
            cache: TailCache::default(),
        }
    }

    /// The weight in bin `b`.
    #[inline]
    fn bin(&self, b: usize) -> f64 {
        b.checked_sub(self.lo)
            .and_then(|i| self.bins.get(i))
            .copied()
            .unwrap_or(0.0)
    }

    /// Keeps bins `first..end` too (and those between them and the kept ones), allocating
    /// exactly what is kept.
    fn cover(&mut self, first: usize, end: usize) {
        if self.bins.is_empty() {
            self.bins = vec![0.0; end - first];
            self.lo = first;
            return;
        }
        let (lo, hi) = (self.lo.min(first), (self.lo + self.bins.len()).max(end));
        if (lo, hi) != (self.lo, self.lo + self.bins.len()) {
            let mut bins = vec![0.0; hi - lo];
            bins[self.lo - lo..][..self.bins.len()].copy_from_slice(&self.bins);
            self.bins = bins;
            self.lo = lo;
        }
    }

    /// Drops the zero bins below the lowest and above the highest that hold weight (a loaded
    /// histogram has every bin), giving their memory back.
    pub(super) fn trim(&mut self) {
        let first = self.bins.iter().position(|&w| w != 0.0);
        let Some(first) = first else {
            self.bins = Vec::new();
            self.lo = 0;
            return;
        };
        let end = self
            .bins
            .iter()
            .rposition(|&w| w != 0.0)
            .map_or(0, |i| i + 1);
        if (first, end) != (0, self.bins.len()) {
            self.bins = self.bins[first..end].to_vec();
            self.lo += first;
        }
    }

    /// Heap bytes (bins and survival table).
    pub(super) fn bytes(&self) -> usize {
        (self.bins.capacity() + self.cache.surv.capacity()) * std::mem::size_of::<f64>()
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
        let Some(first) = counts.iter().position(|&c| c > 0) else {
            return;
        };
        let end = counts.iter().rposition(|&c| c > 0).map_or(0, |b| b + 1);
        self.cover(first, end);
        let mut n = 0u64;
        let lo = self.lo;
        for (b, &c) in self.bins.iter_mut().zip(&counts[lo..]) {
            if c > 0 {
                *b += f64::from(c) * weight;
                n += u64::from(c);
            }
        }
        self.total += n as f64 * weight;
    }

    /// Smallest sum `x` with at most `tail_weight` of the sums at or above it, from the bins
    /// (log-linear inside a bin) and their survival table `surv`.
    fn empirical_quantile(&self, surv: &TailCache, tail_weight: f64) -> f64 {
        match (0..=NBINS).find(|&b| surv.surv(b) <= tail_weight) {
            Some(b) if b > 0 => {
                let w = self.bin(b - 1);
                let frac = if w > 0.0 {
                    ((surv.surv(b - 1) - tail_weight) / w).clamp(0.0, 1.0)
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
        let n = self.total;
        if n <= 1e-9 || !self.bins.iter().any(|&w| w > 1e-9) {
            self.cache = TailCache::default();
            return;
        }
        let mut surv = vec![0.0; self.bins.len() + 1];
        for i in (0..self.bins.len()).rev() {
            surv[i] = surv[i + 1] + self.bins[i];
        }
        let surv = TailCache {
            surv,
            lo: self.lo,
            ..TailCache::default()
        };
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
            knee,
            knee_weight,
            p99_9,
            median,
            ..surv
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
        ((c.surv(b + 1) + self.bin(b) * frac_above + 0.5) / n1).min(1.0)
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
        let below_knee = match (0..NBINS).find(|&b| !high((c.surv(b + 1) + 0.5) / n1)) {
            Some(b) => lower_edge(b.saturating_sub(1)),
            None => f64::INFINITY,
        };
        if below_knee < c.knee {
            return below_knee;
        }
        let tail = (c.knee_weight + 0.5) / n1 * c.knee * per_bucket / floor_p;
        c.knee.max(tail)
    }

    /// Checks a loaded histogram (every bin, before [`Histogram::trim`]).
    pub(super) fn check(&self, field: &'static str) -> Result<(), ModelError> {
        if self.lo != 0 || self.bins.len() != NBINS {
            return Err(invalid(field, format!("{} bins", self.bins.len())));
        }
        check_weight(field, self.total)?;
        self.bins.iter().try_for_each(|&w| check_weight(field, w))
    }
}
