//! Randomness: a built-in xoshiro256** generator seeded through splitmix64, with independent
//! streams per hour, per 3 h bucket, per day and per attack, so that the output is a pure
//! function of the options.

/// splitmix64: seeds and mixes stream identifiers.
pub(super) fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stream identifiers, so that each part of the output has its own random sequence.
pub(super) const STREAM_WORLD: u64 = 1;
pub(super) const STREAM_HOUR: u64 = 2;
pub(super) const STREAM_BACKUP: u64 = 3;
pub(super) const STREAM_PARTNER: u64 = 4;
pub(super) const STREAM_ATTACK: u64 = 5;

/// xoshiro256**.
#[derive(Debug, Clone)]
pub(super) struct Rng {
    pub(super) s: [u64; 4],
}

impl Rng {
    /// A generator for stream `stream`, index `index`, of seed `seed`.
    pub(super) fn new(seed: u64, stream: u64, index: u64) -> Rng {
        let mut x = seed;
        let a = splitmix64(&mut x);
        let mut x = a ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix64(&mut x);
        let mut x = b ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub(super) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub(super) fn range_f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform in [0, n); n > 0.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi); lo < hi.
    pub(super) fn range_i(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape, clamped to [lo, hi].
    pub(super) fn lognormal(&mut self, median: f64, sigma: f64, lo: f64, hi: f64) -> u64 {
        (median * (sigma * self.normal()).exp()).clamp(lo, hi) as u64
    }

    /// Poisson(lambda): Knuth's method for small lambda, a rounded normal for large.
    pub(super) fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            0
        } else if lambda < 30.0 {
            let l = (-lambda).exp();
            let mut k = 0u64;
            let mut p = self.f64();
            while p > l {
                k += 1;
                p *= self.f64();
            }
            k
        } else {
            (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
        }
    }

    /// An ephemeral source port.
    pub(super) fn ephemeral_port(&mut self) -> u16 {
        self.range_i(49_152, 65_536) as u16
    }

    /// Index into a cumulative weight table.
    pub(super) fn pick(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative.last().copied().unwrap_or(0.0);
        let x = self.f64() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len().saturating_sub(1))
    }
}

/// Running sums of `weights`.
pub(super) fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

/// Splits `total` into `n` positive-ish shares with random weights; the shares sum to `total`.
pub(super) fn split_bytes(rng: &mut Rng, total: u64, n: usize) -> Vec<u64> {
    let weights: Vec<f64> = (0..n).map(|_| rng.range_f(0.5, 1.5)).collect();
    let sum: f64 = weights.iter().sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|w| (total as f64 * w / sum) as u64)
        .collect();
    let assigned: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += total.saturating_sub(assigned);
    }
    shares
}

/// `n` sorted times uniform in [lo, hi).
pub(super) fn sorted_times(rng: &mut Rng, n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut t: Vec<i64> = (0..n).map(|_| rng.range_i(lo, hi)).collect();
    t.sort_unstable();
    t
}

// ---------------------------------------------------------------------------------------------
