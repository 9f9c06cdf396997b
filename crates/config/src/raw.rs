//! The config file as written: every key known, every value spanned so that problems found
//! later can name their line.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`
    pub gateway: RawGateway,
    /// `[[bus]]`
    #[serde(default)]
    pub bus: Vec<RawBus>,
    /// `[[device]]`
    #[serde(default)]
    pub device: Vec<RawDevice>,
    /// `[store]`
    pub store: Option<RawStore>,
    /// `[uplink]`
    pub uplink: Option<RawUplink>,
    /// `[ingest]`
    pub ingest: Option<RawIngest>,
    /// `[broker]`
    pub broker: Option<RawBroker>,
    /// `[grpc]`
    pub grpc: Option<RawGrpc>,
    /// `[dr]`
    pub dr: Option<super::dr::RawDr>,
    /// `[[load]]`
    #[serde(default)]
    pub load: Vec<super::dr::RawLoad>,
    /// `[ledger]`
    pub ledger: Option<super::ledger::RawLedger>,
    /// `[web]`
    pub web: Option<Spanned<super::web::RawWeb>>,
    /// `[market]`
    pub market: Option<super::market::RawMarket>,
    /// `[openadr]`
    pub openadr: Option<super::openadr::RawOpenAdr>,
}

/// `[grpc]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpc {
    pub listen: Spanned<String>,
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub client_ca_file: Spanned<String>,
    pub plaintext_listen: Option<Spanned<String>>,
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub batch_readings: Option<Spanned<u64>>,
    pub batch_interval: Option<Spanned<String>>,
    pub budget: Option<Spanned<String>>,
    pub required_consumers: Option<Spanned<Vec<String>>>,
    pub dedupe_window: Option<Spanned<u64>>,
}

/// `[uplink]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    pub broker: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub keep_alive: Option<Spanned<String>>,
    pub window: Option<Spanned<u32>>,
}

/// `[ingest]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub broker: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub listen_cert_file: Option<Spanned<String>>,
    pub listen_key_file: Option<Spanned<String>>,
    pub listen_client_ca_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub topics: Option<Spanned<Vec<String>>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub max_payload: Option<Spanned<String>>,
    #[serde(default)]
    pub device: Vec<RawMqttDevice>,
}

/// `[[ingest.device]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttDevice {
    pub name: Spanned<String>,
    pub topic: Spanned<String>,
    #[serde(default)]
    pub points: Vec<RawMqttPoint>,
}

/// One point of an MQTT device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttPoint {
    pub name: Spanned<String>,
    pub unit: Option<Spanned<String>>,
}

/// `[broker]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub listen: Spanned<String>,
}

/// `[gateway]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: Spanned<String>,
    pub data_dir: Option<Spanned<String>>,
    pub identity: Option<Spanned<String>>,
}

/// `[[bus]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub name: Spanned<String>,
    pub link: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
    pub inter_byte_timeout: Option<Spanned<String>>,
    pub wakeup_bytes: Option<Spanned<u32>>,
    pub retries: Option<Spanned<u32>>,
    pub retry_backoff: Option<Spanned<String>>,
    pub offline_after: Option<Spanned<u32>>,
    pub reconnect_max: Option<Spanned<String>>,
}

/// `[[device]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: Spanned<String>,
    pub bus: Spanned<String>,
    pub protocol: Spanned<String>,
    pub address: Option<Spanned<String>>,
    pub unit: Option<Spanned<i64>>,
    pub poll: Option<Spanned<String>>,
    pub max_gap: Option<Spanned<u16>>,
    pub read_write_multiple: Option<Spanned<bool>>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

/// One entry of `points = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub name: Spanned<String>,
    pub unit: Option<Spanned<String>>,
    pub di: Option<Spanned<String>>,
    pub table: Option<Spanned<String>>,
    pub address: Option<Spanned<i64>>,
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    pub byte_order: Option<Spanned<String>>,
    pub word_order: Option<Spanned<String>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
}
