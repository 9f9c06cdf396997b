//! A consortium validator (`gridgate-node`, docs/ledger.md): the ledger's votes and sync as
//! `gridgate run` has them, and consensus on cuts with commonware's simplex engine over its
//! authenticated P2P transport. The engine orders 32-byte digests; this crate gives it cuts
//! to order ([`app`]), checks the cuts others propose, spreads their bodies, and stores what
//! is finalized through `gridgate_ledger_node::cuts`, where gateways check it offline.
//!
//! - [`app`]: the application the engine drives (propose, verify, relay, report).
//! - [`engine`]: the engine, the P2P network and the journal, on their own runtime.
//! - [`validator`]: a validator's consensus from its config, checked before it starts.
//!
//! What consensus shows the rest of the node (status line, `/metrics`) is
//! `gridgate_core::instruments::Consensus`, with the node's other instruments.

pub mod app;
pub mod engine;
pub mod validator;
