//! Fingerprints of the most recently stored readings, bounded in number: what a redelivered
//! message is checked against. 128-bit fingerprints of (point, device time) keep it small
//! (about 60 bytes an entry) while a false match stays out of reach (about 1 in 10^28 for
//! the window's size). Each carries a hash of the value stored, so a device that sends a
//! *different* value for a time already stored is told apart from a plain redelivery.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::{StoreError, db};

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

/// The last `cap` fingerprints inserted, each with its value's hash.
///
/// Sized for its memory: the fingerprint is kept as two u64 (alignment 8, not u128's 16)
/// with 32 bits of the value's hash, 24 bytes an entry; and the table is made large enough
/// at its first insert that the churn of a full window is rehashed in place, never by
/// doubling (which held the old and the new table together: 26 MB at the ingest bench's
/// peak).
#[derive(Debug)]
pub struct Recent {
    set: HashMap<[u64; 2], u32, Spread>,
    order: VecDeque<u128>,
    cap: usize,
}

/// Hashes a fingerprint for the table: it is a hash already, so its bits are used as they
/// are (SipHash over it again was a twentieth of ingest's time).
#[derive(Debug, Default, Clone, Copy)]
struct Spread;

impl std::hash::BuildHasher for Spread {
    type Hasher = SpreadHasher;

    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

/// The hasher of [`Spread`]: mixes the words it is given without rehashing them.
#[derive(Debug)]
struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = self.0.rotate_left(17) ^ word;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// The table key of a fingerprint.
fn key(f: u128) -> [u64; 2] {
    [(f >> 64) as u64, f as u64]
}

impl Recent {
    /// Remembers at most `cap`.
    pub fn new(cap: usize) -> Self {
        Recent {
            set: HashMap::default(),
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
        // The oldest goes before the newest comes: a full window one over its reserve
        // would double the order's memory (6.4 MB, not 3.2, at the default window).
        while self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&key(old));
            }
        }
        self.order.push_back(f);
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

/// Bytes of one packed window entry: the fingerprint and the value's hash, little-endian.
const PACKED: usize = 24;

/// One commit's window entries as the store keeps them: a row of packed entries.
pub fn pack(entries: &[(u128, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * PACKED);
    for (f, value) in entries {
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// How many entries a packed row holds.
pub fn packed_len(packed: &[u8]) -> u64 {
    (packed.len() / PACKED) as u64
}

/// The entries of a packed row, oldest first (a torn tail, which a commit never writes, is
/// ignored).
pub fn unpack(packed: &[u8]) -> impl Iterator<Item = (u128, u64)> + '_ {
    packed.chunks_exact(PACKED).map(|c| {
        let mut f = [0u8; 16];
        let mut value = [0u8; 8];
        f.copy_from_slice(&c[..16]);
        value.copy_from_slice(&c[16..]);
        (u128::from_le_bytes(f), u64::from_le_bytes(value))
    })
}

/// Entries a moved row holds at most.
const REGROUP: usize = 1_000;

/// Moves a window kept one row a reading (`rows`, stores before the packed rows) into
/// packed rows of `groups`, keyed by each one's first running number, and deletes `rows`.
pub fn regroup(
    txn: &WriteTransaction,
    rows: TableDefinition<u64, (u128, u64)>,
    groups: TableDefinition<u64, &[u8]>,
) -> Result<(), StoreError> {
    let has_rows = txn
        .list_tables()
        .map_err(db)?
        .any(|t| t.name() == rows.name());
    if !has_rows {
        return Ok(());
    }
    let mut moved: Vec<(u64, (u128, u64))> = Vec::new();
    {
        let table = txn.open_table(rows).map_err(db)?;
        for e in table.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            moved.push((k.value(), v.value()));
        }
    }
    let mut out = txn.open_table(groups).map_err(db)?;
    for chunk in moved.chunks(REGROUP) {
        let entries: Vec<(u128, u64)> = chunk.iter().map(|(_, e)| *e).collect();
        out.insert(chunk[0].0, pack(&entries).as_slice())
            .map_err(db)?;
    }
    drop(out);
    txn.delete_table(rows).map_err(db)?;
    Ok(())
}
