//! The long-running jobs: `gridgate run` (the daemon) and `gridgate demo` (the daemon on
//! simulators with an embedded config).
//!
//! Both start the same [`Pipeline`]: buses and MQTT field devices → store (group commit,
//! signed batches) → MQTT uplink; an optional echo prints readings as they are acquired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acquire::{self, DeviceRegistry, Reading, ReadingSink};
use crate::batch::{Identity, IdentityError};
use crate::config::{ConfigError, GatewayConfig};
use crate::ingest::{self, IngestStats};
use crate::store::writer::{self, StoreHandle, Submission, WriterConfig};
use crate::store::{Store, StoreError};
use crate::tools::sim;
use crate::uplink::{self, UplinkStats};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Config unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Simulators would not start (demo).
    #[error(transparent)]
    Sim(#[from] sim::SimError),
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
    Tls(#[from] crate::mqtt::TlsError),
    /// The field listener cannot bind.
    #[error("field listener cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The gRPC API would not start.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The echo output failed (stdout closed).
    #[error("output failed: {0}")]
    Sink(#[from] std::io::Error),
}

/// A one-paragraph summary of a config, as `check-config` prints it.
pub fn summary(cfg: &GatewayConfig) -> String {
    let mut s = format!(
        "gateway {}: {} bus(es), {} device(s), {} point(s)\n",
        cfg.id,
        cfg.buses.len(),
        cfg.devices().count() + cfg.ingest.as_ref().map_or(0, |i| i.devices.len()),
        cfg.point_count()
    );
    for b in &cfg.buses {
        s.push_str(&format!(
            "  bus {} ({}) on {}: {} device(s)\n",
            b.name,
            b.protocol,
            b.link,
            b.devices.len()
        ));
        for d in &b.devices {
            s.push_str(&format!(
                "    {} every {}: {} point(s)\n",
                d.name,
                humantime::format_duration(d.poll),
                d.points.len()
            ));
        }
    }
    if let Some(i) = &cfg.ingest {
        if let Some(b) = &i.broker {
            s.push_str(&format!(
                "  MQTT ingest from {b} ({} device(s))\n",
                i.devices.len()
            ));
        }
        if let Some(l) = i.listen {
            s.push_str(&format!(
                "  durable MQTT field listener on {l} ({} device(s))\n",
                i.devices.len()
            ));
        }
    }
    if let Some(b) = &cfg.broker {
        s.push_str(&format!("  embedded MQTT broker on {}\n", b.listen));
    }
    match &cfg.uplink {
        Some(u) => s.push_str(&format!("  uplink to {} topic {}\n", u.broker, u.topic)),
        None => s.push_str("  no uplink: batches stay in the store for gRPC pullers\n"),
    }
    s.push_str(&format!(
        "  store in {}: batches of {} readings or {}, budget {} MiB\n",
        cfg.data_dir.display(),
        cfg.store.batch_readings,
        humantime::format_duration(cfg.store.batch_interval),
        cfg.store.budget >> 20
    ));
    s
}

/// SIGTERM and SIGINT, caught from the moment this is made: a stop asked for while the
/// gateway is still starting (opening the store, binding ports) is a clean stop too, not the
/// default action that kills the process.
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers now.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Resolves when a stop is asked for.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            match (&mut self.term, &mut self.int) {
                (Some(t), Some(i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when the process is asked to stop (SIGINT, SIGTERM).
pub async fn stop_signal() {
    StopSignals::install().recv().await
}

/// A running gateway.
pub struct Pipeline {
    cancel: CancellationToken,
    pollers: JoinSet<()>,
    services: JoinSet<()>,
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
    api: JoinSet<()>,
    rate: std::sync::Mutex<(tokio::time::Instant, u64)>,
}

impl Pipeline {
    /// Opens the store and starts everything `cfg` asks for. `echo` also receives every
    /// polled reading (for `--echo` and the demo).
    pub async fn start(
        cfg: &GatewayConfig,
        identity: Identity,
        echo: Option<Box<dyn ReadingSink>>,
    ) -> Result<Pipeline, DaemonError> {
        // TLS material is checked before anything starts, so that a wrong path is an error
        // at start-up, not a retry loop in the log.
        if let Some(u) = &cfg.uplink {
            crate::mqtt::options(&u.broker, &u.client_id, u.keep_alive, None)?;
        }
        if let Some(b) = cfg.ingest.as_ref().and_then(|i| i.broker.as_ref()) {
            let id = cfg.ingest.as_ref().map_or("", |i| i.client_id.as_str());
            crate::mqtt::options(b, id, Duration::from_secs(30), None)?;
        }
        let public_key = identity.public().to_bytes();
        let store = Store::open(&cfg.data_dir, &cfg.id)?;
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
        let registry = DeviceRegistry::default();
        let ingest_stats = Arc::new(IngestStats::default());
        let uplink_stats = Arc::new(UplinkStats::default());
        let live = crate::api::live_channel();
        let mut services = JoinSet::new();
        if let Some(i) = &cfg.ingest {
            if i.broker.is_some() {
                services.spawn(ingest::run(
                    i.clone(),
                    handle.clone(),
                    ingest_stats.clone(),
                    live.clone(),
                    cancel.clone(),
                ));
            }
            if let Some(addr) = i.listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| DaemonError::Listen { addr, source: e })?;
                services.spawn(ingest::listener::serve(
                    listener,
                    Arc::new(i.clone()),
                    handle.clone(),
                    ingest_stats.clone(),
                    live.clone(),
                    cancel.clone(),
                ));
            }
        }
        if let Some(u) = &cfg.uplink {
            services.spawn(uplink::run(
                u.clone(),
                handle.clone(),
                uplink_stats.clone(),
                cancel.clone(),
            ));
        }
        let (tx, rx) = mpsc::channel(acquire::QUEUE_DEPTH);
        let pollers = acquire::start(cfg, tx, registry.clone(), cancel.clone());
        let forwarder = tokio::spawn(forward(rx, handle.clone(), echo, live.clone()));
        let api = match &cfg.grpc {
            Some(g) => {
                let state = crate::api::ApiState {
                    cfg: Arc::new(cfg.clone()),
                    store: handle.clone(),
                    registry: registry.clone(),
                    live: live.clone(),
                    public_key,
                    uplink: uplink_stats.clone(),
                };
                crate::api::start(g, state, cancel.clone()).await?
            }
            None => JoinSet::new(),
        };
        Ok(Pipeline {
            cancel,
            pollers,
            services,
            forwarder,
            writer,
            store: handle,
            registry,
            ingest: ingest_stats,
            uplink: uplink_stats,
            live,
            api,
            rate: std::sync::Mutex::new((tokio::time::Instant::now(), 0)),
        })
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
        while self.pollers.join_next().await.is_some() {}
        tracing::debug!("pollers stopped");
        while self.services.join_next().await.is_some() {}
        tracing::debug!("mqtt stopped");
        while self.api.join_next().await.is_some() {}
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

/// `gridgate run`: the daemon.
pub async fn run(
    config_path: &Path,
    echo: Option<Box<dyn ReadingSink>>,
) -> Result<(), DaemonError> {
    let mut signals = StopSignals::install();
    let cfg = crate::config::load(config_path)?;
    let identity = Identity::load(&cfg.identity)?;
    info!(
        gateway = %cfg.id,
        public_key = %hex::encode(identity.public().to_bytes()),
        buses = cfg.buses.len(),
        points = cfg.point_count(),
        "gridgate starting"
    );
    let pipeline = Pipeline::start(&cfg, identity, echo).await?;
    crate::service::ready(&format!(
        "running: {} bus(es), {} point(s)",
        cfg.buses.len(),
        cfg.point_count()
    ));
    let max_poll = cfg
        .devices()
        .map(|(b, d)| d.poll + b.timing.timeout * 8)
        .max();
    let watchdog = tokio::spawn(crate::service::watchdog(
        pipeline.store.clone(),
        pipeline.registry.clone(),
        max_poll.is_some(),
        max_poll.unwrap_or_default() * 2 + Duration::from_secs(30),
        pipeline.cancel_token(),
    ));
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = tick.tick() => crate::service::status(&pipeline.status_line()),
        }
    }
    info!("stop requested; closing the last batch");
    crate::service::stopping();
    watchdog.abort();
    let _ = watchdog.await;
    pipeline.stop().await?;
    info!("gridgate stopped");
    Ok(())
}

/// `gridgate demo`: simulated meters, Modbus devices and an MQTT field device; the gateway
/// on them with the store, signed batches and an uplink to its own embedded broker.
pub async fn demo(
    duration: Option<Duration>,
    echo: Box<dyn ReadingSink>,
    mut status: Box<dyn std::io::Write + Send>,
) -> Result<(), DaemonError> {
    let work = std::env::temp_dir().join(format!("gridgate-demo-{}", std::process::id()));
    let result = demo_in(&work, duration, echo, &mut status).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn demo_in(
    work: &Path,
    duration: Option<Duration>,
    echo: Box<dyn ReadingSink>,
    status: &mut Box<dyn std::io::Write + Send>,
) -> Result<(), DaemonError> {
    let sims = sim::start(&sim::default_spec(Some(work))).await?;
    let port = free_port()?;
    let data_dir: PathBuf = work.join("data");
    let mut text = sims.gateway_config("demo-site", "5s");
    text = text.replacen(
        "[gateway]\nid = \"demo-site\"\n",
        &format!(
            "[gateway]\nid = \"demo-site\"\ndata_dir = \"{}\"\n",
            data_dir.display()
        ),
        1,
    );
    text.push_str(&format!(
        r#"
[store]
batch_readings = 100
batch_interval = "5s"

[broker]
listen = "127.0.0.1:{port}"

[ingest]
broker = "mqtt://127.0.0.1:{port}"

[[ingest.device]]
name = "sensor-1"
topic = "field/sensor-1/readings"
points = [{{ name = "temperature", unit = "°C" }}, {{ name = "door_open" }}]

[uplink]
broker = "mqtt://127.0.0.1:{port}"
topic = "gridgate/demo-site/batches"
"#
    ));
    let cfg = crate::config::parse(&text, Path::new("<demo config>"))?;
    let identity = Identity::generate()?;
    let _ = writeln!(
        status,
        "gridgate demo: simulated meters, Modbus devices and an MQTT sensor, polled and stored by the gateway.\n{}\
         identity (made for this demo): {}\n\
         Readings follow (time UTC, point, value, unit, quality); a status line every 5 s. Ctrl-C stops.\n",
        summary(&cfg),
        hex::encode(identity.public().to_bytes())
    );
    for l in &sims.lines {
        let _ = writeln!(
            status,
            "  simulated line {} ({}) at {}",
            l.name, l.protocol, l.link
        );
    }
    let _ = writeln!(status);
    let pipeline = Pipeline::start(&cfg, identity, Some(echo)).await?;
    let sensor = tokio::spawn(sim::mqtt_sensor(
        "127.0.0.1".into(),
        port,
        "field/sensor-1/readings".into(),
        pipeline.cancel_token(),
    ));
    let stop = async {
        match duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stop_signal() => {}
            },
            None => stop_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let _ = writeln!(status, "-- {}", pipeline.status_line());
            }
        }
    }
    let final_status = pipeline.status_line();
    let registry = pipeline.registry.clone();
    let result = pipeline.stop().await;
    sensor.abort();
    let _ = writeln!(status, "-- {final_status}");
    for (name, s) in registry.snapshot() {
        let _ = writeln!(
            status,
            "{name:<16} {:<8} polls {:>4}  {}",
            if s.online { "online" } else { "OFFLINE" },
            s.polls,
            s.readings
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    drop(sims);
    result
}
