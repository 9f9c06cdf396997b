//! Fingerprints of the most recently stored readings, bounded in number: what a redelivered
//! message is checked against. 128-bit fingerprints of (point, device time) keep it small
//! (about 60 bytes an entry) while a false match stays out of reach (about 1 in 10^28 for
//! the window's size). Each carries a hash of the value stored, so a device that sends a
//! *different* value for a time already stored is told apart from a plain redelivery.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// A reading's fingerprint.
pub fn fingerprint(point: &str, ts_ms: i64) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        point.hash(&mut h);
        ts_ms.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// A hash of what a reading says (value and quality), to compare two readings of one time.
pub fn value_hash(r: &gridgate_proto::v1::Reading) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.quality.hash(&mut h);
    match &r.value {
        None => 0u8.hash(&mut h),
        Some(gridgate_proto::v1::reading::Value::Number(n)) => (1u8, n.to_bits()).hash(&mut h),
        Some(gridgate_proto::v1::reading::Value::Flag(b)) => (2u8, *b).hash(&mut h),
        Some(gridgate_proto::v1::reading::Value::Text(t)) => (3u8, t).hash(&mut h),
    }
    h.finish()
}

/// The last `cap` fingerprints inserted, each with its value's hash.
///
/// Sized for its memory: the fingerprint is kept as two u64 (alignment 8, not u128's 16)
/// with 32 bits of the value's hash, 24 bytes an entry; and the table is made large enough
/// at its first insert that the churn of a full window is rehashed in place, never by
/// doubling (which held the old and the new table together: 26 MB at the ingest bench's
/// peak).
#[derive(Debug)]
pub struct Recent {
    set: HashMap<[u64; 2], u32>,
    order: VecDeque<u128>,
    cap: usize,
}

/// The table key of a fingerprint.
fn key(f: u128) -> [u64; 2] {
    [(f >> 64) as u64, f as u64]
}

impl Recent {
    /// Remembers at most `cap`.
    pub fn new(cap: usize) -> Self {
        Recent {
            set: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// The value hash stored with `f` (its low 32 bits), if it was seen recently.
    pub fn get(&self, f: u128) -> Option<u32> {
        self.set.get(&key(f)).copied()
    }

    /// Remembers `f` with its value's hash, forgetting the oldest beyond the cap.
    pub fn insert(&mut self, f: u128, value: u64) {
        if self.cap == 0 {
            return;
        }
        if self.set.capacity() == 0 {
            // Only a store that takes device-timed readings pays for the window.
            self.set.reserve(self.cap.saturating_mul(2));
            self.order.reserve(self.cap);
        }
        if self.set.insert(key(f), value as u32).is_some() {
            return;
        }
        self.order.push_back(f);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&key(old));
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.set.clear();
        self.order.clear();
    }

    /// Forgets `f` (its commit failed).
    pub fn remove(&mut self, f: u128) {
        if self.set.remove(&key(f)).is_some() {
            if let Some(pos) = self.order.iter().rposition(|x| *x == f) {
                self.order.remove(pos);
            }
        }
    }
}
