//! Machinery shared by every model, one unit each: keyed hashing (`hash.rs`), the event-time
//! bucket clock (`clock.rs`), exponential decay (`decay.rs`), the bounded two-tier key table
//! (`keys.rs`), the dense map it and `high_sum`'s open buckets keep their entries in
//! (`dense.rs`), versioned state encoding (`state.rs`), the score curve (`score.rs`) and the
//! settings every model shares (`config.rs`). Human formatting is `egresswatch_common::human`'s.
//!
//! # Bucket clock
//! `bucket = time_ms.div_euclid(bucket_span_ms)`. The newest bucket seen is the *head*. Buckets
//! `head - lateness ..= head` are *open*: events for them are counted into their own bucket. When
//! the head moves forward, buckets older than `head - lateness` *close* (the model folds them into
//! its history). An event for a closed bucket is *far-late*: it is scored, but changes nothing.
//! A forward jump closes everything at once and decays history by the whole gap, so the clock
//! does not take one event's word for it ([`Clock`]): an event far ahead of the host's clock, or
//! a jump that neither the host's clock nor a quorum of events confirms, is counted into the
//! current bucket instead and counted as a *future* event.
//!
//! # Decay
//! Every count is a decayed weight: one bucket of age `a` weighs `0.5^(a / half_life_buckets)`.
//! Weights are stored with the bucket they are valid at and decayed lazily when read.
//!
//! # Memory cap and eviction policy ([`KeyTable`])
//! `max_entities` keys per job, split into an *established* tier (3/4) and a *probationary* tier
//! (1/4). A new key always enters probation. A probationary key is promoted at a bucket close, or
//! when probation fills up while the established tier has room, once the model says it has enough
//! evidence (it appeared in at least two distinct buckets). When probation is still full, it sheds
//! half of itself in one pass (amortised O(1) per insert): if the established tier has free room
//! for it, the heavier half moves there (free room is lent, never taken from a key); otherwise the
//! lighter half by decayed weight (oldest first on ties) is evicted. When the established tier is
//! full at a bucket close, established keys are evicted only if their decayed weight is below that
//! of the candidates being promoted, at most 1/16 of the tier per bucket. So a spray of random
//! keys, however large, only churns probation and free room and never evicts an established key;
//! displacing one takes a key that kept appearing for longer than it has recently, and even then
//! only 1/16 of the baseline can go per bucket.

mod clock;
mod config;
mod decay;
mod dense;
mod hash;
mod keys;
mod score;
mod state;

pub use clock::{Clock, Slot, CLOCK_QUORUM, FUTURE_SKEW_MS};
pub use config::ModelConfig;
pub use decay::{Decay, Decayed};
#[cfg(test)]
pub use dense::FREED_ELSEWHERE;
pub use dense::{free_elsewhere, DenseMap, Pairs, FREE_ELSEWHERE_BYTES, HELPER_THREAD};
pub use hash::{mix, KeyHasher, KeyMap, PassThrough};
pub use keys::{KeyTable, Tracked};
pub use score::{floor_probability, normal_neg_log10_sf, round_count, score_from_log10_p};
pub use state::{check_weight, decode_state, encode_state, invalid, map_bytes, Kind};

#[cfg(test)]
mod tests;
