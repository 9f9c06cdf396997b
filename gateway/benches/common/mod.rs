//! What the end-to-end benches share: a free loopback port, and a gRPC channel to a
//! gateway that is still starting.

#![allow(dead_code)] // each bench uses part of it

use std::path::Path;
use std::time::Duration;

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
