//! The consensus engine on its own thread and runtime: commonware's simplex over its
//! authenticated P2P transport (`lookup`: the fixed validator set at the addresses the
//! config lists, each peer known by its identity key), with its journal under the node's
//! data directory. The rest of the node runs on the main runtime; the two share the store.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use commonware_codec::DecodeExt;
use commonware_consensus::simplex::{self, ForwardPolicy, SkipPolicy, elector::RoundRobin};
use commonware_consensus::types::{Epoch, ViewDelta};
use commonware_cryptography::{ChaCha20Poly1305, Sha256, Signer as _, ed25519, sha256};
use commonware_p2p::authenticated::lookup;
use commonware_p2p::{Address, AddressableManager as _};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Quota, Runner as _, Supervisor as _};
use commonware_stream::cups::{self, Cups};
use commonware_stream::sake::{self, Sake};
use commonware_utils::ordered::{Map, Quorum as _, Set};
use commonware_utils::{NZDuration, NZU16, NZU32, NZUsize, TryCollect as _};
use gridgate_ledger::Members;
use gridgate_ledger::cut::{CutState, NAMESPACE};
use gridgate_proto::v1 as pb;
use thiserror::Error;
use tracing::info;

use crate::app::{App, Digest, MAX_BODY, Mailbox, Scheme};
use commonware_consensus::simplex::Plan;
use commonware_consensus::simplex::types::{Activity, Context};
use commonware_consensus::{CertifiableAutomaton, Relay, Reporter};
use gridgate_config::ledger::ConsensusConfig;
use gridgate_core::instruments::Instruments;
use gridgate_store::Store;

/// What the P2P transport's handshake signs under (apart from the engine's votes).
const P2P_NAMESPACE: &[u8] = b"gridgate-consortium-v1_P2P";
/// The engine's journal partition under the journal directory.
const PARTITION: &str = "gridgate-consensus";
const MAILBOX: NonZeroUsize = NZUsize!(1024);

/// Everything the consensus thread needs.
pub struct Params {
    /// The node's store (decided cuts, certified entries).
    pub store: Arc<Store>,
    /// The genesis membership: its validators are the engine's participants.
    pub genesis: Members,
    /// This validator's member id.
    pub me: String,
    /// Its identity key's 32 secret bytes (it signs votes and the P2P handshake).
    pub secret: [u8; 32],
    /// `[ledger.consensus]`.
    pub cfg: ConsensusConfig,
    /// Every validator's consensus address, by member id (this one's included).
    pub addresses: Vec<(String, SocketAddr)>,
    /// Where the engine keeps its journal.
    pub journal: PathBuf,
    /// The node's instruments: the consensus part is updated here.
    pub status: Arc<Instruments>,
}

/// Why consensus does not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The config's validator set cannot be the engine's.
    #[error("consensus: {0}")]
    Validators(String),
    /// The store.
    #[error("consensus: {0}")]
    Store(#[from] gridgate_store::StoreError),
}

/// The consensus thread: stop it with [`Running::stop`].
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), StartError>>>,
}

impl Running {
    /// Asks the engine to stop and waits for its thread (blocking: call off the async
    /// threads or at the end).
    pub fn stop(mut self) -> Result<(), StartError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StartError::Validators(
                "the consensus thread panicked".into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether the thread ended (it only ends on its own when it could not start).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

/// The engine's participants: each validator's key, sorted as the engine sorts them, with
/// the member id of each index.
fn participants(genesis: &Members) -> Result<(Set<ed25519::PublicKey>, Vec<String>), StartError> {
    let mut keys = Vec::new();
    for m in genesis
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Validator)
    {
        let k = ed25519::PublicKey::decode(bytes::Bytes::copy_from_slice(m.key.as_bytes()))
            .map_err(|e| StartError::Validators(format!("{}: key: {e}", m.id)))?;
        keys.push((k, m.id.clone()));
    }
    let set: Set<ed25519::PublicKey> = keys
        .iter()
        .map(|(k, _)| k.clone())
        .try_collect()
        .map_err(|_| StartError::Validators("two validators share a key".into()))?;
    let ids = set
        .iter()
        .filter_map(|k| keys.iter().find(|(x, _)| x == k).map(|(_, id)| id.clone()))
        .collect();
    Ok((set, ids))
}

/// The cut channel's ends, as the application gets them.
pub type CutSender = lookup::Sender<ed25519::PublicKey, commonware_runtime::tokio::Context>;
/// See [`CutSender`].
pub type CutReceiver = lookup::Receiver<ed25519::PublicKey>;

/// Where a validator's engine runs: its key, its listener, its peers and its journal.
pub struct Seat {
    /// The genesis membership: its validators are the engine's participants.
    pub genesis: Members,
    /// This validator's member id.
    pub me: String,
    /// Its identity key's 32 secret bytes.
    pub secret: [u8; 32],
    /// Where its P2P listener binds.
    pub listen: SocketAddr,
    /// Every validator's consensus address, by member id.
    pub addresses: Vec<(String, SocketAddr)>,
    /// The engine's journal directory.
    pub journal: PathBuf,
    /// Least time between two proposals (the leader's timeout is longer).
    pub cut_interval: Duration,
}

/// Starts this validator: the application the engine drives (cuts over `p.store`).
pub fn start(p: Params) -> Result<Running, StartError> {
    let (_, ids) = participants(&p.genesis)?;
    // The app reads the store before the thread starts, so a store fault is reported here.
    let app = App::new(
        p.store.clone(),
        p.genesis.clone(),
        ids,
        p.cfg.clone(),
        p.status.clone(),
    )?;
    let (mailbox, inbox) = Mailbox::new();
    let seat = Seat {
        genesis: p.genesis,
        me: p.me,
        secret: p.secret,
        listen: p.cfg.listen,
        addresses: p.addresses,
        journal: p.journal,
        cut_interval: p.cfg.cut_interval,
    };
    start_engine(seat, mailbox, move |sender, receiver| {
        app.run(inbox, sender, receiver)
    })
}

/// Starts the engine on its own thread and runtime, driven by `mailbox`, with `app` run on
/// the same runtime over the cut channel. [`start`] is gridgate's application; the bench
/// also drives the engine with a bare one.
pub fn start_engine<M, F, Fut>(seat: Seat, mailbox: M, app: F) -> Result<Running, StartError>
where
    M: CertifiableAutomaton<Context = Context<Digest, ed25519::PublicKey>, Digest = Digest>
        + Relay<Digest = Digest, PublicKey = ed25519::PublicKey, Plan = Plan<ed25519::PublicKey>>
        + Reporter<Activity = Activity<Scheme, Digest>>,
    F: FnOnce(CutSender, CutReceiver) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (set, _) = participants(&seat.genesis)?;
    let signer = ed25519::PrivateKey::decode(bytes::Bytes::copy_from_slice(&seat.secret))
        .map_err(|e| StartError::Validators(format!("identity key: {e}")))?;
    if set.index(&signer.public_key()).is_none() {
        return Err(StartError::Validators(format!(
            "this node's identity key is not the key of validator {:?} in [ledger] members",
            seat.me
        )));
    }
    let mut peers = Vec::new();
    for (id, addr) in &seat.addresses {
        let Some(m) = seat.genesis.0.get(id) else {
            continue;
        };
        let k = ed25519::PublicKey::decode(bytes::Bytes::copy_from_slice(m.key.as_bytes()))
            .map_err(|e| StartError::Validators(format!("{id}: key: {e}")))?;
        peers.push((k, Address::Symmetric(*addr)));
    }
    let peers: Map<ed25519::PublicKey, Address> = peers
        .try_into()
        .map_err(|_| StartError::Validators("two validators share a key".into()))?;
    let (listen, journal, cut_interval) = (seat.listen, seat.journal, seat.cut_interval);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || {
            let runtime = commonware_runtime::tokio::Config::new().with_storage_directory(&journal);
            let executor = commonware_runtime::tokio::Runner::new(runtime);
            executor.start(async move |context| {
                let n = set.len() as u32;
                let payload = simplex::max_payload_size::<Scheme, Digest>(n);
                let max_peers =
                    commonware_p2p::authenticated::peer_set_limit(&set, &signer.public_key());
                let mut net = lookup::Config::local(
                    Cups::<_, ChaCha20Poly1305>::new(
                        Sake {
                            signer: signer.clone(),
                            synchrony_bound: Duration::from_secs(5),
                            max_handshake_age: Duration::from_secs(10),
                            version: sake::Version::V1,
                        },
                        cups::Version::V1,
                    ),
                    P2P_NAMESPACE,
                    listen,
                    max_peers,
                    commonware_p2p::max_message_size(&[payload, MAX_BODY + 64]),
                    MAILBOX,
                );
                // Validators sit in members' data centres, often on private addresses.
                net.allow_private_ips = true;
                let (mut network, mut oracle) = lookup::Network::new(context.child("network"), net);
                oracle.track(0, peers);
                let rate = Quota::per_second(NZU32!(2_000));
                let votes = network.register(0, rate);
                let certificates = network.register(1, rate);
                let resolver = network.register(2, rate);
                let (cut_sender, cut_receiver) = network.register(3, rate);

                let scheme = Scheme::signer(NAMESPACE, set.clone(), signer.clone())
                    .ok_or_else(|| StartError::Validators("this node is not a validator".into()))?;
                // The leader waits cut_interval before it proposes: its timeout is longer.
                // The engine asserts skip > certification > leader and skip > retry.
                let leader_timeout = cut_interval + Duration::from_secs(1);
                let certification_timeout = leader_timeout + Duration::from_secs(1);
                let timeout_retry = Duration::from_secs(10);
                let engine = simplex::Engine::new(
                    context.child("engine"),
                    simplex::Config {
                        scheme,
                        elector: RoundRobin::<Sha256>::default(),
                        blocker: oracle,
                        automaton: mailbox.clone(),
                        relay: mailbox.clone(),
                        reporter: mailbox,
                        partition: PARTITION.to_string(),
                        mailbox_size: MAILBOX,
                        epoch: Epoch::zero(),
                        floor: simplex::Floor::Genesis(sha256::Digest(CutState::genesis().digest)),
                        replay_buffer: NZUsize!(1024 * 1024),
                        write_buffer: NZUsize!(1024 * 1024),
                        leader_timeout,
                        certification_timeout,
                        timeout_retry,
                        fetch_timeout: NZDuration!(Duration::from_secs(1)),
                        fetch_retry_delay: Duration::from_millis(100),
                        view_retention: ViewDelta::new(10),
                        skip: SkipPolicy::Enabled {
                            timeout: certification_timeout + timeout_retry,
                            budget: simplex::SkipBudget::Participants,
                        },
                        page_cache: CacheRef::new(NZU16!(16_384), NZUsize!(10_000)),
                        strategy: Sequential,
                        forward: ForwardPolicy::Disabled,
                        track_historical_votes: false,
                    },
                );
                network.start();
                engine.start(votes, certificates, resolver);
                let app_task = tokio::spawn(app(cut_sender, cut_receiver));
                info!(validators = n, listen = %listen, "consensus: started");
                let _ = stop_rx.await;
                app_task.abort();
                info!("consensus: stopped");
                Ok(())
            })
        })
        .map_err(|e| StartError::Validators(format!("cannot start the consensus thread: {e}")))?;
    Ok(Running {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}
