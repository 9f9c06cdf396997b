//! The relay: drives accepted events' loads to their targets at the start, retries each load
//! until its control confirms or the event ends, and at the end restores every load it moved
//! to the value it had before. Every step is written to the event's record in the store, so
//! that after a restart (even a kill -9) an active event resumes and one that ended during
//! the downtime restores its loads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use prost::Message;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acquire::Controls;
use crate::acquire::reading::now_ms;
use crate::batch::Identity;
use crate::config::{GatewayConfig, LoadConfig};
use crate::store::Store;
use crate::store::samples::SAMPLE_RETENTION_MS;

/// How often the relay looks at the events when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for one write to be confirmed.
const WRITE_WITHIN: Duration = Duration::from_secs(5);
/// Longest wait between retries of a load that did not confirm.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The value to write for a target on `load`. `shed_kw` caps the load at
/// `rated_kw - shed_kw`, as a setpoint in percent of rated power.
pub fn target_value(load: &LoadConfig, action: &pb::load_target::Action) -> Option<f64> {
    use pb::load_target::Action;
    let (lo, hi) = load.setpoint_range;
    match *action {
        Action::Setpoint(v) => Some(v),
        Action::On(on) => Some(if on { 1.0 } else { 0.0 }),
        Action::ShedKw(kw) => {
            let rated = load.rated_kw?;
            Some(((rated - kw) / rated * 100.0).clamp(lo.max(0.0), hi.min(100.0)))
        }
    }
}

/// Event changes, for `WatchEvents` and the MQTT report topic: every write of an event's
/// record is announced here after it is stored.
pub type Updates = broadcast::Sender<Arc<pb::EventUpdate>>;

/// Updates a slow watcher may lag behind before it misses some (it is told).
pub const UPDATES_DEPTH: usize = 1024;

/// Announces a stored record (nobody listening is fine).
pub fn announce(updates: &Updates, status: &pb::EventStatus) {
    if let Some(e) = event_of(status) {
        let _ = updates.send(Arc::new(pb::EventUpdate {
            issuer: e.issuer,
            event_id: e.id,
            status: Some(status.clone()),
        }));
    }
}

/// What the relay works with.
pub struct Relay {
    /// The store (events, overrides, samples, reports).
    pub store: Arc<Store>,
    /// The config in force.
    pub config: watch::Receiver<Arc<GatewayConfig>>,
    /// Writes to field devices.
    pub controls: Controls,
    /// Wakes the relay when an event was accepted, cancelled or overridden.
    pub wake: Arc<Notify>,
    /// Held for every read-modify-write of an event's record.
    pub record_lock: Arc<tokio::sync::Mutex<()>>,
    /// Signs performance reports.
    pub identity: Identity,
    /// Where changes are announced.
    pub updates: Updates,
}

/// How often meter samples past their retention are dropped.
const SAMPLE_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the relay until `cancel` fires.
pub async fn run(relay: Relay, cancel: CancellationToken) {
    let Relay {
        store,
        config,
        controls,
        wake,
        record_lock,
        identity,
        updates,
    } = relay;
    let mut retry_at: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let mut pruned_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        if pruned_at.is_none_or(|t| t.elapsed() >= SAMPLE_PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            let st = store.clone();
            let cutoff = now_ms() - SAMPLE_RETENTION_MS;
            match tokio::task::spawn_blocking(move || st.prune_samples(cutoff)).await {
                Ok(Ok(n)) if n > 0 => info!(samples = n, "dropped meter samples past retention"),
                Ok(Err(e)) => error!("cannot drop old meter samples: {e}"),
                _ => {}
            }
        }
        let st = store.clone();
        let records = match tokio::task::spawn_blocking(move || st.dr_events()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                error!("DR relay cannot read events: {e}");
                continue;
            }
            Err(e) => {
                error!("DR relay: {e}");
                continue;
            }
        };
        let cfg = config.borrow().clone();
        let st = store.clone();
        let overridden = match tokio::task::spawn_blocking(move || st.dr_overrides()).await {
            Ok(Ok(o)) => o,
            _ => {
                error!("DR relay cannot read the manual overrides; waiting");
                continue;
            }
        };
        for (key, bytes) in records {
            let Ok(mut status) = pb::EventStatus::decode(bytes.as_slice()) else {
                continue;
            };
            let before = status.clone();
            step(
                &mut status,
                &key,
                &cfg,
                &controls,
                &overridden,
                &mut retry_at,
            )
            .await;
            if status == before && due_for_report(&status, &cfg) {
                write_report(&store, &cfg, &identity, &key, &mut status).await;
            }
            if status != before {
                // A cancel may have come in while the loads were being written: keep it.
                let _held = record_lock.lock().await;
                let st = store.clone();
                let k = key.clone();
                let current = tokio::task::spawn_blocking(move || st.dr_event(&k))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .and_then(|b| pb::EventStatus::decode(b.as_slice()).ok());
                if let Some(current) = current.filter(|c| c.cancelled && !status.cancelled) {
                    status.cancelled = true;
                    status.end_ms = status.end_ms.min(current.end_ms);
                    if current.state == pb::EventState::Cancelled as i32 {
                        status.state = current.state;
                    }
                }
                let st = store.clone();
                let record = status.encode_to_vec();
                let k = key.clone();
                match tokio::task::spawn_blocking(move || st.dr_update(&k, &record)).await {
                    Ok(Ok(())) => announce(&updates, &status),
                    Ok(Err(e)) => error!("DR relay cannot store event state: {e}"),
                    Err(e) => error!("DR relay: {e}"),
                }
            }
        }
    }
}

/// Whether an ended event's report can be written now: its meters have been polled past the
/// end (twice their longest poll period, at least 2 s), so the last interval is measured.
fn due_for_report(status: &pb::EventStatus, cfg: &GatewayConfig) -> bool {
    let ended = status.state == pb::EventState::Completed as i32
        || status.state == pb::EventState::Cancelled as i32;
    if !ended || status.reported || status.loads.is_empty() {
        return false;
    }
    let meters: BTreeSet<&str> = cfg.loads.iter().map(|l| l.meter.as_str()).collect();
    let longest_poll = cfg
        .devices()
        .filter(|(_, d)| {
            d.points
                .iter()
                .any(|p| meters.contains(format!("{}/{}", d.name, p.name).as_str()))
        })
        .map(|(_, d)| d.poll)
        .max()
        .unwrap_or(Duration::from_secs(5));
    let settle = (longest_poll * 2).clamp(Duration::from_secs(2), Duration::from_secs(120));
    now_ms() >= status.end_ms + settle.as_millis() as i64
}

/// Measures the ended event, signs and stores its report, and marks the record reported.
async fn write_report(
    store: &Arc<Store>,
    cfg: &Arc<GatewayConfig>,
    identity: &Identity,
    key: &str,
    status: &mut pb::EventStatus,
) {
    let Some(event) = event_of(status) else {
        return;
    };
    let (st, c, s, id) = (store.clone(), cfg.clone(), status.clone(), identity.clone());
    let k = key.to_string();
    let made = tokio::task::spawn_blocking(move || {
        let report = super::report::build(&st, &c, &s, &event, now_ms())?;
        let signed = super::report::sign(&id, &report);
        st.dr_put_report(&k, &signed.encode_to_vec())?;
        Ok::<_, crate::store::StoreError>(report)
    })
    .await;
    match made {
        Ok(Ok(report)) => {
            status.reported = true;
            let total = report.total.first();
            let reduction: i64 = total.map_or(0, |s| {
                let ms: i64 = s.intervals.iter().map(|i| i.end_ms - i.start_ms).sum();
                let wms: i64 = s
                    .intervals
                    .iter()
                    .map(|i| i.reduction_w * (i.end_ms - i.start_ms))
                    .sum();
                if ms > 0 { wms / ms } else { 0 }
            });
            info!(event = %report.event_id, mean_reduction_w = reduction, "DR performance report signed and stored");
        }
        Ok(Err(e)) => {
            error!(event = %key.replace('\0', "/"), "cannot write the performance report: {e}")
        }
        Err(e) => error!("DR report: {e}"),
    }
}

fn event_of(status: &pb::EventStatus) -> Option<pb::DrEvent> {
    status
        .signed
        .as_ref()
        .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())
}

/// Moves one event on by what time and the loads' answers allow.
async fn step(
    status: &mut pb::EventStatus,
    key: &str,
    cfg: &GatewayConfig,
    controls: &Controls,
    overridden: &BTreeSet<String>,
    retry_at: &mut BTreeMap<(String, String), Instant>,
) {
    let now = now_ms();
    let Some(event) = event_of(status) else {
        return;
    };
    let state = pb::EventState::try_from(status.state).unwrap_or_default();
    match state {
        pb::EventState::Scheduled if now >= status.start_ms => {
            status.state = pb::EventState::Active as i32;
            status.loads = event
                .targets
                .iter()
                .map(|t| {
                    let load = cfg.loads.iter().find(|l| l.name == t.load);
                    let target = load
                        .zip(t.action.as_ref())
                        .and_then(|(l, a)| target_value(l, a));
                    pb::LoadStatus {
                        load: t.load.clone(),
                        state: pb::LoadState::Pending as i32,
                        target: target.unwrap_or(f64::NAN),
                        ..Default::default()
                    }
                })
                .collect();
            info!(event = %event.id, loads = status.loads.len(), "DR event started");
            give_way(status, &event, cfg, controls, overridden).await;
            drive(status, &event, key, cfg, controls, retry_at).await;
        }
        pb::EventState::Active if now >= status.end_ms => {
            give_way(status, &event, cfg, controls, overridden).await;
            restore(status, &event, cfg, controls).await;
        }
        pb::EventState::Active => {
            give_way(status, &event, cfg, controls, overridden).await;
            drive(status, &event, key, cfg, controls, retry_at).await;
        }
        _ => {}
    }
}

/// Manual override wins: a load under override is not written, and one the event had moved
/// goes back to its previous value at once.
async fn give_way(
    status: &mut pb::EventStatus,
    event: &pb::DrEvent,
    cfg: &GatewayConfig,
    controls: &Controls,
    overridden: &BTreeSet<String>,
) {
    for ls in status.loads.iter_mut() {
        if !overridden.contains(&ls.load) {
            continue;
        }
        if ls.state == pb::LoadState::Pending as i32 {
            ls.state = pb::LoadState::Overridden as i32;
            info!(event = %event.id, load = %ls.load, "load under manual override: not moved");
        } else if ls.state == pb::LoadState::Acknowledged as i32 {
            let control = cfg
                .loads
                .iter()
                .find(|l| l.name == ls.load)
                .and_then(|l| l.control.clone());
            let (Some(previous), Some(control)) = (ls.previous, control) else {
                continue;
            };
            match controls.write(&control, previous, WRITE_WITHIN).await {
                Ok(_) => {
                    ls.state = pb::LoadState::Overridden as i32;
                    info!(event = %event.id, load = %ls.load, "load under manual override: put back");
                }
                Err(e) => {
                    ls.last_error = format!("override restore: {e}");
                    warn!(event = %event.id, load = %ls.load, "load under manual override not put back yet: {e}");
                }
            }
        }
    }
}

/// Writes every pending load whose retry is due, all at once.
async fn drive(
    status: &mut pb::EventStatus,
    event: &pb::DrEvent,
    key: &str,
    cfg: &GatewayConfig,
    controls: &Controls,
    retry_at: &mut BTreeMap<(String, String), Instant>,
) {
    let now = Instant::now();
    let mut writes = Vec::new();
    for (i, ls) in status.loads.iter().enumerate() {
        if ls.state != pb::LoadState::Pending as i32 {
            continue;
        }
        let slot = (key.to_string(), ls.load.clone());
        if retry_at.get(&slot).is_some_and(|t| *t > now) {
            continue;
        }
        let Some(control) = cfg
            .loads
            .iter()
            .find(|l| l.name == ls.load)
            .and_then(|l| l.control.clone())
        else {
            continue;
        };
        let target = ls.target;
        writes.push(async move { (i, controls.write(&control, target, WRITE_WITHIN).await) });
    }
    for (i, outcome) in futures::future::join_all(writes).await {
        let ls = &mut status.loads[i];
        ls.attempts += 1;
        let slot = (key.to_string(), ls.load.clone());
        match outcome {
            Ok(o) => {
                ls.state = pb::LoadState::Acknowledged as i32;
                if ls.previous.is_none() {
                    ls.previous = Some(o.previous);
                }
                ls.acknowledged_ms = now_ms();
                ls.latency_ms = ls.acknowledged_ms - status.start_ms;
                ls.last_error.clear();
                retry_at.remove(&slot);
                info!(event = %event.id, load = %ls.load, target = ls.target, latency_ms = ls.latency_ms, "load at its DR target");
            }
            Err(e) => {
                ls.last_error = e.to_string();
                let wait = (Duration::from_millis(250) * 2u32.saturating_pow(ls.attempts.min(8)))
                    .min(RETRY_MAX);
                retry_at.insert(slot, Instant::now() + wait);
                warn!(event = %event.id, load = %ls.load, attempts = ls.attempts, retry_in = ?wait, "load did not take its DR target: {e}");
            }
        }
    }
}

/// At the end: every load that was moved goes back to its previous value; loads never
/// acknowledged are marked failed. The event completes once every moved load is restored.
async fn restore(
    status: &mut pb::EventStatus,
    event: &pb::DrEvent,
    cfg: &GatewayConfig,
    controls: &Controls,
) {
    let mut writes = Vec::new();
    for (i, ls) in status.loads.iter_mut().enumerate() {
        if ls.state == pb::LoadState::Pending as i32 {
            ls.state = pb::LoadState::Failed as i32;
            warn!(event = %event.id, load = %ls.load, attempts = ls.attempts, "load never acknowledged its DR target: {}", ls.last_error);
        }
        if ls.state != pb::LoadState::Acknowledged as i32 {
            continue;
        }
        let (Some(previous), Some(control)) = (
            ls.previous,
            cfg.loads
                .iter()
                .find(|l| l.name == ls.load)
                .and_then(|l| l.control.clone()),
        ) else {
            continue;
        };
        writes.push(async move { (i, controls.write(&control, previous, WRITE_WITHIN).await) });
    }
    for (i, outcome) in futures::future::join_all(writes).await {
        let ls = &mut status.loads[i];
        match outcome {
            Ok(_) => ls.state = pb::LoadState::Restored as i32,
            Err(e) => {
                ls.last_error = format!("restore: {e}");
                warn!(event = %event.id, load = %ls.load, "load not restored yet: {e}");
            }
        }
    }
    if status
        .loads
        .iter()
        .all(|l| l.state != pb::LoadState::Acknowledged as i32)
    {
        status.state = if status.cancelled {
            pb::EventState::Cancelled as i32
        } else {
            pb::EventState::Completed as i32
        };
        info!(event = %event.id, cancelled = status.cancelled, "DR event ended; loads restored");
    }
}
