//! The performance report of an ended event: per interval and per load, baseline, measured
//! load and reduction, from the meter samples in the store ([`measure`] does the arithmetic),
//! with each load's acknowledgement and timing; signed with the gateway's identity key, so
//! the master station and the ledger can check who claims it.

use gridgate_proto::v1 as pb;

use crate::measure::{self, DAY_MS, watts};
use gridgate_config::{BaselineConfig, GatewayConfig, ProgramConfig};
use gridgate_core::sha256;
use gridgate_store::{Store, StoreError};

/// Samples fetched beyond a window's edges, so that its first and last moments are shaped
/// by the polls around them.
pub const MARGIN_MS: i64 = 60_000;

/// The baseline of one load over the event.
enum Baseline {
    /// Meter-before: one value for every interval.
    Flat(Option<f64>),
    /// High X of Y: the chosen days' samples (shifted onto the event day) and the factor.
    Days(measure::HighXOfY, Vec<Vec<(i64, f64)>>),
}

impl Baseline {
    fn over(&self, from: i64, to: i64) -> Option<f64> {
        match self {
            Baseline::Flat(b) => *b,
            Baseline::Days(h, days) => measure::baseline_of_days(days, from, to, h.adjustment),
        }
    }
}

fn method_of(p: &ProgramConfig) -> pb::BaselineMethod {
    match p.baseline {
        BaselineConfig::MeterBefore { .. } => pb::BaselineMethod::MeterBefore,
        BaselineConfig::HighXOfY { .. } => pb::BaselineMethod::HighXOfY,
    }
}

/// One load's baseline by its program's method, from `meter`'s samples.
fn baseline(
    store: &Store,
    meter: &str,
    program: &ProgramConfig,
    start: i64,
    end: i64,
    today: &[(i64, f64)],
) -> Result<Baseline, StoreError> {
    let before = match &program.baseline {
        BaselineConfig::MeterBefore { before } => before,
        BaselineConfig::HighXOfY {
            x,
            y,
            before,
            adjust,
        } => {
            let adjust = adjust.map(|(w, cap)| (w.as_millis() as i64, cap));
            let reach = adjust.map_or(0, |a| a.0) + MARGIN_MS;
            let mut failed = None;
            let chosen = measure::high_x_of_y(
                start,
                end,
                *x,
                *y,
                gridgate_config::dr::MAX_LOOKBACK_DAYS,
                adjust,
                today,
                |back| {
                    let shift = i64::from(back) * DAY_MS;
                    match store.samples(meter, start - shift - reach, end - shift + MARGIN_MS) {
                        Ok(s) => s.into_iter().map(|(t, v)| (t + shift, v)).collect(),
                        Err(e) => {
                            failed = Some(e);
                            Vec::new()
                        }
                    }
                },
            );
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some((h, days)) = chosen {
                return Ok(Baseline::Days(h, days));
            }
            before
        }
    };
    let w = before.as_millis() as i64;
    Ok(Baseline::Flat(
        measure::mean(today, start - w, start).map(|m| m.0),
    ))
}

/// Builds the report of the event in `status` (ended), from the store's samples.
pub fn build(
    store: &Store,
    cfg: &GatewayConfig,
    status: &pb::EventStatus,
    event: &pb::DrEvent,
    now_ms: i64,
) -> Result<pb::PerformanceReport, StoreError> {
    let program = cfg
        .dr
        .as_ref()
        .and_then(|d| d.program(&event.program))
        .unwrap_or_else(|| ProgramConfig::default_for(&event.program));
    let (start, end) = (status.start_ms, status.end_ms);
    let lengths: Vec<i64> = program
        .intervals
        .iter()
        .map(|d| d.as_millis() as i64)
        .collect();
    let reach = match &program.baseline {
        BaselineConfig::MeterBefore { before } => before.as_millis() as i64,
        BaselineConfig::HighXOfY { before, adjust, .. } => {
            (before.as_millis() as i64).max(adjust.map_or(0, |a| a.0.as_millis() as i64))
        }
    };
    let mut loads = Vec::new();
    for ls in &status.loads {
        let meter = cfg
            .loads
            .iter()
            .find(|l| l.name == ls.load)
            .map(|l| l.meter.clone())
            .unwrap_or_default();
        let today = if meter.is_empty() {
            Vec::new()
        } else {
            store.samples(&meter, start - reach - MARGIN_MS, end + MARGIN_MS)?
        };
        let b = baseline(store, &meter, &program, start, end, &today)?;
        let series = lengths
            .iter()
            .map(|len| pb::IntervalSeries {
                length_s: (*len / 1000) as u32,
                intervals: measure::intervals(start, end, *len)
                    .into_iter()
                    .map(|(a, z)| {
                        let actual = measure::mean(&today, a, z);
                        let base = b.over(a, z);
                        let (bw, aw) = (base.map_or(0, watts), actual.map_or(0, |m| watts(m.0)));
                        pb::IntervalPerformance {
                            start_ms: a,
                            end_ms: z,
                            baseline_w: bw,
                            actual_w: aw,
                            reduction_w: bw - aw,
                            samples: actual.map_or(0, |m| m.1),
                            complete: actual.is_some() && base.is_some(),
                        }
                    })
                    .collect(),
            })
            .collect();
        let (days, ppm, method) = match &b {
            Baseline::Flat(_) => (Vec::new(), 1_000_000, pb::BaselineMethod::MeterBefore),
            Baseline::Days(h, _) => (
                h.days_back
                    .iter()
                    .map(|d| (start - i64::from(*d) * DAY_MS).div_euclid(DAY_MS) * DAY_MS)
                    .collect(),
                (h.adjustment * 1e6).round() as i64,
                pb::BaselineMethod::HighXOfY,
            ),
        };
        loads.push(pb::LoadPerformance {
            load: ls.load.clone(),
            meter,
            status: Some(ls.clone()),
            series,
            baseline_days_ms: days,
            adjustment_ppm: ppm,
            baseline: method as i32,
        });
    }
    Ok(pb::PerformanceReport {
        gateway_id: cfg.id.clone(),
        issuer: event.issuer.clone(),
        event_id: event.id.clone(),
        event_hash: status
            .signed
            .as_ref()
            .map(|s| sha256(&s.event).to_vec())
            .unwrap_or_default(),
        program: program.name.clone(),
        baseline: method_of(&program) as i32,
        start_ms: start,
        end_ms: end,
        cancelled: status.cancelled,
        total: total(&loads),
        loads,
        created_ms: now_ms,
    })
}

/// All loads together: each interval summed over the loads (complete when every load's is).
fn total(loads: &[pb::LoadPerformance]) -> Vec<pb::IntervalSeries> {
    let Some(first) = loads.first() else {
        return Vec::new();
    };
    let mut out = first.series.clone();
    for l in &loads[1..] {
        for (sum, s) in out.iter_mut().zip(&l.series) {
            for (t, i) in sum.intervals.iter_mut().zip(&s.intervals) {
                t.baseline_w += i.baseline_w;
                t.actual_w += i.actual_w;
                t.reduction_w += i.reduction_w;
                t.samples += i.samples;
                t.complete &= i.complete;
            }
        }
    }
    out
}

/// The event's mean reduction over all its time, W (from the finest series of the total).
pub fn mean_reduction_w(report: &pb::PerformanceReport) -> i64 {
    report.total.first().map_or(0, |s| {
        let ms: i64 = s.intervals.iter().map(|i| i.end_ms - i.start_ms).sum();
        let wms: i64 = s
            .intervals
            .iter()
            .map(|i| i.reduction_w * (i.end_ms - i.start_ms))
            .sum();
        if ms > 0 { wms / ms } else { 0 }
    })
}
