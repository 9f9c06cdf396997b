//! Decided cuts on a replica: checked and stored in chain order, whoever brings them (the
//! consensus engine on a validator, or a validator's `Cuts` answer to a gateway that was
//! offline). A cut is stored only once a finalization decides it: its own, or that of a
//! later cut whose chain of parent hashes leads back to it.

use gridgate_ledger::Members;
use gridgate_ledger::cut::{self, CutError, CutState};
use gridgate_ledger::entry::LedgerError;
use gridgate_proto::v1 as pb;
use thiserror::Error;

use crate::tables::{AppendCutsError, LedgerStore};
use gridgate_store::{Store, StoreError};

/// Why cuts were refused. What came before the refused cut and is decided is stored.
#[derive(Debug, Error)]
pub enum CutsRefused {
    /// A cut does not follow the one before it.
    #[error("cut {height}: {source}")]
    Chain {
        /// Its height (as it says).
        height: u64,
        source: CutError,
    },
    /// A finalization does not check.
    #[error("cut {height}: its finalization does not check: {source}")]
    Certificate {
        /// The cut's height.
        height: u64,
        source: LedgerError,
    },
    /// The store.
    #[error("storing decided cuts: {0}")]
    Store(#[from] StoreError),
}

/// Checks `got` (decided cuts in height order, starting anywhere at or below the next
/// height) against the chain this replica holds and stores every one a checked
/// finalization decides. Returns how many were stored; cuts after the last finalization
/// wait for a later call.
pub fn store_decided(
    store: &Store,
    members: &Members,
    got: &[pb::DecidedCut],
) -> Result<u64, CutsRefused> {
    loop {
        let state = store.ledger().decided_state()?;
        let (decided, last, refused) = check_chain(&state, members, got);
        if decided.is_empty() {
            return refused.map_or(Ok(0), Err);
        }
        let n = decided.len() as u64;
        match store.ledger().append_cuts(state.height, &decided, &last) {
            Ok(()) => return refused.map_or(Ok(n), Err),
            // Another writer decided first: check again against the longer chain.
            Err(AppendCutsError::Moved { .. }) => continue,
            Err(AppendCutsError::Store(e)) => return Err(e.into()),
        }
    }
}

/// The cuts of `got` that follow `state` and that a finalization decides (pure: no store),
/// with the state as
/// of the last, and why checking stopped early (if it did).
pub fn check_chain(
    state: &CutState,
    members: &Members,
    got: &[pb::DecidedCut],
) -> (Vec<(u64, pb::DecidedCut)>, CutState, Option<CutsRefused>) {
    let mut at = state.clone();
    let mut pending: Vec<(u64, pb::DecidedCut)> = Vec::new();
    let mut decided = Vec::new();
    let mut last = state.clone();
    for d in got {
        let c = match cut::decode(&d.cut) {
            Ok(c) => c,
            Err(source) => {
                let e = CutsRefused::Chain { height: 0, source };
                return (decided, last, Some(e));
            }
        };
        if c.height <= at.height {
            continue; // held already
        }
        let digest = cut::digest(&d.cut);
        at = match at.follow(&c, digest) {
            Ok(s) => s,
            Err(source) => {
                let e = CutsRefused::Chain {
                    height: c.height,
                    source,
                };
                return (decided, last, Some(e));
            }
        };
        pending.push((c.height, d.clone()));
        if let Some(cert) = &d.certificate {
            if let Err(source) = cut::check_certificate(members, cert, &digest) {
                let e = CutsRefused::Certificate {
                    height: c.height,
                    source,
                };
                return (decided, last, Some(e));
            }
            decided.append(&mut pending);
            last = at.clone();
        }
    }
    (decided, last, None)
}

/// The first of `got` (a validator's decided cuts from height 1, in order) whose time is at
/// or past `close_ms`, with every log's head as of it: what a statement closes on. `Ok(None)`
/// while no decided cut is that late; an error when the chain or a finalization does not
/// check.
pub fn closing_cut(
    got: &[pb::DecidedCut],
    genesis: &Members,
    close_ms: i64,
) -> Result<Option<gridgate_ledger::settlement::ClosingCut>, CutsRefused> {
    let (decided, _, refused) = check_chain(&CutState::genesis(), genesis, got);
    let mut state = CutState::genesis();
    for (height, d) in &decided {
        let c = cut::decode(&d.cut).map_err(|source| CutsRefused::Chain {
            height: *height,
            source,
        })?;
        state = state
            .follow(&c, cut::digest(&d.cut))
            .map_err(|source| CutsRefused::Chain {
                height: *height,
                source,
            })?;
        if state.time_ms >= close_ms {
            return Ok(Some(gridgate_ledger::settlement::ClosingCut {
                height: state.height,
                digest: state.digest,
                time_ms: state.time_ms,
                heads: state
                    .heads
                    .iter()
                    .map(|(o, h)| (o.clone(), h.next))
                    .collect(),
            }));
        }
    }
    refused.map_or(Ok(None), Err)
}

/// The heads this replica holds certified, as a cut names them.
pub fn held_heads(store: &Store) -> Result<Vec<(String, u64, cut::Digest)>, StoreError> {
    store.ledger().certified_heads()
}

/// Whether this replica holds, certified, the entry a cut's head names (at next - 1, with
/// that hash).
pub fn holds(store: &Store, head: &pb::CutHead) -> Result<bool, StoreError> {
    use prost::Message;
    let Some(seq) = head.next.checked_sub(1) else {
        return Ok(false);
    };
    let Some(bytes) = store.ledger().certified(&head.origin, seq)? else {
        return Ok(false);
    };
    let held = pb::CertifiedEntry::decode(bytes.as_slice())
        .ok()
        .and_then(|c| c.entry)
        .map(|e| gridgate_ledger::entry::entry_hash(&e));
    Ok(held.is_some_and(|h| h.as_slice() == head.last_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_core::Identity;
    use gridgate_ledger::Member;
    use gridgate_ledger::cut::{NAMESPACE, finalize_message};
    use prost::Message;

    struct Net {
        keys: Vec<Identity>,
        members: Members,
    }

    fn net() -> Net {
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
        Net { keys, members }
    }

    impl Net {
        fn certificate(&self, view: u64, d: &cut::Digest, signers: &[usize]) -> pb::CutCertificate {
            let votes = signers
                .iter()
                .map(|&i| pb::CutVote {
                    validator: format!("v{i}"),
                    signature: self.keys[i]
                        .sign(&finalize_message(NAMESPACE, 0, view, view - 1, d))
                        .to_vec(),
                })
                .collect();
            pb::CutCertificate {
                epoch: 0,
                view,
                parent_view: view - 1,
                votes,
            }
        }

        /// `n` cuts after `from`, each moving log "gw" by one; certified where `certified`
        /// says, by validators 0, 1 and 2.
        fn chain(
            &self,
            from: &CutState,
            n: u64,
            certified: impl Fn(u64) -> bool,
        ) -> Vec<pb::DecidedCut> {
            let mut at = from.clone();
            let mut out = Vec::new();
            for i in 0..n {
                let next = at.heads.get("gw").map_or(0, |h| h.next) + 1;
                let c = at.propose([("gw".to_string(), next, [i as u8; 32])], 1_000 + i as i64);
                let bytes = c.encode_to_vec();
                let d = cut::digest(&bytes);
                at = at.follow(&c, d).expect("follows");
                out.push(pb::DecidedCut {
                    certificate: certified(c.height)
                        .then(|| self.certificate(c.height, &d, &[0, 1, 2])),
                    cut: bytes,
                });
            }
            out
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("store");
        (dir, store)
    }

    #[test]
    fn cuts_are_stored_up_to_the_last_finalization_and_the_rest_wait() {
        let n = net();
        let (_d, st) = store();
        // Heights 1..=5; 3 finalized (so 1..=3 decided), 4 and 5 not yet.
        let chain = n.chain(&CutState::genesis(), 5, |h| h == 3);
        assert_eq!(store_decided(&st, &n.members, &chain).expect("stored"), 3);
        let state = st.ledger().decided_state().expect("state");
        assert_eq!((state.height, state.heads["gw"].next), (3, 3));
        // Sent again with 5 finalized: 4 and 5 follow; what is held already is skipped.
        let mut again = chain.clone();
        let d5 = cut::digest(&again[4].cut);
        again[4].certificate = Some(n.certificate(5, &d5, &[1, 2, 3]));
        assert_eq!(store_decided(&st, &n.members, &again).expect("stored"), 2);
        assert_eq!(st.ledger().decided_state().expect("state").height, 5);
        let held: Vec<u64> = st
            .ledger()
            .cuts(0, 100)
            .expect("cuts")
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(held, [1, 2, 3, 4, 5]);
        // Reopened, the fold is the same as checking the chain again from the start.
        let from_scratch = check_chain(&CutState::genesis(), &n.members, &again).1;
        assert_eq!(st.ledger().decided_state().expect("state"), from_scratch);
        // Each cut ordered one more entry of "gw", whether stored in the first call or the
        // second: cut h ordered gw's entry h - 1, and the entry's cut is found by place.
        for h in 1..=5u64 {
            let body = cut::decode(&again[h as usize - 1].cut).expect("cut");
            assert_eq!(
                st.ledger().ordered_by(&body).expect("orders"),
                [("gw".to_string(), h - 1, h)]
            );
            assert_eq!(st.ledger().ordered_at("gw", h - 1).expect("at"), Some(h));
        }
        assert_eq!(
            st.ledger().ordered_at("gw", 5).expect("at"),
            None,
            "not ordered yet"
        );
        // The heads as of an earlier cut, from the newest fold walked back.
        for h in 1..=5u64 {
            let at = st.ledger().heads_at(h).expect("heads");
            assert_eq!(at.get("gw"), Some(&h), "as of cut {h}");
        }
        // Cut h was proposed at 1,000 + h - 1 ms: the first at or after a time, by bisection.
        assert_eq!(st.ledger().first_cut_at(0).expect("first"), Some(1));
        assert_eq!(st.ledger().first_cut_at(1_002).expect("first"), Some(3));
        assert_eq!(st.ledger().first_cut_at(1_005).expect("first"), None);
    }

    #[test]
    fn a_short_or_forged_finalization_decides_nothing() {
        let n = net();
        let (_d, st) = store();
        let mut chain = n.chain(&CutState::genesis(), 2, |_| false);
        let d2 = cut::digest(&chain[1].cut);
        chain[1].certificate = Some(n.certificate(2, &d2, &[0, 1]));
        assert!(matches!(
            store_decided(&st, &n.members, &chain),
            Err(CutsRefused::Certificate { height: 2, .. })
        ));
        // Votes for another cut, presented for this one.
        chain[1].certificate = Some(n.certificate(2, &[7; 32], &[0, 1, 2]));
        assert!(matches!(
            store_decided(&st, &n.members, &chain),
            Err(CutsRefused::Certificate { .. })
        ));
        assert_eq!(st.ledger().decided_state().expect("state").height, 0);
    }

    #[test]
    fn a_cut_that_breaks_the_chain_is_refused_and_what_came_before_it_kept() {
        let n = net();
        let (_d, st) = store();
        let mut chain = n.chain(&CutState::genesis(), 3, |_| true);
        let mut c3 = cut::decode(&chain[2].cut).expect("cut");
        c3.parent = vec![1; 32];
        chain[2].cut = c3.encode_to_vec();
        assert!(matches!(
            store_decided(&st, &n.members, &chain),
            Err(CutsRefused::Chain {
                height: 3,
                source: CutError::WrongParent { .. }
            })
        ));
        assert_eq!(st.ledger().decided_state().expect("state").height, 2);
    }

    #[test]
    fn the_heads_a_cut_names_are_one_seek_per_log() {
        let (_d, st) = store();
        assert!(held_heads(&st).expect("heads").is_empty());
        let key = Identity::generate().expect("key");
        let mut items = Vec::new();
        for (origin, n) in [("a", 3u64), ("ab", 1), ("b", 2)] {
            for seq in 0..n {
                let e = pb::Entry {
                    origin: origin.into(),
                    seq,
                    ..Default::default()
                };
                let signed = gridgate_ledger::entry::sign_entry(&e, &key);
                let c = pb::CertifiedEntry {
                    entry: Some(signed),
                    ..Default::default()
                };
                items.push((origin.to_string(), seq, c.encode_to_vec()));
            }
        }
        st.ledger().put_certified_many(&items).expect("put");
        let heads = held_heads(&st).expect("heads");
        let names: Vec<(&str, u64)> = heads.iter().map(|(o, n, _)| (o.as_str(), *n)).collect();
        assert_eq!(names, [("a", 3), ("ab", 1), ("b", 2)]);
        for (origin, next, hash) in heads {
            let head = pb::CutHead {
                origin,
                next,
                last_hash: hash.to_vec(),
            };
            assert!(holds(&st, &head).expect("holds"));
            assert!(
                !holds(
                    &st,
                    &pb::CutHead {
                        last_hash: vec![0; 32],
                        ..head.clone()
                    }
                )
                .expect("holds")
            );
            assert!(
                !holds(
                    &st,
                    &pb::CutHead {
                        next: head.next + 1,
                        ..head
                    }
                )
                .expect("holds")
            );
        }
    }
}
