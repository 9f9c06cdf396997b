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

use super::entry::{check_vote, entry_hash, sign_entry, votes_check_batch};
use super::state::LedgerState;
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

/// The commitment of batches `[first, first + size)`: the RFC 6962 root over their
/// canonical bytes (`SignedBatch.batch`, what each batch's signature and chain cover).
/// `None` when one of them is no longer stored (retention dropped it) or does not decode.
pub fn commitment(
    store: &Store,
    first: u64,
    size: u64,
) -> Result<Option<pb::BatchCommitment>, StoreError> {
    let batches = store.batches_from(first, size as usize)?;
    if batches.len() as u64 != size
        || batches
            .iter()
            .enumerate()
            .any(|(i, (seq, _))| *seq != first + i as u64)
    {
        return Ok(None);
    }
    let mut leaves = Vec::with_capacity(batches.len());
    for (_, bytes) in &batches {
        let Ok(signed) = pb::SignedBatch::decode(bytes.as_slice()) else {
            return Ok(None);
        };
        leaves.push(super::merkle::leaf(&signed.batch));
    }
    Ok(Some(pb::BatchCommitment {
        first_seq: first,
        tree_size: size,
        root: super::merkle::root(&leaves).to_vec(),
    }))
}

/// The range after the last one this node's log claimed a commitment for (`batches/<range>`).
pub fn first_uncommitted_range(store: &Store) -> Result<u64, StoreError> {
    Ok(store
        .ledger_claims("batches/")?
        .iter()
        .filter_map(|(claim, _)| claim.strip_prefix("batches/")?.parse::<u64>().ok())
        .max()
        .map_or(0, |k| k + 1))
}

/// Appends the commitments of every whole range of `per` batches closed so far, from range
/// `*next` on (each once: the claim is `batches/<range>`); moves `*next` past them.
pub fn commit_batches(
    store: &Store,
    me: &str,
    key: &Identity,
    per: u64,
    next: &mut u64,
) -> Result<u64, StoreError> {
    if per == 0 {
        return Ok(0);
    }
    let closed = store.stats()?.next_seq;
    let mut appended = 0;
    while (*next + 1) * per <= closed {
        match commitment(store, *next * per, per)? {
            Some(c) => {
                append(
                    store,
                    me,
                    key,
                    &format!("batches/{}", *next),
                    pb::EntryKind::BatchCommitment,
                    c.encode_to_vec(),
                )?;
                appended += 1;
            }
            None => warn!(
                first = *next * per,
                per, "batches no longer stored (retention dropped them before their commitment)"
            ),
        }
        *next += 1;
    }
    Ok(appended)
}

/// A validator and the channel to it.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) id: String,
    pub(super) client: LedgerClient<Channel>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CertifierError> {
    std::fs::read(path).map_err(|source| CertifierError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Lazy channels to every validator the config names, with its TLS client identity.
pub(super) fn peers(cfg: &LedgerConfig) -> Result<Vec<Peer>, CertifierError> {
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
    /// The membership in force and the feed of stored entries.
    pub state: Arc<LedgerState>,
    /// This node's member id.
    pub me: String,
    /// Its key.
    pub key: Identity,
    /// Woken when an entry was appended.
    pub wake: Arc<Notify>,
}

pub(super) async fn blocking<T: Send + 'static>(
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

/// Own entries asked about at once (one durable write per validator for their votes).
const WINDOW: usize = 256;

/// Pushes `origin`'s certified entries `from..until` to a validator, in order, in batches.
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
        let n = ((until - at) as usize).min(WINDOW);
        let Some(chunk) = blocking(move || st.ledger_range(&o, at, n)).await else {
            return false;
        };
        if chunk.is_empty() {
            return false;
        }
        let mut entries = Vec::with_capacity(chunk.len());
        for (_, bytes) in &chunk {
            let Ok(c) = pb::CertifiedEntry::decode(bytes.as_slice()) else {
                return false;
            };
            entries.push(c);
        }
        let last = chunk.last().map_or(at, |c| c.0);
        match tokio::time::timeout(
            ASK_WITHIN,
            peer.client.push_batch(pb::CertifiedEntries { entries }),
        )
        .await
        {
            Ok(Ok(r)) if r.get_ref().stored => at = last + 1,
            _ => return false,
        }
    }
    true
}

/// Asks one validator for its votes on a window of own entries from `first` (catching it up
/// first if it lags): one vote (or none) per entry, in order, and why not.
async fn ask(
    store: Arc<Store>,
    mut peer: Peer,
    origin: String,
    first: u64,
    window: Vec<pb::SignedEntry>,
) -> (String, Vec<Option<pb::Vote>>, String) {
    let none = |n: usize| vec![None; n];
    for _ in 0..2 {
        let asked = peer.client.submit_batch(pb::SignedEntries {
            entries: window.clone(),
        });
        let replies = match tokio::time::timeout(ASK_WITHIN, asked).await {
            Ok(Ok(r)) => r.into_inner().replies,
            Ok(Err(s)) => return (peer.id, none(window.len()), s.message().to_string()),
            Err(_) => return (peer.id, none(window.len()), "no answer in time".into()),
        };
        let lagging = replies.first().is_some_and(|r| {
            r.refusal == pb::VoteRefusal::MissingPredecessor as i32 && r.next_certified < first
        });
        if lagging {
            let from = replies.first().map_or(first, |r| r.next_certified);
            if catch_up(&store, &mut peer, &origin, from, first).await {
                continue;
            }
        }
        let why = replies
            .iter()
            .find(|r| r.vote.is_none())
            .map(|r| r.detail.clone())
            .unwrap_or_default();
        let mut votes: Vec<Option<pb::Vote>> = replies.into_iter().map(|r| r.vote).collect();
        votes.resize(window.len(), None);
        return (peer.id, votes, why);
    }
    (
        peer.id,
        none(window.len()),
        "still lagging after a catch-up".into(),
    )
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
    // The validator set (and so the quorum) is the genesis one: changes never move it.
    let quorum = c.state.genesis().quorum();
    let mut backoff = Duration::from_millis(500);
    // The first range of batches not yet committed: after the last one claimed before a
    // restart (not from 0: ranges that retention dropped since would each be read and
    // warned about at every start).
    let st = c.store.clone();
    let mut next_range = blocking(move || first_uncommitted_range(&st))
        .await
        .unwrap_or(0);
    loop {
        if cfg.commit_batches > 0 {
            let (st, me, key, per) = (
                c.store.clone(),
                c.me.clone(),
                c.key.clone(),
                cfg.commit_batches,
            );
            let from = next_range;
            if let Some((n, moved)) = blocking(move || {
                let mut at = from;
                commit_batches(&st, &me, &key, per, &mut at).map(|n| (n, at))
            })
            .await
            {
                next_range = moved;
                if n > 0 {
                    info!(ranges = n, "batch commitments recorded in the ledger log");
                }
            }
        }
        let (st, me) = (c.store.clone(), c.me.clone());
        let pending = blocking(move || st.ledger_pending_first(&me, WINDOW))
            .await
            .unwrap_or_default();
        if pending.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = c.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let first = pending[0].0;
        let mut window = Vec::new();
        for (seq, bytes) in pending.into_iter().take(WINDOW) {
            if seq != first + window.len() as u64 {
                break;
            }
            match pb::SignedEntry::decode(bytes.as_slice()) {
                Ok(s) => window.push(s),
                Err(_) => {
                    warn!(
                        seq,
                        "ledger: own pending entry does not decode; the store is damaged"
                    );
                    return;
                }
            }
        }
        let asks = peers.iter().map(|p| {
            ask(
                c.store.clone(),
                p.clone(),
                c.me.clone(),
                first,
                window.clone(),
            )
        });
        let answers = tokio::select! {
            _ = cancel.cancelled() => return,
            a = futures::future::join_all(asks) => a,
        };
        // Certify the longest prefix of the window with a quorum of valid votes. Each
        // validator's votes are checked in one batch; one by one only if that fails.
        let hashes: Vec<[u8; 32]> = window.iter().map(entry_hash).collect();
        let members = c.state.members();
        // Once a quorum of validators voted for the whole window with good signatures, the
        // rest are not checked at all (the certificate takes a quorum, no more).
        let mut all_good = vec![false; answers.len()];
        let mut whole = 0;
        for (k, (_, v, _)) in answers.iter().enumerate() {
            if whole >= quorum {
                break;
            }
            all_good[k] = votes_check_batch(v, &members, &c.me, first, &hashes);
            if all_good[k] && v.iter().all(Option::is_some) {
                whole += 1;
            }
        }
        let mut certified: Vec<pb::CertifiedEntry> = Vec::new();
        let mut why = Vec::new();
        for (i, signed) in window.iter().enumerate() {
            let seq = first + i as u64;
            let hash = hashes[i];
            // A certificate is a quorum of votes, no more (as FastPay's): every validator it
            // is pushed to checks each vote in it.
            let votes: Vec<pb::Vote> = answers
                .iter()
                .zip(&all_good)
                .filter_map(|((_, v, _), good)| Some((v.get(i).cloned().flatten()?, *good)))
                .filter(|(v, good)| *good || check_vote(v, &members, &c.me, seq, &hash).is_ok())
                .map(|(v, _)| v)
                .take(quorum)
                .collect();
            if votes.len() < quorum {
                for (id, v, detail) in &answers {
                    if v.get(i).is_none_or(Option::is_none) {
                        why.push(format!("{id}: {detail}"));
                    }
                }
                break;
            }
            certified.push(pb::CertifiedEntry {
                entry: Some(signed.clone()),
                certificate: Some(pb::Certificate { votes }),
            });
        }
        if certified.is_empty() {
            warn!(seq = first, quorum, retry_in = ?backoff, "ledger entry not certified yet: {}", why.join("; "));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(500);
        let items: Vec<(String, u64, Vec<u8>)> = certified
            .iter()
            .enumerate()
            .map(|(i, ce)| (c.me.clone(), first + i as u64, ce.encode_to_vec()))
            .collect();
        let st = c.store.clone();
        if blocking(move || st.ledger_put_certified_many(&items))
            .await
            .is_none()
        {
            continue;
        }
        info!(
            from = first,
            entries = certified.len(),
            "own ledger entries certified"
        );
        c.state.stored(&certified);
        // Spread them: validators that voted take them as final; the others catch up later.
        let pushes = peers.iter().map(|p| {
            let mut client = p.client.clone();
            let entries = certified.clone();
            async move {
                tokio::time::timeout(
                    ASK_WITHIN,
                    client.push_batch(pb::CertifiedEntries { entries }),
                )
                .await
            }
        });
        futures::future::join_all(pushes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_ranges_of_batches_are_committed_once_with_a_root_that_proves_each_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("store");
        let id = Identity::generate().expect("key");
        let sealer = |seq, prev, rs| crate::batch::seal(&id, "gw", seq, prev, 1000, rs);
        for i in 0..5 {
            let r = pb::Reading {
                point: "m/p".into(),
                ts_ms: i,
                ..Default::default()
            };
            store.commit(&[r], &[], Some(&sealer)).expect("batch");
        }
        let mut next = 0;
        // Five batches in ranges of two: ranges 0 and 1 now, range 2 when it is whole.
        assert_eq!(
            commit_batches(&store, "gw", &id, 2, &mut next).expect("commit"),
            2
        );
        assert_eq!(next, 2);
        assert_eq!(
            commit_batches(&store, "gw", &id, 2, &mut next).expect("again"),
            0
        );
        // After a restart the next range is found from the claims.
        assert_eq!(first_uncommitted_range(&store).expect("claims"), 2);
        let mut from_zero = 0;
        commit_batches(&store, "gw", &id, 2, &mut from_zero).expect("restart");
        assert_eq!(
            store.ledger_pending("gw").expect("pending").len(),
            2,
            "each range once"
        );

        let pending = store.ledger_pending("gw").expect("pending");
        let signed = pb::SignedEntry::decode(pending[1].1.as_slice()).expect("entry");
        let entry = pb::Entry::decode(signed.entry.as_slice()).expect("entry");
        let c = pb::BatchCommitment::decode(entry.payload.as_slice()).expect("commitment");
        assert_eq!((c.first_seq, c.tree_size), (2, 2));
        // Batch 3 is leaf 1 of that tree: its audit path proves it.
        let batches = store.batches_from(2, 2).expect("batches");
        let leaves: Vec<_> = batches
            .iter()
            .map(|(_, b)| {
                super::super::merkle::leaf(&pb::SignedBatch::decode(b.as_slice()).expect("b").batch)
            })
            .collect();
        let root: [u8; 32] = c.root.as_slice().try_into().expect("32");
        let path = super::super::merkle::audit_path(&leaves, 1);
        assert!(super::super::merkle::verify_inclusion(
            &leaves[1], 1, 2, &path, &root
        ));
    }
}
