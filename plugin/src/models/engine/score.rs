//! The score curve: probabilities to Elastic's 0-100 anomaly scores, the score floor, the
//! normal tail.

/// The anchors of [`score_from_log10_p`]: (`-log10 p`, score).
const SCORE_ANCHORS: [(f64, f64); 9] = [
    (0.0, 0.0),
    (0.5, 3.0),
    (1.0, 20.0),
    (1.5, 60.0),
    (1.7, 75.0),
    (2.5, 85.0),
    (3.0, 90.0),
    (4.0, 96.0),
    (6.0, 100.0),
];

/// Score 0-100 from `-log10 p`: piecewise linear through these anchors, monotone.
///
/// | -log10 p | 0 | 0.5 | 1 | 1.5 | 1.7 | 2.5 | 3 | 4 | 6 |
/// |---|---|---|---|---|---|---|---|---|---|
/// | score | 0 | 3 | 20 | 60 | 75 | 85 | 90 | 96 | 100 |
///
/// Why: the steep middle puts "critical" (75) at p = 0.02, i.e. a value absent from ~30 buckets of
/// history (`rare`) or a bucket sum above everything in a population of ~50 sums per bucket
/// (`high_sum`, whose `p` is already multiplied by the population size); anything seen in one
/// bucket out of ten or more (p >= 0.1) stays under 20, below "minor"; the flat top separates
/// "never in a month" (p ~ 2e-4, ~94) from "never in a day" (~80) without saturating.
pub fn score_from_log10_p(l: f64) -> f64 {
    if l.is_nan() || l <= 0.0 {
        return 0.0;
    }
    for w in SCORE_ANCHORS.windows(2) {
        let (x0, y0) = w[0];
        let (x1, y1) = w[1];
        if l <= x1 {
            return y0 + (y1 - y0) * (l - x0) / (x1 - x0);
        }
    }
    100.0
}

/// The probability at or above which an event is sure to score below `score_floor`, with a
/// margin (twice the probability at the floor, or halfway to 1) so that rounding in the exact
/// computation can never make such an event reach the floor. `None` when every score is wanted
/// (a floor of 0).
///
/// Why: the score is monotone in `-log10 p`, so a model can compare `p` (or a bound of it it
/// already has) with this instead of computing logarithms and tails for the many events that
/// cannot alert.
pub fn floor_probability(score_floor: f64) -> Option<f64> {
    if score_floor.is_nan() || score_floor <= 0.0 {
        return None;
    }
    // The inverse of `score_from_log10_p` at the floor.
    let mut l = f64::INFINITY;
    for w in SCORE_ANCHORS.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if score_floor <= y1 {
            l = x0 + (x1 - x0) * (score_floor - y0) / (y1 - y0);
            break;
        }
    }
    let p = 10f64.powf(-l);
    Some((2.0 * p).min(0.5 * (1.0 + p)))
}

/// `-log10` of the standard normal upper tail `P(Z >= z)`.
pub fn normal_neg_log10_sf(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    if z < 5.0 {
        // erfc via Numerical Recipes' erfcc (fractional error < 1.2e-7).
        let x = z / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * x.abs());
        let y = t
            * (-x * x - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        let erfc = if x >= 0.0 { y } else { 2.0 - y };
        -(0.5 * erfc).max(1e-300).log10()
    } else {
        // Mills ratio asymptote.
        let ln_sf = -0.5 * z * z - (z * (2.0 * std::f64::consts::PI).sqrt()).ln();
        -ln_sf / std::f64::consts::LN_10
    }
}

/// `x.round() as u64` (halves away from zero), for the counts the models report (three an
/// event). `f64::round` is a call to the C library on x86-64 without SSE4.1 (~16 Ir) and the
/// cast to `u64` a dozen instructions more; a count below 2^52 is cast to `i64` (one
/// instruction and its checks) and back instead: the part the cast dropped, `x - t`, is exact
/// there, so comparing it with one half rounds as `round` does. Anything else (negative, NaN,
/// huge) goes the usual way.
#[inline]
pub fn round_count(x: f64) -> u64 {
    /// 2^52: from here on every `f64` is an integer.
    const INTEGERS_FROM: f64 = 4_503_599_627_370_496.0;
    if (0.0..INTEGERS_FROM).contains(&x) {
        let t = x as i64;
        (t + i64::from(x - t as f64 >= 0.5)) as u64
    } else {
        x.round() as u64
    }
}
