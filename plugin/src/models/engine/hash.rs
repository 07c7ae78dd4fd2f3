//! Keyed hashing: one rapidhash per key part under the installation's secrets, and maps that
//! use the hash as it is.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rapidhash::v3::{rapidhash_v3_inline, RapidSecrets};
use serde::{Deserialize, Serialize};

/// Keys are already uniformly distributed (keyed rapidhash), so the maps use them as they are.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by pre-hashed 64-bit keys.
pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// Keyed 64-bit hashing of field values: rapidhash V3 (its protected variant) under secrets
/// derived from the seed. The keys are part of the saved state, so the hash must give the same
/// output on every platform and crate version (rapidhash's `v3` functions promise that;
/// foldhash and ahash do not); only the seed is saved, the secrets are derived again on load.
/// Why this hash and not SipHash: see ARCHITECTURE.md ("Hash keys are secret per installation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u64", into = "u64")]
pub struct KeyHasher {
    seed: u64,
    secrets: RapidSecrets,
}

impl From<u64> for KeyHasher {
    fn from(seed: u64) -> Self {
        KeyHasher::new(seed)
    }
}

impl From<KeyHasher> for u64 {
    fn from(hasher: KeyHasher) -> u64 {
        hasher.seed
    }
}

/// What an absent part of a key is folded in with (an empty string is hashed like any other).
const ABSENT: u64 = 0x6162_7365_6e74_00fe;

impl KeyHasher {
    /// A hasher with the given secret.
    pub fn new(seed: u64) -> Self {
        KeyHasher {
            seed,
            secrets: RapidSecrets::seed(seed ^ 0x6567_7265_7373_7761),
        }
    }

    /// Hash of a sequence of optional strings (absent and empty are distinct): each present part
    /// is hashed once, seeded with the hash of the parts before it; an absent one is a mix.
    #[inline]
    pub fn key(&self, parts: &[Option<&str>]) -> u64 {
        let mut h = self.secrets.seed;
        for p in parts {
            h = match p {
                Some(s) => rapidhash_v3_inline::<true, false, true>(
                    s.as_bytes(),
                    &RapidSecrets {
                        seed: h,
                        secrets: self.secrets.secrets,
                    },
                ),
                None => mix(h, ABSENT),
            };
        }
        h
    }
}

/// Mixes two keys into one (for derived keys such as value-within-entity).
pub fn mix(a: u64, b: u64) -> u64 {
    let x = (a ^ b.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 31)
}
