//! The parts a reload can stop and start on their own, each started from the handles every
//! part shares ([`Shared`]) and the config it is to run on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use gridgate_acquire::{self as acquire, DeviceRegistry};
use gridgate_config::{BusConfig, GatewayConfig};
use gridgate_core::{Identity, Reading};
use gridgate_mqtt::ingest::{self, IngestStats};
use gridgate_mqtt::uplink::{self, UplinkStats};
use gridgate_store::writer::StoreHandle;

use crate::DaemonError;

/// What every part is started from: the handles that live as long as the process (the store,
/// the device states, the counters, the live readings) and the config in force.
pub struct Shared {
    /// Stops every part; each part's own token is a child of it.
    pub cancel: CancellationToken,
    /// The config in force; a reload replaces it, and the parts that follow the config
    /// (the relay, the gRPC services, the page) read it from here.
    pub config: watch::Sender<Arc<GatewayConfig>>,
    pub store: StoreHandle,
    /// Where pollers send readings (kept to start pollers after a reload).
    pub readings: mpsc::Sender<Vec<Reading>>,
    pub registry: DeviceRegistry,
    /// Every point's last reading (the page).
    pub latest: gridgate_web::latest::Latest,
    pub instruments: Arc<gridgate_core::instruments::Instruments>,
    pub started: std::time::Instant,
    pub ingest: Arc<IngestStats>,
    pub uplink: Arc<UplinkStats>,
    /// Live readings (what gRPC Subscribe and the page serve).
    pub live: broadcast::Sender<gridgate_core::LiveReadings>,
    /// What the DR parts share: counters, the record lock, the relay's wake-up, updates.
    pub dr: gridgate_dr::shared::DrShared,
    /// Writes to field devices, through the bus tasks.
    pub controls: acquire::Controls,
    /// Signs DR reports, votes and ledger entries (the writer holds its own copy for batches).
    pub identity: Identity,
    /// Wakes the ledger certifier when an own entry was appended.
    pub ledger_wake: Arc<tokio::sync::Notify>,
    /// Starts the ledger sync's next round early.
    pub sync_wake: Arc<tokio::sync::Notify>,
}

/// A started part: its tasks and the token that stops them.
pub struct Running {
    cancel: CancellationToken,
    pub(crate) tasks: JoinSet<()>,
    /// Where it listens, for a part that serves people (the page).
    pub addr: Option<std::net::SocketAddr>,
}

impl Running {
    /// Nothing running yet, stopped with `parent`.
    pub fn new(parent: &CancellationToken) -> Running {
        Running {
            cancel: parent.child_token(),
            tasks: JoinSet::new(),
            addr: None,
        }
    }

    pub(crate) fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels its tasks and waits until every one has ended.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A part that a config change restarts on its own. Buses are parts too, one per bus, but
/// many of them: see `start_bus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subsystem {
    /// The field listener and the broker client (`[ingest]`).
    Ingest,
    /// The gRPC API with the DR desk, the ledger node, and DR over MQTT.
    Api,
    /// The commissioning page (`[web]`).
    Web,
    /// The MQTT uplink to the master station (`[uplink]`).
    Uplink,
}

impl Subsystem {
    /// In the order a reload applies them: those that can fail to start (they bind ports,
    /// read certificates) before the uplink, which cannot.
    pub const ALL: [Subsystem; 4] = [
        Subsystem::Ingest,
        Subsystem::Api,
        Subsystem::Web,
        Subsystem::Uplink,
    ];

    /// Its name in logs and in a refused reload.
    pub fn label(self) -> &'static str {
        match self {
            Subsystem::Ingest => "MQTT ingest",
            Subsystem::Api => "gRPC API",
            Subsystem::Web => "commissioning page",
            Subsystem::Uplink => "uplink",
        }
    }

    /// Does going from `old` to `new` change what it runs on?
    pub fn changed(self, old: &GatewayConfig, new: &GatewayConfig) -> bool {
        match self {
            Subsystem::Ingest => old.ingest != new.ingest,
            // The API holds the trusted DR issuers' keys and the ledger node; DR over MQTT
            // runs here too, on the uplink's broker.
            Subsystem::Api => {
                old.grpc != new.grpc
                    || old.dr != new.dr
                    || old.ledger != new.ledger
                    || (new.dr.is_some() && old.uplink != new.uplink)
            }
            Subsystem::Web => old.web != new.web,
            Subsystem::Uplink => old.uplink != new.uplink,
        }
    }

    /// Starts it on `cfg`; stopped by `shared.cancel` or by [`Running::stop`].
    pub async fn start(self, shared: &Shared, cfg: &GatewayConfig) -> Result<Running, DaemonError> {
        let mut part = Running::new(&shared.cancel);
        match self {
            Subsystem::Ingest => start_ingest(shared, cfg, &mut part).await?,
            Subsystem::Api => start_api(shared, cfg, &mut part).await?,
            Subsystem::Web => start_web(shared, cfg, &mut part).await?,
            Subsystem::Uplink => {
                if let Some(u) = &cfg.uplink {
                    part.tasks.spawn(uplink::run(
                        u.clone(),
                        shared.store.clone(),
                        shared.uplink.clone(),
                        part.token(),
                    ));
                }
            }
        }
        Ok(part)
    }
}

/// The poller of one bus; its line's controls go through it.
pub fn start_bus(shared: &Shared, bus: &BusConfig) -> Running {
    let mut part = Running::new(&shared.cancel);
    let (tx, rx) = mpsc::channel(acquire::request::CONTROL_QUEUE);
    shared.controls.attach(&bus.name, &bus.devices, tx);
    let poller = acquire::BusPoller::new(bus.clone(), shared.registry.clone()).with_controls(rx);
    part.tasks
        .spawn(poller.run(shared.readings.clone(), part.token()));
    part
}

/// What runs whatever the config: the page's view of the last readings, the MQTT command
/// client for loads, and the DR relay (events accepted before a restart still end and
/// restore their loads).
pub fn start_always(shared: &Shared) -> Running {
    let mut part = Running::new(&shared.cancel);
    // Follows the live readings all the time, so that a page opened later shows values at
    // once.
    part.tasks.spawn(gridgate_web::latest::follow(
        shared.latest.clone(),
        shared.live.subscribe(),
        part.token(),
    ));
    // Loads commanded over MQTT go through one client on the [ingest] broker; it follows
    // the config itself.
    let (commands, command_rx) = mpsc::channel(acquire::mqtt_command::COMMAND_QUEUE);
    shared.controls.attach_mqtt(commands);
    part.tasks.spawn(acquire::mqtt_command::run(
        shared.config.subscribe(),
        command_rx,
        part.token(),
    ));
    part.tasks.spawn(gridgate_dr::relay::run(
        gridgate_dr::relay::Relay {
            store: shared.store.store.clone(),
            config: shared.config.subscribe(),
            controls: shared.controls.clone(),
            shared: shared.dr.clone(),
            identity: shared.identity.clone(),
            live: shared.live.subscribe(),
            instruments: shared.instruments.clone(),
        },
        part.token(),
    ));
    part
}

/// TLS material of the MQTT links, checked before anything starts, so that a wrong path is
/// an error at start-up (or a refused reload), not a retry loop in the log.
pub fn check_mqtt_tls(cfg: &GatewayConfig) -> Result<(), gridgate_core::tls::TlsError> {
    if let Some(u) = &cfg.uplink {
        acquire::broker::options(&u.broker, &u.client_id, u.keep_alive, None)?;
    }
    if let Some(b) = cfg.ingest.as_ref().and_then(|i| i.broker.as_ref()) {
        let id = cfg.ingest.as_ref().map_or("", |i| i.client_id.as_str());
        acquire::broker::options(b, id, Duration::from_secs(30), None)?;
    }
    Ok(())
}

async fn start_ingest(
    shared: &Shared,
    cfg: &GatewayConfig,
    part: &mut Running,
) -> Result<(), DaemonError> {
    let Some(i) = &cfg.ingest else {
        return Ok(());
    };
    if i.broker.is_some() {
        part.tasks.spawn(ingest::run(
            i.clone(),
            shared.store.clone(),
            shared.ingest.clone(),
            shared.live.clone(),
            part.token(),
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
            admission: shared
                .instruments
                .listeners
                .get("mqtt-field", gridgate_core::admission::FIELD_MAX),
        };
        part.tasks.spawn(ingest::listener::serve(
            field,
            Arc::new(i.clone()),
            shared.store.clone(),
            shared.ingest.clone(),
            shared.live.clone(),
            part.token(),
        ));
    }
    Ok(())
}

async fn start_api(
    shared: &Shared,
    cfg: &GatewayConfig,
    part: &mut Running,
) -> Result<(), DaemonError> {
    let dr_mqtt = cfg.dr.as_ref().zip(cfg.uplink.as_ref());
    if cfg.grpc.is_none() && dr_mqtt.is_none() && cfg.ledger.is_none() && cfg.openadr.is_none() {
        return Ok(());
    }
    let public_key = shared.identity.public().to_bytes();
    let dr = Arc::new(gridgate_dr::desk::DrState {
        trust: gridgate_dr::desk::load_trust(cfg, shared.identity.public())?,
        shared: shared.dr.clone(),
    });
    // The membership's keys, read once; the changes this node holds certified applied (one
    // state for the service, the certifier and the sync).
    let ledger_state = match &cfg.ledger {
        Some(l) => {
            let state = Arc::new(gridgate_ledger_node::state::LedgerState::new(
                gridgate_ledger_node::load_members(l)?,
            ));
            // A short read at start (only operators' and validators' logs carry changes).
            let n = state.recover(&shared.store.store)?;
            if n > 0 {
                info!(changes = n, "ledger membership: certified changes applied");
            }
            Some(state)
        }
        None => None,
    };
    if let Some(g) = &cfg.grpc {
        let ledger = cfg
            .ledger
            .as_ref()
            .zip(ledger_state.as_ref())
            .map(|(l, ledger_state)| {
                Arc::new(gridgate_api::ledger::LedgerService {
                    store: shared.store.store.clone(),
                    state: ledger_state.clone(),
                    me: cfg.id.clone(),
                    key: shared.identity.clone(),
                    role: l.role,
                    callers: gridgate_api::ledger::Callers::Members,
                    shutdown: part.token(),
                    vote_form: gridgate_ledger_node::node::VoteForm::Window,
                })
            });
        let state = gridgate_api::ApiState {
            cfg: shared.config.subscribe(),
            store: shared.store.clone(),
            registry: shared.registry.clone(),
            live: shared.live.clone(),
            public_key,
            uplink: shared.uplink.clone(),
            dr: dr.clone(),
            ledger,
            shutdown: part.token(),
        };
        part.tasks =
            gridgate_api::start(g, state, &shared.instruments.listeners, part.token()).await?;
    }
    if let Some((l, ledger_state)) = cfg.ledger.as_ref().zip(ledger_state) {
        // This node's own log: a gateway's claims and batch commitments, a validator's
        // proofs of equivocation; the validators certify them.
        let certifier = gridgate_ledger_node::certifier::Certifier {
            store: shared.store.store.clone(),
            state: ledger_state.clone(),
            me: cfg.id.clone(),
            key: shared.identity.clone(),
            wake: shared.ledger_wake.clone(),
        };
        part.tasks.spawn(gridgate_ledger_node::certifier::run(
            certifier,
            l.clone(),
            part.token(),
        ));
        // A validator runs the market's rounds over the decided cuts (docs/market.md).
        if l.role == gridgate_config::ledger::LedgerRole::Validator {
            part.tasks.spawn(gridgate_ledger_node::market::run(
                gridgate_ledger_node::market::Validator {
                    store: shared.store.store.clone(),
                    state: ledger_state.clone(),
                    me: cfg.id.clone(),
                    key: shared.identity.clone(),
                    wake: shared.ledger_wake.clone(),
                    terms: l.terms.clone(),
                },
                part.token(),
            ));
        }
        // A gateway in the market answers its rounds (docs/market.md).
        if l.role == gridgate_config::ledger::LedgerRole::Gateway && cfg.market.is_some() {
            part.tasks.spawn(gridgate_dr::market::run(
                gridgate_dr::market::Agent {
                    store: shared.store.store.clone(),
                    config: shared.config.subscribe(),
                    state: ledger_state.clone(),
                    identity: shared.identity.clone(),
                    wake_certifier: shared.ledger_wake.clone(),
                    wake_sync: shared.sync_wake.clone(),
                    desk: gridgate_dr::desk::Desk {
                        store: shared.store.store.clone(),
                        config: shared.config.subscribe(),
                        dr: dr.clone(),
                    },
                },
                part.token(),
            ));
        }
        // And the logs it keeps, fetched from the validators (anti-entropy).
        part.tasks.spawn(gridgate_ledger_node::sync::run(
            gridgate_ledger_node::sync::Replica {
                store: shared.store.store.clone(),
                state: ledger_state,
                me: cfg.id.clone(),
                role: l.role,
                wake: shared.sync_wake.clone(),
            },
            l.clone(),
            part.token(),
        ));
    }
    if cfg.openadr.is_some() {
        // A utility's VTN dispatches through the same desk (docs/openadr.md).
        part.tasks.spawn(gridgate_openadr::ven::run(
            gridgate_openadr::ven::Ven {
                store: shared.store.store.clone(),
                config: shared.config.subscribe(),
                desk: gridgate_dr::desk::Desk {
                    store: shared.store.store.clone(),
                    config: shared.config.subscribe(),
                    dr: dr.clone(),
                },
                identity: shared.identity.clone(),
            },
            part.token(),
        ));
    }
    if let Some((d, u)) = dr_mqtt {
        // Events and cancels over the master station's broker, and the reports.
        let desk = gridgate_dr::desk::Desk {
            store: shared.store.store.clone(),
            config: shared.config.subscribe(),
            dr,
        };
        part.tasks.spawn(gridgate_dr::mqtt::run(
            desk,
            u.clone(),
            d.clone(),
            shared.dr.updates.subscribe(),
            part.token(),
        ));
    }
    Ok(())
}

async fn start_web(
    shared: &Shared,
    cfg: &GatewayConfig,
    part: &mut Running,
) -> Result<(), DaemonError> {
    let Some(w) = &cfg.web else {
        return Ok(());
    };
    let state = gridgate_web::WebState {
        config: shared.config.subscribe(),
        store: shared.store.clone(),
        registry: shared.registry.clone(),
        latest: shared.latest.clone(),
        uplink: shared.uplink.clone(),
        ingest: shared.ingest.clone(),
        dr: shared.dr.clone(),
        controls: shared.controls.clone(),
        public_key: shared.identity.public().to_bytes(),
        instruments: shared.instruments.clone(),
        started: shared.started,
        gate: gridgate_web::auth::Gate::load(w).map_err(gridgate_web::WebError::from)?,
        settled: Default::default(),
    };
    let (tasks, addr) = gridgate_web::start(w, state, part.token()).await?;
    part.tasks = tasks;
    part.addr = Some(addr);
    Ok(())
}
