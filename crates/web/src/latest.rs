//! The last reading of every point, as the page shows it: kept from the live readings
//! (polled and MQTT), so showing a device costs a map lookup, not a store read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use gridgate_core::Reading;

/// A point's last reading, and its last good one when that was earlier.
#[derive(Debug, Clone)]
pub struct PointState {
    /// The last reading, good or not.
    pub last: Arc<Reading>,
    /// The last good reading.
    pub last_good: Option<Arc<Reading>>,
}

/// Last readings by point name (`device/point`).
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<RwLock<HashMap<String, PointState>>>);

impl Latest {
    /// Takes one reading in.
    pub fn record(&self, r: Arc<Reading>) {
        // A panic elsewhere must not blind the page: the map stays usable.
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let good = r.quality.is_good().then(|| r.clone());
        match map.get_mut(&r.point) {
            Some(s) => {
                if good.is_some() {
                    s.last_good = good;
                }
                s.last = r;
            }
            None => {
                map.insert(
                    r.point.clone(),
                    PointState {
                        last: r,
                        last_good: good,
                    },
                );
            }
        }
    }

    /// The state of each named point that has had a reading.
    pub fn get_many<'a>(
        &self,
        points: impl Iterator<Item = &'a str>,
    ) -> Vec<(&'a str, Option<PointState>)> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        points.map(|p| (p, map.get(p).cloned())).collect()
    }
}

/// Feeds `latest` from the live readings until `cancel` fires. A lag (the page's task was
/// slow) skips readings; the next ones bring the map up to date again.
pub async fn follow(
    latest: Latest,
    mut live: broadcast::Receiver<Arc<Reading>>,
    cancel: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = live.recv() => r,
        };
        match r {
            Ok(r) => latest.record(r),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_core::reading::{Quality, Value};

    #[test]
    fn a_bad_reading_keeps_the_last_good_value() {
        let latest = Latest::default();
        latest.record(Arc::new(Reading::good(
            "m/p".into(),
            1,
            Value::Number(5.0),
            "kW",
        )));
        latest.record(Arc::new(Reading::bad(
            "m/p".into(),
            2,
            Quality::Timeout,
            "kW",
            "no reply".into(),
        )));
        let got = latest.get_many(["m/p", "m/q"].into_iter());
        let s = got[0].1.clone().unwrap();
        assert_eq!(s.last.quality, Quality::Timeout);
        assert_eq!(s.last_good.unwrap().value, Some(Value::Number(5.0)));
        assert!(got[1].1.is_none());
    }
}
