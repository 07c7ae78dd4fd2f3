//! Exponential decay per bucket, and weights decayed lazily when read.

use serde::{Deserialize, Serialize};

use super::state::check_weight;
use crate::models::ModelError;

/// Ages whose factor [`Decay`] keeps in a table: the ages a bucket close and an event's own
/// history usually see (an entity seen in the last few buckets).
const TABLED_AGES: usize = 16;

/// Exponential decay per bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    ln_factor: f64,
    /// `factor(age)` for ages below [`TABLED_AGES`], computed by the same expression: a table
    /// read gives the same bits as the `exp` it saves (~20 Ir against ~60, three per sum a
    /// close folds).
    table: [f64; TABLED_AGES],
}

impl Decay {
    /// Decay with the given half-life in buckets (0 or less: no decay).
    pub fn new(half_life_buckets: f64) -> Self {
        let ln_factor = if half_life_buckets > 0.0 {
            -std::f64::consts::LN_2 / half_life_buckets
        } else {
            0.0
        };
        let mut table = [1.0; TABLED_AGES];
        for (age, f) in table.iter_mut().enumerate().skip(1) {
            *f = Self::computed(ln_factor, age as i64);
        }
        Decay { ln_factor, table }
    }

    fn computed(ln_factor: f64, age: i64) -> f64 {
        (ln_factor * age as f64).exp()
    }

    /// Weight of something `age` buckets old (1 when `age <= 0`).
    #[inline]
    pub fn factor(&self, age: i64) -> f64 {
        if age <= 0 {
            1.0
        } else if let Some(&f) = usize::try_from(age).ok().and_then(|a| self.table.get(a)) {
            f
        } else {
            Self::computed(self.ln_factor, age)
        }
    }

    /// Sum of the weights of one unit per bucket over an infinite history (the steady-state
    /// decayed bucket count).
    pub fn steady_total(&self) -> f64 {
        if self.ln_factor == 0.0 {
            f64::INFINITY
        } else {
            1.0 / (1.0 - self.ln_factor.exp())
        }
    }
}

/// A decayed weight valid at bucket `at`.
///
/// Loaded ones are checked with [`Decayed::check`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Decayed {
    /// The weight at bucket `at`.
    pub value: f64,
    /// The bucket the weight is valid at.
    pub at: i32,
}

impl Decayed {
    /// The weight at bucket `now`.
    #[inline]
    pub fn get(&self, now: i32, decay: &Decay) -> f64 {
        self.value * decay.factor(i64::from(now) - i64::from(self.at))
    }

    /// Checks a loaded weight (finite, not negative).
    pub fn check(&self, field: &'static str) -> Result<(), ModelError> {
        check_weight(field, self.value)
    }

    /// Adds one unit that happened in `bucket`, bringing the weight to `now` (>= bucket) first.
    #[inline]
    pub fn add(&mut self, amount: f64, bucket: i32, now: i32, decay: &Decay) {
        let now = now.max(self.at);
        self.value =
            self.get(now, decay) + amount * decay.factor(i64::from(now) - i64::from(bucket));
        self.at = now;
    }
}
