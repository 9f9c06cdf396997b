//! What a validator does with a submitted entry and a pushed certificate (FastPay's
//! authority): checks, a durable vote lock, and equivocation caught on the spot. Blocking
//! (store I/O with fsync): callers run it off the async threads.

use gridgate_proto::v1 as pb;
use prost::Message;
use tracing::{info, warn};

use super::entry::{Members, check_certified, check_entry, entry_hash, sign_vote};
use crate::batch::Identity;
use crate::store::ledger::VoteLock;
use crate::store::{Store, StoreError};

fn refuse(refusal: pb::VoteRefusal, detail: String, next_certified: u64) -> pb::SubmitReply {
    pb::SubmitReply {
        vote: None,
        refusal: refusal as i32,
        detail,
        next_certified,
    }
}

/// Checks that a payload is a valid message of the entry's kind.
fn payload_ok(entry: &pb::Entry) -> bool {
    let p = entry.payload.as_slice();
    match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::BatchCommitment) => {
            pb::BatchCommitment::decode(p).is_ok_and(|c| c.root.len() == 32 && c.tree_size > 0)
        }
        Ok(pb::EntryKind::DrEvent) => pb::SignedDrEvent::decode(p).is_ok(),
        Ok(pb::EntryKind::PerformanceReport) => pb::SignedPerformanceReport::decode(p).is_ok(),
        Ok(pb::EntryKind::Equivocation) => pb::EquivocationProof::decode(p).is_ok(),
        Ok(pb::EntryKind::ProgramTerms | pb::EntryKind::Membership) => true,
        _ => false,
    }
}

/// A validator's answer to `Submit`: its vote, or why not. The vote lock is on disk before
/// the vote is signed.
pub fn submit(
    store: &Store,
    members: &Members,
    me: &str,
    key: &Identity,
    signed: &pb::SignedEntry,
) -> Result<pb::SubmitReply, StoreError> {
    let entry = match check_entry(signed, members) {
        Ok(e) => e,
        Err(super::entry::LedgerError::BadSignature(o)) => {
            return Ok(refuse(
                pb::VoteRefusal::BadSignature,
                format!("the entry's signature does not verify with {o:?}'s member key"),
                0,
            ));
        }
        Err(e) => return Ok(refuse(pb::VoteRefusal::UnknownMember, e.to_string(), 0)),
    };
    let origin = entry.origin.as_str();
    let next = store.ledger_next_certified(origin)?;
    if store.ledger_shut_outs()?.iter().any(|(o, _)| o == origin) {
        return Ok(refuse(
            pb::VoteRefusal::ShutOut,
            format!("{origin:?} is shut out: it signed two entries for one place"),
            next,
        ));
    }
    if !payload_ok(&entry) {
        return Ok(refuse(
            pb::VoteRefusal::BadPayload,
            format!("the payload is not a valid {:?}", entry.kind),
            next,
        ));
    }
    // The entry must extend the certified log this validator holds.
    let expected_prev = if entry.seq == 0 {
        Some([0u8; 32])
    } else if entry.seq > next {
        return Ok(refuse(
            pb::VoteRefusal::MissingPredecessor,
            format!(
                "holds {origin:?} up to {next} only; push the certificates before {}",
                entry.seq
            ),
            next,
        ));
    } else {
        store
            .ledger_certified(origin, entry.seq - 1)?
            .and_then(|b| pb::CertifiedEntry::decode(b.as_slice()).ok())
            .and_then(|c| c.entry)
            .map(|e| entry_hash(&e))
    };
    if expected_prev.is_none_or(|h| h.as_slice() != entry.prev_hash.as_slice()) {
        return Ok(refuse(
            pb::VoteRefusal::WrongPrevious,
            format!(
                "prev_hash is not the hash of {origin:?}'s certified entry {}",
                entry.seq.saturating_sub(1)
            ),
            next,
        ));
    }
    let hash = entry_hash(signed);
    match store.ledger_lock_vote(origin, entry.seq, &hash, &signed.encode_to_vec())? {
        VoteLock::Fresh | VoteLock::Again => Ok(pb::SubmitReply {
            vote: Some(sign_vote(me, origin, entry.seq, &hash, key)),
            refusal: pb::VoteRefusal::Unspecified as i32,
            detail: String::new(),
            next_certified: next,
        }),
        VoteLock::Other(first) => {
            let proof = pb::EquivocationProof {
                a: pb::SignedEntry::decode(first.as_slice()).ok(),
                b: Some(signed.clone()),
            };
            store.ledger_shut_out(origin, &proof.encode_to_vec())?;
            warn!(
                origin,
                seq = entry.seq,
                "equivocation: two entries signed for one place; origin shut out"
            );
            Ok(refuse(
                pb::VoteRefusal::Equivocation,
                format!(
                    "{origin:?} signed another entry at {}: equivocation, shut out",
                    entry.seq
                ),
                next,
            ))
        }
    }
}

/// Stores a pushed certificate if it checks and extends the log this node holds.
pub fn push(
    store: &Store,
    members: &Members,
    c: &pb::CertifiedEntry,
) -> Result<pb::PushReply, StoreError> {
    let (entry, _) = match check_certified(c, members) {
        Ok(v) => v,
        Err(e) => {
            return Ok(pb::PushReply {
                stored: false,
                detail: e.to_string(),
                next_certified: 0,
            });
        }
    };
    let next = store.ledger_next_certified(&entry.origin)?;
    if entry.seq < next {
        // Already held (a certificate is unique per place, so it is this one).
        return Ok(pb::PushReply {
            stored: true,
            detail: String::new(),
            next_certified: next,
        });
    }
    if entry.seq > next {
        return Ok(pb::PushReply {
            stored: false,
            detail: format!("holds {:?} up to {next} only; push in order", entry.origin),
            next_certified: next,
        });
    }
    if entry.seq > 0 {
        let prev = store
            .ledger_certified(&entry.origin, entry.seq - 1)?
            .and_then(|b| pb::CertifiedEntry::decode(b.as_slice()).ok())
            .and_then(|c| c.entry)
            .map(|e| entry_hash(&e));
        if prev.is_none_or(|h| h.as_slice() != entry.prev_hash.as_slice()) {
            return Ok(pb::PushReply {
                stored: false,
                detail: "prev_hash does not chain to the certified entry before it".into(),
                next_certified: next,
            });
        }
    }
    store.ledger_put_certified(&entry.origin, entry.seq, &c.encode_to_vec())?;
    info!(origin = %entry.origin, seq = entry.seq, "certified entry stored");
    Ok(pb::PushReply {
        stored: true,
        detail: String::new(),
        next_certified: entry.seq + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::{Member, sign_entry};

    struct World {
        members: Members,
        validator: Identity,
        gateway: Identity,
        stranger: Identity,
    }

    fn world() -> World {
        let (validator, gateway, stranger) = (
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
        );
        let mut members = Members::default();
        for (id, role, key) in [
            ("v0", pb::MemberRole::Validator, &validator),
            ("gw", pb::MemberRole::Gateway, &gateway),
        ] {
            members.0.insert(
                id.into(),
                Member {
                    id: id.into(),
                    role,
                    key: key.public(),
                },
            );
        }
        World {
            members,
            validator,
            gateway,
            stranger,
        }
    }

    fn entry(origin: &str, seq: u64, prev: [u8; 32], payload: &[u8]) -> pb::Entry {
        pb::Entry {
            origin: origin.into(),
            seq,
            prev_hash: prev.to_vec(),
            timestamp_ms: 1,
            kind: pb::EntryKind::PerformanceReport as i32,
            payload: pb::SignedPerformanceReport {
                report: payload.to_vec(),
                signature: vec![0; 64],
            }
            .encode_to_vec(),
        }
    }

    fn refusal(r: &pb::SubmitReply) -> pb::VoteRefusal {
        pb::VoteRefusal::try_from(r.refusal).unwrap_or_default()
    }

    #[test]
    fn a_validator_votes_once_per_place_and_shuts_out_an_equivocating_origin() {
        let w = world();
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "v0").expect("store");
        let vote = |s: &Store, e: &pb::SignedEntry| {
            submit(s, &w.members, "v0", &w.validator, e).expect("submit")
        };

        let first = sign_entry(&entry("gw", 0, [0; 32], b"a"), &w.gateway);
        let r = vote(&store, &first);
        assert!(r.vote.is_some(), "{r:?}");
        // Asked again for the same entry: the same vote (a client retrying).
        assert!(vote(&store, &first).vote.is_some());

        // Each forgery is refused with its reason, and no vote.
        let by_stranger = sign_entry(&entry("gw", 0, [0; 32], b"a"), &w.stranger);
        assert_eq!(
            refusal(&vote(&store, &by_stranger)),
            pb::VoteRefusal::BadSignature
        );
        let unknown = sign_entry(&entry("nobody", 0, [0; 32], b"a"), &w.stranger);
        assert_eq!(
            refusal(&vote(&store, &unknown)),
            pb::VoteRefusal::UnknownMember
        );
        let ahead = sign_entry(&entry("gw", 1, [9; 32], b"b"), &w.gateway);
        assert_eq!(
            refusal(&vote(&store, &ahead)),
            pb::VoteRefusal::MissingPredecessor
        );
        let wrong_genesis = sign_entry(&entry("gw", 0, [9; 32], b"a"), &w.gateway);
        assert_eq!(
            refusal(&vote(&store, &wrong_genesis)),
            pb::VoteRefusal::WrongPrevious
        );

        // The promise survives a restart: a second, different entry at the same place is an
        // equivocation, its proof is kept, and the origin gets no vote any more.
        drop(store);
        let store = Store::open(dir.path(), "v0").expect("reopen");
        let second = sign_entry(&entry("gw", 0, [0; 32], b"other"), &w.gateway);
        assert_eq!(
            refusal(&vote(&store, &second)),
            pb::VoteRefusal::Equivocation
        );
        let shut = store.ledger_shut_outs().expect("shut outs");
        assert_eq!(shut.len(), 1);
        let proof = pb::EquivocationProof::decode(shut[0].1.as_slice()).expect("proof");
        assert_eq!(proof.a.as_ref(), Some(&first));
        assert_eq!(proof.b.as_ref(), Some(&second));
        assert_eq!(refusal(&vote(&store, &first)), pb::VoteRefusal::ShutOut);
    }
}
