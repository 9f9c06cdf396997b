//! `gridgate demo`: what the demo adds around a real gateway: simulated field devices, a DR
//! site with its operator, and an in-process consortium of validators. None of it is in a
//! production build (the `demo` feature).

pub mod dr;
pub mod ledger;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridgate_acquire::ReadingSink;
use gridgate_app::{DaemonError, Pipeline, stop_signal};
use gridgate_core::{Identity, IdentityError};

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
}

/// `gridgate demo`: simulated meters, Modbus devices and an MQTT field device; the gateway
/// on them with the store, signed batches and an uplink to its own embedded broker.
pub async fn demo(
    duration: Option<Duration>,
    dr_after: Duration,
    dr_for: Duration,
    web_port: u16,
    echo: Box<dyn ReadingSink>,
    mut status: Box<dyn std::io::Write + Send>,
) -> Result<(), DemoError> {
    let work = std::env::temp_dir().join(format!("gridgate-demo-{}", std::process::id()));
    let result = demo_in(
        &work,
        duration,
        (dr_after, dr_for, web_port),
        echo,
        &mut status,
    )
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A free TCP port on loopback (for the demo's listeners).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn demo_in(
    work: &Path,
    duration: Option<Duration>,
    (dr_after, dr_for, web_port): (Duration, Duration, u16),
    echo: Box<dyn ReadingSink>,
    status: &mut Box<dyn std::io::Write + Send>,
) -> Result<(), DemoError> {
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
    let consortium = crate::demo::ledger::Consortium::prepare(work)?;
    let members = (
        ("demo-site", gateway_pub.as_path()),
        ("demo-operator", operator_pub.as_path()),
    );
    let me = ("demo-site", work.join("identity.key"));
    text.push_str(&consortium.ledger_section(
        "gateway",
        (me.0, me.1.as_path()),
        members.0,
        members.1,
    )?);
    let cfg = gridgate_config::parse(&text, Path::new("<demo config>"))?;
    let validators = consortium.start(members.0, members.1).await?;
    let _ = writeln!(
        status,
        "gridgate demo: simulated meters, Modbus devices and an MQTT sensor, polled and stored by the gateway.\n{}\
         identity (made for this demo): {}\n\
         A signed DR event sheds half of {} (plant-unit1) {} after the start, for {} s.\n\
         Readings follow (time UTC, point, value, unit, quality); a status line every 5 s. Ctrl-C stops.\n",
        gridgate_config::summary(&cfg),
        hex::encode(identity.public().to_bytes()),
        crate::demo::dr::LOAD,
        humantime::format_duration(dr_after),
        dr_for.as_secs()
    );
    let _ = writeln!(
        status,
        "  consortium ledger: {} validators in this process (any 3 certify); the gateway's signed performance report is certified and settled",
        crate::demo::ledger::VALIDATORS
    );
    for l in &sims.lines {
        let _ = writeln!(
            status,
            "  simulated line {} ({}) at {}",
            l.name, l.protocol, l.link
        );
    }
    let pipeline = Pipeline::start(&cfg, identity, Some(echo)).await?;
    if let Some(addr) = pipeline.web_addr() {
        let _ = writeln!(
            status,
            "  commissioning page: http://{addr}/  (admin credential for test reads and overrides: {token})\n  metrics: http://{addr}/metrics"
        );
    }
    let _ = writeln!(status);
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
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut dr_at, if !dispatched => {
                dispatched = true;
                let said = crate::demo::dr::dispatch(work, grpc_port, dr_for).await;
                let _ = writeln!(status, "-- {}", said.unwrap_or_else(|e| format!("DR event not sent: {e}")));
            }
            _ = tick.tick() => {
                let _ = writeln!(status, "-- {}", pipeline.status_line());
                if let Some(line) = crate::demo::dr::status_line(&pipeline.shared().store.store) {
                    let _ = writeln!(status, "-- {line}");
                }
                if let Some(line) = crate::demo::ledger::status_line(&pipeline.shared().store.store, &pipeline.config()) {
                    let _ = writeln!(status, "-- {line}");
                }
            }
        }
    }
    let final_status = pipeline.status_line();
    let registry = pipeline.shared().registry.clone();
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
    for v in validators {
        if let Err(e) = v.stop().await {
            let _ = writeln!(status, "validator did not stop cleanly: {e}");
        }
    }
    drop(sims);
    Ok(result?)
}
