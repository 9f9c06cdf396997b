//! A validator's consensus as its config sets it up: what `gridgate-node` starts beside the
//! ledger parts, and what the demo starts for its in-process validators. The config is
//! checked (and the key read) before anything runs, so a wrong config starts nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ed25519_dalek::pkcs8::DecodePrivateKey;

use crate::engine::{self, Params, Running, StartError};
use gridgate_config::GatewayConfig;
use gridgate_config::ledger::{ConsensusConfig, LedgerRole};
use gridgate_core::instruments::Instruments;
use gridgate_ledger::Members;
use gridgate_store::Store;

/// A validator's consensus, checked, ready to start.
pub struct Validator {
    me: String,
    secret: [u8; 32],
    genesis: Members,
    consensus: ConsensusConfig,
    addresses: Vec<(String, SocketAddr)>,
    journal: PathBuf,
}

impl Validator {
    /// Checks that `cfg` (read from `origin`, for the messages) is a validator's with
    /// consensus, and reads its key and the genesis membership.
    pub fn from_config(cfg: &GatewayConfig, origin: &str) -> Result<Validator> {
        let Some(ledger) = &cfg.ledger else {
            bail!("{origin}: no [ledger]: gridgate-node runs a validator");
        };
        if ledger.role != LedgerRole::Validator {
            bail!(
                "{origin}: [ledger] role is {:?}: gridgate-node runs a validator (a gateway or operator runs `gridgate run`)",
                ledger.role.as_str()
            );
        }
        let Some(consensus) = ledger.consensus.clone() else {
            bail!(
                "{origin}: no [ledger.consensus]: write its listen address (and each validator's consensus address in [ledger] members)"
            );
        };
        let pem = std::fs::read_to_string(&cfg.identity)
            .with_context(|| format!("reading the identity key {}", cfg.identity.display()))?;
        let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .with_context(|| format!("the identity key {}", cfg.identity.display()))?
            .to_bytes();
        Ok(Validator {
            me: cfg.id.clone(),
            secret,
            genesis: gridgate_ledger_node::load_members(ledger)?,
            consensus,
            addresses: ledger
                .members
                .iter()
                .filter_map(|m| Some((m.id.clone(), m.consensus?)))
                .collect(),
            journal: cfg.data_dir.join("consensus"),
        })
    }

    /// Starts the engine on its own thread over the node's store, reporting to its
    /// instruments.
    pub fn start(self, store: Arc<Store>, status: Arc<Instruments>) -> Result<Running, StartError> {
        status
            .consensus
            .active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        engine::start(Params {
            store,
            genesis: self.genesis,
            me: self.me,
            secret: self.secret,
            cfg: self.consensus,
            addresses: self.addresses,
            journal: self.journal,
            status,
        })
    }
}
