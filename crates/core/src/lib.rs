//! What every part of the gateway shares: a reading and its quality, the clock, the rule for
//! names, the identity key and hashing, the signed DR messages, TLS from PEM files, the
//! admission of connections to listeners and the instruments they update, and the channel
//! live readings fan out through. It knows no configuration, store or protocol above the
//! wire contract.
#![forbid(unsafe_code)]

pub mod admission;
pub mod identity;
pub mod instruments;
pub mod names;
pub mod reading;
pub mod signed;
pub mod tls;

use std::sync::Arc;

use tokio::sync::broadcast;

pub use identity::{Identity, IdentityError, sha256};
pub use reading::{Quality, Reading, Value, now_ms};

/// Live readings fan out through a broadcast channel: a slow subscriber lags and is told how
/// many it missed; senders never wait.
pub fn live_channel() -> broadcast::Sender<Arc<Reading>> {
    broadcast::channel(4096).0
}
