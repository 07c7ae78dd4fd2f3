//! Bucket closes, spread over the events that follow them.
//!
//! A close leaves each closing bucket's sums in its partition's records ([`Closing`],
//! [`BucketSums`]); the events after it fold [`FOLD_PER_EVENT`] of them each into the entities'
//! histories and a per-bin tally, walking the records ([`VISITS_PER_SUM`] a sum at most). When a
//! bucket's last sum is folded, the tally goes into its partition's histograms at once and the
//! partition's tail and counts are recomputed; when the last closing bucket is done, the entity
//! table's maintenance runs. A destination that its sum makes promotable moves to the
//! established tier as it is folded when that tier has room ([`KeyTable::change`]), so the
//! maintenance has no probation tier to walk (the walk and the moves of every key promoted fell
//! on one event, 1M keys at once in the scale bench). The next close first folds whatever is
//! left at once.
//!
//! What an event sees while sums are left to fold:
//! - its own destination's history is complete: the destination's sum in a closing bucket is
//!   folded before the event is scored;
//! - the population (histograms, sums per bucket, the knee) is as of the previous close until
//!   the bucket's last sum is folded: `sums / FOLD_PER_EVENT` events later when most records
//!   hold a sum of it (4,000 events at 1M destinations), at most `records / (VISITS_PER_SUM *
//!   FOLD_PER_EVENT)` (about twice the records) otherwise;
//! - `learning` and the bucket counts are already the new ones.
//!
//! The order sums are folded in cannot change a score: each sum updates its own entity, and the
//! histograms get whole per-bin counts (the same for any order). It can change which entity a
//! full probation tier sheds first (see [`KeyTable`]), as the order of a hash table's walk did
//! before, and, when the established tier is full, which keys are promoted (the first folded
//! take the free room; the maintenance ranks the rest as before).

use super::histogram::bin_of;
#[cfg(doc)]
use super::open::BucketSums;
use super::open::Closing;
use super::{Entity, HighSum, HighSumState, MIN_SELF_BUCKETS};
use crate::models::engine::{Decay, KeyTable};

/// Sums folded per event: ~300 Ir each, so ~80k Ir (tens of microseconds) an event, and a
/// bucket of 1M sums folded within 4,000 events.
pub(super) const FOLD_PER_EVENT: usize = 256;

/// Records the fold looks at per sum it may fold: records without a sum of the closing bucket
/// cost a look each (about 10 Ir), so a bucket of few sums among many destinations is folded
/// over more events rather than in one.
const VISITS_PER_SUM: usize = 8;

/// Folds one closing sum into its entity's history and the bucket's tally.
#[inline]
fn fold_one(entities: &mut KeyTable<Entity>, decay: &Decay, c: &mut Closing, key: u64, sum: f64) {
    let now = c.now;
    let b = c.bucket;
    let x = sum.max(1.0).ln();
    // A made entity's zero weight is what makes it count as new below.
    let make = || Entity {
        weight: 0.0,
        mean: x as f32,
        var: 0.0,
        at: b,
    };
    // Whether the entity was new is read as it is changed (one look-up, not two). `change`
    // always runs the closure, on a made entity too (weight 0, so new, as when a look-up found
    // nothing): the start value below is never read.
    let mut is_new = true;
    entities.change(key, now, decay, make, |e| {
        is_new = e.weight_at(now, decay) < MIN_SELF_BUCKETS;
        e.update(x, b, now, decay);
    });
    c.tally.add(bin_of(sum), is_new && c.newcomers_counted);
}

impl HighSum {
    /// Closes every open bucket older than `oldest_open`: folds what a previous close left,
    /// then moves the closing buckets' sums out, to be folded by the next events.
    pub(super) fn close_before(&mut self, oldest_open: i32) {
        self.fold_all();
        let learning_buckets = u64::from(self.config.model.learning_buckets);
        let st = &mut self.state;
        st.closed_below = Some(st.closed_below.map_or(oldest_open, |c| c.max(oldest_open)));
        let Some(now) = st.clock.head() else {
            return;
        };
        for (&key, part) in st.partitions.iter_mut() {
            for bucket in part.sums.close_before(oldest_open) {
                st.open_keys = st.open_keys.saturating_sub(part.sums.len(bucket));
                let counted = part.buckets >= learning_buckets;
                part.buckets += 1;
                st.closing.push(Closing::new(key, bucket, now, counted));
            }
        }
        if st.closing.is_empty() {
            st.entities.maintain(now, &self.decay);
        }
    }

    /// Folds every sum left (before the next close, and in tests).
    pub(super) fn fold_all(&mut self) {
        self.fold_some(usize::MAX);
    }

    /// Folds `budget` sums of the closing buckets at most (looking at [`VISITS_PER_SUM`]
    /// records a sum at most).
    pub(super) fn fold_some(&mut self, mut budget: usize) {
        let decay = &self.decay;
        let floor_p = self.floor_p;
        let HighSumState {
            closing,
            entities,
            partitions,
            ..
        } = &mut self.state;
        let Some(now) = closing.first().map(|c| c.now) else {
            return;
        };
        let mut visits = budget.saturating_mul(VISITS_PER_SUM);
        while let Some(c) = closing.first_mut() {
            if let Some(part) = partitions.get_mut(&c.partition) {
                while budget > 0 {
                    let Some((key, sum)) = part.sums.next_of(c.bucket, &mut c.next, &mut visits)
                    else {
                        break;
                    };
                    budget -= 1;
                    fold_one(entities, decay, c, key, sum);
                }
                if part.sums.len(c.bucket) > 0 {
                    return;
                }
                part.sums.forget(c.bucket);
                part.sums.shrink();
            }
            let c = closing.remove(0);
            let Some(part) = partitions.get_mut(&c.partition) else {
                continue;
            };
            let age_w = decay.factor(i64::from(now) - i64::from(c.bucket));
            if c.tally.count.entities > 0 {
                part.all.add_counts(&c.tally.all, age_w, now, decay);
            }
            if c.tally.count.newcomers > 0 {
                part.newcomers
                    .add_counts(&c.tally.newcomers, age_w, now, decay);
            }
            if part.recent.len() >= super::RECENT_BUCKETS {
                part.recent.remove(0);
            }
            part.recent.push(c.tally.count);
            if !closing.iter().any(|o| o.partition == c.partition) {
                part.all.refresh();
                part.newcomers.refresh();
                part.recount(floor_p);
            }
        }
        entities.maintain(now, decay);
    }

    /// Folds the sums of `key` still to fold, oldest bucket first: an event for it is about to
    /// read its history.
    #[inline]
    pub(super) fn fold_key(&mut self, partition: u64, key: u64) {
        let HighSumState {
            closing,
            entities,
            partitions,
            ..
        } = &mut self.state;
        let Some(part) = partitions.get_mut(&partition) else {
            return;
        };
        for c in closing.iter_mut().filter(|c| c.partition == partition) {
            if let Some(sum) = part.sums.take(key, c.bucket) {
                #[cfg(test)]
                {
                    c.touched += 1;
                }
                fold_one(entities, &self.decay, c, key, sum);
            }
        }
    }
}
