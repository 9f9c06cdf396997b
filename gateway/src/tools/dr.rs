//! `gridgate dr`: what a DR operator runs by hand. `sign` turns an event written in TOML into
//! a signed `gridgate.v1.SignedDrEvent` file; `dispatch` sends such a file to a gateway over
//! mutual TLS (operator role) and prints the gateway's answer; `watch` follows events' states
//! and `report` fetches an ended event's signed performance report and checks its signature.
//!
//! An event file:
//!
//! ```toml
//! id = "2026-11-28-peak-1"     # unique for this issuer, for all time
//! issuer = "operator"          # the name the gateway's [dr] issuers trust
//! program = "peak-shave"
//! start = "now"                # or "2026-11-28T18:00:00Z"
//! duration = "15m"
//! expires = "10m"              # after signing; or a UTC time
//! priority = 0                 # optional; ramp = "2m", randomize = "30s" also optional
//! gateways = ["site-042"]      # optional: the gateways it is for (others refuse it; on the
//!                              # ledger, a named gateway that never reports has missed it)
//!
//! [[target]]
//! load = "chiller-1"
//! shed_kw = 20.0               # or setpoint = 18.5, or on = false
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::demand_response_client::DemandResponseClient;
use prost::Message;
use serde::Deserialize;

use gridgate_core::Identity;
use gridgate_core::signed::sign_event;

/// The event file's fields, as `gridgate dr sign --help` lists them.
const EVENT_FIELDS: &str = r#"The event file (TOML):

  id = "2026-11-28-peak-1"   unique for this issuer, for all time
  issuer = "operator"        the name the gateways' [dr] issuers give your key
  program = "peak-shave"     optional; how it is measured and settled ([[dr.program]])
  start = "now"              or a UTC time: "2026-11-28T18:00:00Z" (default now)
  duration = "15m"
  expires = "10m"            after signing, or a UTC time: not accepted after it
  priority = 0               optional; the higher wins a load two events want
  ramp = "2m"                optional; the loads spread evenly over it, in target order
  randomize = "30s"          optional; each load a random delay of up to this more
  gateways = ["site-042"]    optional; only these gateways accept it

  [[target]]                 one per load
  load = "chiller-1"         a [[load]] name on the gateway
  shed_kw = 20.0             or setpoint = 18.5, or on = false (a switch)

docs/dr-operator.md has the rules each gateway checks."#;

/// `gridgate dr ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DrCommand {
    /// Sign an event written in TOML with the issuer's key; writes a .signed file.
    ///
    /// Example: gridgate dr sign --key operator.key event.toml --out event.signed
    #[command(after_long_help = EVENT_FIELDS)]
    Sign {
        /// The issuer's private key (made by `gridgate keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The event, in TOML (its fields are listed below, under --help).
        event: PathBuf,
        /// Where to write the signed event (default: the event file with .signed).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send a signed event to a gateway (mutual TLS, operator role).
    ///
    /// Example: gridgate dr dispatch --endpoint https://gw:50051 --ca pki/ca.pem
    /// --cert pki/client-operator.pem --key pki/client-operator.key event.signed
    Dispatch {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The signed event (from `gridgate dr sign`).
        signed: PathBuf,
    },
    /// Cancel an accepted event: signs the cancel with the issuer's key and sends it.
    ///
    /// Example: gridgate dr cancel --sign-key operator.key --issuer operator --id E1
    /// --endpoint https://gw:50051 --ca pki/ca.pem --cert pki/client-operator.pem
    /// --key pki/client-operator.key
    Cancel {
        /// The issuer's private key (the one that signed the event).
        #[arg(long)]
        sign_key: PathBuf,
        /// The issuer's name.
        #[arg(long)]
        issuer: String,
        /// The event's id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Set (or with --clear, clear) a load's manual override: no DR event moves it, and an
    /// active event puts it back at once.
    ///
    /// Example: gridgate dr override --load chiller-1 --reason "maintenance" --endpoint
    /// https://gw:50051 --ca pki/ca.pem --cert pki/client-operator.pem --key pki/client-operator.key
    Override {
        /// The load.
        #[arg(long)]
        load: String,
        /// Clear the override instead of setting it.
        #[arg(long)]
        clear: bool,
        /// Why (logged by the gateway).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Fetch an ended event's signed performance report, check its signature and print it.
    ///
    /// Example: gridgate dr report --issuer operator --id E1 --endpoint https://gw:50051
    /// --ca pki/ca.pem --cert pki/client-operator.pem --key pki/client-operator.key
    Report {
        /// The event's issuer.
        #[arg(long)]
        issuer: String,
        /// The event's id.
        #[arg(long)]
        id: String,
        /// The gateway's public key (identity.pub) to check the signature with; without it
        /// the key is asked from the gateway itself (Admin.GetIdentity).
        #[arg(long)]
        gateway_key: Option<PathBuf>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the signed report, as received, to this file.
        #[arg(long)]
        save: Option<PathBuf>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Follow DR events: print each stored event as it stands, then every change, until
    /// interrupted (or, with --until-reported ID, until that event's report is written).
    ///
    /// Example: gridgate dr watch --endpoint https://gw:50051 --ca pki/ca.pem
    /// --cert pki/client-operator.pem --key pki/client-operator.key
    Watch {
        /// Only this issuer's events.
        #[arg(long, default_value = "")]
        issuer: String,
        /// Stop once this event's performance report is written.
        #[arg(long)]
        until_reported: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

/// Where the gateway is and the operator's TLS client identity.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// https://HOST:PORT of the gateway's gRPC API.
    #[arg(long)]
    endpoint: String,
    /// CA that signed the gateway's server certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate with the operator role.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
}

/// Prints the gateway's answer; exit 0 when accepted, 1 when refused.
fn answer(reply: &pb::DispatchReply, out: &mut dyn Write) -> Result<ExitCode> {
    if reply.accepted {
        writeln!(out, "accepted {:?}: {}", reply.event_id, reply.detail)?;
        Ok(ExitCode::SUCCESS)
    } else {
        let code =
            pb::Refusal::try_from(reply.refusal).map_or("REFUSAL_UNKNOWN", |r| r.as_str_name());
        writeln!(
            out,
            "refused {:?}: {code}: {}",
            reply.event_id, reply.detail
        )?;
        Ok(ExitCode::from(1))
    }
}

async fn client(g: &GatewayArgs) -> Result<DemandResponseClient<tonic::transport::Channel>> {
    let channel =
        super::pull::connect(&g.endpoint, g.ca.as_ref(), g.cert.as_ref(), g.key.as_ref()).await?;
    Ok(DemandResponseClient::new(channel))
}

fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    id: String,
    issuer: String,
    #[serde(default)]
    program: String,
    #[serde(default = "now_word")]
    start: String,
    duration: String,
    expires: String,
    #[serde(default)]
    priority: i32,
    ramp: Option<String>,
    randomize: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    target: Vec<TargetFile>,
}

fn now_word() -> String {
    "now".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    load: String,
    shed_kw: Option<f64>,
    setpoint: Option<f64>,
    on: Option<bool>,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn seconds(text: &Option<String>, what: &str) -> Result<u32> {
    let Some(t) = text else { return Ok(0) };
    let d = humantime::parse_duration(t).with_context(|| format!("{what}: {t:?}"))?;
    u32::try_from(d.as_secs()).with_context(|| format!("{what} is too long"))
}

/// `now` or an RFC 3339 UTC time (for `start`); a duration after `now` or a UTC time (for
/// `expires`).
fn moment(text: &str, now: SystemTime, what: &str) -> Result<i64> {
    if text == "now" {
        return Ok(0);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(unix_ms(t));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(unix_ms(now + d));
    }
    bail!(
        "{what} = {text:?}: write \"now\", a UTC time like \"2026-11-28T18:00:00Z\" or a duration like \"10m\""
    )
}

/// Reads an event file into the message the issuer signs.
fn read_event(path: &Path, now: SystemTime) -> Result<pb::DrEvent> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: EventFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid event", path.display()))?;
    let duration = humantime::parse_duration(&f.duration)
        .with_context(|| format!("duration = {:?}", f.duration))?;
    let mut targets = Vec::new();
    for t in f.target {
        use pb::load_target::Action;
        let action = match (t.shed_kw, t.setpoint, t.on) {
            (Some(kw), None, None) => Action::ShedKw(kw),
            (None, Some(v), None) => Action::Setpoint(v),
            (None, None, Some(on)) => Action::On(on),
            _ => bail!(
                "target {:?}: give exactly one of shed_kw, setpoint or on",
                t.load
            ),
        };
        targets.push(pb::LoadTarget {
            load: t.load,
            action: Some(action),
        });
    }
    let expires_ms = match moment(&f.expires, now, "expires")? {
        0 => bail!("expires = \"now\" would be refused; give a duration like \"10m\""),
        ms => ms,
    };
    Ok(pb::DrEvent {
        id: f.id,
        issuer: f.issuer,
        program: f.program,
        targets,
        start_ms: moment(&f.start, now, "start")?,
        duration_s: u32::try_from(duration.as_secs()).context("duration is too long")?,
        ramp_s: seconds(&f.ramp, "ramp")?,
        randomize_s: seconds(&f.randomize, "randomize")?,
        expires_ms,
        issued_ms: unix_ms(now),
        priority: f.priority,
        gateways: f.gateways,
        series: String::new(),
    })
}

/// Runs a `gridgate dr` command.
pub async fn run(cmd: DrCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match cmd {
        DrCommand::Sign {
            key,
            event,
            out: to,
        } => {
            let issuer = Identity::load(&key)?;
            let ev = read_event(&event, SystemTime::now())?;
            let signed = sign_event(&ev, &issuer);
            let to = to.unwrap_or_else(|| event.with_extension("signed"));
            std::fs::write(&to, signed.encode_to_vec())
                .with_context(|| format!("cannot write {}", to.display()))?;
            writeln!(
                out,
                "signed event {:?} of issuer {:?}: {} load(s), {} s, expires in {} s -> {}",
                ev.id,
                ev.issuer,
                ev.targets.len(),
                ev.duration_s,
                (ev.expires_ms - ev.issued_ms) / 1000,
                to.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        DrCommand::Dispatch { gateway, signed } => {
            let bytes = std::fs::read(&signed)
                .with_context(|| format!("cannot read {}", signed.display()))?;
            let msg = pb::SignedDrEvent::decode(bytes.as_slice()).with_context(|| {
                format!(
                    "{} is not a signed event (make one with gridgate dr sign)",
                    signed.display()
                )
            })?;
            let mut client = client(&gateway).await?;
            let reply = tokio::time::timeout(Duration::from_secs(30), client.dispatch(msg))
                .await
                .context("no answer from the gateway within 30 s")?
                .map_err(rpc_error)?
                .into_inner();
            answer(&reply, out)
        }
        DrCommand::Cancel {
            sign_key,
            issuer,
            id,
            gateway,
        } => {
            let signer = Identity::load(&sign_key)?;
            let cancel = pb::DrCancel {
                issuer,
                event_id: id,
                issued_ms: unix_ms(SystemTime::now()),
            };
            let mut client = client(&gateway).await?;
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                client.cancel(gridgate_core::signed::sign_cancel(&cancel, &signer)),
            )
            .await
            .context("no answer from the gateway within 30 s")?
            .map_err(rpc_error)?
            .into_inner();
            answer(&reply, out)
        }
        DrCommand::Override {
            load,
            clear,
            reason,
            gateway,
        } => {
            let mut client = client(&gateway).await?;
            let state = tokio::time::timeout(
                Duration::from_secs(30),
                client.set_override(pb::SetOverrideRequest {
                    load,
                    active: !clear,
                    reason,
                }),
            )
            .await
            .context("no answer from the gateway within 30 s")?
            .map_err(rpc_error)?
            .into_inner();
            if state.loads.is_empty() {
                writeln!(out, "no load is under manual override")?;
            } else {
                writeln!(out, "under manual override: {}", state.loads.join(", "))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DrCommand::Report {
            issuer,
            id,
            gateway_key,
            json,
            save,
            gateway,
        } => {
            let channel = super::pull::connect(
                &gateway.endpoint,
                gateway.ca.as_ref(),
                gateway.cert.as_ref(),
                gateway.key.as_ref(),
            )
            .await?;
            let mut client = DemandResponseClient::new(channel.clone());
            let signed = tokio::time::timeout(
                Duration::from_secs(30),
                client.get_report(pb::GetEventRequest {
                    issuer,
                    event_id: id,
                }),
            )
            .await
            .context("no answer from the gateway within 30 s")?
            .map_err(rpc_error)?
            .into_inner();
            let (key, whose) = match gateway_key {
                Some(path) => (gridgate_core::identity::load_public(&path)?, "pinned key"),
                None => {
                    let id = gridgate_proto::v1::admin_client::AdminClient::new(channel)
                        .get_identity(pb::GetIdentityRequest {})
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    let bytes: [u8; 32] = id
                        .public_key
                        .as_slice()
                        .try_into()
                        .context("the gateway's public key is not 32 bytes")?;
                    (
                        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                            .context("the gateway's public key is not an Ed25519 key")?,
                        "key the gateway gave",
                    )
                }
            };
            let report = gridgate_core::signed::verify_report(&key, &signed)?;
            if let Some(path) = save {
                std::fs::write(&path, signed.encode_to_vec())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                writeln!(out, "{}", report_json(&report))?;
            } else {
                write_report(&report, whose, out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DrCommand::Watch {
            issuer,
            until_reported,
            gateway,
        } => {
            let mut client = client(&gateway).await?;
            let mut stream = client
                .watch_events(pb::WatchEventsRequest { issuer })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(u) = stream.message().await.map_err(rpc_error)? {
                let Some(st) = &u.status else { continue };
                let state = pb::EventState::try_from(st.state)
                    .map_or("?", |s| s.as_str_name().trim_start_matches("EVENT_STATE_"));
                let loads: Vec<String> = st
                    .loads
                    .iter()
                    .map(|l| {
                        let ls = pb::LoadState::try_from(l.state)
                            .map_or("?", |s| s.as_str_name().trim_start_matches("LOAD_STATE_"));
                        format!("{}={ls}", l.load)
                    })
                    .collect();
                writeln!(
                    out,
                    "{} {}/{} {state}{}{} {}",
                    humantime::format_rfc3339_millis(SystemTime::now()),
                    u.issuer,
                    u.event_id,
                    if st.cancelled { " (cancelled)" } else { "" },
                    if st.reported { " reported" } else { "" },
                    loads.join(" ")
                )?;
                out.flush()?;
                if st.reported && until_reported.as_deref() == Some(u.event_id.as_str()) {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn series_json(series: &[pb::IntervalSeries]) -> serde_json::Value {
    series
        .iter()
        .map(|s| {
            serde_json::json!({
                "length_s": s.length_s,
                "intervals": s.intervals.iter().map(|i| serde_json::json!({
                    "start_ms": i.start_ms,
                    "end_ms": i.end_ms,
                    "baseline_w": i.baseline_w,
                    "actual_w": i.actual_w,
                    "reduction_w": i.reduction_w,
                    "samples": i.samples,
                    "complete": i.complete,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn method_name(m: i32) -> &'static str {
    pb::BaselineMethod::try_from(m).map_or("?", |m| m.as_str_name())
}

/// The report as JSON, field for field.
fn report_json(r: &pb::PerformanceReport) -> serde_json::Value {
    serde_json::json!({
        "gateway_id": r.gateway_id,
        "issuer": r.issuer,
        "event_id": r.event_id,
        "event_hash": hex::encode(&r.event_hash),
        "program": r.program,
        "baseline": method_name(r.baseline),
        "start_ms": r.start_ms,
        "end_ms": r.end_ms,
        "cancelled": r.cancelled,
        "created_ms": r.created_ms,
        "total": series_json(&r.total),
        "loads": r.loads.iter().map(|l| {
            let st = l.status.clone().unwrap_or_default();
            serde_json::json!({
                "load": l.load,
                "meter": l.meter,
                "baseline": method_name(l.baseline),
                "baseline_days_ms": l.baseline_days_ms,
                "adjustment_ppm": l.adjustment_ppm,
                "state": pb::LoadState::try_from(st.state).map_or("?", |s| s.as_str_name()),
                "attempts": st.attempts,
                "last_error": st.last_error,
                "latency_ms": st.latency_ms,
                "series": series_json(&l.series),
            })
        }).collect::<Vec<_>>(),
    })
}

/// The report as a table: each load's acknowledgement, then the total per interval.
fn write_report(r: &pb::PerformanceReport, whose: &str, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "performance report of event {:?} (issuer {:?}, program {:?}) by gateway {:?}\nsignature: good ({whose})\nbaseline: {}{}",
        r.event_id,
        r.issuer,
        r.program,
        r.gateway_id,
        method_name(r.baseline).trim_start_matches("BASELINE_METHOD_"),
        if r.cancelled {
            "; the event was cancelled"
        } else {
            ""
        }
    )?;
    for l in &r.loads {
        let st = l.status.clone().unwrap_or_default();
        writeln!(
            out,
            "  load {:<16} {:<24} attempts {} latency {} ms{}",
            l.load,
            pb::LoadState::try_from(st.state).map_or("?", |s| s.as_str_name()),
            st.attempts,
            st.latency_ms,
            if st.last_error.is_empty() {
                String::new()
            } else {
                format!(" ({})", st.last_error)
            }
        )?;
    }
    for s in &r.total {
        writeln!(
            out,
            "  {} s intervals:        baseline kW   actual kW   reduction kW",
            s.length_s
        )?;
        for i in &s.intervals {
            writeln!(
                out,
                "    {}  {:>11.3} {:>11.3} {:>14.3}{}",
                humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_millis(i.start_ms.max(0) as u64)
                ),
                i.baseline_w as f64 / 1000.0,
                i.actual_w as f64 / 1000.0,
                i.reduction_w as f64 / 1000.0,
                if i.complete {
                    ""
                } else {
                    "  (incomplete: no data)"
                }
            )?;
        }
    }
    Ok(())
}
