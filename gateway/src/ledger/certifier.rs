//! A gateway's own log: claims are appended locally (durably, offline or not), and a task
//! gets them certified in order, as FastPay's clients do: it asks every validator for a vote
//! on the next entry, brings a lagging validator up to date by pushing it the certificates
//! it lacks, forms the certificate from 2f+1 votes, stores it, and hands it to every
//! validator. While too few validators answer, entries wait and the task retries.

use std::sync::Arc;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_client::LedgerClient;
use prost::Message;
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tracing::{info, warn};

use super::Members;
use super::entry::{check_vote, entry_hash, sign_entry};
use crate::acquire::reading::now_ms;
use crate::batch::Identity;
use crate::config::ledger::LedgerConfig;
use crate::store::{Store, StoreError};

/// Longest wait for one validator's answer.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// Why the validators cannot be reached at all (bad config).
#[derive(Debug, Error)]
pub enum CertifierError {
    /// A TLS file.
    #[error("[ledger] {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An endpoint.
    #[error("[ledger] validator {id:?} endpoint: {reason}")]
    Endpoint {
        /// The validator.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Appends a claim to this node's own log, once per `claim` key. Blocking (fsync).
pub fn append(
    store: &Store,
    me: &str,
    key: &Identity,
    claim: &str,
    kind: pb::EntryKind,
    payload: Vec<u8>,
) -> Result<u64, StoreError> {
    store.ledger_append_own(me, claim, |seq, prev| {
        sign_entry(
            &pb::Entry {
                origin: me.to_string(),
                seq,
                prev_hash: prev.to_vec(),
                timestamp_ms: now_ms(),
                kind: kind as i32,
                payload,
            },
            key,
        )
        .encode_to_vec()
    })
}

/// A validator and the channel to it.
#[derive(Clone)]
struct Peer {
    id: String,
    client: LedgerClient<Channel>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CertifierError> {
    std::fs::read(path).map_err(|source| CertifierError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn peers(cfg: &LedgerConfig) -> Result<Vec<Peer>, CertifierError> {
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &cfg.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
        tls = tls.identity(TlsIdentity::from_pem(read(c)?, read(k)?));
    }
    let mut out = Vec::new();
    for m in cfg.members.iter().filter(|m| m.role == "validator") {
        let bad = |reason: String| CertifierError::Endpoint {
            id: m.id.clone(),
            reason,
        };
        let url = m.endpoint.clone().ok_or_else(|| bad("missing".into()))?;
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(ASK_WITHIN);
        if url.starts_with("https://") {
            ep = ep.tls_config(tls.clone()).map_err(|e| bad(e.to_string()))?;
        }
        out.push(Peer {
            id: m.id.clone(),
            client: LedgerClient::new(ep.connect_lazy()),
        });
    }
    Ok(out)
}

/// What the certifier needs.
pub struct Certifier {
    /// The store.
    pub store: Arc<Store>,
    /// The membership.
    pub members: Arc<Members>,
    /// This node's member id.
    pub me: String,
    /// Its key.
    pub key: Identity,
    /// Woken when an entry was appended.
    pub wake: Arc<Notify>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!("ledger: store: {e}");
            None
        }
        Err(e) => {
            warn!("ledger: {e}");
            None
        }
    }
}

/// Pushes `origin`'s certified entries `from..until` to a validator, in order.
async fn catch_up(
    store: &Arc<Store>,
    peer: &mut Peer,
    origin: &str,
    from: u64,
    until: u64,
) -> bool {
    let mut at = from;
    while at < until {
        let (st, o) = (store.clone(), origin.to_string());
        let n = (until - at) as usize;
        let Some(chunk) = blocking(move || st.ledger_range(&o, at, n.min(256))).await else {
            return false;
        };
        if chunk.is_empty() {
            return false;
        }
        for (seq, bytes) in chunk {
            let Ok(c) = pb::CertifiedEntry::decode(bytes.as_slice()) else {
                return false;
            };
            match tokio::time::timeout(ASK_WITHIN, peer.client.push_certificate(c)).await {
                Ok(Ok(r)) if r.get_ref().stored => at = seq + 1,
                _ => return false,
            }
        }
    }
    true
}

/// Asks one validator for its vote on `signed` (catching it up first if it lags).
async fn ask(
    store: Arc<Store>,
    mut peer: Peer,
    origin: String,
    seq: u64,
    signed: pb::SignedEntry,
) -> (String, Option<pb::Vote>, String) {
    for _ in 0..2 {
        let reply = match tokio::time::timeout(ASK_WITHIN, peer.client.submit(signed.clone())).await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return (peer.id, None, s.message().to_string()),
            Err(_) => return (peer.id, None, "no answer in time".into()),
        };
        if let Some(v) = reply.vote {
            return (peer.id, Some(v), String::new());
        }
        if reply.refusal == pb::VoteRefusal::MissingPredecessor as i32
            && reply.next_certified < seq
            && catch_up(&store, &mut peer, &origin, reply.next_certified, seq).await
        {
            continue;
        }
        return (peer.id, None, reply.detail);
    }
    (peer.id, None, "still lagging after a catch-up".into())
}

/// Runs until `cancel` fires.
pub async fn run(c: Certifier, cfg: LedgerConfig, cancel: CancellationToken) {
    let peers = match peers(&cfg) {
        Ok(p) => p,
        Err(e) => {
            warn!("ledger: cannot reach the validators: {e}");
            return;
        }
    };
    let quorum = c.members.quorum();
    let mut backoff = Duration::from_millis(500);
    loop {
        let (st, me) = (c.store.clone(), c.me.clone());
        let next = blocking(move || st.ledger_pending(&me))
            .await
            .and_then(|p| p.into_iter().next());
        let Some((seq, bytes)) = next else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = c.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let Ok(signed) = pb::SignedEntry::decode(bytes.as_slice()) else {
            warn!(
                seq,
                "ledger: own pending entry does not decode; the store is damaged"
            );
            return;
        };
        let hash = entry_hash(&signed);
        let asks = peers.iter().map(|p| {
            ask(
                c.store.clone(),
                p.clone(),
                c.me.clone(),
                seq,
                signed.clone(),
            )
        });
        let answers = tokio::select! {
            _ = cancel.cancelled() => return,
            a = futures::future::join_all(asks) => a,
        };
        let mut votes = Vec::new();
        let mut why = Vec::new();
        for (id, vote, detail) in answers {
            match vote.map(|v| (check_vote(&v, &c.members, &c.me, seq, &hash), v)) {
                Some((Ok(_), v)) => votes.push(v),
                Some((Err(e), _)) => why.push(format!("{id}: bad vote ({e})")),
                None => why.push(format!("{id}: {detail}")),
            }
        }
        if votes.len() < quorum {
            warn!(seq, votes = votes.len(), quorum, retry_in = ?backoff, "ledger entry not certified yet: {}", why.join("; "));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(500);
        let certified = pb::CertifiedEntry {
            entry: Some(signed),
            certificate: Some(pb::Certificate { votes }),
        };
        let (st, me, bytes) = (c.store.clone(), c.me.clone(), certified.encode_to_vec());
        if blocking(move || st.ledger_put_certified(&me, seq, &bytes))
            .await
            .is_none()
        {
            continue;
        }
        info!(seq, "own ledger entry certified");
        // Spread it: validators that voted take it as final; the others catch up later.
        let pushes = peers.iter().map(|p| {
            let mut client = p.client.clone();
            let c = certified.clone();
            async move { tokio::time::timeout(ASK_WITHIN, client.push_certificate(c)).await }
        });
        futures::future::join_all(pushes).await;
    }
}
