//! The last reading of every point, and its last hour, as the page shows them: kept from
//! the live readings (polled and MQTT), so showing a device costs a map lookup, not a store
//! read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use gridgate_core::{Reading, Value};

/// How far back a point's history goes.
pub const HISTORY_SPAN_MS: i64 = 3_600_000;

/// Readings in a point's history at most: at most 5.8 KB a point, whatever its poll rate.
pub const HISTORY_LEN: usize = 360;

/// The sparsest a history gets: an hour in [`HISTORY_LEN`] readings.
const HISTORY_MAX_SPACING_MS: i64 = HISTORY_SPAN_MS / HISTORY_LEN as i64;

/// One reading of a point's history, as the page charts it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Device time, ms since the epoch.
    pub ts_ms: i64,
    /// The value (a switch as 0 or 1); NaN (`null` in JSON) for a bad reading or text,
    /// which keeps a sample at 16 bytes.
    #[serde(serialize_with = "nan_as_null", deserialize_with = "null_as_nan")]
    pub value: f32,
    /// The reading was not good (marked on the chart).
    pub bad: bool,
}

fn nan_as_null<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_none()
    } else {
        s.serialize_some(v)
    }
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(<Option<f32> as serde::Deserialize>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// A point's last reading, its last good one when that was earlier, and its history.
#[derive(Debug, Clone)]
pub struct PointState {
    /// The last reading, good or not.
    pub last: Reading,
    /// The last good reading.
    pub last_good: Option<Reading>,
    /// The last hour, oldest first.
    pub history: VecDeque<Sample>,
    /// Good readings closer than this to the last kept one are not kept.
    spacing_ms: i64,
}

impl PointState {
    /// Keeps every reading while the history is young, so that a device just commissioned
    /// shows its curve at once; when the history is full, every other good reading goes and
    /// the spacing doubles, up to an hour in [`HISTORY_LEN`]. A bad reading is always kept
    /// (the chart marks it).
    fn remember(&mut self, r: &Reading) {
        let bad = !r.quality.is_good();
        if !bad
            && self
                .history
                .back()
                .is_some_and(|s| r.ts_ms < s.ts_ms + self.spacing_ms)
        {
            return;
        }
        while self
            .history
            .front()
            .is_some_and(|s| s.ts_ms < r.ts_ms - HISTORY_SPAN_MS)
        {
            self.history.pop_front();
        }
        if self.history.len() >= HISTORY_LEN {
            if self.spacing_ms < HISTORY_MAX_SPACING_MS {
                let mut i = 0;
                self.history.retain(|s| {
                    i += 1;
                    i % 2 == 1 || s.bad
                });
                let span = match (self.history.front(), self.history.back()) {
                    (Some(a), Some(b)) => b.ts_ms - a.ts_ms,
                    _ => 0,
                };
                self.spacing_ms =
                    (span / self.history.len().max(1) as i64).clamp(1, HISTORY_MAX_SPACING_MS);
            }
            while self.history.len() >= HISTORY_LEN {
                self.history.pop_front();
            }
        }
        let value = match (&r.value, r.quality.is_good()) {
            (Some(Value::Number(v)), true) => *v as f32,
            (Some(Value::Bool(b)), true) => f32::from(u8::from(*b)),
            _ => f32::NAN,
        };
        self.history.push_back(Sample {
            ts_ms: r.ts_ms,
            value,
            bad,
        });
    }
}

/// Makes `slot` (a reading of the same point) say what `r` says, reusing its strings: most
/// readings of a point change nothing but the time and the value, and a fresh copy of each
/// was an allocation per reading.
fn overwrite(slot: &mut Reading, r: &Reading) {
    slot.ts_ms = r.ts_ms;
    slot.value.clone_from(&r.value);
    slot.unit.clone_from(&r.unit);
    slot.quality = r.quality;
    slot.error.clone_from(&r.error);
}

/// Last readings by point name (`device/point`).
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<RwLock<HashMap<String, PointState>>>);

impl Latest {
    /// Takes a group of readings in, under one lock.
    pub fn record(&self, readings: &[Reading]) {
        // A panic elsewhere must not blind the page: the map stays usable.
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        for r in readings {
            let good = r.quality.is_good();
            match map.get_mut(&r.point) {
                Some(s) => {
                    if good {
                        match &mut s.last_good {
                            Some(g) => overwrite(g, r),
                            None => s.last_good = Some(r.clone()),
                        }
                    }
                    s.remember(r);
                    overwrite(&mut s.last, r);
                }
                None => {
                    let mut s = PointState {
                        last: r.clone(),
                        last_good: good.then(|| r.clone()),
                        history: VecDeque::new(),
                        spacing_ms: 0,
                    };
                    s.remember(r);
                    map.insert(r.point.clone(), s);
                }
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
    mut live: broadcast::Receiver<gridgate_core::LiveReadings>,
    cancel: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = live.recv() => r,
        };
        match r {
            Ok(group) => latest.record(&group),
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
        latest.record(&[
            Reading::good("m/p".into(), 1, Value::Number(5.0), "kW"),
            Reading::bad("m/p".into(), 2, Quality::Timeout, "kW", "no reply".into()),
        ]);
        let got = latest.get_many(["m/p", "m/q"].into_iter());
        let s = got[0].1.clone().unwrap();
        assert_eq!(s.last.quality, Quality::Timeout);
        assert_eq!(s.last_good.unwrap().value, Some(Value::Number(5.0)));
        assert!(got[1].1.is_none());
    }

    #[test]
    fn history_keeps_every_reading_at_first_then_an_hour_and_every_bad_one() {
        let latest = Latest::default();
        let history = || {
            latest.get_many(["m/p"].into_iter())[0]
                .1
                .clone()
                .unwrap()
                .history
        };
        // A reading every second; every tenth minute a timeout.
        let reading = |t: i64| {
            if t % 600 == 0 && t > 0 {
                Reading::bad(
                    "m/p".into(),
                    t * 1000,
                    Quality::Timeout,
                    "kW",
                    "no reply".into(),
                )
            } else {
                Reading::good("m/p".into(), t * 1000, Value::Number(t as f64), "kW")
            }
        };
        for t in 0..60 {
            latest.record(&[reading(t)]);
        }
        // A minute in: every reading.
        assert_eq!(history().len(), 60);
        for t in 60..7200 {
            latest.record(&[reading(t)]);
        }
        let h = history();
        assert!(
            h.len() <= HISTORY_LEN && h.len() >= HISTORY_LEN / 2,
            "{}",
            h.len()
        );
        // The last hour, up to the last reading, no gap wider than the sparsest spacing.
        assert!(h.front().unwrap().ts_ms >= 7_199_000 - HISTORY_SPAN_MS);
        assert!(h.back().unwrap().ts_ms > 7_199_000 - HISTORY_MAX_SPACING_MS);
        assert!(
            h.iter()
                .zip(h.iter().skip(1))
                .all(|(a, b)| b.ts_ms - a.ts_ms <= 2 * HISTORY_MAX_SPACING_MS)
        );
        // Every timeout of the last hour is there, marked, without a value.
        let bad: Vec<i64> = h.iter().filter(|s| s.bad).map(|s| s.ts_ms / 1000).collect();
        let first = h.front().unwrap().ts_ms / 1000;
        let want: Vec<i64> = (1..12).map(|k| k * 600).filter(|t| *t >= first).collect();
        assert_eq!(bad, want);
        assert!(h.iter().filter(|s| s.bad).all(|s| s.value.is_nan()));
        assert!(
            h.iter()
                .filter(|s| !s.bad)
                .all(|s| s.value == (s.ts_ms / 1000) as f32)
        );
        assert_eq!(std::mem::size_of::<Sample>(), 16);
        let json = serde_json::to_string(&h[h.len() - 1]).expect("json");
        assert!(json.contains("\"value\":"), "{json}");
        let bad = h.iter().find(|s| s.bad).expect("a bad one");
        let json = serde_json::to_string(bad).expect("json");
        assert!(json.contains("\"value\":null"), "{json}");
        let back: Sample = serde_json::from_str(&json).expect("parse");
        assert!(back.value.is_nan() && back.bad);
    }
}
