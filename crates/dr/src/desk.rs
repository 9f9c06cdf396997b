//! The DR desk: where a signed event or cancel is decided and a manual override is set,
//! whichever way it came (gRPC, MQTT, the commissioning page). An event is checked
//! ([`crate::event::check`]), stored durably, and only then answered "accepted"; every change
//! of an event's record is made under the one record lock the relay also holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use gridgate_proto::v1 as pb;
use prost::Message;
use thiserror::Error;
use tracing::{info, warn};

use crate::event::{Refused, Trust, check, check_cancel, event_key};
use crate::shared::{DrShared, announce};
use crate::tables::DrStore;
use gridgate_core::reading::now_ms;

use gridgate_core::IdentityError;

/// An issuer's key file is unusable.
#[derive(Debug, Error)]
#[error("[dr] issuer {issuer:?}: {source}")]
pub struct TrustError {
    /// The issuer.
    pub issuer: String,
    pub source: IdentityError,
}

/// Reads the issuers' public keys the config names. The gateway's own key (`own`) is
/// trusted under the names of the sources that hand the desk events for it: the market agent
/// ([`crate::event::MARKET_ISSUER`]) when `[market]` is configured, and the OpenADR VEN
/// (`openadr:<vtn>`, whose trust anchor is the VTN's authenticated session) when `[openadr]` is.
pub fn load_trust(
    config: &gridgate_config::GatewayConfig,
    own: ed25519_dalek::VerifyingKey,
) -> Result<Trust, TrustError> {
    let cfg = config.dr.as_ref();
    let mut trust = Trust::default();
    for (name, path) in cfg.map_or(&[][..], |d| d.issuers.as_slice()) {
        let key = gridgate_core::identity::load_public(path).map_err(|source| TrustError {
            issuer: name.clone(),
            source,
        })?;
        trust.0.insert(name.clone(), key);
    }
    if config.market.is_some() {
        trust.0.insert(crate::event::MARKET_ISSUER.to_string(), own);
    }
    if let Some(o) = &config.openadr {
        trust.0.insert(o.issuer(), own);
    }
    Ok(trust)
}

/// What deciding events needs beyond the store and config: the issuers trusted by the config
/// in force, and what every DR part shares.
pub struct DrState {
    /// Trusted issuers.
    pub trust: Trust,
    /// The record lock, the relay's wake-up, the updates and the counters.
    pub shared: DrShared,
}

/// Why a dispatch or cancel could not be decided (a refusal is an answer, not this).
#[derive(Debug, Error)]
pub enum DeskError {
    /// The config has no `[dr]`.
    #[error("this gateway accepts no DR events: its config has no [dr] issuers")]
    NoDr,
    /// An override names a load the config does not control.
    #[error("load {0:?} is not controlled by this gateway ([[load]])")]
    NotALoad(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gridgate_store::StoreError),
}

/// Where signed events and cancels are decided, whichever way they came (gRPC or MQTT).
#[derive(Clone)]
pub struct Desk {
    /// The store.
    pub store: Arc<gridgate_store::Store>,
    /// The config in force.
    pub config: tokio::sync::watch::Receiver<Arc<gridgate_config::GatewayConfig>>,
    /// Trust, counters, the record lock, the relay's wake-up and the updates.
    pub dr: Arc<DrState>,
}

impl Desk {
    fn refuse(&self, r: &Refused, event_id: String) -> pb::DispatchReply {
        if let Ok(mut m) = self.dr.shared.stats.refused.lock() {
            *m.entry(r.kind()).or_default() += 1;
        }
        warn!(event = %event_id, reason = r.kind(), "DR event refused: {r}");
        pb::DispatchReply {
            accepted: false,
            refusal: r.code() as i32,
            detail: r.to_string(),
            event_id,
        }
    }

    /// Checks, stores and schedules a signed event; the reply says why when it refuses.
    pub async fn dispatch(
        &self,
        signed: pb::SignedDrEvent,
    ) -> Result<pb::DispatchReply, DeskError> {
        let cfg = self.config.borrow().clone();
        if cfg.dr.is_none() && cfg.market.is_none() {
            return Err(DeskError::NoDr);
        }
        let _one_at_a_time = self.dr.shared.records.lock().await;
        let records = self.store.run(move |store| store.dr().events()).await?;
        let accepted_us = gridgate_core::reading::now_us();
        let now = accepted_us.div_euclid(1000);
        // A later interval or version of a dispatch already counted is not a new one.
        let this = pb::DrEvent::decode(signed.event.as_slice())
            .map(|e| dispatch_key(&e, &event_key(&e.issuer, &e.id)))
            .unwrap_or_default();
        let today = events_today(&records, now, &this);
        let known: std::collections::BTreeSet<&str> =
            records.iter().map(|(k, _)| k.as_str()).collect();
        let checked = match check(
            &signed,
            now,
            &self.dr.trust,
            &cfg.loads,
            |issuer, id| known.contains(event_key(issuer, id).as_str()),
            |load| today.get(load).copied().unwrap_or(0),
        ) {
            Ok(c) => c,
            Err(r) => {
                let id = pb::DrEvent::decode(signed.event.as_slice())
                    .map(|e| e.id)
                    .unwrap_or_default();
                return Ok(self.refuse(&r, id));
            }
        };
        let event_id = checked.event.id.clone();
        let overridden = self.store.run(move |store| store.dr().overrides()).await?;
        if let Some(t) = checked
            .event
            .targets
            .iter()
            .find(|t| overridden.contains(&t.load))
        {
            let r = Refused::Limit {
                load: t.load.clone(),
                why: "it is under manual override".into(),
            };
            return Ok(self.refuse(&r, event_id));
        }
        // The market's own deliveries are not a program's events.
        let market = checked.event.issuer == crate::event::MARKET_ISSUER;
        if !market
            && cfg
                .dr
                .as_ref()
                .is_none_or(|d| d.program(&checked.event.program).is_none())
        {
            let r = Refused::UnknownProgram(checked.event.program.clone());
            return Ok(self.refuse(&r, event_id));
        }
        let gateways = &checked.event.gateways;
        if !gateways.is_empty() && !gateways.contains(&cfg.id) {
            let r = Refused::NotAddressed {
                me: cfg.id.clone(),
                named: gateways.join(", "),
            };
            return Ok(self.refuse(&r, event_id));
        }
        let key = event_key(&checked.event.issuer, &event_id);
        let status = pb::EventStatus {
            signed: Some(signed),
            state: pb::EventState::Scheduled as i32,
            accepted_ms: now,
            start_ms: checked.start_ms,
            end_ms: checked.end_ms,
            loads: Vec::new(),
            cancelled: false,
            reported: false,
            accepted_us,
        };
        // An event due at once: its loads' values to restore are read while its record is
        // made durable, so the relay's writes, once it is stored, start with the write.
        let at_once =
            checked.start_ms <= now && checked.event.ramp_s == 0 && checked.event.randomize_s == 0;
        if at_once {
            for t in &checked.event.targets {
                if let Some(c) = cfg
                    .loads
                    .iter()
                    .find(|l| l.name == t.load)
                    .and_then(|l| l.control.as_ref())
                {
                    self.dr.shared.controls.read_ahead(c);
                }
            }
        }
        let record = status.encode_to_vec();
        let fresh = self
            .store
            .run(move |store| store.dr().insert_new(&key, &record))
            .await?;
        if !fresh {
            let r = Refused::Replayed {
                issuer: checked.event.issuer.clone(),
                id: event_id.clone(),
            };
            return Ok(self.refuse(&r, event_id));
        }
        self.dr
            .shared
            .stats
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        announce(&self.dr.shared.updates, &status);
        self.dr.shared.wake.notify_one();
        info!(
            event = %event_id,
            issuer = %checked.event.issuer,
            program = %checked.event.program,
            loads = checked.event.targets.len(),
            start_ms = checked.start_ms,
            end_ms = checked.end_ms,
            "DR event accepted and stored"
        );
        Ok(pb::DispatchReply {
            accepted: true,
            refusal: pb::Refusal::Unspecified as i32,
            detail: format!(
                "stored; {} load(s) from {} to {} (ms since the epoch)",
                checked.event.targets.len(),
                checked.start_ms,
                checked.end_ms
            ),
            event_id,
        })
    }

    /// Cancels an accepted event (signed by its issuer).
    pub async fn cancel(&self, signed: pb::SignedDrCancel) -> Result<pb::DispatchReply, DeskError> {
        let cancel = match check_cancel(&signed, &self.dr.trust) {
            Ok(c) => c,
            Err(r) => return Ok(self.refuse(&r, String::new())),
        };
        let _one_at_a_time = self.dr.shared.records.lock().await;
        let key = event_key(&cancel.issuer, &cancel.event_id);
        let store = self.store.clone();
        let k = key.clone();
        let found = store.run(move |store| store.dr().event(&k)).await?;
        let Some(mut status) = found.and_then(|b| pb::EventStatus::decode(b.as_slice()).ok())
        else {
            let r = Refused::Malformed(format!(
                "no event {:?} of issuer {:?} was accepted here",
                cancel.event_id, cancel.issuer
            ));
            return Ok(self.refuse(&r, cancel.event_id));
        };
        let state = pb::EventState::try_from(status.state).unwrap_or_default();
        if status.cancelled
            || matches!(state, pb::EventState::Completed | pb::EventState::Cancelled)
        {
            let r = Refused::Malformed(format!(
                "event {:?} is already over ({})",
                cancel.event_id,
                state.as_str_name()
            ));
            return Ok(self.refuse(&r, cancel.event_id));
        }
        let now = now_ms();
        status.cancelled = true;
        if state == pb::EventState::Scheduled {
            status.state = pb::EventState::Cancelled as i32;
        } else {
            // The relay restores the loads at its next turn, then marks it cancelled.
            status.end_ms = status.end_ms.min(now);
        }
        let record = status.encode_to_vec();
        self.store
            .run(move |store| store.dr().update(&key, &record))
            .await?;
        announce(&self.dr.shared.updates, &status);
        self.dr.shared.wake.notify_one();
        info!(event = %cancel.event_id, issuer = %cancel.issuer, "DR event cancelled");
        Ok(pb::DispatchReply {
            accepted: true,
            refusal: pb::Refusal::Unspecified as i32,
            detail: if state == pb::EventState::Scheduled {
                "cancelled before its start".into()
            } else {
                "cancelled; its loads are being restored".into()
            },
            event_id: cancel.event_id,
        })
    }
}

const DAY_MS: i64 = 86_400_000;

/// What counts as one dispatch against `max_events_per_day`: the event (stored under `key`),
/// or its series.
fn dispatch_key(event: &pb::DrEvent, key: &str) -> String {
    if event.series.is_empty() {
        key.to_string()
    } else {
        event_key(&event.issuer, &format!("series\u{0}{}", event.series))
    }
}

/// Dispatches per load by accepted events that start on the UTC day of `now_ms`, but for
/// the dispatch `this` (the one being decided); the events of one series (an OpenADR event's
/// intervals and versions) count once.
fn events_today(records: &[(String, Vec<u8>)], now_ms: i64, this: &str) -> BTreeMap<String, u32> {
    let day = now_ms.div_euclid(DAY_MS);
    let mut seen: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (key, bytes) in records {
        let Ok(status) = pb::EventStatus::decode(bytes.as_slice()) else {
            continue;
        };
        if status.start_ms.div_euclid(DAY_MS) != day
            || status.state == pb::EventState::Cancelled as i32
        {
            continue;
        }
        let Some(event) = status
            .signed
            .as_ref()
            .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())
        else {
            continue;
        };
        let dispatch = dispatch_key(&event, key);
        if dispatch == this {
            continue;
        }
        for t in event.targets {
            seen.entry(t.load).or_default().insert(dispatch.clone());
        }
    }
    seen.into_iter()
        .map(|(load, d)| (load, d.len() as u32))
        .collect()
}

/// The update a watcher is sent for a stored event record.
pub fn update_of(status: pb::EventStatus) -> Option<pb::EventUpdate> {
    let event = status
        .signed
        .as_ref()
        .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())?;
    Some(pb::EventUpdate {
        issuer: event.issuer,
        event_id: event.id,
        status: Some(status),
    })
}

/// Sets (`active`, with `reason` kept and shown) or clears `load`'s manual override under
/// the record lock, and wakes the relay, which gives the load back before anything else
/// moves it. `by` names who asked, for the log. Every way an override arrives (gRPC, the
/// commissioning page) comes through here. Answers the loads under override now.
pub async fn set_override(
    store: Arc<gridgate_store::Store>,
    config: &gridgate_config::GatewayConfig,
    shared: &DrShared,
    load: &str,
    active: bool,
    reason: &str,
    by: &str,
) -> Result<std::collections::BTreeSet<String>, DeskError> {
    if !config.loads.iter().any(|l| l.name == load) {
        return Err(DeskError::NotALoad(load.to_string()));
    }
    let loads = {
        let _one_at_a_time = shared.records.lock().await;
        let (l, r) = (load.to_string(), reason.to_string());
        store
            .run(move |store| {
                store.dr().set_override(&l, active.then_some(r.as_str()))?;
                store.dr().overrides()
            })
            .await?
    };
    warn!(
        load,
        active,
        by,
        reason,
        "manual override {}",
        if active {
            "set: no DR event moves this load"
        } else {
            "cleared"
        }
    );
    shared.wake.notify_one();
    Ok(loads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, series: &str, start_ms: i64, state: pb::EventState) -> (String, Vec<u8>) {
        let event = pb::DrEvent {
            id: id.into(),
            issuer: "openadr:utility".into(),
            targets: vec![pb::LoadTarget {
                load: "pcs".into(),
                action: Some(pb::load_target::Action::ShedKw(1.0)),
            }],
            series: series.into(),
            ..Default::default()
        };
        let status = pb::EventStatus {
            signed: Some(pb::SignedDrEvent {
                event: event.encode_to_vec(),
                signature: vec![],
            }),
            state: state as i32,
            start_ms,
            ..Default::default()
        };
        (event_key("openadr:utility", id), status.encode_to_vec())
    }

    #[test]
    fn a_series_counts_once_per_day_and_not_against_itself() {
        let day = 20_000 * DAY_MS;
        let records = vec![
            record("a/0/0", "a", day + 1, pb::EventState::Completed),
            record("a/0/1", "a", day + 2, pb::EventState::Completed),
            record("a/1/0", "a", day + 3, pb::EventState::Active),
            record("b", "", day + 4, pb::EventState::Completed),
            // Yesterday's and one cancelled before its start do not count.
            record("c", "", day - 10, pb::EventState::Completed),
            record("d", "", day + 5, pb::EventState::Cancelled),
        ];
        let now = day + 100;
        assert_eq!(events_today(&records, now, "new")["pcs"], 2);
        // A further interval of series "a" is not a new dispatch.
        let a = dispatch_key(
            &pb::DrEvent {
                issuer: "openadr:utility".into(),
                series: "a".into(),
                ..Default::default()
            },
            "ignored",
        );
        assert_eq!(events_today(&records, now, &a)["pcs"], 1);
    }
}
