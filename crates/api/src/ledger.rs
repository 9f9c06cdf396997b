//! The `Ledger` gRPC service: validators vote and take certificates; every replica serves
//! its certified entries and heads. Callers are members: the TLS layer checks their
//! certificate against the consortium's CA, and this service that the certificate's key is
//! a member's Ed25519 key (the member certificate `gridgate ledger member-cert` issues for
//! its identity key). What a member sends is believed only as far as its signatures go.

use std::sync::Arc;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_server::Ledger;
use prost::Message;
use tonic::{Request, Response, Status};

use gridgate_config::ledger::LedgerRole;
use gridgate_core::Identity;
use gridgate_ledger_node::state::LedgerState;
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_store::{Store, StoreError};

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
    /// The membership in force and the feed of stored entries.
    pub state: Arc<LedgerState>,
    /// This node's id and key (a validator signs votes with it).
    pub me: String,
    /// Its key.
    pub key: Identity,
    /// Its role.
    pub role: LedgerRole,
    /// Who may call.
    pub callers: Callers,
    /// Fires when the service stops: open `Watch` streams end then.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// How this validator signs its votes (window votes; the other form only to measure).
    pub vote_form: gridgate_ledger_node::node::VoteForm,
}

/// Who may call the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Members only, by the key of their TLS client certificate (the daemon, always).
    Members,
    /// Anyone who reaches the listener: only for an in-process benchmark on loopback
    /// without TLS, which measures signatures and storage.
    Unchecked,
}

/// The Ed25519 key of a DER certificate, if that is its key type.
fn ed25519_key(der: &[u8]) -> Option<[u8; 32]> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return None;
    }
    spki.subject_public_key.data.as_ref().try_into().ok()
}

impl LedgerService {
    /// The calling member, by its TLS client certificate's key.
    #[allow(clippy::result_large_err)]
    fn caller<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if self.callers == Callers::Unchecked {
            return Ok(None);
        }
        let leaf = req
            .peer_certs()
            .and_then(|c| c.first().map(|l| l.as_ref().to_vec()))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the Ledger service takes members only: call it over TLS with your member certificate ([ledger] cert_file)",
                )
            })?;
        let key = ed25519_key(&leaf).ok_or_else(|| {
            Status::permission_denied(
                "your certificate's key is not an Ed25519 member key: use the member certificate of your identity key (gridgate ledger member-cert)",
            )
        })?;
        self.state
            .members()
            .0
            .values()
            .find(|m| m.key.to_bytes() == key && !m.removed)
            .map(|m| Some(m.id.clone()))
            .ok_or_else(|| {
                Status::permission_denied(
                    "your certificate's key is no member's key in this node's membership",
                )
            })
    }
}

impl LedgerService {
    /// Stores pushed certificates and hands what was stored to the node's state.
    async fn push(&self, entries: Vec<pb::CertifiedEntry>) -> Result<pb::PushReply, Status> {
        let (members, me) = (self.state.members(), self.me.clone());
        let (reply, stored, entries) = blocking(&self.store, move |store| {
            gridgate_ledger_node::node::push_batch(store, &members, &me, &entries)
                .map(|(reply, stored)| (reply, stored, entries))
        })
        .await?;
        if !stored.is_empty() {
            let stored: Vec<pb::CertifiedEntry> =
                stored.into_iter().map(|k| entries[k].clone()).collect();
            self.state.stored(&stored);
        }
        Ok(reply)
    }
}

/// Decided cuts in one `Cuts` answer at most (each a few hundred bytes with its
/// finalization: well under the gRPC message limit).
const MAX_CUTS: usize = 1024;

/// Runs `f` on the store off the async threads; a store that fails is unavailable.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    store.run(f).await.map_err(|e| match e {
        StoreError::Task(e) => Status::internal(e),
        e => Status::unavailable(format!("store: {e}")),
    })
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    type FetchStream = crate::GrpcStream<pb::CertifiedEntry>;
    type WatchStream = crate::GrpcStream<pb::CertifiedEntry>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.caller(&req)?;
        let only: std::collections::BTreeSet<String> =
            req.into_inner().origins.into_iter().collect();
        let mut feed = self.state.watch();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    c = feed.recv() => c,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                };
                let c = match next {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::out_of_range(format!(
                                "this watcher fell {n} certified entries behind: catch up with Heads and Fetch, then watch again"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let wanted = only.is_empty()
                    || gridgate_ledger_node::state::place(&c)
                        .is_some_and(|(origin, _)| only.contains(&origin));
                if wanted && tx.send(Ok((*c).clone())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cuts(&self, req: Request<pb::CutsRequest>) -> Result<Response<pb::CutsReply>, Status> {
        self.caller(&req)?;
        let r = req.into_inner();
        let max = match r.max {
            0 => MAX_CUTS,
            n => (n as usize).min(MAX_CUTS),
        };
        let (mut cuts, decided_height) = blocking(&self.store, move |store| {
            let cuts = store.ledger().cuts(r.from_height, max)?;
            let top = store.ledger().decided_state()?.height;
            Ok((cuts, top))
        })
        .await?;
        // The end-to-end tests' lying validator: every finalization it serves is forged.
        if fail::eval("ledger-cuts-forge", |_| ()).is_some() {
            for (_, c) in &mut cuts {
                if let Some(v) = c.certificate.as_mut().and_then(|f| f.votes.first_mut()) {
                    if let Some(b) = v.signature.first_mut() {
                        *b ^= 1;
                    }
                }
            }
        }
        Ok(Response::new(pb::CutsReply {
            cuts: cuts.into_iter().map(|(_, c)| c).collect(),
            decided_height,
        }))
    }

    async fn submit(
        &self,
        req: Request<pb::SignedEntry>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.caller(&req)?;
        if self.role != LedgerRole::Validator {
            return Err(Status::failed_precondition("this node is not a validator"));
        }
        let signed = req.into_inner();
        let (members, me, key) = (self.state.members(), self.me.clone(), self.key.clone());
        let form = self.vote_form;
        blocking(&self.store, move |store| {
            gridgate_ledger_node::node::submit_batch(form, store, &members, &me, &key, &[signed])
                .map(|mut r| r.pop().unwrap_or_default())
        })
        .await
        .map(Response::new)
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SignedEntries>,
    ) -> Result<Response<pb::SubmitReplies>, Status> {
        self.caller(&req)?;
        if self.role != LedgerRole::Validator {
            return Err(Status::failed_precondition("this node is not a validator"));
        }
        let entries = req.into_inner().entries;
        batch_size(entries.len())?;
        let (members, me, key) = (self.state.members(), self.me.clone(), self.key.clone());
        let form = self.vote_form;
        blocking(&self.store, move |store| {
            gridgate_ledger_node::node::submit_batch(form, store, &members, &me, &key, &entries)
        })
        .await
        .map(|replies| Response::new(pb::SubmitReplies { replies }))
    }

    async fn push_batch(
        &self,
        req: Request<pb::CertifiedEntries>,
    ) -> Result<Response<pb::PushReply>, Status> {
        self.caller(&req)?;
        let entries = req.into_inner().entries;
        batch_size(entries.len())?;
        self.push(entries).await.map(Response::new)
    }

    async fn push_certificate(
        &self,
        req: Request<pb::CertifiedEntry>,
    ) -> Result<Response<pb::PushReply>, Status> {
        self.caller(&req)?;
        self.push(vec![req.into_inner()]).await.map(Response::new)
    }

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        self.caller(&req)?;
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
                let origin = r.origin.clone();
                let n = left.min(FETCH_CHUNK);
                let chunk =
                    match blocking(&store, move |st| st.ledger().range(&origin, from, n)).await {
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
        self.caller(&req)?;
        let heads = blocking(&self.store, |store| store.ledger().heads()).await?;
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
