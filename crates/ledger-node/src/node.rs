//! What a validator does with a submitted entry and a pushed certificate (FastPay's
//! authority): checks, a durable vote lock, and equivocation caught on the spot. Blocking
//! (store I/O with fsync): callers run it off the async threads.

use std::collections::{BTreeMap, BTreeSet};

use gridgate_proto::v1 as pb;
use prost::Message;
use tracing::{info, warn};

use crate::tables::LedgerStore;
use crate::tables::VoteLock;
use gridgate_core::Identity;
use gridgate_ledger::entry::{Members, check_certified, check_entry, entry_hash};
use gridgate_store::{Store, StoreError};

fn refuse(refusal: pb::VoteRefusal, detail: String, next_certified: u64) -> pb::SubmitReply {
    pb::SubmitReply {
        vote: None,
        refusal: refusal as i32,
        detail,
        next_certified,
    }
}

/// The member an entry accuses of equivocation, with its proof: an equivocation entry of a
/// validator whose proof checks.
fn accusation(entry: &pb::Entry, members: &Members) -> Option<(String, Vec<u8>)> {
    if entry.kind != pb::EntryKind::Equivocation as i32 {
        return None;
    }
    let by_validator = members
        .0
        .get(&entry.origin)
        .is_some_and(|m| m.role == pb::MemberRole::Validator);
    let proof = pb::EquivocationProof::decode(entry.payload.as_slice()).ok()?;
    let accused = gridgate_ledger::entry::check_proof(&proof, members).ok()?;
    by_validator.then(|| (accused, entry.payload.clone()))
}

/// Shuts `accused` out on a proof another validator found (logged once).
fn shut_out_for(store: &Store, accused: &str, proof: &[u8]) -> Result<(), StoreError> {
    let known = store
        .ledger()
        .shut_outs()?
        .iter()
        .any(|(o, _)| o == accused);
    if !known {
        store.ledger().shut_out(accused, proof)?;
        warn!(
            origin = accused,
            "equivocation proved by another validator: origin shut out"
        );
    }
    Ok(())
}

/// Whether the entry's origin is a member in `role`.
fn origin_is(entry: &pb::Entry, members: &Members, role: pb::MemberRole) -> bool {
    members.0.get(&entry.origin).is_some_and(|m| m.role == role)
}

/// Whether the entry's origin is a validator.
fn validator(entry: &pb::Entry, members: &Members) -> bool {
    origin_is(entry, members, pb::MemberRole::Validator)
}

/// Checks that a payload is a valid message of the entry's kind.
fn payload_ok(entry: &pb::Entry, members: &Members) -> bool {
    let p = entry.payload.as_slice();
    match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::BatchCommitment) => {
            pb::BatchCommitment::decode(p).is_ok_and(|c| gridgate_ledger::commitment::shape_ok(&c))
        }
        Ok(pb::EntryKind::DrEvent) => pb::SignedDrEvent::decode(p).is_ok(),
        Ok(pb::EntryKind::PerformanceReport) => pb::SignedPerformanceReport::decode(p).is_ok(),
        // Only a validator attests an equivocation, and only with a proof that checks.
        Ok(pb::EntryKind::Equivocation) => accusation(entry, members).is_some(),
        // Terms come from an operator, and must make sense.
        Ok(pb::EntryKind::ProgramTerms) => {
            origin_is(entry, members, pb::MemberRole::Operator)
                && pb::ProgramTerms::decode(p)
                    .is_ok_and(|t| gridgate_ledger::settlement::terms_of(&t).is_some())
        }
        // Market terms too: from an operator, and they must make sense.
        Ok(pb::EntryKind::MarketTerms) => {
            origin_is(entry, members, pb::MemberRole::Operator)
                && pb::MarketTerms::decode(p)
                    .is_ok_and(|t| gridgate_ledger::market::terms_of(&t).is_some())
        }
        // A gateway's answer in a round, within reason.
        Ok(pb::EntryKind::MarketAnswer) => {
            origin_is(entry, members, pb::MemberRole::Gateway)
                && pb::MarketAnswer::decode(p).is_ok_and(|a| {
                    !a.area.is_empty()
                        && (1..=64).contains(&a.round)
                        && a.price_milli_per_kwh >= 0
                        && a.quantity_wh.unsigned_abs()
                            <= gridgate_ledger::market::MAX_ANSWER_WH as u64
                })
        }
        // A gateway's own measurement, within reason.
        Ok(pb::EntryKind::MarketDelivery) => {
            origin_is(entry, members, pb::MemberRole::Gateway)
                && pb::MarketDelivery::decode(p).is_ok_and(|d| {
                    let sane =
                        |q: i64| q.unsigned_abs() <= gridgate_ledger::market::MAX_ANSWER_WH as u64;
                    !d.area.is_empty() && sane(d.delivered_wh) && sane(d.accepted_wh)
                })
        }
        // A gateway's record of a utility VTN's event: its own event id and the JSON object
        // it received. Settlement pays nothing on it, so its content is the gateway's word.
        Ok(pb::EntryKind::OpenadrEvent) => {
            origin_is(entry, members, pb::MemberRole::Gateway)
                && pb::OpenAdrEvent::decode(p).is_ok_and(|e| {
                    !e.event_id.is_empty()
                        && !e.vtn.is_empty()
                        && serde_json::from_str::<serde_json::Value>(&e.json)
                            .is_ok_and(|j| j.is_object())
                })
        }
        // Rounds and clearings are what validators compute.
        Ok(pb::EntryKind::MarketRound) => {
            validator(entry, members) && pb::MarketRound::decode(p).is_ok()
        }
        Ok(pb::EntryKind::MarketClearing) => {
            validator(entry, members) && pb::MarketClearing::decode(p).is_ok()
        }
        // A quorum of validators approved it, and an operator or a validator logs it.
        Ok(pb::EntryKind::Membership) => {
            gridgate_ledger::membership::check_entry_payload(entry, members).is_ok()
        }
        _ => false,
    }
}

/// The hash of the entry at (origin, seq) this validator may chain to: the certified one, or
/// the one it voted for (on disk, or earlier in this batch).
fn chain_hash(
    store: &Store,
    origin: &str,
    seq: u64,
    in_batch: &BTreeMap<(String, u64), [u8; 32]>,
) -> Result<Option<Vec<u8>>, StoreError> {
    if let Some(h) = in_batch.get(&(origin.to_string(), seq)) {
        return Ok(Some(h.to_vec()));
    }
    if let Some(c) = store
        .ledger()
        .certified(origin, seq)?
        .and_then(|b| pb::CertifiedEntry::decode(b.as_slice()).ok())
        .and_then(|c| c.entry)
    {
        return Ok(Some(entry_hash(&c).to_vec()));
    }
    store.ledger().voted(origin, seq)
}

/// An entry's place and hash: (origin, seq, entry hash).
type Place = (String, u64, [u8; 32]);

/// Checks an entry before its vote lock: `Ok((origin, seq, hash))` to lock, or the refusal.
fn check_for_vote(
    store: &Store,
    members: &Members,
    shut_out: &BTreeSet<String>,
    in_batch: &BTreeMap<(String, u64), [u8; 32]>,
    signed: &pb::SignedEntry,
    signature_checked: bool,
    next_of: &mut BTreeMap<String, u64>,
) -> Result<Result<Place, pb::SubmitReply>, StoreError> {
    let checked = if signature_checked {
        gridgate_ledger::entry::entry_of_member(signed, members)
    } else {
        check_entry(signed, members)
    };
    let entry = match checked {
        Ok(e) => e,
        Err(gridgate_ledger::entry::LedgerError::BadSignature(o)) => {
            return Ok(Err(refuse(
                pb::VoteRefusal::BadSignature,
                format!("the entry's signature does not verify with {o:?}'s member key"),
                0,
            )));
        }
        Err(e) => {
            return Ok(Err(refuse(
                pb::VoteRefusal::UnknownMember,
                e.to_string(),
                0,
            )));
        }
    };
    let origin = entry.origin.as_str();
    // One read per origin and batch, not per entry: a batch does not certify anything.
    let next = match next_of.get(origin) {
        Some(n) => *n,
        None => {
            let n = store.ledger().next_certified(origin)?;
            next_of.insert(origin.to_string(), n);
            n
        }
    };
    if members.0.get(origin).is_some_and(|m| m.removed) {
        return Ok(Err(refuse(
            pb::VoteRefusal::UnknownMember,
            format!("{origin:?} was removed from the membership"),
            next,
        )));
    }
    if shut_out.contains(origin) {
        return Ok(Err(refuse(
            pb::VoteRefusal::ShutOut,
            format!("{origin:?} is shut out: it signed two entries for one place"),
            next,
        )));
    }
    if !payload_ok(&entry, members) {
        return Ok(Err(refuse(
            pb::VoteRefusal::BadPayload,
            format!("the payload is not a valid {:?}", entry.kind),
            next,
        )));
    }
    // The entry must extend what this validator holds or voted for just before it.
    let expected_prev = if entry.seq == 0 {
        Some(vec![0u8; 32])
    } else {
        chain_hash(store, origin, entry.seq - 1, in_batch)?
    };
    let Some(expected_prev) = expected_prev else {
        return Ok(Err(refuse(
            pb::VoteRefusal::MissingPredecessor,
            format!(
                "holds {origin:?} up to {next} only; push the certificates before {}",
                entry.seq
            ),
            next,
        )));
    };
    if expected_prev != entry.prev_hash {
        return Ok(Err(refuse(
            pb::VoteRefusal::WrongPrevious,
            format!(
                "prev_hash is not the hash of {origin:?}'s entry {} that this validator holds",
                entry.seq.saturating_sub(1)
            ),
            next,
        )));
    }
    Ok(Ok((entry.origin.clone(), entry.seq, entry_hash(signed))))
}

/// An entry of a batch locked for a vote: its index in the batch, its seq and hash.
type Locked = (usize, u64, [u8; 32]);

/// How a validator signs the votes of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteForm {
    /// One signature per run of an origin's consecutive entries (a window vote).
    Window,
    /// One signature per entry (the first form; kept to measure the window's gain).
    PerEntry,
}

/// A validator's answers to `Submit` (one entry) and `SubmitBatch`: a vote for each entry,
/// or why not, in order, with one durable write for every vote lock (on disk before any vote
/// is signed), signed in `form`.
pub fn submit_batch(
    form: VoteForm,
    store: &Store,
    members: &Members,
    me: &str,
    key: &Identity,
    entries: &[pb::SignedEntry],
) -> Result<Vec<pb::SubmitReply>, StoreError> {
    let shut_out: BTreeSet<String> = store
        .ledger()
        .shut_outs()?
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    let mut in_batch: BTreeMap<(String, u64), [u8; 32]> = BTreeMap::new();
    let mut replies: Vec<Option<pb::SubmitReply>> = Vec::with_capacity(entries.len());
    let mut to_lock = Vec::new();
    // Every signature of the batch at once; one by one only when that fails (to say which).
    let signatures_checked = gridgate_ledger::entry::entries_check_batch(entries, members);
    let mut next_of = BTreeMap::new();
    for (i, signed) in entries.iter().enumerate() {
        match check_for_vote(
            store,
            members,
            &shut_out,
            &in_batch,
            signed,
            signatures_checked,
            &mut next_of,
        )? {
            Ok((origin, seq, hash)) => {
                // An entry whose place another entry of this batch took is decided below,
                // against the lock; chain the later ones to the first.
                in_batch.entry((origin.clone(), seq)).or_insert(hash);
                to_lock.push((i, (origin, seq, hash, signed.encode_to_vec())));
                replies.push(None);
            }
            Err(r) => replies.push(Some(r)),
        }
    }
    let items: Vec<_> = to_lock.iter().map(|(_, it)| it.clone()).collect();
    let locks = store.ledger().lock_votes(&items)?;
    // Entries locked for a vote, in runs of one origin's consecutive entries: one signature
    // per run (a window vote), not per entry.
    let mut runs: Vec<(String, Vec<Locked>)> = Vec::new();
    // False where a refusal broke the run.
    let mut open_run = false;
    for ((i, (origin, seq, hash, _)), lock) in to_lock.into_iter().zip(locks) {
        match lock {
            VoteLock::Fresh | VoteLock::Again => {
                // Voting for another validator's proof of equivocation: the accused is shut
                // out here too, though this validator never saw both entries.
                if let Ok(e) = pb::Entry::decode(entries[i].entry.as_slice())
                    && let Some((accused, proof)) = accusation(&e, members)
                {
                    shut_out_for(store, &accused, &proof)?;
                }
                match runs.last_mut() {
                    Some((o, run))
                        if open_run
                            && form == VoteForm::Window
                            && *o == origin
                            && run.last().is_some_and(|(_, s, _)| *s + 1 == seq) =>
                    {
                        run.push((i, seq, hash));
                    }
                    _ => runs.push((origin, vec![(i, seq, hash)])),
                }
                open_run = true;
            }
            VoteLock::Other(first) => {
                let next = store.ledger().next_certified(&origin)?;
                let proof = pb::EquivocationProof {
                    a: pb::SignedEntry::decode(first.as_slice()).ok(),
                    b: Some(entries[i].clone()),
                };
                let proof = proof.encode_to_vec();
                store.ledger().shut_out(&origin, &proof)?;
                // The proof goes on this validator's own log, to be certified and spread:
                // every replica then shuts the origin out and settlement counts it.
                let at = super::certifier::append(
                    store,
                    me,
                    key,
                    &format!("equivocation/{origin}"),
                    pb::EntryKind::Equivocation,
                    proof,
                )?;
                warn!(
                    origin,
                    seq,
                    proof_entry = at,
                    "equivocation: two entries signed for one place; origin shut out, proof appended to this validator's log"
                );
                replies[i] = Some(refuse(
                    pb::VoteRefusal::Equivocation,
                    format!("{origin:?} signed another entry at {seq}: equivocation, shut out"),
                    next,
                ));
                open_run = false;
            }
        }
    }
    for (origin, run) in runs {
        let Some(&(_, first, _)) = run.first() else {
            continue;
        };
        let next = store.ledger().next_certified(&origin)?;
        let hashes: Vec<[u8; 32]> = run.iter().map(|(_, _, h)| *h).collect();
        let votes = gridgate_ledger::entry::sign_window_vote(me, &origin, first, &hashes, key);
        for ((i, _, _), vote) in run.into_iter().zip(votes) {
            replies[i] = Some(pb::SubmitReply {
                vote: Some(vote),
                refusal: pb::VoteRefusal::Unspecified as i32,
                detail: String::new(),
                next_certified: next,
            });
        }
    }
    Ok(replies.into_iter().map(Option::unwrap_or_default).collect())
}

/// Stores pushed certificates, in order, in one durable write: each must check and extend the
/// certified log (held, or earlier in the batch). Stops at the first that does not. Returns
/// the reply and the positions in `batch` of the entries it stored (not those it held
/// already), for [`super::state::LedgerState::stored`].
pub fn push_batch(
    store: &Store,
    members: &Members,
    me: &str,
    batch: &[pb::CertifiedEntry],
) -> Result<(pb::PushReply, Vec<usize>), StoreError> {
    let mut heads: BTreeMap<String, (u64, Option<Vec<u8>>)> = BTreeMap::new();
    let mut keep = Vec::new();
    let mut kept = Vec::new();
    let mut problem = String::new();
    let mut last_next = 0;
    // One batch verification for the whole window; one by one only when that fails.
    // What this validator voted for, it checked then: its signature and its own vote need
    // no second look.
    let voted = |e: &pb::Entry, hash: &[u8; 32]| {
        store
            .ledger()
            .voted(&e.origin, e.seq)
            .ok()
            .flatten()
            .is_some_and(|h| h == hash.as_slice())
    };
    let fast = gridgate_ledger::entry::check_certified_batch_knowing(batch, members, &voted, me);
    for (k, c) in batch.iter().enumerate() {
        let checked = match &fast {
            Some(all) => Ok(all[k].clone()),
            None => check_certified(c, members),
        };
        let (entry, hash) = match checked {
            Ok(v) => v,
            Err(e) => {
                problem = e.to_string();
                break;
            }
        };
        let head = match heads.get(&entry.origin) {
            Some(h) => h.clone(),
            None => {
                let next = store.ledger().next_certified(&entry.origin)?;
                let prev = if next == 0 {
                    None
                } else {
                    store
                        .ledger()
                        .certified(&entry.origin, next - 1)?
                        .and_then(|b| pb::CertifiedEntry::decode(b.as_slice()).ok())
                        .and_then(|c| c.entry)
                        .map(|e| entry_hash(&e).to_vec())
                };
                (next, prev)
            }
        };
        let (next, prev) = head;
        last_next = next;
        if entry.seq < next {
            continue; // already held: a certificate is unique per place
        }
        if entry.seq > next {
            problem = format!("holds {:?} up to {next} only; push in order", entry.origin);
            break;
        }
        let chains = if entry.seq == 0 {
            entry.prev_hash == [0u8; 32]
        } else {
            prev.as_deref() == Some(entry.prev_hash.as_slice())
        };
        if !chains {
            problem = "prev_hash does not chain to the certified entry before it".into();
            break;
        }
        if let Some((accused, proof)) = accusation(&entry, members) {
            shut_out_for(store, &accused, &proof)?;
        }
        heads.insert(entry.origin.clone(), (next + 1, Some(hash.to_vec())));
        last_next = next + 1;
        keep.push((entry.origin.clone(), entry.seq, c.encode_to_vec()));
        kept.push(k);
    }
    if !keep.is_empty() {
        store.ledger().put_certified_many(&keep)?;
        info!(entries = keep.len(), "certified entries stored");
    }
    let reply = pb::PushReply {
        stored: problem.is_empty(),
        detail: problem,
        next_certified: last_next,
    };
    Ok((reply, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_ledger::entry::{Member, sign_entry};

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
                    removed: false,
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
            submit_batch(
                VoteForm::Window,
                s,
                &w.members,
                "v0",
                &w.validator,
                std::slice::from_ref(e),
            )
            .expect("submit")
            .pop()
            .expect("one reply")
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
        let ahead = sign_entry(&entry("gw", 2, [9; 32], b"c"), &w.gateway);
        assert_eq!(
            refusal(&vote(&store, &ahead)),
            pb::VoteRefusal::MissingPredecessor
        );
        let unchained = sign_entry(&entry("gw", 1, [9; 32], b"b"), &w.gateway);
        assert_eq!(
            refusal(&vote(&store, &unchained)),
            pb::VoteRefusal::WrongPrevious
        );
        // The next entry chained to the one it voted for gets a vote before that one is
        // certified (pipelining: two quorums share an honest validator, so no fork is ever
        // certified).
        let chained = sign_entry(&entry("gw", 1, entry_hash(&first), b"b"), &w.gateway);
        assert!(vote(&store, &chained).vote.is_some());
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
        let shut = store.ledger().shut_outs().expect("shut outs");
        assert_eq!(shut.len(), 1);
        let proof = pb::EquivocationProof::decode(shut[0].1.as_slice()).expect("proof");
        assert_eq!(proof.a.as_ref(), Some(&first));
        assert_eq!(proof.b.as_ref(), Some(&second));
        assert_eq!(refusal(&vote(&store, &first)), pb::VoteRefusal::ShutOut);

        // The proof is on the validator's own log, waiting for its certificate.
        let own = store.ledger().pending("v0").expect("own log");
        assert_eq!(own.len(), 1);
        let accusation = pb::SignedEntry::decode(own[0].1.as_slice()).expect("entry");
        let e = pb::Entry::decode(accusation.entry.as_slice()).expect("entry");
        assert_eq!(e.kind, pb::EntryKind::Equivocation as i32);
        assert_eq!(e.payload, shut[0].1);

        // A validator that never saw both entries votes for the proof and shuts gw out.
        let other_dir = tempfile::tempdir().expect("dir");
        let other = Store::open(other_dir.path(), "v0").expect("store");
        assert!(vote(&other, &first).vote.is_some());
        assert!(vote(&other, &accusation).vote.is_some());
        assert_eq!(
            other.ledger().shut_outs().expect("shut outs")[0].0,
            "gw",
            "shut out on the proof alone"
        );
        assert_eq!(refusal(&vote(&other, &chained)), pb::VoteRefusal::ShutOut);

        // A "proof" whose entries gw never signed accuses nobody and gets no vote.
        let forged = pb::EquivocationProof {
            a: Some(sign_entry(&entry("gw", 5, [0; 32], b"x"), &w.stranger)),
            b: Some(sign_entry(&entry("gw", 5, [0; 32], b"y"), &w.stranger)),
        };
        let mut fake = entry("v0", 0, [0; 32], b"");
        fake.kind = pb::EntryKind::Equivocation as i32;
        fake.payload = forged.encode_to_vec();
        let third_dir = tempfile::tempdir().expect("dir");
        let third = Store::open(third_dir.path(), "v0").expect("store");
        assert_eq!(
            refusal(&vote(&third, &sign_entry(&fake, &w.validator))),
            pb::VoteRefusal::BadPayload
        );
        assert!(third.ledger().shut_outs().expect("shut outs").is_empty());
    }

    /// Members "op" (operator) and "gw" (gateway).
    fn operator_and_gateway() -> Members {
        let mut members = Members::default();
        for (id, role) in [
            ("op", pb::MemberRole::Operator),
            ("gw", pb::MemberRole::Gateway),
        ] {
            members.0.insert(
                id.into(),
                Member {
                    id: id.into(),
                    role,
                    key: Identity::generate().expect("key").public(),
                    removed: false,
                },
            );
        }
        members
    }

    #[test]
    fn market_entries_are_voted_for_only_from_their_role_and_only_when_sane() {
        let members = operator_and_gateway();
        let terms = pb::MarketTerms {
            area: "feeder-7".into(),
            floor_milli_per_kwh: 400,
            cap_milli_per_kwh: 1_200,
            tolerance_wh: 100,
            max_rounds: 30,
            interval_s: 900,
            lead_s: 3_600,
            gate_closure_s: 300,
            penalty_milli_per_kwh: 500,
            effective_ms: 0,
            round_s: 5,
        };
        let entry = |origin: &str, t: &pb::MarketTerms| pb::Entry {
            origin: origin.into(),
            kind: pb::EntryKind::MarketTerms as i32,
            payload: t.encode_to_vec(),
            ..Default::default()
        };
        let market = |origin: &str, kind: pb::EntryKind, payload: Vec<u8>| pb::Entry {
            origin: origin.into(),
            kind: kind as i32,
            payload,
            ..Default::default()
        };
        let answer = |q: i64, round: u32| {
            pb::MarketAnswer {
                area: "feeder-7".into(),
                interval_ms: 0,
                round,
                price_milli_per_kwh: 800,
                quantity_wh: q,
            }
            .encode_to_vec()
        };
        let a = pb::EntryKind::MarketAnswer;
        assert!(payload_ok(&market("gw", a, answer(-3_000, 1)), &members));
        assert!(
            !payload_ok(&market("op", a, answer(-3_000, 1)), &members),
            "only gateways answer"
        );
        assert!(
            !payload_ok(&market("gw", a, answer(i64::MIN, 1)), &members),
            "beyond reason"
        );
        assert!(
            !payload_ok(&market("gw", a, answer(1, 0)), &members),
            "rounds count from 1"
        );
        let round = pb::MarketRound::default().encode_to_vec();
        assert!(
            !payload_ok(
                &market("gw", pb::EntryKind::MarketRound, round.clone()),
                &members
            ),
            "only validators announce rounds"
        );
        assert!(!payload_ok(
            &market("op", pb::EntryKind::MarketClearing, Vec::new()),
            &members
        ));
        assert!(payload_ok(&entry("op", &terms), &members));
        assert!(
            !payload_ok(&entry("gw", &terms), &members),
            "a gateway sets no terms"
        );
        let upside_down = pb::MarketTerms {
            cap_milli_per_kwh: 100,
            ..terms
        };
        assert!(!payload_ok(&entry("op", &upside_down), &members));
    }

    #[test]
    fn an_openadr_record_is_voted_for_only_from_a_gateway_with_a_json_event() {
        let members = operator_and_gateway();
        let record = |origin: &str, json: &str, event_id: &str| pb::Entry {
            origin: origin.into(),
            kind: pb::EntryKind::OpenadrEvent as i32,
            payload: pb::OpenAdrEvent {
                vtn: "https://vtn.example/".into(),
                ven: "site-1".into(),
                event_id: event_id.into(),
                json: json.into(),
                dr_events: vec![format!("{event_id}/0/0")],
                ..Default::default()
            }
            .encode_to_vec(),
            ..Default::default()
        };
        let json = r#"{"id":"e1","programID":"p1","intervals":[]}"#;
        assert!(payload_ok(&record("gw", json, "e1"), &members));
        assert!(
            !payload_ok(&record("op", json, "e1"), &members),
            "a gateway's record"
        );
        assert!(
            !payload_ok(&record("gw", "{\"id\":", "e1"), &members),
            "not JSON"
        );
        assert!(
            !payload_ok(&record("gw", "[1, 2]", "e1"), &members),
            "not an object"
        );
        assert!(!payload_ok(&record("gw", json, ""), &members), "no id");
        let garbage = pb::Entry {
            payload: vec![0xff; 7],
            ..record("gw", json, "e1")
        };
        assert!(!payload_ok(&garbage, &members), "does not decode");
    }
}
