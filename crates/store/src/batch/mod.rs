//! Batches: close a group of readings, chain it to the previous batch by hash, sign it with
//! the gateway's identity key, and check a whole chain offline.
//!
//! The canonical encoding of a batch is the protobuf encoding of the unsigned `Batch`
//! (`gridgate.v1`); `SignedBatch` carries those exact bytes and an Ed25519 signature over
//! them. A batch's hash is SHA-256 of the same bytes; batch 0 follows 32 zero bytes.

pub mod verify;

use gridgate_proto::v1 as pb;
use prost::Message;

use gridgate_core::{Identity, sha256};

/// Hash before the first batch.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// A closed, signed batch ready to store and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Sequence number.
    pub seq: u64,
    /// Encoded `SignedBatch`.
    pub bytes: Vec<u8>,
    /// SHA-256 of the canonical batch encoding.
    pub hash: [u8; 32],
    /// Number of readings in it.
    pub readings: usize,
}

/// Closes `readings` into batch `seq` after `prev_hash`, signed by `identity`.
pub fn seal(
    identity: &Identity,
    gateway_id: &str,
    seq: u64,
    prev_hash: [u8; 32],
    created_at_ms: i64,
    readings: Vec<pb::Reading>,
) -> Sealed {
    let count = readings.len();
    let batch = pb::Batch {
        gateway_id: gateway_id.to_string(),
        seq,
        prev_hash: prev_hash.to_vec(),
        created_at_ms,
        readings,
    };
    let canonical = batch.encode_to_vec();
    let hash = sha256(&canonical);
    let signature = identity.sign(&canonical);
    let signed = pb::SignedBatch {
        batch: canonical,
        signature: signature.to_vec(),
    };
    Sealed {
        seq,
        bytes: signed.encode_to_vec(),
        hash,
        readings: count,
    }
}
