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

use super::state::LedgerState;
use crate::tables::LedgerStore;
use gridgate_config::ledger::LedgerConfig;
use gridgate_core::Identity;
use gridgate_core::reading::now_ms;
use gridgate_ledger::entry::{check_vote, entry_hash, sign_entry, votes_check_batch};
use gridgate_store::{Store, StoreError};

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
        source: std::io::Error,
    },
    /// An endpoint.
    #[error("[ledger] validator {id:?} endpoint: {reason}")]
    Endpoint {
        /// The validator.
        id: String,
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
    store.ledger().append_own(me, claim, |seq, prev| {
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

/// The leaf hashes of batches `[first, first + n)` (RFC 6962 leaves over each batch's
/// canonical bytes, `SignedBatch.batch`, what its signature and chain cover). `None` when one
/// of them is no longer stored (retention dropped it) or does not decode.
pub fn batch_leaves(
    store: &Store,
    first: u64,
    n: u64,
) -> Result<Option<Vec<gridgate_ledger::merkle::Hash>>, StoreError> {
    let batches = store.batches_from(first, n as usize)?;
    if batches.len() as u64 != n
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
        leaves.push(gridgate_ledger::merkle::leaf(&signed.batch));
    }
    Ok(Some(leaves))
}

/// Where this node's batch tree stands: its last commitment (`None`: no tree yet) and the
/// number of the next one (the claim is `batches/<number>`).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// The last commitment appended.
    pub last: Option<pb::BatchCommitment>,
    /// The next commitment's number.
    pub next: u64,
}

/// The tree as this node's own log left it (after a restart: its last claimed commitment).
pub fn tree_of(store: &Store, me: &str) -> Result<Tree, StoreError> {
    let last = store
        .ledger()
        .claims("batches/")?
        .into_iter()
        .filter_map(|(claim, seq)| {
            Some((claim.strip_prefix("batches/")?.parse::<u64>().ok()?, seq))
        })
        .max();
    let Some((number, seq)) = last else {
        return Ok(Tree::default());
    };
    let commitment = store
        .ledger()
        .own_entry(me, seq)?
        .and_then(|b| pb::SignedEntry::decode(b.as_slice()).ok())
        .and_then(|s| pb::Entry::decode(s.entry.as_slice()).ok())
        .and_then(|e| pb::BatchCommitment::decode(e.payload.as_slice()).ok());
    Ok(Tree {
        last: commitment,
        next: number + 1,
    })
}

/// Grows this node's batch tree by every `per` batches closed since its last commitment,
/// one commitment (with its consistency proof and frontier) per `per` batches; when batches
/// the tree needs were dropped by retention before their commitment, a new tree starts at
/// the oldest batch still stored. Returns the commitments appended.
pub fn commit_batches(
    store: &Store,
    me: &str,
    key: &Identity,
    per: u64,
    tree: &mut Tree,
) -> Result<u64, StoreError> {
    if per == 0 {
        return Ok(0);
    }
    let stats = store.stats()?;
    let mut appended = 0;
    // Where the batches not yet in a tree start.
    let mut from = tree
        .last
        .as_ref()
        .map_or(stats.first_seq, |c| c.first_seq + c.tree_size);
    while from + per <= stats.next_seq {
        let Some(leaves) = batch_leaves(store, from, per)? else {
            let restart = stats.first_seq.max(from + 1);
            warn!(
                from,
                restart,
                "batches no longer stored (retention dropped them before their commitment): a new tree starts"
            );
            tree.last = None;
            from = restart;
            continue;
        };
        let c = gridgate_ledger::commitment::next(tree.last.as_ref(), from, &leaves);
        append(
            store,
            me,
            key,
            &format!("batches/{}", tree.next),
            pb::EntryKind::BatchCommitment,
            c.encode_to_vec(),
        )?;
        from = c.first_seq + c.tree_size;
        tree.last = Some(c);
        tree.next += 1;
        appended += 1;
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
    gridgate_core::tls::use_ring_provider();
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

/// Runs `f` on the store off the async threads; a failure is logged and is `None` (the
/// certifier and the sync try again on their next round).
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    store
        .run(f)
        .await
        .inspect_err(|e| warn!("ledger: store: {e}"))
        .ok()
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
        let o = origin.to_string();
        let n = ((until - at) as usize).min(WINDOW);
        let Some(chunk) = blocking(store, move |st| st.ledger().range(&o, at, n)).await else {
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
    // The batch tree as the log left it (not rebuilt from batch 0: retention drops old
    // batches, and the last commitment's frontier is all it takes to grow the tree).
    let me = c.me.clone();
    let mut tree = blocking(&c.store, move |st| tree_of(st, &me))
        .await
        .unwrap_or_default();
    loop {
        if cfg.commit_batches > 0 {
            let (me, key, per) = (c.me.clone(), c.key.clone(), cfg.commit_batches);
            let mut t = tree.clone();
            if let Some((n, grown)) = blocking(&c.store, move |st| {
                commit_batches(st, &me, &key, per, &mut t).map(|n| (n, t))
            })
            .await
            {
                tree = grown;
                if n > 0 {
                    info!(
                        commitments = n,
                        batches = tree.last.as_ref().map_or(0, |c| c.tree_size),
                        "batch commitments recorded in the ledger log"
                    );
                }
            }
        }
        let me = c.me.clone();
        let pending = blocking(&c.store, move |st| st.ledger().pending_first(&me, WINDOW))
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
        if blocking(&c.store, move |st| st.ledger().put_certified_many(&items))
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
    fn the_batch_tree_grows_by_whole_steps_once_each_and_goes_on_after_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("store");
        let id = Identity::generate().expect("key");
        let sealer = |seq, prev, rs: &gridgate_store::batch::Framed| {
            gridgate_store::batch::seal_framed(&id, "gw", seq, prev, 1000, rs)
        };
        let close = |n: i64| {
            for i in 0..n {
                let r = pb::Reading {
                    point: "m/p".into(),
                    ts_ms: i,
                    ..Default::default()
                };
                store.commit(&[r], &[], Some(&sealer)).expect("batch");
            }
        };
        close(5);
        let mut tree = Tree::default();
        // Five batches, two per step: trees of 2 and 4 now, 6 when batch 5 is closed.
        assert_eq!(
            commit_batches(&store, "gw", &id, 2, &mut tree).expect("commit"),
            2
        );
        assert_eq!(
            commit_batches(&store, "gw", &id, 2, &mut tree).expect("again"),
            0
        );
        // After a restart the tree is found again from the log: nothing appended twice.
        let mut again = tree_of(&store, "gw").expect("tree");
        assert_eq!(again.next, 2);
        assert_eq!(again.last, tree.last);
        close(1);
        assert_eq!(
            commit_batches(&store, "gw", &id, 2, &mut again).expect("grow"),
            1
        );
        let logged: Vec<gridgate_ledger::commitment::Logged> = store
            .ledger()
            .pending("gw")
            .expect("pending")
            .into_iter()
            .map(|(seq, b)| {
                let signed = pb::SignedEntry::decode(b.as_slice()).expect("entry");
                let entry = pb::Entry::decode(signed.entry.as_slice()).expect("entry");
                gridgate_ledger::commitment::Logged {
                    entry: seq,
                    c: pb::BatchCommitment::decode(entry.payload.as_slice()).expect("c"),
                }
            })
            .collect();
        let sizes: Vec<(u64, u64)> = logged
            .iter()
            .map(|l| (l.c.previous_size, l.c.tree_size))
            .collect();
        assert_eq!(sizes, vec![(0, 2), (2, 4), (4, 6)]);
        // Each extends the one before, and the stored batches grow the tree to each root.
        let leaves = batch_leaves(&store, 0, 6)
            .expect("read")
            .expect("all stored");
        let leaf = |s: u64| leaves.get(s as usize).copied();
        let found = gridgate_ledger::commitment::audit(&logged, &leaf);
        assert!(
            !found
                .iter()
                .any(|f| matches!(f, gridgate_ledger::commitment::Finding::Fault { .. })),
            "{found:?}"
        );
        assert_eq!(
            logged[2].c.root,
            gridgate_ledger::merkle::root(&leaves).to_vec()
        );
        let p = gridgate_ledger::commitment::prove(&logged, &leaf, 3).expect("batch 3");
        assert_eq!((p.entry, p.index, p.size), (1, 3, 4));
    }
}
