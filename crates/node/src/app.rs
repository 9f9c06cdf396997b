//! The application the consensus engine drives. The engine asks for a payload when this
//! validator leads a view (propose), asks whether another leader's payload is valid
//! (verify), asks to send a payload's body to the others (relay) and reports what it
//! decided (reporter). Payloads are cut digests; bodies travel on a channel of their own,
//! and a body a validator lacks is asked of the others by its digest.
//!
//! A validator votes for a cut only if it follows its parent (the next height, chained,
//! later in time, every head forward: `CutState::follow`), its time is within
//! `max_clock_skew` of this clock, and this replica holds certified every entry it names
//! with that hash. While something may still arrive (the body, the parent, an entry) the
//! verdict waits: the engine's view timeout decides liveness, never a guess here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use commonware_actor::Feedback;
use commonware_consensus::simplex::Plan;
use commonware_consensus::simplex::types::{Activity, Context, Finalization};
use commonware_consensus::{Automaton, CertifiableAutomaton, Relay, Reporter, Viewable};
use commonware_cryptography::{ed25519, sha256};
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_utils::channel::oneshot;
use gridgate_ledger::Members;
use gridgate_ledger::cut::{self, CutState};
use gridgate_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use gridgate_config::ledger::ConsensusConfig;
use gridgate_core::instruments::Instruments;
use gridgate_ledger_node::cuts;
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_store::Store;

/// The engine's signing scheme: Ed25519, attributable (each vote names its validator), so a
/// finalization is checked offline with the validators' keys.
pub type Scheme = commonware_consensus::simplex::scheme::ed25519::Scheme;
/// What the engine orders: SHA-256 of a cut's bytes.
pub type Digest = sha256::Digest;
type Ctx = Context<Digest, ed25519::PublicKey>;

/// Heads a cut names at most: the rest wait for the next cut. Bounds a body (about 70 bytes
/// a head) well under the P2P message limit.
pub const MAX_HEADS: usize = 4096;
/// Largest body message on the cut channel.
pub const MAX_BODY: usize = 1 << 20;
/// Bodies of undecided cuts kept at most (a peer cannot grow this without bound).
const MAX_BODIES: usize = 16_384;
/// Between two asks for the same missing body.
const ASK_AGAIN: Duration = Duration::from_millis(200);

const TAG_BODY: u8 = 0;
const TAG_WANT: u8 = 1;

/// What the engine asks of the application.
pub enum ToApp {
    Propose {
        context: Ctx,
        response: oneshot::Sender<Digest>,
    },
    Verify {
        context: Ctx,
        digest: Digest,
        response: oneshot::Sender<bool>,
    },
    Broadcast {
        digest: Digest,
        plan: Plan<ed25519::PublicKey>,
    },
    Finalized(Box<Finalization<Scheme, Digest>>),
    Nullified(u64),
    View(u64),
}

/// The engine's handle on the application: automaton, relay and reporter in one.
#[derive(Clone)]
pub struct Mailbox(mpsc::UnboundedSender<ToApp>);

impl Mailbox {
    /// A mailbox and the receiver the application runs on.
    pub fn new() -> (Mailbox, mpsc::UnboundedReceiver<ToApp>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Mailbox(tx), rx)
    }
}

impl Automaton for Mailbox {
    type Context = Ctx;
    type Digest = Digest;

    async fn propose(&mut self, context: Ctx) -> oneshot::Receiver<Digest> {
        let (response, rx) = oneshot::channel();
        let _ = self.0.send(ToApp::Propose { context, response });
        rx
    }

    async fn verify(&mut self, context: Ctx, digest: Digest) -> oneshot::Receiver<bool> {
        let (response, rx) = oneshot::channel();
        let _ = self.0.send(ToApp::Verify {
            context,
            digest,
            response,
        });
        rx
    }
}

impl CertifiableAutomaton for Mailbox {}

impl Relay for Mailbox {
    type Digest = Digest;
    type PublicKey = ed25519::PublicKey;
    type Plan = Plan<ed25519::PublicKey>;

    fn broadcast(&mut self, digest: Digest, plan: Self::Plan) -> Feedback {
        let _ = self.0.send(ToApp::Broadcast { digest, plan });
        Feedback::Ok
    }
}

impl Reporter for Mailbox {
    type Activity = Activity<Scheme, Digest>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        let view = activity.view().get();
        let _ = self.0.send(ToApp::View(view));
        match activity {
            Activity::Finalization(f) => {
                let _ = self.0.send(ToApp::Finalized(Box::new(f)));
            }
            Activity::Nullification(_) => {
                let _ = self.0.send(ToApp::Nullified(view));
            }
            _ => {}
        }
        Feedback::Ok
    }
}

/// A body this validator holds: a cut it proposed, received or fetched.
struct Body {
    bytes: Vec<u8>,
    cut: pb::Cut,
    /// Its own finalization, when a peer that sent it had one.
    certificate: Option<pb::CutCertificate>,
}

struct PendingPropose {
    context: Ctx,
    response: oneshot::Sender<Digest>,
}

struct PendingVerify {
    context: Ctx,
    digest: Digest,
    response: oneshot::Sender<bool>,
}

/// How a misbehaving validator misbehaves (tests only, through a fail point).
fn propose_unheld() -> bool {
    fail::eval("node-propose-unheld", |_| ()).is_some()
}

/// The application's state.
pub struct App {
    store: Arc<Store>,
    /// The validator set (genesis), against which finalizations are checked.
    genesis: Members,
    /// Member id of each engine participant index (participants sorted by key).
    ids: Vec<String>,
    cfg: ConsensusConfig,
    status: Arc<Instruments>,
    bodies: HashMap<[u8; 32], Body>,
    /// Fold states of cuts checked (proposed or verified), by digest.
    states: HashMap<[u8; 32], CutState>,
    decided: CutState,
    proposals: Vec<PendingPropose>,
    verifies: Vec<PendingVerify>,
    /// The newest finalization not stored yet: it decides every ancestor too.
    finalized: Option<(u64, [u8; 32])>,
    /// Finalizations by cut digest, kept until their cut is stored (bounded).
    certs: HashMap<[u8; 32], pb::CutCertificate>,
    asked: HashMap<[u8; 32], Instant>,
    /// When each other validator was last heard on the cut channel (every one leads, and
    /// sends its cut, every few views).
    heard: HashMap<ed25519::PublicKey, Instant>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl App {
    /// The application of a validator over `store`.
    pub fn new(
        store: Arc<Store>,
        genesis: Members,
        ids: Vec<String>,
        cfg: ConsensusConfig,
        status: Arc<Instruments>,
    ) -> Result<App, gridgate_store::StoreError> {
        let decided = store.ledger().decided_state()?;
        status
            .consensus
            .decided_height
            .store(decided.height, Ordering::Relaxed);
        Ok(App {
            store,
            genesis,
            ids,
            cfg,
            status,
            bodies: HashMap::new(),
            states: HashMap::new(),
            decided,
            proposals: Vec::new(),
            verifies: Vec::new(),
            finalized: None,
            certs: HashMap::new(),
            asked: HashMap::new(),
            heard: HashMap::new(),
        })
    }

    /// Runs until the engine's mailbox closes.
    pub async fn run<S, R>(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<ToApp>,
        mut sender: S,
        mut receiver: R,
    ) where
        S: Sender<PublicKey = ed25519::PublicKey>,
        R: Receiver<PublicKey = ed25519::PublicKey>,
    {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reread = Instant::now();
        loop {
            tokio::select! {
                m = inbox.recv() => match m {
                    Some(m) => self.handle(m, &mut sender),
                    None => return,
                },
                n = receiver.recv() => match n {
                    Ok((from, buf)) => self.on_peer(from, buf.as_ref(), &mut sender),
                    Err(e) => {
                        warn!("consensus: the cut channel closed: {e}");
                        return;
                    }
                },
                _ = tick.tick() => {}
            }
            // The cut sync (gRPC, from the other validators) may have stored decided cuts.
            if reread.elapsed() > Duration::from_secs(1) {
                reread = Instant::now();
                self.reread_decided();
                self.heard
                    .retain(|_, t| t.elapsed() < Duration::from_secs(30));
                self.status
                    .consensus
                    .peers
                    .store(self.heard.len() as u64, Ordering::Relaxed);
            }
            self.progress(&mut sender);
        }
    }

    fn reread_decided(&mut self) {
        match self.store.ledger().decided_state() {
            Ok(s) if s.height > self.decided.height => self.set_decided(s),
            Ok(_) => {}
            Err(e) => warn!("consensus: reading decided cuts: {e}"),
        }
    }

    fn set_decided(&mut self, s: CutState) {
        self.status
            .consensus
            .decided_height
            .store(s.height, Ordering::Relaxed);
        let floor = s.height;
        self.decided = s;
        // Nothing at or below a decided height is built on again.
        self.bodies.retain(|_, b| b.cut.height + 64 > floor);
        self.states.retain(|_, st| st.height >= floor);
    }

    fn handle<S: Sender<PublicKey = ed25519::PublicKey>>(&mut self, m: ToApp, sender: &mut S) {
        match m {
            ToApp::Propose { context, response } => {
                self.proposals.push(PendingPropose { context, response })
            }
            ToApp::Verify {
                context,
                digest,
                response,
            } => self.verifies.push(PendingVerify {
                context,
                digest,
                response,
            }),
            ToApp::Broadcast { digest, plan } => {
                let Some(b) = self.bodies.get(&digest.0) else {
                    debug!("consensus: asked to relay a body this node does not hold");
                    return;
                };
                let recipients = match plan {
                    Plan::Prepare { .. } | Plan::Propose { .. } => Recipients::All,
                    Plan::Forward { recipients, .. } => recipients,
                };
                let msg = body_message(b);
                sender.send(recipients, msg, true);
            }
            ToApp::Finalized(f) => {
                let view = f.proposal.round.view().get();
                let digest = f.proposal.payload.0;
                if self.certs.len() >= MAX_BODIES {
                    self.certs.clear();
                }
                self.certs.insert(digest, self.certificate(&f));
                if self.finalized.is_none_or(|(v, _)| v < view) {
                    self.finalized = Some((view, digest));
                }
            }
            ToApp::Nullified(_) => {
                self.status
                    .consensus
                    .nullified
                    .fetch_add(1, Ordering::Relaxed);
            }
            ToApp::View(v) => {
                self.status.consensus.view.fetch_max(v, Ordering::Relaxed);
            }
        }
    }

    fn on_peer<S: Sender<PublicKey = ed25519::PublicKey>>(
        &mut self,
        from: ed25519::PublicKey,
        msg: &[u8],
        sender: &mut S,
    ) {
        self.heard.insert(from.clone(), Instant::now());
        let recent = self
            .heard
            .values()
            .filter(|t| t.elapsed() < Duration::from_secs(30))
            .count();
        self.status
            .consensus
            .peers
            .store(recent as u64, Ordering::Relaxed);
        match msg.split_first() {
            Some((&TAG_BODY, rest)) => {
                let Ok(d) = pb::DecidedCut::decode(rest) else {
                    debug!("consensus: a peer sent a body that does not decode");
                    return;
                };
                let Ok(c) = cut::decode(&d.cut) else {
                    debug!("consensus: a peer sent a cut that does not decode");
                    return;
                };
                if c.height <= self.decided.height || self.bodies.len() >= MAX_BODIES {
                    return;
                }
                let digest = cut::digest(&d.cut);
                self.asked.remove(&digest);
                self.bodies.entry(digest).or_insert(Body {
                    bytes: d.cut,
                    cut: c,
                    certificate: d.certificate,
                });
            }
            Some((&TAG_WANT, rest)) => {
                let Ok(digest) = <[u8; 32]>::try_from(rest) else {
                    return;
                };
                if let Some(b) = self.bodies.get(&digest) {
                    sender.send(Recipients::One(from), body_message(b), false);
                }
            }
            _ => debug!("consensus: a peer sent a message of no known kind"),
        }
    }

    /// Asks every peer for a body (at most every [`ASK_AGAIN`]).
    fn want<S: Sender<PublicKey = ed25519::PublicKey>>(
        &mut self,
        digest: [u8; 32],
        sender: &mut S,
    ) {
        let now = Instant::now();
        if self
            .asked
            .get(&digest)
            .is_some_and(|t| now.duration_since(*t) < ASK_AGAIN)
        {
            return;
        }
        if self.asked.len() >= MAX_BODIES {
            // Asks for bodies that never came (a digest no one holds): forget them.
            self.asked.retain(|_, t| now.duration_since(*t) < ASK_AGAIN);
        }
        self.asked.insert(digest, now);
        let mut msg = vec![TAG_WANT];
        msg.extend_from_slice(&digest);
        sender.send(Recipients::All, msg, false);
    }

    /// The fold state as of the cut `digest`, if this node can know it: decided, checked
    /// before, or a body whose ancestors lead to one of those (checked now, in order).
    fn state_of(&mut self, digest: [u8; 32]) -> Result<CutState, Missing> {
        if digest == self.decided.digest {
            return Ok(self.decided.clone());
        }
        if let Some(s) = self.states.get(&digest) {
            return Ok(s.clone());
        }
        if digest == CutState::genesis().digest {
            return Ok(CutState::genesis());
        }
        let mut chain = Vec::new();
        let mut at = digest;
        let base = loop {
            let Some(b) = self.bodies.get(&at) else {
                return Err(Missing::Body(at));
            };
            if b.cut.height <= self.decided.height {
                return Err(Missing::Invalid);
            }
            chain.push(at);
            let parent: [u8; 32] = b
                .cut
                .parent
                .as_slice()
                .try_into()
                .map_err(|_| Missing::Invalid)?;
            if parent == self.decided.digest {
                break self.decided.clone();
            }
            if let Some(s) = self.states.get(&parent) {
                break s.clone();
            }
            at = parent;
        };
        let mut state = base;
        for d in chain.into_iter().rev() {
            let Some(b) = self.bodies.get(&d) else {
                return Err(Missing::Body(d));
            };
            state = state.follow(&b.cut, d).map_err(|_| Missing::Invalid)?;
            self.states.insert(d, state.clone());
        }
        Ok(state)
    }

    fn progress<S: Sender<PublicKey = ed25519::PublicKey>>(&mut self, sender: &mut S) {
        self.progress_proposals(sender);
        self.progress_verifies(sender);
        self.progress_finalized(sender);
    }

    fn progress_proposals<S: Sender<PublicKey = ed25519::PublicKey>>(&mut self, sender: &mut S) {
        let pending = std::mem::take(&mut self.proposals);
        for p in pending {
            if p.response.is_closed() {
                continue;
            }
            let parent = match self.state_of(p.context.parent.1.0) {
                Ok(s) => s,
                Err(Missing::Body(d)) => {
                    self.want(d, sender);
                    self.proposals.push(p);
                    continue;
                }
                Err(Missing::Invalid) => continue,
            };
            let now = now_ms();
            let due = parent.time_ms + self.cfg.cut_interval.as_millis() as i64;
            if now < due {
                self.proposals.push(p);
                continue;
            }
            let mut held = match cuts::held_heads(&self.store) {
                Ok(h) => h,
                Err(e) => {
                    warn!("consensus: cannot read the heads to propose: {e}");
                    self.proposals.push(p);
                    continue;
                }
            };
            held.retain(|(o, n, _)| parent.heads.get(o).map_or(0, |h| h.next) < *n);
            held.truncate(MAX_HEADS);
            if propose_unheld() {
                // A cut naming an entry nobody holds: honest validators must not vote for it.
                let origin = held
                    .first()
                    .map_or_else(|| "v0".to_string(), |h| h.0.clone());
                let next = parent.heads.get(&origin).map_or(0, |h| h.next) + 1_000;
                held.retain(|h| h.0 != origin);
                held.push((origin, next, [0xee; 32]));
            }
            let c = parent.propose(held, now);
            let bytes = c.encode_to_vec();
            let digest = cut::digest(&bytes);
            match parent.follow(&c, digest) {
                Ok(s) => {
                    self.states.insert(digest, s);
                }
                Err(e) => {
                    warn!("consensus: own proposal does not follow its parent: {e}");
                    continue;
                }
            }
            debug!(
                height = c.height,
                heads = c.heads.len(),
                "consensus: proposing a cut"
            );
            self.bodies.insert(
                digest,
                Body {
                    bytes,
                    cut: c,
                    certificate: None,
                },
            );
            let _ = p.response.send(sha256::Digest(digest));
        }
    }

    fn progress_verifies<S: Sender<PublicKey = ed25519::PublicKey>>(&mut self, sender: &mut S) {
        let pending = std::mem::take(&mut self.verifies);
        for v in pending {
            if v.response.is_closed() {
                continue;
            }
            let digest = v.digest.0;
            let Some(body) = self.bodies.get(&digest) else {
                self.want(digest, sender);
                self.verifies.push(v);
                continue;
            };
            let c = body.cut.clone();
            if c.parent.as_slice() != v.context.parent.1.0 {
                self.refuse(v, &c, "its parent is not the one the engine builds on");
                continue;
            }
            let parent = match self.state_of(v.context.parent.1.0) {
                Ok(s) => s,
                Err(Missing::Body(d)) => {
                    self.want(d, sender);
                    self.verifies.push(v);
                    continue;
                }
                Err(Missing::Invalid) => {
                    self.refuse(v, &c, "its parent does not follow the decided cuts");
                    continue;
                }
            };
            let state = match parent.follow(&c, digest) {
                Ok(s) => s,
                Err(e) => {
                    self.refuse(v, &c, &e.to_string());
                    continue;
                }
            };
            let now = now_ms();
            let skew = self.cfg.max_clock_skew.as_millis() as i64;
            if c.time_ms > now + skew {
                // The proposer's clock runs ahead: wait until ours is within the bound.
                self.verifies.push(v);
                continue;
            }
            if c.time_ms < now - skew {
                self.refuse(
                    v,
                    &c,
                    "its time is further behind this clock than max_clock_skew",
                );
                continue;
            }
            let mut verdict = Verdict::Yes;
            for h in &c.heads {
                match cuts::holds(&self.store, h) {
                    Ok(true) => {}
                    Ok(false) => {
                        verdict = if self.held_elsewhere(h) {
                            Verdict::No(format!(
                                "{} at {} names another entry than the one certified here",
                                h.origin,
                                h.next.saturating_sub(1)
                            ))
                        } else {
                            // Not held yet: the certifier pushes entries to every validator
                            // and the sync fetches what is missing; the verdict waits.
                            Verdict::Wait
                        };
                        break;
                    }
                    Err(e) => {
                        warn!("consensus: reading certified entries: {e}");
                        verdict = Verdict::Wait;
                        break;
                    }
                }
            }
            match verdict {
                Verdict::Yes => {}
                Verdict::Wait => {
                    self.verifies.push(v);
                    continue;
                }
                Verdict::No(why) => {
                    self.refuse(v, &c, &why);
                    continue;
                }
            }
            self.states.insert(digest, state);
            let _ = v.response.send(true);
        }
    }

    /// Whether this replica holds a different certified entry where `h` names one: then the
    /// cut is wrong for good (certified entries are final).
    fn held_elsewhere(&self, h: &pb::CutHead) -> bool {
        let Some(seq) = h.next.checked_sub(1) else {
            return false;
        };
        matches!(self.store.ledger().certified(&h.origin, seq), Ok(Some(_)))
    }

    fn refuse(&mut self, v: PendingVerify, c: &pb::Cut, why: &str) {
        self.status
            .consensus
            .refused
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            height = c.height,
            view = v.context.view().get(),
            "consensus: refused a proposed cut: {why}"
        );
        let _ = v.response.send(false);
    }

    fn progress_finalized<S: Sender<PublicKey = ed25519::PublicKey>>(&mut self, sender: &mut S) {
        let Some((_, digest)) = self.finalized else {
            return;
        };
        // The chain from the newest decided cut to this one, newest first.
        let mut chain: Vec<pb::DecidedCut> = Vec::new();
        let mut at = digest;
        loop {
            if at == self.decided.digest {
                break;
            }
            let Some(b) = self.bodies.get(&at) else {
                // Missing here: asked of the peers; older cuts come by the cut sync too.
                self.want(at, sender);
                return;
            };
            if b.cut.height <= self.decided.height {
                // Decided already (by the sync) on a chain this one must extend: the store
                // refuses what does not follow.
                break;
            }
            chain.push(pb::DecidedCut {
                cut: b.bytes.clone(),
                certificate: self
                    .certs
                    .get(&at)
                    .cloned()
                    .or_else(|| b.certificate.clone()),
            });
            let Ok(parent) = <[u8; 32]>::try_from(b.cut.parent.as_slice()) else {
                break;
            };
            at = parent;
        }
        self.finalized = None;
        if chain.is_empty() {
            return;
        }
        chain.reverse();
        match cuts::store_decided(&self.store, &self.genesis, &chain) {
            Ok(n) => {
                let now = now_ms();
                for d in &chain {
                    let digest = cut::digest(&d.cut);
                    if let Some(c) = self.certs.remove(&digest) {
                        if let Some(b) = self.bodies.get_mut(&digest) {
                            b.certificate = Some(c);
                        }
                        if let Ok(c) = cut::decode(&d.cut) {
                            self.status
                                .consensus
                                .finalized((now - c.time_ms).max(0) as u64);
                        }
                    }
                }
                self.reread_decided();
                debug!(cuts = n, height = self.decided.height, "consensus: decided");
                if self.decided.height.is_multiple_of(1000) {
                    info!(height = self.decided.height, "consensus: decided cut");
                }
            }
            Err(e) => warn!("consensus: a finalized cut was not stored: {e}"),
        }
    }

    /// The engine's finalization as gateways check it.
    fn certificate(&self, f: &Finalization<Scheme, Digest>) -> pb::CutCertificate {
        let votes = f
            .certificate
            .signers
            .iter()
            .zip(f.certificate.signatures.iter())
            .filter_map(|(i, s)| {
                Some(pb::CutVote {
                    validator: self.ids.get(i.get() as usize)?.clone(),
                    signature: s.get()?.as_ref().to_vec(),
                })
            })
            .collect();
        pb::CutCertificate {
            epoch: f.proposal.round.epoch().get(),
            view: f.proposal.round.view().get(),
            parent_view: f.proposal.parent.get(),
            votes,
        }
    }
}

enum Verdict {
    Yes,
    Wait,
    No(String),
}

enum Missing {
    Body([u8; 32]),
    Invalid,
}

fn body_message(b: &Body) -> Vec<u8> {
    let d = pb::DecidedCut {
        cut: b.bytes.clone(),
        certificate: b.certificate.clone(),
    };
    let mut msg = vec![TAG_BODY];
    d.encode(&mut msg).ok();
    msg
}
