//! Cuts: the order the validators agree on over every member's log (docs/ledger.md,
//! Consensus). The consensus engine (in `gridgate-node`) orders cut digests; these are the
//! rules every replica applies to a cut's body, and the check of the engine's finalization
//! a gateway makes offline, without the engine.
//!
//! A cut names only the logs that moved since its parent; [`CutState`] is the fold: every
//! log's head as of a cut. Cuts chain by the parent's SHA-256, so a finalized cut decides
//! its ancestors too.

use std::collections::BTreeMap;

use ed25519_dalek::Signature;
use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;

use crate::Members;
use crate::entry::LedgerError;

/// The consensus namespace: every signature of the engine is over a message prefixed with
/// it (and the vote kind), so no signature of another protocol or network counts here.
pub const NAMESPACE: &[u8] = b"gridgate-consortium-v1_CONSENSUS";

/// What the engine's finalize votes append to the namespace.
const FINALIZE_SUFFIX: &[u8] = b"_FINALIZE";

/// A digest: SHA-256.
pub type Digest = [u8; 32];

/// Why a cut cannot follow its parent. Each is permanent: no later message makes the cut
/// valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CutError {
    /// Not decodable.
    #[error("not a valid cut")]
    Malformed,
    /// Its parent hash is not the parent's digest.
    #[error("the cut's parent is {got}, not {want}")]
    WrongParent {
        /// What the cut names (hex).
        got: String,
        /// The parent's digest (hex).
        want: String,
    },
    /// Its height is not the parent's + 1.
    #[error("height {got} does not follow {parent}")]
    WrongHeight {
        /// The cut's height.
        got: u64,
        /// The parent's.
        parent: u64,
    },
    /// Its time is not after the parent's.
    #[error("time {got} ms is not after the parent's {parent} ms")]
    TimeBackwards {
        /// The cut's time.
        got: i64,
        /// The parent's.
        parent: i64,
    },
    /// Heads out of order or repeated.
    #[error("heads are not in ascending order of origin, each once")]
    HeadsUnordered,
    /// A head does not move its log forward.
    #[error("{origin}: head {got} does not move past {parent}")]
    HeadBackwards {
        /// The log.
        origin: String,
        /// The cut's head.
        got: u64,
        /// The parent's.
        parent: u64,
    },
    /// A head's hash is not 32 bytes.
    #[error("{0}: the head's hash is not 32 bytes")]
    BadHash(String),
}

/// One log's head as of a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadAt {
    /// Entries ordered so far (the next sequence number).
    pub next: u64,
    /// Hash of the entry at `next - 1`.
    pub last_hash: Digest,
    /// Height of the cut that moved it there.
    pub height: u64,
}

/// Every log's head as of one cut: the fold of the chain up to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutState {
    /// The cut's height.
    pub height: u64,
    /// Its digest.
    pub digest: Digest,
    /// Its time.
    pub time_ms: i64,
    /// By origin.
    pub heads: BTreeMap<String, HeadAt>,
}

/// The genesis cut: height 0, no logs, time 0. The same on every node: its digest is the
/// engine's genesis payload.
pub fn genesis() -> pb::Cut {
    pb::Cut {
        height: 0,
        parent: vec![0; 32],
        time_ms: 0,
        heads: Vec::new(),
    }
}

/// SHA-256 of a cut's bytes.
pub fn digest(bytes: &[u8]) -> Digest {
    gridgate_core::sha256(bytes)
}

impl CutState {
    /// As of the genesis cut.
    pub fn genesis() -> CutState {
        CutState {
            height: 0,
            digest: digest(&genesis().encode_to_vec()),
            time_ms: 0,
            heads: BTreeMap::new(),
        }
    }

    /// The state as of `cut`, if it can follow this one: the next height, chained to this
    /// digest, later in time, every head it names past this one's. The entries it names are
    /// the caller's to check (it holds them or not).
    pub fn follow(&self, cut: &pb::Cut, cut_digest: Digest) -> Result<CutState, CutError> {
        if cut.parent.as_slice() != self.digest {
            return Err(CutError::WrongParent {
                got: hex::encode(&cut.parent),
                want: hex::encode(self.digest),
            });
        }
        if cut.height != self.height + 1 {
            return Err(CutError::WrongHeight {
                got: cut.height,
                parent: self.height,
            });
        }
        if cut.time_ms <= self.time_ms {
            return Err(CutError::TimeBackwards {
                got: cut.time_ms,
                parent: self.time_ms,
            });
        }
        if cut.heads.windows(2).any(|w| w[0].origin >= w[1].origin) {
            return Err(CutError::HeadsUnordered);
        }
        let mut heads = self.heads.clone();
        for h in &cut.heads {
            let parent = self.heads.get(&h.origin).map_or(0, |p| p.next);
            if h.next <= parent {
                return Err(CutError::HeadBackwards {
                    origin: h.origin.clone(),
                    got: h.next,
                    parent,
                });
            }
            let last_hash: Digest = h
                .last_hash
                .as_slice()
                .try_into()
                .map_err(|_| CutError::BadHash(h.origin.clone()))?;
            heads.insert(
                h.origin.clone(),
                HeadAt {
                    next: h.next,
                    last_hash,
                    height: cut.height,
                },
            );
        }
        Ok(CutState {
            height: cut.height,
            digest: cut_digest,
            time_ms: cut.time_ms,
            heads,
        })
    }

    /// The cut that follows this one with the logs as `held` says (origin, next, hash of the
    /// entry at next - 1), naming only those that moved; its time `now_ms`, or 1 ms past
    /// this one's when the clock says otherwise.
    pub fn propose(
        &self,
        held: impl IntoIterator<Item = (String, u64, Digest)>,
        now_ms: i64,
    ) -> pb::Cut {
        let mut heads: Vec<pb::CutHead> = held
            .into_iter()
            .filter(|(origin, next, _)| self.heads.get(origin).map_or(0, |h| h.next) < *next)
            .map(|(origin, next, hash)| pb::CutHead {
                origin,
                next,
                last_hash: hash.to_vec(),
            })
            .collect();
        heads.sort_by(|a, b| a.origin.cmp(&b.origin));
        heads.dedup_by(|a, b| a.origin == b.origin);
        pb::Cut {
            height: self.height + 1,
            parent: self.digest.to_vec(),
            time_ms: now_ms.max(self.time_ms + 1),
            heads,
        }
    }
}

/// Decodes a cut.
pub fn decode(bytes: &[u8]) -> Result<pb::Cut, CutError> {
    pb::Cut::decode(bytes).map_err(|_| CutError::Malformed)
}

/// LEB128, as the engine's codec writes integers.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes a validator's finalize vote signs for the proposal (epoch, view, parent view,
/// payload) under `namespace`: the namespace with the vote kind, prefixed with its length,
/// then the proposal as the engine encodes it.
pub fn finalize_message(
    namespace: &[u8],
    epoch: u64,
    view: u64,
    parent_view: u64,
    payload: &Digest,
) -> Vec<u8> {
    let ns = [namespace, FINALIZE_SUFFIX].concat();
    let mut out = Vec::with_capacity(ns.len() + 64);
    varint(ns.len() as u64, &mut out);
    out.extend_from_slice(&ns);
    varint(epoch, &mut out);
    varint(view, &mut out);
    varint(parent_view, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Checks a cut's finalization offline: votes of distinct validators of `members`, each
/// over this cut's digest, at least the quorum (2f+1) of them.
pub fn check_certificate(
    members: &Members,
    cert: &pb::CutCertificate,
    cut_digest: &Digest,
) -> Result<(), LedgerError> {
    let message = finalize_message(
        NAMESPACE,
        cert.epoch,
        cert.view,
        cert.parent_view,
        cut_digest,
    );
    let mut signers = std::collections::BTreeSet::new();
    for v in &cert.votes {
        let m = members
            .0
            .get(&v.validator)
            .filter(|m| m.role == pb::MemberRole::Validator)
            .ok_or_else(|| LedgerError::UnknownMember(v.validator.clone()))?;
        let sig = Signature::from_slice(&v.signature)
            .map_err(|_| LedgerError::BadSignature(v.validator.clone()))?;
        m.key
            .verify_strict(&message, &sig)
            .map_err(|_| LedgerError::BadSignature(v.validator.clone()))?;
        signers.insert(v.validator.as_str());
    }
    let need = members.quorum();
    if signers.len() < need {
        return Err(LedgerError::NoQuorum {
            have: signers.len(),
            need,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Member;
    use gridgate_core::Identity;

    fn head(origin: &str, next: u64) -> (String, u64, Digest) {
        (origin.into(), next, [next as u8; 32])
    }

    #[test]
    fn a_cut_names_only_the_logs_that_moved_and_folds_into_every_head() {
        let g = CutState::genesis();
        let c1 = g.propose([head("gw", 3), head("op", 1)], 1_000);
        assert_eq!((c1.height, c1.heads.len()), (1, 2));
        let s1 = g.follow(&c1, digest(&c1.encode_to_vec())).expect("follows");
        let c2 = s1.propose([head("gw", 3), head("op", 2), head("a", 1)], 900);
        // Nothing of gw moved; the clock went back, so the time is the parent's + 1.
        assert_eq!(
            c2.heads
                .iter()
                .map(|h| h.origin.as_str())
                .collect::<Vec<_>>(),
            ["a", "op"]
        );
        assert_eq!(c2.time_ms, 1_001);
        let s2 = s1
            .follow(&c2, digest(&c2.encode_to_vec()))
            .expect("follows");
        assert_eq!(s2.heads["gw"].next, 3);
        assert_eq!(s2.heads["gw"].height, 1);
        assert_eq!(s2.heads["op"].next, 2);
        assert_eq!(s2.heads["op"].height, 2);
    }

    #[test]
    fn a_cut_that_does_not_follow_its_parent_is_refused_with_why() {
        let g = CutState::genesis();
        let good = g.propose([head("gw", 3)], 1_000);
        let s1 = g
            .follow(&good, digest(&good.encode_to_vec()))
            .expect("follows");
        let next = s1.propose([head("gw", 4)], 2_000);
        let mut wrong_parent = next.clone();
        wrong_parent.parent = vec![7; 32];
        assert!(matches!(
            s1.follow(&wrong_parent, [0; 32]),
            Err(CutError::WrongParent { .. })
        ));
        let mut skip = next.clone();
        skip.height = 5;
        assert!(matches!(
            s1.follow(&skip, [0; 32]),
            Err(CutError::WrongHeight { .. })
        ));
        let mut old = next.clone();
        old.time_ms = 1_000;
        assert!(matches!(
            s1.follow(&old, [0; 32]),
            Err(CutError::TimeBackwards { .. })
        ));
        let mut back = next.clone();
        back.heads[0].next = 3;
        assert!(matches!(
            s1.follow(&back, [0; 32]),
            Err(CutError::HeadBackwards { .. })
        ));
        let mut twice = next.clone();
        twice.heads.push(twice.heads[0].clone());
        assert_eq!(s1.follow(&twice, [0; 32]), Err(CutError::HeadsUnordered));
        let mut short = next;
        short.heads[0].last_hash = vec![1; 31];
        assert!(matches!(
            s1.follow(&short, [0; 32]),
            Err(CutError::BadHash(_))
        ));
    }

    #[test]
    fn the_finalize_message_is_the_engines_encoding() {
        // Namespace length 3 + suffix 9 = 12; epoch 0; view 300 (two LEB128 bytes); parent 1.
        let m = finalize_message(b"abc", 0, 300, 1, &[9; 32]);
        let mut want = vec![12];
        want.extend_from_slice(b"abc_FINALIZE");
        want.extend_from_slice(&[0, 0xac, 0x02, 1]);
        want.extend_from_slice(&[9; 32]);
        assert_eq!(m, want);
    }

    #[test]
    fn a_certificate_needs_a_quorum_of_distinct_validators_over_this_cut() {
        let keys: Vec<Identity> = (0..4).map(|_| Identity::generate().expect("key")).collect();
        let mut members = Members::default();
        for (i, k) in keys.iter().enumerate() {
            let id = format!("v{i}");
            members.0.insert(
                id.clone(),
                Member {
                    id,
                    role: pb::MemberRole::Validator,
                    key: k.public(),
                    removed: false,
                },
            );
        }
        let d = [5; 32];
        let vote = |i: usize, d: &Digest| pb::CutVote {
            validator: format!("v{i}"),
            signature: keys[i]
                .sign(&finalize_message(NAMESPACE, 0, 7, 6, d))
                .to_vec(),
        };
        let cert = |votes| pb::CutCertificate {
            epoch: 0,
            view: 7,
            parent_view: 6,
            votes,
        };
        assert_eq!(
            check_certificate(
                &members,
                &cert(vec![vote(0, &d), vote(1, &d), vote(3, &d)]),
                &d
            ),
            Ok(())
        );
        // Short: two votes, or one validator twice.
        assert_eq!(
            check_certificate(&members, &cert(vec![vote(0, &d), vote(1, &d)]), &d),
            Err(LedgerError::NoQuorum { have: 2, need: 3 })
        );
        assert!(matches!(
            check_certificate(
                &members,
                &cert(vec![vote(0, &d), vote(1, &d), vote(1, &d)]),
                &d
            ),
            Err(LedgerError::NoQuorum { .. })
        ));
        // A vote for another cut, or a forged one.
        assert!(matches!(
            check_certificate(
                &members,
                &cert(vec![vote(0, &d), vote(1, &d), vote(2, &[6; 32])]),
                &d
            ),
            Err(LedgerError::BadSignature(_))
        ));
        let mut forged = vote(2, &d);
        forged.validator = "v3".into();
        assert!(matches!(
            check_certificate(&members, &cert(vec![vote(0, &d), vote(1, &d), forged]), &d),
            Err(LedgerError::BadSignature(_))
        ));
        // The same votes, checked for a later view than they signed.
        let mut moved = cert(vec![vote(0, &d), vote(1, &d), vote(3, &d)]);
        moved.view = 8;
        assert!(check_certificate(&members, &moved, &d).is_err());
    }
}
