//! The store's check on open: chain continuity, the last hash, cursors. What can be
//! repaired without losing a reading is repaired (and said); anything else refuses to start.

use std::path::Path;

use gridgate_proto::v1 as pb;
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::{
    ANCHOR_HASH, BATCH_SIZES, BATCHES, CURSORS, FIRST_SEQ, LAST_HASH, META, META_BYTES, NEXT_SEQ,
    OPEN, STORED_BYTES, StoreError, db, get, hash_of,
};
use gridgate_core::sha256;

/// Checks the store inside `txn`; returns the repairs made.
pub(super) fn check(txn: &WriteTransaction, path: &Path) -> Result<Vec<String>, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let mut repairs = Vec::new();
    let mut meta = txn.open_table(META).map_err(db)?;
    let hashes = txn.open_table(META_BYTES).map_err(db)?;
    let batches = txn.open_table(BATCHES).map_err(db)?;
    let sizes = txn.open_table(BATCH_SIZES).map_err(db)?;
    let first_seq = get(&meta, FIRST_SEQ)?;
    let next_seq = get(&meta, NEXT_SEQ)?;
    if first_seq > next_seq {
        return Err(corrupt(format!(
            "first batch {first_seq} is after the next batch {next_seq}"
        )));
    }
    let first = batches.first().map_err(db)?.map(|(k, _)| k.value());
    let last = batches
        .last()
        .map_err(db)?
        .map(|(k, v)| (k.value(), v.value().to_vec()));
    let count = batches.len().map_err(db)?;
    match (first, last) {
        (None, None) => {
            if first_seq != next_seq {
                return Err(corrupt(format!(
                    "batches {first_seq}..{next_seq} are recorded but none is stored"
                )));
            }
        }
        (Some(f), Some((l, bytes))) => {
            if f != first_seq || l + 1 != next_seq || count != next_seq - first_seq {
                return Err(corrupt(format!(
                    "batches stored {f}..={l} ({count} of them) do not match the recorded {first_seq}..{next_seq}: a gap in the chain"
                )));
            }
            let signed = pb::SignedBatch::decode(bytes.as_slice())
                .map_err(|e| corrupt(format!("last batch {l} does not decode: {e}")))?;
            if sha256(&signed.batch) != hash_of(&hashes, LAST_HASH)? {
                return Err(corrupt(format!(
                    "last batch {l} does not match the recorded chain head"
                )));
            }
            let first_bytes = batches
                .get(f)
                .map_err(db)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            let first_batch = pb::SignedBatch::decode(first_bytes.as_slice())
                .ok()
                .and_then(|s| pb::Batch::decode(s.batch.as_slice()).ok())
                .ok_or_else(|| corrupt(format!("first batch {f} does not decode")))?;
            if first_batch.prev_hash != hash_of(&hashes, ANCHOR_HASH)? {
                return Err(corrupt(format!(
                    "first batch {f} does not link to the recorded anchor"
                )));
            }
            if sizes.len().map_err(db)? != count {
                return Err(corrupt(
                    "batch size records do not match the batches".into(),
                ));
            }
        }
        _ => return Err(corrupt("batch table is inconsistent".into())),
    }
    // Cursors past the chain's head cannot be right: bring them back to it.
    let mut cursors = txn.open_table(CURSORS).map_err(db)?;
    let ahead: Vec<(String, u64)> = cursors
        .iter()
        .map_err(db)?
        .filter_map(|e| e.ok())
        .map(|(k, v)| (k.value().to_string(), v.value()))
        .filter(|(_, v)| *v > next_seq)
        .collect();
    for (c, v) in ahead {
        cursors.insert(c.as_str(), next_seq).map_err(db)?;
        repairs.push(format!(
            "cursor {c:?} was at {v}, past the last batch; set to {next_seq}"
        ));
    }
    // Stored bytes are a running sum: recompute it so that an old bug cannot skew retention.
    let open = txn.open_table(OPEN).map_err(db)?;
    let mut total = 0u64;
    for e in sizes.iter().map_err(db)? {
        total += e.map_err(db)?.1.value().0;
    }
    for e in open.iter().map_err(db)? {
        let (id, v) = e.map_err(db)?;
        // A batch is sealed from these bytes as they are (`batch::Framed`), so one that does
        // not decode would be signed into a batch no one could read.
        if let Err(err) = pb::Reading::decode(v.value()) {
            return Err(corrupt(format!(
                "open reading {} does not decode: {err}",
                id.value()
            )));
        }
        total += v.value().len() as u64;
    }
    if total != get(&meta, STORED_BYTES)? {
        meta.insert(STORED_BYTES, total).map_err(db)?;
    }
    Ok(repairs)
}
