//! The last reading of every point, and its last hour, as the page shows them: kept from
//! the live readings (polled and MQTT), so showing a device costs a map lookup, not a store
//! read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use gridgate_core::{Quality, Reading, Value};

/// How far back a point's history goes.
pub const HISTORY_SPAN_MS: i64 = 3_600_000;

/// Readings in a point's history at most, however few points there are.
pub const HISTORY_LEN: usize = 360;

/// What every point's history together holds at most: a gateway with 10,000 points keeps
/// 52 readings of each point's hour (one in 70 s), one with 1,000 the whole 360. A bound per
/// point alone let 10,000 points' histories grow to 80 MB.
pub const HISTORY_BUDGET_BYTES: usize = 4 << 20;

/// Readings in a point's history at least, whatever the budget says.
const HISTORY_MIN_LEN: usize = 16;

/// How many readings each point's history keeps when `points` points have one.
pub fn history_len(points: usize) -> usize {
    (HISTORY_BUDGET_BYTES / (points.max(1) * std::mem::size_of::<Kept>()))
        .clamp(HISTORY_MIN_LEN, HISTORY_LEN)
}

/// One reading of a point's history, as the page charts it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Device time, ms since the epoch.
    pub ts_ms: i64,
    /// The value (a switch as 0 or 1); NaN (`null` in JSON) for a bad reading or text.
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

/// A sample as a history keeps it, in 8 bytes: its time from the history's base, and its
/// value, where a bad reading is a NaN of its own.
#[derive(Debug, Clone, Copy)]
struct Kept {
    dt_ms: i32,
    value: f32,
}

/// The value bits that mark a bad reading: a NaN no conversion produces (a good reading's
/// NaN is stored as the canonical one).
const BAD_BITS: u32 = 0x7fc0_0001;

/// A point's last hour, oldest first, thinned as it fills.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Device time the kept samples count from.
    base_ms: i64,
    kept: VecDeque<Kept>,
    /// Good readings closer than this to the last kept one are not kept.
    spacing_ms: i64,
}

impl History {
    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        self.kept.iter().map(|k| Sample {
            ts_ms: self.ts_of(k),
            value: k.value,
            bad: k.value.to_bits() == BAD_BITS,
        })
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Nothing kept yet.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn ts_of(&self, k: &Kept) -> i64 {
        self.base_ms + i64::from(k.dt_ms)
    }

    /// Keeps every reading while the history is young, so that a device just commissioned
    /// shows its curve at once; when it holds `len`, every other good reading goes and the
    /// spacing doubles, up to an hour in `len`. A bad reading is always kept (the chart
    /// marks it).
    fn remember(&mut self, r: &Reading, len: usize) {
        let bad = !r.quality.is_good();
        let max_spacing_ms = HISTORY_SPAN_MS / len as i64;
        if !bad
            && self
                .kept
                .back()
                .is_some_and(|k| r.ts_ms < self.ts_of(k) + self.spacing_ms)
        {
            return;
        }
        while self
            .kept
            .front()
            .is_some_and(|k| self.ts_of(k) < r.ts_ms - HISTORY_SPAN_MS)
        {
            self.kept.pop_front();
        }
        let Some(dt_ms) = self.offset_of(r.ts_ms) else {
            // Device time jumped by weeks: the hour before the jump says nothing now.
            self.kept.clear();
            self.base_ms = r.ts_ms;
            self.spacing_ms = 0;
            return self.remember(r, len);
        };
        if self.kept.len() >= len {
            if self.spacing_ms < max_spacing_ms {
                let mut i = 0;
                self.kept.retain(|k| {
                    i += 1;
                    i % 2 == 1 || k.value.to_bits() == BAD_BITS
                });
                let span = match (self.kept.front(), self.kept.back()) {
                    (Some(a), Some(b)) => i64::from(b.dt_ms) - i64::from(a.dt_ms),
                    _ => 0,
                };
                self.spacing_ms = (span / self.kept.len().max(1) as i64).clamp(1, max_spacing_ms);
            }
            while self.kept.len() >= len {
                self.kept.pop_front();
            }
            // The budget shrank since this history grew (more points came).
            if self.kept.capacity() > len {
                self.kept.shrink_to(len);
            }
        }
        if self.kept.len() == self.kept.capacity() {
            // Grows towards `len` exactly: doubling would overshoot the budget.
            let to = (self.kept.len() * 2).clamp(8, len);
            self.kept
                .reserve_exact(to.saturating_sub(self.kept.len()).max(1));
        }
        let value = match (&r.value, bad) {
            (_, true) => f32::from_bits(BAD_BITS),
            (Some(Value::Number(v)), false) if !v.is_nan() => *v as f32,
            (Some(Value::Bool(b)), false) => f32::from(u8::from(*b)),
            _ => f32::NAN,
        };
        self.kept.push_back(Kept { dt_ms, value });
    }

    /// `ts_ms` from the base, if it fits; an empty history takes it as its base.
    fn offset_of(&mut self, ts_ms: i64) -> Option<i32> {
        if self.kept.is_empty() {
            self.base_ms = ts_ms;
        }
        i32::try_from(ts_ms.checked_sub(self.base_ms)?).ok()
    }
}

/// A point's last good reading: when, and what it said.
#[derive(Debug, Clone, PartialEq)]
pub struct LastGood {
    /// Device time, ms since the epoch.
    pub ts_ms: i64,
    /// The value.
    pub value: Option<Value>,
}

/// A point's last reading, its last good one, and its history: what the page shows of a
/// point, without the name and unit each reading repeats (the configuration has them).
#[derive(Debug, Clone)]
pub struct PointState {
    /// Device time of the last reading, good or not.
    pub ts_ms: i64,
    /// The last reading's quality.
    pub quality: Quality,
    /// The last reading's error, if it was bad.
    pub error: Option<String>,
    /// The last good reading.
    pub last_good: Option<LastGood>,
    /// The last hour.
    pub history: History,
}

impl PointState {
    fn new(r: &Reading) -> Self {
        PointState {
            ts_ms: r.ts_ms,
            quality: r.quality,
            error: r.error.clone(),
            last_good: None,
            history: History::default(),
        }
    }

    /// Takes `r` in, reusing the strings held: most readings of a point change nothing but
    /// the time and the value, and a fresh copy of each was an allocation per reading.
    fn update(&mut self, r: &Reading, history_len: usize) {
        if r.quality.is_good() {
            match &mut self.last_good {
                Some(g) => {
                    g.ts_ms = r.ts_ms;
                    g.value.clone_from(&r.value);
                }
                None => {
                    self.last_good = Some(LastGood {
                        ts_ms: r.ts_ms,
                        value: r.value.clone(),
                    })
                }
            }
        }
        self.ts_ms = r.ts_ms;
        self.quality = r.quality;
        self.error.clone_from(&r.error);
        self.history.remember(r, history_len);
    }
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
            let len = history_len(map.len() + 1);
            match map.get_mut(&*r.point) {
                Some(s) => s.update(r, len),
                None => {
                    let mut s = PointState::new(r);
                    s.update(r, len);
                    map.insert(r.point.to_string(), s);
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
            Reading::good("m/p", 1, Value::Number(5.0), "kW"),
            Reading::bad("m/p", 2, Quality::Timeout, "kW", "no reply".into()),
        ]);
        let got = latest.get_many(["m/p", "m/q"].into_iter());
        let s = got[0].1.clone().unwrap();
        assert_eq!(s.quality, Quality::Timeout);
        assert_eq!(s.ts_ms, 2);
        assert_eq!(s.error.as_deref(), Some("no reply"));
        assert_eq!(
            s.last_good,
            Some(LastGood {
                ts_ms: 1,
                value: Some(Value::Number(5.0))
            })
        );
        assert!(got[1].1.is_none());
    }

    #[test]
    fn history_keeps_every_reading_at_first_then_an_hour_and_every_bad_one() {
        const HISTORY_MAX_SPACING_MS: i64 = HISTORY_SPAN_MS / HISTORY_LEN as i64;
        let latest = Latest::default();
        let history = || {
            latest.get_many(["m/p"].into_iter())[0]
                .1
                .clone()
                .unwrap()
                .history
                .samples()
                .collect::<Vec<_>>()
        };
        // A reading every second; every tenth minute a timeout.
        let reading = |t: i64| {
            if t % 600 == 0 && t > 0 {
                Reading::bad("m/p", t * 1000, Quality::Timeout, "kW", "no reply".into())
            } else {
                Reading::good("m/p", t * 1000, Value::Number(t as f64), "kW")
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
        assert!(h.first().unwrap().ts_ms >= 7_199_000 - HISTORY_SPAN_MS);
        assert!(h.last().unwrap().ts_ms > 7_199_000 - HISTORY_MAX_SPACING_MS);
        assert!(
            h.iter()
                .zip(h.iter().skip(1))
                .all(|(a, b)| b.ts_ms - a.ts_ms <= 2 * HISTORY_MAX_SPACING_MS)
        );
        // Every timeout of the last hour is there, marked, without a value.
        let bad: Vec<i64> = h.iter().filter(|s| s.bad).map(|s| s.ts_ms / 1000).collect();
        let first = h.first().unwrap().ts_ms / 1000;
        let want: Vec<i64> = (1..12).map(|k| k * 600).filter(|t| *t >= first).collect();
        assert_eq!(bad, want);
        assert!(h.iter().filter(|s| s.bad).all(|s| s.value.is_nan()));
        assert!(
            h.iter()
                .filter(|s| !s.bad)
                .all(|s| s.value == (s.ts_ms / 1000) as f32)
        );
        assert_eq!(std::mem::size_of::<Kept>(), 8);
        let json = serde_json::to_string(&h[h.len() - 1]).expect("json");
        assert!(json.contains("\"value\":"), "{json}");
        let bad = h.iter().find(|s| s.bad).expect("a bad one");
        let json = serde_json::to_string(bad).expect("json");
        assert!(json.contains("\"value\":null"), "{json}");
        let back: Sample = serde_json::from_str(&json).expect("parse");
        assert!(back.value.is_nan() && back.bad);
    }

    #[test]
    fn all_histories_together_stay_within_the_budget() {
        let latest = Latest::default();
        let points = 10_000;
        // A reading of every point a second for ten minutes: the first points' histories
        // grow while few points exist, and must give back what the later ones need.
        for t in 0..600i64 {
            let group: Vec<Reading> = (0..points)
                .map(|p| Reading::good(format!("d/{p}"), t * 1000, Value::Number(1.0), "kW"))
                .collect();
            latest.record(&group);
        }
        let map = latest.0.read().unwrap();
        assert_eq!(map.len(), points);
        let len = history_len(points);
        assert_eq!(len, 52);
        let held: usize = map
            .values()
            .map(|s| s.history.kept.capacity() * std::mem::size_of::<Kept>())
            .sum();
        assert!(map.values().all(|s| s.history.len() <= len));
        assert!(held <= HISTORY_BUDGET_BYTES, "{held} bytes held");
        // Still the last ten minutes, not only its end.
        let first = map["d/0"].history.samples().next().unwrap();
        assert!(first.ts_ms <= 60_000, "{first:?}");
        // With few points, the whole 360.
        assert_eq!(history_len(100), HISTORY_LEN);
    }

    #[test]
    fn a_jump_of_weeks_in_device_time_starts_the_history_again() {
        let latest = Latest::default();
        let day = 86_400_000i64;
        latest.record(&[
            Reading::good("m/p", day, Value::Number(1.0), "kW"),
            Reading::good("m/p", 60 * day, Value::Number(2.0), "kW"),
            Reading::good("m/p", 60 * day + 1_000, Value::Number(f64::NAN), "kW"),
        ]);
        let s = latest.get_many(["m/p"].into_iter())[0].1.clone().unwrap();
        let h: Vec<Sample> = s.history.samples().collect();
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!((h[0].ts_ms, h[0].value, h[0].bad), (60 * day, 2.0, false));
        // A good reading without a number is not marked bad.
        assert!(h[1].value.is_nan() && !h[1].bad);
    }
}
