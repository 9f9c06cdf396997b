//! Batches: close a group of readings, chain it to the previous batch by hash, sign it with
//! the gateway's identity key, and check a whole chain offline.
//!
//! The canonical encoding of a batch is the protobuf encoding of the unsigned `Batch`
//! (`gridgate.v1`); `SignedBatch` carries those exact bytes and an Ed25519 signature over
//! them. A batch's hash is SHA-256 of the same bytes; batch 0 follows 32 zero bytes.

pub mod verify;

use gridgate_proto::v1 as pb;
use prost::Message;

use gridgate_core::reading::encode_length_delimited;
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
    let (mut framed, mut buf) = (Framed::default(), Vec::new());
    for r in &readings {
        buf.clear();
        r.encode_raw(&mut buf);
        framed.push_encoded(&buf);
    }
    seal_framed(identity, gateway_id, seq, prev_hash, created_at_ms, &framed)
}

/// Readings encoded as the `readings` field of a `Batch`, one after another: what a batch's
/// encoding ends with. The store frames each reading as it takes it in, and a reading it
/// kept open is framed from its stored bytes, never decoded and encoded again.
#[derive(Debug, Default)]
pub struct Framed {
    bytes: Vec<u8>,
    count: usize,
}

impl Framed {
    /// Appends one reading from its encoding.
    pub fn push_encoded(&mut self, reading: &[u8]) {
        encode_length_delimited(READINGS_TAG, reading, &mut self.bytes);
        self.count += 1;
    }

    /// Appends `other`'s readings after these.
    pub fn append(&mut self, other: Framed) {
        if self.count == 0 {
            *self = other;
        } else {
            self.bytes.extend_from_slice(&other.bytes);
            self.count += other.count;
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// `Batch.readings`' field number: the last field, so a batch's encoding is the other
/// fields' followed by the readings'.
const READINGS_TAG: u32 = 5;

/// [`seal`] of readings already framed.
pub fn seal_framed(
    identity: &Identity,
    gateway_id: &str,
    seq: u64,
    prev_hash: [u8; 32],
    created_at_ms: i64,
    readings: &Framed,
) -> Sealed {
    let head = pb::Batch {
        gateway_id: gateway_id.to_string(),
        seq,
        prev_hash: prev_hash.to_vec(),
        created_at_ms,
        readings: Vec::new(),
    };
    let mut canonical = Vec::with_capacity(head.encoded_len() + readings.bytes.len());
    head.encode_raw(&mut canonical);
    canonical.extend_from_slice(&readings.bytes);
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
        readings: readings.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_batch_is_the_encoding_of_the_whole_batch() {
        let id = Identity::generate().unwrap();
        let reading = |i: i64| pb::Reading {
            point: format!("m/p{i}"),
            ts_ms: i,
            value: Some(pb::reading::Value::Number(i as f64 / 3.0)),
            unit: "kW".into(),
            quality: Some(pb::Quality::default()),
            error: String::new(),
        };
        for n in [0, 1, 300] {
            let readings: Vec<_> = (0..n).map(reading).collect();
            let sealed = seal(&id, "gw-1", 7, [9; 32], 1234, readings.clone());
            let signed = pb::SignedBatch::decode(sealed.bytes.as_slice()).unwrap();
            let whole = pb::Batch {
                gateway_id: "gw-1".into(),
                seq: 7,
                prev_hash: vec![9; 32],
                created_at_ms: 1234,
                readings,
            };
            assert_eq!(signed.batch, whole.encode_to_vec());
            assert_eq!(sealed.hash, sha256(&signed.batch));
            assert_eq!(sealed.readings, n as usize);
        }
    }
}
