//! The Market service: the flexibility market as this gateway's replica of the ledger
//! shows it (docs/market.md), for master stations. It decides nothing: the prices and
//! clearings are the validators', read from their certified logs.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use gridgate_ledger_node::market::IntervalView;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::market_server::Market;
use tonic::{Request, Response, Status};

use crate::ApiState;
use crate::auth::role_of;
use crate::telemetry::internal;

/// Market.
pub struct MarketService {
    s: ApiState,
}

impl MarketService {
    /// On `s`.
    pub fn new(s: ApiState) -> Self {
        MarketService { s }
    }
}

/// Intervals at most in one answer.
const MAX_LAST: u32 = 96;
/// Intervals when the request does not say.
const DEFAULT_LAST: u32 = 8;
/// How often a watch looks for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

fn interval(area: &str, v: IntervalView) -> pb::MarketInterval {
    pb::MarketInterval {
        interval_ms: v.interval_ms,
        prices: v.rounds.iter().map(|r| r.1).collect(),
        clearing: v.clearing,
        answers: v
            .answers
            .iter()
            .map(|&(round, price, q)| pb::MarketAnswer {
                area: area.to_string(),
                interval_ms: v.interval_ms,
                round,
                price_milli_per_kwh: price,
                quantity_wh: q,
            })
            .collect(),
        accepted: v.accepted,
        delivery: v.delivery,
    }
}

/// The newest `last` intervals of the gateway's area (empty without `[market]`).
async fn intervals(
    s: &ApiState,
    last: u32,
) -> Result<(pb::MarketIntervals, Vec<Vec<String>>), Status> {
    let cfg = s.config();
    let (Some(m), Some(l)) = (&cfg.market, &cfg.ledger) else {
        return Ok((pb::MarketIntervals::default(), Vec::new()));
    };
    let members = gridgate_ledger_node::load_members(l).map_err(internal)?;
    let (area, me) = (m.area.clone(), cfg.id.clone());
    let last = match last {
        0 => DEFAULT_LAST,
        n => n.min(MAX_LAST),
    } as usize;
    let since = gridgate_core::now_ms() - 2 * 86_400_000;
    let a = area.clone();
    let views = s
        .store
        .store
        .run(move |st| gridgate_ledger_node::market::view(st, &members, &a, &me, since, last))
        .await
        .map_err(internal)?;
    let signers = views.iter().map(|v| v.signers.clone()).collect();
    Ok((
        pb::MarketIntervals {
            intervals: views.into_iter().map(|v| interval(&area, v)).collect(),
            area,
        },
        signers,
    ))
}

type Watching = Pin<Box<dyn Stream<Item = Result<pb::MarketIntervals, Status>> + Send>>;

#[tonic::async_trait]
impl Market for MarketService {
    async fn intervals(
        &self,
        req: Request<pb::MarketIntervalsRequest>,
    ) -> Result<Response<pb::MarketIntervals>, Status> {
        role_of(&req)?;
        Ok(Response::new(
            intervals(&self.s, req.get_ref().last).await?.0,
        ))
    }

    async fn clearing(
        &self,
        req: Request<pb::MarketClearingRequest>,
    ) -> Result<Response<pb::FinalClearing>, Status> {
        role_of(&req)?;
        let want = req.get_ref().interval_ms;
        let (all, signers) = intervals(&self.s, MAX_LAST).await?;
        all.intervals
            .into_iter()
            .zip(signers)
            .find(|(i, _)| i.interval_ms == want && i.clearing.is_some())
            .map(|(i, validators)| {
                Response::new(pb::FinalClearing {
                    clearing: i.clearing,
                    validators,
                })
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no final clearing for the interval starting at {want} ms in this gateway's replica (yet)"
                ))
            })
    }

    type WatchStream = Watching;

    async fn watch(
        &self,
        req: Request<pb::MarketIntervalsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        role_of(&req)?;
        let (s, last) = (self.s.clone(), req.get_ref().last);
        let shutdown = self.s.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent: Option<pb::MarketIntervals> = None;
            loop {
                let now = intervals(&s, last).await.map(|r| r.0);
                let changed = match (&now, &sent) {
                    (Ok(n), Some(old)) => n != old,
                    _ => true,
                };
                if changed {
                    if let Ok(n) = &now {
                        sent = Some(n.clone());
                    }
                    if tx.send(now).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
