//! `[market]`: this gateway's part in the flexibility market (docs/market.md): its area, the
//! delivery interval and the flexible resources its agent answers with.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, valid_name};
use crate::dr::LoadConfig;

/// `[market]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMarket {
    pub area: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub meter: Option<Spanned<String>>,
    pub forecast: Option<Spanned<String>>,
    #[serde(default)]
    pub resource: Vec<RawResource>,
}

/// `[[market.resource]]` as written: `kind` says which keys it takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    pub kind: Spanned<String>,
    pub load: Option<Spanned<String>>,
    pub steps: Option<Vec<RawStep>>,
    pub kw: Option<Spanned<f64>>,
    pub above: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub soc_point: Option<Spanned<String>>,
    pub charge_below: Option<Spanned<i64>>,
    pub discharge_above: Option<Spanned<i64>>,
    pub max_charge_kw: Option<Spanned<f64>>,
    pub max_discharge_kw: Option<Spanned<f64>>,
    pub min_soc_wh: Option<Spanned<i64>>,
    pub max_soc_wh: Option<Spanned<i64>>,
    pub meter: Option<Spanned<String>>,
}

/// One step of a sheddable load as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub kw: f64,
    pub from: i64,
}

/// A flexible resource, checked against the loads and points.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceConfig {
    /// A `[[load]]` shed in steps of (kW, from price), never past the load's `max_shed_kw`.
    Shed {
        /// The load.
        load: String,
        /// (kW, from price).
        steps: Vec<(f64, i64)>,
        /// The load's safety limit.
        max_shed_kw: f64,
    },
    /// A `[[load]]` (a charging pile) deferred out of the interval from a price up.
    Deferrable {
        /// The load.
        load: String,
        /// Its power, kW.
        kw: f64,
        /// From this price.
        above: i64,
    },
    /// Storage, its state of charge read from a point (Wh).
    Storage {
        /// Its name.
        name: String,
        /// The point that gives its energy stored, Wh (`device/point`).
        soc_point: String,
        /// Charges below this price.
        charge_below: i64,
        /// Discharges from this price up.
        discharge_above: i64,
        /// Largest charging power, kW.
        max_charge_kw: f64,
        /// Largest discharging power, kW.
        max_discharge_kw: f64,
        /// Lowest energy it may hold, Wh.
        min_soc_wh: i64,
        /// Highest energy it may hold, Wh.
        max_soc_wh: i64,
    },
    /// PV: its production point (kW) forecasts the surplus sold at any price.
    Pv {
        /// The point (`device/point`).
        meter: String,
    },
}

/// `[market]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketConfig {
    /// The area (feeder or transformer zone) it trades in.
    pub area: String,
    /// The delivery interval.
    pub interval: Duration,
    /// The point that measures the site's net import, kW (`device/point`); without one the
    /// forecast is PV alone (a site that only sells).
    pub meter: Option<String>,
    /// How an interval's consumption and production are forecast.
    pub forecast: Forecast,
    /// Its flexible resources.
    pub resources: Vec<ResourceConfig>,
}

/// How the agent forecasts an interval from the samples the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forecast {
    /// The mean of the last interval's length of samples, carried forward: for sites with
    /// too little history, and for the demo.
    Recent,
    /// The DR baseline's rule applied ahead: the mean of the highest `x` of the first `y`
    /// similar days with data (`"high-5-of-10"`, the default).
    HighXOfY {
        /// Days kept.
        x: u32,
        /// Days looked at.
        y: u32,
    },
}

/// The forecast when the config does not say.
pub const DEFAULT_FORECAST: Forecast = Forecast::HighXOfY { x: 5, y: 10 };

/// `"recent"` or `"high-X-of-Y"` (1 <= X <= Y <= 30).
pub fn parse_forecast(s: &str) -> Option<Forecast> {
    if s == "recent" {
        return Some(Forecast::Recent);
    }
    let (x, y) = s.strip_prefix("high-")?.split_once("-of-")?;
    let (x, y) = (x.parse().ok()?, y.parse().ok()?);
    (1 <= x && x <= y && y <= 30).then_some(Forecast::HighXOfY { x, y })
}

/// The delivery interval when the config does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);

const KINDS: &str = "\"shed\", \"deferrable\", \"storage\" or \"pv\"";

impl Checker<'_> {
    pub(super) fn check_market(
        &mut self,
        raw: Option<&RawMarket>,
        loads: &[LoadConfig],
        points: &[String],
    ) -> Option<MarketConfig> {
        let m = raw?;
        let area = m.area.get_ref().trim().to_string();
        if !valid_name(&area) {
            self.problem(
                &m.area,
                "market.area".into(),
                "use letters, digits, '-', '_' or '.'".into(),
            );
        }
        let interval = self.duration(&m.interval, "market.interval".into(), DEFAULT_INTERVAL);
        let meter = m.meter.as_ref().map(|p| {
            if !points.contains(p.get_ref()) {
                self.problem(
                    p,
                    "market.meter".into(),
                    format!("no point {:?} (write device/point)", p.get_ref()),
                );
            }
            p.get_ref().clone()
        });
        let forecast = match &m.forecast {
            None => DEFAULT_FORECAST,
            Some(f) => parse_forecast(f.get_ref()).unwrap_or_else(|| {
                self.problem(
                    f,
                    "market.forecast".into(),
                    "write \"recent\" or \"high-X-of-Y\" (1 <= X <= Y <= 30), as \"high-5-of-10\""
                        .into(),
                );
                DEFAULT_FORECAST
            }),
        };
        let mut resources = Vec::new();
        for (i, r) in m.resource.iter().enumerate() {
            if let Some(c) = self.check_resource(i, r, loads, points) {
                resources.push(c);
            }
        }
        Some(MarketConfig {
            area,
            interval,
            meter,
            forecast,
            resources,
        })
    }

    fn check_resource(
        &mut self,
        i: usize,
        r: &RawResource,
        loads: &[LoadConfig],
        points: &[String],
    ) -> Option<ResourceConfig> {
        let key = |k: &str| format!("market.resource[{i}].{k}");
        let need = |this: &mut Self, what: &str, present: bool| {
            if !present {
                this.problem(
                    &r.kind,
                    key(what),
                    format!("a {:?} resource needs {what}", r.kind.get_ref()),
                );
            }
            present
        };
        match r.kind.get_ref().as_str() {
            "shed" | "deferrable" => {
                let Some(load) = &r.load else {
                    need(self, "load", false);
                    return None;
                };
                let Some(l) = loads.iter().find(|l| &l.name == load.get_ref()) else {
                    self.problem(
                        load,
                        key("load"),
                        format!("no [[load]] is named {:?}", load.get_ref()),
                    );
                    return None;
                };
                if r.kind.get_ref() == "shed" {
                    let steps: Vec<(f64, i64)> = r
                        .steps
                        .as_ref()
                        .map(|s| s.iter().map(|s| (s.kw, s.from)).collect())
                        .unwrap_or_default();
                    if !need(self, "steps", !steps.is_empty()) {
                        return None;
                    }
                    if steps.iter().any(|(kw, _)| *kw <= 0.0) {
                        self.problem(load, key("steps"), "each step sheds more than 0 kW".into());
                    }
                    Some(ResourceConfig::Shed {
                        load: l.name.clone(),
                        steps,
                        max_shed_kw: l.max_shed_kw,
                    })
                } else {
                    let (Some(kw), Some(above)) = (&r.kw, &r.above) else {
                        need(self, "kw and above", false);
                        return None;
                    };
                    if *kw.get_ref() <= 0.0 || *kw.get_ref() > l.max_shed_kw {
                        self.problem(
                            kw,
                            key("kw"),
                            format!(
                                "more than 0 kW and at most the load's max_shed_kw ({} kW)",
                                l.max_shed_kw
                            ),
                        );
                    }
                    Some(ResourceConfig::Deferrable {
                        load: l.name.clone(),
                        kw: *kw.get_ref(),
                        above: *above.get_ref(),
                    })
                }
            }
            "storage" => {
                let (
                    Some(name),
                    Some(soc),
                    Some(cb),
                    Some(da),
                    Some(mc),
                    Some(md),
                    Some(lo),
                    Some(hi),
                ) = (
                    &r.name,
                    &r.soc_point,
                    &r.charge_below,
                    &r.discharge_above,
                    &r.max_charge_kw,
                    &r.max_discharge_kw,
                    &r.min_soc_wh,
                    &r.max_soc_wh,
                )
                else {
                    need(
                        self,
                        "name, soc_point, charge_below, discharge_above, max_charge_kw, max_discharge_kw, min_soc_wh and max_soc_wh",
                        false,
                    );
                    return None;
                };
                if !points.contains(soc.get_ref()) {
                    self.problem(
                        soc,
                        key("soc_point"),
                        format!("no point {:?} (write device/point)", soc.get_ref()),
                    );
                }
                if cb.get_ref() > da.get_ref() {
                    self.problem(cb, key("charge_below"), "must not exceed discharge_above: storage would buy where it sells, and its answer would rise with the price".into());
                }
                if *mc.get_ref() < 0.0 || *md.get_ref() < 0.0 || lo.get_ref() > hi.get_ref() {
                    self.problem(
                        &r.kind,
                        key("max_charge_kw"),
                        "powers are not negative and min_soc_wh <= max_soc_wh".into(),
                    );
                }
                Some(ResourceConfig::Storage {
                    name: name.get_ref().clone(),
                    soc_point: soc.get_ref().clone(),
                    charge_below: *cb.get_ref(),
                    discharge_above: *da.get_ref(),
                    max_charge_kw: *mc.get_ref(),
                    max_discharge_kw: *md.get_ref(),
                    min_soc_wh: *lo.get_ref(),
                    max_soc_wh: *hi.get_ref(),
                })
            }
            "pv" => {
                let Some(meter) = &r.meter else {
                    need(self, "meter", false);
                    return None;
                };
                if !points.contains(meter.get_ref()) {
                    self.problem(
                        meter,
                        key("meter"),
                        format!("no point {:?} (write device/point)", meter.get_ref()),
                    );
                }
                Some(ResourceConfig::Pv {
                    meter: meter.get_ref().clone(),
                })
            }
            other => {
                self.problem(
                    &r.kind,
                    key("kind"),
                    format!("{other:?} is not a resource kind: write {KINDS}"),
                );
                None
            }
        }
    }
}
