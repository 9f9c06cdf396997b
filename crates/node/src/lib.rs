//! A consortium validator (`gridgate-node`, docs/ledger.md): the ledger's votes and sync as
//! `gridgate run` has them, and consensus on cuts with commonware's simplex engine over its
//! authenticated P2P transport. The engine orders 32-byte digests; this crate gives it cuts
//! to order ([`app`]), checks the cuts others propose, spreads their bodies, and stores what
//! is finalized through `gridgate_ledger_node::cuts`, where gateways check it offline.
//!
//! - [`app`]: the application the engine drives (propose, verify, relay, report).
//! - [`engine`]: the engine, the P2P network and the journal, on their own runtime.

pub mod app;
pub mod engine;

use std::sync::atomic::{AtomicU64, Ordering};

/// What the consensus thread shows the rest of the node (status line, metrics).
#[derive(Debug, Default)]
pub struct ConsensusStatus {
    /// Height of the newest decided cut this node stored.
    pub decided_height: AtomicU64,
    /// Newest view the engine reported activity for.
    pub view: AtomicU64,
    /// From a finalized cut's time to its storing here, the last one (ms).
    pub finality_ms: AtomicU64,
    /// Views nullified (no cut: a leader down or a proposal no one could check).
    pub nullified: AtomicU64,
    /// Cuts this node refused to vote for (a rule broken: named an entry at the wrong
    /// hash, went back, or did not chain).
    pub refused: AtomicU64,
    /// Validators connected over P2P (the engine's network).
    pub peers: AtomicU64,
}

impl ConsensusStatus {
    /// One line for the log and systemd.
    pub fn line(&self) -> String {
        format!(
            "consensus: decided height {}, view {}, finality {} ms, {} nullified, {} refused",
            self.decided_height.load(Ordering::Relaxed),
            self.view.load(Ordering::Relaxed),
            self.finality_ms.load(Ordering::Relaxed),
            self.nullified.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
