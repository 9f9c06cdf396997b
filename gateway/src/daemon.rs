//! The long-running jobs: `gridgate run` (the daemon) and `gridgate demo` (the daemon on
//! simulators with an embedded config).

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acquire::{self, DeviceRegistry, ReadingSink};
use crate::config::{ConfigError, GatewayConfig};
use crate::tools::sim;

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Config unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Simulators would not start (demo).
    #[error(transparent)]
    Sim(#[from] sim::SimError),
    /// The sink failed (output closed, disk gone).
    #[error("output failed: {0}")]
    Sink(#[from] std::io::Error),
}

/// A one-paragraph summary of a config, as `check-config` prints it.
pub fn summary(cfg: &GatewayConfig) -> String {
    let mut s = format!(
        "gateway {}: {} bus(es), {} device(s), {} point(s)\n",
        cfg.id,
        cfg.buses.len(),
        cfg.devices().count(),
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
    s
}

/// Resolves when the process is asked to stop (SIGINT, SIGTERM).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
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

/// Acquires from every bus of `cfg` into `sink` until `cancel` fires or the sink fails.
pub async fn acquire_into(
    cfg: &GatewayConfig,
    sink: Box<dyn ReadingSink>,
    registry: DeviceRegistry,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let (tx, rx) = mpsc::channel(acquire::QUEUE_DEPTH);
    let mut pollers = acquire::start(cfg, tx, registry, cancel.clone());
    let drained = acquire::sink::drain(rx, sink).await;
    // The channel closes when every poller has stopped, or the sink stopped first.
    cancel.cancel();
    while pollers.join_next().await.is_some() {}
    drained.map_err(DaemonError::Sink)
}

/// `gridgate run`: the daemon.
pub async fn run(config_path: &Path, sink: Box<dyn ReadingSink>) -> Result<(), DaemonError> {
    let cfg = crate::config::load(config_path)?;
    info!(
        gateway = %cfg.id,
        buses = cfg.buses.len(),
        devices = cfg.devices().count(),
        points = cfg.point_count(),
        "gridgate starting"
    );
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        stop_signal().await;
        info!("stop requested");
        stopper.cancel();
    });
    acquire_into(&cfg, sink, DeviceRegistry::default(), cancel).await?;
    info!("gridgate stopped");
    Ok(())
}

/// `gridgate demo`: simulators plus the gateway on them, printing readings as they arrive.
pub async fn demo(
    duration: Option<Duration>,
    sink: Box<dyn ReadingSink>,
    mut status: Box<dyn std::io::Write + Send>,
) -> Result<(), DaemonError> {
    let pty_dir = std::env::temp_dir().join(format!("gridgate-demo-{}", std::process::id()));
    let sims = sim::start(&sim::default_spec(Some(&pty_dir))).await?;
    let text = sims.gateway_config("demo-site", "5s");
    let cfg = crate::config::parse(&text, Path::new("<demo config>"))?;
    let _ = writeln!(
        status,
        "gridgate demo: simulated meters and devices, polled by the gateway.\n{}\
         Readings follow (time UTC, point, value, unit, quality). Ctrl-C stops.\n",
        summary(&cfg)
    );
    for l in &sims.lines {
        let _ = writeln!(
            status,
            "  simulated line {} ({}) at {}",
            l.name, l.protocol, l.link
        );
    }
    let _ = writeln!(status);
    let cancel = CancellationToken::new();
    let registry = DeviceRegistry::default();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        match duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stop_signal() => {}
            },
            None => stop_signal().await,
        }
        stopper.cancel();
    });
    let reporter = {
        let registry = registry.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let snap = registry.snapshot();
                let online = snap.values().filter(|s| s.online).count();
                let good: u64 = snap
                    .values()
                    .map(|s| s.readings.get("good").copied().unwrap_or(0))
                    .sum();
                let bad: u64 = snap
                    .values()
                    .map(|s| {
                        s.readings
                            .iter()
                            .filter(|(k, _)| **k != "good")
                            .map(|(_, v)| *v)
                            .sum::<u64>()
                    })
                    .sum();
                let _ = writeln!(
                    status,
                    "-- {online}/{} devices online, {good} good readings, {bad} failed",
                    snap.len()
                );
            }
            status
        })
    };
    let result = acquire_into(&cfg, sink, registry.clone(), cancel).await;
    if let Ok(mut status) = reporter.await {
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
    }
    if let Err(e) = &result {
        warn!("demo stopped: {e}");
    }
    drop(sims);
    let _ = std::fs::remove_dir_all(&pty_dir);
    result
}
