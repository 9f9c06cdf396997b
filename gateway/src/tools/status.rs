//! `gridgate status`: the commissioning page's facts on one terminal screen, for an engineer
//! on the gateway over SSH. It asks the running gateway's page API (the same JSON the page
//! draws), so the two never disagree; and `gridgate web-token`, which makes the credential.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use gridgate_web::views::{DevicePage, Overview};

/// `gridgate status` arguments.
// Doc comments here are --help text (clap): TOML sections and file patterns are meant
// literally, not as rustdoc links or HTML.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub page: PageArgs,
    /// Print the overview as JSON.
    #[arg(long)]
    pub json: bool,
    /// Devices listed (the worst first: offline, waiting, then by errors).
    #[arg(long, default_value_t = 12)]
    pub devices: usize,
}

/// How a command reaches the running gateway's page API (`gridgate status`,
/// `gridgate openadr status`).
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Args)]
pub struct PageArgs {
    /// The gateway's config: the page's address and credential file come from its [web].
    #[arg(long, short, default_value = "/etc/gridgate/gridgate.toml")]
    pub config: PathBuf,
    /// The page's address instead (http://127.0.0.1:8080, https://gw:8443).
    #[arg(long)]
    pub url: Option<String>,
    /// Credential file instead of the config's (read_token_file, else admin_token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA that signed the page's HTTPS certificate (the site PKI's ca.pem).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// Where and how to reach the page.
pub(crate) struct Target {
    https: bool,
    host: String,
    port: u16,
    token: Option<String>,
    ca: Option<PathBuf>,
}

pub(crate) fn target(a: &PageArgs) -> Result<Target> {
    // With --url the config is only where a credential may come from: a page that lets
    // anyone on its network read needs none, so a missing config is no error then.
    let cfg = if a.url.is_none() {
        Some(gridgate_config::load(&a.config).with_context(|| {
            format!(
                "reading {} (or give the page's address with --url)",
                a.config.display()
            )
        })?)
    } else if a.token_file.is_none() && a.config.exists() {
        gridgate_config::load(&a.config).ok()
    } else {
        None
    };
    let web = cfg.as_ref().and_then(|c| c.web.clone());
    let (https, host, port) = match &a.url {
        Some(u) => {
            let url = url::Url::parse(u).with_context(|| format!("--url {u:?}"))?;
            let https = match url.scheme() {
                "https" => true,
                "http" => false,
                s => bail!("--url: scheme {s:?}; use http:// or https://"),
            };
            let host = url.host_str().context("--url has no host")?.to_string();
            let port = url.port().unwrap_or(if https { 443 } else { 80 });
            (https, host.trim_matches(['[', ']']).to_string(), port)
        }
        None => {
            let w = web.as_ref().with_context(|| {
                format!(
                    "{} has no [web] table: the gateway serves no page to ask",
                    a.config.display()
                )
            })?;
            let ip = if w.listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                w.listen.ip().to_string()
            };
            (w.tls.is_some(), ip, w.listen.port())
        }
    };
    let token_file = a.token_file.clone().or_else(|| {
        web.as_ref()
            .and_then(|w| w.read_token_file.clone().or(w.admin_token_file.clone()))
    });
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading the credential {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Target {
        https,
        host,
        port,
        token,
        ca: a.ca.clone(),
    })
}

/// GET `path` from the page, as JSON.
pub(crate) async fn get<T: serde::de::DeserializeOwned>(t: &Target, path: &str) -> Result<T> {
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .with_context(|| {
            format!(
                "connecting to the gateway's page at {}:{} (is gridgate running with [web]?)",
                t.host, t.port
            )
        })?;
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{}:{}", t.host, t.port))
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(tok) = &t.token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {tok}"));
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let (status, body) = if t.https {
        let ca = t.ca.as_deref().context(
            "the page is HTTPS: give --ca with the CA that signed its certificate (the site PKI's ca.pem)",
        )?;
        let tls = gridgate_core::tls::client_tls(ca, None)?;
        let name = rustls_pki_types::ServerName::try_from(t.host.clone())
            .with_context(|| format!("{:?} is not a host name", t.host))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .context("TLS with the gateway's page")?;
        send(stream, req).await?
    } else {
        send(tcp, req).await?
    };
    if !status.is_success() {
        let why = serde_json::from_slice::<gridgate_web::ApiProblem>(&body)
            .map(|p| p.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("the gateway answered {status}: {why}");
    }
    serde_json::from_slice(&body).context("the gateway's answer does not parse")
}

async fn send<S>(stream: S, req: hyper::Request<Empty<Bytes>>) -> Result<(hyper::StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let res = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .context("no answer from the gateway's page within 15 s")??;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, body))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

pub(crate) fn ago(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
                + " ago"
        }
    }
}

/// The market's lines of `gridgate status`: the newest interval cleared and the one under
/// way, with this gateway's part (from the page's /api/market).
fn market_lines(m: &serde_json::Value) -> Vec<String> {
    let Some(area) = m["area"].as_str() else {
        return Vec::new();
    };
    let intervals = m["intervals"].as_array().cloned().unwrap_or_default();
    let at = |i: &serde_json::Value| {
        i["interval_ms"]
            .as_i64()
            .map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
                )
                .to_string()
            })
            .unwrap_or_default()
    };
    let wh = |v: &serde_json::Value| v.as_i64().map(|q| format!("{q:+} Wh"));
    let mut out = Vec::new();
    match intervals.iter().rev().find(|i| i["price"].is_i64()) {
        Some(c) => out.push(format!(
            "market   {area}  {} cleared at {} milli/kWh ({}, {} round(s)); ours: accepted {}, delivered {}",
            at(c),
            c["price"],
            c["stop"].as_str().unwrap_or(""),
            c["prices"].as_array().map_or(0, Vec::len),
            wh(&c["accepted_wh"]).unwrap_or_else(|| "nothing".into()),
            wh(&c["delivered_wh"]).unwrap_or_else(|| "not yet".into()),
        )),
        None => out.push(format!("market   {area}  no interval cleared yet")),
    }
    if let Some(o) = intervals.iter().rev().find(|i| i["state"] == "open") {
        let prices = o["prices"].as_array().cloned().unwrap_or_default();
        out.push(format!(
            "         {} under way: round {} asking {} milli/kWh",
            at(o),
            prices.len(),
            prices.last().and_then(|p| p.as_i64()).unwrap_or(0)
        ));
    }
    out
}

/// Prints the overview and the worst devices.
pub async fn run(a: StatusArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let t = target(&a.page)?;
    let o: Overview = get(&t, "/api/overview").await?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&o)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let page: DevicePage = get(&t, "/api/devices?limit=200").await?;
    writeln!(
        out,
        "gateway {}  v{}  up {}  key {}",
        o.gateway.id,
        o.gateway.version,
        humantime::format_duration(Duration::from_secs(o.gateway.uptime_s)),
        o.gateway.public_key
    )?;
    writeln!(
        out,
        "devices  {} in all, {} online, {} offline, {} waiting for a first good reading",
        o.devices.total, o.devices.online, o.devices.offline, o.devices.waiting
    )?;
    for b in &o.buses {
        let kinds: Vec<String> = b
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            out,
            "bus      {:<12} {:<7} {}/{} online  polls {}  errors {}{}  missed slots {}",
            b.name,
            b.protocol,
            b.online,
            b.devices,
            b.polls,
            b.errors,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            },
            b.missed_polls
        )?;
    }
    let s = &o.store;
    writeln!(
        out,
        "store    {} readings stored, next batch {}, {} open, {} of {}, {} dropped",
        s.readings_stored,
        s.next_batch,
        s.open_readings,
        mib(s.bytes),
        mib(s.budget_bytes),
        s.dropped_readings
    )?;
    match &o.uplink {
        Some(u) => writeln!(
            out,
            "uplink   {}  acknowledged {}  lag {} batch(es), {} s  connects {}",
            u.broker, u.acknowledged, u.lag_batches, u.lag_seconds, u.connects
        )?,
        None => writeln!(out, "uplink   none (gRPC pull only)")?,
    }
    if let Some(i) = &o.ingest {
        writeln!(
            out,
            "mqtt in  {} messages, {} readings, {} refused",
            i.messages, i.readings, i.refused
        )?;
    }
    let events: Vec<String> =
        o.dr.events
            .iter()
            .map(|(k, n)| format!("{} {n}", k.to_lowercase()))
            .collect();
    writeln!(
        out,
        "dr       {} load(s); events: {}; overridden: {}",
        o.dr.loads,
        if events.is_empty() {
            "none".into()
        } else {
            events.join(", ")
        },
        if o.dr.overrides.is_empty() {
            "none".into()
        } else {
            o.dr.overrides.join(", ")
        }
    )?;
    if let Some(l) = &o.ledger {
        writeln!(
            out,
            "ledger   {}  {} own entries pending  certified: {}  shut out: {}",
            l.role,
            l.pending,
            l.certified
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            if l.shut_out.is_empty() {
                "none".into()
            } else {
                l.shut_out.join(", ")
            }
        )?;
        if let Some(t) = &l.today {
            writeln!(
                out,
                "         settled today: {} event(s), {:.3} kWh, paid {:.3} (statement {})",
                t.events, t.delivered_kwh, t.paid, t.statement
            )?;
        }
        // The flexibility market, when the gateway trades in one (an older gateway has no
        // /api/market: nothing is said).
        if let Ok(m) = get::<serde_json::Value>(&t, "/api/market").await {
            for line in market_lines(&m) {
                writeln!(out, "{line}")?;
            }
        }
    }
    let mut devices = page.items;
    let rank = |s: &str| match s {
        "offline" => 0,
        "waiting" => 1,
        _ => 2,
    };
    devices.sort_by(|x, y| {
        rank(&x.state)
            .cmp(&rank(&y.state))
            .then(y.errors.cmp(&x.errors))
            .then(x.name.cmp(&y.name))
    });
    if !devices.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<18} {:<10} {:<8} {:>7} {:<14} values",
            "device", "bus", "state", "errors", "last good"
        )?;
    }
    for d in devices.iter().take(a.devices) {
        let values: Vec<String> = d
            .points
            .iter()
            .take(3)
            .map(|p| {
                format!(
                    "{} {}{}",
                    p.name.rsplit('/').next().unwrap_or(&p.name),
                    p.value.as_deref().unwrap_or("-"),
                    if p.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", p.unit)
                    }
                )
            })
            .collect();
        writeln!(
            out,
            "{:<18} {:<10} {:<8} {:>7} {:<14} {}",
            d.name,
            d.bus,
            d.state,
            d.errors,
            ago(d.last_good_age_ms),
            values.join(", ")
        )?;
    }
    if page.total > a.devices {
        writeln!(
            out,
            "... {} more device(s) (--devices N, or the page)",
            page.total - a.devices.min(page.total)
        )?;
    }
    Ok(if o.devices.offline > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `gridgate web-token --out FILE`: a new credential for the page, owner-only.
pub fn make_token(out_path: &Path, out: &mut dyn Write) -> Result<ExitCode> {
    if out_path.exists() {
        bail!(
            "{} exists; a credential is never overwritten (remove it first to replace it)",
            out_path.display()
        );
    }
    let token = gridgate_web::auth::new_token().context("no randomness from the system")?;
    gridgate_core::identity::write_private(out_path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", out_path.display()))?;
    writeln!(
        out,
        "wrote {} (owner-only). Name it in [web] admin_token_file or read_token_file, and give it to whoever may open the page.",
        out_path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::market_lines;

    #[test]
    fn the_market_lines_say_the_newest_clearing_and_the_round_under_way() {
        let m = serde_json::json!({
            "area": "feeder-7",
            "intervals": [
                { "interval_ms": 1_800_000_000_000i64, "state": "cleared", "price": 1000,
                  "stop": "balanced", "prices": [800, 1000], "accepted_wh": 297,
                  "delivered_wh": null },
                { "interval_ms": 1_800_000_060_000i64, "state": "open", "price": null,
                  "prices": [800, 1000, 900] }
            ]
        });
        assert_eq!(
            market_lines(&m),
            [
                "market   feeder-7  2027-01-15T08:00:00Z cleared at 1000 milli/kWh (balanced, 2 round(s)); ours: accepted +297 Wh, delivered not yet",
                "         2027-01-15T08:01:00Z under way: round 3 asking 900 milli/kWh",
            ]
        );
        assert!(market_lines(&serde_json::json!({ "area": null, "intervals": [] })).is_empty());
    }
}
