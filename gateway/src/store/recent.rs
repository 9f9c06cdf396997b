//! Fingerprints of the most recently stored readings, bounded in number: what a redelivered
//! message is checked against. 128-bit fingerprints of (point, device time) keep it small
//! (about 50 bytes an entry) while a false match stays out of reach (about 1 in 10^28 for
//! the window's size).

use std::collections::{HashSet, VecDeque};
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

/// The last `cap` fingerprints inserted.
#[derive(Debug)]
pub struct Recent {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    cap: usize,
}

impl Recent {
    /// Remembers at most `cap`.
    pub fn new(cap: usize) -> Self {
        Recent {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Seen recently?
    pub fn contains(&self, f: u128) -> bool {
        self.set.contains(&f)
    }

    /// Remembers `f`, forgetting the oldest beyond the cap.
    pub fn insert(&mut self, f: u128) {
        if self.cap == 0 || !self.set.insert(f) {
            return;
        }
        self.order.push_back(f);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets `f` (its commit failed).
    pub fn remove(&mut self, f: u128) {
        if self.set.remove(&f) {
            if let Some(pos) = self.order.iter().rposition(|x| *x == f) {
                self.order.remove(pos);
            }
        }
    }
}
