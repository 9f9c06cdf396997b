//! Measurement: how much load an event took off, per interval, against a baseline. Pure
//! functions over a meter point's samples (time, kW), so that every rule is testable
//! without a clock or a store.
//!
//! A meter is read at poll times; between two samples the power is taken to move in a
//! straight line (trapezoids), before the first and after the last it is held. An interval's
//! power is the time-weighted mean of that curve, so a step change between two polls costs at
//! most half a poll period's worth of error, and unevenly spaced samples weigh what they span.

/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// A meter point's samples: (ms since the epoch, kW), oldest first.
pub type Samples = Vec<(i64, f64)>;

/// Time-weighted mean of the samples' curve over `[from, to)`, and the number of samples
/// inside it. `None` when no sample lies inside (the interval has no data). `samples` are
/// sorted by time and may reach outside the interval (they shape its edges).
pub fn mean(samples: &[(i64, f64)], from: i64, to: i64) -> Option<(f64, u32)> {
    if to <= from {
        return None;
    }
    let inside = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .count() as u32;
    if inside == 0 {
        return None;
    }
    let (first, last) = (samples.first()?, samples.last()?);
    let mut area = 0.0;
    // Held before the first sample and after the last.
    if first.0 > from {
        area += first.1 * (first.0.min(to) - from) as f64;
    }
    if last.0 < to {
        area += last.1 * (to - last.0.max(from)) as f64;
    }
    for w in samples.windows(2) {
        let ((t0, v0), (t1, v1)) = (w[0], w[1]);
        let (a, b) = (t0.max(from), t1.min(to));
        if a >= b {
            continue;
        }
        let at = |t: i64| v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64;
        area += (at(a) + at(b)) / 2.0 * (b - a) as f64;
    }
    Some((area / (to - from) as f64, inside))
}

/// The clock-aligned intervals of `len_ms` that cover `[start, end)`, cut to it: a
/// 15-minute series falls on the quarter hours, as settlement intervals do.
pub fn intervals(start: i64, end: i64, len_ms: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if len_ms <= 0 || end <= start {
        return out;
    }
    let mut a = start;
    while a < end {
        let b = ((a.div_euclid(len_ms) + 1) * len_ms).min(end);
        out.push((a, b));
        a = b;
    }
    out
}

/// Whether two instants fall on similar days: weekdays with weekdays, weekends with weekends.
fn similar_days(a_ms: i64, b_ms: i64) -> bool {
    let weekend = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .is_ok_and(|d| matches!(d.weekday(), time::Weekday::Saturday | time::Weekday::Sunday))
    };
    weekend(a_ms) == weekend(b_ms)
}

/// A "high X of Y" baseline for one load: which days it used and the day-of adjustment.
#[derive(Debug, Clone, PartialEq)]
pub struct HighXOfY {
    /// Offsets (days back, 1 = yesterday) of the X days chosen, highest first.
    pub days_back: Vec<u32>,
    /// Day-of adjustment factor (1.0 = none).
    pub adjustment: f64,
}

/// Picks the baseline days for an event over `[start, end)`: going back day by day (up to
/// `lookback`), the first `y` similar days with data over the event window, of which the `x`
/// with the highest mean load. `samples_on(days_back)` gives that day's samples, already
/// shifted onto the event day's clock. `None` when fewer than `x` days have data.
///
/// With `adjust = Some((window, cap))`, the baseline is scaled by the event day's mean over
/// `window` before the start divided by the chosen days' mean over the same window, the
/// factor held within 1 ± cap.
#[allow(clippy::too_many_arguments)]
pub fn high_x_of_y(
    start: i64,
    end: i64,
    x: u32,
    y: u32,
    lookback: u32,
    adjust: Option<(i64, f64)>,
    today: &[(i64, f64)],
    mut samples_on: impl FnMut(u32) -> Samples,
) -> Option<(HighXOfY, Vec<Samples>)> {
    let mut candidates: Vec<(u32, f64, Samples)> = Vec::new();
    for back in 1..=lookback {
        if candidates.len() as u32 >= y {
            break;
        }
        if !similar_days(start, start - i64::from(back) * DAY_MS) {
            continue;
        }
        let s = samples_on(back);
        if let Some((m, _)) = mean(&s, start, end) {
            candidates.push((back, m, s));
        }
    }
    if (candidates.len() as u32) < x {
        return None;
    }
    // Highest first; on a tie the more recent day.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    candidates.truncate(x as usize);
    let adjustment = match adjust {
        None => 1.0,
        Some((window, cap)) => {
            let on_day = mean(today, start - window, start).map(|m| m.0);
            let before: Vec<f64> = candidates
                .iter()
                .filter_map(|(_, _, s)| mean(s, start - window, start).map(|m| m.0))
                .collect();
            match on_day {
                Some(d) if before.len() == candidates.len() => {
                    let b = before.iter().sum::<f64>() / before.len() as f64;
                    if b > 0.0 {
                        (d / b).clamp(1.0 - cap, 1.0 + cap)
                    } else {
                        1.0
                    }
                }
                _ => 1.0,
            }
        }
    };
    let days_back = candidates.iter().map(|c| c.0).collect();
    let series = candidates.into_iter().map(|c| c.2).collect();
    Some((
        HighXOfY {
            days_back,
            adjustment,
        },
        series,
    ))
}

/// The baseline of one interval from the chosen days' samples: the mean of their means.
pub fn baseline_of_days(
    days: &[Vec<(i64, f64)>],
    from: i64,
    to: i64,
    adjustment: f64,
) -> Option<f64> {
    let means: Vec<f64> = days
        .iter()
        .filter_map(|s| mean(s, from, to).map(|m| m.0))
        .collect();
    if means.is_empty() {
        return None;
    }
    Some(means.iter().sum::<f64>() / means.len() as f64 * adjustment)
}

/// kW to whole watts, as the report carries them.
pub fn watts(kw: f64) -> i64 {
    (kw * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_load_means_its_value_and_a_ramp_its_midpoint() {
        let flat = [(0, 5.0), (1000, 5.0), (2000, 5.0)];
        assert_eq!(mean(&flat, 0, 2000), Some((5.0, 2)));
        let ramp = [(0, 0.0), (1000, 10.0)];
        let (m, n) = mean(&ramp, 0, 1000).expect("data");
        assert!((m - 5.0).abs() < 1e-9, "{m}");
        assert_eq!(n, 1);
        // Held after the last sample, and before the first.
        assert_eq!(mean(&[(500, 2.0)], 0, 1000), Some((2.0, 1)));
        assert_eq!(mean(&[(1500, 2.0)], 0, 1000), None, "no sample inside");
    }

    #[test]
    fn a_step_between_polls_costs_at_most_half_a_poll() {
        // 4 kW until t = 10_050, 2 kW after; polled every 100 ms.
        let samples: Vec<(i64, f64)> = (0..200)
            .map(|i| {
                let t = i * 100 + 30;
                (t, if t < 10_050 { 4.0 } else { 2.0 })
            })
            .collect();
        let true_mean = (4.0 * 50.0 + 2.0 * 9_950.0) / 10_000.0;
        let (m, _) = mean(&samples, 10_000, 20_000).expect("data");
        let error = (m - true_mean).abs() / (4.0 - 2.0);
        assert!(error <= 50.0 / 10_000.0 + 1e-9, "{m} vs {true_mean}");
    }

    #[test]
    fn intervals_fall_on_the_clock_and_are_cut_to_the_event() {
        assert_eq!(
            intervals(61_000, 190_000, 60_000),
            vec![(61_000, 120_000), (120_000, 180_000), (180_000, 190_000)]
        );
        assert_eq!(intervals(0, 60_000, 60_000), vec![(0, 60_000)]);
        assert!(intervals(5, 5, 60_000).is_empty());
    }

    /// A load of `kw` for the whole day `back` days before, plus the event window's mean.
    fn day(kw: f64) -> Vec<(i64, f64)> {
        (0..48).map(|h| (h * 1_800_000, kw)).collect()
    }

    #[test]
    fn high_x_of_y_takes_the_highest_similar_days_and_adjusts_within_its_cap() {
        // 2026-11-25 is a Wednesday; the event runs 14:00-15:00 UTC.
        let date = time::Date::from_calendar_date(2026, time::Month::November, 25).expect("date");
        assert_eq!(date.weekday(), time::Weekday::Wednesday);
        let start = date
            .with_hms(14, 0, 0)
            .expect("time")
            .assume_utc()
            .unix_timestamp()
            * 1000;
        let end = start + 3_600_000;
        let base = start - start.rem_euclid(DAY_MS);
        // Day d back has (10 + d) kW, on its own clock shifted onto the event day.
        let on = |back: u32| -> Vec<(i64, f64)> {
            day(10.0 + f64::from(back))
                .into_iter()
                .map(|(t, v)| (base + t, v))
                .collect()
        };
        let today: Vec<(i64, f64)> = day(30.0).into_iter().map(|(t, v)| (base + t, v)).collect();
        let (chosen, days) =
            high_x_of_y(start, end, 2, 3, 30, None, &today, on).expect("enough days");
        // Back 1, 2 are Tue, Mon; 3 and 4 are the weekend (skipped); 5 is Fri.
        assert_eq!(chosen.days_back, vec![5, 2]);
        assert_eq!(chosen.adjustment, 1.0);
        let b = baseline_of_days(&days, start, end, chosen.adjustment).expect("baseline");
        assert!((b - 13.5).abs() < 1e-9, "{b}");
        // The event day runs at 30 kW before the start: the factor is capped at 1.2.
        let (adjusted, _) =
            high_x_of_y(start, end, 2, 3, 30, Some((3_600_000, 0.2)), &today, on).expect("days");
        assert!((adjusted.adjustment - 1.2).abs() < 1e-9);
        // Too few days with data.
        assert!(high_x_of_y(start, end, 2, 3, 30, None, &today, |_| Vec::new()).is_none());
    }

    #[test]
    fn watts_round_to_the_nearest() {
        assert_eq!(watts(2.4996), 2500);
        assert_eq!(watts(-0.0004), 0);
    }
}
