//! The embedded MQTT broker (rumqttd) that field devices can publish to, so that a site
//! needs no broker of its own. `[broker] listen = "..."` turns it on; ingest then connects
//! to it like to any external broker.

use std::net::SocketAddr;

use thiserror::Error;
use tracing::{error, info};

/// Why the broker would not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The generated rumqttd config was refused (a bug).
    #[error("embedded broker config: {0}")]
    Config(String),
    /// The listening port is taken or not allowed.
    #[error("embedded broker cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// Starts the broker on `listen` in its own threads (rumqttd runs its own runtime). It runs
/// until the process exits.
pub fn start(listen: SocketAddr, max_payload: usize) -> Result<(), BrokerError> {
    // Fail early, with the address in the message, if the port is taken: rumqttd would only
    // log it from its own thread.
    std::net::TcpListener::bind(listen)
        .map_err(|e| BrokerError::Listen {
            addr: listen,
            reason: e.to_string(),
        })
        .map(drop)?;
    let text = format!(
        r#"
id = 0

[router]
id = 0
max_connections = 1024
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "field"
listen = "{listen}"
next_connection_delay_ms = 1

[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    // Clients connect right after this returns: wait until the broker holds the port (our
    // own bind then fails). Binding, not connecting, so the broker sees no aborted client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::net::TcpListener::bind(listen).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    info!(%listen, "embedded MQTT broker listening");
    Ok(())
}
