//! A gateway's market agent, pure (docs/market.md): its net position q(p) for a delivery
//! interval at an announced price, from its forecast and its flexible resources. It only
//! ever reveals q at the prices the market announces, never its curve.
//!
//! q(p) = forecast net demand (consumption less PV) − what the resources give at p. Each
//! resource gives a non-decreasing amount as the price rises (a load sheds more, storage
//! turns from charging to idle to discharging), so q is non-increasing in p by
//! construction (for the resources the config check lets through): what makes the
//! market's bisection converge. No resource ever answers beyond its DR safety limit (the
//! load's `max_shed_kw`, the storage's state-of-charge bounds and power limits).

use gridgate_config::market::ResourceConfig;

/// What `r` gives at `price` over an interval of `hours`, Wh: positive lowers the gateway's
/// demand (or sells), negative raises it (storage charging); non-decreasing in the price.
/// `soc_wh` is a storage's energy stored now. `None` for a storage whose state of charge is
/// not known (it does not answer blind); PV gives nothing here, it is in the forecast. The
/// config check has made every resource one whose answer cannot rise with the price.
pub fn gives_wh(r: &ResourceConfig, soc_wh: Option<i64>, price: i64, hours: f64) -> Option<i64> {
    let wh = |kw: f64| (kw.max(0.0) * 1000.0 * hours).floor() as i64;
    Some(match r {
        ResourceConfig::Shed {
            steps, max_shed_kw, ..
        } => {
            let kw: f64 = steps
                .iter()
                .filter(|(_, from)| price >= *from)
                .map(|(kw, _)| kw.max(0.0))
                .sum();
            wh(kw.min(max_shed_kw.max(0.0)))
        }
        ResourceConfig::Deferrable { kw, above, .. } => {
            if price >= *above {
                wh(*kw)
            } else {
                0
            }
        }
        ResourceConfig::Storage {
            charge_below,
            discharge_above,
            max_charge_kw,
            max_discharge_kw,
            min_soc_wh,
            max_soc_wh,
            ..
        } => {
            let soc = soc_wh?;
            if price >= *discharge_above {
                wh(*max_discharge_kw).min((soc - min_soc_wh).max(0))
            } else if price < *charge_below {
                -wh(*max_charge_kw).min((max_soc_wh - soc).max(0))
            } else {
                0
            }
        }
        ResourceConfig::Pv { .. } => 0,
    })
}

/// A forecast of one interval's energy from a point's history, Wh: the same "high X of Y"
/// baseline as DR performance (the `x` highest of the first `y` similar days with data over
/// the interval, up to `lookback` days back) times the interval's length. `samples_on(back)`
/// gives that day's samples (kW) shifted onto the interval's day. `None` with too little
/// history: the agent does not answer on a guess.
pub fn forecast_wh(
    start_ms: i64,
    end_ms: i64,
    (x, y, lookback): (u32, u32, u32),
    samples_on: impl FnMut(u32) -> crate::measure::Samples,
) -> Option<i64> {
    let (chosen, days) =
        crate::measure::high_x_of_y(start_ms, end_ms, x, y, lookback, None, &[], samples_on)?;
    let kw = crate::measure::baseline_of_days(&days, start_ms, end_ms, chosen.adjustment)?;
    let hours = (end_ms - start_ms) as f64 / 3_600_000.0;
    Some((kw * 1000.0 * hours).round() as i64)
}

/// The gateway's answer at `price`: forecast net demand (consumption less PV, Wh, for the
/// interval of `hours`) less what its resources give; `soc_of(storage)` is a storage's
/// energy stored now.
pub fn answer(
    forecast_net_wh: i64,
    resources: &[ResourceConfig],
    soc_of: impl Fn(&str) -> Option<i64>,
    price: i64,
    hours: f64,
) -> i64 {
    let given: i64 = resources
        .iter()
        .filter_map(|r| {
            let soc = match r {
                ResourceConfig::Storage { name, .. } => soc_of(name),
                _ => None,
            };
            gives_wh(r, soc, price, hours)
        })
        .sum();
    forecast_net_wh - given
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUARTER: f64 = 0.25;

    fn storage() -> ResourceConfig {
        ResourceConfig::Storage {
            name: "battery".into(),
            soc_point: "bms/energy_wh".into(),
            charge_below: 600,
            discharge_above: 800,
            max_charge_kw: 4.0,
            max_discharge_kw: 12.0,
            min_soc_wh: 1_000,
            max_soc_wh: 10_000,
        }
    }

    fn at(soc: i64, price: i64) -> Option<i64> {
        gives_wh(&storage(), Some(soc), price, QUARTER)
    }

    #[test]
    fn storage_charges_cheap_sells_dear_within_its_charge_and_power() {
        // 12 kW for a quarter hour is 3 kWh; it holds 9 kWh above its minimum: 3 kWh.
        assert_eq!(at(10_000, 900), Some(3_000));
        // Nearly empty: only what is above the minimum.
        assert_eq!(at(1_500, 900), Some(500));
        // Cheap: charges 4 kW for a quarter hour (1 kWh), never past full.
        assert_eq!(at(5_000, 500), Some(-1_000));
        assert_eq!(at(9_800, 500), Some(-200));
        assert_eq!(at(5_000, 700), Some(0));
        // Its state of charge unknown: it does not answer.
        assert_eq!(gives_wh(&storage(), None, 900, QUARTER), None);
    }

    #[test]
    fn a_load_sheds_its_steps_but_never_past_its_safety_limit() {
        let shed = ResourceConfig::Shed {
            load: "chiller".into(),
            steps: vec![(10.0, 700), (20.0, 900)],
            max_shed_kw: 25.0,
        };
        assert_eq!(gives_wh(&shed, None, 600, QUARTER), Some(0));
        assert_eq!(gives_wh(&shed, None, 700, QUARTER), Some(2_500));
        // 30 kW of steps, 25 kW allowed.
        assert_eq!(gives_wh(&shed, None, 900, QUARTER), Some(6_250));
        let pile = ResourceConfig::Deferrable {
            load: "pile".into(),
            kw: 7.0,
            above: 850,
        };
        assert_eq!(
            answer(10_000, &[shed, pile], |_| None, 900, QUARTER),
            10_000 - 6_250 - 1_750
        );
    }

    #[test]
    fn a_forecast_is_the_high_days_mean_over_the_interval_or_none_without_history() {
        // Wednesday 2026-12-02 10:00 UTC; ten days of history at 40 kW, Tuesday and Monday
        // at 60 kW: high 2 of 5 similar (week)days is 60 kW, 15 kWh over the quarter hour.
        let start = 1_796_205_600_000;
        let end = start + 900_000;
        let samples = |kw: f64| -> crate::measure::Samples {
            (0..15).map(|m| (start + m * 60_000, kw)).collect()
        };
        let f = forecast_wh(start, end, (2, 5, 10), |back| {
            samples(if back == 1 || back == 2 { 60.0 } else { 40.0 })
        });
        assert_eq!(f, Some(15_000));
        assert_eq!(forecast_wh(start, end, (2, 5, 10), |_| Vec::new()), None);
    }

    /// A resource, and a storage's energy stored now.
    fn resource() -> impl Strategy<Value = (ResourceConfig, i64)> {
        prop_oneof![
            (
                prop::collection::vec((0.0f64..50.0, 0i64..2_000), 0..4),
                0.0f64..80.0
            )
                .prop_map(|(steps, max)| (
                    ResourceConfig::Shed {
                        load: "l".into(),
                        steps,
                        max_shed_kw: max
                    },
                    0
                )),
            (0.0f64..22.0, 0i64..2_000).prop_map(|(kw, above)| (
                ResourceConfig::Deferrable {
                    load: "p".into(),
                    kw,
                    above
                },
                0
            )),
            (
                0i64..2_000,
                0i64..1_000,
                0.0f64..10.0,
                0.0f64..10.0,
                0i64..20_000
            )
                .prop_map(|(cb, gap, c, d, soc)| (
                    ResourceConfig::Storage {
                        name: "s".into(),
                        soc_point: "bms/energy_wh".into(),
                        charge_below: cb,
                        discharge_above: cb + gap,
                        max_charge_kw: c,
                        max_discharge_kw: d,
                        min_soc_wh: 1_000,
                        max_soc_wh: 15_000,
                    },
                    soc
                )),
        ]
    }

    proptest! {
        #[test]
        fn every_answer_falls_or_stays_as_the_price_rises(
            generated in prop::collection::vec(resource(), 0..8),
            forecast in -20_000i64..20_000,
            p in 0i64..2_000,
            dp in 0i64..500,
        ) {
            // Each storage its own name and state of charge.
            let mut soc = std::collections::BTreeMap::new();
            let resources: Vec<ResourceConfig> = generated
                .into_iter()
                .enumerate()
                .map(|(i, (mut r, s))| {
                    if let ResourceConfig::Storage { name, .. } = &mut r {
                        *name = format!("s{i}");
                        soc.insert(name.clone(), s);
                    }
                    r
                })
                .collect();
            let soc_of = |n: &str| soc.get(n).copied();
            prop_assert!(answer(forecast, &resources, soc_of, p + dp, QUARTER) <= answer(forecast, &resources, soc_of, p, QUARTER));
        }
    }
}
