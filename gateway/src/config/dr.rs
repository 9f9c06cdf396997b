//! `[dr]` (whose signed events the gateway accepts) and `[[load]]` (the loads it may move,
//! with their safety limits).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, valid_name};

/// `[dr]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDr {
    pub issuers: Spanned<Vec<RawIssuer>>,
}

/// One trusted issuer as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: Spanned<String>,
    pub public_key: Spanned<String>,
}

/// `[[load]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    pub name: Spanned<String>,
    pub meter: Spanned<String>,
    pub min_setpoint: Option<Spanned<f64>>,
    pub max_setpoint: Option<Spanned<f64>>,
    pub max_shed_kw: Option<Spanned<f64>>,
    pub max_events_per_day: Option<Spanned<u32>>,
    pub control: Option<Spanned<String>>,
    pub rated_kw: Option<Spanned<f64>>,
    pub password: Option<Spanned<String>>,
    pub operator: Option<Spanned<String>>,
}

/// `[dr]`: the issuers whose signed events the gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrConfig {
    /// (name, PEM public key file), as `gridgate keygen` writes them.
    pub issuers: Vec<(String, PathBuf)>,
}

/// DL/T 645 remote-control credentials: password (level and password, PA P0 P1 P2 as sent)
/// and operator code (C0..C3 as sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAuth {
    /// PA P0 P1 P2.
    pub password: [u8; 4],
    /// C0 C1 C2 C3.
    pub operator: [u8; 4],
}

/// What a load's control writes: a device's point, and for a DL/T 645 meter's switch
/// (`meter/relay`) the credentials of the remote-control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPoint {
    /// Device name.
    pub device: String,
    /// Point name (`relay` for a DL/T 645 meter's load switch).
    pub point: String,
    /// For `relay`: the remote-control credentials.
    pub auth: Option<RemoteAuth>,
}

/// The pseudo-point of a DL/T 645 meter's load switch: 0 trips it, 1 closes it.
pub const RELAY_POINT: &str = "relay";

fn four_bytes(text: &str) -> Option<[u8; 4]> {
    let b = hex::decode(text.trim()).ok()?;
    b.try_into().ok()
}

/// `[[load]]`: a load DR events may move, and its safety limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// Name events use.
    pub name: String,
    /// The point (`device/point`) that measures its power, in kW.
    pub meter: String,
    /// Allowed setpoints, inclusive.
    pub setpoint_range: (f64, f64),
    /// Largest shed an event may ask for, kW.
    pub max_shed_kw: f64,
    /// Events that may move it per UTC day.
    pub max_events_per_day: u32,
    /// The writable point that controls it (a Modbus coil or holding register, or a
    /// DL/T 645 meter's `relay`); a load without one cannot be moved.
    pub control: Option<ControlPoint>,
    /// Rated power, kW: maps `shed_kw` onto a setpoint in percent of rated power.
    pub rated_kw: Option<f64>,
}

/// Events per load per day when the config does not say.
pub const DEFAULT_MAX_EVENTS_PER_DAY: u32 = 2;

impl Checker<'_> {
    pub(super) fn check_dr(&mut self, raw: Option<&RawDr>) -> Option<DrConfig> {
        let r = raw?;
        let mut issuers: Vec<(String, PathBuf)> = Vec::new();
        for (i, is) in r.issuers.get_ref().iter().enumerate() {
            let name = is.name.get_ref().trim().to_string();
            if !valid_name(&name) {
                self.problem(
                    &is.name,
                    format!("dr.issuers[{i}].name"),
                    "use letters, digits, '-', '_' or '.'".into(),
                );
            } else if issuers.iter().any(|(n, _)| *n == name) {
                self.problem(
                    &is.name,
                    format!("dr.issuers[{i}].name"),
                    format!("issuer {name:?} is listed twice"),
                );
            }
            issuers.push((name, is.public_key.get_ref().into()));
        }
        if issuers.is_empty() {
            self.problem(
                &r.issuers,
                "dr.issuers".into(),
                "list at least one issuer, e.g. [{ name = \"operator\", public_key = \"/etc/gridgate/operator.pub\" }]".into(),
            );
        }
        Some(DrConfig { issuers })
    }

    pub(super) fn check_loads(
        &mut self,
        raw: &[RawLoad],
        points: &[String],
        writable: &[String],
    ) -> Vec<LoadConfig> {
        let mut loads: Vec<LoadConfig> = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let name = l.name.get_ref().trim().to_string();
            if !valid_name(&name) {
                self.problem(
                    &l.name,
                    format!("load[{i}].name"),
                    "use letters, digits, '-', '_' or '.'".into(),
                );
            } else if loads.iter().any(|x| x.name == name) {
                self.problem(
                    &l.name,
                    format!("load[{i}].name"),
                    format!("a load named {name:?} is already defined"),
                );
            }
            let meter = l.meter.get_ref().clone();
            if !points.contains(&meter) {
                self.problem(
                    &l.meter,
                    format!("load[{i}].meter"),
                    format!(
                        "{meter:?} is not a point of this gateway; write device/point, e.g. meter-1/active_power"
                    ),
                );
            }
            let lo = l.min_setpoint.as_ref().map_or(f64::MIN, |v| *v.get_ref());
            let hi = l.max_setpoint.as_ref().map_or(f64::MAX, |v| *v.get_ref());
            if lo > hi || !lo.is_finite() || !hi.is_finite() {
                let at = l.min_setpoint.as_ref().or(l.max_setpoint.as_ref());
                if let Some(at) = at {
                    self.problem(
                        at,
                        format!("load[{i}].min_setpoint"),
                        format!("min_setpoint {lo} is above max_setpoint {hi}"),
                    );
                }
            }
            let max_shed_kw = match &l.max_shed_kw {
                Some(v) if !(*v.get_ref() > 0.0 && v.get_ref().is_finite()) => {
                    self.problem(
                        v,
                        format!("load[{i}].max_shed_kw"),
                        "must be a positive number of kW".into(),
                    );
                    0.0
                }
                Some(v) => *v.get_ref(),
                None => f64::MAX,
            };
            let auth = match (&l.password, &l.operator) {
                (None, _) => None,
                (Some(p), o) => {
                    let password = four_bytes(p.get_ref());
                    let operator = o.as_ref().map_or(Some([0; 4]), |o| four_bytes(o.get_ref()));
                    match (password, operator) {
                        (Some(password), Some(operator)) => Some(RemoteAuth { password, operator }),
                        _ => {
                            self.problem(
                                p,
                                format!("load[{i}].password"),
                                "password and operator are 8 hex digits each, as sent (e.g. password = \"02123456\")".into(),
                            );
                            None
                        }
                    }
                }
            };
            let control = match &l.control {
                None => None,
                Some(c) if writable.contains(c.get_ref()) => {
                    let (device, point) = c.get_ref().split_once('/').unwrap_or(("", ""));
                    if point == RELAY_POINT && auth.is_none() {
                        self.problem(
                            c,
                            format!("load[{i}].control"),
                            "a DL/T 645 meter's relay needs the remote-control password (password = \"PAP0P1P2\", operator = \"C0C1C2C3\")".into(),
                        );
                    }
                    Some(ControlPoint {
                        device: device.to_string(),
                        point: point.to_string(),
                        auth,
                    })
                }
                Some(c) => {
                    self.problem(
                        c,
                        format!("load[{i}].control"),
                        format!(
                            "{:?} is not a writable point: write device/point of a Modbus coil or holding register, or meter/relay of a DL/T 645 meter",
                            c.get_ref()
                        ),
                    );
                    None
                }
            };
            let rated_kw = match &l.rated_kw {
                Some(v) if !(*v.get_ref() > 0.0 && v.get_ref().is_finite()) => {
                    self.problem(
                        v,
                        format!("load[{i}].rated_kw"),
                        "must be a positive number of kW".into(),
                    );
                    None
                }
                v => v.as_ref().map(|v| *v.get_ref()),
            };
            loads.push(LoadConfig {
                name,
                meter,
                setpoint_range: (lo, hi),
                max_shed_kw,
                max_events_per_day: l
                    .max_events_per_day
                    .as_ref()
                    .map_or(DEFAULT_MAX_EVENTS_PER_DAY, |v| *v.get_ref()),
                control,
                rated_kw,
            });
        }
        loads
    }
}
