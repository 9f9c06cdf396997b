//! A gateway's market agent, pure (docs/market.md): its net position q(p) for a delivery
//! interval at an announced price, from its forecast and its flexible resources. It only
//! ever reveals q at the prices the market announces, never its curve.
//!
//! q(p) = forecast net demand (consumption less PV) − what the resources give at p. Each
//! resource gives a non-decreasing amount as the price rises (a load sheds more, storage
//! turns from charging to idle to discharging), so q is non-increasing in p by
//! construction: what makes the market's bisection converge. No resource ever answers
//! beyond its DR safety limit (the load's `max_shed_kw`, the storage's state-of-charge
//! bounds and power limits).

/// One flexible resource as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A sheddable load: `steps` of (kW off, from this price up), at most `max_shed_kw` in
    /// all (its DR safety limit).
    Shed {
        /// The load.
        load: String,
        /// (kW, price from which it is shed).
        steps: Vec<(f64, i64)>,
        /// The load's safety limit.
        max_shed_kw: f64,
    },
    /// A charging pile whose energy moves out of the interval from `above` up.
    Deferrable {
        /// The load.
        load: String,
        /// Its charging power, kW (what leaves the interval).
        kw: f64,
        /// Price from which it defers.
        above: i64,
    },
    /// Storage: charges below `charge_below`, discharges from `discharge_above` up (at
    /// least `charge_below`), within its power limits and state-of-charge bounds.
    Storage {
        /// The storage's point name (its state of charge).
        name: String,
        /// Buys below this price.
        charge_below: i64,
        /// Sells from this price up.
        discharge_above: i64,
        /// Largest charging power, kW.
        max_charge_kw: f64,
        /// Largest discharging power, kW.
        max_discharge_kw: f64,
        /// Energy stored now, Wh.
        soc_wh: i64,
        /// Lowest energy it may hold, Wh.
        min_soc_wh: i64,
        /// Highest energy it may hold, Wh.
        max_soc_wh: i64,
    },
}

/// Why a resource cannot be in the market as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A storage that would charge at a price where it also discharges: its answer would
    /// not fall as the price rises.
    #[error("{0}: charge_below must not exceed discharge_above")]
    StorageCrossed(String),
    /// A negative power, or bounds the wrong way round.
    #[error("{0}: powers are not negative and min_soc_wh <= max_soc_wh")]
    Bounds(String),
}

impl Resource {
    /// Checks what makes the answer non-increasing and the limits hold.
    pub fn check(&self) -> Result<(), ResourceError> {
        match self {
            Resource::Shed {
                load,
                steps,
                max_shed_kw,
            } => {
                if *max_shed_kw < 0.0 || steps.iter().any(|(kw, _)| *kw < 0.0) {
                    return Err(ResourceError::Bounds(load.clone()));
                }
            }
            Resource::Deferrable { load, kw, .. } => {
                if *kw < 0.0 {
                    return Err(ResourceError::Bounds(load.clone()));
                }
            }
            Resource::Storage {
                name,
                charge_below,
                discharge_above,
                max_charge_kw,
                max_discharge_kw,
                min_soc_wh,
                max_soc_wh,
                ..
            } => {
                if charge_below > discharge_above {
                    return Err(ResourceError::StorageCrossed(name.clone()));
                }
                if *max_charge_kw < 0.0 || *max_discharge_kw < 0.0 || min_soc_wh > max_soc_wh {
                    return Err(ResourceError::Bounds(name.clone()));
                }
            }
        }
        Ok(())
    }

    /// What it gives at `price` over an interval of `hours`, Wh: positive lowers the
    /// gateway's demand (or sells), negative raises it (storage charging). Non-decreasing in
    /// the price.
    pub fn gives_wh(&self, price: i64, hours: f64) -> i64 {
        let wh = |kw: f64| (kw.max(0.0) * 1000.0 * hours).floor() as i64;
        match self {
            Resource::Shed {
                steps, max_shed_kw, ..
            } => {
                let kw: f64 = steps
                    .iter()
                    .filter(|(_, from)| price >= *from)
                    .map(|(kw, _)| kw.max(0.0))
                    .sum();
                wh(kw.min(max_shed_kw.max(0.0)))
            }
            Resource::Deferrable { kw, above, .. } => {
                if price >= *above {
                    wh(*kw)
                } else {
                    0
                }
            }
            Resource::Storage {
                charge_below,
                discharge_above,
                max_charge_kw,
                max_discharge_kw,
                soc_wh,
                min_soc_wh,
                max_soc_wh,
                ..
            } => {
                if price >= *discharge_above {
                    wh(*max_discharge_kw).min((soc_wh - min_soc_wh).max(0))
                } else if price < *charge_below {
                    -wh(*max_charge_kw).min((max_soc_wh - soc_wh).max(0))
                } else {
                    0
                }
            }
        }
    }
}

impl Resource {
    /// The agent's view of a configured resource, with a storage's energy stored now (Wh,
    /// read from its `soc_point`); `None` for PV, which is in the forecast, and for a
    /// storage whose state of charge is not known (it does not answer blind).
    pub fn from_config(
        c: &gridgate_config::market::ResourceConfig,
        soc_wh: Option<i64>,
    ) -> Option<Resource> {
        use gridgate_config::market::ResourceConfig as C;
        Some(match c {
            C::Shed {
                load,
                steps,
                max_shed_kw,
            } => Resource::Shed {
                load: load.clone(),
                steps: steps.clone(),
                max_shed_kw: *max_shed_kw,
            },
            C::Deferrable { load, kw, above } => Resource::Deferrable {
                load: load.clone(),
                kw: *kw,
                above: *above,
            },
            C::Storage {
                name,
                charge_below,
                discharge_above,
                max_charge_kw,
                max_discharge_kw,
                min_soc_wh,
                max_soc_wh,
                ..
            } => Resource::Storage {
                name: name.clone(),
                charge_below: *charge_below,
                discharge_above: *discharge_above,
                max_charge_kw: *max_charge_kw,
                max_discharge_kw: *max_discharge_kw,
                soc_wh: soc_wh?,
                min_soc_wh: *min_soc_wh,
                max_soc_wh: *max_soc_wh,
            },
            C::Pv { .. } => return None,
        })
    }
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
/// interval of `hours`) less what its resources give.
pub fn answer(forecast_net_wh: i64, resources: &[Resource], price: i64, hours: f64) -> i64 {
    forecast_net_wh
        - resources
            .iter()
            .map(|r| r.gives_wh(price, hours))
            .sum::<i64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUARTER: f64 = 0.25;

    fn storage(soc_wh: i64) -> Resource {
        Resource::Storage {
            name: "battery".into(),
            charge_below: 600,
            discharge_above: 800,
            max_charge_kw: 4.0,
            max_discharge_kw: 12.0,
            soc_wh,
            min_soc_wh: 1_000,
            max_soc_wh: 10_000,
        }
    }

    #[test]
    fn storage_charges_cheap_sells_dear_within_its_charge_and_power() {
        // 12 kW for a quarter hour is 3 kWh; it holds 9 kWh above its minimum: 3 kWh.
        assert_eq!(storage(10_000).gives_wh(900, QUARTER), 3_000);
        // Nearly empty: only what is above the minimum.
        assert_eq!(storage(1_500).gives_wh(900, QUARTER), 500);
        // Cheap: charges 4 kW for a quarter hour (1 kWh), never past full.
        assert_eq!(storage(5_000).gives_wh(500, QUARTER), -1_000);
        assert_eq!(storage(9_800).gives_wh(500, QUARTER), -200);
        assert_eq!(storage(5_000).gives_wh(700, QUARTER), 0);
    }

    #[test]
    fn a_load_sheds_its_steps_but_never_past_its_safety_limit() {
        let shed = Resource::Shed {
            load: "chiller".into(),
            steps: vec![(10.0, 700), (20.0, 900)],
            max_shed_kw: 25.0,
        };
        assert_eq!(shed.gives_wh(600, QUARTER), 0);
        assert_eq!(shed.gives_wh(700, QUARTER), 2_500);
        // 30 kW of steps, 25 kW allowed.
        assert_eq!(shed.gives_wh(900, QUARTER), 6_250);
        let pile = Resource::Deferrable {
            load: "pile".into(),
            kw: 7.0,
            above: 850,
        };
        assert_eq!(
            answer(10_000, &[shed, pile], 900, QUARTER),
            10_000 - 6_250 - 1_750
        );
    }

    #[test]
    fn resources_that_would_break_the_answers_order_are_refused() {
        let mut s = storage(5_000);
        if let Resource::Storage { charge_below, .. } = &mut s {
            *charge_below = 900;
        }
        assert_eq!(
            s.check(),
            Err(ResourceError::StorageCrossed("battery".into()))
        );
        assert_eq!(storage(5_000).check(), Ok(()));
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

    fn resource() -> impl Strategy<Value = Resource> {
        prop_oneof![
            (
                prop::collection::vec((0.0f64..50.0, 0i64..2_000), 0..4),
                0.0f64..80.0
            )
                .prop_map(|(steps, max)| Resource::Shed {
                    load: "l".into(),
                    steps,
                    max_shed_kw: max
                }),
            (0.0f64..22.0, 0i64..2_000).prop_map(|(kw, above)| Resource::Deferrable {
                load: "p".into(),
                kw,
                above
            }),
            (
                0i64..2_000,
                0i64..1_000,
                0.0f64..10.0,
                0.0f64..10.0,
                0i64..20_000
            )
                .prop_map(|(cb, gap, c, d, soc)| Resource::Storage {
                    name: "s".into(),
                    charge_below: cb,
                    discharge_above: cb + gap,
                    max_charge_kw: c,
                    max_discharge_kw: d,
                    soc_wh: soc,
                    min_soc_wh: 1_000,
                    max_soc_wh: 15_000,
                }),
        ]
    }

    proptest! {
        #[test]
        fn every_answer_falls_or_stays_as_the_price_rises(
            resources in prop::collection::vec(resource(), 0..8),
            forecast in -20_000i64..20_000,
            p in 0i64..2_000,
            dp in 0i64..500,
        ) {
            prop_assert!(resources.iter().all(|r| r.check().is_ok()));
            prop_assert!(answer(forecast, &resources, p + dp, QUARTER) <= answer(forecast, &resources, p, QUARTER));
        }
    }
}
