//! The consortium ledger's rules, pure (no store, no clock, no network): every member
//! appends only to its own log; validators vote at most once per (origin, seq) and 2f+1
//! votes make an entry final (docs/ledger.md). The node that stores, votes and syncs is
//! `gridgate-ledger-node`.
//!
//! - [`cut`]: the order the validators agree on: cuts, their chain and their finalization.
//! - [`entry`]: signing and checking entries, votes and certificates.
//! - [`merkle`]: RFC 6962 trees for batch commitments.
//! - [`commitment`]: batch commitments as one growing tree, and their audit.
//! - [`market`]: the flexibility market's price discovery and clearing.
//! - [`membership`]: membership changes approved by a quorum of validators.
//! - [`settlement`]: settlement and reputation over certified entries.

pub mod commitment;
pub mod cut;
pub mod entry;
pub mod market;
pub mod membership;
pub mod merkle;
pub mod settlement;

pub use entry::{Member, Members};
