//! What the parts of one node's ledger share: the membership in force (the genesis one with
//! the certified membership changes this node holds applied) and the feed of certified
//! entries as they are stored (the `Watch` stream). Every place that stores certified entries
//! (a pushed certificate, the anti-entropy sync, the certifier of the node's own log) hands
//! them to [`LedgerState::stored`].

use std::sync::{Arc, RwLock};

use gridgate_proto::v1 as pb;
use prost::Message;
use tokio::sync::broadcast;
use tracing::info;

use super::Members;
use gridgate_ledger::membership;
use gridgate_store::{Store, StoreError};

/// Certified entries a `Watch` stream may lag behind before it is told to catch up.
const FEED_DEPTH: usize = 4096;

/// One node's ledger state.
pub struct LedgerState {
    genesis: Members,
    current: RwLock<Arc<Members>>,
    /// Certified membership changes held, checked.
    changes: RwLock<Vec<pb::MembershipChange>>,
    feed: broadcast::Sender<Arc<pb::CertifiedEntry>>,
    /// Answers of decided cuts refused (a chain or a finalization that does not check).
    cuts_refused: std::sync::atomic::AtomicU64,
}

impl LedgerState {
    /// The state of a node with this genesis membership and no change applied yet.
    pub fn new(genesis: Members) -> LedgerState {
        LedgerState {
            current: RwLock::new(Arc::new(genesis.clone())),
            genesis,
            changes: RwLock::new(Vec::new()),
            feed: broadcast::channel(FEED_DEPTH).0,
            cuts_refused: Default::default(),
        }
    }

    /// Counts an answer of decided cuts refused.
    pub fn cut_refused(&self) {
        self.cuts_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers of decided cuts refused since start.
    pub fn cuts_refused(&self) -> u64 {
        self.cuts_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The genesis membership (the config's).
    pub fn genesis(&self) -> &Members {
        &self.genesis
    }

    /// The membership in force.
    pub fn members(&self) -> Arc<Members> {
        self.current
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Applies the membership changes this node holds certified (at start): they are only
    /// ever logged by operators and validators, so only those logs are read. Blocking.
    pub fn recover(&self, store: &Store) -> Result<usize, StoreError> {
        let loggers: Vec<String> = self
            .genesis
            .0
            .values()
            .filter(|m| matches!(m.role, pb::MemberRole::Operator | pb::MemberRole::Validator))
            .map(|m| m.id.clone())
            .collect();
        let mut found = Vec::new();
        for origin in loggers {
            found.extend(super::held_entries(store, &origin)?);
        }
        let changes = membership::changes_in(found.iter(), &self.genesis);
        let n = changes.len();
        self.add_changes(changes);
        Ok(n)
    }

    fn add_changes(&self, new: Vec<pb::MembershipChange>) {
        if new.is_empty() {
            return;
        }
        let mut changes = self.changes.write().unwrap_or_else(|p| p.into_inner());
        for c in new {
            if changes.iter().all(|h| h.id != c.id) {
                info!(change = %c.id, added = c.add.len(), removed = c.remove.len(), "ledger membership change applied");
                changes.push(c);
            }
        }
        let members = membership::apply(&self.genesis, changes.iter());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(members);
    }

    /// Certified entries were stored: applies the membership changes among them and hands
    /// them to the watchers.
    pub fn stored(&self, entries: &[pb::CertifiedEntry]) {
        let decoded: Vec<pb::Entry> = entries
            .iter()
            .filter_map(|c| c.entry.as_ref())
            .filter_map(|s| pb::Entry::decode(s.entry.as_slice()).ok())
            .collect();
        self.add_changes(membership::changes_in(decoded.iter(), &self.genesis));
        if self.feed.receiver_count() > 0 {
            for c in entries {
                let _ = self.feed.send(Arc::new(c.clone()));
            }
        }
    }

    /// Certified entries stored from now on.
    pub fn watch(&self) -> broadcast::Receiver<Arc<pb::CertifiedEntry>> {
        self.feed.subscribe()
    }
}

/// The origin and sequence of a certified entry (for a watcher's filter).
pub fn place(c: &pb::CertifiedEntry) -> Option<(String, u64)> {
    let e = pb::Entry::decode(c.entry.as_ref()?.entry.as_slice()).ok()?;
    Some((e.origin, e.seq))
}
