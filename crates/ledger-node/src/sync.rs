//! Anti-entropy: a replica asks the validators for their heads and fetches, checks and
//! stores the certified entries it lacks, in order. So a validator that was down catches up
//! by itself (not only when an origin next asks it to vote), and a gateway holds the logs it
//! needs: its own, the operator's (events, programs) and the validators' (proofs of
//! equivocation, membership).
//!
//! What is stored goes through [`super::node::push_batch`]: every certificate checked
//! against the membership, every entry chained to the one before it.

use std::sync::Arc;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::certifier::{blocking, peers};
use super::state::LedgerState;
use crate::tables::LedgerStore;
use gridgate_config::ledger::{LedgerConfig, LedgerRole};
use gridgate_store::Store;

/// Time between rounds.
pub const EVERY: Duration = Duration::from_secs(5);
/// Entries fetched and stored at once.
const CHUNK: u32 = 512;
/// Longest wait on one validator.
const WITHIN: Duration = Duration::from_secs(10);

/// What a replica syncs.
pub struct Replica {
    /// Its store.
    pub store: Arc<Store>,
    /// The membership in force and the feed of stored entries.
    pub state: Arc<LedgerState>,
    /// This node's member id.
    pub me: String,
    /// Its role.
    pub role: LedgerRole,
    /// Starts the next round early (the market agent, while a discovery is open).
    pub wake: Arc<tokio::sync::Notify>,
}

impl Replica {
    /// Whether this node keeps `origin`'s log: a validator keeps every log; a gateway (or an
    /// operator) its own, the operators' and the validators'.
    fn wants(&self, origin: &str) -> bool {
        let members = self.state.members();
        match self.role {
            LedgerRole::Validator => members.0.contains_key(origin),
            LedgerRole::Gateway | LedgerRole::Operator => {
                origin == self.me
                    || members.0.get(origin).is_some_and(|m| {
                        matches!(m.role, pb::MemberRole::Operator | pb::MemberRole::Validator)
                    })
            }
        }
    }
}

/// Fetches what one validator holds beyond this replica, origin by origin; returns the
/// number of entries stored.
async fn round(r: &Replica, peer: &mut super::certifier::Peer) -> u64 {
    let heads = match tokio::time::timeout(WITHIN, peer.client.heads(pb::HeadsRequest {})).await {
        Ok(Ok(h)) => h.into_inner().heads,
        Ok(Err(s)) => {
            debug!(validator = %peer.id, "ledger sync: {}", s.message());
            return 0;
        }
        Err(_) => return 0,
    };
    let mut stored = 0;
    for h in heads.into_iter().filter(|h| r.wants(&h.origin)) {
        loop {
            let o = h.origin.clone();
            let Some(ours) = blocking(&r.store, move |st| st.ledger().next_certified(&o)).await
            else {
                return stored;
            };
            if ours >= h.next_certified {
                break;
            }
            let fetch = async {
                let mut stream = peer
                    .client
                    .fetch(pb::FetchRequest {
                        origin: h.origin.clone(),
                        from_seq: ours,
                        max: CHUNK,
                    })
                    .await?
                    .into_inner();
                let mut got = Vec::new();
                while let Some(c) = stream.message().await? {
                    got.push(c);
                }
                Ok::<_, tonic::Status>(got)
            };
            let got = match tokio::time::timeout(WITHIN, fetch).await {
                Ok(Ok(g)) if !g.is_empty() => g,
                Ok(Ok(_)) => break,
                Ok(Err(s)) => {
                    debug!(validator = %peer.id, origin = %h.origin, "ledger sync fetch: {}", s.message());
                    break;
                }
                Err(_) => break,
            };
            let (members, me) = (r.state.members(), r.me.clone());
            let Some((reply, kept, got)) = blocking(&r.store, move |st| {
                super::node::push_batch(st, &members, &me, &got)
                    .map(|(reply, kept)| (reply, kept, got))
            })
            .await
            else {
                return stored;
            };
            let n = kept.len() as u64;
            if n > 0 {
                let kept: Vec<pb::CertifiedEntry> =
                    kept.into_iter().map(|k| got[k].clone()).collect();
                r.state.stored(&kept);
            }
            if !reply.stored {
                // A certificate that does not check, or a log that does not chain: believe
                // nothing more from this validator this round.
                warn!(validator = %peer.id, origin = %h.origin, "ledger sync: refused what the validator sent: {}", reply.detail);
                break;
            }
            stored += n;
        }
    }
    stored
}

/// Fetches the decided cuts one validator holds beyond this replica, checks each chain and
/// finalization and stores what they decide; returns how many were stored.
async fn cuts_round(r: &Replica, peer: &mut super::certifier::Peer) -> u64 {
    let mut stored = 0;
    loop {
        let Some(from) = blocking(&r.store, |st| st.ledger().decided_state()).await else {
            return stored;
        };
        let ask = peer.client.cuts(pb::CutsRequest {
            from_height: from.height + 1,
            max: 0,
        });
        let reply = match tokio::time::timeout(WITHIN, ask).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(s)) => {
                debug!(validator = %peer.id, "cut sync: {}", s.message());
                return stored;
            }
            Err(_) => return stored,
        };
        if reply.cuts.is_empty() {
            return stored;
        }
        // The validator set is the genesis one: finalizations are checked against it.
        let members = r.state.genesis().clone();
        let got = reply.cuts;
        let result = r
            .store
            .run(move |st| Ok(super::cuts::store_decided(st, &members, &got)))
            .await;
        match result {
            Ok(Ok(0)) => return stored,
            Ok(Ok(n)) => stored += n,
            Ok(Err(e)) => {
                // A cut whose chain or finalization does not check: believe nothing more
                // from this validator this round.
                r.state.cut_refused();
                warn!(validator = %peer.id, "cut sync: refused what the validator sent: {e}");
                return stored;
            }
            Err(e) => {
                warn!("cut sync: store: {e}");
                return stored;
            }
        }
    }
}

/// Syncs until `cancel` fires: every [`EVERY`], a round with each validator but itself.
pub async fn run(r: Replica, cfg: LedgerConfig, cancel: CancellationToken) {
    let mut peers = match peers(&cfg) {
        Ok(p) => p,
        Err(e) => {
            warn!("ledger sync: cannot reach the validators: {e}");
            return;
        }
    };
    peers.retain(|p| p.id != r.me);
    loop {
        for peer in &mut peers {
            let stored = tokio::select! {
                _ = cancel.cancelled() => return,
                n = round(&r, peer) => n,
            };
            if stored > 0 {
                info!(validator = %peer.id, entries = stored, "ledger sync: certified entries fetched and stored");
            }
            let cuts = tokio::select! {
                _ = cancel.cancelled() => return,
                n = cuts_round(&r, peer) => n,
            };
            if cuts > 0 {
                info!(validator = %peer.id, cuts, "cut sync: decided cuts fetched, checked and stored");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
            _ = r.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Member, Members};
    use gridgate_core::Identity;

    #[test]
    fn a_gateway_keeps_its_own_the_operators_and_the_validators_logs_a_validator_every_one() {
        let mut members = Members::default();
        for (id, role) in [
            ("v0", pb::MemberRole::Validator),
            ("gw", pb::MemberRole::Gateway),
            ("gw2", pb::MemberRole::Gateway),
            ("op", pb::MemberRole::Operator),
            ("watcher", pb::MemberRole::Observer),
        ] {
            let key = Identity::generate().expect("key").public();
            members.0.insert(
                id.into(),
                Member {
                    id: id.into(),
                    role,
                    key,
                    removed: false,
                },
            );
        }
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(Store::open(dir.path(), "gw").expect("store"));
        let replica = |role| Replica {
            store: store.clone(),
            state: Arc::new(LedgerState::new(members.clone())),
            me: "gw".into(),
            role,
            wake: Default::default(),
        };
        let gw = replica(LedgerRole::Gateway);
        let kept: Vec<&str> = ["v0", "gw", "gw2", "op", "watcher", "stranger"]
            .into_iter()
            .filter(|o| gw.wants(o))
            .collect();
        assert_eq!(kept, ["v0", "gw", "op"]);
        let v = replica(LedgerRole::Validator);
        assert!(
            ["v0", "gw", "gw2", "op", "watcher"]
                .iter()
                .all(|o| v.wants(o))
        );
        assert!(!v.wants("stranger"));
    }
}
