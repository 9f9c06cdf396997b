//! The Telemetry service: batches pulled with a durable cursor, live readings, devices.

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::telemetry_server::Telemetry;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Role, require, role_of};
use crate::{ApiState, GrpcStream};
use gridgate_config::{DeviceKind, PointSource};

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn check_consumer(c: &str) -> Result<(), Status> {
    if !gridgate_core::names::valid_name(c) {
        return Err(Status::invalid_argument(
            "consumer must be 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

/// Telemetry.
pub struct TelemetryService {
    s: ApiState,
}

impl TelemetryService {
    /// On `s`.
    pub fn new(s: ApiState) -> Self {
        TelemetryService { s }
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type PullBatchesStream = GrpcStream<pb::PulledBatch>;
    type SubscribeStream = GrpcStream<pb::LiveReading>;

    async fn pull_batches(
        &self,
        req: Request<pb::PullBatchesRequest>,
    ) -> Result<Response<Self::PullBatchesStream>, Status> {
        require(
            &req,
            "PullBatches",
            &[Role::Master, Role::Validator, Role::Viewer],
        )?;
        let r = req.into_inner();
        check_consumer(&r.consumer)?;
        let store = self.s.store.store.clone();
        let mut head = self.s.store.head.clone();
        let mut next = if r.from_cursor {
            store.cursor(&r.consumer).map_err(internal)?
        } else {
            r.from_seq
        };
        let max = if r.max == 0 {
            u64::MAX
        } else {
            u64::from(r.max)
        };
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < max {
                let from = next;
                let want = (max - sent).min(64) as usize;
                let chunk = match store.run(move |st| st.batches_from(from, want)).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                if chunk.is_empty() {
                    if !r.follow {
                        return;
                    }
                    // Wait for the next batch to close, or for the client to go.
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for (seq, bytes) in chunk {
                    let msg = pb::PulledBatch {
                        seq,
                        signed_batch: bytes,
                        dropped_before: seq.saturating_sub(next),
                    };
                    next = seq + 1;
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        require(&req, "Ack", &[Role::Master])?;
        let r = req.into_inner();
        check_consumer(&r.consumer)?;
        let store = self.s.store.store.clone();
        let next_seq = *self.s.store.head.borrow();
        if r.seq >= next_seq {
            return Err(Status::out_of_range(format!(
                "batch {} is not closed yet; the newest is {}",
                r.seq,
                next_seq.wrapping_sub(1)
            )));
        }
        let cursor = store
            .run(move |store| store.set_cursor(&r.consumer, r.seq + 1))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::AckResponse { cursor }))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        role_of(&req)?;
        let prefix = req.into_inner().point_prefix;
        let mut live = self.s.live.subscribe();
        let shutdown = self.s.shutdown.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut dropped = 0u64;
            loop {
                let group = tokio::select! {
                    g = live.recv() => g,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                };
                match group {
                    Ok(group) => {
                        for r in group.iter().filter(|r| r.point.starts_with(&prefix)) {
                            let msg = pb::LiveReading {
                                reading: Some(r.to_pb()),
                                dropped,
                            };
                            // A full client queue is a slow subscriber: drop, count, go on.
                            match tx.try_send(Ok(msg)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                    }
                    // Groups missed: their readings are not known here, only that some were.
                    Err(broadcast::error::RecvError::Lagged(n)) => dropped += n,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_points(
        &self,
        req: Request<pb::ListPointsRequest>,
    ) -> Result<Response<pb::ListPointsResponse>, Status> {
        role_of(&req)?;
        let mut points = Vec::new();
        for (_, d) in self.s.config().devices() {
            for p in &d.points {
                let source = match &p.source {
                    PointSource::Dlt645(di) => format!("dlt645 DI {di}"),
                    PointSource::Modbus(s) => {
                        format!("modbus {} {} {}", s.table, s.address, s.data_type.name())
                    }
                };
                points.push(pb::Point {
                    name: format!("{}/{}", d.name, p.name),
                    unit: p.unit.clone(),
                    device: d.name.clone(),
                    source,
                });
            }
        }
        if let Some(i) = &self.s.config().ingest {
            for d in &i.devices {
                for (name, unit) in &d.points {
                    points.push(pb::Point {
                        name: format!("{}/{name}", d.name),
                        unit: unit.clone(),
                        device: d.name.clone(),
                        source: format!("mqtt {}", d.topic),
                    });
                }
            }
        }
        Ok(Response::new(pb::ListPointsResponse { points }))
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        role_of(&req)?;
        let snap = self.s.registry.snapshot();
        let mut devices = Vec::new();
        for (bus, d) in self.s.config().devices() {
            let st = snap.get(&d.name).cloned().unwrap_or_default();
            devices.push(pb::Device {
                name: d.name.clone(),
                bus: bus.name.clone(),
                protocol: match d.kind {
                    DeviceKind::Dlt645 { .. } => "dlt645".into(),
                    DeviceKind::Modbus { .. } => "modbus".into(),
                },
                online: st.online,
                last_good_ms: st.last_good_ms.unwrap_or(0),
                polls: st.polls,
                readings_by_quality: st
                    .readings
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            });
        }
        if let Some(i) = &self.s.config().ingest {
            for d in &i.devices {
                devices.push(pb::Device {
                    name: d.name.clone(),
                    protocol: "mqtt".into(),
                    online: true,
                    ..Default::default()
                });
            }
        }
        Ok(Response::new(pb::ListDevicesResponse { devices }))
    }
}
