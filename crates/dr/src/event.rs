//! The acceptance rules for a signed DR event. An event moves a load only if it is signed by
//! an issuer key the config trusts, is inside its validity window, was never accepted before
//! and every target names a known load within that load's limits (docs/dev/architecture.md, dr).
//! Each refusal says exactly why, as a [`pb::Refusal`] code and a sentence.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;

use gridgate_config::{Accepts, LoadConfig};

/// The issuers whose events the gateway accepts, by name.
#[derive(Debug, Clone, Default)]
pub struct Trust(pub BTreeMap<String, VerifyingKey>);

/// An event that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The decoded event.
    pub event: pb::DrEvent,
    /// The start the gateway schedules (`start_ms`, or now for "as soon as accepted").
    pub start_ms: i64,
    /// The scheduled end.
    pub end_ms: i64,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Refused {
    /// Not a decodable event, or a field out of range.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The issuer is not trusted here.
    #[error("issuer {0:?} is not trusted by this gateway ([dr] issuers)")]
    UnknownIssuer(String),
    /// The signature does not verify.
    #[error("the signature does not verify with issuer {0:?}'s key")]
    BadSignature(String),
    /// Too late.
    #[error("{0}")]
    Expired(String),
    /// Accepted before.
    #[error("event {id:?} of issuer {issuer:?} was accepted before (replay)")]
    Replayed {
        issuer: String,
        /// Event id.
        id: String,
    },
    /// A target names a load this gateway does not control.
    #[error("load {0:?} is not controlled by this gateway ([[load]])")]
    UnknownLoad(String),
    /// The event's program is not one the config lists.
    #[error("program {0:?} is not one this gateway measures ([[dr.program]])")]
    UnknownProgram(String),
    /// The event names its gateways and this one is not among them.
    #[error("the event is for {named} only, not this gateway ({me:?})")]
    NotAddressed {
        /// This gateway's id.
        me: String,
        /// The gateways it names, listed.
        named: String,
    },
    /// A target breaks a load's limit.
    #[error("load {load:?}: {why}")]
    Limit {
        /// The load.
        load: String,
        /// The limit broken.
        why: String,
    },
}

impl Refused {
    /// The wire code.
    pub fn code(&self) -> pb::Refusal {
        match self {
            Refused::Malformed(_) => pb::Refusal::Malformed,
            Refused::UnknownIssuer(_) => pb::Refusal::UnknownIssuer,
            Refused::BadSignature(_) => pb::Refusal::BadSignature,
            Refused::Expired(_) => pb::Refusal::Expired,
            Refused::Replayed { .. } => pb::Refusal::Replayed,
            Refused::UnknownLoad(_) => pb::Refusal::UnknownLoad,
            Refused::Limit { .. } => pb::Refusal::Limit,
            Refused::UnknownProgram(_) => pb::Refusal::UnknownProgram,
            Refused::NotAddressed { .. } => pb::Refusal::NotAddressed,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "malformed",
            Refused::UnknownIssuer(_) => "unknown_issuer",
            Refused::BadSignature(_) => "bad_signature",
            Refused::Expired(_) => "expired",
            Refused::Replayed { .. } => "replayed",
            Refused::UnknownLoad(_) => "unknown_load",
            Refused::Limit { .. } => "limit",
            Refused::UnknownProgram(_) => "unknown_program",
            Refused::NotAddressed { .. } => "not_addressed",
        }
    }
}

/// The issuer of the market's deliveries (`market`): the gateway's own key, trusted under
/// this name when `[market]` is configured; its events are no program's.
pub const MARKET_ISSUER: &str = "market";

/// The store key of an event: issuer and id, which together are unique for all time.
pub fn event_key(issuer: &str, id: &str) -> String {
    format!("{issuer}\u{0}{id}")
}

/// Longest event accepted: a day (a longer one is almost certainly a unit mistake).
const MAX_DURATION_S: u32 = 86_400;

/// Checks `signed` at `now_ms`. `accepted_before(issuer, id)` says whether that event was
/// accepted already; `events_today(load)` how many events have moved that load in the
/// current UTC day. Signature first: nothing of an unsigned event is believed.
pub fn check(
    signed: &pb::SignedDrEvent,
    now_ms: i64,
    trust: &Trust,
    loads: &[LoadConfig],
    accepted_before: impl Fn(&str, &str) -> bool,
    events_today: impl Fn(&str) -> u32,
) -> Result<Checked, Refused> {
    let event = pb::DrEvent::decode(signed.event.as_slice())
        .map_err(|e| Refused::Malformed(format!("not a gridgate.v1.DrEvent: {e}")))?;
    let key = trust
        .0
        .get(&event.issuer)
        .ok_or_else(|| Refused::UnknownIssuer(event.issuer.clone()))?;
    let signature = Signature::from_slice(&signed.signature)
        .map_err(|_| Refused::BadSignature(event.issuer.clone()))?;
    key.verify(&signed.event, &signature)
        .map_err(|_| Refused::BadSignature(event.issuer.clone()))?;

    if event.id.is_empty() {
        return Err(Refused::Malformed("the event has no id".into()));
    }
    if event.duration_s == 0 || event.duration_s > MAX_DURATION_S {
        return Err(Refused::Malformed(format!(
            "duration_s {} is outside 1..={MAX_DURATION_S}",
            event.duration_s
        )));
    }
    if event.targets.is_empty() {
        return Err(Refused::Malformed("the event names no load".into()));
    }
    if now_ms >= event.expires_ms {
        return Err(Refused::Expired(format!(
            "the event expired {} s ago (expires_ms {})",
            (now_ms - event.expires_ms) / 1000,
            event.expires_ms
        )));
    }
    let start_ms = if event.start_ms == 0 {
        now_ms
    } else {
        event.start_ms
    };
    let end_ms = start_ms.saturating_add(i64::from(event.duration_s) * 1000);
    if end_ms <= now_ms {
        return Err(Refused::Expired(format!(
            "the event ended {} s ago",
            (now_ms - end_ms) / 1000
        )));
    }
    if accepted_before(&event.issuer, &event.id) {
        return Err(Refused::Replayed {
            issuer: event.issuer.clone(),
            id: event.id.clone(),
        });
    }

    let mut named = std::collections::BTreeSet::new();
    for t in &event.targets {
        if !named.insert(t.load.as_str()) {
            return Err(Refused::Malformed(format!(
                "load {:?} is named twice",
                t.load
            )));
        }
        let load = loads
            .iter()
            .find(|l| l.name == t.load)
            .ok_or_else(|| Refused::UnknownLoad(t.load.clone()))?;
        check_target(load, t)?;
        let today = events_today(&load.name);
        if today >= load.max_events_per_day {
            return Err(Refused::Limit {
                load: load.name.clone(),
                why: format!(
                    "already moved by {today} event(s) today (max_events_per_day = {})",
                    load.max_events_per_day
                ),
            });
        }
    }
    Ok(Checked {
        event,
        start_ms,
        end_ms,
    })
}

fn check_target(load: &LoadConfig, t: &pb::LoadTarget) -> Result<(), Refused> {
    if load.control.is_none() {
        return Err(Refused::Limit {
            load: load.name.clone(),
            why: "it has no control to write ([[load]] control = \"device/point\")".into(),
        });
    }
    let Some(action) = &t.action else {
        return Err(Refused::Malformed(format!(
            "load {:?} has no action (shed_kw, setpoint or on)",
            t.load
        )));
    };
    written_value(load, action)
        .map(drop)
        .map_err(|why| Refused::Limit {
            load: load.name.clone(),
            why,
        })
}

/// The value an action writes to `load`'s control, or why the load may not take it: an
/// action its control does not support (a setpoint to a switch), a shed beyond
/// `max_shed_kw` or the rated power, or a value outside the load's setpoint range or what
/// its register can hold. The acceptance and the relay both ask this, so no target is
/// written that the limits refuse, whichever way the event came and whatever was reloaded.
pub fn written_value(load: &LoadConfig, action: &pb::load_target::Action) -> Result<f64, String> {
    use pb::load_target::Action;
    let value = match (*action, load.accepts) {
        (Action::On(on), _) => {
            if on {
                1.0
            } else {
                0.0
            }
        }
        (Action::Setpoint(_) | Action::ShedKw(_), Accepts::Switch) => {
            return Err(
                "its control is a switch (a coil, a bool register or a meter's relay): only on = true or false moves it"
                    .into(),
            );
        }
        (Action::Setpoint(v), Accepts::Range(..)) => v,
        (Action::ShedKw(kw), Accepts::Range(..)) => {
            let Some(rated) = load.rated_kw else {
                return Err("shed_kw needs the load's rated_kw to map it onto a setpoint".into());
            };
            let most = load.max_shed_kw.min(rated);
            if !kw.is_finite() || kw <= 0.0 || kw > most {
                return Err(format!(
                    "shed_kw {kw} is outside 0..={most} (max_shed_kw, at most rated_kw)"
                ));
            }
            // A shed caps the load at rated - shed, in percent of its rated power.
            (rated - kw) / rated * 100.0
        }
    };
    if !value.is_finite() {
        return Err(format!("{value} is not a number to write"));
    }
    if let Accepts::Range(lo, hi) = load.accepts {
        let (min, max) = load.setpoint_range;
        let written = match action {
            Action::On(on) => format!("on = {on} writes {value}"),
            Action::ShedKw(kw) => format!("shed_kw {kw} writes a setpoint of {value:.2} %"),
            Action::Setpoint(_) => format!("setpoint {value}"),
        };
        if value < min || value > max {
            return Err(format!(
                "{written}, outside the allowed range {min}..={max} (min_setpoint, max_setpoint)"
            ));
        }
        if value < lo || value > hi {
            return Err(format!(
                "{written}, which its register cannot hold ({lo}..={hi} with its type and scale)"
            ));
        }
    }
    Ok(value)
}

/// Checks a signed cancel: decodable, from a trusted issuer, signature valid.
pub fn check_cancel(signed: &pb::SignedDrCancel, trust: &Trust) -> Result<pb::DrCancel, Refused> {
    let cancel = pb::DrCancel::decode(signed.cancel.as_slice())
        .map_err(|e| Refused::Malformed(format!("not a gridgate.v1.DrCancel: {e}")))?;
    let key = trust
        .0
        .get(&cancel.issuer)
        .ok_or_else(|| Refused::UnknownIssuer(cancel.issuer.clone()))?;
    let signature = Signature::from_slice(&signed.signature)
        .map_err(|_| Refused::BadSignature(cancel.issuer.clone()))?;
    key.verify(&signed.cancel, &signature)
        .map_err(|_| Refused::BadSignature(cancel.issuer.clone()))?;
    Ok(cancel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_core::Identity;
    use gridgate_core::signed::sign_event;

    const NOW: i64 = 1_795_000_000_000;

    fn load(name: &str) -> LoadConfig {
        LoadConfig {
            name: name.into(),
            meter: format!("{name}/active_power"),
            setpoint_range: (0.0, 100.0),
            max_shed_kw: 50.0,
            // A u16 holding register.
            accepts: Accepts::Range(0.0, 65535.0),
            max_events_per_day: 2,
            control: Some(gridgate_config::Control::Point(
                gridgate_config::ControlPoint {
                    device: name.into(),
                    point: "setpoint".into(),
                    auth: None,
                },
            )),
            rated_kw: Some(100.0),
            min_on: std::time::Duration::ZERO,
            min_off: std::time::Duration::ZERO,
            override_point: None,
        }
    }

    fn event(id: &str) -> pb::DrEvent {
        pb::DrEvent {
            id: id.into(),
            issuer: "operator".into(),
            program: "peak-shave".into(),
            targets: vec![
                pb::LoadTarget {
                    load: "chiller".into(),
                    action: Some(pb::load_target::Action::ShedKw(20.0)),
                },
                pb::LoadTarget {
                    load: "pump".into(),
                    action: Some(pb::load_target::Action::On(false)),
                },
            ],
            start_ms: 0,
            duration_s: 900,
            expires_ms: NOW + 60_000,
            issued_ms: NOW - 1000,
            ..Default::default()
        }
    }

    struct Fixture {
        operator: Identity,
        trust: Trust,
        loads: Vec<LoadConfig>,
    }

    fn fixture() -> Fixture {
        let operator = Identity::generate().expect("key");
        let mut trust = Trust::default();
        trust.0.insert("operator".into(), operator.public());
        Fixture {
            operator,
            trust,
            loads: vec![load("chiller"), load("pump")],
        }
    }

    fn run(f: &Fixture, signed: &pb::SignedDrEvent) -> Result<Checked, Refused> {
        check(signed, NOW, &f.trust, &f.loads, |_, _| false, |_| 0)
    }

    #[test]
    fn a_signed_event_within_limits_is_accepted_and_scheduled() {
        let f = fixture();
        let c = run(&f, &sign_event(&event("e1"), &f.operator)).expect("accepted");
        assert_eq!((c.start_ms, c.end_ms), (NOW, NOW + 900_000));
    }

    #[test]
    fn a_forged_or_tampered_event_is_refused() {
        let f = fixture();
        let forger = Identity::generate().expect("key");
        let forged = sign_event(&event("e1"), &forger);
        assert_eq!(
            run(&f, &forged).unwrap_err().code(),
            pb::Refusal::BadSignature
        );
        // Signed, then a byte changed (the duration): the signature no longer covers it.
        let mut tampered = sign_event(&event("e1"), &f.operator);
        let last = tampered.event.len() - 1;
        tampered.event[last] ^= 1;
        let code = run(&f, &tampered).unwrap_err().code();
        assert!(
            matches!(code, pb::Refusal::BadSignature | pb::Refusal::Malformed),
            "{code:?}"
        );
        let mut short = sign_event(&event("e1"), &f.operator);
        short.signature.truncate(10);
        assert_eq!(
            run(&f, &short).unwrap_err().code(),
            pb::Refusal::BadSignature
        );
    }

    #[test]
    fn unknown_issuer_expired_replayed_unknown_load_and_limits_are_refused() {
        let f = fixture();
        let mut e = event("e1");
        e.issuer = "someone".into();
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r, Refused::UnknownIssuer("someone".into()));

        let mut e = event("e1");
        e.expires_ms = NOW;
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Expired);

        let mut e = event("e1");
        e.start_ms = NOW - 901_000;
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Expired, "{r}");

        let signed = sign_event(&event("e1"), &f.operator);
        let r = check(
            &signed,
            NOW,
            &f.trust,
            &f.loads,
            |i, id| i == "operator" && id == "e1",
            |_| 0,
        )
        .unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Replayed);

        let mut e = event("e1");
        e.targets[1].load = "boiler".into();
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r, Refused::UnknownLoad("boiler".into()));

        let mut e = event("e1");
        e.targets[0].action = Some(pb::load_target::Action::Setpoint(120.0));
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Limit);
        assert!(r.to_string().contains("0..=100"), "{r}");

        let mut e = event("e1");
        e.targets[0].action = Some(pb::load_target::Action::ShedKw(51.0));
        assert_eq!(
            run(&f, &sign_event(&e, &f.operator)).unwrap_err().code(),
            pb::Refusal::Limit
        );

        let r = check(&signed, NOW, &f.trust, &f.loads, |_, _| false, |_| 2).unwrap_err();
        assert!(r.to_string().contains("max_events_per_day = 2"), "{r}");
    }

    /// What each load is asked, as one target, and the refusal's sentence (or the value).
    fn ask(load: &LoadConfig, action: pb::load_target::Action) -> Result<f64, String> {
        written_value(load, &action)
    }

    #[test]
    fn a_target_its_control_cannot_take_or_its_limits_forbid_moves_nothing() {
        use pb::load_target::Action;
        // A setpoint register that must stay between 40 and 100 %.
        let mut setpoint = load("chiller");
        setpoint.setpoint_range = (40.0, 100.0);
        setpoint.rated_kw = Some(55.0);
        setpoint.max_shed_kw = 55.0;
        let off = ask(&setpoint, Action::On(false)).unwrap_err();
        assert!(
            off.contains("on = false writes 0") && off.contains("40..=100"),
            "{off}"
        );
        assert!(
            ask(&setpoint, Action::On(true)).is_err(),
            "on = true would write 1 %"
        );
        assert_eq!(ask(&setpoint, Action::Setpoint(40.0)), Ok(40.0));
        // A shed past the load's rated power, or one that leaves it under its minimum.
        let much = ask(&setpoint, Action::ShedKw(80.0)).unwrap_err();
        assert!(much.contains("0..=55"), "{much}");
        let deep = ask(&setpoint, Action::ShedKw(55.0)).unwrap_err();
        assert!(
            deep.contains("shed_kw 55 writes a setpoint of 0.00 %"),
            "{deep}"
        );
        assert_eq!(ask(&setpoint, Action::ShedKw(27.5)), Ok(50.0));
        // max_shed_kw never lets a shed pass rated_kw.
        setpoint.max_shed_kw = f64::MAX;
        assert!(ask(&setpoint, Action::ShedKw(56.0)).is_err());

        // A value the register's type cannot hold (-5 into a u16) is refused, not clamped.
        let mut wide = load("pump");
        wide.setpoint_range = (-10.0, 100.0);
        let neg = ask(&wide, Action::Setpoint(-5.0)).unwrap_err();
        assert!(
            neg.contains("cannot hold") && neg.contains("0..=65535"),
            "{neg}"
        );
        assert!(ask(&wide, Action::Setpoint(f64::NAN)).is_err());

        // A switch takes on/off only.
        let mut switch = load("pump");
        switch.accepts = Accepts::Switch;
        assert_eq!(ask(&switch, Action::On(false)), Ok(0.0));
        assert_eq!(ask(&switch, Action::On(true)), Ok(1.0));
        let sp = ask(&switch, Action::Setpoint(50.0)).unwrap_err();
        assert!(sp.contains("switch"), "{sp}");
        assert!(ask(&switch, Action::ShedKw(10.0)).is_err());

        // And through the whole acceptance, as REFUSAL_LIMIT.
        let mut f = fixture();
        f.loads[0] = setpoint;
        let mut e = event("e1");
        e.targets[0].action = Some(Action::On(false));
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Limit, "{r}");
    }

    #[test]
    fn malformed_events_are_refused_with_the_field_named() {
        let f = fixture();
        let garbage = pb::SignedDrEvent {
            event: vec![0xff, 0xff, 0xff],
            signature: vec![0; 64],
        };
        assert_eq!(
            run(&f, &garbage).unwrap_err().code(),
            pb::Refusal::Malformed
        );
        let mut e = event("e1");
        e.duration_s = 0;
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert!(r.to_string().contains("duration_s"), "{r}");
        let mut e = event("e1");
        e.targets[1].load = "chiller".into();
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert!(r.to_string().contains("named twice"), "{r}");
        let mut e = event("");
        e.id.clear();
        let r = run(&f, &sign_event(&e, &f.operator)).unwrap_err();
        assert_eq!(r.code(), pb::Refusal::Malformed);
    }
}
