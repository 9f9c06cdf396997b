//! Settlement and reputation: deterministic functions over certified entries, in integer
//! arithmetic, so that every replica computes the same statement and the same hash.
//!
//! Inputs: DR events (signed by their issuer, an operator member; the operator logs them in
//! its own log, and a gateway puts the event it acted on into its log before its report),
//! performance reports (signed by the gateway that measured, and carried in that gateway's
//! own log), the programs' terms (an operator's certified `ProgramTerms`, or else the genesis
//! config's, the same on every node), and membership changes. Units: watts, milliwatt-hours,
//! milli-units of currency.
//!
//! Per event and gateway, per interval of the report's finest series: the paid reduction is
//! the measured reduction held within 0 and the committed load times the program's cap; the
//! payment is the paid energy at the program's price; a delivery below the program's
//! threshold of the committed energy pays a penalty on the shortfall.
//!
//! Reputation (0 to 1000, from 500): +10 for a report on time that met its threshold, -30
//! for a shortfall, -20 for a report more than an hour late, -50 for an event that named the
//! gateway and got no report from it within a day of its end, -200 and a probation for a
//! report or an operator's event in its log whose signature does not verify. Below 300 a member is excluded:
//! its claims are not paid and the event is recorded as such. Its n-th offence keeps it out
//! for a day times 2^(n-1); it returns (at 300) only after that, and only if nothing
//! counted against it in the meantime.
//!
//! The flexibility market (`market`, docs/market.md): a clearing 2f+1 validators logged
//! identically pays each member's trades with members at the clearing price and its rest
//! with the grid at the market's cap or floor; a delivery report that misses what was
//! accepted by more than 10 % (or 10 Wh) pays the market's penalty on the deviation and
//! costs 30 like a shortfall, one that meets it earns 10, and no report within a day of the
//! interval's end costs 50 like a missed event, with the whole accepted quantity as the
//! deviation.

use std::collections::{BTreeMap, BTreeSet};

mod market;
pub use market::{MET_WITHIN_PERCENT, MET_WITHIN_WH, MarketLine, line_of, met};

use ed25519_dalek::{Signature, Verifier};
use gridgate_proto::v1 as pb;
use prost::Message;

use crate::Members;
use gridgate_core::sha256;

/// A program's settlement terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Price of a paid kWh, in milli-units of currency.
    pub price_milli_per_kwh: i64,
    /// Largest reduction paid, in percent of the committed load.
    pub cap_percent: i64,
    /// Delivery below this percentage of the committed energy is a shortfall.
    pub threshold_percent: i64,
    /// Penalty per kWh of shortfall below the threshold, milli-units.
    pub penalty_milli_per_kwh: i64,
    /// A period's statement closes on the first decided cut this long past the period's end
    /// (the longest grace of the genesis programs counts): entries ordered by that cut count.
    pub grace_ms: i64,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            price_milli_per_kwh: 0,
            cap_percent: 120,
            threshold_percent: 80,
            penalty_milli_per_kwh: 0,
            grace_ms: CLOSES_AFTER_MS,
        }
    }
}

/// A report is late after this long past its event's end.
pub const LATE_AFTER_MS: i64 = 3_600_000;
/// A gateway an event names has missed it when no report of its is logged this long after
/// the event's end.
pub const MISSED_AFTER_MS: i64 = 86_400_000;
/// What a gateway's entry with a forged report or event signature in it costs (and it
/// starts a probation).
pub const FORGED_DELTA: i64 = -200;
/// What a missed event costs.
pub const MISSED_DELTA: i64 = -50;
/// What a report that delivered under the program's threshold costs.
pub const SHORTFALL_DELTA: i64 = -30;
/// What a report logged after [`LATE_AFTER_MS`] costs.
pub const LATE_DELTA: i64 = -20;
/// What a report on time and delivered in full earns.
pub const DELIVERED_DELTA: i64 = 10;
/// The highest reputation.
pub const MAX_SCORE: i64 = 1000;
/// A period's statement closes on the first decided cut this long after the period's end
/// unless the programs' terms give a grace of their own: entries that cut orders count (any
/// event of the period is due by then: events last at most a day), and its standing is the
/// one at the close. Before the close a statement is provisional.
pub const CLOSES_AFTER_MS: i64 = MISSED_AFTER_MS + 86_400_000;
/// Reputation at the start.
pub const START_SCORE: i64 = 500;
/// Below this a member is excluded.
pub const THRESHOLD_SCORE: i64 = 300;
/// The first exclusion lasts this long; each further one twice the one before.
pub const PROBATION_BASE_MS: i64 = 86_400_000;

/// One certified entry, as settlement reads it.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The decoded entry.
    pub entry: pb::Entry,
}

/// One line of the statement: an event's settlement with one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// The event's issuer.
    pub issuer: String,
    /// The event.
    pub event_id: String,
    /// The gateway.
    pub gateway: String,
    /// Committed energy, mWh.
    pub committed_mwh: i64,
    /// Paid (delivered, capped) energy, mWh.
    pub delivered_mwh: i64,
    /// Payment, milli-units.
    pub payment_milli: i64,
    /// Penalty, milli-units.
    pub penalty_milli: i64,
    /// `paid`, `shortfall`, `late`, `excluded`.
    pub note: &'static str,
}

/// A member's reputation at the end of the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Score, 0..=1000.
    pub score: i64,
    /// Offences so far.
    pub offences: u32,
    /// Excluded until (ms), 0 when not excluded.
    pub excluded_until_ms: i64,
}

/// The statement of one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Period start (ms, inclusive).
    pub from_ms: i64,
    /// Period end (ms, exclusive).
    pub to_ms: i64,
    /// What was logged before this moment counts: the close, or earlier (provisional).
    pub as_of_ms: i64,
    /// The decided cut it closed on (height, digest); `None` while provisional.
    pub cut: Option<(u64, [u8; 32])>,
    /// By (issuer, event, gateway).
    pub lines: Vec<StatementLine>,
    /// The market's cleared intervals of the period, by (area, interval, member).
    pub market: Vec<MarketLine>,
    /// By member.
    pub standing: BTreeMap<String, Standing>,
}

impl Statement {
    /// The canonical text: the same bytes on every replica for the same inputs.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "gridgate settlement v1 {}..{} as of {}",
            self.from_ms, self.to_ms, self.as_of_ms
        );
        if let Some((height, digest)) = &self.cut {
            s.push_str(&format!(" on cut {height} {}", hex::encode(digest)));
        }
        s.push('\n');
        for l in &self.lines {
            s.push_str(&format!(
                "event {} {} gateway {} committed_mwh {} delivered_mwh {} payment_milli {} penalty_milli {} {}\n",
                l.issuer,
                l.event_id,
                l.gateway,
                l.committed_mwh,
                l.delivered_mwh,
                l.payment_milli,
                l.penalty_milli,
                l.note
            ));
        }
        for l in &self.market {
            s.push_str(&l.canonical());
        }
        for (m, st) in &self.standing {
            s.push_str(&format!(
                "member {m} score {} offences {} excluded_until {}\n",
                st.score, st.offences, st.excluded_until_ms
            ));
        }
        s
    }

    /// SHA-256 of the canonical text.
    pub fn hash(&self) -> [u8; 32] {
        sha256(self.canonical().as_bytes())
    }
}

/// A report to settle, with what it rests on.
struct Claim {
    gateway: String,
    at_ms: i64,
    report: pb::PerformanceReport,
    event: pb::DrEvent,
}

/// The committed load of one target, W: `shed_kw`, or else the whole load (its highest
/// baseline in the report).
fn committed_w(event: &pb::DrEvent, load: &pb::LoadPerformance) -> i64 {
    let shed = event
        .targets
        .iter()
        .find(|t| t.load == load.load)
        .and_then(|t| match t.action {
            Some(pb::load_target::Action::ShedKw(kw)) => Some((kw * 1000.0).round() as i64),
            _ => None,
        });
    shed.unwrap_or_else(|| {
        load.series.first().map_or(0, |s| {
            s.intervals.iter().map(|i| i.baseline_w).max().unwrap_or(0)
        })
    })
}

/// (committed, delivered) energy of a report, mWh.
fn energy(claim: &Claim, terms: &Terms) -> (i64, i64) {
    let (mut committed, mut delivered) = (0i64, 0i64);
    for load in &claim.report.loads {
        let c = committed_w(&claim.event, load);
        let cap = c.saturating_mul(terms.cap_percent) / 100;
        for i in load
            .series
            .first()
            .map_or(&[][..], |s| s.intervals.as_slice())
        {
            let ms = (i.end_ms - i.start_ms).max(0);
            // W x ms = mJ; 3600 mJ = 1 mWh.
            committed += c.saturating_mul(ms) / 3600;
            delivered += i.reduction_w.clamp(0, cap.max(0)).saturating_mul(ms) / 3600;
        }
    }
    (committed, delivered)
}

fn verify(members: &Members, who: &str, bytes: &[u8], signature: &[u8]) -> bool {
    let Some(m) = members.0.get(who) else {
        return false;
    };
    Signature::from_slice(signature).is_ok_and(|s| m.key.verify(bytes, &s).is_ok())
}

/// The terms a `ProgramTerms` entry sets, if they make sense (cap 0..=1000 %, threshold
/// 0..=100 %, no negative price or penalty, a program named).
pub fn terms_of(t: &pb::ProgramTerms) -> Option<Terms> {
    let sane = !t.program.is_empty()
        && (0..=1000).contains(&t.cap_percent)
        && (0..=100).contains(&t.threshold_percent)
        && t.price_milli_per_kwh >= 0
        && t.penalty_milli_per_kwh >= 0;
    sane.then_some(Terms {
        price_milli_per_kwh: t.price_milli_per_kwh,
        cap_percent: t.cap_percent,
        threshold_percent: t.threshold_percent,
        penalty_milli_per_kwh: t.penalty_milli_per_kwh,
        // The close is the genesis programs' (`close_ms`): an announced grace changes nothing.
        grace_ms: CLOSES_AFTER_MS,
    })
}

/// An event's start: its `start_ms`, or when it was issued for "as soon as accepted".
fn event_start(e: &pb::DrEvent) -> i64 {
    if e.start_ms == 0 {
        e.issued_ms
    } else {
        e.start_ms
    }
}

/// What moves a member's reputation, in time order.
enum Happening<'a> {
    /// A validator's certified proof that the member equivocated.
    Accused(&'a str),
    /// A gateway's claim.
    Claimed(&'a Claim),
    /// A gateway the event named that had not reported on it when its time ran out.
    Missed(&'a pb::DrEvent, &'a str),
    /// A gateway logged a report or an operator's event whose signature does not verify
    /// (it signed the entry, so it answers for what is in it).
    Forged(&'a str),
    /// A gateway's market delivery report, and whether it met what was accepted.
    Delivered(&'a market::Delivered, bool),
    /// A gateway a clearing accepted that had logged no delivery when its time ran out.
    Undelivered(&'a market::Cleared, &'a str),
}

impl Happening<'_> {
    /// The member it concerns.
    fn member(&self) -> &str {
        match self {
            Happening::Accused(m) | Happening::Forged(m) => m,
            Happening::Claimed(c) => c.gateway.as_str(),
            Happening::Missed(_, g) | Happening::Undelivered(_, g) => g,
            Happening::Delivered(d, _) => d.gateway.as_str(),
        }
    }

    /// Order within one millisecond (so that every replica walks the same way).
    fn rank(&self) -> (u8, String, String) {
        match self {
            Happening::Accused(m) => (0, m.to_string(), String::new()),
            Happening::Forged(m) => (0, m.to_string(), "forged".into()),
            Happening::Claimed(c) => (1, c.gateway.clone(), c.event.id.clone()),
            Happening::Missed(e, g) => (2, g.to_string(), e.id.clone()),
            Happening::Delivered(d, _) => (
                3,
                d.gateway.clone(),
                format!("{}/{}", d.delivery.area, d.delivery.interval_ms),
            ),
            Happening::Undelivered(c, g) => (
                4,
                g.to_string(),
                format!("{}/{}", c.clearing.area, c.clearing.interval_ms),
            ),
        }
    }
}

fn fresh() -> Standing {
    Standing {
        score: START_SCORE,
        offences: 0,
        excluded_until_ms: 0,
    }
}

/// Counts an offence at `at_ms`: the member is out for a day x 2^(offences - 1).
fn offence(st: &mut Standing, at_ms: i64) {
    st.offences += 1;
    st.excluded_until_ms = at_ms + PROBATION_BASE_MS * (1i64 << (st.offences - 1).min(20));
}

/// The closed statement of the period `[from_ms, to_ms)`: [`settle_as_of`] at the close.
pub fn settle(
    from_ms: i64,
    to_ms: i64,
    entries: &[Certified],
    genesis: &Members,
    terms: &BTreeMap<String, Terms>,
) -> Statement {
    settle_as_of(
        from_ms,
        to_ms,
        close_ms(to_ms, terms),
        entries,
        genesis,
        terms,
    )
}

/// Settles the period `[from_ms, to_ms)` (events by their start) from certified entries
/// (any order; they are sorted here), with the genesis membership and programs' terms, from
/// what was logged before `as_of_ms` (at most the close: [`CLOSES_AFTER_MS`]).
///
/// The membership is the genesis one with the certified membership changes logged by then;
/// a program's terms are the last certified `ProgramTerms` of an operator logged by then and
/// in force at the event's start, or else the genesis ones.
///
/// Three steps: what happened, in order (`Ledgered::read`, `Ledgered::timeline`); what each
/// happening does to the member's reputation (`Standing::apply`); and what each claim or
/// miss is worth (`price_claim`, `missed_line`).
pub fn settle_as_of(
    from_ms: i64,
    to_ms: i64,
    as_of_ms: i64,
    entries: &[Certified],
    genesis: &Members,
    terms: &BTreeMap<String, Terms>,
) -> Statement {
    let as_of_ms = as_of_ms.min(close_ms(to_ms, terms));
    let ledgered = Ledgered::read(entries, genesis, as_of_ms);
    let timeline = ledgered.timeline();
    let in_period = |start_ms: i64| start_ms >= from_ms && start_ms < to_ms;

    // Reputation runs over everything up to the close, in order; lines are the period's
    // events.
    let mut standing: BTreeMap<String, Standing> = ledgered
        .members
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Gateway)
        .map(|m| (m.id.clone(), fresh()))
        .collect();
    let mut lines = Vec::new();
    // Market deliveries judged while their member was excluded.
    let mut excluded_then: BTreeSet<(String, String, i64)> = BTreeSet::new();
    for (at, h) in &timeline {
        let st = standing.entry(h.member().to_string()).or_insert_with(fresh);
        let excluded = st.back_from_probation(*at, h);
        let (line, delta) = match h {
            Happening::Accused(_) | Happening::Forged(_) => (None, 0),
            Happening::Delivered(d, met) => {
                if excluded {
                    excluded_then.insert((
                        d.gateway.clone(),
                        d.delivery.area.clone(),
                        d.delivery.interval_ms,
                    ));
                }
                (
                    None,
                    if *met {
                        DELIVERED_DELTA
                    } else {
                        SHORTFALL_DELTA
                    },
                )
            }
            Happening::Undelivered(c, g) => {
                if excluded {
                    excluded_then.insert((
                        g.to_string(),
                        c.clearing.area.clone(),
                        c.clearing.interval_ms,
                    ));
                }
                (None, MISSED_DELTA)
            }
            Happening::Claimed(c) => {
                let t = ledgered.terms_for(&c.report.program, c.report.start_ms, terms);
                let (line, delta) = price_claim(c, &t, excluded);
                (in_period(c.report.start_ms).then_some(line), delta)
            }
            Happening::Missed(event, g) => {
                // A late report already counted the miss, and lists the event itself.
                let listed = ledgered.reported(event, g).is_some();
                let line = missed_line(event, g);
                let listed_here = in_period(event_start(event)) && !listed;
                (
                    listed_here.then_some(line),
                    if listed { 0 } else { MISSED_DELTA },
                )
            }
        };
        st.apply(h, delta, excluded, *at);
        lines.extend(line);
    }
    lines.sort_by(|a, b| {
        (&a.issuer, &a.event_id, &a.gateway).cmp(&(&b.issuer, &b.event_id, &b.gateway))
    });
    let market = ledgered.market_lines(from_ms, to_ms, &excluded_then);
    Statement {
        from_ms,
        to_ms,
        as_of_ms,
        cut: None,
        lines,
        market,
        standing,
    }
}

/// The decided cut a statement closes on, with every log's head as of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosingCut {
    /// Its height.
    pub height: u64,
    /// Its digest.
    pub digest: [u8; 32],
    /// Its time (the validators agreed on it).
    pub time_ms: i64,
    /// Entries it orders, by origin: those with a sequence number below.
    pub heads: BTreeMap<String, u64>,
}

/// When the period ending at `to_ms` closes: its end plus the longest grace of the genesis
/// programs (the default grace when there are none).
pub fn close_ms(to_ms: i64, terms: &BTreeMap<String, Terms>) -> i64 {
    let grace = terms
        .values()
        .map(|t| t.grace_ms)
        .max()
        .unwrap_or(CLOSES_AFTER_MS);
    to_ms.saturating_add(grace)
}

/// The closed statement of `[from_ms, to_ms)`: what the decided cut `cut` orders (the first
/// whose time is at or past [`close_ms`]), as of its time. Every replica that holds the
/// entries it orders computes the same statement, whatever else it holds.
pub fn settle_on_cut(
    from_ms: i64,
    to_ms: i64,
    cut: &ClosingCut,
    entries: &[Certified],
    genesis: &Members,
    terms: &BTreeMap<String, Terms>,
) -> Statement {
    let ordered: Vec<Certified> = entries
        .iter()
        .filter(|c| c.entry.seq < cut.heads.get(&c.entry.origin).copied().unwrap_or(0))
        .cloned()
        .collect();
    let mut s = settle_as_of(from_ms, to_ms, cut.time_ms, &ordered, genesis, terms);
    s.cut = Some((cut.height, cut.digest));
    s
}

/// What the certified entries say, read once: the membership in force, the operators'
/// announced terms, the signed events, the gateways' claims, forged entries and proven
/// equivocations, as logged before the statement's moment.
struct Ledgered {
    as_of_ms: i64,
    members: Members,
    /// (effective from, program, terms), in the order they take effect.
    announced: Vec<(i64, String, Terms)>,
    /// By the hash of their signed bytes: believed only with their issuer's signature (an
    /// operator member's).
    events: BTreeMap<Vec<u8>, pb::DrEvent>,
    /// Reports signed by the gateway whose log carries them, for a known event; one per
    /// (event, gateway), the first.
    claims: Vec<Claim>,
    /// Gateways' entries carrying a forged signature: (when, who).
    forged: Vec<(i64, String)>,
    /// Proofs of equivocation attested by validators, one per proven place: (when, who).
    accused: Vec<(i64, String)>,
    /// The market's final clearings, their terms and the deliveries.
    market: market::MarketLedger,
}

impl Ledgered {
    fn read(entries: &[Certified], genesis: &Members, as_of_ms: i64) -> Ledgered {
        let mut sorted: Vec<&pb::Entry> = entries.iter().map(|c| &c.entry).collect();
        sorted.sort_by(|a, b| {
            (a.timestamp_ms, &a.origin, a.seq).cmp(&(b.timestamp_ms, &b.origin, b.seq))
        });
        let logged = |e: &&&pb::Entry| e.timestamp_ms < as_of_ms;
        let members = crate::membership::apply(
            genesis,
            crate::membership::changes_in(sorted.iter().copied().filter(|e| logged(&e)), genesis)
                .iter(),
        );
        let mut l = Ledgered {
            as_of_ms,
            members,
            announced: Vec::new(),
            events: BTreeMap::new(),
            claims: Vec::new(),
            forged: Vec::new(),
            accused: Vec::new(),
            market: Default::default(),
        };
        for e in sorted.iter().filter(logged) {
            l.read_terms(e);
        }
        // Stable: among equal effective times the later entry wins.
        l.announced.sort_by_key(|a| a.0);
        for e in &sorted {
            l.read_event(e);
        }
        let mut seen: BTreeSet<(Vec<u8>, String)> = BTreeSet::new();
        for e in &sorted {
            l.read_claim(e, &mut seen);
        }
        let mut proven: BTreeSet<(String, u64)> = BTreeSet::new();
        for e in sorted.iter().filter(logged) {
            l.read_proof(e, &mut proven);
        }
        l.market = market::MarketLedger::read(
            sorted.iter().copied().filter(|e| e.timestamp_ms < as_of_ms),
            &l.members,
        );
        l
    }

    /// A member's delivery for a cleared interval, if logged in time for the statement.
    fn delivery(&self, member: &str, c: &market::Cleared) -> Option<&market::Delivered> {
        let end = c.clearing.interval_ms + i64::from(c.terms.interval_s) * 1000;
        self.market
            .delivered
            .get(&(
                member.to_string(),
                c.clearing.area.clone(),
                c.clearing.interval_ms,
            ))
            .filter(|d| d.at_ms < self.as_of_ms && d.at_ms <= end.saturating_add(MISSED_AFTER_MS))
    }

    /// The market lines of the intervals starting in [from_ms, to_ms).
    fn market_lines(
        &self,
        from_ms: i64,
        to_ms: i64,
        excluded: &BTreeSet<(String, String, i64)>,
    ) -> Vec<MarketLine> {
        let mut out = Vec::new();
        for ((area, start), c) in &self.market.cleared {
            if *start < from_ms || *start >= to_ms {
                continue;
            }
            let end = c.clearing.interval_ms + i64::from(c.terms.interval_s) * 1000;
            let awaited = end.saturating_add(MISSED_AFTER_MS) >= self.as_of_ms;
            for a in &c.clearing.members {
                let d = self.delivery(&a.member, c).map(|d| d.delivery.delivered_wh);
                let was_excluded = excluded.contains(&(a.member.clone(), area.clone(), *start));
                out.push(market::line(c, a, d, was_excluded, awaited));
            }
        }
        out
    }

    fn is(&self, who: &str, role: pb::MemberRole) -> bool {
        self.members.0.get(who).is_some_and(|m| m.role == role)
    }

    /// A forged signature in a gateway's entry logged in time is an offence of the gateway.
    fn forged_in(&mut self, e: &pb::Entry) {
        if self.is(&e.origin, pb::MemberRole::Gateway) && e.timestamp_ms < self.as_of_ms {
            self.forged.push((e.timestamp_ms, e.origin.clone()));
        }
    }

    fn read_terms(&mut self, e: &pb::Entry) {
        if e.kind != pb::EntryKind::ProgramTerms as i32
            || !self.is(&e.origin, pb::MemberRole::Operator)
        {
            return;
        }
        let Ok(t) = pb::ProgramTerms::decode(e.payload.as_slice()) else {
            return;
        };
        if let Some(terms) = terms_of(&t) {
            self.announced.push((t.effective_ms, t.program, terms));
        }
    }

    fn read_event(&mut self, e: &pb::Entry) {
        if e.kind != pb::EntryKind::DrEvent as i32 {
            return;
        }
        let Ok(signed) = pb::SignedDrEvent::decode(e.payload.as_slice()) else {
            return;
        };
        let Ok(event) = pb::DrEvent::decode(signed.event.as_slice()) else {
            return;
        };
        if !self.is(&event.issuer, pb::MemberRole::Operator) {
            return;
        }
        if verify(
            &self.members,
            &event.issuer,
            &signed.event,
            &signed.signature,
        ) {
            self.events.insert(sha256(&signed.event).to_vec(), event);
        } else {
            self.forged_in(e);
        }
    }

    fn read_claim(&mut self, e: &pb::Entry, seen: &mut BTreeSet<(Vec<u8>, String)>) {
        if e.kind != pb::EntryKind::PerformanceReport as i32 {
            return;
        }
        let Ok(signed) = pb::SignedPerformanceReport::decode(e.payload.as_slice()) else {
            return;
        };
        let report = pb::PerformanceReport::decode(signed.report.as_slice()).ok();
        let own = verify(&self.members, &e.origin, &signed.report, &signed.signature)
            && report.as_ref().is_some_and(|r| r.gateway_id == e.origin);
        let Some(report) = report.filter(|_| own) else {
            self.forged_in(e);
            return;
        };
        let Some(event) = self.events.get(&report.event_hash) else {
            return;
        };
        if !seen.insert((report.event_hash.clone(), e.origin.clone())) {
            return;
        }
        self.claims.push(Claim {
            gateway: e.origin.clone(),
            at_ms: e.timestamp_ms,
            event: event.clone(),
            report,
        });
    }

    fn read_proof(&mut self, e: &pb::Entry, proven: &mut BTreeSet<(String, u64)>) {
        if e.kind != pb::EntryKind::Equivocation as i32
            || !self.is(&e.origin, pb::MemberRole::Validator)
        {
            return;
        }
        let Ok(proof) = pb::EquivocationProof::decode(e.payload.as_slice()) else {
            return;
        };
        let Ok(accused) = crate::entry::check_proof(&proof, &self.members) else {
            return;
        };
        // The place: the accused's (origin, seq), the same in both entries of the proof.
        let seq = proof
            .a
            .as_ref()
            .and_then(|a| pb::Entry::decode(a.entry.as_slice()).ok())
            .map_or(0, |a| a.seq);
        if proven.insert((accused.clone(), seq)) {
            self.accused.push((e.timestamp_ms, accused));
        }
    }

    /// A program's terms in force at `at_ms`: the last announced by then, or the genesis
    /// ones (`genesis`), or the defaults.
    fn terms_for(&self, program: &str, at_ms: i64, genesis: &BTreeMap<String, Terms>) -> Terms {
        self.announced
            .iter()
            .rev()
            .find(|(eff, p, _)| p == program && *eff <= at_ms)
            .map(|(_, _, t)| t.clone())
            .or_else(|| genesis.get(program).cloned())
            .unwrap_or_default()
    }

    /// When `gateway` logged its claim on `event`, if it did in time for the statement (the
    /// last, should one issuer have reused an event id).
    fn reported(&self, event: &pb::DrEvent, gateway: &str) -> Option<i64> {
        self.claims
            .iter()
            .rev()
            .find(|c| {
                c.at_ms < self.as_of_ms
                    && c.gateway == gateway
                    && c.event.issuer == event.issuer
                    && c.event.id == event.id
            })
            .map(|c| c.at_ms)
    }

    /// Every happening, in the order every replica walks them.
    fn timeline(&self) -> Vec<(i64, Happening<'_>)> {
        let mut timeline: Vec<(i64, Happening)> = Vec::new();
        for (at, who) in &self.accused {
            timeline.push((*at, Happening::Accused(who)));
        }
        for (at, who) in &self.forged {
            timeline.push((*at, Happening::Forged(who)));
        }
        for c in self.claims.iter().filter(|c| c.at_ms < self.as_of_ms) {
            timeline.push((c.at_ms, Happening::Claimed(c)));
        }
        // Misses: a gateway an event named, with no report logged within MISSED_AFTER_MS of
        // the event's end (a report after that counts as missed too).
        for event in self.events.values() {
            let end = event_start(event).saturating_add(i64::from(event.duration_s) * 1000);
            let due = end.saturating_add(MISSED_AFTER_MS);
            if due >= self.as_of_ms {
                continue;
            }
            let named: BTreeSet<&str> = event.gateways.iter().map(String::as_str).collect();
            for g in named {
                if !self.is(g, pb::MemberRole::Gateway) {
                    continue;
                }
                if self.reported(event, g).is_none_or(|at| at > due) {
                    timeline.push((due, Happening::Missed(event, g)));
                }
            }
        }
        // The market: each member a clearing accepted for something, by its delivery report
        // or, without one in time, when that time ran out.
        for c in self.market.cleared.values() {
            let end = c.clearing.interval_ms + i64::from(c.terms.interval_s) * 1000;
            let due = end.saturating_add(MISSED_AFTER_MS);
            for a in c.clearing.members.iter().filter(|a| a.asked_wh != 0) {
                if !self.is(&a.member, pb::MemberRole::Gateway) {
                    continue;
                }
                match self.delivery(&a.member, c) {
                    Some(d) => timeline.push((
                        d.at_ms,
                        Happening::Delivered(d, market::met(a.asked_wh, d.delivery.delivered_wh)),
                    )),
                    None if due < self.as_of_ms => {
                        timeline.push((due, Happening::Undelivered(c, a.member.as_str())))
                    }
                    None => {}
                }
            }
        }
        timeline.sort_by_key(|(at, h)| (*at, h.rank()));
        timeline
    }
}

/// A claim's line and what it does to the gateway's reputation, under the program's terms
/// `t` (`excluded`: the gateway is on probation, so nothing is paid).
fn price_claim(c: &Claim, t: &Terms, excluded: bool) -> (StatementLine, i64) {
    let (committed, delivered) = energy(c, t);
    let missed =
        c.at_ms > c.report.end_ms.saturating_add(MISSED_AFTER_MS) && !c.event.gateways.is_empty();
    let late = c.at_ms > c.report.end_ms + LATE_AFTER_MS;
    let shortfall = delivered.saturating_mul(100) < committed.saturating_mul(t.threshold_percent);
    let paid = !excluded && !missed;
    let note = if excluded {
        "excluded"
    } else if missed {
        "missed"
    } else if shortfall {
        "shortfall"
    } else if late {
        "late"
    } else {
        "paid"
    };
    let delta = if missed {
        MISSED_DELTA
    } else if shortfall {
        SHORTFALL_DELTA
    } else if late {
        LATE_DELTA
    } else {
        DELIVERED_DELTA
    };
    let line = StatementLine {
        issuer: c.event.issuer.clone(),
        event_id: c.event.id.clone(),
        gateway: c.gateway.clone(),
        committed_mwh: committed,
        delivered_mwh: if paid { delivered } else { 0 },
        payment_milli: if paid {
            delivered.saturating_mul(t.price_milli_per_kwh) / 1_000_000
        } else {
            0
        },
        penalty_milli: if shortfall && !missed {
            (committed.saturating_mul(t.threshold_percent) / 100 - delivered)
                .saturating_mul(t.penalty_milli_per_kwh)
                / 1_000_000
        } else {
            0
        },
        note,
    };
    (line, delta)
}

/// The line of a gateway that never reported on an event it was named in.
fn missed_line(event: &pb::DrEvent, gateway: &str) -> StatementLine {
    StatementLine {
        issuer: event.issuer.clone(),
        event_id: event.id.clone(),
        gateway: gateway.to_string(),
        committed_mwh: 0,
        delivered_mwh: 0,
        payment_milli: 0,
        penalty_milli: 0,
        note: "missed",
    }
}

impl Standing {
    /// Back from probation once it is over at `at` (nothing counted against it meanwhile, or
    /// it would have been extended); whether the member is still excluded. Offences
    /// (accusations, forgeries) are judged whatever the probation.
    fn back_from_probation(&mut self, at: i64, h: &Happening) -> bool {
        if matches!(h, Happening::Accused(_) | Happening::Forged(_)) {
            return self.excluded_until_ms > 0;
        }
        if self.excluded_until_ms > 0 && at >= self.excluded_until_ms {
            self.excluded_until_ms = 0;
            self.score = self.score.max(THRESHOLD_SCORE);
        }
        self.excluded_until_ms > 0
    }

    /// What a happening at `at` does to the reputation: an equivocation takes the score to
    /// nothing and a forgery costs [`FORGED_DELTA`], both offences; anything else moves the
    /// score by `delta`, and a loss while excluded or below the threshold is an offence too.
    fn apply(&mut self, h: &Happening, delta: i64, excluded: bool, at: i64) {
        match h {
            Happening::Accused(_) => {
                self.score = 0;
                offence(self, at);
            }
            Happening::Forged(_) => {
                self.score = (self.score + FORGED_DELTA).max(0);
                offence(self, at);
            }
            Happening::Claimed(_)
            | Happening::Missed(..)
            | Happening::Delivered(..)
            | Happening::Undelivered(..) => {
                self.score = (self.score + delta).clamp(0, MAX_SCORE);
                if delta < 0 && (excluded || self.score < THRESHOLD_SCORE) {
                    offence(self, at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Member;
    use gridgate_core::Identity;

    struct World {
        members: Members,
        operator: Identity,
        gw: Identity,
    }

    fn world() -> World {
        let (operator, gw) = (
            Identity::generate().expect("k"),
            Identity::generate().expect("k"),
        );
        let mut members = Members::default();
        for (id, role, k) in [
            ("op", pb::MemberRole::Operator, &operator),
            ("gw", pb::MemberRole::Gateway, &gw),
        ] {
            members.0.insert(
                id.into(),
                Member {
                    id: id.into(),
                    role,
                    key: k.public(),
                    removed: false,
                },
            );
        }
        World {
            members,
            operator,
            gw,
        }
    }

    /// An event of `shed_kw` for an hour at `start`, and the gateway's report of a steady
    /// `reduction_w`, logged at `at_ms`.
    fn claim(
        w: &World,
        id: &str,
        start: i64,
        shed_kw: f64,
        reduction_w: i64,
        at_ms: i64,
    ) -> Vec<Certified> {
        claim_by(
            w,
            ("gw", &w.gw),
            &[],
            id,
            start,
            shed_kw,
            reduction_w,
            at_ms,
        )
    }

    /// [`claim`] by another gateway, of an event that names `gateways`.
    #[allow(clippy::too_many_arguments)]
    fn claim_by(
        w: &World,
        (gw_id, gw_key): (&str, &Identity),
        gateways: &[&str],
        id: &str,
        start: i64,
        shed_kw: f64,
        reduction_w: i64,
        at_ms: i64,
    ) -> Vec<Certified> {
        let event = pb::DrEvent {
            id: id.into(),
            gateways: gateways.iter().map(|g| g.to_string()).collect(),
            issuer: "op".into(),
            program: "peak".into(),
            targets: vec![pb::LoadTarget {
                load: "pcs".into(),
                action: Some(pb::load_target::Action::ShedKw(shed_kw)),
            }],
            start_ms: start,
            duration_s: 3600,
            ..Default::default()
        };
        let signed = gridgate_core::signed::sign_event(&event, &w.operator);
        let interval = |k: i64| pb::IntervalPerformance {
            start_ms: start + k * 900_000,
            end_ms: start + (k + 1) * 900_000,
            baseline_w: 50_000,
            actual_w: 50_000 - reduction_w,
            reduction_w,
            samples: 900,
            complete: true,
        };
        let report = pb::PerformanceReport {
            gateway_id: gw_id.into(),
            issuer: "op".into(),
            event_id: id.into(),
            event_hash: sha256(&signed.event).to_vec(),
            program: "peak".into(),
            start_ms: start,
            end_ms: start + 3_600_000,
            loads: vec![pb::LoadPerformance {
                load: "pcs".into(),
                series: vec![pb::IntervalSeries {
                    length_s: 900,
                    intervals: (0..4).map(interval).collect(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let signed_report = gridgate_core::signed::sign_report(gw_key, &report);
        vec![
            Certified {
                entry: pb::Entry {
                    origin: gw_id.into(),
                    seq: 0,
                    timestamp_ms: at_ms,
                    kind: pb::EntryKind::DrEvent as i32,
                    payload: signed.encode_to_vec(),
                    ..Default::default()
                },
            },
            Certified {
                entry: pb::Entry {
                    origin: gw_id.into(),
                    seq: 1,
                    timestamp_ms: at_ms,
                    kind: pb::EntryKind::PerformanceReport as i32,
                    payload: signed_report.encode_to_vec(),
                    ..Default::default()
                },
            },
        ]
    }

    fn terms() -> BTreeMap<String, Terms> {
        BTreeMap::from([(
            "peak".to_string(),
            Terms {
                price_milli_per_kwh: 2_000,
                cap_percent: 100,
                threshold_percent: 80,
                penalty_milli_per_kwh: 1_000,
                grace_ms: CLOSES_AFTER_MS,
            },
        )])
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_delivered_hour_is_paid_capped_and_the_same_in_any_order() {
        let w = world();
        // 20 kW committed, 25 kW delivered for an hour: paid 20 kWh (capped) at 2.000.
        let mut entries = claim(&w, "e1", 10 * DAY, 20.0, 25_000, 10 * DAY + 3_700_000);
        let s = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert_eq!(s.lines.len(), 1);
        let l = &s.lines[0];
        assert_eq!((l.committed_mwh, l.delivered_mwh), (20_000_000, 20_000_000));
        assert_eq!(
            (l.payment_milli, l.penalty_milli, l.note),
            (40_000, 0, "paid")
        );
        assert_eq!(s.standing["gw"].score, 510);
        entries.reverse();
        let again = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert_eq!(again.hash(), s.hash(), "order of arrival does not matter");
    }

    #[test]
    fn a_statement_on_a_cut_counts_what_the_cut_orders_not_what_entries_claim_as_time() {
        let w = world();
        let at = 10 * DAY + 3_700_000;
        let entries = claim(&w, "e1", 10 * DAY, 20.0, 25_000, at);
        let cut = |heads: &[(&str, u64)]| ClosingCut {
            height: 77,
            digest: [7; 32],
            time_ms: 12 * DAY + 5,
            heads: heads.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
        };
        // The report (gw's entry 1) ordered by the closing cut: paid, and the statement
        // names the cut.
        let on = settle_on_cut(
            10 * DAY,
            11 * DAY,
            &cut(&[("gw", 2)]),
            &entries,
            &w.members,
            &terms(),
        );
        assert_eq!(on.lines.len(), 1);
        assert_eq!(on.lines[0].note, "paid");
        assert_eq!(on.cut, Some((77, [7; 32])));
        assert!(
            on.canonical()
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(&format!("on cut 77 {}", hex::encode([7; 32]))))
        );
        // The cut orders only the event (entry 0): the report is not ordered by the close,
        // whatever time it claims, so nothing is paid.
        let off = settle_on_cut(
            10 * DAY,
            11 * DAY,
            &cut(&[("gw", 1)]),
            &entries,
            &w.members,
            &terms(),
        );
        assert!(off.lines.is_empty(), "{}", off.canonical());
        assert_ne!(on.hash(), off.hash());
        // The close is the period's end plus the longest grace of the programs.
        let mut t = terms();
        t.get_mut("peak").expect("peak").grace_ms = 3 * DAY;
        assert_eq!(close_ms(11 * DAY, &t), 14 * DAY);
        assert_eq!(
            close_ms(11 * DAY, &BTreeMap::new()),
            11 * DAY + CLOSES_AFTER_MS
        );
    }

    /// Two different entries signed by `key` as `gw`'s entry 7, as a validator's entry.
    fn accusation(key: &Identity, by: &str, at_ms: i64) -> Certified {
        let place = |payload: &[u8]| {
            crate::entry::sign_entry(
                &pb::Entry {
                    origin: "gw".into(),
                    seq: 7,
                    payload: payload.to_vec(),
                    ..Default::default()
                },
                key,
            )
        };
        Certified {
            entry: pb::Entry {
                origin: by.into(),
                seq: 0,
                timestamp_ms: at_ms,
                kind: pb::EntryKind::Equivocation as i32,
                payload: pb::EquivocationProof {
                    a: Some(place(b"one")),
                    b: Some(place(b"two")),
                }
                .encode_to_vec(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_proven_equivocation_takes_the_score_and_the_pay_and_a_forged_one_does_nothing() {
        let mut w = world();
        let v = Identity::generate().expect("k");
        w.members.0.insert(
            "v".into(),
            Member {
                id: "v".into(),
                role: pb::MemberRole::Validator,
                key: v.public(),
                removed: false,
            },
        );
        let t = 10 * DAY + 3_800_000;
        let mut entries = claim(&w, "e1", 10 * DAY, 20.0, 25_000, 10 * DAY + 3_700_000);
        let mut later = claim(
            &w,
            "e2",
            10 * DAY + 4_000_000,
            20.0,
            25_000,
            10 * DAY + 8_000_000,
        );
        for c in &mut later {
            c.entry.seq += 2;
        }
        entries.extend(later);
        let honest = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert!(honest.lines.iter().all(|l| l.note == "paid"));

        // A validator's proof, between the two claims: the second is not paid.
        let mut proven = entries.clone();
        proven.push(accusation(&w.gw, "v", t));
        let s = settle(10 * DAY, 11 * DAY, &proven, &w.members, &terms());
        let note = |id: &str| {
            s.lines
                .iter()
                .find(|l| l.event_id == id)
                .map(|l| (l.note, l.payment_milli))
        };
        assert_eq!(note("e1"), Some(("paid", 40_000)));
        assert_eq!(note("e2"), Some(("excluded", 0)));
        let st = &s.standing["gw"];
        assert!(st.score < THRESHOLD_SCORE, "{st:?}");
        assert_eq!(
            (st.offences, st.excluded_until_ms),
            (1, t + PROBATION_BASE_MS)
        );
        // The same proof twice (two validators found it) is one offence.
        proven.push(accusation(&w.gw, "v", t + 1));
        let twice = settle(10 * DAY, 11 * DAY, &proven, &w.members, &terms());
        assert_eq!(twice.standing["gw"].offences, 1);

        // A "proof" of entries gw never signed, or one logged by a non-validator, is nothing.
        for forged in [accusation(&w.operator, "v", t), accusation(&w.gw, "op", t)] {
            let mut e = entries.clone();
            e.push(forged);
            let f = settle(10 * DAY, 11 * DAY, &e, &w.members, &terms());
            assert_eq!(f.hash(), honest.hash());
        }
    }

    #[test]
    fn a_shortfall_pays_a_penalty_and_repeated_ones_exclude_the_member() {
        let w = world();
        // Half of 20 kW: 10 kWh delivered, the threshold is 16: penalty 6 kWh at 1.000.
        let entries = claim(&w, "e1", 10 * DAY, 20.0, 10_000, 10 * DAY + 3_700_000);
        let s = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert_eq!(
            (s.lines[0].payment_milli, s.lines[0].penalty_milli),
            (20_000, 6_000)
        );
        assert_eq!(s.lines[0].note, "shortfall");
        // Seven shortfalls, a day apart: 500 - 7 x 30 = 290, below 300: excluded for a day.
        let mut all = Vec::new();
        for k in 0..7 {
            let start = (10 + k) * DAY;
            all.extend(claim(
                &w,
                &format!("e{k}"),
                start,
                20.0,
                10_000,
                start + 3_700_000,
            ));
        }
        // Two hours later, inside the probation: not paid, and a second offence (two days).
        let start = 16 * DAY + 7_200_000;
        all.extend(claim(&w, "e7", start, 20.0, 10_000, start + 3_700_000));
        let s = settle(16 * DAY, 17 * DAY, &all, &w.members, &terms());
        let e7 = s.lines.iter().find(|l| l.event_id == "e7").expect("e7");
        assert_eq!((e7.note, e7.payment_milli), ("excluded", 0));
        assert_eq!(s.standing["gw"].offences, 2);
        // Three days later, a clean delivery: back in, paid again.
        let start = 19 * DAY + 7_200_000;
        all.extend(claim(&w, "e8", start, 20.0, 25_000, start + 3_700_000));
        let s = settle(19 * DAY, 20 * DAY, &all, &w.members, &terms());
        assert_eq!(
            (s.lines[0].note, s.lines[0].payment_milli),
            ("paid", 40_000)
        );
        assert_eq!(s.standing["gw"].excluded_until_ms, 0);
        assert!(s.standing["gw"].score >= THRESHOLD_SCORE);
        // A forged report (signed by the operator, not the gateway) settles nothing.
        let mut forged = claim(&w, "f", 10 * DAY, 20.0, 25_000, 10 * DAY + 1);
        let report =
            pb::SignedPerformanceReport::decode(forged[1].entry.payload.as_slice()).expect("r");
        let resigned = gridgate_core::signed::sign_report(
            &w.operator,
            &pb::PerformanceReport::decode(report.report.as_slice()).expect("r"),
        );
        forged[1].entry.payload = resigned.encode_to_vec();
        assert!(
            settle(10 * DAY, 11 * DAY, &forged, &w.members, &terms())
                .lines
                .is_empty()
        );
    }

    /// An entry of the operator's own log.
    fn operator_entry(seq: u64, at_ms: i64, kind: pb::EntryKind, payload: Vec<u8>) -> Certified {
        Certified {
            entry: pb::Entry {
                origin: "op".into(),
                seq,
                timestamp_ms: at_ms,
                kind: kind as i32,
                payload,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_operators_certified_terms_settle_the_events_that_start_after_they_take_effect() {
        let w = world();
        let mut entries = claim(&w, "e1", 10 * DAY, 20.0, 25_000, 10 * DAY + 3_700_000);
        entries.extend(claim(
            &w,
            "e2",
            12 * DAY,
            20.0,
            25_000,
            12 * DAY + 3_700_000,
        ));
        for c in entries.iter_mut().skip(2) {
            c.entry.seq += 2;
        }
        // New terms for events from day 11: 3.000 per kWh instead of the genesis 2.000.
        let terms_entry = |origin_role_ok: bool, price| {
            let mut e = operator_entry(
                0,
                9 * DAY,
                pb::EntryKind::ProgramTerms,
                pb::ProgramTerms {
                    program: "peak".into(),
                    price_milli_per_kwh: price,
                    cap_percent: 100,
                    threshold_percent: 80,
                    penalty_milli_per_kwh: 1_000,
                    effective_ms: 11 * DAY,
                }
                .encode_to_vec(),
            );
            if !origin_role_ok {
                e.entry.origin = "gw".into();
            }
            e
        };
        let paid = |entries: &[Certified], day: i64| {
            settle(day * DAY, (day + 1) * DAY, entries, &w.members, &terms()).lines[0].payment_milli
        };
        let mut with_terms = entries.clone();
        with_terms.push(terms_entry(true, 3_000));
        assert_eq!(paid(&with_terms, 10), 40_000, "before they take effect");
        assert_eq!(paid(&with_terms, 12), 60_000, "after");
        // Terms a gateway logs, or nonsense terms, are not the program's.
        let mut from_gateway = entries.clone();
        from_gateway.push(terms_entry(false, 3_000));
        assert_eq!(paid(&from_gateway, 12), 40_000);
        let mut negative = entries.clone();
        negative.push(terms_entry(true, -1));
        assert_eq!(paid(&negative, 12), 40_000);
    }

    #[test]
    fn a_named_gateway_that_never_reports_has_missed_the_event_once_a_day_has_passed() {
        let mut w = world();
        let gw2 = Identity::generate().expect("k");
        w.members.0.insert(
            "gw2".into(),
            Member {
                id: "gw2".into(),
                role: pb::MemberRole::Gateway,
                key: gw2.public(),
                removed: false,
            },
        );
        let start = 10 * DAY;
        // The event names both; gw reports, gw2 does not.
        let entries = claim_by(
            &w,
            ("gw", &w.gw),
            &["gw", "gw2"],
            "e1",
            start,
            20.0,
            25_000,
            start + 3_700_000,
        );
        let end = start + 3_600_000;
        // The day of the event, settled before the day after its end has passed: no miss yet.
        let early = settle_as_of(
            start,
            start + DAY,
            end + MISSED_AFTER_MS - 1,
            &entries,
            &w.members,
            &terms(),
        );
        assert_eq!(early.lines.len(), 1);
        assert_eq!(early.standing["gw2"].score, START_SCORE);
        let s = settle(start, 12 * DAY, &entries, &w.members, &terms());
        let line = |g: &str| s.lines.iter().find(|l| l.gateway == g).map(|l| l.note);
        assert_eq!(line("gw"), Some("paid"));
        assert_eq!(line("gw2"), Some("missed"));
        assert_eq!(s.standing["gw2"].score, START_SCORE + MISSED_DELTA);
        assert_eq!(s.standing["gw"].score, START_SCORE + 10);
        // A report two days late is a miss too: listed once, not paid.
        let mut late = entries.clone();
        let mut gw2_report = claim_by(
            &w,
            ("gw2", &gw2),
            &["gw", "gw2"],
            "e1",
            start,
            20.0,
            25_000,
            start + 2 * DAY,
        );
        late.push(gw2_report.remove(1));
        let s = settle(start, 13 * DAY, &late, &w.members, &terms());
        let gw2_lines: Vec<_> = s.lines.iter().filter(|l| l.gateway == "gw2").collect();
        assert_eq!(gw2_lines.len(), 1);
        assert_eq!(
            (gw2_lines[0].note, gw2_lines[0].payment_milli),
            ("missed", 0)
        );
        assert_eq!(s.standing["gw2"].score, START_SCORE + MISSED_DELTA);
        // An event that names nobody is missed by nobody.
        let unnamed = claim(&w, "e2", start, 20.0, 25_000, start + 3_700_000);
        let s = settle(start, 13 * DAY, &unnamed, &w.members, &terms());
        assert_eq!(s.standing["gw2"].score, START_SCORE);
    }

    #[test]
    fn a_gateway_added_by_a_certified_change_is_settled_and_a_change_without_quorum_is_not() {
        let mut w = world();
        let validators: Vec<Identity> = (0..4).map(|_| Identity::generate().expect("k")).collect();
        for (i, v) in validators.iter().enumerate() {
            w.members.0.insert(
                format!("v{i}"),
                Member {
                    id: format!("v{i}"),
                    role: pb::MemberRole::Validator,
                    key: v.public(),
                    removed: false,
                },
            );
        }
        let newcomer = Identity::generate().expect("k");
        let change = pb::MembershipChange {
            id: "add-gw9".into(),
            add: vec![pb::MemberRecord {
                id: "gw9".into(),
                role: pb::MemberRole::Gateway as i32,
                public_key: newcomer.public().to_bytes().to_vec(),
            }],
            remove: vec![],
            proposed_ms: 9 * DAY,
        }
        .encode_to_vec();
        let signed = |approvers: usize| pb::SignedMembershipChange {
            approvals: (0..approvers)
                .map(|i| crate::membership::approve(&change, &format!("v{i}"), &validators[i]))
                .collect(),
            change: change.clone(),
        };
        let start = 10 * DAY;
        let claim9 = claim_by(
            &w,
            ("gw9", &newcomer),
            &[],
            "e1",
            start,
            20.0,
            25_000,
            start + 3_700_000,
        );
        let settle_with = |approvers: usize| {
            let mut e = claim9.clone();
            e.push(operator_entry(
                5,
                9 * DAY,
                pb::EntryKind::Membership,
                signed(approvers).encode_to_vec(),
            ));
            settle(start, start + DAY, &e, &w.members, &terms())
        };
        let s = settle_with(3);
        assert_eq!(s.lines.len(), 1);
        assert_eq!(
            (s.lines[0].gateway.as_str(), s.lines[0].note),
            ("gw9", "paid")
        );
        assert_eq!(s.standing["gw9"].score, START_SCORE + 10);
        let s = settle_with(2);
        assert!(
            s.lines.is_empty(),
            "two approvals of four validators add nobody"
        );
        assert!(!s.standing.contains_key("gw9"));
    }

    #[test]
    fn a_report_logged_after_midnight_settles_on_the_day_its_event_started() {
        let w = world();
        let start = 10 * DAY + 23 * 3_600_000;
        let entries = claim(&w, "e1", start, 20.0, 25_000, 11 * DAY + 1_800_000);
        let closed = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert_eq!(closed.lines.len(), 1);
        assert_eq!(closed.lines[0].note, "paid");
        // Settled at midnight, before the report was logged: provisional, without it.
        let early = settle_as_of(10 * DAY, 11 * DAY, 11 * DAY, &entries, &w.members, &terms());
        assert!(early.lines.is_empty());
        assert_ne!(early.hash(), closed.hash());
        // Past the close, nothing logged later changes the statement.
        let late = settle_as_of(10 * DAY, 11 * DAY, 20 * DAY, &entries, &w.members, &terms());
        assert_eq!(late.hash(), closed.hash());
    }

    #[test]
    fn a_gateway_that_logs_a_forged_signature_falls_hard_and_sits_out_a_probation() {
        let w = world();
        // Its report of e1 re-signed by another key, in its own (signed) log entry.
        let mut entries = claim(&w, "e1", 10 * DAY, 20.0, 25_000, 10 * DAY + 3_700_000);
        let report =
            pb::SignedPerformanceReport::decode(entries[1].entry.payload.as_slice()).expect("r");
        let stranger = Identity::generate().expect("k");
        let resigned = gridgate_core::signed::sign_report(
            &stranger,
            &pb::PerformanceReport::decode(report.report.as_slice()).expect("r"),
        );
        entries[1].entry.payload = resigned.encode_to_vec();
        // An honest claim two hours later.
        let mut later = claim(
            &w,
            "e2",
            10 * DAY + 7_200_000,
            20.0,
            25_000,
            10 * DAY + 11_000_000,
        );
        for c in &mut later {
            c.entry.seq += 2;
        }
        entries.extend(later);
        let s = settle(10 * DAY, 11 * DAY, &entries, &w.members, &terms());
        let st = &s.standing["gw"];
        assert_eq!(st.offences, 1, "{st:?}");
        assert_eq!(
            st.excluded_until_ms,
            10 * DAY + 3_700_000 + PROBATION_BASE_MS
        );
        assert_eq!(s.lines.len(), 1, "the forged claim is no claim");
        assert_eq!(
            (s.lines[0].event_id.as_str(), s.lines[0].note),
            ("e2", "excluded")
        );
        // The same entries from the operator's log are nobody's offence.
        let mut from_operator = entries.clone();
        from_operator[1].entry.origin = "op".into();
        let s = settle(10 * DAY, 11 * DAY, &from_operator, &w.members, &terms());
        assert_eq!(s.standing["gw"].offences, 0);
    }
}
