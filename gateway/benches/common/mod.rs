//! What the end-to-end benches share: a free loopback port, and a gRPC channel to a
//! gateway that is still starting.

#![allow(dead_code)] // each bench uses part of it

use std::path::Path;
use std::time::Duration;

/// The bench's size: its first argument that parses, or `default`.
pub fn size_arg<T: std::str::FromStr>(default: T) -> T {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The runtime a bench drives the gateway from: two workers, as the gateway itself has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `n` simulated Modbus-TCP devices (unit 1, 10 kW), each on its own line `l{i}`, and
/// their addresses in the same order.
#[cfg(feature = "demo")]
pub async fn modbus_devices(
    n: usize,
) -> (gridgate::tools::sim::RunningSims, Vec<std::net::SocketAddr>) {
    let mut spec = String::new();
    for i in 0..n {
        spec.push_str(&format!(
            "[[line]]\nname = \"l{i}\"\nprotocol = \"modbus-tcp\"\nlisten = \"127.0.0.1:0\"\ndevices = [{{ unit = 1, rated_kw = 10.0 }}]\n\n"
        ));
    }
    let spec: gridgate::tools::sim::SimSpec = toml::from_str(&spec).expect("spec");
    let sims = gridgate::tools::sim::start(&spec).await.expect("sims");
    let links = sims
        .lines
        .iter()
        .map(|l| {
            l.link
                .trim_start_matches("tcp://")
                .parse()
                .expect("sim address")
        })
        .collect();
    (sims, links)
}

/// Writes `config` to `path` and starts the real `gridgate run` on it, logging warnings
/// only; it is killed when dropped.
pub fn run_gateway(path: &Path, config: &str) -> tokio::process::Child {
    std::fs::write(path, config).expect("config");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gridgate"))
        .args(["run", "--config"])
        .arg(path)
        // GRIDGATE_BENCH_LOG=info shows the gateway's own log (on the bench's stderr).
        .env(
            "GRIDGATE_LOG",
            std::env::var("GRIDGATE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("gridgate")
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Connects to the gateway's mutual-TLS API on loopback `port` with the site PKI in `pki`
/// and the client certificate of `role`, retrying until the gateway listens.
pub async fn connect_when_up(port: u16, pki: &Path, role: &str) -> tonic::transport::Channel {
    let endpoint = format!("https://127.0.0.1:{port}");
    loop {
        match gridgate::tools::pull::connect(
            &endpoint,
            Some(&pki.join("ca.pem")),
            Some(&pki.join(format!("client-{role}.pem"))),
            Some(&pki.join(format!("client-{role}.key"))),
        )
        .await
        {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
