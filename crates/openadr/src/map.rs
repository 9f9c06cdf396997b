//! The mapping rules (pure): an OpenADR 3 event, as the VTN sent it, becomes one gateway DR
//! event per interval, or is refused whole with the reason. The payloads the gateway acts on
//! and how they move each load are the config's `[[openadr.load]]` (docs/openadr.md has the
//! table); everything else the VTN may send is counted and left alone.

use gridgate_config::openadr::{OpenAdrConfig, SimpleLevels};
use gridgate_proto::v1 as pb;
use openleadr_wire::Event;
use openleadr_wire::event::{EventType, EventValuesMap};
use openleadr_wire::values_map::Value;
use thiserror::Error;

/// The longest interval accepted: the DR desk refuses longer events too (a unit mistake).
pub const MAX_INTERVAL_S: i64 = 86_400;
/// More intervals than this in one event is not a DR event but a tariff: refused.
pub const MAX_INTERVALS: usize = 288;
/// Any kW figure above this is taken for a unit mistake (100 MW behind one meter).
pub const MAX_KW: f64 = 100_000.0;

/// One interval of a VTN event, as the gateway will act on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The interval's id in the event.
    pub interval_id: i32,
    /// Start, ms since the epoch.
    pub start_ms: i64,
    /// End, ms since the epoch.
    pub end_ms: i64,
    /// What each load does (none: the interval moves nothing, e.g. SIMPLE level 0).
    pub targets: Vec<pb::LoadTarget>,
    /// A PRICE payload's value, kept as a price signal.
    pub price: Option<f64>,
}

/// An event translated: its intervals, and the payload types no load follows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Translated {
    /// Per interval, in the event's order.
    pub intervals: Vec<Planned>,
    /// Payload types the config maps to nothing (counted, logged once per event).
    pub unmapped: Vec<String>,
    /// The gateway loads the event's targets select.
    pub loads: Vec<String>,
}

/// Why an event is refused whole (nothing of it moves).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Bad {
    /// The targets name neither this VEN nor a mapped load.
    #[error("targets {0:?} name no load of this gateway and not this VEN")]
    UnknownTarget(String),
    /// Timing that cannot be placed.
    #[error("malformed interval: {0}")]
    Interval(String),
    /// A value no real dispatch carries.
    #[error("absurd value: {0}")]
    Value(String),
    /// Units the gateway does not convert.
    #[error("unit {0}: the gateway takes kW (KW or W) for capacity limits")]
    Unit(String),
}

impl Bad {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Bad::UnknownTarget(_) => "unknown_target",
            Bad::Interval(_) => "malformed_interval",
            Bad::Value(_) => "absurd_value",
            Bad::Unit(_) => "unit",
        }
    }
}

/// ISO 8601 durations as seconds, for the lengths DR uses: years and months have no fixed
/// length and no DR interval lasts one, so they are refused here rather than computed.
pub fn duration_s(d: &openleadr_wire::Duration) -> Result<i64, Bad> {
    let text = serde_json::to_value(d)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let p: iso8601_duration::Duration = text
        .parse()
        .map_err(|_| Bad::Interval(format!("duration {text:?} is not ISO 8601")))?;
    if p.year != 0.0 || p.month != 0.0 {
        return Err(Bad::Interval(format!(
            "duration {text} is longer than a day ({MAX_INTERVAL_S} s)"
        )));
    }
    let s = f64::from(p.day) * 86_400.0
        + f64::from(p.hour) * 3_600.0
        + f64::from(p.minute) * 60.0
        + f64::from(p.second);
    if !s.is_finite() || s <= 0.0 {
        return Err(Bad::Interval(format!("duration {text} is not positive")));
    }
    if s > MAX_INTERVAL_S as f64 {
        return Err(Bad::Interval(format!(
            "duration {text} is longer than a day ({MAX_INTERVAL_S} s)"
        )));
    }
    Ok(s.round() as i64)
}

/// A start of 0001-01-01 means "now" in OpenADR 3.
fn start_ms(start: &chrono::DateTime<chrono::Utc>, now_ms: i64) -> i64 {
    use chrono::Datelike;
    if start.year() <= 1 {
        now_ms
    } else {
        start.timestamp_millis()
    }
}

/// The loads the event's targets select: every mapped load when it names none, or this VEN
/// (or a target the VTN gave this VEN); else the loads it names. Targets naming neither are
/// other VENs' (one event often goes to a group): left to them, unless nothing here is named.
fn selected<'a>(
    event: &Event,
    cfg: &'a OpenAdrConfig,
    ven_targets: &[String],
) -> Result<Vec<&'a gridgate_config::openadr::OpenAdrLoad>, Bad> {
    let targets = &event.content.targets;
    if targets.is_empty() {
        return Ok(cfg.loads.iter().collect());
    }
    let names = |t: &str| t == cfg.ven_name || ven_targets.iter().any(|v| v == t);
    if targets.iter().any(|t| names(t.as_str())) {
        return Ok(cfg.loads.iter().collect());
    }
    let named: Vec<_> = cfg
        .loads
        .iter()
        .filter(|l| targets.iter().any(|t| t.as_str() == l.load))
        .collect();
    if named.is_empty() {
        let list: Vec<&str> = targets.iter().map(|t| t.as_str()).collect();
        return Err(Bad::UnknownTarget(list.join(", ")));
    }
    Ok(named)
}

/// The single number of a payload, in kW where `kw` says so.
fn one_number(p: &EventValuesMap, what: &str) -> Result<f64, Bad> {
    let [v] = p.values.as_slice() else {
        return Err(Bad::Value(format!(
            "{what} carries {} values, not one",
            p.values.len()
        )));
    };
    let x = match v {
        Value::Number(x) => *x,
        Value::Integer(i) => *i as f64,
        other => {
            return Err(Bad::Value(format!(
                "{what} value {other:?} is not a number"
            )));
        }
    };
    if !x.is_finite() {
        return Err(Bad::Value(format!("{what} value {x} is not finite")));
    }
    Ok(x)
}

/// How many kW one unit of a capacity payload is, from the event's payload descriptors.
fn kw_per_unit(event: &Event, ty: &EventType) -> Result<f64, Bad> {
    let unit = event
        .content
        .payload_descriptors
        .iter()
        .flatten()
        .find(|d| d.payload_type == *ty)
        .and_then(|d| d.units.as_ref());
    let Some(unit) = unit else { return Ok(1.0) };
    let name = serde_json::to_value(unit)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match name.as_str() {
        "KW" => Ok(1.0),
        "W" => Ok(0.001),
        "MW" => Ok(1000.0),
        _ => Err(Bad::Unit(name)),
    }
}

/// Translates `event` at `now_ms`. `ven_targets` are the targets the VTN gave this VEN.
pub fn translate(
    event: &Event,
    cfg: &OpenAdrConfig,
    ven_targets: &[String],
    now_ms: i64,
) -> Result<Translated, Bad> {
    let loads = selected(event, cfg, ven_targets)?;
    let intervals = event.content.intervals.as_deref().unwrap_or_default();
    if intervals.len() > MAX_INTERVALS {
        return Err(Bad::Interval(format!(
            "{} intervals (at most {MAX_INTERVALS})",
            intervals.len()
        )));
    }
    let default_period = event.content.interval_period.as_ref();
    let default_len = default_period
        .and_then(|p| p.duration.as_ref())
        .map(duration_s)
        .transpose()?;
    let mut out = Translated {
        loads: loads.iter().map(|l| l.load.clone()).collect(),
        ..Translated::default()
    };
    // Intervals without a period of their own follow one another from the event's start.
    let mut next_start = default_period.map(|p| start_ms(&p.start, now_ms));
    for interval in intervals {
        let own = interval.interval_period.as_ref();
        let start = match own {
            Some(p) => start_ms(&p.start, now_ms),
            None => next_start.ok_or_else(|| {
                Bad::Interval(format!(
                    "interval {} has no start, and the event no intervalPeriod",
                    interval.id
                ))
            })?,
        };
        let len_s = match own.and_then(|p| p.duration.as_ref()) {
            Some(d) => duration_s(d)?,
            None => default_len.ok_or_else(|| {
                Bad::Interval(format!(
                    "interval {} has no duration, and the event none",
                    interval.id
                ))
            })?,
        };
        let end = start.saturating_add(len_s * 1000);
        next_start = Some(end);
        let mut planned = Planned {
            interval_id: interval.id,
            start_ms: start,
            end_ms: end,
            targets: Vec::new(),
            price: None,
        };
        for p in &interval.payloads {
            apply(event, p, &loads, &mut planned, &mut out.unmapped)?;
        }
        out.intervals.push(planned);
    }
    if out.intervals.iter().any(|a| {
        out.intervals
            .iter()
            .filter(|b| b.interval_id == a.interval_id)
            .count()
            > 1
    }) {
        return Err(Bad::Interval("two intervals share an id".into()));
    }
    Ok(out)
}

/// One payload of an interval onto the selected loads.
fn apply(
    event: &Event,
    p: &EventValuesMap,
    loads: &[&gridgate_config::openadr::OpenAdrLoad],
    planned: &mut Planned,
    unmapped: &mut Vec<String>,
) -> Result<(), Bad> {
    use pb::load_target::Action;
    let mut set = |load: &str, action: Action| {
        planned.targets.retain(|t| t.load != load);
        planned.targets.push(pb::LoadTarget {
            load: load.to_string(),
            action: Some(action),
        });
    };
    match &p.value_type {
        EventType::Simple => {
            let level = one_number(p, "SIMPLE")?;
            if level.fract() != 0.0 || !(0.0..=3.0).contains(&level) {
                return Err(Bad::Value(format!("SIMPLE level {level} (0 to 3)")));
            }
            let i = level as usize;
            for l in loads {
                match &l.simple {
                    Some(SimpleLevels::ShedKw(kw)) if kw[i] > 0.0 => {
                        set(&l.load, Action::ShedKw(kw[i]))
                    }
                    Some(SimpleLevels::Setpoint(sp)) if i > 0 => {
                        set(&l.load, Action::Setpoint(sp[i]))
                    }
                    _ => {}
                }
            }
        }
        ty @ (EventType::ImportCapacityLimit | EventType::ExportCapacityLimit) => {
            let import = *ty == EventType::ImportCapacityLimit;
            let what = if import {
                "IMPORT_CAPACITY_LIMIT"
            } else {
                "EXPORT_CAPACITY_LIMIT"
            };
            let kw = one_number(p, what)? * kw_per_unit(event, ty)?;
            if !(0.0..=MAX_KW).contains(&kw) {
                return Err(Bad::Value(format!("{what} {kw} kW (0 to {MAX_KW})")));
            }
            for l in loads {
                if (import && l.import_limit) || (!import && l.export_limit) {
                    set(&l.load, Action::Setpoint(kw));
                }
            }
            if !loads
                .iter()
                .any(|l| (import && l.import_limit) || (!import && l.export_limit))
            {
                unmapped.push(what.to_string());
            }
        }
        EventType::Price => {
            planned.price = Some(one_number(p, "PRICE")?);
        }
        other => {
            let name = serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{other:?}"));
            if !unmapped.contains(&name) {
                unmapped.push(name);
            }
        }
    }
    Ok(())
}

/// The gateway's priority for an OpenADR one: OpenADR's 0 is the highest and unspecified
/// the lowest; the gateway's higher number wins.
pub fn priority(event: &Event) -> i32 {
    match serde_json::to_value(event.content.priority)
        .ok()
        .and_then(|v| v.as_i64())
    {
        Some(p) => 1000 - p.clamp(0, 1000) as i32,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_config::openadr::OpenAdrLoad;
    use pb::load_target::Action;

    fn cfg() -> OpenAdrConfig {
        OpenAdrConfig {
            vtn: "http://127.0.0.1:3000/".into(),
            name: "utility".into(),
            ven_name: "site-042".into(),
            client_id: "ven".into(),
            client_secret_file: "/dev/null".into(),
            token_url: None,
            ca_file: None,
            programs: vec!["peak".into()],
            poll: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(5),
            notifications: true,
            loads: vec![
                OpenAdrLoad {
                    load: "chiller".into(),
                    simple: Some(SimpleLevels::ShedKw(vec![0.0, 5.0, 10.0, 20.0])),
                    import_limit: false,
                    export_limit: false,
                },
                OpenAdrLoad {
                    load: "ems".into(),
                    simple: None,
                    import_limit: true,
                    export_limit: false,
                },
            ],
        }
    }

    fn event(extra: &str) -> Event {
        let sep = if extra.is_empty() { "" } else { "," };
        let text = format!(
            r#"{{"id":"ev-1","createdDateTime":"2027-01-15T07:00:00Z",
               "modificationDateTime":"2027-01-15T07:00:00Z","objectType":"EVENT",
               "programID":"p-1"{sep}{extra}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn simple_levels_shed_and_sequential_intervals() {
        let e = event(
            r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
               "intervals":[{"id":0,"payloads":[{"type":"SIMPLE","values":[2]}]},
                            {"id":1,"payloads":[{"type":"SIMPLE","values":[0]}]}]"#,
        );
        let t = translate(&e, &cfg(), &[], T0).unwrap();
        assert_eq!(t.intervals.len(), 2);
        let start = chrono::DateTime::parse_from_rfc3339("2027-01-15T08:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(t.intervals[0].start_ms, start);
        assert_eq!(t.intervals[0].end_ms, start + 900_000);
        assert_eq!(t.intervals[1].start_ms, start + 900_000);
        assert_eq!(
            t.intervals[0].targets,
            vec![pb::LoadTarget {
                load: "chiller".into(),
                action: Some(Action::ShedKw(10.0))
            }]
        );
        // Level 0 moves nothing.
        assert!(t.intervals[1].targets.is_empty());
    }

    #[test]
    fn import_limit_in_watts_is_a_setpoint_in_kw_and_price_is_kept() {
        let e = event(
            r#""payloadDescriptors":[{"payloadType":"IMPORT_CAPACITY_LIMIT","units":"W"}],
               "intervalPeriod":{"start":"0001-01-01T00:00:00Z","duration":"PT1H"},
               "intervals":[{"id":7,"payloads":[{"type":"IMPORT_CAPACITY_LIMIT","values":[40000.0]},
                                               {"type":"PRICE","values":[0.31]}]}]"#,
        );
        let t = translate(&e, &cfg(), &[], T0).unwrap();
        let i = &t.intervals[0];
        assert_eq!(i.start_ms, T0, "0001-01-01 is now");
        assert_eq!(i.end_ms, T0 + 3_600_000);
        assert_eq!(i.price, Some(0.31));
        assert_eq!(
            i.targets,
            vec![pb::LoadTarget {
                load: "ems".into(),
                action: Some(Action::Setpoint(40.0))
            }]
        );
    }

    #[test]
    fn targets_select_loads_and_unknown_ones_refuse_the_event() {
        let body = r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
               "intervals":[{"id":0,"payloads":[{"type":"SIMPLE","values":[3]},
                    {"type":"IMPORT_CAPACITY_LIMIT","values":[50.0]}]}]"#;
        let named = event(&format!(r#""targets":["ems"],{body}"#));
        let t = translate(&named, &cfg(), &[], T0).unwrap();
        assert_eq!(t.intervals[0].targets.len(), 1);
        assert_eq!(t.intervals[0].targets[0].load, "ems");
        let ven = event(&format!(r#""targets":["group-north"],{body}"#));
        let t = translate(&ven, &cfg(), &["group-north".into()], T0).unwrap();
        assert_eq!(
            t.intervals[0].targets.len(),
            2,
            "a VEN target selects every load"
        );
        let group = event(&format!(r#""targets":["ems","site-043"],{body}"#));
        let t = translate(&group, &cfg(), &[], T0).unwrap();
        assert_eq!(
            t.intervals[0].targets.len(),
            1,
            "another VEN's target is its own"
        );
        let other = event(&format!(r#""targets":["somebody-else"],{body}"#));
        assert_eq!(
            translate(&other, &cfg(), &[], T0).unwrap_err().kind(),
            "unknown_target"
        );
    }

    #[test]
    fn bad_input_is_refused_with_its_reason() {
        let cases = [
            (
                r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
                   "intervals":[{"id":0,"payloads":[{"type":"SIMPLE","values":[7]}]}]"#,
                "absurd_value",
            ),
            (
                r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
                   "intervals":[{"id":0,"payloads":[{"type":"IMPORT_CAPACITY_LIMIT","values":[-5.0]}]}]"#,
                "absurd_value",
            ),
            (
                r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
                   "intervals":[{"id":0,"payloads":[{"type":"IMPORT_CAPACITY_LIMIT","values":[1.0,2.0]}]}]"#,
                "absurd_value",
            ),
            (
                r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"P9999Y"},
                   "intervals":[{"id":0,"payloads":[{"type":"SIMPLE","values":[1]}]}]"#,
                "malformed_interval",
            ),
            (
                r#""intervals":[{"id":0,"payloads":[{"type":"SIMPLE","values":[1]}]}]"#,
                "malformed_interval",
            ),
            (
                r#""payloadDescriptors":[{"payloadType":"IMPORT_CAPACITY_LIMIT","units":"KWH"}],
                   "intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
                   "intervals":[{"id":0,"payloads":[{"type":"IMPORT_CAPACITY_LIMIT","values":[5.0]}]}]"#,
                "unit",
            ),
        ];
        for (body, kind) in cases {
            let got = translate(&event(body), &cfg(), &[], T0).unwrap_err();
            assert_eq!(got.kind(), kind, "{body}: {got}");
        }
    }

    #[test]
    fn unknown_payload_types_move_nothing_and_are_named() {
        let e = event(
            r#""intervalPeriod":{"start":"2027-01-15T08:00:00Z","duration":"PT15M"},
               "intervals":[{"id":0,"payloads":[{"type":"GHG","values":[120.0]},
                                                {"type":"X-VENDOR-MODE","values":["eco"]}]}]"#,
        );
        let t = translate(&e, &cfg(), &[], T0).unwrap();
        assert!(t.intervals[0].targets.is_empty());
        assert_eq!(
            t.unmapped,
            vec!["GHG".to_string(), "X-VENDOR-MODE".to_string()]
        );
    }

    #[test]
    fn priorities_keep_their_order() {
        let high = event(r#""priority":0"#);
        let low = event(r#""priority":9"#);
        let none = event("");
        assert!(priority(&high) > priority(&low));
        assert!(priority(&low) > priority(&none));
    }
}
