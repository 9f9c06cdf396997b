//! Power samples of the points that measure DR loads, by (point, time): what baselines and
//! performance are computed from. Batches hold every reading too, but signed and in arrival
//! order; measuring an event needs one point's values over a time range, days back for a
//! "high X of Y" baseline, so the store keeps them indexed here as well, written in the same
//! commit as the readings, and drops them after [`SAMPLE_RETENTION_MS`].

use redb::{ReadableTable, TableDefinition};

use super::{Store, StoreError, db};

/// (point, ms since the epoch) → value.
pub(super) const SAMPLES: TableDefinition<(&str, i64), f64> = TableDefinition::new("meter_samples");

/// How long samples are kept: a "high X of Y" baseline looks back Y similar days (10 of the
/// last 30 at most, weekends apart), so 45 days covers any program the config accepts.
pub const SAMPLE_RETENTION_MS: i64 = 45 * 86_400_000;

impl Store {
    /// Which points to keep samples of (the meters of the configured loads); a reload may
    /// change them.
    pub fn set_metered(&self, points: impl IntoIterator<Item = String>) {
        let mut m = self.metered.write().unwrap_or_else(|p| p.into_inner());
        *m = points.into_iter().collect();
    }

    /// `point`'s samples with `from_ms <= t < to_ms`, oldest first.
    pub fn samples(
        &self,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(SAMPLES).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.range((point, from_ms)..(point, to_ms)).map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }

    /// Drops samples older than `before_ms`; returns how many.
    pub fn prune_samples(&self, before_ms: i64) -> Result<u64, StoreError> {
        let points: Vec<String> = {
            let txn = self.begin_read()?;
            let t = txn.open_table(SAMPLES).map_err(db)?;
            let mut points = Vec::new();
            // Walk the distinct points by jumping past each one's samples.
            let mut from: Option<String> = None;
            loop {
                let next = match &from {
                    None => t.first().map_err(db)?,
                    Some(p) => t
                        .range((p.as_str(), i64::MAX)..)
                        .map_err(db)?
                        .find(|e| e.as_ref().is_ok_and(|(k, _)| k.value().0 != p.as_str()))
                        .transpose()
                        .map_err(db)?,
                };
                let Some((k, _)) = next else { break };
                let p = k.value().0.to_string();
                points.push(p.clone());
                from = Some(p);
            }
            points
        };
        let txn = self.begin_write()?;
        let mut removed = 0u64;
        {
            let mut t = txn.open_table(SAMPLES).map_err(db)?;
            for p in &points {
                t.retain_in((p.as_str(), i64::MIN)..(p.as_str(), before_ms), |_, _| {
                    removed += 1;
                    false
                })
                .map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_proto::v1 as pb;

    fn reading(point: &str, ts_ms: i64, v: f64) -> pb::Reading {
        pb::Reading {
            point: point.into(),
            ts_ms,
            value: Some(pb::reading::Value::Number(v)),
            quality: Some(pb::Quality {
                kind: pb::QualityKind::Good as i32,
                code: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_good_readings_of_metered_points_are_sampled_and_old_ones_pruned() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("open");
        store.set_metered(["m/p".to_string(), "n/p".to_string()]);
        let mut bad = reading("m/p", 3_000, 9.0);
        bad.quality = Some(pb::Quality {
            kind: pb::QualityKind::Timeout as i32,
            code: 0,
        });
        bad.value = None;
        let readings = vec![
            reading("m/p", 1_000, 1.0),
            reading("m/p", 2_000, 2.0),
            bad,
            reading("other/p", 2_500, 7.0),
            reading("n/p", 1_500, 5.0),
            reading("m/p", 4_000, 4.0),
        ];
        store.commit(&readings, &[], None).expect("commit");
        assert_eq!(
            store.samples("m/p", 0, 10_000).expect("samples"),
            vec![(1_000, 1.0), (2_000, 2.0), (4_000, 4.0)]
        );
        assert_eq!(
            store.samples("m/p", 2_000, 4_000).expect("range"),
            vec![(2_000, 2.0)]
        );
        assert!(
            store
                .samples("other/p", 0, 10_000)
                .expect("none")
                .is_empty()
        );
        assert_eq!(store.prune_samples(2_000).expect("prune"), 2);
        assert_eq!(
            store.samples("m/p", 0, 10_000).expect("after"),
            vec![(2_000, 2.0), (4_000, 4.0)]
        );
        assert!(store.samples("n/p", 0, 10_000).expect("n").is_empty());
    }
}
