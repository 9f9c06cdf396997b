//! The relay: drives accepted events' loads to their targets, retries each load until its
//! control confirms or the event ends, and at the end restores every load it moved to the
//! value it had before. Every step is written to the event's record in the store, so that
//! after a restart (even a kill -9) an active event resumes and one that ended during the
//! downtime restores its loads.
//!
//! A pass decides, under the record lock and without waiting on any device: which events
//! start, which event holds each load (higher priority, then the earlier start), which loads
//! are due (ramp, random delay, minimum on time), which are under override (the admin RPC or
//! a local switch), which events end (after each load's minimum off time). The writes it asks
//! for run as their own tasks; each outcome comes back to the loop and is applied to the
//! record then. So one dead device never delays another load, an end, or a cancel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::event::written_value;
use crate::shared::{DrShared, Updates, announce, event_of};
use crate::tables::DrStore;
use gridgate_acquire::{ControlError, ControlOutcome, Controls};
use gridgate_config::ledger::LedgerRole;
use gridgate_config::{Control, GatewayConfig};
use gridgate_core::Identity;
use gridgate_core::Value;
use gridgate_core::reading::now_ms;
use gridgate_store::Store;
use gridgate_store::samples::SAMPLE_RETENTION_MS;

/// How often the relay looks at the events when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for one write to be confirmed.
const WRITE_WITHIN: Duration = Duration::from_secs(5);
/// Longest wait between retries of a load that did not confirm.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often meter samples past their retention are dropped.
const SAMPLE_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the relay works with.
pub struct Relay {
    /// The store (events, overrides, samples, reports).
    pub store: Arc<Store>,
    /// The config in force.
    pub config: watch::Receiver<Arc<GatewayConfig>>,
    /// Writes to field devices.
    pub controls: Controls,
    /// The record lock, the wake-up, where changes are announced.
    pub shared: DrShared,
    /// Signs performance reports.
    pub identity: Identity,
    /// Every reading acquired (for the loads' local override switches).
    pub live: broadcast::Receiver<gridgate_core::LiveReadings>,
    /// Acknowledgement latencies go to /metrics.
    pub instruments: Arc<gridgate_core::instruments::Instruments>,
}

/// Why a write was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// To the event's target.
    Drive,
    /// Back to the previous value at the end.
    Restore,
    /// Back to the previous value because the load went under override.
    GiveWay,
}

/// A write's outcome, back from its task.
struct Done {
    key: String,
    load: String,
    purpose: Purpose,
    at_ms: i64,
    at_us: i64,
    outcome: Result<ControlOutcome, ControlError>,
}

/// A load's slot: (event key, load name).
type Slot = (String, String);

/// The relay's memory between passes (none of it needs to survive a restart: the records
/// hold every fact; this only paces the work).
struct Pacing {
    in_flight: BTreeSet<Slot>,
    retry_at: BTreeMap<Slot, Instant>,
    /// Local override switches: point → on.
    switches: BTreeMap<String, bool>,
    done: mpsc::UnboundedSender<Done>,
    instruments: Arc<gridgate_core::instruments::Instruments>,
}

/// Runs the relay until `cancel` fires.
pub async fn run(relay: Relay, cancel: CancellationToken) {
    let Relay {
        store,
        config,
        controls,
        shared,
        identity,
        mut live,
        instruments,
    } = relay;
    let DrShared {
        records: record_lock,
        wake,
        updates,
        ..
    } = shared;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut pacing = Pacing {
        in_flight: BTreeSet::new(),
        retry_at: BTreeMap::new(),
        switches: BTreeMap::new(),
        done: done_tx,
        instruments,
    };
    let mut pruned_at: Option<Instant> = None;
    // The first pass looks at every event (a store from before the open set existed, or
    // one whose open set is stale); later passes only at the open ones.
    let mut whole_history = true;
    // An interval, not a sleep per turn: readings arrive more often than TICK and would
    // otherwise restart the wait forever.
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tick.tick() => {}
            Some(done) = done_rx.recv() => {
                // More may have finished with it: take them in the same turn, one record
                // write per event (a hundred loads answering at once are one commit).
                let mut batch = vec![done];
                while let Ok(done) = done_rx.try_recv() {
                    batch.push(done);
                }
                let _held = record_lock.lock().await;
                let mut by_event: BTreeMap<String, Vec<Done>> = BTreeMap::new();
                for d in batch {
                    by_event.entry(d.key.clone()).or_default().push(d);
                }
                for (key, dones) in by_event {
                    apply(&store, &updates, &mut pacing, &key, dones).await;
                }
                // An outcome needs nothing at once (a retry waits its backoff, an end its
                // time): while other writes are out, the tick's pass is soon enough, and a
                // pass over every open record per batch of outcomes would take the cores
                // from the writes still under way.
                if !pacing.in_flight.is_empty() {
                    continue;
                }
            }
            group = live.recv() => {
                let Ok(group) = group else { continue };
                let cfg = config.borrow().clone();
                let mut flipped = false;
                for r in group.iter() {
                    if !cfg.loads.iter().any(|l| l.override_point.as_deref() == Some(&*r.point)) {
                        continue;
                    }
                    let on = match &r.value {
                        Some(Value::Bool(b)) => *b,
                        Some(Value::Number(n)) => *n != 0.0,
                        _ => continue,
                    };
                    if pacing.switches.insert(r.point.to_string(), on) == Some(on) {
                        continue;
                    }
                    flipped = true;
                    warn!(switch = %r.point, on, "local DR override switch {}", if on { "on: its load is out of DR" } else { "off" });
                }
                if !flipped {
                    continue;
                }
            }
        }
        if pruned_at.is_none_or(|t| t.elapsed() >= SAMPLE_PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            let cutoff = now_ms() - SAMPLE_RETENTION_MS;
            match store.run(move |st| st.prune_samples(cutoff)).await {
                Ok(n) if n > 0 => info!(samples = n, "dropped meter samples past retention"),
                Ok(_) => {}
                Err(e) => error!("cannot drop old meter samples: {e}"),
            }
        }
        let cfg = config.borrow().clone();
        let _held = record_lock.lock().await;
        pass(
            &store,
            &cfg,
            &controls,
            &identity,
            &updates,
            &mut pacing,
            whole_history,
        )
        .await;
        whole_history = false;
    }
}

/// Runs `f` on the store off the async threads; a failure is logged and is `None` (the
/// relay's records are rewritten on its next pass).
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, gridgate_store::StoreError> + Send + 'static,
) -> Option<T> {
    store
        .run(f)
        .await
        .inspect_err(|e| error!("DR relay: {e}"))
        .ok()
}

async fn save(store: &Arc<Store>, updates: &Updates, key: &str, status: &pb::EventStatus) {
    let (k, record) = (key.to_string(), status.encode_to_vec());
    if blocking(store, move |s| s.dr().update(&k, &record))
        .await
        .is_some()
    {
        announce(updates, status);
    }
}

/// Applies writes' outcomes to their event's record, stored once.
async fn apply(
    store: &Arc<Store>,
    updates: &Updates,
    pacing: &mut Pacing,
    key: &str,
    dones: Vec<Done>,
) {
    for d in &dones {
        pacing.in_flight.remove(&(d.key.clone(), d.load.clone()));
    }
    let k = key.to_string();
    let Some(Some(bytes)) = blocking(store, move |s| s.dr().event(&k)).await else {
        return;
    };
    let Ok(mut status) = pb::EventStatus::decode(bytes.as_slice()) else {
        return;
    };
    let id = event_of(&status).map(|e| e.id).unwrap_or_default();
    for done in dones {
        apply_one(&mut status, &id, pacing, done);
    }
    save(store, updates, key, &status).await;
}

/// Applies one write's outcome to the load's status.
fn apply_one(status: &mut pb::EventStatus, id: &str, pacing: &mut Pacing, done: Done) {
    let slot = (done.key.clone(), done.load.clone());
    let start_ms = status.start_ms;
    let accepted_us = status.accepted_us;
    let Some(ls) = status.loads.iter_mut().find(|l| l.load == done.load) else {
        return;
    };
    let backoff = |attempts: u32| {
        (Duration::from_millis(250) * 2u32.saturating_pow(attempts.min(8))).min(RETRY_MAX)
    };
    match (done.purpose, done.outcome) {
        (Purpose::Drive, Ok(o)) => {
            ls.attempts += 1;
            if ls.previous.is_none() {
                ls.previous = Some(o.previous);
            }
            ls.last_error.clear();
            pacing.retry_at.remove(&slot);
            // A load that went under override (or to another event) meanwhile was moved all
            // the same: as acknowledged, the next pass puts it back or hands it on.
            ls.state = pb::LoadState::Acknowledged as i32;
            ls.acknowledged_ms = done.at_ms;
            ls.latency_ms = done.at_ms - ls.due_ms.max(start_ms);
            // The same in microseconds: from the acceptance itself when it was due at once.
            ls.latency_us = done.at_us - (ls.due_ms.max(start_ms) * 1000).max(accepted_us);
            pacing.instruments.dr_acknowledged(&ls.load, ls.latency_ms);
            info!(event = %id, load = %ls.load, target = ls.target, latency_ms = ls.latency_ms, "load at its DR target");
        }
        (Purpose::Drive, Err(e)) => {
            ls.attempts += 1;
            if ls.previous.is_none() {
                ls.previous = e.previous();
            }
            ls.last_error = e.to_string();
            let wait = backoff(ls.attempts);
            pacing.retry_at.insert(slot, Instant::now() + wait);
            warn!(event = %id, load = %ls.load, attempts = ls.attempts, retry_in = ?wait, "load did not take its DR target: {e}");
        }
        (Purpose::Restore, Ok(_)) => {
            // A load that never confirmed its target stays FAILED in the report; that it
            // was put back shows in restored_ms.
            if ls.state != pb::LoadState::Failed as i32 {
                ls.state = pb::LoadState::Restored as i32;
            }
            ls.restored_ms = done.at_ms;
            pacing.retry_at.remove(&slot);
        }
        (Purpose::GiveWay, Ok(_)) => {
            ls.state = pb::LoadState::Overridden as i32;
            ls.restored_ms = done.at_ms;
            pacing.retry_at.remove(&slot);
            info!(event = %id, load = %ls.load, "load under manual override: put back");
        }
        (Purpose::Restore | Purpose::GiveWay, Err(e)) => {
            ls.last_error = format!("restore: {e}");
            pacing.retry_at.insert(slot, Instant::now() + backoff(3));
            warn!(event = %id, load = %ls.load, "load not put back yet: {e}");
        }
    }
}

/// One event in a pass.
struct Entry {
    key: String,
    event: pb::DrEvent,
    status: pb::EventStatus,
    before: pb::EventStatus,
}

impl Entry {
    /// Running: started, not past its end, not cancelled.
    fn running(&self, now: i64) -> bool {
        self.status.state == pb::EventState::Active as i32
            && !self.status.cancelled
            && now < self.status.end_ms
    }

    /// Ending: started, and past its end or cancelled.
    fn ending(&self, now: i64) -> bool {
        self.status.state == pb::EventState::Active as i32
            && (self.status.cancelled || now >= self.status.end_ms)
    }

    /// Who wins a load: higher priority, then the earlier start, then the key.
    fn rank(&self) -> (i32, i64, std::cmp::Reverse<&str>) {
        (
            self.event.priority,
            -self.status.start_ms,
            std::cmp::Reverse(self.key.as_str()),
        )
    }
}

/// A random delay of up to `max_ms` (0 when the system has no randomness to give).
fn random_delay(max_ms: i64) -> i64 {
    if max_ms <= 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % (max_ms as u64 + 1)) as i64
}

/// When each load of a starting event is due: its place in the ramp (loads spread evenly
/// across it, in the event's order), its random delay, and its minimum on time after the
/// last time any event put it back.
fn due_times(
    event: &pb::DrEvent,
    start_ms: i64,
    min_on_ms: impl Fn(&str) -> i64,
    last_restored: &BTreeMap<String, i64>,
) -> Vec<i64> {
    let n = event.targets.len().max(1) as i64;
    let ramp = i64::from(event.ramp_s) * 1000;
    let spread = i64::from(event.randomize_s) * 1000;
    event
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let place = ramp * i as i64 / n;
            let mut due = start_ms + place + random_delay(spread);
            if let Some(back) = last_restored.get(&t.load) {
                due = due.max(back + min_on_ms(&t.load));
            }
            due
        })
        .collect()
}

/// What a pass decides, without I/O: events that start now get their loads' targets and due
/// times, arbitration between events, loads under override given back, ended events' loads
/// handed on or restored, and due loads driven. Changes the records in `entries` and answers
/// the writes to make (`at`: now, for the retry pacing).
fn plan(
    entries: &mut [Entry],
    (now, at): (i64, Instant),
    cfg: &GatewayConfig,
    overridden: &BTreeSet<String>,
    pacing: &mut Pacing,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut last_restored: BTreeMap<String, i64> = BTreeMap::new();
    for e in entries.iter() {
        for l in &e.status.loads {
            let t = last_restored.entry(l.load.clone()).or_default();
            *t = (*t).max(l.restored_ms);
        }
    }
    last_restored.retain(|_, t| *t > 0);

    // Events that start now.
    for e in entries.iter_mut() {
        let st = &mut e.status;
        if st.state != pb::EventState::Scheduled as i32 || st.cancelled || now < st.start_ms {
            continue;
        }
        st.state = pb::EventState::Active as i32;
        let min_on = |load: &str| {
            cfg.loads
                .iter()
                .find(|l| l.name == load)
                .map_or(0, |l| l.min_on.as_millis() as i64)
        };
        let due = due_times(&e.event, st.start_ms, min_on, &last_restored);
        st.loads = e
            .event
            .targets
            .iter()
            .zip(due)
            .map(|(t, due_ms)| {
                // Accepted under the config then in force; a reload since may have taken
                // the load away or narrowed its limits: then it is not moved at all.
                let target = match (cfg.loads.iter().find(|l| l.name == t.load), &t.action) {
                    (Some(l), Some(a)) => written_value(l, a),
                    (None, _) => Err("the load is no longer in the config".into()),
                    (_, None) => Err("no action".into()),
                };
                match target {
                    Ok(target) => pb::LoadStatus {
                        load: t.load.clone(),
                        state: pb::LoadState::Pending as i32,
                        target,
                        due_ms,
                        ..Default::default()
                    },
                    Err(why) => {
                        warn!(event = %e.event.id, load = %t.load, "load not moved: {why}");
                        pb::LoadStatus {
                            load: t.load.clone(),
                            state: pb::LoadState::Failed as i32,
                            target: f64::NAN,
                            due_ms,
                            last_error: why,
                            ..Default::default()
                        }
                    }
                }
            })
            .collect();
        info!(event = %e.event.id, loads = st.loads.len(), ramp_s = e.event.ramp_s, randomize_s = e.event.randomize_s, "DR event started");
    }

    arbitrate(entries, now);
    for e in entries.iter_mut() {
        give_way(e, cfg, &mut writes, overridden, pacing);
    }
    // Ends: hand each moved load to the event that holds it next, or put it back.
    for i in 0..entries.len() {
        if entries[i].ending(now) {
            end(entries, i, now, cfg, &mut writes, pacing);
        }
    }
    for e in entries.iter_mut().filter(|e| e.running(now)) {
        drive(e, (now, at), cfg, &mut writes, pacing);
    }
    writes
}

/// One pass over every event (the record lock is held).
async fn pass(
    store: &Arc<Store>,
    cfg: &Arc<GatewayConfig>,
    controls: &Controls,
    identity: &Identity,
    updates: &Updates,
    pacing: &mut Pacing,
    whole_history: bool,
) {
    let records = if whole_history {
        blocking(store, |s| s.dr().events()).await
    } else {
        blocking(store, |s| s.dr().open_events()).await
    };
    let Some(records) = records else {
        return;
    };
    let Some(mut overridden) = blocking(store, |s| s.dr().overrides()).await else {
        return;
    };
    for l in &cfg.loads {
        if l.override_point
            .as_ref()
            .is_some_and(|p| pacing.switches.get(p) == Some(&true))
        {
            overridden.insert(l.name.clone());
        }
    }
    let now = now_ms();
    let mut entries: Vec<Entry> = records
        .into_iter()
        .filter_map(|(key, bytes)| {
            let status = pb::EventStatus::decode(bytes.as_slice()).ok()?;
            let event = event_of(&status)?;
            Some(Entry {
                key,
                event,
                before: status.clone(),
                status,
            })
        })
        .collect();
    let writes = plan(
        &mut entries,
        (now, Instant::now()),
        cfg,
        &overridden,
        pacing,
    );
    for w in writes {
        spawn(w, controls, &pacing.done);
    }
    let (mut done_with, mut open) = (Vec::new(), Vec::new());
    let settle_ms = settle(cfg).as_millis() as i64;
    for e in entries.iter_mut() {
        if e.status == e.before && due_for_report(&e.status, settle_ms, now_ms()) {
            write_report(store, cfg, identity, &e.key, &mut e.status).await;
        }
        if e.status != e.before {
            save(store, updates, &e.key, &e.status).await;
        }
        // Over for the relay: ended and reported, or ended without ever moving a load.
        let ended = e.status.state == pb::EventState::Completed as i32
            || e.status.state == pb::EventState::Cancelled as i32;
        if ended && (e.status.reported || e.status.loads.is_empty()) {
            done_with.push(e.key.clone());
        } else if whole_history {
            open.push(e.key.clone());
        }
    }
    if !done_with.is_empty() {
        blocking(store, move |s| s.dr().set_open(&done_with, false)).await;
    }
    if !open.is_empty() {
        blocking(store, move |s| s.dr().set_open(&open, true)).await;
    }
}

/// Where several running events name one load, the highest-ranked holds it; the others'
/// part in it is superseded, and the holder inherits the value to restore at the end (the
/// one from before the first event moved it).
fn arbitrate(entries: &mut [Entry], now: i64) {
    let contested = |s: i32| {
        s == pb::LoadState::Pending as i32
            || s == pb::LoadState::Acknowledged as i32
            || s == pb::LoadState::Superseded as i32
    };
    let mut loads: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (ei, e) in entries.iter().enumerate() {
        if !e.running(now) {
            continue;
        }
        for (li, l) in e.status.loads.iter().enumerate() {
            if contested(l.state) {
                loads.entry(l.load.clone()).or_default().push((ei, li));
            }
        }
    }
    for (load, holders) in loads {
        if holders.len() < 2
            && holders.iter().all(|&(ei, li)| {
                entries[ei].status.loads[li].state != pb::LoadState::Superseded as i32
            })
        {
            continue;
        }
        let Some(&(wi, wl)) = holders
            .iter()
            .max_by(|a, b| entries[a.0].rank().cmp(&entries[b.0].rank()))
        else {
            continue;
        };
        let inherited = holders
            .iter()
            .filter(|&&(ei, _)| ei != wi)
            .filter_map(|&(ei, li)| entries[ei].status.loads[li].previous)
            .next();
        for &(ei, li) in &holders {
            let winner = ei == wi;
            let ls = &mut entries[ei].status.loads[li];
            if winner {
                if ls.state == pb::LoadState::Superseded as i32 {
                    ls.state = pb::LoadState::Pending as i32;
                    info!(load = %load, event = %entries[ei].event.id, "load taken back by its event");
                }
            } else if ls.state != pb::LoadState::Superseded as i32 {
                ls.state = pb::LoadState::Superseded as i32;
                info!(load = %load, event = %entries[ei].event.id, by = %entries[wi].event.id, "load held by another event (priority, then start)");
            }
        }
        let w = &mut entries[wi].status.loads[wl];
        if w.previous.is_none() {
            w.previous = inherited;
        }
    }
}

/// Manual override wins: a load under override is not written, and one the event had moved
/// goes back to its previous value at once.
fn give_way(
    e: &mut Entry,
    cfg: &GatewayConfig,
    writes: &mut Vec<Write>,
    overridden: &BTreeSet<String>,
    pacing: &mut Pacing,
) {
    if e.status.state != pb::EventState::Active as i32 {
        return;
    }
    for ls in e.status.loads.iter_mut() {
        if !overridden.contains(&ls.load) {
            continue;
        }
        if ls.state == pb::LoadState::Pending as i32 || ls.state == pb::LoadState::Superseded as i32
        {
            ls.state = pb::LoadState::Overridden as i32;
            info!(event = %e.event.id, load = %ls.load, "load under manual override: not moved");
        } else if ls.state == pb::LoadState::Acknowledged as i32 {
            if let Some(previous) = ls.previous {
                writes.extend(plan_write(
                    &e.key,
                    ls,
                    (previous, Purpose::GiveWay),
                    cfg,
                    pacing,
                ));
            }
        }
    }
}

/// An ending event: loads still pending failed; each moved load (after its minimum off
/// time) goes to the next event that holds it, or back to its previous value. The event is
/// over once none is left at its target.
fn end(
    entries: &mut [Entry],
    i: usize,
    now: i64,
    cfg: &GatewayConfig,
    writes: &mut Vec<Write>,
    pacing: &mut Pacing,
) {
    let key = entries[i].key.clone();
    for li in 0..entries[i].status.loads.len() {
        let ls = entries[i].status.loads[li].clone();
        let slot = (key.clone(), ls.load.clone());
        if pacing.in_flight.contains(&slot) {
            continue;
        }
        if ls.state == pb::LoadState::Pending as i32 {
            warn!(event = %entries[i].event.id, load = %ls.load, attempts = ls.attempts, "load never acknowledged its DR target: {}", ls.last_error);
            entries[i].status.loads[li].state = pb::LoadState::Failed as i32;
        }
        let ls = entries[i].status.loads[li].clone();
        if !needs_restore(&ls) {
            continue;
        }
        let min_off = cfg
            .loads
            .iter()
            .find(|l| l.name == ls.load)
            .map_or(0, |l| l.min_off.as_millis() as i64);
        if now < ls.acknowledged_ms + min_off {
            continue;
        }
        // The next holder: a running event that names the load and has not given it up.
        let next = entries
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != i && e.running(now))
            .filter_map(|(j, e)| {
                let lj = e.status.loads.iter().position(|l| {
                    l.load == ls.load
                        && (l.state == pb::LoadState::Superseded as i32
                            || l.state == pb::LoadState::Pending as i32)
                })?;
                Some((j, lj))
            })
            .max_by(|a, b| entries[a.0].rank().cmp(&entries[b.0].rank()));
        if let Some((j, lj)) = next {
            let them = entries[j].event.id.clone();
            let heir = &mut entries[j].status.loads[lj];
            if heir.previous.is_none() {
                heir.previous = ls.previous;
            }
            heir.state = pb::LoadState::Pending as i32;
            let mine = &mut entries[i].status.loads[li];
            if mine.state != pb::LoadState::Failed as i32 {
                mine.state = pb::LoadState::Restored as i32;
            }
            mine.restored_ms = now;
            mine.last_error = format!("handed to event {them:?}");
            info!(event = %entries[i].event.id, load = %ls.load, to = %them, "load handed to the next event");
            continue;
        }
        if let Some(previous) = ls.previous {
            let retry_due = pacing
                .retry_at
                .get(&slot)
                .is_none_or(|t| *t <= Instant::now());
            if retry_due {
                let e = &mut entries[i];
                writes.extend(plan_write(
                    &key,
                    &e.status.loads[li],
                    (previous, Purpose::Restore),
                    cfg,
                    pacing,
                ));
            }
        }
    }
    let e = &mut entries[i];
    let left = e
        .status
        .loads
        .iter()
        .any(|l| needs_restore(l) || pacing.in_flight.contains(&(key.clone(), l.load.clone())));
    if !left {
        e.status.state = if e.status.cancelled {
            pb::EventState::Cancelled as i32
        } else {
            pb::EventState::Completed as i32
        };
        info!(event = %e.event.id, cancelled = e.status.cancelled, "DR event ended; loads restored");
    }
}

/// Whether the end of its event still has to put `ls` back: it took its target, or a write
/// that may have moved it failed after the value before it was read.
fn needs_restore(ls: &pb::LoadStatus) -> bool {
    ls.state == pb::LoadState::Acknowledged as i32
        || (ls.state == pb::LoadState::Failed as i32
            && ls.previous.is_some()
            && ls.restored_ms == 0)
}

/// Asks for every pending load of a running event whose time has come.
fn drive(
    e: &mut Entry,
    (now, at): (i64, Instant),
    cfg: &GatewayConfig,
    writes: &mut Vec<Write>,
    pacing: &mut Pacing,
) {
    for ls in &e.status.loads {
        if ls.state != pb::LoadState::Pending as i32 || now < ls.due_ms {
            continue;
        }
        let slot = (e.key.clone(), ls.load.clone());
        if pacing.retry_at.get(&slot).is_some_and(|t| *t > at) {
            continue;
        }
        writes.extend(plan_write(
            &e.key,
            ls,
            (ls.target, Purpose::Drive),
            cfg,
            pacing,
        ));
    }
}

/// Starts one write as its own task, unless one for the slot is running.
/// A write the plan asks for: the run loop spawns it through the load's bus or commander.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    slot: Slot,
    control: Control,
    value: f64,
    purpose: Purpose,
}

/// The write of `value` to `ls`'s load for `purpose`, unless one to that load for that
/// event is still in flight or the load has no control; marks it in flight.
fn plan_write(
    key: &str,
    ls: &pb::LoadStatus,
    (value, purpose): (f64, Purpose),
    cfg: &GatewayConfig,
    pacing: &mut Pacing,
) -> Option<Write> {
    let slot = (key.to_string(), ls.load.clone());
    if pacing.in_flight.contains(&slot) {
        return None;
    }
    let control = cfg
        .loads
        .iter()
        .find(|l| l.name == ls.load)
        .and_then(|l| l.control.clone())?;
    pacing.in_flight.insert(slot.clone());
    Some(Write {
        slot,
        control,
        value,
        purpose,
    })
}

/// Carries out a planned write; its outcome comes back on `done`.
fn spawn(w: Write, controls: &Controls, done: &mpsc::UnboundedSender<Done>) {
    let (controls, done) = (controls.clone(), done.clone());
    tokio::spawn(async move {
        let outcome = controls.write(&w.control, w.value, WRITE_WITHIN).await;
        let at_us = gridgate_core::reading::now_us();
        let _ = done.send(Done {
            key: w.slot.0,
            load: w.slot.1,
            purpose: w.purpose,
            at_ms: at_us.div_euclid(1000),
            at_us,
            outcome,
        });
    });
}

/// Whether an ended event's report can be written now: its meters have been polled past the
/// end (twice their longest poll period, at least 2 s), so the last interval is measured.
fn due_for_report(status: &pb::EventStatus, settle_ms: i64, now: i64) -> bool {
    let ended = status.state == pb::EventState::Completed as i32
        || status.state == pb::EventState::Cancelled as i32;
    if !ended || status.reported || status.loads.is_empty() {
        return false;
    }
    now >= status.end_ms + settle_ms
}

/// How long after an interval's end its last sample is stored: twice the longest poll period
/// of the loads' meters, 2 s to 2 min.
pub fn settle(cfg: &GatewayConfig) -> Duration {
    let meters: BTreeSet<(&str, &str)> = cfg
        .loads
        .iter()
        .filter_map(|l| l.meter.split_once('/'))
        .collect();
    let longest_poll = cfg
        .devices()
        .filter(|(_, d)| {
            d.points
                .iter()
                .any(|p| meters.contains(&(d.name.as_str(), p.name.as_str())))
        })
        .map(|(_, d)| d.poll)
        .max()
        .unwrap_or(Duration::from_secs(5));
    (longest_poll * 2).clamp(Duration::from_secs(2), Duration::from_secs(120))
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
    let (c, s, id) = (cfg.clone(), status.clone(), identity.clone());
    let k = key.to_string();
    let made = blocking(store, move |st| {
        let report = crate::report::build(st, &c, &s, &event, now_ms())?;
        let signed = gridgate_core::signed::sign_report(&id, &report);
        st.dr().put_report(&k, &signed.encode_to_vec())?;
        // A gateway on the ledger claims its performance there (once per event), after the
        // operator-signed event it acted on, which settlement reads the commitment from.
        // (A market delivery is settled from the market's own entries, not as a claim.)
        if c.ledger
            .as_ref()
            .is_some_and(|l| l.role == LedgerRole::Gateway)
            && event.issuer != crate::event::MARKET_ISSUER
        {
            if let Some(event) = &s.signed {
                gridgate_ledger_node::certifier::append(
                    st,
                    &c.id,
                    &id,
                    &format!("dr-event/{k}"),
                    pb::EntryKind::DrEvent,
                    event.encode_to_vec(),
                )?;
            }
            gridgate_ledger_node::certifier::append(
                st,
                &c.id,
                &id,
                &format!("dr-report/{k}"),
                pb::EntryKind::PerformanceReport,
                signed.encode_to_vec(),
            )?;
        }
        Ok(report)
    })
    .await;
    if let Some(report) = made {
        status.reported = true;
        let reduction = crate::report::mean_reduction_w(&report);
        info!(event = %report.event_id, mean_reduction_w = reduction, "DR performance report signed and stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, priority: i32, start_ms: i64, state: pb::LoadState) -> Entry {
        let event = pb::DrEvent {
            id: key.into(),
            priority,
            ..Default::default()
        };
        let status = pb::EventStatus {
            state: pb::EventState::Active as i32,
            start_ms,
            end_ms: start_ms + 60_000,
            loads: vec![pb::LoadStatus {
                load: "pcs".into(),
                state: state as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        Entry {
            key: key.into(),
            event,
            before: status.clone(),
            status,
        }
    }

    const PLANT: &str = r#"
[gateway]
id = "gw-1"

[[bus]]
name = "pcs"
link = "tcp://127.0.0.1:502"

[[device]]
name = "pcs-1"
bus = "pcs"
protocol = "modbus"
unit = 1
poll = "1s"
points = [
  { name = "active_power", table = "holding", address = 0, type = "f32", unit = "kW" },
  { name = "setpoint", table = "holding", address = 100, type = "i16", scale = 0.1, unit = "kW" },
]

[[load]]
name = "pcs"
meter = "pcs-1/active_power"
control = "pcs-1/setpoint"
rated_kw = 55.0
min_setpoint = 20.0
max_setpoint = 100.0
"#;

    fn pacing() -> Pacing {
        Pacing {
            in_flight: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            switches: BTreeMap::new(),
            done: mpsc::unbounded_channel().0,
            instruments: Arc::default(),
        }
    }

    /// The plan of one pass, without I/O: a due load is driven to its target once (a second
    /// pass while the write is in flight asks nothing), a load not yet due is left, and at the
    /// end a moved load is restored to its value from before.
    #[test]
    fn the_plan_drives_due_loads_once_and_restores_them_at_the_end() {
        let cfg = gridgate_config::parse(PLANT, std::path::Path::new("<test>")).unwrap();
        let mut p = pacing();
        let at = Instant::now();
        let mut e = entry("e1", 0, 1_000, pb::LoadState::Pending);
        e.status.loads[0].target = 40.0;
        e.status.loads[0].due_ms = 5_000;
        let mut v = vec![e];

        let none = BTreeSet::new();
        assert!(
            plan(&mut v, (4_000, at), &cfg, &none, &mut p).is_empty(),
            "not due yet"
        );
        let writes = plan(&mut v, (5_000, at), &cfg, &none, &mut p);
        assert_eq!(writes.len(), 1);
        assert_eq!((writes[0].value, writes[0].purpose), (40.0, Purpose::Drive));
        assert!(
            plan(&mut v, (5_500, at), &cfg, &none, &mut p).is_empty(),
            "in flight"
        );

        // Acknowledged from 55.0; the event ends: the plan restores 55.0.
        p.in_flight.clear();
        v[0].status.loads[0].state = pb::LoadState::Acknowledged as i32;
        v[0].status.loads[0].previous = Some(55.0);
        let writes = plan(&mut v, (61_000, at), &cfg, &none, &mut p);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (writes[0].value, writes[0].purpose),
            (55.0, Purpose::Restore)
        );

        // Under manual override while acknowledged: the load is given back at once.
        let mut p = pacing();
        let mut e = entry("e2", 0, 1_000, pb::LoadState::Acknowledged);
        e.status.loads[0].previous = Some(50.0);
        let mut v = vec![e];
        let overridden = BTreeSet::from(["pcs".to_string()]);
        let writes = plan(&mut v, (2_000, at), &cfg, &overridden, &mut p);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (writes[0].value, writes[0].purpose),
            (50.0, Purpose::GiveWay)
        );
    }

    fn state(e: &Entry) -> pb::LoadState {
        pb::LoadState::try_from(e.status.loads[0].state).unwrap_or_default()
    }

    #[test]
    fn the_higher_priority_then_the_earlier_start_holds_a_load() {
        // a moved the load first; b has a higher priority and takes it, inheriting the value
        // from before a.
        let mut a = entry("a", 0, 1_000, pb::LoadState::Acknowledged);
        a.status.loads[0].previous = Some(100.0);
        let b = entry("b", 5, 2_000, pb::LoadState::Pending);
        let mut v = vec![a, b];
        arbitrate(&mut v, 3_000);
        assert_eq!(state(&v[0]), pb::LoadState::Superseded);
        assert_eq!(state(&v[1]), pb::LoadState::Pending);
        assert_eq!(v[1].status.loads[0].previous, Some(100.0));
        // Equal priority: the earlier start wins.
        let mut v = vec![
            entry("late", 0, 2_000, pb::LoadState::Pending),
            entry("early", 0, 1_000, pb::LoadState::Pending),
        ];
        arbitrate(&mut v, 3_000);
        assert_eq!(state(&v[0]), pb::LoadState::Superseded);
        assert_eq!(state(&v[1]), pb::LoadState::Pending);
    }

    #[test]
    fn a_ramp_spreads_the_loads_and_min_on_holds_one_back() {
        let event = pb::DrEvent {
            ramp_s: 30,
            targets: ["a", "b", "c"]
                .iter()
                .map(|n| pb::LoadTarget {
                    load: n.to_string(),
                    action: None,
                })
                .collect(),
            ..Default::default()
        };
        let min_on = |load: &str| if load == "c" { 600_000 } else { 0 };
        let back = BTreeMap::from([("c".to_string(), 5_000)]);
        assert_eq!(
            due_times(&event, 10_000, min_on, &back),
            vec![10_000, 20_000, 605_000]
        );
        let spread = pb::DrEvent {
            randomize_s: 10,
            ..event
        };
        for d in due_times(&spread, 10_000, min_on, &BTreeMap::new()) {
            assert!((10_000..=40_000).contains(&d), "{d}");
        }
    }
}
