//! `DemandResponse` over gRPC: the operator dispatches a signed event; the gateway checks it
//! ([`super::event::check`]), stores it durably, and only then answers "accepted".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::demand_response_server::DemandResponse;
use prost::Message;
use thiserror::Error;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::event::{Refused, Trust, check, check_cancel, event_key};
use crate::api::ApiState;
use crate::api::auth::{Role, require};
use gridgate_core::reading::now_ms;

/// Who may read DR events, their changes and reports: the operator who dispatches them and
/// the master station that settles them. Which loads move when is not for every viewer
/// (nor for the plaintext loopback listener, whose callers are viewers).
const DR_READERS: &[Role] = &[Role::Operator, Role::Master];
use gridgate_config::DrConfig;
use gridgate_core::IdentityError;

/// An issuer's key file is unusable.
#[derive(Debug, Error)]
#[error("[dr] issuer {issuer:?}: {source}")]
pub struct TrustError {
    /// The issuer.
    pub issuer: String,
    /// Why.
    pub source: IdentityError,
}

/// Reads the issuers' public keys the config names.
pub fn load_trust(cfg: Option<&DrConfig>) -> Result<Trust, TrustError> {
    let mut trust = Trust::default();
    for (name, path) in cfg.map_or(&[][..], |d| d.issuers.as_slice()) {
        let key = gridgate_core::identity::load_public(path).map_err(|source| TrustError {
            issuer: name.clone(),
            source,
        })?;
        trust.0.insert(name.clone(), key);
    }
    Ok(trust)
}

/// Dispatches seen, by outcome.
#[derive(Debug, Default)]
pub struct DrStats {
    /// Accepted and stored.
    pub accepted: AtomicU64,
    /// Refused, by [`Refused::kind`].
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// What the service needs beyond the API's state.
pub struct DrState {
    /// Trusted issuers.
    pub trust: Trust,
    /// Counters.
    pub stats: Arc<DrStats>,
    /// One change of the event records at a time (shared with the relay): the replay and
    /// per-day checks and the insert are one step, and a cancel is never lost to the relay.
    pub serial: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the relay when an event was accepted.
    pub wake: Arc<tokio::sync::Notify>,
    /// Where stored changes are announced (WatchEvents).
    pub updates: super::relay::Updates,
}

/// The service.
pub struct DemandResponseService {
    api: ApiState,
    dr: Arc<DrState>,
}

impl DemandResponseService {
    /// A service over `api`'s store and config.
    pub fn new(api: ApiState, dr: Arc<DrState>) -> Self {
        DemandResponseService { api, dr }
    }

    fn desk(&self) -> Desk {
        Desk {
            store: self.api.store.store.clone(),
            config: self.api.cfg.clone(),
            dr: self.dr.clone(),
        }
    }
}

/// Why a dispatch or cancel could not be decided (a refusal is an answer, not this).
#[derive(Debug, Error)]
pub enum DeskError {
    /// The config has no `[dr]`.
    #[error("this gateway accepts no DR events: its config has no [dr] issuers")]
    NoDr,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gridgate_store::StoreError),
    /// A blocking task failed.
    #[error("{0}")]
    Internal(String),
}

impl From<DeskError> for Status {
    fn from(e: DeskError) -> Status {
        match e {
            DeskError::NoDr => Status::failed_precondition(e.to_string()),
            DeskError::Store(_) => Status::unavailable(e.to_string()),
            DeskError::Internal(_) => Status::internal(e.to_string()),
        }
    }
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
        if let Ok(mut m) = self.dr.stats.refused.lock() {
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
        if cfg.dr.is_none() {
            return Err(DeskError::NoDr);
        }
        let _one_at_a_time = self.dr.serial.lock().await;
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || store.dr_events())
            .await
            .map_err(|e| DeskError::Internal(e.to_string()))?
            .map_err(DeskError::Store)?;
        let now = now_ms();
        let today = events_today(&records, now);
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
        let store = self.store.clone();
        let overridden = tokio::task::spawn_blocking(move || store.dr_overrides())
            .await
            .map_err(|e| DeskError::Internal(e.to_string()))?
            .map_err(DeskError::Store)?;
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
        if cfg
            .dr
            .as_ref()
            .is_some_and(|d| d.program(&checked.event.program).is_none())
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
        };
        let record = status.encode_to_vec();
        let store = self.store.clone();
        let fresh = tokio::task::spawn_blocking(move || store.dr_insert_new(&key, &record))
            .await
            .map_err(|e| DeskError::Internal(e.to_string()))?
            .map_err(DeskError::Store)?;
        if !fresh {
            let r = Refused::Replayed {
                issuer: checked.event.issuer.clone(),
                id: event_id.clone(),
            };
            return Ok(self.refuse(&r, event_id));
        }
        self.dr.stats.accepted.fetch_add(1, Ordering::Relaxed);
        super::relay::announce(&self.dr.updates, &status);
        self.dr.wake.notify_one();
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
        let _one_at_a_time = self.dr.serial.lock().await;
        let key = event_key(&cancel.issuer, &cancel.event_id);
        let store = self.store.clone();
        let k = key.clone();
        let found = tokio::task::spawn_blocking(move || store.dr_event(&k))
            .await
            .map_err(|e| DeskError::Internal(e.to_string()))?
            .map_err(DeskError::Store)?;
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.dr_update(&key, &record))
            .await
            .map_err(|e| DeskError::Internal(e.to_string()))?
            .map_err(DeskError::Store)?;
        super::relay::announce(&self.dr.updates, &status);
        self.dr.wake.notify_one();
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

/// Loads moved per load by accepted events that start on the UTC day of `now_ms`.
fn events_today(records: &[(String, Vec<u8>)], now_ms: i64) -> BTreeMap<String, u32> {
    let day = now_ms.div_euclid(DAY_MS);
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for (_, bytes) in records {
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
        for t in event.targets {
            *out.entry(t.load).or_default() += 1;
        }
    }
    out
}

fn update_of(status: pb::EventStatus) -> Option<pb::EventUpdate> {
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

#[tonic::async_trait]
impl DemandResponse for DemandResponseService {
    type WatchEventsStream = crate::api::Stream_<pb::EventUpdate>;

    async fn get_report(
        &self,
        req: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::SignedPerformanceReport>, Status> {
        require(&req, "GetReport", DR_READERS)?;
        let r = req.into_inner();
        let key = event_key(&r.issuer, &r.event_id);
        let store = self.api.store.store.clone();
        let found = tokio::task::spawn_blocking(move || store.dr_report(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("store: {e}")))?;
        let bytes = found.ok_or_else(|| {
            Status::not_found(format!(
                "no performance report for event {:?} of issuer {:?} (yet): it is written a few seconds after the event ends",
                r.event_id, r.issuer
            ))
        })?;
        pb::SignedPerformanceReport::decode(bytes.as_slice())
            .map(Response::new)
            .map_err(|e| Status::data_loss(format!("stored report does not decode: {e}")))
    }

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        require(&req, "WatchEvents", DR_READERS)?;
        let issuer = req.into_inner().issuer;
        // Subscribe before reading the store, so that no change falls between the two.
        let mut updates = self.dr.updates.subscribe();
        let store = self.api.store.store.clone();
        let shutdown = self.api.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let wanted = |u: &pb::EventUpdate| issuer.is_empty() || u.issuer == issuer;
            let mut snapshot = true;
            loop {
                if snapshot {
                    // First, and again after falling behind: every event as it stands (a
                    // state is whole, so the latest one makes up for the missed ones).
                    snapshot = false;
                    let st = store.clone();
                    let Ok(Ok(records)) = tokio::task::spawn_blocking(move || st.dr_events()).await
                    else {
                        let _ = tx
                            .send(Err(Status::unavailable("store: cannot read the events")))
                            .await;
                        return;
                    };
                    for (_, bytes) in records {
                        let Ok(status) = pb::EventStatus::decode(bytes.as_slice()) else {
                            continue;
                        };
                        let Some(u) = update_of(status) else { continue };
                        if wanted(&u) && tx.send(Ok(u)).await.is_err() {
                            return;
                        }
                    }
                }
                let next = tokio::select! {
                    u = updates.recv() => u,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                };
                match next {
                    Ok(u) if wanted(&u) => {
                        if tx.send(Ok((*u).clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => snapshot = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn dispatch(
        &self,
        req: Request<pb::SignedDrEvent>,
    ) -> Result<Response<pb::DispatchReply>, Status> {
        require(&req, "Dispatch", &[Role::Operator])?;
        self.desk()
            .dispatch(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn cancel(
        &self,
        req: Request<pb::SignedDrCancel>,
    ) -> Result<Response<pb::DispatchReply>, Status> {
        require(&req, "Cancel", &[Role::Operator])?;
        self.desk()
            .cancel(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn set_override(
        &self,
        req: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::OverrideState>, Status> {
        let role = require(&req, "SetOverride", &[Role::Operator])?;
        let r = req.into_inner();
        if !self.api.config().loads.iter().any(|l| l.name == r.load) {
            return Err(Status::invalid_argument(format!(
                "load {:?} is not controlled by this gateway ([[load]])",
                r.load
            )));
        }
        let _one_at_a_time = self.dr.serial.lock().await;
        let store = self.api.store.store.clone();
        let (load, active, reason) = (r.load.clone(), r.active, r.reason.clone());
        let loads = tokio::task::spawn_blocking(move || {
            store.dr_set_override(&load, active.then_some(reason.as_str()))?;
            store.dr_overrides()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(format!("store: {e}")))?;
        warn!(
            load = %r.load,
            active = r.active,
            by = role.name(),
            reason = %r.reason,
            "manual override {}",
            if r.active { "set: no DR event moves this load" } else { "cleared" }
        );
        self.dr.wake.notify_one();
        Ok(Response::new(pb::OverrideState {
            loads: loads.into_iter().collect(),
        }))
    }

    async fn get_event(
        &self,
        req: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::EventStatus>, Status> {
        require(&req, "GetEvent", DR_READERS)?;
        let r = req.into_inner();
        let key = event_key(&r.issuer, &r.event_id);
        let store = self.api.store.store.clone();
        let found = tokio::task::spawn_blocking(move || store.dr_event(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("store: {e}")))?;
        let bytes = found.ok_or_else(|| {
            Status::not_found(format!(
                "no event {:?} of issuer {:?} was accepted here",
                r.event_id, r.issuer
            ))
        })?;
        pb::EventStatus::decode(bytes.as_slice())
            .map(Response::new)
            .map_err(|e| Status::data_loss(format!("stored event record does not decode: {e}")))
    }
}
