//! `gridgate demo`: what the demo adds around a real gateway: simulated field devices, a DR
//! site with its operator, and an in-process consortium of validators. None of it is in a
//! production build (the `demo` feature).

pub mod dr;
pub mod ledger;
pub mod market;
pub mod master;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridgate_acquire::ReadingSink;
use gridgate_app::{DaemonError, Pipeline, stop_signal};
use gridgate_core::{Identity, IdentityError, Reading};
use tokio::sync::broadcast;

use crate::tools::sim;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A key made for the demo.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The site PKI.
    #[error(transparent)]
    Pki(#[from] gridgate_api::pki::PkiError),
    /// A file or port of the demo.
    #[error("demo set-up: {0}")]
    Io(#[from] std::io::Error),
    /// Simulators would not start.
    #[error(transparent)]
    Sim(#[from] sim::SimError),
    /// The embedded config does not check (a defect of the demo).
    #[error(transparent)]
    Config(#[from] gridgate_config::ConfigError),
    /// The gateway or a validator would not run.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A validator's consensus would not start.
    #[error("a demo validator's consensus: {0}")]
    Consensus(String),
}

/// What `gridgate demo` is asked to do.
pub struct DemoOptions {
    /// Stop after this long; `None`: at Ctrl-C.
    pub duration: Option<Duration>,
    /// When the DR event is sent, and how long it lasts.
    pub dr_after: Duration,
    pub dr_for: Duration,
    /// The page's port (0: any free one).
    pub web_port: u16,
    /// Keep the demo's files (store, keys, PKI) here instead of a temporary directory.
    pub keep: Option<PathBuf>,
    /// Stop once the DR claim and a market interval are settled (or at `duration`).
    pub until_settled: bool,
    /// Where readings are printed, the polled ones and the MQTT devices' (two writers to
    /// one terminal); `None`: status lines only.
    pub readings: Option<(Box<dyn ReadingSink>, Box<dyn ReadingSink>)>,
}

/// `gridgate demo`: simulated meters, Modbus devices and an MQTT field device; the gateway
/// on them with the store, signed batches and an uplink to its own embedded broker.
pub async fn demo(
    options: DemoOptions,
    mut status: Box<dyn std::io::Write + Send>,
) -> Result<(), DemoError> {
    let work = match &options.keep {
        Some(dir) => {
            if dir.join("data").exists() {
                return Err(DemoError::Io(std::io::Error::other(format!(
                    "{} already holds a demo's data (made with other keys): give --keep an empty or new directory",
                    dir.display()
                ))));
            }
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => std::env::temp_dir().join(format!("gridgate-demo-{}", std::process::id())),
    };
    let keep = options.keep.is_some();
    let result = demo_in(&work, options, &mut status).await;
    if keep {
        let _ = writeln!(
            status,
            "The demo's files are kept in {dir}: check its store as a master station would with\n  gridgate verify --data-dir {dir}/data --pubkey {dir}/identity.pub",
            dir = work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Prints the readings of the MQTT field devices (`points`), which do not pass the polled
/// readings' echo, from the live channel, on a thread of its own: a terminal that does not
/// keep up misses readings (and is told so), it never holds up the gateway. Ends when the
/// gateway has stopped.
fn print_mqtt(
    mut live: broadcast::Receiver<gridgate_core::LiveReadings>,
    points: std::collections::HashSet<String>,
    mut sink: Box<dyn ReadingSink>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("demo-mqtt-print".into())
        .spawn(move || {
            loop {
                match live.blocking_recv() {
                    Ok(group) => {
                        let mine: Vec<Reading> = group
                            .iter()
                            .filter(|r| points.contains(&*r.point))
                            .cloned()
                            .collect();
                        if !mine.is_empty() && sink.write(&mine).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the terminal is slower than the readings; some are not printed (all are stored)");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
}

/// A free TCP port on loopback (for the demo's listeners).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn demo_in(
    work: &Path,
    options: DemoOptions,
    status: &mut Box<dyn std::io::Write + Send>,
) -> Result<(), DemoError> {
    let DemoOptions {
        duration,
        dr_after,
        dr_for,
        web_port,
        readings,
        until_settled,
        ..
    } = options;
    let sims = sim::start(&sim::default_spec(Some(work))).await?;
    let prosumers = market::Prosumers::prepare(work).await?;
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
    let grpc_port = free_port()?;
    text.push_str(&crate::demo::dr::prepare(work, grpc_port)?);
    // The commissioning page, on 8080 when that is free: read-only views need nothing on
    // this machine, write actions the admin credential made here.
    let web_port = match web_port {
        0 => 0,
        p if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        // Taken: any free port (the address is printed below).
        _ => 0,
    };
    let token_file = work.join("web-admin.token");
    let token =
        gridgate_web::auth::new_token().map_err(|e| DemoError::Io(std::io::Error::other(e)))?;
    std::fs::write(&token_file, &token)?;
    text.push_str(&format!(
        "\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nadmin_token_file = \"{}\"\nanonymous_read = true\n",
        token_file.display()
    ));
    // The consortium: four validators in this process; the gateway's claims go to them.
    let identity = Identity::generate()?;
    let (gateway_pub, operator_pub) = (work.join("identity.pub"), work.join("operator.pub"));
    identity.save(&work.join("identity.key"), &gateway_pub)?;
    let mut members = vec![
        ledger::Member {
            id: "demo-site".into(),
            role: "gateway",
            public_key: gateway_pub,
        },
        ledger::Member {
            id: "demo-operator".into(),
            role: "operator",
            public_key: operator_pub,
        },
    ];
    members.extend(prosumers.members());
    let consortium = ledger::Consortium::prepare(work, members)?;
    text.push_str(
        &consortium.ledger_section("gateway", ("demo-site", &work.join("identity.key")))?,
    );
    let cfg = gridgate_config::parse(&text, Path::new("<demo config>"))?;
    let _ = writeln!(
        status,
        "gridgate demo: simulated meters, Modbus devices and an MQTT sensor, polled and stored by the gateway.\n{}\
         identity (made for this demo): {}\n\
         A signed DR event sheds half of {} (plant-unit1) {} after the start, for {} s.\n\
         {}a status line every 5 s. Ctrl-C stops.\n",
        gridgate_config::summary(&cfg),
        hex::encode(identity.public().to_bytes()),
        crate::demo::dr::LOAD,
        humantime::format_duration(dr_after),
        dr_for.as_secs(),
        if readings.is_some() {
            "Readings follow (time UTC, point, value, unit, quality), polled and MQTT alike; "
        } else {
            "Status lines only (--status-only): "
        }
    );
    let _ = writeln!(
        status,
        "  consortium ledger: {} validators in this process (any 3 certify, consensus decides cuts every second); the gateway's signed performance report is certified and settled",
        ledger::VALIDATORS
    );
    let _ = writeln!(
        status,
        "  flexibility market: {} trade one-minute intervals of {} (PV, a battery, a shop's load), priced round by round on the decided cuts",
        market::PROSUMERS.join(", "),
        market::AREA
    );
    for l in &sims.lines {
        let _ = writeln!(
            status,
            "  simulated line {} ({}) at {}",
            l.name, l.protocol, l.link
        );
    }
    let (echo, mqtt_sink) = match readings {
        Some((polled, mqtt)) => (Some(polled), Some(mqtt)),
        None => (None, None),
    };
    let pipeline = Pipeline::start(&cfg, identity, echo).await?;
    let printer = match mqtt_sink {
        Some(sink) => {
            let points = cfg
                .ingest
                .iter()
                .flat_map(|i| &i.devices)
                .flat_map(|d| d.points.iter().map(move |(p, _)| format!("{}/{p}", d.name)))
                .collect();
            Some(print_mqtt(
                pipeline.shared().live.subscribe(),
                points,
                sink,
            )?)
        }
        None => None,
    };
    if let Some(addr) = pipeline.web_addr() {
        let _ = writeln!(
            status,
            "  commissioning page: http://{addr}/  (admin credential for test reads and overrides: {token})\n  metrics: http://{addr}/metrics"
        );
    }
    let _ = writeln!(status);
    // The validators start after the gateway, so that the banner and the page's address
    // come first; the gateway's ledger node waits for them.
    let validators = consortium.start().await?;
    let traders = prosumers.start(&consortium).await?;
    // Awaited in the loop below beside the status lines (it waits for the certificate).
    let publish = market::publish_terms(
        work.to_path_buf(),
        consortium.ledger_section("operator", ("demo-operator", &work.join("operator.key")))?,
    );
    tokio::pin!(publish);
    let mut published = false;
    let market_since = gridgate_core::reading::now_ms() - 3_600_000;
    let mut market_lines: Vec<String> = Vec::new();
    let mut dr_settled = false;
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
    let dr_at = tokio::time::sleep(dr_after);
    tokio::pin!(dr_at);
    let mut dispatched = false;
    let mut checked = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            said = &mut publish, if !published => {
                published = true;
                let _ = writeln!(status, "-- {said}");
            }
            _ = &mut dr_at, if !dispatched => {
                dispatched = true;
                let said = crate::demo::dr::dispatch(work, grpc_port, dr_for).await;
                let _ = writeln!(status, "-- {}", said.unwrap_or_else(|e| format!("DR event not sent: {e}")));
            }
            _ = tick.tick() => {
                let _ = writeln!(status, "-- {}", pipeline.status_line());
                if !checked && *pipeline.shared().store.head.borrow() > 0 {
                    checked = true;
                    let said = master::check_first_batch(work, grpc_port).await;
                    let _ = writeln!(status, "-- {}", said.unwrap_or_else(|e| format!("master station's check failed: {e}")));
                }
                if let Some(line) = crate::demo::dr::status_line(&pipeline.shared().store.store) {
                    let _ = writeln!(status, "-- {line}");
                }
                if let Some((line, settled)) = ledger::status_line(&pipeline.shared().store.store, &pipeline.config()) {
                    dr_settled |= settled;
                    let _ = writeln!(status, "-- {line}");
                }
                // The market as v0 holds it; a line is printed when it changes.
                let v0 = &validators[0].pipeline;
                let market = v0.config().ledger.as_ref().map(|l| market::status(&v0.shared().store.store, l, market_since)).unwrap_or_default();
                for line in market.lines.iter().filter(|l| !market_lines.contains(l)) {
                    let _ = writeln!(status, "-- {line}");
                }
                market_lines = market.lines;
                if until_settled && dr_settled && market.settled {
                    let _ = writeln!(status, "-- the DR claim and a market interval are settled: stopping (--until-settled)");
                    break;
                }
            }
        }
    }
    let final_status = pipeline.status_line();
    let registry = pipeline.shared().registry.clone();
    let result = pipeline.stop().await;
    sensor.abort();
    if let Some(printer) = printer {
        let _ = printer.join();
    }
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
    for p in traders {
        if let Err(e) = p.stop().await {
            let _ = writeln!(status, "prosumer did not stop cleanly: {e}");
        }
    }
    for v in validators {
        if let Err(e) = v.stop().await {
            let _ = writeln!(status, "validator did not stop cleanly: {e}");
        }
    }
    drop(sims);
    drop(prosumers);
    Ok(result?)
}
