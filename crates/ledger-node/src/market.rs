//! The flexibility market on a replica (docs/market.md): reading the market's entries from
//! the logs held, and on a validator the task that runs each interval's rounds over the
//! decided cuts (`gridgate_ledger::market::Rounds`) and logs each round's price and the
//! clearing in the validator's own log, where gateways find them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gridgate_core::Identity;
use gridgate_ledger::Members;
use gridgate_ledger::market::{Answer, Rounds, State, schedule_of, terms_of};
use gridgate_proto::v1 as pb;
use gridgate_store::{Store, StoreError};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::certifier::blocking;
use crate::state::LedgerState;
use crate::tables::LedgerStore;

/// `origin`'s certified entries whose own timestamp is at or after `since_ms`, oldest
/// first: read backwards from the log's end, a chunk at a time, so an old log costs what
/// its recent part does.
pub fn recent_entries(
    store: &Store,
    origin: &str,
    since_ms: i64,
) -> Result<Vec<(u64, pb::Entry)>, StoreError> {
    const CHUNK: u64 = 64;
    let mut end = store.ledger().next_certified(origin)?;
    let mut out = Vec::new();
    'back: while end > 0 {
        let from = end.saturating_sub(CHUNK);
        let chunk = store.ledger().range(origin, from, (end - from) as usize)?;
        for (seq, bytes) in chunk.into_iter().rev() {
            let Some(e) = crate::entry_of(&bytes) else {
                continue;
            };
            if e.timestamp_ms < since_ms {
                break 'back;
            }
            out.push((seq, e));
        }
        end = from;
    }
    out.reverse();
    Ok(out)
}

/// A market terms entry held, and the decided cut that ordered it (if one has).
#[derive(Debug, Clone)]
pub struct HeldTerms {
    /// The operator.
    pub origin: String,
    /// Its place in the operator's log.
    pub seq: u64,
    /// The height of the cut that ordered it.
    pub ordered_at: Option<u64>,
    /// The terms (ones that make sense only).
    pub terms: pb::MarketTerms,
}

/// Every sane market terms entry of the operators' logs held.
pub fn held_terms(store: &Store, members: &Members) -> Result<Vec<HeldTerms>, StoreError> {
    let mut out = Vec::new();
    for m in members
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Operator)
    {
        let mut from = 0;
        loop {
            let chunk = store.ledger().range(&m.id, from, 512)?;
            let Some(last) = chunk.last().map(|c| c.0) else {
                break;
            };
            from = last + 1;
            for (seq, bytes) in chunk {
                let Some(e) = crate::entry_of(&bytes) else {
                    continue;
                };
                if e.kind != pb::EntryKind::MarketTerms as i32 {
                    continue;
                }
                let Ok(terms) = pb::MarketTerms::decode(e.payload.as_slice()) else {
                    continue;
                };
                if terms_of(&terms).is_none() {
                    continue;
                }
                out.push(HeldTerms {
                    origin: m.id.clone(),
                    seq,
                    ordered_at: store.ledger().ordered_at(&m.id, seq)?,
                    terms,
                });
            }
        }
    }
    Ok(out)
}

/// The terms in force for `area`'s interval starting at `start`, as of the decided cut at
/// `height`: of those ordered by then, with `effective_ms` at or before the start, the
/// latest effective (on a tie, the latest ordered). A function of the cuts, so every
/// validator takes the same terms.
pub fn terms_in_force<'a>(
    held: &'a [HeldTerms],
    area: &str,
    start: i64,
    height: u64,
) -> Option<&'a pb::MarketTerms> {
    held.iter()
        .filter(|h| h.terms.area == area && h.terms.effective_ms <= start)
        .filter_map(|h| Some((h.ordered_at.filter(|o| *o <= height)?, h)))
        .max_by(|(a, x), (b, y)| {
            (x.terms.effective_ms, *a, &x.origin, x.seq).cmp(&(
                y.terms.effective_ms,
                *b,
                &y.origin,
                y.seq,
            ))
        })
        .map(|(_, h)| &h.terms)
}

/// Answers by (area, interval start), in the order the logs hold them.
pub type AnswersByInterval = BTreeMap<(String, i64), Vec<Answer>>;

/// The answers the decided cut `cut` orders, by (area, interval start), from whichever
/// log (who may answer is the rounds' to say, by the membership as of the opening cut);
/// `None` while this replica does not hold every entry the cut orders (the sync fetches
/// them; the rounds wait rather than count too few).
pub fn answers_of_cut(
    store: &Store,
    cut: &pb::Cut,
) -> Result<Option<AnswersByInterval>, StoreError> {
    let mut out = AnswersByInterval::new();
    for (origin, from, to) in store.ledger().ordered_by(cut)? {
        if to <= from {
            continue;
        }
        let chunk = store.ledger().range(&origin, from, (to - from) as usize)?;
        if (chunk.len() as u64) < to - from {
            return Ok(None);
        }
        for (_, bytes) in chunk {
            let Some(e) = crate::entry_of(&bytes) else {
                continue;
            };
            if e.kind != pb::EntryKind::MarketAnswer as i32 {
                continue;
            }
            let Ok(a) = pb::MarketAnswer::decode(e.payload.as_slice()) else {
                continue;
            };
            out.entry((a.area, a.interval_ms))
                .or_default()
                .push(Answer {
                    member: origin.clone(),
                    round: a.round,
                    price: a.price_milli_per_kwh,
                    quantity_wh: a.quantity_wh,
                });
        }
    }
    Ok(Some(out))
}

/// What the validators logged about one interval.
#[derive(Debug, Clone, Default)]
pub struct Logged {
    /// Rounds announced, by validator.
    pub rounds: Vec<(String, pb::MarketRound)>,
    /// Clearings, by validator, as logged (bytes).
    pub clearings: Vec<(String, Vec<u8>)>,
}

impl Logged {
    /// The clearing 2f+1 validators logged byte for byte, decoded, with who did.
    pub fn final_clearing(&self, quorum: usize) -> Option<(pb::MarketClearing, Vec<String>)> {
        let bytes = gridgate_ledger::market::final_clearing(
            self.clearings
                .iter()
                .map(|(v, b)| (v.as_str(), b.as_slice())),
            quorum,
        )?;
        let signers = self
            .clearings
            .iter()
            .filter(|(_, b)| b.as_slice() == bytes)
            .map(|(v, _)| v.clone())
            .collect();
        Some((pb::MarketClearing::decode(bytes).ok()?, signers))
    }

    /// Each round whose price `at_least` validators (f+1) agree on: (round, price), in order.
    pub fn agreed_rounds(&self, at_least: usize) -> Vec<(u32, i64)> {
        let latest = self.rounds.iter().map(|(_, r)| r.round).max().unwrap_or(0);
        (1..=latest)
            .filter_map(|round| {
                gridgate_ledger::market::agreed_price(&self.rounds, round, at_least)
                    .map(|p| (round, p))
            })
            .collect()
    }

    /// The latest round whose price f+1 validators agree on: (round, price).
    pub fn current_round(&self, at_least: usize) -> Option<(u32, i64)> {
        self.agreed_rounds(at_least).pop()
    }
}

/// What the validators' logs held say of `area`'s intervals, by interval start: entries
/// logged since `since_ms` by the validators' clocks, each log read once.
pub fn logged_by_interval(
    store: &Store,
    members: &Members,
    area: &str,
    since_ms: i64,
) -> Result<BTreeMap<i64, Logged>, StoreError> {
    let mut out: BTreeMap<i64, Logged> = BTreeMap::new();
    for v in members.validators() {
        for (_, e) in recent_entries(store, v, since_ms)? {
            if e.kind == pb::EntryKind::MarketRound as i32 {
                if let Ok(r) = pb::MarketRound::decode(e.payload.as_slice())
                    && r.area == area
                {
                    out.entry(r.interval_ms)
                        .or_default()
                        .rounds
                        .push((v.to_string(), r));
                }
            } else if e.kind == pb::EntryKind::MarketClearing as i32
                && let Ok(c) = pb::MarketClearing::decode(e.payload.as_slice())
                && c.area == area
            {
                out.entry(c.interval_ms)
                    .or_default()
                    .clearings
                    .push((v.to_string(), e.payload.clone()));
            }
        }
    }
    Ok(out)
}

/// How far back a validator looks for intervals whose clearing it has not logged yet.
const LOOK_BACK_MS: i64 = 600_000;

/// What a validator's market task needs.
pub struct Validator {
    /// The store.
    pub store: Arc<Store>,
    /// The membership in force.
    pub state: Arc<LedgerState>,
    /// Its id.
    pub me: String,
    /// Its key (its log's entries are signed with it).
    pub key: Identity,
    /// Wakes its certifier after an append.
    pub wake: Arc<Notify>,
    /// The genesis programs' terms (they weigh in members' reputations).
    pub terms: BTreeMap<String, gridgate_ledger::settlement::Terms>,
}

/// Who may answer, as of the decided cut at `height` (time `time_ms`): the gateways of the
/// membership that cut puts in force (the genesis one with the changes it ordered), and of
/// them those excluded by their reputation (the standing of a statement over every entry that
/// cut or an earlier one ordered). Both from the cut alone, so every validator hears the same
/// members.
pub fn heard_at(
    store: &Store,
    genesis: &Members,
    terms: &BTreeMap<String, gridgate_ledger::settlement::Terms>,
    height: u64,
    time_ms: i64,
) -> Result<
    (
        std::collections::BTreeSet<String>,
        std::collections::BTreeSet<String>,
    ),
    StoreError,
> {
    let Some(cut) = store.ledger().cut(height)? else {
        return Ok(Default::default());
    };
    let closing = gridgate_ledger::settlement::ClosingCut {
        height,
        digest: gridgate_ledger::cut::digest(&cut.cut),
        time_ms,
        heads: store.ledger().heads_at(height)?,
    };
    let entries = crate::every_held_entry(store)?;
    let ordered = entries
        .iter()
        .map(|c| &c.entry)
        .filter(|e| e.seq < closing.heads.get(&e.origin).copied().unwrap_or(0));
    let members = gridgate_ledger::membership::apply(
        genesis,
        gridgate_ledger::membership::changes_in(ordered, genesis).iter(),
    );
    let gateways = members
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Gateway && !m.removed)
        .map(|m| m.id.clone())
        .collect();
    let s = gridgate_ledger::settlement::settle_on_cut(
        time_ms, time_ms, &closing, &entries, genesis, terms,
    );
    let excluded = s
        .standing
        .into_iter()
        .filter(|(_, st)| st.excluded_until_ms > time_ms)
        .map(|(m, _)| m)
        .collect();
    Ok((gateways, excluded))
}

/// One interval's rounds and what this validator logged of them.
struct Tracked {
    rounds: Rounds,
    logged_round: u32,
    cleared: bool,
}

/// The state between cuts: the intervals followed and the cut fed last.
#[derive(Default)]
struct Runner {
    fed: u64,
    tracked: BTreeMap<(String, i64), Tracked>,
    /// Intervals over (cleared or missed), not to be followed again.
    done: std::collections::BTreeSet<(String, i64)>,
    terms: Vec<HeldTerms>,
    /// Whether `terms` was read (again after a cut that moved an operator's log).
    terms_read: bool,
}

impl Runner {
    /// Feeds every decided cut after `fed`, up to the newest; returns the entries to log.
    /// Stops early (to try again) at a cut whose entries are not all held yet.
    fn step(
        &mut self,
        store: &Store,
        members: &Members,
        ctx: (
            &str,
            &Members,
            &BTreeMap<String, gridgate_ledger::settlement::Terms>,
        ),
    ) -> Result<Vec<(String, pb::EntryKind, Vec<u8>)>, StoreError> {
        let (me, genesis, program_terms) = ctx;
        let mut out = Vec::new();
        loop {
            let cuts = store.ledger().cuts(self.fed + 1, 64)?;
            if cuts.is_empty() {
                break;
            }
            for (height, decided) in cuts {
                let Ok(cut) = gridgate_ledger::cut::decode(&decided.cut) else {
                    self.fed = height;
                    continue;
                };
                if !self.terms_read
                    || cut.heads.iter().any(|h| {
                        members
                            .0
                            .get(&h.origin)
                            .is_some_and(|m| m.role == pb::MemberRole::Operator)
                    })
                {
                    self.terms = held_terms(store, members)?;
                    self.terms_read = true;
                }
                self.follow_new(store, (genesis, program_terms), height, cut.time_ms)?;
                let Some(answers) = answers_of_cut(store, &cut)? else {
                    return Ok(out);
                };
                for ((area, start), t) in &mut self.tracked {
                    if t.rounds.last_height() >= height {
                        continue;
                    }
                    let a = answers
                        .get(&(area.clone(), *start))
                        .cloned()
                        .unwrap_or_default();
                    t.rounds.on_cut(height, cut.time_ms, a);
                }
                self.fed = height;
            }
        }
        for ((area, start), t) in &mut self.tracked {
            if let Some(r) = t.rounds.round_record(area)
                && r.round > t.logged_round
            {
                t.logged_round = r.round;
                out.push((
                    format!("market-round/{area}/{start}/{}", r.round),
                    pb::EntryKind::MarketRound,
                    r.encode_to_vec(),
                ));
            }
            if !t.cleared
                && let Some(mut c) = t.rounds.record(area)
            {
                // The end-to-end test's Byzantine validator logs a clearing of its own.
                if fail::eval("market-clearing-forge", |_| ()).is_some() {
                    c.price_milli_per_kwh += 1;
                }
                t.cleared = true;
                info!(
                    area = %area,
                    interval_ms = start,
                    price = c.price_milli_per_kwh,
                    rounds = c.rounds,
                    stop = %c.stop,
                    members = c.members.len(),
                    validator = me,
                    "market: interval cleared"
                );
                out.push((
                    format!("market-clearing/{area}/{start}"),
                    pb::EntryKind::MarketClearing,
                    c.encode_to_vec(),
                ));
            }
        }
        let done: Vec<(String, i64)> = self
            .tracked
            .iter()
            .filter(|(_, t)| match t.rounds.state() {
                State::Final(_) => t.cleared,
                State::Missed => true,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            self.tracked.remove(&k);
            self.done.insert(k);
        }
        if let Some(oldest) = self.done.iter().map(|(_, s)| *s).min()
            && self.done.len() > 1_000
        {
            self.done.retain(|(_, s)| *s > oldest);
        }
        Ok(out)
    }

    /// Starts following the intervals whose discovery is open at the cut at `height` (or
    /// closed within [`LOOK_BACK_MS`] and not cleared by this validator), catching each up
    /// from the cut that opened it.
    fn follow_new(
        &mut self,
        store: &Store,
        (genesis, program_terms): (
            &Members,
            &BTreeMap<String, gridgate_ledger::settlement::Terms>,
        ),
        height: u64,
        time_ms: i64,
    ) -> Result<(), StoreError> {
        let areas: std::collections::BTreeSet<String> =
            self.terms.iter().map(|h| h.terms.area.clone()).collect();
        for area in areas {
            // The schedule of the newest terms ordered by now enumerates the intervals;
            // each interval then takes the terms in force for it.
            let Some(newest) = terms_in_force(&self.terms, &area, i64::MAX, height) else {
                continue;
            };
            let schedule = schedule_of(newest);
            let mut starts = schedule.open_at(time_ms);
            let mut back = schedule.open_at(time_ms - LOOK_BACK_MS);
            back.retain(|s| !starts.contains(s));
            starts.extend(back);
            for start in starts {
                let key = (area.clone(), start);
                if self.tracked.contains_key(&key) || self.done.contains(&key) {
                    continue;
                }
                let claimed = !store
                    .ledger()
                    .claims(&format!("market-clearing/{area}/{start}"))?
                    .is_empty();
                if claimed {
                    continue;
                }
                let Some(pt) = terms_in_force(&self.terms, &area, start, height) else {
                    continue;
                };
                let Some(terms) = terms_of(pt) else {
                    continue;
                };
                let s = schedule_of(pt);
                let mut rounds = Rounds::new(terms, s, start);
                // Catch up from the cut that opened it to the one before this.
                if let Some(opened) = store.ledger().first_cut_at(s.opens(start))? {
                    let opened_ms = store
                        .ledger()
                        .cut(opened)?
                        .and_then(|d| gridgate_ledger::cut::decode(&d.cut).ok())
                        .map_or(time_ms, |c| c.time_ms);
                    let (gateways, out) =
                        heard_at(store, genesis, program_terms, opened, opened_ms)?;
                    if !out.is_empty() {
                        info!(area = %area, interval_ms = start, excluded = ?out, "market: members excluded by their reputation");
                    }
                    rounds = rounds.hearing(gateways).excluding(out);
                    let mut h = opened;
                    while h < height {
                        let chunk = store.ledger().cuts(h, 64)?;
                        if chunk.is_empty() {
                            break;
                        }
                        for (ch, d) in chunk {
                            if ch >= height {
                                break;
                            }
                            h = ch + 1;
                            let Ok(cut) = gridgate_ledger::cut::decode(&d.cut) else {
                                continue;
                            };
                            let Some(mut answers) = answers_of_cut(store, &cut)? else {
                                // Not all held: follow it from the next call.
                                return Ok(());
                            };
                            let a = answers.remove(&key).unwrap_or_default();
                            rounds.on_cut(ch, cut.time_ms, a);
                        }
                    }
                }
                let logged_round = store
                    .ledger()
                    .claims(&format!("market-round/{area}/{start}/"))?
                    .iter()
                    .filter_map(|(k, _)| k.rsplit('/').next()?.parse::<u32>().ok())
                    .max()
                    .unwrap_or(0);
                self.tracked.insert(
                    key,
                    Tracked {
                        rounds,
                        logged_round,
                        cleared: false,
                    },
                );
            }
        }
        Ok(())
    }
}

/// How often a validator looks for newly decided cuts.
const TICK: Duration = Duration::from_millis(100);

/// Runs a validator's market until `cancel` fires: follows every interval of every area
/// with terms through its rounds, logging each round's price and the clearing.
pub async fn run(v: Validator, cancel: CancellationToken) {
    // Begin at the newest cut: intervals already open are caught up from their opening.
    let start_at = blocking(&v.store, |s| Ok(s.ledger().decided_state()?.height))
        .await
        .unwrap_or(0);
    let runner = Arc::new(std::sync::Mutex::new(Runner {
        fed: start_at.saturating_sub(1),
        ..Runner::default()
    }));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let (r, members, me, key) = (
            runner.clone(),
            v.state.members(),
            v.me.clone(),
            v.key.clone(),
        );
        let (genesis, terms) = (v.state.genesis().clone(), v.terms.clone());
        let appended = blocking(&v.store, move |st| {
            let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
            let logs = r.step(st, &members, (&me, &genesis, &terms))?;
            let n = logs.len();
            for (claim, kind, payload) in logs {
                crate::certifier::append(st, &me, &key, &claim, kind, payload)?;
            }
            Ok(n)
        })
        .await;
        match appended {
            Some(n) if n > 0 => v.wake.notify_one(),
            Some(_) => {}
            None => warn!("market: the rounds will be tried again"),
        }
    }
}

/// One interval as a gateway's page, metrics and status show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalView {
    /// The interval's start.
    pub interval_ms: i64,
    /// Each round f+1 validators agreed on: (round, price), in order.
    pub rounds: Vec<(u32, i64)>,
    /// The final clearing, once 2f+1 validators logged it.
    pub clearing: Option<pb::MarketClearing>,
    /// The validators that logged it.
    pub signers: Vec<String>,
    /// This member's answers: (round, price, Wh).
    pub answers: Vec<(u32, i64, i64)>,
    /// This member's part of the clearing.
    pub accepted: Option<pb::MarketAllocation>,
    /// What it measured and logged.
    pub delivery: Option<pb::MarketDelivery>,
}

/// The newest `last` intervals of `area` this replica holds anything of, oldest first, with
/// `me`'s part in each: from the validators' logs and `me`'s own, as far back as `since_ms`.
pub fn view(
    store: &Store,
    members: &Members,
    area: &str,
    me: &str,
    since_ms: i64,
    last: usize,
) -> Result<Vec<IntervalView>, StoreError> {
    let mut by: BTreeMap<i64, (Logged, IntervalView)> =
        logged_by_interval(store, members, area, since_ms)?
            .into_iter()
            .map(|(start, l)| (start, (l, IntervalView::default())))
            .collect();
    for (_, e) in recent_entries(store, me, since_ms)? {
        if e.kind == pb::EntryKind::MarketAnswer as i32 {
            if let Ok(a) = pb::MarketAnswer::decode(e.payload.as_slice())
                && a.area == area
            {
                by.entry(a.interval_ms).or_default().1.answers.push((
                    a.round,
                    a.price_milli_per_kwh,
                    a.quantity_wh,
                ));
            }
        } else if e.kind == pb::EntryKind::MarketDelivery as i32
            && let Ok(d) = pb::MarketDelivery::decode(e.payload.as_slice())
            && d.area == area
        {
            let start = d.interval_ms;
            by.entry(start).or_default().1.delivery = Some(d);
        }
    }
    let quorum = members.quorum();
    let at_least = members.validators().len() - quorum + 1;
    let mut out: Vec<IntervalView> = by
        .into_iter()
        .map(|(start, (logged, mut v))| {
            v.interval_ms = start;
            v.rounds = logged.agreed_rounds(at_least);
            if let Some((c, signers)) = logged.final_clearing(quorum) {
                v.accepted = c.members.iter().find(|a| a.member == me).cloned();
                v.clearing = Some(c);
                v.signers = signers;
            }
            v
        })
        .collect();
    let skip = out.len().saturating_sub(last);
    out.drain(..skip);
    Ok(out)
}
