//! Checking a chain of signed batches offline: every signature, every link, no gaps.

use ed25519_dalek::{Signature, VerifyingKey};
use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;

use super::{GENESIS_HASH, sha256};

/// The first thing wrong with a chain.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Fault {
    /// Bytes that are not a `SignedBatch` holding a `Batch`.
    #[error("batch {seq}: cannot decode: {reason}")]
    Decode {
        /// Sequence where it is stored.
        seq: u64,
        /// Decoder's reason.
        reason: String,
    },
    /// The signature does not verify with the key.
    #[error("batch {seq}: signature does not verify with this public key")]
    Signature {
        /// Sequence.
        seq: u64,
    },
    /// The batch says another sequence number than where it is stored.
    #[error("batch stored as {stored} says it is {inside}")]
    Misplaced {
        /// Where it is stored.
        stored: u64,
        /// What it says.
        inside: u64,
    },
    /// A missing batch.
    #[error("gap: expected batch {expected}, found {found}")]
    Gap {
        /// Next expected sequence.
        expected: u64,
        /// Sequence found.
        found: u64,
    },
    /// The previous-hash link is broken.
    #[error("batch {seq}: previous hash does not match batch {}", seq.wrapping_sub(1))]
    Link {
        /// Sequence.
        seq: u64,
    },
    /// Batches from two gateways in one chain.
    #[error("batch {seq}: gateway id {found:?}, chain is {expected:?}")]
    Gateway {
        /// Sequence.
        seq: u64,
        /// Chain's gateway.
        expected: String,
        /// This batch's gateway.
        found: String,
    },
}

/// Verifies batches one by one, in order.
#[derive(Debug)]
pub struct ChainVerifier {
    key: VerifyingKey,
    next: Option<u64>,
    prev_hash: Option<[u8; 32]>,
    gateway: Option<String>,
    /// Batches verified.
    pub batches: u64,
    /// Readings in them.
    pub readings: u64,
    /// First sequence seen.
    pub first_seq: Option<u64>,
}

impl ChainVerifier {
    /// A verifier for chains signed by `key`. The first batch must be 0 (with the genesis
    /// hash) unless [`ChainVerifier::anchor`] says where a pruned chain resumes.
    pub fn new(key: VerifyingKey) -> Self {
        ChainVerifier {
            key,
            next: Some(0),
            prev_hash: Some(GENESIS_HASH),
            gateway: None,
            batches: 0,
            readings: 0,
            first_seq: None,
        }
    }

    /// The chain resumes at `seq` after a batch whose hash was `prev_hash` (older batches
    /// were pruned); `None` for the hash accepts whatever the first batch links to.
    pub fn anchor(mut self, seq: u64, prev_hash: Option<[u8; 32]>) -> Self {
        self.next = Some(seq);
        self.prev_hash = prev_hash;
        self
    }

    /// Hash of the last batch verified.
    pub fn last_hash(&self) -> Option<[u8; 32]> {
        self.prev_hash
    }

    /// Checks the batch stored at `seq`; returns it decoded.
    pub fn push(&mut self, seq: u64, bytes: &[u8]) -> Result<pb::Batch, Fault> {
        let decode = |reason: String| Fault::Decode { seq, reason };
        let signed = pb::SignedBatch::decode(bytes).map_err(|e| decode(e.to_string()))?;
        let sig: [u8; 64] = signed.signature.as_slice().try_into().map_err(|_| {
            decode(format!(
                "signature is {} bytes, not 64",
                signed.signature.len()
            ))
        })?;
        self.key
            .verify_strict(&signed.batch, &Signature::from_bytes(&sig))
            .map_err(|_| Fault::Signature { seq })?;
        let batch =
            pb::Batch::decode(signed.batch.as_slice()).map_err(|e| decode(e.to_string()))?;
        if batch.seq != seq {
            return Err(Fault::Misplaced {
                stored: seq,
                inside: batch.seq,
            });
        }
        if let Some(expected) = self.next {
            if seq != expected {
                return Err(Fault::Gap {
                    expected,
                    found: seq,
                });
            }
        }
        if let Some(prev) = self.prev_hash {
            if batch.prev_hash != prev {
                return Err(Fault::Link { seq });
            }
        }
        match &self.gateway {
            Some(g) if *g != batch.gateway_id => {
                return Err(Fault::Gateway {
                    seq,
                    expected: g.clone(),
                    found: batch.gateway_id.clone(),
                });
            }
            None => self.gateway = Some(batch.gateway_id.clone()),
            _ => {}
        }
        self.first_seq.get_or_insert(seq);
        self.next = Some(seq + 1);
        self.prev_hash = Some(sha256(&signed.batch));
        self.batches += 1;
        self.readings += batch.readings.len() as u64;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::seal;
    use super::*;
    use gridgate_core::Identity;

    fn chain(id: &Identity, n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_HASH;
        (0..n)
            .map(|seq| {
                let r = pb::Reading {
                    point: "m/p".into(),
                    ts_ms: seq as i64,
                    ..Default::default()
                };
                let s = seal(id, "gw", seq, prev, 1, vec![r.clone(), r]);
                prev = s.hash;
                s.bytes
            })
            .collect()
    }

    #[test]
    fn a_good_chain_verifies_and_each_fault_is_named() {
        let id = Identity::generate().unwrap();
        let batches = chain(&id, 5);
        let mut v = ChainVerifier::new(id.public());
        for (i, b) in batches.iter().enumerate() {
            v.push(i as u64, b).unwrap();
        }
        assert_eq!((v.batches, v.readings), (5, 10));

        // Gap.
        let mut v = ChainVerifier::new(id.public());
        v.push(0, &batches[0]).unwrap();
        assert_eq!(
            v.push(2, &batches[2]),
            Err(Fault::Gap {
                expected: 1,
                found: 2
            })
        );
        // Another key.
        let other = Identity::generate().unwrap();
        let mut v = ChainVerifier::new(other.public());
        assert_eq!(v.push(0, &batches[0]), Err(Fault::Signature { seq: 0 }));
        // A flipped byte breaks the signature.
        let mut bad = batches[1].clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        let mut v = ChainVerifier::new(id.public());
        v.push(0, &batches[0]).unwrap();
        assert!(v.push(1, &bad).is_err());
        // Batches re-signed but out of chain.
        let foreign = chain(&id, 3);
        let mut v = ChainVerifier::new(id.public()).anchor(1, Some([9; 32]));
        assert_eq!(v.push(1, &foreign[1]), Err(Fault::Link { seq: 1 }));
        // A pruned chain anchored without a hash starts anywhere.
        let mut v = ChainVerifier::new(id.public()).anchor(3, None);
        v.push(3, &batches[3]).unwrap();
        v.push(4, &batches[4]).unwrap();
        assert_eq!(
            v.push(4, &batches[4]),
            Err(Fault::Gap {
                expected: 5,
                found: 4
            })
        );
    }
}
