//! Consensus on cuts: four validators (f = 1) in this process, each the real engine
//! (commonware simplex over its authenticated P2P transport on loopback, its journal on disk)
//! driven by gridgate's application on its own redb store, while certified entries arrive
//! in every store (so cuts name moving logs and each verifier checks it holds them). Side by
//! side in the same run, the same engine with the same configuration driven by a bare
//! application, as the engine's own log example does (a random digest proposed, every
//! proposal accepted): the ratio is what checking and storing cuts costs. Then a validator
//! that missed CATCHUP decided cuts catches up from another over the Ledger service.
//!
//!     cargo bench -p gridgate-node --bench consensus [-- SECONDS [CATCHUP]]
//!
//! SECONDS defaults to 20 (each run), CATCHUP to 10000.
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commonware_actor::Feedback;
use commonware_consensus::simplex::Plan;
use commonware_consensus::simplex::types::{Activity, Context};
use commonware_consensus::{Automaton, CertifiableAutomaton, Relay, Reporter};
use commonware_cryptography::{ed25519, sha256};
use commonware_utils::channel::oneshot;
use ed25519_dalek::{Signer as _, SigningKey};
use gridgate_config::ledger::{ConsensusConfig, LedgerConfig, LedgerRole, MemberConfig};
use gridgate_core::instruments::Instruments;
use gridgate_ledger::cut::{self, CutState, NAMESPACE, finalize_message};
use gridgate_ledger::{Member, Members};
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_node::app::{Digest, Scheme};
use gridgate_node::engine::{self, Params, Seat};
use gridgate_proto::v1 as pb;
use gridgate_store::Store;
use prost::Message;

const VALIDATORS: usize = 4;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    SigningKey::from_bytes(&seed)
}

struct Consortium {
    keys: Vec<SigningKey>,
    genesis: Members,
}

fn consortium() -> Consortium {
    let keys: Vec<SigningKey> = (0..VALIDATORS).map(|_| key()).collect();
    let mut genesis = Members::default();
    for (i, k) in keys.iter().enumerate() {
        genesis.0.insert(
            format!("v{i}"),
            Member {
                id: format!("v{i}"),
                role: pb::MemberRole::Validator,
                key: k.verifying_key(),
                removed: false,
            },
        );
    }
    Consortium { keys, genesis }
}

fn addresses() -> Vec<(String, SocketAddr)> {
    (0..VALIDATORS)
        .map(|i| {
            (
                format!("v{i}"),
                SocketAddr::from(([127, 0, 0, 1], free_port())),
            )
        })
        .collect()
}

struct Figures {
    cuts_per_s: f64,
    p50_ms: u32,
    p99_ms: u32,
    entries_per_s: f64,
}

fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A certified entry of `origin` at `seq`, as a store holds it (what a cut names is its
/// hash; the votes are not what this bench measures).
fn certified(origin: &str, seq: u64) -> Vec<u8> {
    let entry = pb::Entry {
        origin: origin.into(),
        seq,
        payload: vec![7; 200],
        ..Default::default()
    };
    pb::CertifiedEntry {
        entry: Some(pb::SignedEntry {
            entry: entry.encode_to_vec(),
            signature: vec![0; 64],
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// gridgate's application: `seconds` of cuts after a warm-up, with 10 logs each growing by
/// 10 entries a second in every store (100 entries/s to order).
async fn ours(c: &Consortium, seconds: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let addresses = addresses();
    let stores: Vec<Arc<Store>> = (0..VALIDATORS)
        .map(|i| {
            Arc::new(Store::open(&dir.path().join(format!("v{i}")), &format!("v{i}")).unwrap())
        })
        .collect();
    let status: Vec<Arc<Instruments>> = (0..VALIDATORS).map(|_| Arc::default()).collect();
    let mut running = Vec::new();
    for i in 0..VALIDATORS {
        running.push(
            engine::start(Params {
                store: stores[i].clone(),
                genesis: c.genesis.clone(),
                me: format!("v{i}"),
                secret: c.keys[i].to_bytes(),
                cfg: ConsensusConfig {
                    listen: addresses[i].1,
                    cut_interval: Duration::ZERO,
                    max_clock_skew: Duration::from_secs(10),
                },
                addresses: addresses.clone(),
                journal: dir.path().join(format!("v{i}/consensus")),
                status: status[i].clone(),
            })
            .unwrap(),
        );
    }
    // Entries arrive certified in every store: 10 logs, each one entry every 100 ms.
    let feeding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (stores, feeding) = (stores.clone(), feeding.clone());
        tokio::task::spawn_blocking(move || {
            let mut seq = 0u64;
            while feeding.load(Ordering::Relaxed) {
                let items: Vec<(String, u64, Vec<u8>)> = (0..10)
                    .map(|k| {
                        let origin = format!("gw{k}");
                        let bytes = certified(&origin, seq);
                        (origin, seq, bytes)
                    })
                    .collect();
                for s in &stores {
                    s.ledger().put_certified_many(&items).unwrap();
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let height = |s: &Arc<Instruments>| s.consensus.decided_height.load(Ordering::Relaxed);
    let warm = Instant::now();
    while height(&status[0]) < 20 {
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "no cut decided within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status[0].consensus.samples.lock().unwrap().clear();
    let ordered = |s: &Arc<Store>| -> u64 {
        s.ledger()
            .decided_state()
            .unwrap()
            .heads
            .values()
            .map(|h| h.next)
            .sum()
    };
    let (h0, e0, t0) = (height(&status[0]), ordered(&stores[0]), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (h1, e1, dt) = (
        height(&status[0]),
        ordered(&stores[0]),
        t0.elapsed().as_secs_f64(),
    );
    let mut samples: Vec<u32> = status[0]
        .consensus
        .samples
        .lock()
        .unwrap()
        .iter()
        .copied()
        .collect();
    samples.sort_unstable();
    feeding.store(false, Ordering::Relaxed);
    feeder.await.unwrap();
    for r in running {
        tokio::task::spawn_blocking(move || r.stop())
            .await
            .unwrap()
            .unwrap();
    }
    // Every validator decided the same chain.
    let chains: Vec<Vec<[u8; 32]>> = stores
        .iter()
        .map(|s| {
            s.ledger()
                .cuts(1, h0 as usize)
                .unwrap()
                .iter()
                .map(|(_, d)| cut::digest(&d.cut))
                .collect()
        })
        .collect();
    assert!(
        chains.iter().all(|c| c == &chains[0]),
        "the validators' chains differ"
    );
    Figures {
        cuts_per_s: (h1 - h0) as f64 / dt,
        p50_ms: quantile(&samples, 0.5),
        p99_ms: quantile(&samples, 0.99),
        entries_per_s: (e1 - e0) as f64 / dt,
    }
}

/// The log example's application: a random digest proposed, every proposal accepted; the
/// proposer times its own proposals to their finalization.
#[derive(Clone, Default)]
struct Bare {
    proposed: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
    finalized: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<u32>>>,
}

type Ctx = Context<Digest, ed25519::PublicKey>;

impl Automaton for Bare {
    type Context = Ctx;
    type Digest = Digest;

    async fn propose(&mut self, _: Ctx) -> oneshot::Receiver<Digest> {
        let (tx, rx) = oneshot::channel();
        let mut d = [0u8; 32];
        getrandom::fill(&mut d).unwrap();
        self.proposed.lock().unwrap().insert(d, Instant::now());
        let _ = tx.send(sha256::Digest(d));
        rx
    }

    async fn verify(&mut self, _: Ctx, _: Digest) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(true);
        rx
    }
}

impl CertifiableAutomaton for Bare {}

impl Relay for Bare {
    type Digest = Digest;
    type PublicKey = ed25519::PublicKey;
    type Plan = Plan<ed25519::PublicKey>;

    fn broadcast(&mut self, _: Digest, _: Self::Plan) -> Feedback {
        Feedback::Ok
    }
}

impl Reporter for Bare {
    type Activity = Activity<Scheme, Digest>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        if let Activity::Finalization(f) = activity {
            self.finalized.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.proposed.lock().unwrap().remove(&f.proposal.payload.0) {
                self.samples
                    .lock()
                    .unwrap()
                    .push(t.elapsed().as_millis() as u32);
            }
        }
        Feedback::Ok
    }
}

async fn bare(c: &Consortium, seconds: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let addresses = addresses();
    let apps: Vec<Bare> = (0..VALIDATORS).map(|_| Bare::default()).collect();
    let mut running = Vec::new();
    for i in 0..VALIDATORS {
        let seat = Seat {
            genesis: c.genesis.clone(),
            me: format!("v{i}"),
            secret: c.keys[i].to_bytes(),
            listen: addresses[i].1,
            addresses: addresses.clone(),
            journal: dir.path().join(format!("v{i}")),
            cut_interval: Duration::ZERO,
        };
        running.push(
            engine::start_engine(seat, apps[i].clone(), |sender, receiver| async move {
                // The bare application sends nothing of its own; the channel stays open.
                let _open = (sender, receiver);
                std::future::pending::<()>().await
            })
            .unwrap(),
        );
    }
    let finalized = |a: &Bare| a.finalized.load(Ordering::Relaxed);
    let warm = Instant::now();
    while finalized(&apps[0]) < 20 {
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "nothing finalized within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &apps {
        a.samples.lock().unwrap().clear();
    }
    let (f0, t0) = (finalized(&apps[0]), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (f1, dt) = (finalized(&apps[0]), t0.elapsed().as_secs_f64());
    let mut samples: Vec<u32> = apps
        .iter()
        .flat_map(|a| a.samples.lock().unwrap().clone())
        .collect();
    samples.sort_unstable();
    for r in running {
        tokio::task::spawn_blocking(move || r.stop())
            .await
            .unwrap()
            .unwrap();
    }
    Figures {
        cuts_per_s: (f1 - f0) as f64 / dt,
        p50_ms: quantile(&samples, 0.5),
        p99_ms: quantile(&samples, 0.99),
        entries_per_s: 0.0,
    }
}

/// A chain of `n` decided cuts, each finalized by validators 0, 1 and 2, as the engine's
/// finalizations are written (the same message, the same keys).
fn chain(c: &Consortium, n: u64) -> Vec<pb::DecidedCut> {
    let mut at = CutState::genesis();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let next = at.heads.get("gw").map_or(0, |h| h.next) + 1;
        let proposed = at.propose(
            [("gw".to_string(), next, [(i % 251) as u8; 32])],
            1_000 + i as i64,
        );
        let bytes = proposed.encode_to_vec();
        let d = cut::digest(&bytes);
        at = at.follow(&proposed, d).unwrap();
        let view = i + 1;
        let message = finalize_message(NAMESPACE, 0, view, view - 1, &d);
        out.push(pb::DecidedCut {
            certificate: Some(pb::CutCertificate {
                epoch: 0,
                view,
                parent_view: view - 1,
                votes: (0..3)
                    .map(|v| pb::CutVote {
                        validator: format!("v{v}"),
                        signature: c.keys[v].sign(&message).to_bytes().to_vec(),
                    })
                    .collect(),
            }),
            cut: bytes,
        });
    }
    out
}

/// A validator that missed `n` decided cuts: from another's Ledger service (plain gRPC on
/// loopback), each link and finalization checked, stored. Seconds until it holds them all.
async fn catch_up(c: &Consortium, n: u64) -> f64 {
    use gridgate_proto::v1::ledger_server::LedgerServer;
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(Store::open(&dir.path().join("v0"), "v0").unwrap());
    for part in chain(c, n).chunks(1000) {
        gridgate_ledger_node::cuts::store_decided(&source, &c.genesis, part).unwrap();
    }
    assert_eq!(source.ledger().decided_state().unwrap().height, n);
    let port = free_port();
    let service = gridgate_api::ledger::LedgerService {
        store: source,
        state: Arc::new(gridgate_ledger_node::state::LedgerState::new(
            c.genesis.clone(),
        )),
        me: "v0".into(),
        key: gridgate_core::Identity::generate().unwrap(),
        role: LedgerRole::Validator,
        callers: gridgate_api::ledger::Callers::Unchecked,
        shutdown: Default::default(),
        vote_form: gridgate_ledger_node::node::VoteForm::Window,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LedgerServer::new(service))
            .serve(([127, 0, 0, 1], port).into()),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let behind = Arc::new(Store::open(&dir.path().join("v3"), "v3").unwrap());
    let cfg = LedgerConfig {
        role: LedgerRole::Validator,
        members: (0..VALIDATORS)
            .map(|i| MemberConfig {
                id: format!("v{i}"),
                role: "validator".into(),
                public_key: Default::default(),
                // Every peer is v0's service here: one source is what is measured.
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                consensus: None,
            })
            .collect(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        commit_batches: 0,
        terms: Default::default(),
        consensus: None,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let sync = tokio::spawn(gridgate_ledger_node::sync::run(
        gridgate_ledger_node::sync::Replica {
            store: behind.clone(),
            state: Arc::new(gridgate_ledger_node::state::LedgerState::new(
                c.genesis.clone(),
            )),
            me: "v3".into(),
            role: LedgerRole::Validator,
            wake: Default::default(),
        },
        cfg,
        cancel.clone(),
    ));
    while behind.ledger().decided_state().unwrap().height < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "catch-up stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = sync.await;
    took
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(20);
    let catchup = args.get(1).copied().unwrap_or(10_000);
    let c = consortium();
    println!(
        "consensus: {VALIDATORS} validators (f = 1) in one process on loopback, {seconds} s each run"
    );
    let o = ours(&c, seconds).await;
    let b = bare(&c, seconds).await;
    println!(
        "gridgate cuts:      {:.1} cuts/s, finality p50 {} ms, p99 {} ms ({:.0} entries ordered/s)",
        o.cuts_per_s, o.p50_ms, o.p99_ms, o.entries_per_s
    );
    println!(
        "bare engine (log):  {:.1} decisions/s, finality p50 {} ms, p99 {} ms",
        b.cuts_per_s, b.p50_ms, b.p99_ms
    );
    println!(
        "ratio: {:.2}x the bare engine's decisions/s",
        o.cuts_per_s / b.cuts_per_s
    );
    let took = catch_up(&c, catchup).await;
    println!(
        "catch-up: {catchup} decided cuts fetched, checked and stored in {took:.1} s ({:.0} cuts/s)",
        catchup as f64 / took
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tconsensus.cuts_per_s\t{:.1}\tcuts/s\thigher\t{:.1}\t{:.2}\t-",
        o.cuts_per_s,
        b.cuts_per_s,
        o.cuts_per_s / b.cuts_per_s
    );
    println!(
        "result\tconsensus.finality_p99_ms\t{}\tms\tlower\t{}\t{:.2}\t-",
        o.p99_ms,
        b.p99_ms,
        o.p99_ms as f64 / b.p99_ms.max(1) as f64
    );
    println!(
        "result\tconsensus.catchup_cuts_per_s\t{:.0}\tcuts/s\thigher\t-\t-\t-",
        catchup as f64 / took
    );
}
