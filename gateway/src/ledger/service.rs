//! The `Ledger` gRPC service: validators vote and take certificates; every replica serves
//! its certified entries and heads. Entries, votes and certificates carry their own
//! signatures, so any peer with a certificate of the consortium's CA may call it: what it
//! sends is believed only as far as its signatures go.

use std::sync::Arc;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_server::Ledger;
use prost::Message;
use tonic::{Request, Response, Status};

use super::Members;
use crate::api::auth::role_of;
use crate::batch::Identity;
use crate::config::ledger::LedgerRole;
use crate::store::Store;

/// Certified entries streamed per read of the store.
const FETCH_CHUNK: usize = 256;
/// Most entries one SubmitBatch or PushBatch may carry.
pub const MAX_BATCH: usize = 1024;

fn batch_size(n: usize) -> Result<(), Status> {
    if n > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "{n} entries in one batch; at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// The service.
pub struct LedgerService {
    /// The store.
    pub store: Arc<Store>,
    /// The membership.
    pub members: Arc<Members>,
    /// This node's id and key (a validator signs votes with it).
    pub me: String,
    /// Its key.
    pub key: Identity,
    /// Its role.
    pub role: LedgerRole,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(format!("store: {e}")))
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    type FetchStream = crate::api::Stream_<pb::CertifiedEntry>;

    async fn submit(
        &self,
        req: Request<pb::SignedEntry>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        role_of(&req)?;
        if self.role != LedgerRole::Validator {
            return Err(Status::failed_precondition("this node is not a validator"));
        }
        let signed = req.into_inner();
        let (store, members, me, key) = (
            self.store.clone(),
            self.members.clone(),
            self.me.clone(),
            self.key.clone(),
        );
        blocking(move || super::node::submit(&store, &members, &me, &key, &signed))
            .await
            .map(Response::new)
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SignedEntries>,
    ) -> Result<Response<pb::SubmitReplies>, Status> {
        role_of(&req)?;
        if self.role != LedgerRole::Validator {
            return Err(Status::failed_precondition("this node is not a validator"));
        }
        let entries = req.into_inner().entries;
        batch_size(entries.len())?;
        let (store, members, me, key) = (
            self.store.clone(),
            self.members.clone(),
            self.me.clone(),
            self.key.clone(),
        );
        blocking(move || super::node::submit_batch(&store, &members, &me, &key, &entries))
            .await
            .map(|replies| Response::new(pb::SubmitReplies { replies }))
    }

    async fn push_batch(
        &self,
        req: Request<pb::CertifiedEntries>,
    ) -> Result<Response<pb::PushReply>, Status> {
        role_of(&req)?;
        let entries = req.into_inner().entries;
        batch_size(entries.len())?;
        let (store, members) = (self.store.clone(), self.members.clone());
        blocking(move || super::node::push_batch(&store, &members, &entries))
            .await
            .map(Response::new)
    }

    async fn push_certificate(
        &self,
        req: Request<pb::CertifiedEntry>,
    ) -> Result<Response<pb::PushReply>, Status> {
        role_of(&req)?;
        let c = req.into_inner();
        let (store, members) = (self.store.clone(), self.members.clone());
        blocking(move || super::node::push(&store, &members, &c))
            .await
            .map(Response::new)
    }

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        role_of(&req)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut from = r.from_seq;
            let mut left = if r.max == 0 {
                usize::MAX
            } else {
                r.max as usize
            };
            while left > 0 {
                let (st, origin) = (store.clone(), r.origin.clone());
                let n = left.min(FETCH_CHUNK);
                let chunk = match blocking(move || st.ledger_range(&origin, from, n)).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if chunk.is_empty() {
                    return;
                }
                for (seq, bytes) in chunk {
                    from = seq + 1;
                    left -= 1;
                    let msg = pb::CertifiedEntry::decode(bytes.as_slice())
                        .map_err(|e| Status::data_loss(format!("stored entry {seq}: {e}")));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heads(
        &self,
        req: Request<pb::HeadsRequest>,
    ) -> Result<Response<pb::HeadsReply>, Status> {
        role_of(&req)?;
        let store = self.store.clone();
        let heads = blocking(move || store.ledger_heads()).await?;
        Ok(Response::new(pb::HeadsReply {
            heads: heads
                .into_iter()
                .map(|(origin, next_certified)| pb::Head {
                    origin,
                    next_certified,
                })
                .collect(),
        }))
    }
}
