//! What every DR part shares (the desk, the relay, the MQTT link, the page): the record
//! lock, the relay's wake-up, the feed of stored changes and the counters.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use gridgate_proto::v1 as pb;
use prost::Message;
use tokio::sync::broadcast;

/// Event changes, for `WatchEvents` and the MQTT report topic: every write of an event's
/// record is announced here after it is stored.
pub type Updates = broadcast::Sender<Arc<pb::EventUpdate>>;

/// Updates a slow watcher may lag behind before it misses some (it is told).
pub const UPDATES_DEPTH: usize = 1024;

/// Announces a stored record (nobody listening is fine).
pub fn announce(updates: &Updates, status: &pb::EventStatus) {
    if let Some(e) = event_of(status) {
        let _ = updates.send(Arc::new(pb::EventUpdate {
            issuer: e.issuer,
            event_id: e.id,
            status: Some(status.clone()),
        }));
    }
}

/// The record lock: held for every read-modify-write of an event's record and of the
/// overrides, by the desk and the relay alike, so that the replay and per-day checks and the
/// insert are one step and a cancel is never lost to the relay.
pub type RecordLock = Arc<tokio::sync::Mutex<()>>;

/// What every DR part shares, made once when the gateway starts and kept across reloads.
#[derive(Clone)]
pub struct DrShared {
    /// The record lock.
    pub records: RecordLock,
    /// Wakes the relay when an event was accepted, cancelled or overridden.
    pub wake: Arc<tokio::sync::Notify>,
    /// Where stored changes are announced (WatchEvents, MQTT).
    pub updates: Updates,
    /// Dispatches seen, by outcome.
    pub stats: Arc<DrStats>,
    /// The field devices (the gateway's one handle): the desk reads a new event's controls
    /// ahead of the relay's writes.
    pub controls: gridgate_acquire::Controls,
}

impl DrShared {
    /// Shared parts around the gateway's handle to its field devices.
    pub fn new(controls: gridgate_acquire::Controls) -> Self {
        DrShared {
            records: RecordLock::default(),
            wake: Arc::default(),
            updates: tokio::sync::broadcast::Sender::new(UPDATES_DEPTH),
            stats: Arc::default(),
            controls,
        }
    }
}

/// The event a stored record carries.
pub(crate) fn event_of(status: &pb::EventStatus) -> Option<pb::DrEvent> {
    status
        .signed
        .as_ref()
        .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())
}

/// Dispatches seen, by outcome.
#[derive(Debug, Default)]
pub struct DrStats {
    /// Accepted and stored.
    pub accepted: AtomicU64,
    /// Refused, by [`Refused::kind`](crate::Refused::kind).
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
}
