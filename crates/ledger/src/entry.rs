//! Entries, votes and certificates: signing and checking, pure and without I/O.
//!
//! An entry is signed by its origin over its exact bytes; a vote by a validator over the
//! bytes of a `VoteBody` (validator, origin, seq, entry hash); a certificate is 2f+1 valid
//! votes of distinct validators for one entry, where the consortium has 3f+1 validators.
//! Any two quorums of 2f+1 share f+1 validators, at least one honest, and an honest
//! validator votes once per (origin, seq): so at most one entry per place is certified.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;

use gridgate_core::{Identity, sha256};

/// A member of the consortium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id (a gateway's is its `[gateway] id`).
    pub id: String,
    /// Its role.
    pub role: pb::MemberRole,
    /// Its Ed25519 key.
    pub key: VerifyingKey,
    /// Removed by a membership change: what it logged before still checks, but nothing new
    /// of it is voted for, and it may no longer call.
    pub removed: bool,
}

/// The membership in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members(pub BTreeMap<String, Member>);

impl Members {
    /// The validators' ids.
    pub fn validators(&self) -> BTreeSet<&str> {
        self.0
            .values()
            .filter(|m| m.role == pb::MemberRole::Validator)
            .map(|m| m.id.as_str())
            .collect()
    }

    /// Votes needed for a certificate: 2f+1 of n = 3f+1 validators (with n not of that
    /// form, f = floor((n-1)/3), so the quorum still intersects in an honest validator).
    pub fn quorum(&self) -> usize {
        let n = self.validators().len();
        let f = n.saturating_sub(1) / 3;
        n - f
    }
}

/// Why an entry, vote or certificate does not check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    /// Not decodable.
    #[error("not a valid {0}")]
    Malformed(&'static str),
    /// The signer is not a member (or not a validator, for a vote).
    #[error("{0:?} is not a member with that role")]
    UnknownMember(String),
    /// A signature does not verify.
    #[error("the signature of {0:?} does not verify")]
    BadSignature(String),
    /// A vote is for another entry or place.
    #[error("a vote is for another entry")]
    WrongVote,
    /// Too few valid votes.
    #[error("{have} valid votes of distinct validators, {need} needed")]
    NoQuorum {
        /// Valid distinct votes.
        have: usize,
        /// The quorum.
        need: usize,
    },
}

/// SHA-256 of an entry's bytes: what votes name and the next entry chains to.
pub fn entry_hash(signed: &pb::SignedEntry) -> [u8; 32] {
    sha256(&signed.entry)
}

/// Signs an entry with the origin's key.
pub fn sign_entry(entry: &pb::Entry, key: &Identity) -> pb::SignedEntry {
    let bytes = entry.encode_to_vec();
    pb::SignedEntry {
        signature: key.sign(&bytes).to_vec(),
        entry: bytes,
    }
}

fn verify(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8],
    who: &str,
) -> Result<(), LedgerError> {
    let sig =
        Signature::from_slice(signature).map_err(|_| LedgerError::BadSignature(who.into()))?;
    key.verify(message, &sig)
        .map_err(|_| LedgerError::BadSignature(who.into()))
}

/// Whether every entry of `entries` decodes, names a member and carries that member's
/// signature, checked in one batch verification (about twice as fast as one by one). False
/// when anything is off: then [`check_entry`] one by one says which.
pub fn entries_check_batch(entries: &[pb::SignedEntry], members: &Members) -> bool {
    let mut batch = Batch::default();
    for signed in entries {
        let Ok(entry) = pb::Entry::decode(signed.entry.as_slice()) else {
            return false;
        };
        let Some(m) = members.0.get(&entry.origin) else {
            return false;
        };
        if batch
            .push(m.key, &signed.entry, &signed.signature)
            .is_none()
        {
            return false;
        }
    }
    batch.verify()
}

/// Decodes an entry whose signature [`entries_check_batch`] verified: its origin must still
/// be a member.
pub fn entry_of_member(
    signed: &pb::SignedEntry,
    members: &Members,
) -> Result<pb::Entry, LedgerError> {
    let entry =
        pb::Entry::decode(signed.entry.as_slice()).map_err(|_| LedgerError::Malformed("Entry"))?;
    if !members.0.contains_key(&entry.origin) {
        return Err(LedgerError::UnknownMember(entry.origin.clone()));
    }
    Ok(entry)
}

/// Decodes an entry and checks its origin's signature.
pub fn check_entry(signed: &pb::SignedEntry, members: &Members) -> Result<pb::Entry, LedgerError> {
    let entry =
        pb::Entry::decode(signed.entry.as_slice()).map_err(|_| LedgerError::Malformed("Entry"))?;
    let m = members
        .0
        .get(&entry.origin)
        .ok_or_else(|| LedgerError::UnknownMember(entry.origin.clone()))?;
    verify(&m.key, &signed.entry, &signed.signature, &entry.origin)?;
    Ok(entry)
}

/// Checks an equivocation proof: two different entries, each signed by the same member, for
/// the same place of its log. Returns the member who equivocated. A "proof" that does not
/// check (one entry forged, the same entry twice, two places) accuses nobody.
pub fn check_proof(
    proof: &pb::EquivocationProof,
    members: &Members,
) -> Result<String, LedgerError> {
    let (Some(a), Some(b)) = (&proof.a, &proof.b) else {
        return Err(LedgerError::Malformed("EquivocationProof"));
    };
    let (ea, eb) = (check_entry(a, members)?, check_entry(b, members)?);
    if ea.origin != eb.origin || ea.seq != eb.seq || a.entry == b.entry {
        return Err(LedgerError::Malformed(
            "EquivocationProof (not two different entries for one place)",
        ));
    }
    Ok(ea.origin)
}

/// A validator's vote for the entry `hash` at (origin, seq).
pub fn sign_vote(
    validator: &str,
    origin: &str,
    seq: u64,
    hash: &[u8; 32],
    key: &Identity,
) -> pb::Vote {
    let body = pb::VoteBody {
        validator: validator.into(),
        origin: origin.into(),
        seq,
        entry_hash: hash.to_vec(),
        count: 0,
    }
    .encode_to_vec();
    pb::Vote {
        signature: key.sign(&body).to_vec(),
        body,
        path: Vec::new(),
    }
}

/// A validator's one vote for a run of entries of `origin` from `first` (their hashes, in
/// order): one signature over the RFC 6962 root of the hashes, and for each entry a copy
/// with its audit path, so that each entry's certificate still stands on its own. One entry
/// gets a plain vote.
pub fn sign_window_vote(
    validator: &str,
    origin: &str,
    first: u64,
    hashes: &[[u8; 32]],
    key: &Identity,
) -> Vec<pb::Vote> {
    if hashes.len() <= 1 {
        return hashes
            .iter()
            .map(|h| sign_vote(validator, origin, first, h, key))
            .collect();
    }
    let leaves: Vec<[u8; 32]> = hashes.iter().map(|h| crate::merkle::leaf(h)).collect();
    let (root, paths) = crate::merkle::root_and_paths(&leaves);
    let body = pb::VoteBody {
        validator: validator.into(),
        origin: origin.into(),
        seq: first,
        entry_hash: root.to_vec(),
        count: hashes.len() as u64,
    }
    .encode_to_vec();
    let signature = key.sign(&body).to_vec();
    paths
        .into_iter()
        .map(|p| pb::Vote {
            body: body.clone(),
            signature: signature.clone(),
            path: p.into_iter().map(|h| h.to_vec()).collect(),
        })
        .collect()
}

/// Whether a vote's body (with the vote's path) is for the entry `hash` at (origin, seq):
/// the very entry, or a window of that origin's log whose root the path proves it in.
fn covers(body: &pb::VoteBody, path: &[Vec<u8>], origin: &str, seq: u64, hash: &[u8; 32]) -> bool {
    if body.origin != origin {
        return false;
    }
    if body.count <= 1 {
        return path.is_empty() && body.seq == seq && body.entry_hash == hash.as_slice();
    }
    let Some(index) = seq.checked_sub(body.seq).filter(|i| *i < body.count) else {
        return false;
    };
    let Ok(root) = <[u8; 32]>::try_from(body.entry_hash.as_slice()) else {
        return false;
    };
    let mut hashes = Vec::with_capacity(path.len());
    for p in path {
        let Ok(h) = <[u8; 32]>::try_from(p.as_slice()) else {
            return false;
        };
        hashes.push(h);
    }
    crate::merkle::verify_inclusion(
        &crate::merkle::leaf(hash),
        index,
        body.count,
        &hashes,
        &root,
    )
}

/// Checks one vote: a validator's, signed, for exactly this entry and place.
pub fn check_vote(
    vote: &pb::Vote,
    members: &Members,
    origin: &str,
    seq: u64,
    hash: &[u8; 32],
) -> Result<String, LedgerError> {
    let body =
        pb::VoteBody::decode(vote.body.as_slice()).map_err(|_| LedgerError::Malformed("Vote"))?;
    let m = members
        .0
        .get(&body.validator)
        .filter(|m| m.role == pb::MemberRole::Validator)
        .ok_or_else(|| LedgerError::UnknownMember(body.validator.clone()))?;
    verify(&m.key, &vote.body, &vote.signature, &body.validator)?;
    if !covers(&body, &vote.path, origin, seq, hash) {
        return Err(LedgerError::WrongVote);
    }
    Ok(body.validator)
}

/// Checks a certified entry: the entry's signature, and a quorum of valid votes of
/// distinct validators for it. Votes that do not check are ignored, not fatal: a
/// certificate stands on its good votes.
pub fn check_certified(
    c: &pb::CertifiedEntry,
    members: &Members,
) -> Result<(pb::Entry, [u8; 32]), LedgerError> {
    let signed = c
        .entry
        .as_ref()
        .ok_or(LedgerError::Malformed("CertifiedEntry"))?;
    let entry = check_entry(signed, members)?;
    let hash = entry_hash(signed);
    let votes = c
        .certificate
        .as_ref()
        .map_or(&[][..], |c| c.votes.as_slice());
    let good: BTreeSet<String> = votes
        .iter()
        .filter_map(|v| check_vote(v, members, &entry.origin, entry.seq, &hash).ok())
        .collect();
    let need = members.quorum();
    if good.len() < need {
        return Err(LedgerError::NoQuorum {
            have: good.len(),
            need,
        });
    }
    Ok((entry, hash))
}

/// Signatures gathered for one batch verification. A signature met again over the same
/// message (a validator's one vote over a window, in each entry's certificate) is checked once.
#[derive(Default)]
struct Batch<'a> {
    messages: Vec<&'a [u8]>,
    signatures: Vec<Signature>,
    keys: Vec<VerifyingKey>,
    seen: std::collections::HashSet<(&'a [u8], &'a [u8])>,
}

impl<'a> Batch<'a> {
    fn push(&mut self, key: VerifyingKey, message: &'a [u8], signature: &'a [u8]) -> Option<()> {
        if !self.seen.insert((message, signature)) {
            return Some(());
        }
        self.signatures.push(Signature::from_slice(signature).ok()?);
        self.messages.push(message);
        self.keys.push(key);
        Some(())
    }

    fn verify(&self) -> bool {
        self.messages.is_empty()
            || ed25519_dalek::verify_batch(&self.messages, &self.signatures, &self.keys).is_ok()
    }
}

/// [`check_certified`] for a window of certified entries with one batch verification of every
/// signature in it (entries and votes: about twice as fast as one by one). `None` when
/// anything in the window is off (a bad signature, a stray vote): then check them one by one,
/// which says which and still counts a certificate's good votes.
pub fn check_certified_batch(
    window: &[pb::CertifiedEntry],
    members: &Members,
) -> Option<Vec<(pb::Entry, [u8; 32])>> {
    check_certified_batch_knowing(window, members, &|_, _| false, "")
}

/// [`check_certified_batch`] for a validator `me` that already checked some entries:
/// `checked(entry, hash)` says it verified that entry's signature before it voted for that
/// very hash, so neither that signature nor its own vote for it is verified again (a pushed
/// window of entries it voted for costs only the other validators' votes).
pub fn check_certified_batch_knowing(
    window: &[pb::CertifiedEntry],
    members: &Members,
    checked: &dyn Fn(&pb::Entry, &[u8; 32]) -> bool,
    me: &str,
) -> Option<Vec<(pb::Entry, [u8; 32])>> {
    let need = members.quorum();
    let mut batch = Batch::default();
    let mut out = Vec::with_capacity(window.len());
    for c in window {
        let signed = c.entry.as_ref()?;
        let entry = pb::Entry::decode(signed.entry.as_slice()).ok()?;
        let origin = members.0.get(&entry.origin)?;
        let hash = entry_hash(signed);
        let known = checked(&entry, &hash);
        if !known {
            batch.push(origin.key, &signed.entry, &signed.signature)?;
        }
        let mut voters = BTreeSet::new();
        for v in c
            .certificate
            .as_ref()
            .map_or(&[][..], |c| c.votes.as_slice())
        {
            let body = pb::VoteBody::decode(v.body.as_slice()).ok()?;
            let m = members
                .0
                .get(&body.validator)
                .filter(|m| m.role == pb::MemberRole::Validator)?;
            if !covers(&body, &v.path, &entry.origin, entry.seq, &hash)
                || !voters.insert(body.validator.clone())
            {
                return None;
            }
            if !(known && body.validator == me) {
                batch.push(m.key, &v.body, &v.signature)?;
            }
        }
        if voters.len() < need {
            return None;
        }
        out.push((entry, hash));
    }
    batch.verify().then_some(out)
}

/// Whether every vote of `votes` (for own entries from `first`, with these hashes, in order;
/// `None` where the validator gave none) is a valid vote of a validator for its entry,
/// checked in one batch.
pub fn votes_check_batch(
    votes: &[Option<pb::Vote>],
    members: &Members,
    origin: &str,
    first: u64,
    hashes: &[[u8; 32]],
) -> bool {
    let mut batch = Batch::default();
    for (i, v) in votes.iter().enumerate() {
        let Some(v) = v else { continue };
        let Ok(body) = pb::VoteBody::decode(v.body.as_slice()) else {
            return false;
        };
        let Some(m) = members
            .0
            .get(&body.validator)
            .filter(|m| m.role == pb::MemberRole::Validator)
        else {
            return false;
        };
        let ok_place = hashes
            .get(i)
            .is_some_and(|h| covers(&body, &v.path, origin, first + i as u64, h));
        if !ok_place || batch.push(m.key, &v.body, &v.signature).is_none() {
            return false;
        }
    }
    batch.verify()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: pb::MemberRole) -> (Identity, Member) {
        let key = Identity::generate().expect("key");
        let m = Member {
            id: id.into(),
            role,
            key: key.public(),
            removed: false,
        };
        (key, m)
    }

    #[test]
    fn a_certificate_needs_a_quorum_of_distinct_honest_votes_for_the_very_entry() {
        let vals: Vec<(Identity, Member)> = (0..4)
            .map(|i| node(&format!("v{i}"), pb::MemberRole::Validator))
            .collect();
        let (gw_key, gw) = node("gw", pb::MemberRole::Gateway);
        let mut members = Members::default();
        for (_, m) in vals.iter().chain([(gw_key.clone(), gw.clone())].iter()) {
            members.0.insert(m.id.clone(), m.clone());
        }
        assert_eq!(members.quorum(), 3);
        let entry = pb::Entry {
            origin: "gw".into(),
            seq: 0,
            prev_hash: vec![0; 32],
            kind: pb::EntryKind::PerformanceReport as i32,
            payload: b"claim".to_vec(),
            ..Default::default()
        };
        let signed = sign_entry(&entry, &gw_key);
        let hash = entry_hash(&signed);
        let vote = |i: usize, h: &[u8; 32]| sign_vote(&vals[i].1.id, "gw", 0, h, &vals[i].0);
        let cert = |votes: Vec<pb::Vote>| pb::CertifiedEntry {
            entry: Some(signed.clone()),
            certificate: Some(pb::Certificate { votes }),
        };
        assert!(
            check_certified(
                &cert(vec![vote(0, &hash), vote(1, &hash), vote(2, &hash)]),
                &members
            )
            .is_ok()
        );
        // The same validator three times is one vote.
        assert_eq!(
            check_certified(
                &cert(vec![vote(0, &hash), vote(0, &hash), vote(0, &hash)]),
                &members
            ),
            Err(LedgerError::NoQuorum { have: 1, need: 3 })
        );
        // A vote for another entry does not count, nor one signed by a non-validator.
        let other = [7u8; 32];
        let forged = sign_vote("gw", "gw", 0, &hash, &gw_key);
        assert_eq!(
            check_certified(
                &cert(vec![vote(0, &hash), vote(1, &other), forged]),
                &members
            ),
            Err(LedgerError::NoQuorum { have: 1, need: 3 })
        );
        // The batch check agrees: a good window passes, one bad vote sends it one by one.
        let good = cert(vec![vote(0, &hash), vote(1, &hash), vote(2, &hash)]);
        assert!(check_certified_batch(std::slice::from_ref(&good), &members).is_some());
        let mut bad = good.clone();
        if let Some(c) = bad.certificate.as_mut() {
            c.votes[1].signature[0] ^= 1;
        }
        assert!(check_certified_batch(&[good.clone(), bad.clone()], &members).is_none());
        // A validator that voted for this very entry skips its signature and its own vote,
        // and nothing else: another validator's bad vote still fails the window.
        let id0 = vals[0].1.id.clone();
        let mut own_bad = good.clone();
        if let Some(c) = own_bad.certificate.as_mut() {
            c.votes[0].signature[0] ^= 1;
        }
        let voted = |_: &pb::Entry, h: &[u8; 32]| *h == hash;
        assert!(
            check_certified_batch_knowing(std::slice::from_ref(&own_bad), &members, &voted, &id0)
                .is_some()
        );
        assert!(
            check_certified_batch_knowing(std::slice::from_ref(&bad), &members, &voted, &id0)
                .is_none()
        );
        let voted_other = |_: &pb::Entry, h: &[u8; 32]| *h == other;
        assert!(
            check_certified_batch_knowing(
                std::slice::from_ref(&own_bad),
                &members,
                &voted_other,
                &id0
            )
            .is_none()
        );
        assert!(
            check_certified(&bad, &members).is_err(),
            "two good votes of three"
        );
        let votes: Vec<Option<pb::Vote>> = vec![Some(vote(0, &hash))];
        assert!(votes_check_batch(&votes, &members, "gw", 0, &[hash]));
        assert!(
            !votes_check_batch(&votes, &members, "gw", 1, &[hash]),
            "wrong place"
        );
        // A tampered entry fails its own signature first.
        let mut tampered = signed.clone();
        tampered.entry[0] ^= 1;
        assert!(check_entry(&tampered, &members).is_err());
        // The batch check of entries: all good passes; one bad signature, an unknown
        // origin or an entry that does not decode fails the batch.
        let next = sign_entry(
            &pb::Entry {
                seq: 1,
                prev_hash: hash.to_vec(),
                ..entry.clone()
            },
            &gw_key,
        );
        assert!(entries_check_batch(
            &[signed.clone(), next.clone()],
            &members
        ));
        let mut forged = next.clone();
        forged.signature[5] ^= 1;
        assert!(!entries_check_batch(&[signed.clone(), forged], &members));
        let stranger = sign_entry(
            &pb::Entry {
                origin: "stranger".into(),
                ..entry.clone()
            },
            &gw_key,
        );
        assert!(!entries_check_batch(
            &[signed.clone(), stranger.clone()],
            &members
        ));
        assert!(!entries_check_batch(&[tampered], &members));
        assert!(entry_of_member(&stranger, &members).is_err());
        assert_eq!(entry_of_member(&next, &members).map(|e| e.seq), Ok(1));
    }

    #[test]
    fn one_vote_over_a_window_certifies_each_entry_in_it_and_no_other() {
        let vals: Vec<(Identity, Member)> = (0..4)
            .map(|i| node(&format!("v{i}"), pb::MemberRole::Validator))
            .collect();
        let (gw_key, gw) = node("gw", pb::MemberRole::Gateway);
        let mut members = Members::default();
        for (_, m) in vals.iter() {
            members.0.insert(m.id.clone(), m.clone());
        }
        members.0.insert("gw".into(), gw);
        // Five entries from seq 10 (the chain does not matter to a certificate).
        let signed: Vec<pb::SignedEntry> = (0..5u64)
            .map(|k| {
                sign_entry(
                    &pb::Entry {
                        origin: "gw".into(),
                        seq: 10 + k,
                        payload: vec![k as u8],
                        ..Default::default()
                    },
                    &gw_key,
                )
            })
            .collect();
        let hashes: Vec<[u8; 32]> = signed.iter().map(entry_hash).collect();
        let windows: Vec<Vec<pb::Vote>> = (0..3)
            .map(|i| sign_window_vote(&vals[i].1.id, "gw", 10, &hashes, &vals[i].0))
            .collect();
        // One signature per validator for the five.
        assert!(
            windows[0]
                .iter()
                .all(|v| v.signature == windows[0][0].signature)
        );
        let certified: Vec<pb::CertifiedEntry> = (0..5)
            .map(|k| pb::CertifiedEntry {
                entry: Some(signed[k].clone()),
                certificate: Some(pb::Certificate {
                    votes: windows.iter().map(|w| w[k].clone()).collect(),
                }),
            })
            .collect();
        for c in &certified {
            assert!(check_certified(c, &members).is_ok());
        }
        assert!(check_certified_batch(&certified, &members).is_some());
        let own: Vec<Option<pb::Vote>> = windows[1].iter().cloned().map(Some).collect();
        assert!(votes_check_batch(&own, &members, "gw", 10, &hashes));
        // A window vote's copy moved to another entry of the window, or the window
        // claimed for another place, or a path cut short: no vote for that entry.
        let v = &windows[0][2];
        for (seq, hash) in [
            (11, hashes[2]),
            (12, hashes[1]),
            (15, hashes[2]),
            (9, hashes[2]),
        ] {
            assert_eq!(
                check_vote(v, &members, "gw", seq, &hash),
                Err(LedgerError::WrongVote),
                "seq {seq}"
            );
        }
        assert_eq!(
            check_vote(v, &members, "other", 12, &hashes[2]),
            Err(LedgerError::WrongVote)
        );
        let mut short = v.clone();
        short.path.pop();
        assert_eq!(
            check_vote(&short, &members, "gw", 12, &hashes[2]),
            Err(LedgerError::WrongVote)
        );
        assert!(check_vote(v, &members, "gw", 12, &hashes[2]).is_ok());
        // A forged window signature fails every entry's certificate it is in.
        let mut forged = certified.clone();
        for c in &mut forged {
            if let Some(cert) = c.certificate.as_mut() {
                cert.votes[0].signature[5] ^= 1;
            }
        }
        assert!(check_certified_batch(&forged, &members).is_none());
        assert!(forged.iter().all(|c| check_certified(c, &members).is_err()));
    }
}
