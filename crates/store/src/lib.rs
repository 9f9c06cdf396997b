//! The store: readings not yet batched, closed batches, consumers' cursors and the chain's
//! state, in one redb file (redb: a pure-Rust, ACID store with durable commits).
//!
//! Every change is one redb write transaction, committed with an fsync before the caller is
//! told it is done, so a crash at any moment leaves the last commit: never half a batch, never
//! a broken chain. The module is narrow on purpose (append and close, read from a sequence,
//! move a cursor, prune) so that the engine stays this file's concern. [`batch`] seals a group
//! of readings into a signed, hash-chained batch and checks a chain offline.

pub mod batch;
mod check;
mod input;
mod recent;
pub mod samples;
pub mod writer;

use std::path::{Path, PathBuf};

use gridgate_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;
use tracing::{info, warn};

use batch::{Framed, GENESIS_HASH, Sealed};
use gridgate_config::DEDUPE_RECENT;
use gridgate_core::sha256;
pub use input::StoreReading;

/// Readings handed to the store and not yet in a batch: id → encoded `Reading`.
const OPEN: TableDefinition<u64, &[u8]> = TableDefinition::new("open_readings");
/// Closed batches: seq → encoded `SignedBatch`.
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// Per batch: (encoded bytes, readings), for retention's accounting.
const BATCH_SIZES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("batch_sizes");
/// Consumer → next batch it needs (everything below is acknowledged).
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// The de-duplication window as stored: per commit, the running number of its first
/// fingerprint (oldest first) to the commit's fingerprints and their values' hashes, packed
/// ([`recent::pack`]). Written in the commit that stores the readings; one row a commit,
/// not one a reading (two B-tree operations a reading were a fifth of ingest's cost).
const DEDUPE_GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_groups");
/// The window as stores written before [`DEDUPE_GROUPS`] kept it, one row a reading: moved
/// into groups on open.
const DEDUPE_ROWS: TableDefinition<u64, (u128, u64)> = TableDefinition::new("dedupe_recent");
/// Counters and positions.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Hashes and the gateway id.
const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");

const NEXT_SEQ: &str = "next_seq";
const FIRST_SEQ: &str = "first_seq";
const NEXT_READING: &str = "next_reading_id";
const NEXT_DEDUPE: &str = "next_dedupe";
const DROPPED_READINGS: &str = "dropped_readings";
const DROPPED_BATCHES: &str = "dropped_batches";
const STORED_BYTES: &str = "stored_bytes";
const LAST_HASH: &str = "last_hash";
const ANCHOR_HASH: &str = "anchor_hash";
const GATEWAY_ID: &str = "gateway_id";

/// redb page cache.
const CACHE_BYTES: usize = 16 << 20;

/// Name of the store file inside the data directory.
pub const FILE_NAME: &str = "gridgate.redb";

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database engine failed (I/O error, full disk, corruption it detected).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// The file is in use by another process.
    #[error("store {0} is open in another process (a running gateway?); stop it, or verify a copy")]
    Busy(PathBuf),
    /// The store's own check failed; it refuses to run on it.
    #[error(
        "store {path} failed its check: {problem}. Move the file aside to start a new chain, or run `gridgate verify` on it to see more"
    )]
    Corrupt {
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory belongs to another gateway.
    #[error("store {path} belongs to gateway {found:?}, this config is gateway {expected:?}")]
    WrongGateway {
        path: PathBuf,
        /// Gateway in the store.
        found: String,
        /// Gateway in the config.
        expected: String,
    },
    /// Cannot create the data directory.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking task that ran a store call panicked or was cancelled.
    #[error("store task: {0}")]
    Task(String),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::db(e)
}

impl StoreError {
    /// A database error, for the crates that keep their own tables in the store.
    pub fn db<E: Into<redb::Error>>(e: E) -> StoreError {
        StoreError::Db(e.into())
    }
}

/// Opens `table` for reading. A table whose owner (the DR desk, the ledger node) has written
/// nothing to this store yet does not exist in the file: `None`, which a reader takes as an
/// empty table.
pub fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::db(e)),
    }
}

/// Positions and counters, as `status` and the metrics report them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Lowest batch still stored.
    pub first_seq: u64,
    /// Next batch to be closed.
    pub next_seq: u64,
    /// Readings waiting for the next batch.
    pub open_readings: u64,
    /// Bytes of stored batches and open readings.
    pub stored_bytes: u64,
    /// Readings dropped by the disk budget before every required consumer had them.
    pub dropped_readings: u64,
    /// Batches dropped by the disk budget.
    pub dropped_batches: u64,
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Readings appended.
    pub appended: usize,
    /// Readings dropped as duplicates (the same point and device timestamp as one of the
    /// most recently stored readings: a message delivered again).
    pub duplicates: usize,
    /// Of those, the points whose dropped reading said something else than the one stored
    /// for that time (a device that reuses timestamps, or a clock gone back).
    pub conflicting: Vec<String>,
    /// Batch closed by this commit: (seq, readings).
    pub closed: Option<(u64, usize)>,
}

/// What one prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Batches removed because every required consumer had them.
    pub delivered: u64,
    /// Batches removed by the disk budget before delivery.
    pub dropped_batches: u64,
    /// Readings in those.
    pub dropped_readings: u64,
}

/// The gateway's store.
#[derive(Debug)]
pub struct Store {
    /// The database; `None` only while [`Store::reopen`] replaces it.
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
    gateway_id: String,
    /// Fingerprints of the most recently stored readings, rebuilt from the store on open.
    recent: std::sync::Mutex<recent::Recent>,
    /// How many of them [`DEDUPE_GROUPS`] keeps.
    dedupe_window: u64,
    /// Points whose samples are kept for DR measurement ([`samples`]).
    metered: std::sync::RwLock<std::collections::BTreeSet<String>>,
}

/// Builds the signed batch from the open readings: given the new batch's sequence number,
/// the previous batch's hash and the readings, it returns the sealed batch.
pub type Sealer<'a> = &'a dyn Fn(u64, [u8; 32], &Framed) -> Sealed;

impl Store {
    /// Opens (or creates) the store in `data_dir` for `gateway_id`, and checks it.
    pub fn open(data_dir: &Path, gateway_id: &str) -> Result<Store, StoreError> {
        Store::open_with(data_dir, gateway_id, DEDUPE_RECENT)
    }

    /// As [`Store::open`], checking redeliveries against the last `dedupe_window` readings
    /// that carried a device timestamp.
    pub fn open_with(
        data_dir: &Path,
        gateway_id: &str,
        dedupe_window: usize,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let database = create(&path)?;
        let store = Store {
            db: std::sync::RwLock::new(Some(database)),
            path,
            gateway_id: gateway_id.to_string(),
            recent: std::sync::Mutex::new(recent::Recent::new(dedupe_window)),
            dedupe_window: dedupe_window as u64,
            metered: std::sync::RwLock::default(),
        };
        store.init_and_check()?;
        store.rebuild_recent()?;
        Ok(store)
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction on the database (for the crates that own tables in it).
    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .ok_or_else(|| self.reopening())?
            .begin_write()
            .map_err(db)
    }

    /// A read transaction on the database.
    pub fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .ok_or_else(|| self.reopening())?
            .begin_read()
            .map_err(db)
    }

    fn reopening(&self) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            problem: "the database is being reopened after an I/O error".into(),
        }
    }

    /// Closes the database and opens it again. After an I/O error (a full disk, say) redb
    /// refuses every later transaction ("Previous I/O error occurred") even once the cause
    /// is gone; a fresh open recovers from the last durable commit, which is all that was
    /// ever acknowledged. Fails (and is tried again later) while the cause persists or a
    /// reader still holds the old file.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must go first: it holds the file's lock.
        *guard = None;
        let fresh = create(&self.path);
        match fresh {
            Ok(d) => {
                *guard = Some(d);
                drop(guard);
                // Readings whose commit failed were taken back from the window already;
                // start from what is durable.
                self.recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                self.rebuild_recent()
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a failed commit calls for [`Store::reopen`]: an I/O error, or redb's refusal
    /// after one.
    pub fn needs_reopen(e: &StoreError) -> bool {
        matches!(
            e,
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
        ) || matches!(e, StoreError::Corrupt { problem, .. } if problem.starts_with("the database is being reopened"))
    }

    fn init_and_check(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            // Create every table of its own so that readers never meet a missing one (the
            // DR and ledger tables are their owners', see `read_table`).
            txn.open_table(OPEN).map_err(db)?;
            txn.open_table(BATCHES).map_err(db)?;
            txn.open_table(BATCH_SIZES).map_err(db)?;
            txn.open_table(CURSORS).map_err(db)?;
            txn.open_table(META).map_err(db)?;
            txn.open_table(samples::SAMPLES).map_err(db)?;
            txn.open_table(DEDUPE_GROUPS).map_err(db)?;
            recent::regroup(&txn, DEDUPE_ROWS, DEDUPE_GROUPS)?;
            let mut bytes = txn.open_table(META_BYTES).map_err(db)?;
            let found = bytes
                .get(GATEWAY_ID)
                .map_err(db)?
                .map(|g| String::from_utf8_lossy(g.value()).into_owned());
            match found {
                None => {
                    bytes
                        .insert(GATEWAY_ID, self.gateway_id.as_bytes())
                        .map_err(db)?;
                    bytes
                        .insert(LAST_HASH, GENESIS_HASH.as_slice())
                        .map_err(db)?;
                    bytes
                        .insert(ANCHOR_HASH, GENESIS_HASH.as_slice())
                        .map_err(db)?;
                    info!(path = %self.path.display(), gateway = %self.gateway_id, "new store");
                }
                Some(g) if g != self.gateway_id => {
                    return Err(StoreError::WrongGateway {
                        path: self.path.clone(),
                        found: g,
                        expected: self.gateway_id.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        let repaired = check::check(&txn, &self.path)?;
        txn.commit().map_err(db)?;
        for r in repaired {
            warn!(path = %self.path.display(), "store repaired: {r}");
        }
        Ok(())
    }

    /// Appends `readings` durably and, when `seal` is given, closes every open reading (old
    /// and new) into the next batch in the same transaction. Returns once the commit is on
    /// disk (fsync).
    ///
    /// Where `dedupe[i]` is true, reading `i` carries the device's own timestamp and is
    /// dropped (and counted) when a reading of the same point with the same timestamp is
    /// among the [`DEDUPE_RECENT`] most recently stored: that is how a message redelivered
    /// after a crash, in whatever order, is stored once.
    pub fn commit<'r, R: StoreReading + 'r>(
        &self,
        readings: impl IntoIterator<Item = &'r R>,
        dedupe: &[bool],
        seal: Option<Sealer<'_>>,
    ) -> Result<Committed, StoreError> {
        let mut provisional = Vec::new();
        let result = self.commit_inner(readings, dedupe, seal, &mut provisional);
        if result.is_err() && !provisional.is_empty() {
            // Nothing was stored: the sources will send these again, and must not be taken
            // for duplicates then.
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for f in provisional {
                recent.remove(f);
            }
        }
        result
    }

    fn commit_inner<'r, R: StoreReading + 'r>(
        &self,
        readings: impl IntoIterator<Item = &'r R>,
        dedupe: &[bool],
        seal: Option<Sealer<'_>>,
        provisional: &mut Vec<u128>,
    ) -> Result<Committed, StoreError> {
        let txn = self.begin_write()?;
        let mut out = Committed::default();
        {
            let mut open = txn.open_table(OPEN).map_err(db)?;
            let mut meta = txn.open_table(META).map_err(db)?;
            let mut sampled = txn.open_table(samples::SAMPLES).map_err(db)?;
            let metered = self.metered.read().unwrap_or_else(|p| p.into_inner());
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let mut next_id = get(&meta, NEXT_READING)?;
            let first_dedupe = get(&meta, NEXT_DEDUPE)?;
            let mut window_rows = Vec::new();
            let mut stored = get(&meta, STORED_BYTES)?;
            // A commit that closes a batch puts its own readings straight into it: through
            // the open-readings table they were encoded, inserted, read back, decoded and
            // deleted, for nothing.
            let mut fresh = Framed::default();
            let mut buf = Vec::with_capacity(128);
            for (i, r) in readings.into_iter().enumerate() {
                if dedupe.get(i).copied().unwrap_or(false) {
                    let f = recent::fingerprint(r.point(), r.ts_ms());
                    let value = r.value_hash();
                    if let Some(stored_value) = recent.get(f) {
                        out.duplicates += 1;
                        if stored_value != value as u32 {
                            out.conflicting.push(r.point().to_string());
                        }
                        continue;
                    }
                    recent.insert(f, value);
                    provisional.push(f);
                    window_rows.push((f, value));
                }
                out.appended += 1;
                if let Some(v) = r.good_number().filter(|_| metered.contains(r.point())) {
                    sampled.insert((r.point(), r.ts_ms()), v).map_err(db)?;
                }
                buf.clear();
                r.encode_to(&mut buf);
                if seal.is_some() {
                    fresh.push_encoded(&buf);
                    continue;
                }
                open.insert(next_id, buf.as_slice()).map_err(db)?;
                stored += buf.len() as u64;
                next_id += 1;
            }
            meta.insert(NEXT_READING, next_id).map_err(db)?;
            if !window_rows.is_empty() {
                let next_dedupe = first_dedupe + window_rows.len() as u64;
                let mut window = txn.open_table(DEDUPE_GROUPS).map_err(db)?;
                window
                    .insert(first_dedupe, recent::pack(&window_rows).as_slice())
                    .map_err(db)?;
                meta.insert(NEXT_DEDUPE, next_dedupe).map_err(db)?;
                let keep_from = next_dedupe.saturating_sub(self.dedupe_window);
                // A group goes once all of it is older than the window.
                window
                    .retain_in(..keep_from, |first, packed| {
                        first + recent::packed_len(packed) > keep_from
                    })
                    .map_err(db)?;
            }
            if let Some(seal) = seal {
                let mut batched = Framed::default();
                let mut open_bytes = 0u64;
                for entry in open.iter().map_err(db)? {
                    let (_, v) = entry.map_err(db)?;
                    open_bytes += v.value().len() as u64;
                    // Sealed as stored: only this process writes these bytes, and the check
                    // on open decodes every one.
                    batched.push_encoded(v.value());
                }
                if !batched.is_empty() {
                    open.retain(|_, _| false).map_err(db)?;
                }
                batched.append(fresh);
                if !batched.is_empty() {
                    let seq = get(&meta, NEXT_SEQ)?;
                    let mut hashes = txn.open_table(META_BYTES).map_err(db)?;
                    let prev = hash_of(&hashes, LAST_HASH)?;
                    let sealed = seal(seq, prev, &batched);
                    let mut batches = txn.open_table(BATCHES).map_err(db)?;
                    batches.insert(seq, sealed.bytes.as_slice()).map_err(db)?;
                    let mut sizes = txn.open_table(BATCH_SIZES).map_err(db)?;
                    sizes
                        .insert(seq, (sealed.bytes.len() as u64, sealed.readings as u64))
                        .map_err(db)?;
                    hashes
                        .insert(LAST_HASH, sealed.hash.as_slice())
                        .map_err(db)?;
                    meta.insert(NEXT_SEQ, seq + 1).map_err(db)?;
                    stored = stored - open_bytes.min(stored) + sealed.bytes.len() as u64;
                    out.closed = Some((seq, sealed.readings));
                }
            }
            meta.insert(STORED_BYTES, stored).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(out)
    }

    /// Up to `max` batches from `from` on: (seq, encoded `SignedBatch`).
    pub fn batches_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(BATCHES).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.range(from..).map_err(db)?.take(max) {
            let (k, v) = entry.map_err(db)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The next batch `consumer` needs (0 for a consumer never seen).
    pub fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(CURSORS).map_err(db)?;
        Ok(t.get(consumer).map_err(db)?.map_or(0, |v| v.value()))
    }

    /// Every consumer's cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(CURSORS).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Records durably that `consumer` has every batch below `next`. A cursor never moves
    /// back, and never past the last closed batch.
    pub fn set_cursor(&self, consumer: &str, next: u64) -> Result<u64, StoreError> {
        let txn = self.begin_write()?;
        let value;
        {
            let meta = txn.open_table(META).map_err(db)?;
            let next_seq = get(&meta, NEXT_SEQ)?;
            let mut t = txn.open_table(CURSORS).map_err(db)?;
            let old = t.get(consumer).map_err(db)?.map_or(0, |v| v.value());
            value = next.min(next_seq).max(old);
            t.insert(consumer, value).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(value)
    }

    /// Removes batches every `required` consumer has (none when the list is empty), then,
    /// while the store holds more than `budget` bytes, the oldest batches whether delivered or
    /// not, counting what that drops.
    pub fn prune(&self, required: &[String], budget: u64) -> Result<Pruned, StoreError> {
        let txn = self.begin_write()?;
        let mut out = Pruned::default();
        let removed = {
            let cursors = txn.open_table(CURSORS).map_err(db)?;
            let mut meta = txn.open_table(META).map_err(db)?;
            let mut batches = txn.open_table(BATCHES).map_err(db)?;
            let mut sizes = txn.open_table(BATCH_SIZES).map_err(db)?;
            let mut hashes = txn.open_table(META_BYTES).map_err(db)?;
            let next_seq = get(&meta, NEXT_SEQ)?;
            let mut first = get(&meta, FIRST_SEQ)?;
            let mut stored = get(&meta, STORED_BYTES)?;
            // With no required consumer, nobody has said a batch is done with: keep
            // everything until the budget forces.
            let mut delivered_below = if required.is_empty() { 0 } else { next_seq };
            for c in required {
                let at = cursors
                    .get(c.as_str())
                    .map_err(db)?
                    .map_or(0, |v| v.value());
                delivered_below = delivered_below.min(at);
            }
            let mut anchor: Option<[u8; 32]> = None;
            let first_before = first;
            while first < next_seq && (first < delivered_below || stored > budget) {
                let Some(bytes) = batches.remove(first).map_err(db)? else {
                    break;
                };
                let signed =
                    pb::SignedBatch::decode(bytes.value()).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        problem: format!("batch {first} does not decode: {e}"),
                    })?;
                anchor = Some(sha256(&signed.batch));
                drop(bytes);
                let (len, readings) = sizes
                    .remove(first)
                    .map_err(db)?
                    .map_or((0, 0), |v| v.value());
                stored = stored.saturating_sub(len);
                if first < delivered_below {
                    out.delivered += 1;
                } else {
                    out.dropped_batches += 1;
                    out.dropped_readings += readings;
                }
                first += 1;
            }
            if let Some(a) = anchor {
                hashes.insert(ANCHOR_HASH, a.as_slice()).map_err(db)?;
            }
            let removed = first != first_before;
            if removed {
                meta.insert(FIRST_SEQ, first).map_err(db)?;
                meta.insert(STORED_BYTES, stored).map_err(db)?;
            }
            if out.dropped_batches > 0 {
                let dr = get(&meta, DROPPED_READINGS)? + out.dropped_readings;
                let db_ = get(&meta, DROPPED_BATCHES)? + out.dropped_batches;
                meta.insert(DROPPED_READINGS, dr).map_err(db)?;
                meta.insert(DROPPED_BATCHES, db_).map_err(db)?;
            }
            removed
        };
        // Nothing to remove (the usual case after a batch closes): no commit, whose fsync
        // would double the disk's work for every batch.
        if !removed {
            txn.abort().map_err(db)?;
            return Ok(out);
        }
        txn.commit().map_err(db)?;
        if out.dropped_batches > 0 {
            warn!(
                batches = out.dropped_batches,
                readings = out.dropped_readings,
                budget,
                "disk budget reached: dropped the oldest batches before every required consumer had them"
            );
        }
        Ok(out)
    }

    /// Positions and counters.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let open = txn.open_table(OPEN).map_err(db)?;
        let g = |k| -> Result<u64, StoreError> {
            Ok(meta.get(k).map_err(db)?.map_or(0, |v| v.value()))
        };
        Ok(StoreStats {
            first_seq: g(FIRST_SEQ)?,
            next_seq: g(NEXT_SEQ)?,
            open_readings: open.len().map_err(db)?,
            stored_bytes: g(STORED_BYTES)?,
            dropped_readings: g(DROPPED_READINGS)?,
            dropped_batches: g(DROPPED_BATCHES)?,
        })
    }

    /// Where the stored chain starts: (first seq, hash of the batch before it).
    pub fn anchor(&self) -> Result<(u64, [u8; 32]), StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let hashes = txn.open_table(META_BYTES).map_err(db)?;
        let first = meta.get(FIRST_SEQ).map_err(db)?.map_or(0, |v| v.value());
        Ok((first, hash_of(&hashes, ANCHOR_HASH)?))
    }

    /// Fills the recent-readings fingerprints from the stored window ([`DEDUPE_GROUPS`]); a store
    /// written before the window was kept falls back to the open readings and the newest
    /// batches, oldest first.
    fn rebuild_recent(&self) -> Result<(), StoreError> {
        let txn = self.begin_read()?;
        let window = txn.open_table(DEDUPE_GROUPS).map_err(db)?;
        if !window.is_empty().map_err(db)? {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            // Oldest first, so the cap keeps the newest.
            for e in window.iter().map_err(db)? {
                let (_, v) = e.map_err(db)?;
                for (f, value) in recent::unpack(v.value()) {
                    recent.insert(f, value);
                }
            }
            return Ok(());
        }
        let open = txn.open_table(OPEN).map_err(db)?;
        let batches = txn.open_table(BATCHES).map_err(db)?;
        let mut newest_first: Vec<(u128, u64)> = Vec::new();
        for e in open.iter().map_err(db)?.rev() {
            let (_, v) = e.map_err(db)?;
            if let Ok(r) = pb::Reading::decode(v.value()) {
                newest_first.push((recent::fingerprint(&r.point, r.ts_ms), r.value_hash()));
            }
            if newest_first.len() >= DEDUPE_RECENT {
                break;
            }
        }
        for e in batches.iter().map_err(db)?.rev() {
            if newest_first.len() >= DEDUPE_RECENT {
                break;
            }
            let (_, v) = e.map_err(db)?;
            let Some(batch) = pb::SignedBatch::decode(v.value())
                .ok()
                .and_then(|s| pb::Batch::decode(s.batch.as_slice()).ok())
            else {
                continue;
            };
            for r in batch.readings.iter().rev() {
                newest_first.push((recent::fingerprint(&r.point, r.ts_ms), r.value_hash()));
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (f, value) in newest_first.into_iter().rev() {
            recent.insert(f, value);
        }
        Ok(())
    }

    /// Runs `f` on this store on a blocking thread: every store call made from async code
    /// goes through here, so that a commit's fsync never stalls the async threads.
    pub async fn run<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The gateway id the store belongs to.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }
}

/// Reads a store that may belong to any gateway (for `gridgate verify`): the file's gateway
/// id is taken as it is.
pub fn open_for_verify(data_dir: &Path) -> Result<Store, StoreError> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Err(StoreError::Corrupt {
            path,
            problem: "no store here (is --data-dir the gateway's data directory?)".into(),
        });
    }
    let database = match Database::open(&path) {
        Ok(d) => d,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Busy(path)),
        Err(e) => return Err(db(e)),
    };
    let gateway_id = {
        let txn = database.begin_read().map_err(db)?;
        let t = txn.open_table(META_BYTES).map_err(db)?;
        t.get(GATEWAY_ID)
            .map_err(db)?
            .map(|g| String::from_utf8_lossy(g.value()).into_owned())
            .unwrap_or_default()
    };
    Ok(Store {
        db: std::sync::RwLock::new(Some(database)),
        path,
        gateway_id,
        recent: std::sync::Mutex::new(recent::Recent::new(0)),
        dedupe_window: 0,
        metered: std::sync::RwLock::default(),
    })
}

/// Opens or creates the database file. redb's page cache defaults to 1 GiB; a gateway box
/// has little memory and the store is mostly written once and read once (by the uplink), so
/// it is kept small.
fn create(path: &Path) -> Result<Database, StoreError> {
    match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
        Ok(d) => Ok(d),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Busy(path.to_path_buf())),
        Err(e) => Err(db(e)),
    }
}

fn get(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(t.get(key).map_err(db)?.map_or(0, |v| v.value()))
}

fn hash_of(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<[u8; 32], StoreError> {
    let v = t.get(key).map_err(db)?;
    let mut out = GENESIS_HASH;
    if let Some(v) = v {
        if v.value().len() == 32 {
            out.copy_from_slice(v.value());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
