//! The master station's API: gRPC (tonic) over mutual TLS.
//!
//! Every TLS client must present a certificate signed by the configured client CA; its role
//! (master, validator, operator, viewer) is the certificate's Organizational Unit, and each
//! RPC checks it ([`auth`]). A plaintext listener exists only when the config asks for one,
//! only on loopback, and its callers are viewers. The standard health service and server
//! reflection are served beside, so grpcurl and grpc_health_probe work.
//!
//! This is the only crate that knows tonic's server side: each service here is an adapter
//! that checks the caller's role and hands the work to the crate that decides it (the DR
//! desk, the ledger node, the store).

mod admin;
pub mod auth;
pub mod dr;
pub mod ledger;
mod market;
pub mod pki;
mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use gridgate_proto::v1::admin_server::AdminServer;
use gridgate_proto::v1::demand_response_server::DemandResponseServer;
use gridgate_proto::v1::telemetry_server::TelemetryServer;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::info;

use gridgate_acquire::DeviceRegistry;
use gridgate_config::GatewayConfig;
use gridgate_config::GrpcConfig;
use gridgate_mqtt::uplink::UplinkStats;
use gridgate_store::writer::StoreHandle;

/// What the services read.
#[derive(Clone)]
pub struct ApiState {
    /// The gateway's config.
    pub cfg: tokio::sync::watch::Receiver<Arc<GatewayConfig>>,
    /// The store.
    pub store: StoreHandle,
    /// Polled devices' state.
    pub registry: DeviceRegistry,
    /// Live readings.
    pub live: broadcast::Sender<gridgate_core::LiveReadings>,
    /// The identity's public key.
    pub public_key: [u8; 32],
    /// Uplink counters.
    pub uplink: Arc<UplinkStats>,
    /// Trusted DR issuers and DR counters.
    pub dr: Arc<gridgate_dr::desk::DrState>,
    /// The ledger service, when the config has `[ledger]`.
    pub ledger: Option<Arc<ledger::LedgerService>>,
    /// Fires when the API stops: open streams end then (a graceful shutdown waits for
    /// every open call, and a stream never ends by itself).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl ApiState {
    /// The config in force now (a reload replaces it).
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.cfg.borrow().clone()
    }
}

/// A server-streaming RPC's answer: items until the stream ends or fails.
pub type GrpcStream<T> =
    std::pin::Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Why the API server could not start.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A certificate or key file cannot be read.
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The listener cannot bind or TLS material is refused.
    #[error("gRPC server on {addr}: {reason}")]
    Serve { addr: SocketAddr, reason: String },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds the listeners now (so that a taken port fails start-up) and serves them until
/// `cancel` fires.
pub async fn start(
    cfg: &GrpcConfig,
    state: ApiState,
    listeners: &gridgate_core::admission::Listeners,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinSet<()>, ApiError> {
    gridgate_core::tls::use_ring_provider();
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
        .set_serving::<TelemetryServer<telemetry::TelemetryService>>()
        .await;
    health
        .set_serving::<AdminServer<admin::AdminService>>()
        .await;
    health
        .set_serving::<DemandResponseServer<crate::dr::DemandResponseService>>()
        .await;
    // Both versions of reflection: grpcurl asks v1, grpcio-reflection's Python client and
    // older tools v1alpha. The health service is listed too.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gridgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection()
        .build_v1()
        .and_then(|v1| Ok((v1, reflection().build_v1alpha()?)));
    let router = builder
        .add_service(health_service)
        .add_service(TelemetryServer::new(telemetry::TelemetryService::new(
            state.clone(),
        )))
        .add_service(DemandResponseServer::new(
            crate::dr::DemandResponseService::new(state.clone(), state.dr.clone()),
        ))
        .add_service(AdminServer::new(admin::AdminService::new(state.clone())))
        .add_service(gridgate_proto::v1::market_server::MarketServer::new(
            market::MarketService::new(state.clone()),
        ))
        .add_optional_service(
            state
                .ledger
                .clone()
                .map(gridgate_proto::v1::ledger_server::LedgerServer::from_arc),
        );
    let router = match reflection {
        Ok((v1, v1alpha)) => router.add_service(v1).add_service(v1alpha),
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
