//! The commissioning page and `/metrics`, served by the gateway itself (axum): what a field
//! engineer sees on a laptop or phone in the meter room, and what Prometheus scrapes.
//!
//! The page is three files compiled into the binary (the site has no internet), reading a
//! small JSON API ([`views`]); write actions (a test read, a manual override) need the
//! admin credential and are logged and counted. HTTPS unless the page listens on loopback
//! only (`config::web`).

pub mod auth;
pub mod latest;
pub mod metrics;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use auth::{Access, Gate};
use gridgate_acquire::{Controls, DeviceRegistry};
use gridgate_config::GatewayConfig;
use gridgate_config::web::WebConfig;
use gridgate_dr::desk::DeskError;
use gridgate_dr::shared::DrShared;
use gridgate_mqtt::ingest::IngestStats;
use gridgate_mqtt::uplink::UplinkStats;
use gridgate_store::writer::StoreHandle;

/// Why the page would not start.
#[derive(Debug, Error)]
pub enum WebError {
    /// The address is taken or not ours.
    #[error("[web] cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A credential file is unusable.
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    /// The HTTPS certificate or key is unusable.
    #[error("[web] {0}")]
    Tls(#[from] gridgate_core::tls::TlsError),
}

/// What the page reads and acts on: the running gateway's parts.
pub struct WebState {
    /// The config in force.
    pub config: watch::Receiver<Arc<GatewayConfig>>,
    /// The store.
    pub store: StoreHandle,
    /// Polled devices' states.
    pub registry: DeviceRegistry,
    /// Every point's last reading.
    pub latest: latest::Latest,
    /// Uplink counters.
    pub uplink: Arc<UplinkStats>,
    /// MQTT ingest counters.
    pub ingest: Arc<IngestStats>,
    /// What DR parts share: the dispatch counters, the record lock, the relay's wake-up.
    pub dr: DrShared,
    /// Bus tasks (test reads).
    pub controls: Controls,
    /// The gateway's public key.
    pub public_key: [u8; 32],
    /// Metrics updated where things happen.
    pub instruments: Arc<gridgate_core::instruments::Instruments>,
    /// When the gateway started.
    pub started: Instant,
    /// The credentials in force.
    pub gate: Gate,
    /// Today's statement as the ledger card last showed it.
    pub settled: views::SettledCache,
}

#[derive(Clone)]
struct App {
    state: Arc<WebState>,
    exporter: Arc<metrics::Exporter>,
}

/// Longest wait for a test read (the line may be busy with a silent device).
const TEST_READ_WITHIN: Duration = Duration::from_secs(15);

/// Reads the certificate, binds, and serves `state` (its credentials read with
/// [`Gate::load`]) until `cancel` fires.
/// Returns the serving task and the address bound.
pub async fn start(
    cfg: &WebConfig,
    state: WebState,
    cancel: CancellationToken,
) -> Result<(JoinSet<()>, SocketAddr), WebError> {
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            gridgate_core::tls::server_tls(cert, key, None, b"http/1.1")?,
        ))),
        None => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| WebError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let state = Arc::new(state);
    let admission = state
        .instruments
        .listeners
        .get("web", gridgate_core::admission::WEB_MAX);
    let app = App {
        exporter: Arc::new(metrics::Exporter::new(state.clone())),
        state,
    };
    let router = router(app);
    let mut tasks = JoinSet::new();
    tasks.spawn(accept(listener, tls, router, admission, cancel.clone()));
    info!(
        listen = %local,
        https = cfg.tls.is_some(),
        anonymous_read = cfg.anonymous_read,
        "commissioning page and /metrics up"
    );
    Ok((tasks, local))
}

/// A request's headers must arrive whole within this, counted from when the server starts
/// waiting for them: a client that connects and says nothing, keeps an idle keep-alive, or
/// trickles its headers is closed after it.
const HEADERS_WITHIN: Duration = Duration::from_secs(10);
/// A connection that sends nothing at all for this long is closed whatever it is doing (a
/// request body that stalls). Longer than the longest answer a request may wait for (a
/// scan), since the server may watch the connection while the answer is being made.
const IDLE_WITHIN: Duration = Duration::from_secs(SCAN_WITHIN.as_secs() + 60);

/// Accepts connections under the listener's cap and serves each on its own task: the TLS
/// handshake within [`gridgate_core::admission::HANDSHAKE_WITHIN`], then HTTP/1.1 with
/// [`HEADERS_WITHIN`] for each request's headers and [`IDLE_WITHIN`] of silence at most.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    admission: Arc<gridgate_core::admission::Admission>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => { backoff = Duration::from_millis(10); c }
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    warn!("commissioning page: accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let Some(permit) = admission.admit() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let io = admission.guard(tcp, permit, IDLE_WITHIN);
        let (tls, router, admission, cancel) = (
            tls.clone(),
            router.clone(),
            admission.clone(),
            cancel.clone(),
        );
        conns.spawn(async move {
            let io = match tls {
                None => Either::Left(io),
                Some(acceptor) => {
                    match tokio::time::timeout(
                        gridgate_core::admission::HANDSHAKE_WITHIN,
                        acceptor.accept(io),
                    )
                    .await
                    {
                        Ok(Ok(s)) => Either::Right(s),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "page TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            admission.timed_out();
                            tracing::debug!(%peer, "page TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            serve_one(io, peer, router, cancel).await;
        });
    }
    // Open requests finish (a graceful shutdown of each connection); then they are gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Serves one connection until it closes, times out, or the page stops.
async fn serve_one<I>(io: I, peer: SocketAddr, router: Router, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The handlers learn the caller's address as axum's ConnectInfo.
    let app = router.layer(axum::Extension(ConnectInfo(Peer(peer))));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADERS_WITHIN)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "page connection ended: {e}");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The caller's address.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/app.css", get(page_css))
        .route("/metrics", get(metrics_text))
        .route("/api/overview", get(overview))
        .route("/api/devices", get(devices))
        .route("/api/devices/{name}", get(device))
        .route("/api/devices/{name}/read", post(test_read))
        .route("/api/buses/{name}/scan", post(scan))
        .route("/api/dr", get(dr))
        .route("/api/market", get(market))
        .route("/api/openadr", get(openadr))
        .route("/api/loads/{name}/override", post(set_override))
        .with_state(app)
}

// The page: compiled in.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn page_html() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn page_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn page_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// An error the page shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiProblem {
    /// What went wrong and what to do.
    pub error: String,
}

fn problem(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ApiProblem {
            error: error.into(),
        }),
    )
        .into_response()
}

/// The credential in `Authorization: Bearer ...`; the scheme's name is case-insensitive
/// (RFC 9110 section 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// The caller's access, or the refusal to send back when it is less than `need`.
#[allow(clippy::result_large_err)]
fn check(
    app: &App,
    peer: Peer,
    headers: &HeaderMap,
    need: Access,
    what: &str,
) -> Result<Access, Response> {
    let got = app.state.gate.access(peer.0, bearer(headers));
    if got >= need {
        return Ok(got);
    }
    app.state.instruments.refused(what);
    Err(match (need, got) {
        (Access::Admin, Access::Read) => problem(
            StatusCode::FORBIDDEN,
            "this needs the admin credential ([web] admin_token_file); the one given only reads",
        ),
        _ => {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "give the gateway's credential (Authorization: Bearer, from the file [web] names)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gridgate\""),
            );
            r
        }
    })
}

/// The HTTP status of a bus task's refusal.
fn control_status(e: &gridgate_acquire::ControlError) -> StatusCode {
    match e {
        gridgate_acquire::ControlError::Unknown(_) => StatusCode::NOT_FOUND,
        gridgate_acquire::ControlError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Runs a store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, gridgate_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}"),
        )),
        Err(e) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn metrics_text(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "metrics") {
        return r;
    }
    let exporter = app.exporter.clone();
    match tokio::task::spawn_blocking(move || exporter.encode()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        _ => problem(StatusCode::INTERNAL_SERVER_ERROR, "metrics did not encode"),
    }
}

async fn overview(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let access = match check(&app, peer, &headers, Access::Read, "overview") {
        Ok(a) => a,
        Err(r) => return r,
    };
    let s = app.state.clone();
    match blocking(move || views::overview(&s, access)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// `?q=filter&offset=0&limit=50`
#[derive(Debug, Deserialize)]
struct PageQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn devices(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "devices") {
        return r;
    }
    Json(views::devices(
        &app.state,
        &q.q,
        q.offset,
        q.limit.unwrap_or(50),
    ))
    .into_response()
}

async fn device(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "device") {
        return r;
    }
    // A device's view reads its meter points' samples of the day from the store.
    let (s, n) = (app.state.clone(), name.clone());
    match blocking(move || Ok(views::device(&s, &n))).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            format!("no device {name:?} in the config in force"),
        ),
        Err(r) => r,
    }
}

async fn dr(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "dr") {
        return r;
    }
    let s = app.state.clone();
    match blocking(move || views::dr(&s)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn market(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "market") {
        return r;
    }
    let s = app.state.clone();
    match blocking(move || views::market(&s)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn openadr(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Read, "openadr") {
        return r;
    }
    let s = app.state.clone();
    match blocking(move || views::openadr(&s)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// What a test read returns.
#[derive(Debug, Serialize)]
pub struct TestRead {
    pub device: String,
    /// Milliseconds the poll took, queue included.
    pub took_ms: u64,
    /// The readings (stored like any poll's).
    pub readings: Vec<gridgate_core::Reading>,
}

async fn test_read(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Admin, "test_read") {
        return r;
    }
    let started = Instant::now();
    match app.state.controls.poll_now(&name, TEST_READ_WITHIN).await {
        Ok(readings) => {
            let good = readings.iter().filter(|r| r.quality.is_good()).count();
            info!(device = %name, by = %peer.0, good, of = readings.len(), "test read from the commissioning page");
            app.state.instruments.action("test_read", "done");
            Json(TestRead {
                device: name,
                took_ms: started.elapsed().as_millis() as u64,
                readings,
            })
            .into_response()
        }
        Err(e) => {
            warn!(device = %name, by = %peer.0, "test read from the commissioning page failed: {e}");
            app.state.instruments.action("test_read", "failed");
            let status = control_status(&e);
            problem(
                status,
                format!(
                    "test read of {name}: {e} (MQTT devices publish by themselves and cannot be polled)"
                ),
            )
        }
    }
}

/// Longest wait for a scan (a DL/T 645 address search, or 247 silent Modbus units, takes
/// minutes).
const SCAN_WITHIN: Duration = Duration::from_secs(20 * 60);

/// `?from=1&to=247` (Modbus unit ids; a DL/T 645 line is searched whole).
#[derive(Debug, Deserialize)]
struct ScanQuery {
    from: Option<u8>,
    to: Option<u8>,
}

async fn scan(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(bus): Path<String>,
    Query(q): Query<ScanQuery>,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Admin, "scan") {
        return r;
    }
    let (from, to) = (q.from.unwrap_or(1), q.to.unwrap_or(247));
    if from == 0 || from > to || to > 247 {
        return problem(
            StatusCode::BAD_REQUEST,
            "Modbus unit ids run from 1 to 247: give from <= to in that range",
        );
    }
    warn!(bus = %bus, by = %peer.0, from, to, "line scan from the commissioning page: the bus's polls wait until it ends");
    match app.state.controls.scan(&bus, from..=to, SCAN_WITHIN).await {
        Ok(found) => {
            info!(bus = %bus, found = found.found.len(), "line scan from the commissioning page done");
            app.state.instruments.action("scan", "done");
            Json(found).into_response()
        }
        Err(e) => {
            app.state.instruments.action("scan", "failed");
            let status = control_status(&e);
            problem(status, format!("scan of {bus}: {e}"))
        }
    }
}

/// `{"active": true, "reason": "..."}`
#[derive(Debug, Serialize, Deserialize)]
pub struct OverrideBody {
    /// Set (true) or clear (false).
    pub active: bool,
    /// Why (kept with the override; required to set one).
    #[serde(default)]
    pub reason: String,
}

async fn set_override(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(load): Path<String>,
    body: Result<Json<OverrideBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = check(&app, peer, &headers, Access::Admin, "override") {
        return r;
    }
    let Ok(Json(body)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "send {\"active\": true|false, \"reason\": \"...\"} as JSON",
        );
    };
    if body.active && body.reason.trim().is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "say why the load is taken out of DR (the reason is kept and shown)",
        );
    }
    let reason = format!("{} (commissioning page, {})", body.reason.trim(), peer.0);
    let config = app.state.config.borrow().clone();
    let changed = gridgate_dr::desk::set_override(
        app.state.store.store.clone(),
        &config,
        &app.state.dr,
        &load,
        body.active,
        &reason,
        "the commissioning page",
    )
    .await;
    match changed {
        Ok(loads) => {
            app.state.instruments.action("override", "done");
            Json(loads.into_iter().collect::<Vec<_>>()).into_response()
        }
        Err(e @ DeskError::NotALoad(_)) => problem(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => {
            app.state.instruments.action("override", "failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_whatever_its_case() {
        for (header, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(header));
            assert_eq!(bearer(&h), want, "{header}");
        }
    }
}
