//! `DemandResponse` over gRPC: the operator dispatches a signed event, which the DR desk
//! decides ([`gridgate_dr::desk::Desk`]); reads of events and reports for the operator and
//! the master station.

use gridgate_dr::desk::{Desk, DeskError, DrState, update_of};
use gridgate_dr::event_key;
use gridgate_dr::tables::DrStore;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::demand_response_server::DemandResponse;
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use crate::ApiState;
use crate::auth::{Role, require};

/// Who may read DR events, their changes and reports: the operator who dispatches them and
/// the master station that settles them. Which loads move when is not for every viewer
/// (nor for the plaintext loopback listener, whose callers are viewers).
const DR_READERS: &[Role] = &[Role::Operator, Role::Master];

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

/// The gRPC status of a desk that could not decide.
fn status_of(e: DeskError) -> Status {
    match e {
        DeskError::NoDr => Status::failed_precondition(e.to_string()),
        DeskError::NotALoad(_) => Status::invalid_argument(e.to_string()),
        DeskError::Store(_) => Status::unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl DemandResponse for DemandResponseService {
    type WatchEventsStream = crate::GrpcStream<pb::EventUpdate>;

    async fn get_report(
        &self,
        req: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::SignedPerformanceReport>, Status> {
        require(&req, "GetReport", DR_READERS)?;
        let r = req.into_inner();
        let key = event_key(&r.issuer, &r.event_id);
        let found = (self.api.store.store)
            .run(move |store| store.dr().report(&key))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
        let mut updates = self.dr.shared.updates.subscribe();
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
                    let Ok(records) = store.run(|st| st.dr().events()).await else {
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
            .map_err(status_of)
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
            .map_err(status_of)
    }

    async fn set_override(
        &self,
        req: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::OverrideState>, Status> {
        let role = require(&req, "SetOverride", &[Role::Operator])?;
        let r = req.into_inner();
        let loads = gridgate_dr::desk::set_override(
            self.api.store.store.clone(),
            &self.api.config(),
            &self.dr.shared,
            &r.load,
            r.active,
            &r.reason,
            role.name(),
        )
        .await
        .map_err(status_of)?;
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
        let found = (self.api.store.store)
            .run(move |store| store.dr().event(&key))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
