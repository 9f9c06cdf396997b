//! `[dr]` (whose signed events the gateway accepts) and `[[load]]` (the loads it may move,
//! with their safety limits).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, valid_name};

/// `[dr]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDr {
    pub issuers: Spanned<Vec<RawIssuer>>,
    #[serde(default)]
    pub program: Vec<RawProgram>,
    pub command_topic: Option<Spanned<String>>,
    pub reply_topic: Option<Spanned<String>>,
    pub report_topic: Option<Spanned<String>>,
}

/// `[[dr.program]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgram {
    pub name: Spanned<String>,
    pub baseline: Spanned<String>,
    pub before: Option<Spanned<String>>,
    pub intervals: Option<Spanned<Vec<Spanned<String>>>>,
    pub high_x: Option<Spanned<u32>>,
    pub high_y: Option<Spanned<u32>>,
    pub adjust_window: Option<Spanned<String>>,
    pub adjust_cap: Option<Spanned<f64>>,
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
    pub command_topic: Option<Spanned<String>>,
    pub ack_topic: Option<Spanned<String>>,
    pub ack_timeout: Option<Spanned<String>>,
    pub min_on: Option<Spanned<String>>,
    pub min_off: Option<Spanned<String>>,
    pub override_point: Option<Spanned<String>>,
}

/// `[dr]`: the issuers whose signed events the gateway accepts, and the programs whose
/// rules measure them.
#[derive(Debug, Clone, PartialEq)]
pub struct DrConfig {
    /// (name, PEM public key file), as `gridgate keygen` writes them.
    pub issuers: Vec<(String, PathBuf)>,
    /// `[[dr.program]]`; when none is listed every program is measured by
    /// [`ProgramConfig::default_for`].
    pub programs: Vec<ProgramConfig>,
    /// Where signed events and cancels (`gridgate.v1.DrCommand`) arrive on the `[uplink]`
    /// broker; none: only over gRPC.
    pub command_topic: Option<String>,
    /// Where the answers (`gridgate.v1.DispatchReply`) go (default `<command_topic>/reply`).
    pub reply_topic: String,
    /// Under which signed performance reports are published on the `[uplink]` broker,
    /// retained, as `<report_topic>/<issuer>/<event id>` (default `gridgate/<id>/dr/reports`).
    pub report_topic: String,
}

impl DrConfig {
    /// The rules of `program`: its `[[dr.program]]`, or the defaults when the config lists
    /// none; `None` for a program the config does not list.
    pub fn program(&self, name: &str) -> Option<ProgramConfig> {
        if self.programs.is_empty() {
            return Some(ProgramConfig::default_for(name));
        }
        self.programs.iter().find(|p| p.name == name).cloned()
    }
}

/// How a program measures an event's load reduction.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramConfig {
    /// The name events carry.
    pub name: String,
    /// The baseline method.
    pub baseline: BaselineConfig,
    /// Interval lengths reported (1 and 15 minutes by default).
    pub intervals: Vec<Duration>,
}

/// Baseline methods (docs/dr-operator.md).
#[derive(Debug, Clone, PartialEq)]
pub enum BaselineConfig {
    /// Meter-before/meter-after: the average over `before` just before the start.
    MeterBefore {
        /// The window before the start.
        before: Duration,
    },
    /// The `x` highest of the last `y` similar days (weekdays with weekdays, weekend days with
    /// weekend days) at the event's time of day; where fewer than `x` days have data the load
    /// falls back to meter-before over `before`.
    HighXOfY {
        /// Days averaged.
        x: u32,
        /// Days looked at.
        y: u32,
        /// Fallback window.
        before: Duration,
        /// Day-of adjustment: the ratio of the event day's load to the baseline days' over
        /// this window before the start, capped at 1 ± `cap`.
        adjust: Option<(Duration, f64)>,
    },
}

/// Meter-before window when the config does not say.
pub const DEFAULT_BEFORE: Duration = Duration::from_secs(600);
/// Interval lengths when the config does not say.
pub const DEFAULT_INTERVALS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(900)];
/// Furthest back a "high X of Y" baseline looks for similar days.
pub const MAX_LOOKBACK_DAYS: u32 = 30;

impl ProgramConfig {
    /// Meter-before over 10 minutes, 1- and 15-minute intervals.
    pub fn default_for(name: &str) -> Self {
        ProgramConfig {
            name: name.to_string(),
            baseline: BaselineConfig::MeterBefore {
                before: DEFAULT_BEFORE,
            },
            intervals: DEFAULT_INTERVALS.to_vec(),
        }
    }
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

/// A load commanded over MQTT: the gateway publishes `{"id", "value"}` (QoS 1) on
/// `command_topic` of the `[ingest]` broker and waits up to `ack_timeout` for the device's
/// `{"id", "ok", "value", "previous"}` on `ack_topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttControl {
    /// The load's name (for messages).
    pub load: String,
    /// Where commands go.
    pub command_topic: String,
    /// Where the device acknowledges.
    pub ack_topic: String,
    /// Longest wait for the acknowledgement.
    pub ack_timeout: Duration,
}

/// How a load is moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A polled device's writable point (Modbus coil or holding register, DL/T 645 relay),
    /// written by the bus task that owns its line and read back.
    Point(ControlPoint),
    /// A command over MQTT, confirmed by the device's acknowledgement.
    Mqtt(MqttControl),
}

/// `control = "mqtt"`: the load is commanded over MQTT.
pub const MQTT_CONTROL: &str = "mqtt";
/// Acknowledgement wait when the config does not say.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The pseudo-point of a DL/T 645 meter's load switch: 0 trips it, 1 closes it.
pub const RELAY_POINT: &str = "relay";

fn four_bytes(text: &str) -> Option<[u8; 4]> {
    let b = hex::decode(text.trim()).ok()?;
    b.try_into().ok()
}

/// The values a load's control can be written, from its point's table and type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accepts {
    /// A switch (a Modbus coil or `bool` register, a DL/T 645 meter's relay): only `on`
    /// moves it, writing 1 or 0.
    Switch,
    /// A number from the first bound to the second, inclusive: what the register's type and
    /// scale can hold unchanged (any finite number for an MQTT command).
    Range(f64, f64),
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
    /// Largest shed an event may ask for, kW (`rated_kw` when the config does not say).
    pub max_shed_kw: f64,
    /// What its control can be written (a switch, or numbers within a range).
    pub accepts: Accepts,
    /// Events that may move it per UTC day.
    pub max_events_per_day: u32,
    /// What moves it (a Modbus coil or holding register, a DL/T 645 meter's `relay`, or an
    /// MQTT command); a load without one cannot be moved.
    pub control: Option<Control>,
    /// Rated power, kW: maps `shed_kw` onto a setpoint in percent of rated power.
    pub rated_kw: Option<f64>,
    /// Once put back, the load runs at least this long before an event moves it again.
    pub min_on: Duration,
    /// Once moved, the load stays at its target at least this long (an earlier end or cancel
    /// waits for it).
    pub min_off: Duration,
    /// A local switch (`device/point`, a bit or a number) that, while on (true or non-zero),
    /// holds the load under manual override as the admin RPC does.
    pub override_point: Option<String>,
}

/// Events per load per day when the config does not say.
pub const DEFAULT_MAX_EVENTS_PER_DAY: u32 = 2;

impl Checker<'_> {
    /// With `openadr`, the VTN may be the only source of events: no issuer need be listed.
    pub(super) fn check_dr(
        &mut self,
        raw: Option<&RawDr>,
        gateway_id: &str,
        openadr: bool,
    ) -> Option<DrConfig> {
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
        if issuers.is_empty() && !openadr {
            self.problem(
                &r.issuers,
                "dr.issuers".into(),
                "list at least one issuer, e.g. [{ name = \"operator\", public_key = \"/etc/gridgate/operator.pub\" }]".into(),
            );
        }
        let mut programs: Vec<ProgramConfig> = Vec::new();
        for (i, p) in r.program.iter().enumerate() {
            let name = p.name.get_ref().trim().to_string();
            if programs.iter().any(|x| x.name == name) {
                self.problem(
                    &p.name,
                    format!("dr.program[{i}].name"),
                    format!("program {name:?} is listed twice"),
                );
            }
            programs.push(self.check_program(i, p, name));
        }
        let mut topic = |t: &Option<Spanned<String>>, key: &str| match t {
            Some(t) if t.get_ref().is_empty() || t.get_ref().contains(['+', '#']) => {
                self.problem(
                    t,
                    format!("dr.{key}"),
                    "an exact topic, without wildcards".into(),
                );
                None
            }
            t => t.as_ref().map(|t| t.get_ref().clone()),
        };
        let command_topic = topic(&r.command_topic, "command_topic");
        let reply_topic = topic(&r.reply_topic, "reply_topic").unwrap_or_else(|| {
            format!(
                "{}/reply",
                command_topic.as_deref().unwrap_or("gridgate/dr")
            )
        });
        let report_topic = topic(&r.report_topic, "report_topic")
            .unwrap_or_else(|| format!("gridgate/{gateway_id}/dr/reports"));
        Some(DrConfig {
            issuers,
            programs,
            command_topic,
            reply_topic,
            report_topic,
        })
    }

    /// A duration that is zero when not given.
    fn optional_duration(&mut self, v: &Option<Spanned<String>>, key: String) -> Duration {
        match v {
            None => Duration::ZERO,
            some => self.duration(some, key, Duration::ZERO),
        }
    }

    fn check_mqtt_control(
        &mut self,
        i: usize,
        l: &RawLoad,
        c: &Spanned<String>,
        name: &str,
        mqtt_broker: bool,
    ) -> Option<Control> {
        if !mqtt_broker {
            self.problem(
                c,
                format!("load[{i}].control"),
                "an MQTT-commanded load needs [ingest] broker: the gateway publishes its commands there".into(),
            );
        }
        let mut topic = |t: &Option<Spanned<String>>, key: &str| match t {
            Some(t) if !t.get_ref().is_empty() && !t.get_ref().contains(['+', '#']) => {
                Some(t.get_ref().clone())
            }
            Some(t) => {
                self.problem(
                    t,
                    format!("load[{i}].{key}"),
                    "an exact topic, without wildcards".into(),
                );
                None
            }
            None => {
                self.problem(
                    c,
                    format!("load[{i}].{key}"),
                    format!(
                        "control = \"mqtt\" needs {key}, e.g. {key} = \"site/{name}/{}\"",
                        if key == "ack_topic" { "ack" } else { "cmd" }
                    ),
                );
                None
            }
        };
        let command_topic = topic(&l.command_topic, "command_topic");
        let ack_topic = topic(&l.ack_topic, "ack_topic");
        let ack_timeout = self.duration(
            &l.ack_timeout,
            format!("load[{i}].ack_timeout"),
            DEFAULT_ACK_TIMEOUT,
        );
        Some(Control::Mqtt(MqttControl {
            load: name.to_string(),
            command_topic: command_topic?,
            ack_topic: ack_topic?,
            ack_timeout,
        }))
    }

    fn check_program(&mut self, i: usize, p: &RawProgram, name: String) -> ProgramConfig {
        let before = self.duration(&p.before, format!("dr.program[{i}].before"), DEFAULT_BEFORE);
        let mut intervals = Vec::new();
        for (j, d) in p.intervals.iter().flat_map(|v| v.get_ref()).enumerate() {
            let key = format!("dr.program[{i}].intervals[{j}]");
            let len = self.duration(&Some(d.clone()), key.clone(), Duration::from_secs(60));
            if len.subsec_millis() != 0 {
                self.problem(d, key, "an interval is a whole number of seconds".into());
            }
            intervals.push(len);
        }
        if intervals.is_empty() {
            if let Some(v) = &p.intervals {
                self.problem(
                    v,
                    format!("dr.program[{i}].intervals"),
                    "list at least one interval length, e.g. [\"1m\", \"15m\"]".into(),
                );
            }
            intervals = DEFAULT_INTERVALS.to_vec();
        }
        let baseline = match p.baseline.get_ref().as_str() {
            "meter-before" => BaselineConfig::MeterBefore { before },
            "high-x-of-y" => {
                let x = p.high_x.as_ref().map_or(5, |v| *v.get_ref());
                let y = p.high_y.as_ref().map_or(10, |v| *v.get_ref());
                if x == 0 || x > y || y > MAX_LOOKBACK_DAYS {
                    let at = p.high_x.as_ref().or(p.high_y.as_ref());
                    if let Some(at) = at {
                        self.problem(
                            at,
                            format!("dr.program[{i}].high_x"),
                            format!("need 1 <= high_x <= high_y <= {MAX_LOOKBACK_DAYS}, found {x} of {y}"),
                        );
                    }
                }
                let adjust = match (&p.adjust_window, &p.adjust_cap) {
                    (None, _) => None,
                    (w, cap) => {
                        let window = self.duration(
                            w,
                            format!("dr.program[{i}].adjust_window"),
                            Duration::from_secs(3600),
                        );
                        let cap_v = cap.as_ref().map_or(0.2, |c| *c.get_ref());
                        if !(0.0..=1.0).contains(&cap_v) {
                            if let Some(c) = cap {
                                self.problem(
                                    c,
                                    format!("dr.program[{i}].adjust_cap"),
                                    "a fraction between 0 and 1 (0.2 caps the adjustment at ±20 %)"
                                        .into(),
                                );
                            }
                        }
                        Some((window, cap_v.clamp(0.0, 1.0)))
                    }
                };
                BaselineConfig::HighXOfY {
                    x,
                    y,
                    before,
                    adjust,
                }
            }
            other => {
                self.problem(
                    &p.baseline,
                    format!("dr.program[{i}].baseline"),
                    format!("{other:?} is not a baseline method: write \"meter-before\" or \"high-x-of-y\""),
                );
                BaselineConfig::MeterBefore { before }
            }
        };
        ProgramConfig {
            name,
            baseline,
            intervals,
        }
    }

    pub(super) fn check_loads(
        &mut self,
        raw: &[RawLoad],
        points: &[String],
        writable: &[(String, Accepts)],
        mqtt_broker: bool,
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
            let mut accepts = Accepts::Range(f64::MIN, f64::MAX);
            let control = match &l.control {
                None => None,
                Some(c) if c.get_ref() == MQTT_CONTROL => {
                    self.check_mqtt_control(i, l, c, &name, mqtt_broker)
                }
                Some(c) if writable.iter().any(|(w, _)| w == c.get_ref()) => {
                    if let Some((_, a)) = writable.iter().find(|(w, _)| w == c.get_ref()) {
                        accepts = *a;
                    }
                    let (device, point) = c.get_ref().split_once('/').unwrap_or(("", ""));
                    if point == RELAY_POINT && auth.is_none() {
                        self.problem(
                            c,
                            format!("load[{i}].control"),
                            "a DL/T 645 meter's relay needs the remote-control password (password = \"PAP0P1P2\", operator = \"C0C1C2C3\")".into(),
                        );
                    }
                    Some(Control::Point(ControlPoint {
                        device: device.to_string(),
                        point: point.to_string(),
                        auth,
                    }))
                }
                Some(c) => {
                    self.problem(
                        c,
                        format!("load[{i}].control"),
                        format!(
                            "{:?} is not a writable point: write device/point of a Modbus coil or holding register, meter/relay of a DL/T 645 meter, or \"mqtt\" with command_topic and ack_topic",
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
            let max_shed_kw = match &l.max_shed_kw {
                Some(v) if !(*v.get_ref() > 0.0 && v.get_ref().is_finite()) => {
                    self.problem(
                        v,
                        format!("load[{i}].max_shed_kw"),
                        "must be a positive number of kW".into(),
                    );
                    0.0
                }
                Some(v) if rated_kw.is_some_and(|r| *v.get_ref() > r) => {
                    self.problem(
                        v,
                        format!("load[{i}].max_shed_kw"),
                        format!(
                            "{} kW is more than the load's rated_kw ({} kW): a load cannot shed more than it draws",
                            v.get_ref(),
                            rated_kw.unwrap_or_default()
                        ),
                    );
                    0.0
                }
                Some(v) => *v.get_ref(),
                None => rated_kw.unwrap_or(f64::MAX),
            };
            let min_on = self.optional_duration(&l.min_on, format!("load[{i}].min_on"));
            let min_off = self.optional_duration(&l.min_off, format!("load[{i}].min_off"));
            let override_point = match &l.override_point {
                Some(p) if !points.contains(p.get_ref()) => {
                    self.problem(
                        p,
                        format!("load[{i}].override_point"),
                        format!(
                            "{:?} is not a point of this gateway; write device/point of the switch, e.g. panel/dr_inhibit",
                            p.get_ref()
                        ),
                    );
                    None
                }
                p => p.as_ref().map(|p| p.get_ref().clone()),
            };
            loads.push(LoadConfig {
                name,
                meter,
                setpoint_range: (lo, hi),
                max_shed_kw,
                accepts,
                max_events_per_day: l
                    .max_events_per_day
                    .as_ref()
                    .map_or(DEFAULT_MAX_EVENTS_PER_DAY, |v| *v.get_ref()),
                control,
                rated_kw,
                min_on,
                min_off,
                override_point,
            });
        }
        loads
    }
}
