//! The master station's API: gRPC (tonic) over mutual TLS.
//!
//! Every TLS client must present a certificate signed by the configured client CA; its role
//! (master, validator, operator, viewer) is the certificate's Organizational Unit, and each
//! RPC checks it ([`auth`]). A plaintext listener exists only when the config asks for one,
//! only on loopback, and its callers are viewers. The standard health service and server
//! reflection are served beside, so grpcurl and grpc_health_probe work.

pub mod auth;
pub mod dr;
pub mod ledger;
pub mod pki;
mod services;

use std::net::SocketAddr;
use std::sync::Arc;

use gridgate_proto::v1::admin_server::AdminServer;
use gridgate_proto::v1::demand_response_server::DemandResponseServer;
use gridgate_proto::v1::telemetry_server::TelemetryServer;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::info;

pub use services::ApiState;
pub(crate) use services::Stream_;

use gridgate_config::GrpcConfig;

/// Why the API server could not start.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A certificate or key file cannot be read.
    #[error("{path}: {source}")]
    File {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The listener cannot bind or TLS material is refused.
    #[error("gRPC server on {addr}: {reason}")]
    Serve {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Live readings fan out through a broadcast channel: a slow subscriber lags and is told how
/// many it missed; senders never wait.
pub fn live_channel() -> broadcast::Sender<Arc<gridgate_core::Reading>> {
    broadcast::channel(4096).0
}

/// Binds the listeners now (so that a taken port fails start-up) and serves them until
/// `cancel` fires.
pub async fn start(
    cfg: &GrpcConfig,
    state: ApiState,
    listeners: &gridgate_core::admission::Listeners,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinSet<()>, ApiError> {
    let tls = ServerTlsConfig::new()
        .timeout(gridgate_core::admission::HANDSHAKE_WITHIN)
        .identity(TlsIdentity::from_pem(
            read(&cfg.cert_file)?,
            read(&cfg.key_file)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&cfg.client_ca_file)?));
    let mut set = tokio::task::JoinSet::new();
    let listener = bind(cfg.listen).await?;
    info!(listen = %cfg.listen, "gRPC API listening (mutual TLS)");
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| ApiError::Serve {
            addr: cfg.listen,
            reason: e.to_string(),
        })?;
    set.spawn(serve(
        router,
        state.clone(),
        (
            listener,
            listeners.get("grpc", gridgate_core::admission::GRPC_MAX),
        ),
        cancel.clone(),
        cfg.listen,
    ));
    if let Some(addr) = cfg.plaintext_listen {
        let listener = bind(addr).await?;
        info!(listen = %addr, "gRPC API plaintext listener on loopback (callers are viewers)");
        set.spawn(serve(
            Server::builder(),
            state,
            (
                listener,
                listeners.get("grpc-plaintext", gridgate_core::admission::GRPC_MAX),
            ),
            cancel,
            addr,
        ));
    }
    Ok(set)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ApiError::Serve {
            addr,
            reason: e.to_string(),
        })
}

/// A connection that sends nothing for this long is closed. The server pings every
/// [`PING_EVERY`], and a live client answers, so a quiet stream (a Subscribe with no
/// readings) stays open while a client that never speaks HTTP/2 does not.
const IDLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
/// HTTP/2 keep-alive ping interval.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

async fn serve(
    builder: Server,
    state: ApiState,
    (listener, admission): (
        tokio::net::TcpListener,
        Arc<gridgate_core::admission::Admission>,
    ),
    cancel: CancellationToken,
    addr: SocketAddr,
) {
    let mut builder = builder
        .http2_keepalive_interval(Some(PING_EVERY))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TelemetryServer<services::TelemetryService>>()
        .await;
    health
        .set_serving::<AdminServer<services::AdminService>>()
        .await;
    health
        .set_serving::<DemandResponseServer<crate::api::dr::DemandResponseService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gridgate_proto::FILE_DESCRIPTOR_SET)
        .build_v1();
    let router = builder
        .add_service(health_service)
        .add_service(TelemetryServer::new(services::TelemetryService::new(
            state.clone(),
        )))
        .add_service(DemandResponseServer::new(
            crate::api::dr::DemandResponseService::new(state.clone(), state.dr.clone()),
        ))
        .add_service(AdminServer::new(services::AdminService::new(state.clone())))
        .add_optional_service(
            state
                .ledger
                .clone()
                .map(gridgate_proto::v1::ledger_server::LedgerServer::from_arc),
        );
    let router = match reflection {
        Ok(r) => router.add_service(r),
        Err(e) => {
            tracing::warn!("gRPC reflection unavailable: {e}");
            router
        }
    };
    let incoming = admitted(listener, admission);
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
    {
        tracing::error!(%addr, "gRPC server stopped: {e}");
    }
}

/// The listener's connections that fit under its cap, each closed after [`IDLE_WITHIN`] of
/// silence; the others are closed at once (and counted). An accept error (out of file
/// descriptors, say) waits a moment instead of spinning.
fn admitted(
    listener: tokio::net::TcpListener,
    admission: Arc<gridgate_core::admission::Admission>,
) -> impl futures::Stream<
    Item = std::io::Result<gridgate_core::admission::Guarded<tokio::net::TcpStream>>,
> + Send
+ 'static {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let Some(permit) = admission.admit() else {
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let conn = admission.guard(tcp, permit, IDLE_WITHIN);
                    return Some((Ok(conn), (listener, admission)));
                }
                Err(e) => {
                    tracing::warn!("gRPC accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}
