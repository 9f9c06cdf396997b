//! The composition root: `gridgate run` (and `gridgate demo`, which adds simulators around
//! it) start one [`Pipeline`]: buses and MQTT field devices → store (group commit,
//! signed batches) → MQTT uplink, with the API, the page, DR and the ledger node beside;
//! an optional echo prints readings as they are acquired. Each part starts from the
//! handles in [`Shared`]; a reload restarts only the parts a config change touches.

mod error;
mod forward;
mod parts;
mod signals;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use gridgate_acquire::{self as acquire, DeviceRegistry, ReadingSink};
use gridgate_config::{BusConfig, GatewayConfig};
use gridgate_core::Identity;
use gridgate_mqtt::ingest;
use gridgate_store::Store;
use gridgate_store::writer::{self, WriterConfig};

pub use error::{DaemonError, ReloadError};
pub use parts::{Running, Shared, Subsystem};
pub use signals::{Asked, Signals, stop_signal};

/// A running gateway.
pub struct Pipeline {
    shared: Shared,
    parts: BTreeMap<Subsystem, Running>,
    /// One poller per bus, by bus name, so that a reload restarts only the buses it changes.
    buses: BTreeMap<String, Running>,
    always: Running,
    forwarder: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: tokio::task::JoinHandle<()>,
    /// When the rate was last measured, the readings committed then, and the rate: a
    /// status line asked for less than a second after the last (the one at a stop) repeats
    /// the rate instead of dividing a few readings by a few milliseconds.
    rate: std::sync::Mutex<(tokio::time::Instant, u64, f64)>,
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

impl Pipeline {
    /// Opens the store and starts everything `cfg` asks for. `echo` also receives every
    /// polled reading (for `--echo` and the demo).
    pub async fn start(
        cfg: &GatewayConfig,
        identity: Identity,
        echo: Option<Box<dyn ReadingSink>>,
    ) -> Result<Pipeline, DaemonError> {
        parts::check_mqtt_tls(cfg)?;
        let store = Store::open_with(&cfg.data_dir, &cfg.id, cfg.store.dedupe_window)?;
        store.set_metered(cfg.metered_points());
        let stats = store.stats()?;
        info!(
            store = %store.path().display(),
            next_batch = stats.next_seq,
            open_readings = stats.open_readings,
            "store open and checked"
        );
        let (handle, writer) = writer::start(
            store,
            identity.clone(),
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
        let (readings, rx) = mpsc::channel(acquire::QUEUE_DEPTH);
        let live = gridgate_core::live_channel();
        let forwarder = tokio::spawn(forward::forward(rx, handle.clone(), echo, live.clone()));
        let controls = acquire::Controls::default();
        let shared = Shared {
            cancel: Default::default(),
            config: tokio::sync::watch::Sender::new(Arc::new(cfg.clone())),
            store: handle,
            readings,
            registry: DeviceRegistry::default(),
            latest: Default::default(),
            instruments: Default::default(),
            started: std::time::Instant::now(),
            ingest: Default::default(),
            uplink: Default::default(),
            live,
            dr: gridgate_dr::shared::DrShared::new(controls.clone()),
            controls,
            identity,
            ledger_wake: Default::default(),
            sync_wake: Default::default(),
        };
        let always = parts::start_always(&shared);
        let mut p = Pipeline {
            parts: BTreeMap::new(),
            buses: BTreeMap::new(),
            always,
            forwarder,
            writer,
            rate: std::sync::Mutex::new((tokio::time::Instant::now(), 0, 0.0)),
            shared,
        };
        for bus in &cfg.buses {
            p.buses
                .insert(bus.name.clone(), parts::start_bus(&p.shared, bus));
        }
        for s in Subsystem::ALL {
            let running = s.start(&p.shared, cfg).await?;
            p.parts.insert(s, running);
        }
        Ok(p)
    }

    /// The handles every part shares: the store, device states, counters.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The page's address, once it listens.
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.parts.get(&Subsystem::Web).and_then(|w| w.addr)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.shared.config.borrow().clone()
    }

    /// Stops `s` and starts it again on `cfg`.
    async fn restart(&mut self, s: Subsystem, cfg: &GatewayConfig) -> Result<(), DaemonError> {
        if let Some(running) = self.parts.remove(&s) {
            running.stop().await;
        }
        let running = s.start(&self.shared, cfg).await?;
        self.parts.insert(s, running);
        Ok(())
    }

    /// Applies a new config while the gateway runs, restarting only what it changes: a bus
    /// whose line or devices changed (the others keep polling, with no gap), the MQTT ingest,
    /// the uplink (it resends from its durable cursor), the gRPC API or the page. The store
    /// and its writer never stop, so no reading is lost. All or nothing: changes only a
    /// restart can apply are refused whole, and if a part will not start on the new config
    /// (a port taken, a certificate missing) it and the parts already changed go back to the
    /// old config. Returns what was restarted.
    pub async fn reload(&mut self, new: GatewayConfig) -> Result<Vec<String>, ReloadError> {
        let old = self.config();
        let fixed = restart_only_changes(&old, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed.join(", ")));
        }
        parts::check_mqtt_tls(&new).map_err(|e| ReloadError::Part {
            part: "MQTT",
            reason: e.to_string(),
        })?;
        let mut restarted = Vec::new();
        let mut changed: Vec<Subsystem> = Vec::new();
        for s in Subsystem::ALL.into_iter().filter(|s| s.changed(&old, &new)) {
            // A running uplink goes before the new one starts: two clients with one client
            // id would take turns kicking each other off the broker. So for every part.
            if let Err(e) = self.restart(s, &new).await {
                for back in std::iter::once(s).chain(changed.into_iter().rev()) {
                    if let Err(e) = self.restart(back, &old).await {
                        error!(
                            "{} would not start again on the old config either: {e}",
                            back.label()
                        );
                    }
                }
                return Err(ReloadError::Part {
                    part: s.label(),
                    reason: e.to_string(),
                });
            }
            changed.push(s);
            restarted.push(s.label().to_string());
        }
        restarted.extend(self.reload_buses(&old, &new).await);
        self.shared.store.store.set_metered(new.metered_points());
        self.shared.config.send_replace(Arc::new(new));
        Ok(restarted)
    }

    /// Stops the removed and the changed buses, starts the changed and the added.
    async fn reload_buses(&mut self, old: &GatewayConfig, new: &GatewayConfig) -> Vec<String> {
        let mut restarted = Vec::new();
        let old_buses: BTreeMap<&str, &BusConfig> =
            old.buses.iter().map(|b| (b.name.as_str(), b)).collect();
        let new_buses: BTreeMap<&str, &BusConfig> =
            new.buses.iter().map(|b| (b.name.as_str(), b)).collect();
        for (name, old_bus) in &old_buses {
            if new_buses.get(name) != Some(old_bus) {
                self.shared.controls.detach(name);
                if let Some(part) = self.buses.remove(*name) {
                    part.stop().await;
                }
                if !new_buses.contains_key(name) {
                    restarted.push(format!("bus {name} (removed)"));
                }
            }
        }
        self.shared
            .registry
            .retain(|device| new.devices().any(|(_, d)| d.name == device));
        for (name, bus) in &new_buses {
            if old_buses.get(name) != Some(bus) {
                self.buses
                    .insert(name.to_string(), parts::start_bus(&self.shared, bus));
                restarted.push(format!("bus {name}"));
            }
        }
        restarted
    }

    /// A token that stops the pipeline when cancelled.
    pub fn cancel_token(&self) -> tokio_util::sync::CancellationToken {
        self.shared.cancel.clone()
    }

    /// One line of status: readings, batches, uplink lag.
    pub fn status_line(&self) -> String {
        let head = *self.shared.store.head.borrow();
        let st = self.shared.store.store.stats().unwrap_or_default();
        let snap = self.shared.registry.snapshot();
        let devices =
            gridgate_web::views::device_counts(&self.config(), &snap, &self.shared.latest);
        let cursor = self.shared.uplink.cursor.load(Ordering::Relaxed);
        let total = self.shared.store.committed.load(Ordering::Relaxed);
        let per_sec = match self.rate.lock() {
            Ok(mut r) => {
                let dt = r.0.elapsed().as_secs_f64();
                if dt >= 1.0 {
                    let rate = (total - r.1.min(total)) as f64 / dt;
                    *r = (tokio::time::Instant::now(), total, rate);
                }
                r.2
            }
            Err(_) => 0.0,
        };
        format!(
            "{per_sec:.0} readings/s, {total} stored | devices {}/{} online{}{} | batches {head} (open readings {}) | mqtt in {} msgs ({} readings), {} refused | uplink acked {}, lag {} batch(es)",
            devices.online,
            devices.total,
            match devices.offline {
                0 => String::new(),
                n => format!(", {n} offline"),
            },
            match devices.waiting {
                0 => String::new(),
                n => format!(", {n} waiting"),
            },
            st.open_readings,
            self.shared.ingest.messages.load(Ordering::Relaxed),
            self.shared.ingest.readings.load(Ordering::Relaxed),
            self.shared.ingest.malformed_total()
                + self.shared.ingest.unknown_topic.load(Ordering::Relaxed),
            self.shared.uplink.acknowledged.load(Ordering::Relaxed),
            head.saturating_sub(cursor)
        )
    }

    /// Stops acquisition and MQTT, commits what is left into a last batch, and closes the
    /// store.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        self.shared.cancel.cancel();
        self.always.stop().await;
        for (_, bus) in std::mem::take(&mut self.buses) {
            bus.stop().await;
        }
        tracing::debug!("pollers stopped");
        for (_, part) in std::mem::take(&mut self.parts) {
            part.stop().await;
        }
        tracing::debug!("parts stopped");
        // The forwarder ends when the last sender of readings is gone.
        drop(self.shared.readings);
        let echoed = self.forwarder.await;
        tracing::debug!("forwarder stopped");
        drop(self.shared.store);
        if let Err(e) = self.writer.await {
            error!("store writer ended badly: {e}");
        }
        match echoed {
            Ok(r) => r.map_err(DaemonError::Sink),
            Err(e) => Err(DaemonError::Sink(std::io::Error::other(e.to_string()))),
        }
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
    if cfg.ledger.as_ref().is_some_and(|l| l.consensus.is_some()) {
        warn!(
            "[ledger.consensus] is for gridgate-node: `gridgate run` certifies entries but decides no cuts; run gridgate-node on this config"
        );
    }
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
        pipeline.shared.store.clone(),
        pipeline.shared.registry.clone(),
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
