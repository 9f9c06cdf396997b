//! The composition root: `gridgate run` (and `gridgate demo`, which adds simulators around
//! it) start one [`Pipeline`]: buses and MQTT field devices → store (group commit,
//! signed batches) → MQTT uplink; an optional echo prints readings as they are acquired.

pub mod systemd;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use gridgate_acquire::{self as acquire, DeviceRegistry, ReadingSink};
use gridgate_config::{BusConfig, ConfigError, GatewayConfig};
use gridgate_core::Reading;
use gridgate_core::{Identity, IdentityError};
use gridgate_mqtt::ingest::{self, IngestStats};
use gridgate_mqtt::uplink::{self, UplinkStats};
use gridgate_store::writer::{self, StoreHandle, Submission, WriterConfig};
use gridgate_store::{Store, StoreError};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Config unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A ledger member's key is unusable.
    #[error(transparent)]
    Members(#[from] gridgate_ledger_node::MembersError),
    /// Identity key missing or unreadable.
    #[error(
        "{0}\nThe daemon signs every batch with the gateway's identity key: make one with `gridgate keygen --out /etc/gridgate` and point [gateway] identity at it."
    )]
    Identity(#[from] IdentityError),
    /// Store unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Embedded broker would not start.
    #[error(transparent)]
    Broker(#[from] ingest::broker::BrokerError),
    /// TLS files for a broker unusable.
    #[error(transparent)]
    Tls(#[from] gridgate_core::tls::TlsError),
    /// The field listener cannot bind.
    #[error("field listener cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The commissioning page would not start.
    #[error(transparent)]
    Web(#[from] gridgate_web::WebError),
    /// The gRPC API would not start.
    #[error(transparent)]
    Api(#[from] gridgate_api::ApiError),
    /// A trusted DR issuer's key is unusable.
    #[error(transparent)]
    Trust(#[from] gridgate_dr::desk::TrustError),
    /// The echo output failed (stdout closed).
    #[error("output failed: {0}")]
    Sink(#[from] std::io::Error),
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from the moment this is made: a
/// stop asked for while the gateway is still starting (opening the store, binding ports) is
/// a clean stop too, and a SIGHUP then is not the default action that kills the process.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers now.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next stop or reload asked for.
    pub async fn next(&mut self) -> Asked {
        #[cfg(unix)]
        {
            let hup = async {
                match &mut self.hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            match (&mut self.term, &mut self.int) {
                (Some(t), Some(i)) => {
                    tokio::select! {
                        _ = t.recv() => Asked::Stop,
                        _ = i.recv() => Asked::Stop,
                        _ = hup => Asked::Reload,
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    Asked::Stop
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Asked::Stop
        }
    }

    /// Resolves when a stop is asked for (a SIGHUP meanwhile is caught and ignored).
    pub async fn stop(&mut self) {
        while self.next().await == Asked::Reload {}
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// Resolves when the process is asked to stop (SIGINT, SIGTERM).
pub async fn stop_signal() {
    Signals::install().stop().await
}

/// A part of the pipeline that a reload can stop and start on its own: its tasks and the
/// token that stops them (a child of the pipeline's).
struct Part {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Part {
    fn new(parent: &CancellationToken) -> Part {
        Part {
            cancel: parent.child_token(),
            tasks: JoinSet::new(),
        }
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Why a reload was refused. The running config stays in force in every case.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new file does not load or does not check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It changes what only a restart can change.
    #[error(
        "the new config changes {0}, which only a restart applies (systemctl restart gridgate); nothing was reloaded"
    )]
    NeedsRestart(String),
    /// A part would not start on the new config (everything runs on the old one again).
    #[error(
        "{part} would not start on the new config ({reason}); the gateway runs on the old config"
    )]
    Part {
        /// Which part.
        part: &'static str,
        reason: String,
    },
}

fn part_failed(part: &'static str, e: DaemonError) -> ReloadError {
    ReloadError::Part {
        part,
        reason: e.to_string(),
    }
}

/// A running gateway.
pub struct Pipeline {
    cancel: CancellationToken,
    /// The config in force; a reload replaces it, and the gRPC services read it from here.
    config: tokio::sync::watch::Sender<Arc<GatewayConfig>>,
    /// One poller per bus, by bus name, so that a reload restarts only the buses it changes.
    buses: BTreeMap<String, Part>,
    ingest_part: Part,
    uplink_part: Part,
    api: Part,
    web: Part,
    /// The page's address, once it listens.
    pub web_addr: Option<std::net::SocketAddr>,
    /// Every point's last reading (the page).
    pub latest: gridgate_web::latest::Latest,
    /// Metrics updated where things happen.
    pub instruments: Arc<gridgate_core::instruments::Instruments>,
    started: std::time::Instant,
    /// Where pollers send readings (kept to start pollers after a reload).
    readings: mpsc::Sender<Vec<Reading>>,
    forwarder: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: tokio::task::JoinHandle<()>,
    /// The store, for status.
    pub store: StoreHandle,
    /// Device states.
    pub registry: DeviceRegistry,
    /// MQTT ingest counters.
    pub ingest: Arc<IngestStats>,
    /// Uplink counters.
    pub uplink: Arc<UplinkStats>,
    /// Live readings (what gRPC Subscribe serves).
    pub live: tokio::sync::broadcast::Sender<Arc<Reading>>,
    /// What the DR parts share: counters, the record lock, the relay's wake-up, updates.
    pub dr: gridgate_dr::shared::DrShared,
    /// Writes to field devices, through the bus tasks.
    pub controls: acquire::Controls,
    relay: Part,
    /// Signs DR reports, votes and ledger entries (the writer holds its own copy for batches).
    identity: Identity,
    /// Wakes the ledger certifier when an own entry was appended.
    ledger_wake: Arc<tokio::sync::Notify>,
    public_key: [u8; 32],
    rate: std::sync::Mutex<(tokio::time::Instant, u64)>,
}

/// The config sections only a restart applies: the store, its identity and the embedded
/// broker hold files and ports for the process's whole life.
fn restart_only_changes(old: &GatewayConfig, new: &GatewayConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.id != new.id {
        changed.push("[gateway] id");
    }
    if old.data_dir != new.data_dir {
        changed.push("[gateway] data_dir");
    }
    if old.identity != new.identity {
        changed.push("[gateway] identity");
    }
    if old.store != new.store {
        changed.push("[store]");
    }
    if old.broker != new.broker {
        changed.push("[broker]");
    }
    changed
}

/// TLS material of the MQTT links, checked before anything starts, so that a wrong path is
/// an error at start-up (or a refused reload), not a retry loop in the log.
fn check_mqtt_tls(cfg: &GatewayConfig) -> Result<(), gridgate_core::tls::TlsError> {
    if let Some(u) = &cfg.uplink {
        gridgate_acquire::broker::options(&u.broker, &u.client_id, u.keep_alive, None)?;
    }
    if let Some(b) = cfg.ingest.as_ref().and_then(|i| i.broker.as_ref()) {
        let id = cfg.ingest.as_ref().map_or("", |i| i.client_id.as_str());
        gridgate_acquire::broker::options(b, id, Duration::from_secs(30), None)?;
    }
    Ok(())
}

impl Pipeline {
    /// Opens the store and starts everything `cfg` asks for. `echo` also receives every
    /// polled reading (for `--echo` and the demo).
    pub async fn start(
        cfg: &GatewayConfig,
        identity: Identity,
        echo: Option<Box<dyn ReadingSink>>,
    ) -> Result<Pipeline, DaemonError> {
        check_mqtt_tls(cfg)?;
        let public_key = identity.public().to_bytes();
        let report_identity = identity.clone();
        let store = Store::open_with(&cfg.data_dir, &cfg.id, cfg.store.dedupe_window)?;
        store.set_metered(cfg.loads.iter().map(|l| l.meter.clone()));
        let stats = store.stats()?;
        info!(
            store = %store.path().display(),
            next_batch = stats.next_seq,
            open_readings = stats.open_readings,
            "store open and checked"
        );
        let (handle, writer) = writer::start(
            store,
            identity,
            WriterConfig {
                gateway_id: cfg.id.clone(),
                batch_readings: cfg.store.batch_readings,
                batch_interval: cfg.store.batch_interval,
                budget: cfg.store.budget,
                required_consumers: cfg.store.required_consumers.clone(),
            },
        )?;
        if let Some(b) = &cfg.broker {
            let max = cfg.ingest.as_ref().map_or(256 << 10, |i| i.max_payload);
            ingest::broker::start(b.listen, max.saturating_mul(4))?;
        }
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(acquire::QUEUE_DEPTH);
        let live = gridgate_core::live_channel();
        let forwarder = tokio::spawn(forward(rx, handle.clone(), echo, live.clone()));
        let mut p = Pipeline {
            config: tokio::sync::watch::Sender::new(Arc::new(cfg.clone())),
            buses: BTreeMap::new(),
            ingest_part: Part::new(&cancel),
            uplink_part: Part::new(&cancel),
            api: Part::new(&cancel),
            web: Part::new(&cancel),
            web_addr: None,
            latest: Default::default(),
            instruments: Default::default(),
            started: std::time::Instant::now(),
            relay: Part::new(&cancel),
            cancel,
            readings: tx,
            forwarder,
            writer,
            store: handle,
            registry: DeviceRegistry::default(),
            ingest: Arc::new(IngestStats::default()),
            uplink: Arc::new(UplinkStats::default()),
            live,
            dr: gridgate_dr::shared::DrShared::default(),
            controls: acquire::Controls::default(),
            identity: report_identity.clone(),
            ledger_wake: Arc::default(),
            public_key,
            rate: std::sync::Mutex::new((tokio::time::Instant::now(), 0)),
        };
        p.ingest_part = p.start_ingest(cfg).await?;
        p.uplink_part = p.start_uplink(cfg);
        for bus in &cfg.buses {
            p.start_bus(bus);
        }
        p.api = p.start_api(cfg).await?;
        // The page's view of the last readings follows the live readings all the time, so
        // that a page opened later shows values at once.
        p.relay.tasks.spawn(gridgate_web::latest::follow(
            p.latest.clone(),
            p.live.subscribe(),
            p.relay.cancel.clone(),
        ));
        p.web = p.start_web(cfg).await?;
        // Loads commanded over MQTT go through one client on the [ingest] broker; it
        // follows the config itself.
        let (commands, command_rx) = mpsc::channel(acquire::mqtt_command::COMMAND_QUEUE);
        p.controls.attach_mqtt(commands);
        p.relay.tasks.spawn(acquire::mqtt_command::run(
            p.config.subscribe(),
            command_rx,
            p.relay.cancel.clone(),
        ));
        // The relay runs whatever the config: events accepted before a restart still end
        // and restore their loads.
        p.relay.tasks.spawn(gridgate_dr::relay::run(
            gridgate_dr::relay::Relay {
                store: p.store.store.clone(),
                config: p.config.subscribe(),
                controls: p.controls.clone(),
                shared: p.dr.clone(),
                identity: report_identity,
                live: p.live.subscribe(),
                instruments: p.instruments.clone(),
            },
            p.relay.cancel.clone(),
        ));
        Ok(p)
    }

    fn start_bus(&mut self, bus: &BusConfig) {
        let mut part = Part::new(&self.cancel);
        let (tx, rx) = mpsc::channel(acquire::request::CONTROL_QUEUE);
        self.controls.attach(&bus.name, &bus.devices, tx);
        let poller = acquire::BusPoller::new(bus.clone(), self.registry.clone()).with_controls(rx);
        part.tasks
            .spawn(poller.run(self.readings.clone(), part.cancel.clone()));
        self.buses.insert(bus.name.clone(), part);
    }

    async fn start_ingest(&self, cfg: &GatewayConfig) -> Result<Part, DaemonError> {
        let mut part = Part::new(&self.cancel);
        let Some(i) = &cfg.ingest else {
            return Ok(part);
        };
        if i.broker.is_some() {
            part.tasks.spawn(ingest::run(
                i.clone(),
                self.store.clone(),
                self.ingest.clone(),
                self.live.clone(),
                part.cancel.clone(),
            ));
        }
        if let Some(addr) = i.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Listen { addr, source: e })?;
            let tls = match &i.listen_tls {
                None => None,
                Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                    gridgate_core::tls::server_tls(&t.cert, &t.key, t.client_ca.as_deref(), b"")?,
                ))),
            };
            let field = ingest::listener::FieldListener {
                listener,
                tls,
                admission: self
                    .instruments
                    .listeners
                    .get("mqtt-field", gridgate_core::admission::FIELD_MAX),
            };
            part.tasks.spawn(ingest::listener::serve(
                field,
                Arc::new(i.clone()),
                self.store.clone(),
                self.ingest.clone(),
                self.live.clone(),
                part.cancel.clone(),
            ));
        }
        Ok(part)
    }

    fn start_uplink(&self, cfg: &GatewayConfig) -> Part {
        let mut part = Part::new(&self.cancel);
        if let Some(u) = &cfg.uplink {
            part.tasks.spawn(uplink::run(
                u.clone(),
                self.store.clone(),
                self.uplink.clone(),
                part.cancel.clone(),
            ));
        }
        part
    }

    async fn start_api(&self, cfg: &GatewayConfig) -> Result<Part, DaemonError> {
        let mut part = Part::new(&self.cancel);
        let dr_mqtt = cfg.dr.as_ref().zip(cfg.uplink.as_ref());
        if cfg.grpc.is_none() && dr_mqtt.is_none() && cfg.ledger.is_none() {
            return Ok(part);
        }
        let dr = Arc::new(gridgate_dr::desk::DrState {
            trust: gridgate_dr::desk::load_trust(cfg.dr.as_ref())?,
            shared: self.dr.clone(),
        });
        // The membership's keys, read once; the changes this node holds certified applied
        // (one state for the service, the certifier and the sync).
        let ledger_state = match &cfg.ledger {
            Some(l) => {
                let state = Arc::new(gridgate_ledger_node::state::LedgerState::new(
                    gridgate_ledger_node::load_members(l)?,
                ));
                // A short read at start (only operators' and validators' logs carry changes).
                let n = state.recover(&self.store.store)?;
                if n > 0 {
                    info!(changes = n, "ledger membership: certified changes applied");
                }
                Some(state)
            }
            None => None,
        };
        if let Some(g) = &cfg.grpc {
            let state =
                gridgate_api::ApiState {
                    cfg: self.config.subscribe(),
                    store: self.store.clone(),
                    registry: self.registry.clone(),
                    live: self.live.clone(),
                    public_key: self.public_key,
                    uplink: self.uplink.clone(),
                    dr: dr.clone(),
                    ledger: cfg.ledger.as_ref().zip(ledger_state.as_ref()).map(
                        |(l, ledger_state)| {
                            Arc::new(gridgate_api::ledger::LedgerService {
                                store: self.store.store.clone(),
                                state: ledger_state.clone(),
                                me: cfg.id.clone(),
                                key: self.identity.clone(),
                                role: l.role,
                                callers: gridgate_api::ledger::Callers::Members,
                                shutdown: part.cancel.clone(),
                                vote_form: gridgate_ledger_node::node::VoteForm::Window,
                            })
                        },
                    ),
                    shutdown: part.cancel.clone(),
                };
            part.tasks =
                gridgate_api::start(g, state, &self.instruments.listeners, part.cancel.clone())
                    .await?;
        }
        if let Some((l, ledger_state)) = cfg.ledger.as_ref().zip(ledger_state) {
            // This node's own log: a gateway's claims and batch commitments, a validator's
            // proofs of equivocation; the validators certify them.
            let certifier = gridgate_ledger_node::certifier::Certifier {
                store: self.store.store.clone(),
                state: ledger_state.clone(),
                me: cfg.id.clone(),
                key: self.identity.clone(),
                wake: self.ledger_wake.clone(),
            };
            part.tasks.spawn(gridgate_ledger_node::certifier::run(
                certifier,
                l.clone(),
                part.cancel.clone(),
            ));
            // And the logs it keeps, fetched from the validators (anti-entropy).
            part.tasks.spawn(gridgate_ledger_node::sync::run(
                gridgate_ledger_node::sync::Replica {
                    store: self.store.store.clone(),
                    state: ledger_state,
                    me: cfg.id.clone(),
                    role: l.role,
                },
                l.clone(),
                part.cancel.clone(),
            ));
        }
        if let Some((d, u)) = dr_mqtt {
            // Events and cancels over the master station's broker, and the reports.
            let desk = gridgate_dr::desk::Desk {
                store: self.store.store.clone(),
                config: self.config.subscribe(),
                dr,
            };
            part.tasks.spawn(gridgate_dr::mqtt::run(
                desk,
                u.clone(),
                d.clone(),
                self.dr.updates.subscribe(),
                part.cancel.clone(),
            ));
        }
        Ok(part)
    }

    async fn start_web(&mut self, cfg: &GatewayConfig) -> Result<Part, DaemonError> {
        let mut part = Part::new(&self.cancel);
        self.web_addr = None;
        let Some(w) = &cfg.web else {
            return Ok(part);
        };
        let state = gridgate_web::WebState {
            config: self.config.subscribe(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            latest: self.latest.clone(),
            uplink: self.uplink.clone(),
            ingest: self.ingest.clone(),
            dr: self.dr.clone(),
            controls: self.controls.clone(),
            public_key: self.public_key,
            instruments: self.instruments.clone(),
            started: self.started,
            gate: gridgate_web::auth::Gate::load(w).map_err(gridgate_web::WebError::from)?,
        };
        let (tasks, addr) = gridgate_web::start(w, state, part.cancel.clone()).await?;
        part.tasks = tasks;
        self.web_addr = Some(addr);
        Ok(part)
    }

    async fn restart_web(&mut self, cfg: &GatewayConfig) -> Result<(), DaemonError> {
        let part = std::mem::replace(&mut self.web, Part::new(&self.cancel));
        part.stop().await;
        self.web = self.start_web(cfg).await?;
        Ok(())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.config.borrow().clone()
    }

    /// Applies a new config while the gateway runs, restarting only what it changes: a bus
    /// whose line or devices changed (the others keep polling, with no gap), the MQTT ingest,
    /// the uplink (it resends from its durable cursor) or the gRPC API. The store and its
    /// writer never stop, so no reading is lost. All or nothing: changes only a restart can
    /// apply are refused whole, and if a part will not start on the new config (a port
    /// taken, a certificate missing) the parts already changed go back to the old config.
    /// Returns what was restarted.
    pub async fn reload(&mut self, new: GatewayConfig) -> Result<Vec<String>, ReloadError> {
        let old = self.config();
        let fixed = restart_only_changes(&old, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed.join(", ")));
        }
        check_mqtt_tls(&new).map_err(|e| ReloadError::Part {
            part: "MQTT",
            reason: e.to_string(),
        })?;
        let mut restarted = Vec::new();

        // First the parts that can fail to start (they bind ports, read certificates).
        let ingest_changed = old.ingest != new.ingest;
        if ingest_changed {
            if let Err(e) = self.restart_ingest(&new).await {
                self.restart_ingest_or_log(&old).await;
                return Err(part_failed("MQTT ingest", e));
            }
            restarted.push("MQTT ingest".to_string());
        }
        // The API holds the trusted DR issuers' keys: a change to [dr] reloads them; DR over
        // MQTT also runs here, on the uplink's broker.
        let dr_mqtt_moved = new.dr.is_some() && old.uplink != new.uplink;
        if old.grpc != new.grpc || old.dr != new.dr || dr_mqtt_moved || old.ledger != new.ledger {
            if let Err(e) = self.restart_api(&new).await {
                if let Err(e) = self.restart_api(&old).await {
                    error!("gRPC API would not start again on the old config either: {e}");
                }
                if ingest_changed {
                    self.restart_ingest_or_log(&old).await;
                }
                return Err(part_failed("gRPC API", e));
            }
            restarted.push("gRPC API".to_string());
        }

        if old.web != new.web {
            if let Err(e) = self.restart_web(&new).await {
                if let Err(e) = self.restart_web(&old).await {
                    error!(
                        "commissioning page would not start again on the old config either: {e}"
                    );
                }
                if restarted.iter().any(|r| r == "gRPC API")
                    && let Err(e) = self.restart_api(&old).await
                {
                    error!("gRPC API would not start again on the old config either: {e}");
                }
                if ingest_changed {
                    self.restart_ingest_or_log(&old).await;
                }
                return Err(part_failed("commissioning page", e));
            }
            restarted.push("commissioning page".to_string());
        }

        // Buses: stop the removed and the changed, start the changed and the added.
        let old_buses: BTreeMap<&str, &BusConfig> =
            old.buses.iter().map(|b| (b.name.as_str(), b)).collect();
        let new_buses: BTreeMap<&str, &BusConfig> =
            new.buses.iter().map(|b| (b.name.as_str(), b)).collect();
        for (name, old_bus) in &old_buses {
            if new_buses.get(name) != Some(old_bus) {
                self.controls.detach(name);
                if let Some(part) = self.buses.remove(*name) {
                    part.stop().await;
                }
                if !new_buses.contains_key(name) {
                    restarted.push(format!("bus {name} (removed)"));
                }
            }
        }
        self.registry
            .retain(|device| new.devices().any(|(_, d)| d.name == device));
        for (name, bus) in &new_buses {
            if old_buses.get(name) != Some(bus) {
                self.start_bus(bus);
                restarted.push(format!("bus {name}"));
            }
        }

        if old.uplink != new.uplink {
            // The old session goes first: two clients with one client id would take turns
            // kicking each other off the broker.
            let part = std::mem::replace(&mut self.uplink_part, Part::new(&self.cancel));
            part.stop().await;
            self.uplink_part = self.start_uplink(&new);
            restarted.push("uplink".to_string());
        }
        self.store
            .store
            .set_metered(new.loads.iter().map(|l| l.meter.clone()));
        self.config.send_replace(Arc::new(new));
        Ok(restarted)
    }

    async fn restart_ingest(&mut self, cfg: &GatewayConfig) -> Result<(), DaemonError> {
        let part = std::mem::replace(&mut self.ingest_part, Part::new(&self.cancel));
        part.stop().await;
        self.ingest_part = self.start_ingest(cfg).await?;
        Ok(())
    }

    async fn restart_ingest_or_log(&mut self, cfg: &GatewayConfig) {
        if let Err(e) = self.restart_ingest(cfg).await {
            error!("MQTT ingest would not start again on the old config either: {e}");
        }
    }

    async fn restart_api(&mut self, cfg: &GatewayConfig) -> Result<(), DaemonError> {
        let part = std::mem::replace(&mut self.api, Part::new(&self.cancel));
        part.stop().await;
        self.api = self.start_api(cfg).await?;
        Ok(())
    }

    /// A token that stops the pipeline when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// One line of status: readings, batches, uplink lag.
    pub fn status_line(&self) -> String {
        let head = *self.store.head.borrow();
        let st = self.store.store.stats().unwrap_or_default();
        let snap = self.registry.snapshot();
        let online = snap.values().filter(|s| s.online).count();
        let cursor = self.uplink.cursor.load(Ordering::Relaxed);
        let total = self.store.committed.load(Ordering::Relaxed);
        let per_sec = match self.rate.lock() {
            Ok(mut r) => {
                let dt = r.0.elapsed().as_secs_f64();
                let rate = if dt > 0.0 {
                    (total - r.1.min(total)) as f64 / dt
                } else {
                    0.0
                };
                *r = (tokio::time::Instant::now(), total);
                rate
            }
            Err(_) => 0.0,
        };
        format!(
            "{per_sec:.0} readings/s, {total} stored | devices {online}/{} online | batches {head} (open readings {}) | mqtt in {} msgs ({} readings), {} refused | uplink acked {}, lag {} batch(es)",
            snap.len(),
            st.open_readings,
            self.ingest.messages.load(Ordering::Relaxed),
            self.ingest.readings.load(Ordering::Relaxed),
            self.ingest.malformed_total() + self.ingest.unknown_topic.load(Ordering::Relaxed),
            self.uplink.acknowledged.load(Ordering::Relaxed),
            head.saturating_sub(cursor)
        )
    }

    /// Stops acquisition and MQTT, commits what is left into a last batch, and closes the
    /// store.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        self.cancel.cancel();
        self.relay.stop().await;
        for (_, bus) in std::mem::take(&mut self.buses) {
            bus.stop().await;
        }
        tracing::debug!("pollers stopped");
        self.ingest_part.stop().await;
        self.uplink_part.stop().await;
        tracing::debug!("mqtt stopped");
        self.api.stop().await;
        self.web.stop().await;
        // The forwarder ends when the last sender of readings is gone.
        drop(self.readings);
        let echoed = self.forwarder.await;
        tracing::debug!("forwarder stopped");
        drop(self.store);
        if let Err(e) = self.writer.await {
            error!("store writer ended badly: {e}");
        }
        match echoed {
            Ok(r) => r.map_err(DaemonError::Sink),
            Err(e) => Err(DaemonError::Sink(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Hands polled readings to the store, and a copy to `echo`.
///
/// The echo is a convenience (a terminal, a pipe to a tool) and must never hold up the
/// store: it runs on its own thread behind a bounded queue, and when that queue is full
/// (nobody reads the pipe) copies are dropped and counted, not waited for.
async fn forward(
    mut rx: mpsc::Receiver<Vec<Reading>>,
    store: StoreHandle,
    echo: Option<Box<dyn ReadingSink>>,
    live: tokio::sync::broadcast::Sender<Arc<Reading>>,
) -> std::io::Result<()> {
    let (echo_tx, echo_done) = match echo {
        Some(mut sink) => {
            let (tx, erx) = std::sync::mpsc::sync_channel::<Vec<Reading>>(1024);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("echo".into())
                .spawn(move || {
                    let mut result = Ok(());
                    while let Ok(group) = erx.recv() {
                        if let Err(e) = sink.write(&group) {
                            result = Err(e);
                            break;
                        }
                    }
                    let _ = done_tx.send(result);
                })?;
            (Some(tx), Some(done_rx))
        }
        None => (None, None),
    };
    let mut dropped: u64 = 0;
    while let Some(group) = rx.recv().await {
        if live.receiver_count() > 0 {
            for r in &group {
                // No subscriber, or every one lagging: never waits, never fails acquisition.
                let _ = live.send(Arc::new(r.clone()));
            }
        }
        if let Some(tx) = &echo_tx {
            match tx.try_send(group.clone()) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    dropped += group.len() as u64;
                    if dropped.is_power_of_two() {
                        warn!(
                            dropped,
                            "echo output is not being read; echo copies dropped (stored readings are not affected)"
                        );
                    }
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
            }
        }
        let sub = Submission {
            readings: group.iter().map(Reading::to_pb).collect(),
            dedupe: false,
            done: None,
        };
        if store.tx.send(sub).await.is_err() {
            break;
        }
    }
    drop(echo_tx);
    let Some(done) = echo_done else {
        return Ok(());
    };
    // Wait for the echo to finish writing, but never for a pipe nobody reads.
    match tokio::time::timeout(Duration::from_secs(2), done).await {
        Ok(Ok(Err(e))) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// `gridgate run`: the daemon. SIGHUP reloads `config_path` (see [`Pipeline::reload`]).
pub async fn run(
    config_path: &Path,
    echo: Option<Box<dyn ReadingSink>>,
) -> Result<(), DaemonError> {
    let mut signals = Signals::install();
    let cfg = gridgate_config::load(config_path)?;
    let identity = Identity::load(&cfg.identity)?;
    info!(
        gateway = %cfg.id,
        public_key = %hex::encode(identity.public().to_bytes()),
        buses = cfg.buses.len(),
        points = cfg.point_count(),
        "gridgate starting"
    );
    let mut pipeline = Pipeline::start(&cfg, identity, echo).await?;
    crate::systemd::ready(&running_status(&cfg));
    let mut watchdog = start_watchdog(&pipeline);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            asked = signals.next() => {
                if asked == Asked::Stop {
                    break;
                }
                crate::systemd::reloading();
                reload(&mut pipeline, config_path).await;
                watchdog.abort();
                watchdog = start_watchdog(&pipeline);
                crate::systemd::ready(&running_status(&pipeline.config()));
            }
            _ = tick.tick() => crate::systemd::status(&pipeline.status_line()),
        }
    }
    info!("stop requested; closing the last batch");
    crate::systemd::stopping();
    watchdog.abort();
    let _ = watchdog.await;
    pipeline.stop().await?;
    info!("gridgate stopped");
    Ok(())
}

fn running_status(cfg: &GatewayConfig) -> String {
    format!(
        "running: {} bus(es), {} point(s)",
        cfg.buses.len(),
        cfg.point_count()
    )
}

/// The systemd watchdog for the config in force: a poll is expected within twice the
/// slowest device's period plus its retries.
fn start_watchdog(pipeline: &Pipeline) -> tokio::task::JoinHandle<()> {
    let cfg = pipeline.config();
    let max_poll = cfg
        .devices()
        .map(|(b, d)| d.poll + b.timing.timeout * 8)
        .max();
    tokio::spawn(crate::systemd::watchdog(
        pipeline.store.clone(),
        pipeline.registry.clone(),
        max_poll.is_some(),
        max_poll.unwrap_or_default() * 2 + Duration::from_secs(30),
        pipeline.cancel_token(),
    ))
}

/// One SIGHUP: reads the file again and applies it, or logs why not and keeps the config in
/// force.
async fn reload(pipeline: &mut Pipeline, config_path: &Path) {
    info!(config = %config_path.display(), "reload requested (SIGHUP)");
    let new = match gridgate_config::load(config_path) {
        Ok(new) => new,
        Err(e) => {
            error!("reload refused, the running config stays in force: {e}");
            return;
        }
    };
    match pipeline.reload(new).await {
        Ok(restarted) if restarted.is_empty() => info!("config reloaded: nothing changed"),
        Ok(restarted) => info!(
            restarted = %restarted.join(", "),
            "config reloaded"
        ),
        Err(e) => error!("reload refused, the running config stays in force: {e}"),
    }
}
