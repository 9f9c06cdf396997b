//! Device state as acquisition sees it: online or not, last good read, counts by outcome.
//! Shared with whatever reports it (the demo's summary now; the API and the page later).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gridgate_core::reading::Reading;

/// What is known of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Bus it is on.
    pub bus: String,
    /// True until it stops answering.
    pub online: bool,
    /// Polls done.
    pub polls: u64,
    /// Poll slots skipped because the line was busy.
    pub missed_polls: u64,
    /// When the last good reading was taken, ms since the epoch.
    pub last_good_ms: Option<i64>,
    /// Readings by quality kind (`good`, `timeout`, `crc`...).
    pub readings: BTreeMap<&'static str, u64>,
}

/// All devices' status, by device name.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry(Arc<Mutex<BTreeMap<String, DeviceStatus>>>);

impl DeviceRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, DeviceStatus>> {
        // A panic elsewhere must not stop acquisition: the map stays usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a device (online until shown otherwise).
    pub fn register(&self, device: &str, bus: &str) {
        self.lock().insert(
            device.to_string(),
            DeviceStatus {
                bus: bus.to_string(),
                online: true,
                ..DeviceStatus::default()
            },
        );
    }

    /// Records one poll's outcome.
    pub fn record(&self, device: &str, online: bool, readings: &[Reading]) {
        let mut map = self.lock();
        // Looked up before `entry`, which would take a copy of the name every poll.
        if !map.contains_key(device) {
            map.insert(device.to_string(), DeviceStatus::default());
        }
        let Some(s) = map.get_mut(device) else {
            return;
        };
        s.online = online;
        s.polls += 1;
        for r in readings {
            *s.readings.entry(r.quality.kind()).or_default() += 1;
            if r.quality.is_good() {
                s.last_good_ms = Some(s.last_good_ms.map_or(r.ts_ms, |t| t.max(r.ts_ms)));
            }
        }
    }

    /// Counts skipped poll slots.
    pub fn missed(&self, device: &str, n: u64) {
        self.lock()
            .entry(device.to_string())
            .or_default()
            .missed_polls += n;
    }

    /// Forgets the devices whose names `keep` does not accept (after a reload removed them).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|name, _| keep(name));
    }

    /// A copy of every device's status.
    pub fn snapshot(&self) -> BTreeMap<String, DeviceStatus> {
        self.lock().clone()
    }
}
