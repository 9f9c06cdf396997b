//! The Admin service: the gateway's identity and the caller's role, the store's state.

use std::sync::atomic::Ordering;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::ApiState;
use crate::auth::role_of;
use crate::telemetry::internal;

/// Admin.
pub struct AdminService {
    s: ApiState,
}

impl AdminService {
    /// On `s`.
    pub fn new(s: ApiState) -> Self {
        AdminService { s }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_identity(
        &self,
        req: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GatewayIdentity>, Status> {
        let role = role_of(&req)?;
        Ok(Response::new(pb::GatewayIdentity {
            gateway_id: self.s.config().id.clone(),
            public_key: self.s.public_key.to_vec(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            caller_role: role.name().to_string(),
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GatewayStatus>, Status> {
        role_of(&req)?;
        let (stats, cursors) = (self.s.store.store)
            .run(|store| Ok((store.stats()?, store.cursors()?)))
            .await
            .map_err(internal)?;
        let uplink_lag = if self.s.config().uplink.is_some() {
            stats
                .next_seq
                .saturating_sub(self.s.uplink.cursor.load(Ordering::Relaxed))
        } else {
            0
        };
        Ok(Response::new(pb::GatewayStatus {
            first_seq: stats.first_seq,
            next_seq: stats.next_seq,
            open_readings: stats.open_readings,
            stored_bytes: stats.stored_bytes,
            dropped_readings: stats.dropped_readings,
            dropped_batches: stats.dropped_batches,
            cursors: cursors.into_iter().collect(),
            uplink_lag_batches: uplink_lag,
        }))
    }
}
