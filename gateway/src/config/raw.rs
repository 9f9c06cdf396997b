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
}

/// `[gateway]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: Spanned<String>,
    pub data_dir: Option<Spanned<String>>,
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
