//! Why the gateway did not start, or refused a reload.

use thiserror::Error;

use gridgate_config::ConfigError;
use gridgate_core::IdentityError;
use gridgate_mqtt::ingest;
use gridgate_store::StoreError;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Config unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A ledger member's key is unusable.
    #[error(transparent)]
    Members(#[from] gridgate_ledger_node::MembersError),
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
    Tls(#[from] gridgate_core::tls::TlsError),
    /// The field listener cannot bind.
    #[error("field listener cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The commissioning page would not start.
    #[error(transparent)]
    Web(#[from] gridgate_web::WebError),
    /// The gRPC API would not start.
    #[error(transparent)]
    Api(#[from] gridgate_api::ApiError),
    /// A trusted DR issuer's key is unusable.
    #[error(transparent)]
    Trust(#[from] gridgate_dr::desk::TrustError),
    /// The echo output failed (stdout closed).
    #[error("output failed: {0}")]
    Sink(#[from] std::io::Error),
}

/// Why a reload was refused. The running config stays in force in every case.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new file does not load or does not check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It changes what only a restart can change.
    #[error(
        "the new config changes {0}, which only a restart applies (systemctl restart gridgate); nothing was reloaded"
    )]
    NeedsRestart(String),
    /// A part would not start on the new config (everything runs on the old one again).
    #[error(
        "{part} would not start on the new config ({reason}); the gateway runs on the old config"
    )]
    Part {
        /// Which part.
        part: &'static str,
        reason: String,
    },
}
