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
use gridgate_ledger_node::market::{held_terms, logged, terms_in_force};
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
}

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

/// One look: answers every open round not answered yet. Returns whether a discovery is
/// open (to look again soon) and how many answers were logged.
fn look(
    store: &Store,
    cfg: &GatewayConfig,
    members: &gridgate_ledger::Members,
    key: &Identity,
) -> Result<(bool, usize), StoreError> {
    let Some(m) = &cfg.market else {
        return Ok((false, 0));
    };
    let terms = held_terms(store, members)?;
    let Some(newest) = terms_in_force(&terms, &m.area, i64::MAX, u64::MAX) else {
        return Ok((false, 0));
    };
    let schedule = schedule_of(newest);
    let now = now_ms();
    let starts = schedule.open_at(now);
    // f+1 validators announcing a price: at least one of them honest.
    let n = members.validators().len();
    let at_least = n - members.quorum() + 1;
    let mut logged_answers = 0;
    for start in &starts {
        let Some(pt) = terms_in_force(&terms, &m.area, *start, u64::MAX) else {
            continue;
        };
        if terms_of(pt).is_none() {
            continue;
        }
        let s = schedule_of(pt);
        let seen = logged(store, members, &m.area, *start, s.opens(*start) - 60_000)?;
        if seen.final_clearing(members.quorum()).is_some() {
            continue;
        }
        let Some((round, price)) = seen.current_round(at_least) else {
            continue;
        };
        let claim = format!("market-answer/{}/{start}/{round}", m.area);
        if !store.ledger().claims(&claim)?.is_empty() {
            continue;
        }
        let Some(q) = answer_now(store, m, *start, start + s.interval_ms, price, now)? else {
            warn!(area = %m.area, interval_ms = start, "market: no forecast (too little history): not answering");
            continue;
        };
        let a = pb::MarketAnswer {
            area: m.area.clone(),
            interval_ms: *start,
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
        logged_answers += 1;
    }
    Ok((!starts.is_empty(), logged_answers))
}

/// Runs until `cancel` fires.
pub async fn run(mut a: Agent, cancel: CancellationToken) {
    loop {
        let cfg = a.config.borrow_and_update().clone();
        let (members, key) = (a.state.members(), a.identity.clone());
        let looked = a
            .store
            .run(move |st| look(st, &cfg, &members, &key))
            .await
            .inspect_err(|e| warn!("market agent: {e}"))
            .ok();
        let open = match looked {
            Some((open, n)) => {
                if n > 0 {
                    a.wake_certifier.notify_one();
                }
                if open {
                    a.wake_sync.notify_one();
                }
                open
            }
            None => false,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = a.config.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(if open { OPEN_TICK } else { IDLE_TICK }) => {}
        }
    }
}
