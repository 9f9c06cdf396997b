//! The VEN at work: it registers with the VTN, polls the programs it follows and their
//! events (at once when the VTN's notifier says something changed), hands each new interval
//! to the DR desk as the gateway's own event (the same checks and the same durable record as
//! a signed one), cancels what the VTN modified or withdrew, and posts a report for every
//! interval the relay measured, from a durable queue, in order and once each, whenever the
//! VTN can be reached.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gridgate_config::GatewayConfig;
use gridgate_config::ledger::LedgerRole;
use gridgate_config::openadr::OpenAdrConfig;
use gridgate_core::Identity;
use gridgate_core::reading::now_ms;
use gridgate_dr::desk::Desk;
use gridgate_dr::event::event_key;
use gridgate_dr::tables::DrStore;
use gridgate_proto::v1 as pb;
use openleadr_client::{Client, ClientCredentials, Filter, VirtualEndNode};
use openleadr_wire::Event;
use prost::Message;
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::map::translate;
use crate::notify::NotifierStatus;
use crate::report::OptedOut;
use crate::tables::{OpenAdrStore, Outgoing, Scheduled, Seen, SeenState, Status};

/// Why a pass over the VTN stopped early (the next poll tries again).
#[derive(Debug, Error)]
pub enum VenError {
    /// The VTN answered with an error, or could not be reached.
    #[error("VTN: {0}")]
    Vtn(#[from] openleadr_client::Error),
    /// The client could not be set up (secret file, CA).
    #[error("{0}")]
    Setup(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gridgate_store::StoreError),
    /// The DR desk could not decide (its store failed).
    #[error("DR desk: {0}")]
    Desk(#[from] gridgate_dr::desk::DeskError),
}

/// A VTN that stays unreachable is logged when its error changes and then every 5 minutes,
/// not at every poll.
const REPEAT_WARNING_MS: i64 = 300_000;

/// After a notification, how long the VEN waits for the rest of the burst before it polls.
const COALESCE: Duration = Duration::from_millis(100);

/// What the VEN needs from the gateway.
pub struct Ven {
    /// The store (the VEN's tables, the DR reports).
    pub store: Arc<gridgate_store::Store>,
    /// The config in force.
    pub config: watch::Receiver<Arc<GatewayConfig>>,
    /// Where its events are decided, like any other.
    pub desk: Desk,
    /// The gateway's key: the VEN signs the events it hands the desk under the VTN's issuer
    /// name, which the desk trusts with this key only.
    pub identity: Identity,
}

/// A connection to the VTN for one version of `[openadr]`.
struct Session {
    cfg: OpenAdrConfig,
    client: Client<VirtualEndNode>,
    /// Ends the notifier task with the session (a new config makes a new one).
    _notifier: Option<tokio_util::sync::DropGuard>,
}

impl Session {
    fn new(
        cfg: &OpenAdrConfig,
        wake: &Arc<Notify>,
        notifier: &watch::Sender<NotifierStatus>,
    ) -> Result<Session, VenError> {
        let secret = std::fs::read_to_string(&cfg.client_secret_file).map_err(|e| {
            VenError::Setup(format!(
                "[openadr] client_secret_file {}: {e}",
                cfg.client_secret_file.display()
            ))
        })?;
        // The gateway's own rustls (ring), trusting only the configured CA: never the
        // system's roots, so a gateway talks to the VTN its operator named.
        let tls = match &cfg.ca_file {
            Some(ca) => gridgate_core::tls::client_tls(ca, None)
                .map_err(|e| VenError::Setup(format!("[openadr] ca_file: {e}")))?,
            None => gridgate_core::tls::client_tls_no_roots()
                .map_err(|e| VenError::Setup(format!("TLS: {e}")))?,
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| VenError::Setup(format!("HTTP client: {e}")))?;
        let base = url::Url::parse(&with_slash(&cfg.vtn))
            .map_err(|e| VenError::Setup(format!("[openadr] vtn: {e}")))?;
        let token = match &cfg.token_url {
            Some(t) => url::Url::parse(t),
            None => base.join("auth/token"),
        }
        .map_err(|e| VenError::Setup(format!("[openadr] token_url: {e}")))?;
        let creds = ClientCredentials::new(cfg.client_id.clone(), secret.trim().to_string());
        let guard = if cfg.notifications {
            let stop = CancellationToken::new();
            let access = crate::notify::Access {
                http: http.clone(),
                base: base.clone(),
                token_url: token.clone(),
                client_id: cfg.client_id.clone(),
                secret: secret.trim().to_string(),
                ca_file: cfg.ca_file.clone(),
                ven_name: cfg.ven_name.clone(),
            };
            tokio::spawn(crate::notify::listen(
                access,
                wake.clone(),
                notifier.clone(),
                stop.clone(),
            ));
            Some(stop.drop_guard())
        } else {
            notifier.send_replace(NotifierStatus {
                state: "off ([openadr] notifications = false)".into(),
                ..NotifierStatus::default()
            });
            None
        };
        Ok(Session {
            cfg: cfg.clone(),
            client: Client::with_details(base, token, http, Some(creds)),
            _notifier: guard,
        })
    }
}

/// `url::Url::join` drops the last path segment of a base without a trailing slash.
fn with_slash(u: &str) -> String {
    if u.ends_with('/') {
        u.to_string()
    } else {
        format!("{u}/")
    }
}

/// Runs until `cancel` fires.
pub async fn run(mut v: Ven, cancel: CancellationToken) {
    let mut session: Option<Session> = None;
    // The notifier wakes the loop for an early poll, and says how it stands.
    let wake = Arc::new(Notify::new());
    let (notifier, notified) = watch::channel(NotifierStatus::default());
    // Only the VEN writes its status: read once, kept here, stored after every poll.
    let store = v.store.clone();
    let mut status = store
        .run(|s| s.openadr().status())
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    loop {
        let cfg = v.config.borrow_and_update().clone();
        let Some(o) = cfg.openadr.clone() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = v.config.changed() => if changed.is_err() { return },
            }
            continue;
        };
        status.vtn = o.vtn.clone();
        status.ven_name = o.ven_name.clone();
        status.last_poll_ms = now_ms();
        if session.as_ref().is_none_or(|s| s.cfg != o) {
            // The old session's notifier ends before the new one starts.
            drop(session.take());
            session = match Session::new(&o, &wake, &notifier) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("OpenADR VEN: {e}");
                    status.last_error = Some((now_ms(), e.to_string()));
                    None
                }
            };
        }
        // What the relay measured is queued whether or not the VTN answers now.
        if let Err(e) = queue_reports(&v, &cfg, &o).await {
            warn!("OpenADR VEN: reports not queued: {e}");
        }
        if let Some(s) = session.as_ref() {
            match pass(&v, &cfg, s, &mut status).await {
                Ok(()) => {
                    status.last_ok_ms = now_ms();
                }
                Err(e) => {
                    let text = e.to_string();
                    let repeated = status.last_error.as_ref().is_some_and(|(at, last)| {
                        *last == text
                            && status.last_ok_ms < *at
                            && now_ms() - *at < REPEAT_WARNING_MS
                    });
                    if repeated {
                        debug!(vtn = %o.vtn, "OpenADR VEN: {text}");
                    } else {
                        warn!(vtn = %o.vtn, "OpenADR VEN: {text}; trying again every {:?}", o.poll);
                        status.last_error = Some((now_ms(), text));
                    }
                }
            }
        }
        status.notifier = notified.borrow().clone();
        let st = status.clone();
        if let Err(e) = v.store.run(move |s| s.openadr().put_status(&st)).await {
            warn!("OpenADR VEN: status not stored: {e}");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = v.config.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(o.poll) => {}
            _ = wake.notified() => {
                // One change is several notifications (a topic per audience): one poll.
                tokio::time::sleep(COALESCE).await;
            }
        }
    }
}

/// One poll: register (or read the VEN's targets), read programs and events, act on what
/// changed, post the queued reports.
async fn pass(
    v: &Ven,
    cfg: &Arc<GatewayConfig>,
    s: &Session,
    status: &mut Status,
) -> Result<(), VenError> {
    let o = s.cfg.clone();
    // The VEN is read every pass: the VTN's operator may give it targets (or the VTN may
    // have been reset and forgotten it) at any time.
    let ven = match s.client.get_ven_by_name(&o.ven_name).await {
        Ok(ven) => ven,
        Err(openleadr_client::Error::ObjectNotFound) => {
            let made = s
                .client
                .create_ven(openleadr_wire::ven::VenVenRequest {
                    ven_name: o.ven_name.clone(),
                    attributes: None,
                })
                .await?;
            info!(vtn = %o.vtn, ven = %o.ven_name, id = %made.id(), "OpenADR VEN registered");
            made
        }
        Err(e) => return Err(e.into()),
    };
    let ven_targets: Vec<String> = ven
        .content()
        .targets
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    if status.ven_targets != ven_targets {
        info!(vtn = %o.vtn, targets = ?ven_targets, "OpenADR VEN targets set by the VTN");
    }
    status.ven_id = Some(ven.id().as_str().to_string());
    status.ven_targets = ven_targets.clone();

    let programs = s.client.get_program_list(Filter::none()).await?;
    status.programs = o
        .programs
        .iter()
        .map(|name| {
            let id = programs
                .iter()
                .find(|p| p.content().program_name == *name)
                .map(|p| p.id().as_str().to_string());
            (name.clone(), id)
        })
        .collect();
    let mut fetched: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for p in programs
        .iter()
        .filter(|p| o.programs.contains(&p.content().program_name))
    {
        let events = p.get_event_list(Filter::none()).await?;
        fetched.insert(
            p.content().program_name.clone(),
            events
                .iter()
                .map(|e| Event {
                    id: e.id().clone(),
                    created_date_time: e.created_date_time(),
                    modification_date_time: e.modification_date_time(),
                    content: e.content().clone(),
                })
                .collect(),
        );
    }

    let store = v.store.clone();
    let known: BTreeMap<String, Seen> = store
        .run(|s| s.openadr().events())
        .await?
        .into_iter()
        .collect();
    for (program, events) in &fetched {
        for event in events {
            let id = event.id.as_str().to_string();
            let modified = event.modification_date_time.to_rfc3339();
            let prev = known.get(&id);
            let fresh = match prev {
                None => true,
                Some(p) => p.modified != modified && p.state != SeenState::Cancelled,
            };
            // A new modification time on the same content (a VTN that touches an event
            // without changing it) moves nothing: the loads are not restored and moved again.
            if let Some(p) = prev.filter(|_| fresh)
                && serde_json::from_str::<Event>(&p.raw)
                    .is_ok_and(|old| old.content == event.content)
            {
                let mut p = p.clone();
                p.modified = modified;
                p.raw = serde_json::to_string(event).unwrap_or_default();
                let k = id.clone();
                v.store
                    .run(move |st| st.openadr().put_event(&k, &p, &[]))
                    .await?;
                continue;
            }
            if fresh {
                act(
                    v,
                    cfg,
                    &o,
                    &ven_targets,
                    program,
                    event,
                    prev.cloned(),
                    status,
                )
                .await?;
            }
        }
    }
    // Gone from a program the VTN listed: withdrawn. Its intervals end now.
    for (id, seen) in &known {
        let listed = fetched
            .get(&seen.program)
            .map(|evs| evs.iter().any(|e| e.id.as_str() == id));
        if listed == Some(false) && seen.state == SeenState::Active {
            let mut seen = seen.clone();
            cancel_intervals(v, &o, &mut seen).await?;
            seen.state = SeenState::Cancelled;
            info!(vtn_event = %id, "OpenADR event withdrawn by the VTN: its loads are restored");
            let (k, s2) = (id.clone(), seen);
            v.store
                .run(move |st| st.openadr().put_event(&k, &s2, &[]))
                .await?;
        }
    }
    post_reports(v, s, status).await
}

/// Acts on a new VTN event, or a new version of one (`prev`).
#[allow(clippy::too_many_arguments)]
async fn act(
    v: &Ven,
    cfg: &Arc<GatewayConfig>,
    o: &OpenAdrConfig,
    ven_targets: &[String],
    program: &str,
    event: &Event,
    prev: Option<Seen>,
    status: &mut Status,
) -> Result<(), VenError> {
    let id = event.id.as_str().to_string();
    let now = now_ms();
    let mut seen = match prev {
        Some(mut p) => {
            cancel_intervals(v, o, &mut p).await?;
            p.generation += 1;
            // A new version is answered on its own (an opt-out names its version).
            p.opted_out = false;
            info!(vtn_event = %id, generation = p.generation, "OpenADR event modified on the VTN: the earlier version is cancelled");
            p
        }
        None => Seen::first(program, event.content.event_name.clone(), now),
    };
    seen.modified = event.modification_date_time.to_rfc3339();
    seen.raw = serde_json::to_string(event).unwrap_or_default();
    seen.state = SeenState::Active;
    seen.refusal = None;
    let mut reports = Vec::new();
    match translate(event, o, ven_targets, now) {
        Err(bad) => {
            let why = bad.to_string();
            // Refused before its intervals could be read: the opt-out is dated now.
            let whole = [OptedOut {
                interval_id: 0,
                start_ms: now,
                end_ms: now,
                reason: why.clone(),
            }];
            refuse(o, &id, &mut seen, &why, bad.kind(), status);
            queue_opt_out(o, &id, &mut seen, &whole, &mut reports);
        }
        Ok(t) => {
            for u in &t.unmapped {
                *status.unmapped.entry(u.clone()).or_default() += 1;
                warn!(vtn_event = %id, payload = %u, "OpenADR payload type that no [[openadr.load]] follows: ignored");
            }
            seen.prices = t
                .intervals
                .iter()
                .filter_map(|i| i.price.map(|p| (i.interval_id, p)))
                .collect();
            let (telemetry, not_measured) =
                crate::telemetry::requests(event, &t.intervals, &t.loads);
            for u in not_measured {
                warn!(vtn_event = %id, request = %u, "OpenADR report request the gateway cannot answer (it reports measured USAGE and DEMAND): ignored");
                *status.unmapped.entry(u).or_default() += 1;
            }
            // A new version's requests replace the earlier version's.
            seen.telemetry = telemetry;
            let mut refusals = Vec::new();
            let mut accepted = 0;
            for planned in t.intervals.iter().filter(|i| !i.targets.is_empty()) {
                if planned.end_ms <= now {
                    continue;
                }
                let dr_id = format!("{id}/{}/{}", seen.generation, planned.interval_id);
                let dr_event = pb::DrEvent {
                    id: dr_id.clone(),
                    issuer: o.issuer(),
                    program: program.to_string(),
                    targets: planned.targets.clone(),
                    start_ms: planned.start_ms,
                    duration_s: ((planned.end_ms - planned.start_ms) / 1000)
                        .clamp(0, i64::from(u32::MAX)) as u32,
                    ramp_s: 0,
                    randomize_s: 0,
                    expires_ms: planned.end_ms,
                    issued_ms: now,
                    priority: crate::map::priority(event),
                    gateways: vec![cfg.id.clone()],
                    // All intervals and versions of this VTN event are one dispatch.
                    series: id.clone(),
                };
                let signed = gridgate_core::signed::sign_event(&dr_event, &v.identity);
                let reply = v.desk.dispatch(signed).await?;
                let replay = reply.refusal == pb::Refusal::Replayed as i32;
                let ok = reply.accepted || replay;
                if ok {
                    accepted += 1;
                } else {
                    refusals.push(OptedOut {
                        interval_id: planned.interval_id,
                        start_ms: planned.start_ms,
                        end_ms: planned.end_ms,
                        reason: reply.detail.clone(),
                    });
                    let kind = pb::Refusal::try_from(reply.refusal)
                        .map(|r| {
                            r.as_str_name()
                                .trim_start_matches("REFUSAL_")
                                .to_lowercase()
                        })
                        .unwrap_or_else(|_| "refused".into());
                    *status.refused.entry(kind).or_default() += 1;
                }
                seen.intervals.push(Scheduled {
                    interval_id: planned.interval_id,
                    dr_id,
                    start_ms: planned.start_ms,
                    end_ms: planned.end_ms,
                    accepted: ok,
                    refusal: (!ok).then(|| reply.detail.clone()),
                    reported: false,
                    cancelled: false,
                });
            }
            if accepted == 0 && !refusals.is_empty() {
                let why = refusals
                    .iter()
                    .map(|r| format!("interval {}: {}", r.interval_id, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                refuse(o, &id, &mut seen, &why, "", status);
            } else if !refusals.is_empty() {
                warn!(vtn_event = %id, program, intervals = accepted, refused = refusals.len(), "OpenADR event scheduled in part: the intervals the desk refused are opted out");
            } else {
                info!(vtn_event = %id, program, intervals = accepted, "OpenADR event scheduled through the DR desk");
            }
            // The VTN learns which intervals it cannot count on, whole event or some.
            queue_opt_out(o, &id, &mut seen, &refusals, &mut reports);
        }
    }
    // A gateway on the ledger logs the VTN's event as received beside what it made of it,
    // once per version (the claim key), in the transaction order that survives a crash:
    // a restart before `put_event` acts on the event again and the desk answers `Replayed`.
    let logged = cfg
        .ledger
        .as_ref()
        .is_some_and(|l| l.role == LedgerRole::Gateway)
        .then(|| ledger_record(o, &id, &seen, now));
    let (k, me, identity) = (id.clone(), cfg.id.clone(), v.identity.clone());
    v.store
        .run(move |st| {
            if let Some(payload) = logged {
                gridgate_ledger_node::certifier::append(
                    st,
                    &me,
                    &identity,
                    &format!("openadr-event/{k}/{}", seen.generation),
                    pb::EntryKind::OpenadrEvent,
                    payload,
                )?;
            }
            st.openadr().put_event(&k, &seen, &reports)
        })
        .await?;
    Ok(())
}

/// The ledger entry's payload for a version of a VTN event, once the desk decided on it.
fn ledger_record(o: &OpenAdrConfig, id: &str, seen: &Seen, received_ms: i64) -> Vec<u8> {
    let this_version = format!("{id}/{}/", seen.generation);
    pb::OpenAdrEvent {
        vtn: o.vtn.clone(),
        ven: o.ven_name.clone(),
        event_id: id.to_string(),
        version: seen.generation,
        modified: seen.modified.clone(),
        received_ms,
        json: seen.raw.clone(),
        // `intervals` also keeps the earlier versions' (their reports are still to come).
        dr_events: seen
            .intervals
            .iter()
            .filter(|i| i.accepted && i.dr_id.starts_with(&this_version))
            .map(|i| i.dr_id.clone())
            .collect(),
        refusal: seen.refusal.clone().unwrap_or_default(),
    }
    .encode_to_vec()
}

/// Marks `seen` refused (nothing of it moves). `kind`, when not empty, is a bad-input
/// counter's name (the desk counts its own refusals).
fn refuse(
    o: &OpenAdrConfig,
    id: &str,
    seen: &mut Seen,
    why: &str,
    kind: &str,
    status: &mut Status,
) {
    if !kind.is_empty() {
        *status.refused.entry(kind.to_string()).or_default() += 1;
    }
    warn!(vtn_event = %id, vtn = %o.vtn, reason = kind, "OpenADR event refused, nothing moves: {why}");
    seen.state = SeenState::Refused;
    seen.refusal = Some(why.to_string());
}

/// Queues the opt-out of `refused` intervals of this version of the event, once.
fn queue_opt_out(
    o: &OpenAdrConfig,
    id: &str,
    seen: &mut Seen,
    refused: &[OptedOut],
    reports: &mut Vec<Outgoing>,
) {
    if refused.is_empty() || seen.opted_out {
        return;
    }
    let req = crate::report::opt_out(id, &o.ven_name, seen.generation, refused);
    reports.push(Outgoing {
        event_id: id.to_string(),
        report_name: crate::report::opt_out_name(id, seen.generation),
        request: req.to_string(),
    });
    seen.opted_out = true;
}

/// Asks the desk to cancel every interval of `seen` not over yet.
async fn cancel_intervals(v: &Ven, o: &OpenAdrConfig, seen: &mut Seen) -> Result<(), VenError> {
    let now = now_ms();
    for i in seen
        .intervals
        .iter_mut()
        .filter(|i| i.accepted && !i.cancelled && i.end_ms > now)
    {
        let cancel = pb::DrCancel {
            issuer: o.issuer(),
            event_id: i.dr_id.clone(),
            issued_ms: now,
        };
        let signed = gridgate_core::signed::sign_cancel(&cancel, &v.identity);
        let reply = v.desk.cancel(signed).await?;
        if !reply.accepted {
            warn!(dr_event = %i.dr_id, "cancel not taken: {}", reply.detail);
        }
        i.cancelled = true;
    }
    Ok(())
}

/// Queues a report for every interval the relay has measured and signed since the last pass,
/// and every telemetry report whose intervals are over and measured.
async fn queue_reports(
    v: &Ven,
    cfg: &Arc<GatewayConfig>,
    o: &OpenAdrConfig,
) -> Result<(), VenError> {
    let (issuer, ven_name) = (o.issuer(), o.ven_name.clone());
    let cfg = cfg.clone();
    let measured_before = now_ms() - gridgate_dr::relay::settle(&cfg).as_millis() as i64;
    v.store
        .run(move |st| {
            for (id, mut seen) in st.openadr().events()? {
                if !matches!(seen.state, SeenState::Active | SeenState::Cancelled) {
                    continue;
                }
                let mut reports = Vec::new();
                for i in seen
                    .intervals
                    .iter_mut()
                    .filter(|i| i.accepted && !i.reported)
                {
                    let Some(bytes) = st.dr().report(&event_key(&issuer, &i.dr_id))? else {
                        continue;
                    };
                    let Some(report) = pb::SignedPerformanceReport::decode(bytes.as_slice())
                        .ok()
                        .and_then(|s| pb::PerformanceReport::decode(s.report.as_slice()).ok())
                    else {
                        continue;
                    };
                    let req = crate::report::performance(&id, &ven_name, &i.dr_id, &report);
                    reports.push(Outgoing {
                        event_id: id.clone(),
                        report_name: crate::report::performance_name(&i.dr_id),
                        request: req.to_string(),
                    });
                    i.reported = true;
                }
                if seen.state == SeenState::Active {
                    for req in &mut seen.telemetry {
                        while let Some(spans) = req.due(measured_before) {
                            let name = crate::telemetry::report_name(
                                &id,
                                seen.generation,
                                req.descriptor,
                                req.queued,
                            );
                            let resources = measure_telemetry(st, &cfg, req, spans)?;
                            let body = crate::telemetry::report(
                                &id,
                                &ven_name,
                                &name,
                                req.measure,
                                &resources,
                            );
                            reports.push(Outgoing {
                                event_id: id.clone(),
                                report_name: name,
                                request: body.to_string(),
                            });
                            req.queued += 1;
                        }
                    }
                }
                let open = seen.intervals.iter().any(|i| i.accepted && !i.reported)
                    || (seen.state == SeenState::Active
                        && seen.telemetry.iter().any(|r| r.queued < r.reports.len()));
                if reports.is_empty() && open {
                    continue;
                }
                if !open && seen.state == SeenState::Active {
                    seen.state = SeenState::Done;
                }
                st.openadr().put_event(&id, &seen, &reports)?;
            }
            Ok::<_, gridgate_store::StoreError>(())
        })
        .await?;
    Ok(())
}

/// What the loads' meters measured over `spans`: per load, or summed into
/// `AGGREGATED_REPORT` (an interval only where every load's meter has samples).
fn measure_telemetry(
    st: &gridgate_store::Store,
    cfg: &GatewayConfig,
    req: &crate::telemetry::Request,
    spans: &[crate::telemetry::Span],
) -> Result<Vec<crate::telemetry::Measured>, gridgate_store::StoreError> {
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
        return Ok(Vec::new());
    };
    let mut per_load = Vec::new();
    for load in &req.loads {
        let Some(meter) = cfg.loads.iter().find(|l| l.name == *load).map(|l| &l.meter) else {
            continue;
        };
        let margin = gridgate_dr::report::MARGIN_MS;
        let samples = st.samples(meter, first.start_ms - margin, last.end_ms + margin)?;
        let kw: Vec<Option<f64>> = spans
            .iter()
            .map(|s| gridgate_dr::measure::mean(&samples, s.start_ms, s.end_ms).map(|m| m.0))
            .collect();
        per_load.push((load.clone(), kw));
    }
    let value = |s: &crate::telemetry::Span, kw: f64| req.measure.value(kw, s.start_ms, s.end_ms);
    if req.aggregate {
        let summed = spans
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let kw: Option<f64> = per_load.iter().map(|(_, kw)| kw[i]).sum();
                kw.map(|kw| (*s, value(s, kw)))
            })
            .collect();
        return Ok(vec![("AGGREGATED_REPORT".to_string(), summed)]);
    }
    Ok(per_load
        .into_iter()
        .map(|(load, kw)| {
            let values = spans
                .iter()
                .zip(kw)
                .filter_map(|(s, kw)| kw.map(|kw| (*s, value(s, kw))))
                .collect();
            (load, values)
        })
        .collect())
}

/// Posts the queued reports, oldest first, each once: one the VTN already holds (a post
/// whose answer was lost) is not posted again. Stops at the first the VTN cannot take now.
async fn post_reports(v: &Ven, s: &Session, status: &mut Status) -> Result<(), VenError> {
    let outbox = v.store.run(|st| st.openadr().outbox()).await?;
    for (seq, out) in outbox {
        let done = match post_one(s, &out).await {
            Ok(posted) => {
                if posted {
                    status.reports_posted += 1;
                    info!(vtn_event = %out.event_id, report = %out.report_name, "OpenADR report posted");
                }
                true
            }
            // The event is gone from the VTN: the report has nowhere to go.
            Err(VenError::Vtn(e))
                if e.is_not_found() || matches!(e, openleadr_client::Error::ObjectNotFound) =>
            {
                warn!(vtn_event = %out.event_id, report = %out.report_name, "OpenADR report dropped: the VTN no longer has its event");
                true
            }
            Err(VenError::Setup(why)) => {
                warn!(report = %out.report_name, "OpenADR report dropped: {why}");
                true
            }
            Err(e) => return Err(e),
        };
        if done {
            v.store.run(move |st| st.openadr().posted(seq)).await?;
        }
    }
    Ok(())
}

/// True when posted now, false when the VTN had it already.
async fn post_one(s: &Session, out: &Outgoing) -> Result<bool, VenError> {
    let request: openleadr_wire::report::ReportRequest = serde_json::from_str(&out.request)
        .map_err(|e| VenError::Setup(format!("a queued report does not parse: {e}")))?;
    let event_id = out
        .event_id
        .parse()
        .map_err(|_| VenError::Setup(format!("event id {:?}", out.event_id)))?;
    let event = s.client.get_event_by_id(&event_id).await?;
    let there = event.get_report_list(Some(&s.cfg.ven_name)).await?;
    if there
        .iter()
        .any(|r| r.content().report_name.as_deref() == Some(out.report_name.as_str()))
    {
        return Ok(false);
    }
    event.create_report(request).await?;
    Ok(true)
}
