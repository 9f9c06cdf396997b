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

/// Readings as the live channel carries them: each group as acquired (a poll of a device,
/// an MQTT message), shared by every subscriber.
pub type LiveReadings = Arc<Vec<Reading>>;

/// Groups the live channel holds for a subscriber that lags: with a poll's or a message's
/// readings to a group, a few seconds of a busy gateway.
pub const LIVE_GROUPS: usize = 256;

/// Live readings fan out through a broadcast channel, a group per send (one per reading
/// woke every subscriber for each: a tenth of ingest's time): a slow subscriber lags and is
/// told how many groups it missed; senders never wait.
pub fn live_channel() -> broadcast::Sender<LiveReadings> {
    broadcast::channel(LIVE_GROUPS).0
}

/// Publishes `readings` on `live` when anyone listens and returns them for the store: one
/// copy, shared, not one for each. Never waits and never fails: a subscriber that lags
/// only misses readings.
pub fn publish(readings: Vec<Reading>, live: &broadcast::Sender<LiveReadings>) -> LiveReadings {
    let shared = Arc::new(readings);
    if live.receiver_count() > 0 {
        let _ = live.send(shared.clone());
    }
    shared
}
