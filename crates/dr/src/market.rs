//! The market agent at work on a gateway (docs/market.md): for each interval of its area
//! whose discovery is open, it reads the round's price that f+1 validators announced in their
//! logs, answers at it from its forecast and resources (`agent`, pure) and logs the answer
//! in its own log, once per round.

use std::sync::Arc;
use std::time::Duration;

use gridgate_config::GatewayConfig;
use gridgate_config::market::{Forecast, MarketConfig, ResourceConfig};
use gridgate_core::{Identity, now_ms};
use gridgate_ledger::market::{schedule_of, terms_of};
use gridgate_ledger_node::market::{held_terms, logged_by_interval, terms_in_force};
use gridgate_ledger_node::state::LedgerState;
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_proto::v1 as pb;
use gridgate_store::{Store, StoreError};
use prost::Message;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::measure::{DAY_MS, mean};

/// What the agent needs.
pub struct Agent {
    /// The store (its samples and its replica of the ledger).
    pub store: Arc<Store>,
    /// The config in force.
    pub config: watch::Receiver<Arc<GatewayConfig>>,
    /// The membership in force.
    pub state: Arc<LedgerState>,
    /// The gateway's key.
    pub identity: Identity,
    /// Wakes the certifier after an answer is logged.
    pub wake_certifier: Arc<Notify>,
    /// Wakes the ledger sync, to fetch the validators' rounds sooner while discovery is open.
    pub wake_sync: Arc<Notify>,
    /// The DR desk, which takes the deliveries (same checks and limits as any event).
    pub desk: crate::desk::Desk,
}

pub use crate::event::MARKET_ISSUER as ISSUER;

/// A storage's state of charge older than this is not known.
const SOC_FRESH_MS: i64 = 15 * 60_000;

/// How often the agent looks while a discovery is open, and otherwise.
const OPEN_TICK: Duration = Duration::from_millis(250);
const IDLE_TICK: Duration = Duration::from_secs(5);

/// The mean of `point`'s samples over [from, to), kW, if it has any.
fn mean_kw(store: &Store, point: &str, from: i64, to: i64) -> Result<Option<f64>, StoreError> {
    let s = store.samples(point, from, to)?;
    Ok(mean(&s, from, to).map(|(kw, _)| kw))
}

/// The forecast of `point`'s energy over [start, end), Wh.
fn forecast_point(
    store: &Store,
    point: &str,
    how: Forecast,
    start: i64,
    end: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let hours = (end - start) as f64 / 3_600_000.0;
    match how {
        Forecast::Recent => Ok(mean_kw(store, point, now - (end - start), now)?
            .map(|kw| (kw * 1000.0 * hours).round() as i64)),
        Forecast::HighXOfY { x, y } => {
            let mut failed = None;
            let f = crate::agent::forecast_wh(start, end, (x, y, 30), |back| {
                let shift = i64::from(back) * DAY_MS;
                match store.samples(point, start - shift, end - shift) {
                    Ok(s) => s.into_iter().map(|(t, v)| (t + shift, v)).collect(),
                    Err(e) => {
                        failed = Some(e);
                        Vec::new()
                    }
                }
            });
            match failed {
                Some(e) => Err(e),
                None => Ok(f),
            }
        }
    }
}

/// The agent's answer for the interval [start, end) at `price`: `None` when it has no
/// forecast (too little history) and so does not answer.
pub fn answer_now(
    store: &Store,
    m: &MarketConfig,
    start: i64,
    end: i64,
    price: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let consumption = match &m.meter {
        Some(p) => match forecast_point(store, p, m.forecast, start, end, now)? {
            Some(wh) => wh,
            None => return Ok(None),
        },
        None => 0,
    };
    let mut pv = 0;
    for r in &m.resources {
        if let ResourceConfig::Pv { meter } = r {
            match forecast_point(store, meter, m.forecast, start, end, now)? {
                Some(wh) => pv += wh.max(0),
                None => return Ok(None),
            }
        }
    }
    let mut soc = std::collections::BTreeMap::new();
    for r in &m.resources {
        if let ResourceConfig::Storage {
            name, soc_point, ..
        } = r
        {
            let last = store
                .samples(soc_point, now - SOC_FRESH_MS, now + 1)?
                .last()
                .map(|(_, v)| v.round() as i64);
            soc.insert(name.clone(), last);
        }
    }
    let hours = (end - start) as f64 / 3_600_000.0;
    Ok(Some(crate::agent::answer(
        consumption - pv,
        &m.resources,
        |name| soc.get(name).copied().flatten(),
        price,
        hours,
    )))
}

/// An interval this gateway was cleared for, to deliver: its loads move through the DR
/// relay like any event's.
#[derive(Debug, Clone)]
struct Delivery {
    area: String,
    start: i64,
    end: i64,
    price: i64,
}

/// What one look found.
#[derive(Debug, Default)]
struct Looked {
    /// A discovery is open: look again soon.
    open: bool,
    /// Entries logged (answers, delivery reports).
    logged: usize,
    /// Cleared intervals still to come, to schedule.
    deliver: Vec<Delivery>,
}

/// A delivery is measured this long after its interval ends (the last readings stored).
const MEASURE_AFTER_MS: i64 = 3_000;

/// The event that delivers what the gateway sold or shed at `price`: each load resource
/// that gives something at that price, at what it gives, over the interval. `None` when no
/// load moves (PV and storage deliver by themselves).
pub fn delivery_event(
    m: &MarketConfig,
    me: &str,
    area: &str,
    start: i64,
    end: i64,
    price: i64,
    now: i64,
) -> Option<pb::DrEvent> {
    let hours = (end - start) as f64 / 3_600_000.0;
    let targets: Vec<pb::LoadTarget> = m
        .resources
        .iter()
        .filter_map(|r| {
            let load = match r {
                ResourceConfig::Shed { load, .. } | ResourceConfig::Deferrable { load, .. } => load,
                _ => return None,
            };
            let wh = crate::agent::gives_wh(r, None, price, hours)?;
            (wh > 0).then(|| pb::LoadTarget {
                load: load.clone(),
                action: Some(pb::load_target::Action::ShedKw(wh as f64 / 1000.0 / hours)),
            })
        })
        .collect();
    if targets.is_empty() {
        return None;
    }
    Some(pb::DrEvent {
        id: format!("{area}/{start}"),
        issuer: ISSUER.to_string(),
        program: "market".into(),
        targets,
        start_ms: start,
        duration_s: ((end - start) / 1000) as u32,
        expires_ms: end,
        issued_ms: now,
        gateways: vec![me.to_string()],
        ..Default::default()
    })
}

/// The gateway's measured net position over [start, end), Wh: consumption less PV less
/// what its storage gave; `None` without the readings to say.
pub fn delivered_wh(
    store: &Store,
    m: &MarketConfig,
    start: i64,
    end: i64,
) -> Result<Option<i64>, StoreError> {
    let hours = (end - start) as f64 / 3_600_000.0;
    let wh = |kw: f64| (kw * 1000.0 * hours).round() as i64;
    let mut net = 0;
    if let Some(p) = &m.meter {
        match mean_kw(store, p, start, end)? {
            Some(kw) => net += wh(kw),
            None => return Ok(None),
        }
    }
    for r in &m.resources {
        match r {
            ResourceConfig::Pv { meter } => match mean_kw(store, meter, start, end)? {
                Some(kw) => net -= wh(kw).max(0),
                None => return Ok(None),
            },
            ResourceConfig::Storage { soc_point, .. } => {
                let at = |t: i64| -> Result<Option<f64>, StoreError> {
                    Ok(store
                        .samples(soc_point, t - SOC_FRESH_MS, t + 1)?
                        .last()
                        .map(|(_, v)| *v))
                };
                match (at(start)?, at(end)?) {
                    // Energy that left the storage was given (sold); energy in was bought.
                    (Some(a), Some(b)) => net -= (a - b).round() as i64,
                    _ => return Ok(None),
                }
            }
            _ => {}
        }
    }
    Ok(Some(net))
}

/// The market terms held, as of the operators' logs' lengths; kept only once a cut has
/// ordered every one (until then `ordered_at` may still change).
#[derive(Debug, Default)]
struct TermsCache {
    heads: Vec<(String, u64)>,
    terms: Vec<gridgate_ledger_node::market::HeldTerms>,
}

/// The terms held, read again only when an operator's log grew (or one was not ordered yet):
/// the agent looks four times a second, operators' logs change a few times a day.
fn cached_terms(
    store: &Store,
    members: &gridgate_ledger::Members,
    cache: &std::sync::Mutex<TermsCache>,
) -> Result<Vec<gridgate_ledger_node::market::HeldTerms>, StoreError> {
    let mut heads = Vec::new();
    for m in members
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Operator)
    {
        heads.push((m.id.clone(), store.ledger().next_certified(&m.id)?));
    }
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.heads != heads || c.terms.iter().any(|t| t.ordered_at.is_none()) {
        c.terms = held_terms(store, members)?;
        c.heads = heads;
    }
    Ok(c.terms.clone())
}

/// One look: answers every open round not answered yet, measures and logs each delivered
/// interval, and says which cleared intervals are still to deliver.
fn look(
    store: &Store,
    cfg: &GatewayConfig,
    members: &gridgate_ledger::Members,
    key: &Identity,
    cache: &std::sync::Mutex<TermsCache>,
) -> Result<Looked, StoreError> {
    let mut looked = Looked::default();
    let Some(m) = &cfg.market else {
        return Ok(looked);
    };
    let terms = cached_terms(store, members, cache)?;
    let Some(newest) = terms_in_force(&terms, &m.area, i64::MAX, u64::MAX) else {
        return Ok(looked);
    };
    let schedule = schedule_of(newest);
    let now = now_ms();
    let open = schedule.open_at(now);
    looked.open = !open.is_empty();
    // The intervals whose discovery may have ended and whose delivery is under way or was
    // just measured, and those open.
    let current = schedule.interval_of(now);
    let mut starts: Vec<i64> = (0..=2)
        .map(|k| current - k * schedule.interval_ms)
        .chain((1..=2).map(|k| current + k * schedule.interval_ms))
        .filter(|s| !open.contains(s))
        .collect();
    starts.extend(open.iter().copied());
    starts.sort_unstable();
    starts.dedup();
    // f+1 validators announcing a price: at least one of them honest.
    let n = members.validators().len();
    let at_least = n - members.quorum() + 1;
    // The validators' logs read once for every interval looked at.
    let since = starts.first().map_or(now, |s| schedule.opens(*s)) - 60_000;
    let mut all = logged_by_interval(store, members, &m.area, since)?;
    for start in starts {
        let Some(pt) = terms_in_force(&terms, &m.area, start, u64::MAX) else {
            continue;
        };
        if terms_of(pt).is_none() {
            continue;
        }
        let s = schedule_of(pt);
        let end = start + s.interval_ms;
        let seen = all.remove(&start).unwrap_or_default();
        if let Some((c, _)) = seen.final_clearing(members.quorum()) {
            let Some(mine) = c.members.iter().find(|a| a.member == cfg.id) else {
                continue;
            };
            if now < end {
                looked.deliver.push(Delivery {
                    area: m.area.clone(),
                    start,
                    end,
                    price: c.price_milli_per_kwh,
                });
                continue;
            }
            let claim = format!("market-delivery/{}/{start}", m.area);
            if now < end + MEASURE_AFTER_MS || !store.ledger().claims(&claim)?.is_empty() {
                continue;
            }
            let Some(delivered) = delivered_wh(store, m, start, end)? else {
                warn!(area = %m.area, interval_ms = start, "market: no readings to measure the delivery with");
                continue;
            };
            let loads = delivery_event(m, &cfg.id, &m.area, start, end, c.price_milli_per_kwh, now)
                .map(|e| e.targets.into_iter().map(|t| t.load).collect())
                .unwrap_or_default();
            let d = pb::MarketDelivery {
                area: m.area.clone(),
                interval_ms: start,
                delivered_wh: delivered,
                accepted_wh: mine.asked_wh,
                loads,
            };
            gridgate_ledger_node::certifier::append(
                store,
                &cfg.id,
                key,
                &claim,
                pb::EntryKind::MarketDelivery,
                d.encode_to_vec(),
            )?;
            info!(area = %m.area, interval_ms = start, accepted_wh = mine.asked_wh, delivered_wh = delivered, "market: delivery measured and logged");
            looked.logged += 1;
            continue;
        }
        if !open.contains(&start) {
            continue;
        }
        let Some((round, price)) = seen.current_round(at_least) else {
            continue;
        };
        let claim = format!("market-answer/{}/{start}/{round}", m.area);
        if !store.ledger().claims(&claim)?.is_empty() {
            continue;
        }
        let Some(q) = answer_now(store, m, start, end, price, now)? else {
            warn!(area = %m.area, interval_ms = start, "market: no forecast (too little history): not answering");
            continue;
        };
        let a = pb::MarketAnswer {
            area: m.area.clone(),
            interval_ms: start,
            round,
            price_milli_per_kwh: price,
            quantity_wh: q,
        };
        gridgate_ledger_node::certifier::append(
            store,
            &cfg.id,
            key,
            &claim,
            pb::EntryKind::MarketAnswer,
            a.encode_to_vec(),
        )?;
        info!(area = %m.area, interval_ms = start, round, price, quantity_wh = q, "market: answered");
        looked.logged += 1;
    }
    Ok(looked)
}

/// Runs until `cancel` fires.
pub async fn run(mut a: Agent, cancel: CancellationToken) {
    // Intervals whose delivery event the desk took (or refused for good) in this run; after a
    // restart the desk refuses a second one as a replay.
    let mut scheduled: std::collections::BTreeSet<(String, i64)> = Default::default();
    let cache = Arc::new(std::sync::Mutex::new(TermsCache::default()));
    loop {
        let cfg = a.config.borrow_and_update().clone();
        let (members, key, c) = (a.state.members(), a.identity.clone(), cfg.clone());
        let cache = cache.clone();
        let looked = a
            .store
            .run(move |st| look(st, &c, &members, &key, &cache))
            .await
            .inspect_err(|e| warn!("market agent: {e}"))
            .ok()
            .unwrap_or_default();
        if looked.logged > 0 {
            a.wake_certifier.notify_one();
        }
        if looked.open {
            a.wake_sync.notify_one();
        }
        for d in looked.deliver {
            if !scheduled.insert((d.area.clone(), d.start)) {
                continue;
            }
            let Some(m) = &cfg.market else { break };
            let Some(event) =
                delivery_event(m, &cfg.id, &d.area, d.start, d.end, d.price, now_ms())
            else {
                continue;
            };
            let signed = gridgate_core::signed::sign_event(&event, &a.identity);
            match a.desk.dispatch(signed).await {
                Ok(r) if r.accepted => {
                    info!(area = %d.area, interval_ms = d.start, price = d.price, loads = event.targets.len(), "market: delivery scheduled through the DR relay")
                }
                Ok(r) => {
                    warn!(area = %d.area, interval_ms = d.start, "market: the DR desk refused the delivery: {}", r.detail)
                }
                Err(e) => {
                    warn!(area = %d.area, interval_ms = d.start, "market: delivery not scheduled: {e}");
                    scheduled.remove(&(d.area, d.start));
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = a.config.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(if looked.open { OPEN_TICK } else { IDLE_TICK }) => {}
        }
    }
}
