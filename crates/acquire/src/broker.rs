//! Connecting to an MQTT broker as the config says: address, credentials, TLS with a trusted
//! CA, and an optional client certificate. Ingest and uplink both build their options here.

use std::sync::Arc;
use std::time::Duration;

use gridgate_core::tls::{TlsError, client_tls};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use gridgate_config::MqttBroker;

/// Options for a client `client_id` of `broker`.
pub fn options(
    broker: &MqttBroker,
    client_id: &str,
    keep_alive: Duration,
    credentials: Option<(&str, &str)>,
) -> Result<MqttOptions, TlsError> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(keep_alive);
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    if let Some(tls) = &broker.tls {
        let client = tls.cert.as_deref().zip(tls.key.as_deref());
        let config = client_tls(&tls.ca, client)?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(opts)
}
