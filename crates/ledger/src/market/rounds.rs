//! Rounds of price discovery on the decided cuts (docs/market.md, Rounds): which cut opens
//! discovery for an interval, which closes each round, which answers count, and the
//! clearing. A function of the cuts and the answers they order, fed one cut at a time in
//! height order, so every replica that holds the same cuts computes the same rounds.

use std::collections::BTreeMap;

use gridgate_proto::v1 as pb;

use super::{Clearing, Discovery, MarketTerms, Next, Stop, clear};

/// An answer larger than this either way (a terawatt-hour in one interval) is not counted:
/// no member trades that, and the sums of a million answers stay far from overflow.
pub const MAX_ANSWER_WH: i64 = 1_000_000_000_000;

/// When discovery runs for an interval, from the market's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The delivery interval's length, ms.
    pub interval_ms: i64,
    /// Discovery opens this long before the interval starts, ms.
    pub lead_ms: i64,
    /// Gate closure: this long before it starts, ms.
    pub gate_ms: i64,
    /// A round's length, ms.
    pub round_ms: i64,
}

/// A round's length when the terms do not say (`round_s = 0`).
pub const DEFAULT_ROUND_MS: i64 = 10_000;

/// The schedule the terms set (for terms `terms_of` accepts).
pub fn schedule_of(t: &pb::MarketTerms) -> Schedule {
    Schedule {
        interval_ms: i64::from(t.interval_s) * 1_000,
        lead_ms: i64::from(t.lead_s) * 1_000,
        gate_ms: i64::from(t.gate_closure_s) * 1_000,
        round_ms: if t.round_s == 0 {
            DEFAULT_ROUND_MS
        } else {
            i64::from(t.round_s) * 1_000
        },
    }
}

impl Schedule {
    /// When discovery for the interval starting at `start` opens.
    pub fn opens(&self, start: i64) -> i64 {
        start - self.lead_ms
    }

    /// Its gate closure.
    pub fn gate(&self, start: i64) -> i64 {
        start - self.gate_ms
    }

    /// The start of the interval that `t` falls in (intervals are aligned on the epoch).
    pub fn interval_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.interval_ms.max(1))
    }

    /// The starts of the intervals whose discovery is open at `t` (opened, gate not
    /// closed), earliest first.
    pub fn open_at(&self, t: i64) -> Vec<i64> {
        let step = self.interval_ms.max(1);
        // The first start whose gate closure is still ahead.
        let mut start = self.interval_of(t + self.gate_ms) + step;
        let mut out = Vec::new();
        while self.opens(start) <= t {
            out.push(start);
            start += step;
        }
        out
    }
}

/// A member's answer as a decided cut orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The member.
    pub member: String,
    /// The round it answers.
    pub round: u32,
    /// The price it answers at.
    pub price: i64,
    /// Its net position, Wh.
    pub quantity_wh: i64,
}

/// A round that closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundResult {
    /// The round.
    pub round: u32,
    /// Its price.
    pub price: i64,
    /// The decided cut that opened it.
    pub opened_height: u64,
    /// The one that closed it.
    pub closed_height: u64,
    /// The sum of the standing answers when it closed, Wh.
    pub imbalance_wh: i64,
    /// Members whose answer for it counted.
    pub answered: u32,
}

/// The end of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// The clearing.
    pub clearing: Clearing,
    /// Why discovery stopped.
    pub stop: Stop,
    /// The cut that closed the last round.
    pub closed_height: u64,
}

/// Where an interval's discovery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No decided cut at or after its opening yet.
    Waiting,
    /// A round is under way.
    Open {
        /// The round.
        round: u32,
        /// Its price.
        price: i64,
        /// The cut that opened it.
        opened_height: u64,
        /// That cut's time.
        opened_ms: i64,
    },
    /// Discovery is over.
    Final(Final),
    /// The first decided cut at or after the opening was past gate closure: no
    /// discovery, everyone trades with the grid.
    Missed,
}

/// What one cut changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// Discovery opened: round 1 at this price.
    Opened,
    /// A round closed and the next opened.
    NextRound,
    /// A round closed and discovery is over.
    Cleared,
    /// The opening cut came after gate closure.
    Missed,
}

/// One interval's discovery, fed decided cuts in height order.
#[derive(Debug, Clone)]
pub struct Rounds {
    terms: MarketTerms,
    schedule: Schedule,
    interval_ms: i64,
    discovery: Discovery,
    state: State,
    history: Vec<RoundResult>,
    /// Answers ordered since discovery opened for the round under way or a later one.
    pending: Vec<Answer>,
    /// Each member's last counted answer.
    standing: BTreeMap<String, i64>,
    /// The standing answers at each price a round asked (the latest such round).
    asked: BTreeMap<i64, BTreeMap<String, i64>>,
    last_height: u64,
    /// Members whose answers are ignored: excluded by their reputation when discovery opened.
    excluded: std::collections::BTreeSet<String>,
    /// The members heard at all (the gateways of the membership when discovery opened);
    /// `None`: anyone.
    heard: Option<std::collections::BTreeSet<String>>,
}

impl Rounds {
    /// Discovery for the interval starting at `interval_ms` under these terms.
    pub fn new(terms: MarketTerms, schedule: Schedule, interval_ms: i64) -> Rounds {
        Rounds {
            discovery: Discovery::start(&terms),
            terms,
            schedule,
            interval_ms,
            state: State::Waiting,
            history: Vec::new(),
            pending: Vec::new(),
            standing: BTreeMap::new(),
            asked: BTreeMap::new(),
            last_height: 0,
            excluded: Default::default(),
            heard: None,
        }
    }

    /// The same, hearing only `members`.
    pub fn hearing(mut self, members: std::collections::BTreeSet<String>) -> Rounds {
        self.heard = Some(members);
        self
    }

    /// The same, ignoring the answers of `excluded` members.
    pub fn excluding(mut self, excluded: std::collections::BTreeSet<String>) -> Rounds {
        self.excluded = excluded;
        self
    }

    /// Where it stands.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The rounds closed so far, in order.
    pub fn history(&self) -> &[RoundResult] {
        &self.history
    }

    /// The interval's start.
    pub fn interval_ms(&self) -> i64 {
        self.interval_ms
    }

    /// The last cut fed.
    pub fn last_height(&self) -> u64 {
        self.last_height
    }

    /// The next decided cut: its height (above the last fed; one fed twice is ignored),
    /// time, and the answers for this area and interval it orders, in log order, of
    /// members allowed to trade.
    pub fn on_cut(&mut self, height: u64, time_ms: i64, answers: Vec<Answer>) -> Change {
        if height <= self.last_height && self.last_height != 0 {
            return Change::None;
        }
        self.last_height = height;
        let mut change = Change::None;
        if self.state == State::Waiting {
            if time_ms < self.schedule.opens(self.interval_ms) {
                return Change::None;
            }
            if time_ms >= self.schedule.gate(self.interval_ms) {
                self.state = State::Missed;
                return Change::Missed;
            }
            self.state = State::Open {
                round: 1,
                price: self.discovery.price,
                opened_height: height,
                opened_ms: time_ms,
            };
            change = Change::Opened;
        }
        let State::Open {
            round,
            price,
            opened_height,
            opened_ms,
        } = self.state
        else {
            return change;
        };
        self.pending.extend(answers.into_iter().filter(|a| {
            a.round >= round
                && a.quantity_wh.unsigned_abs() <= MAX_ANSWER_WH as u64
                && !self.excluded.contains(&a.member)
                && self.heard.as_ref().is_none_or(|h| h.contains(&a.member))
        }));
        let gate = self.schedule.gate(self.interval_ms);
        let closes = (opened_ms + self.schedule.round_ms).min(gate);
        if height == opened_height || time_ms < closes {
            return change;
        }
        // The round closes: its answers at its price replace the members' standing ones.
        let mut answered = std::collections::BTreeSet::new();
        for a in self
            .pending
            .iter()
            .filter(|a| a.round == round && a.price == price)
        {
            self.standing.insert(a.member.clone(), a.quantity_wh);
            answered.insert(a.member.clone());
        }
        self.pending.retain(|a| a.round > round);
        let sum: i128 = self.standing.values().map(|q| i128::from(*q)).sum();
        let imbalance = sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.asked.insert(price, self.standing.clone());
        self.history.push(RoundResult {
            round,
            price,
            opened_height,
            closed_height: height,
            imbalance_wh: imbalance,
            answered: answered.len() as u32,
        });
        let next = match self.discovery.next(&self.terms, imbalance) {
            Next::Round { .. } if time_ms >= gate => Next::Final {
                price,
                why: Stop::GateClosed,
            },
            n => n,
        };
        match next {
            Next::Round { price: p } => {
                self.state = State::Open {
                    round: self.discovery.round,
                    price: p,
                    opened_height: height,
                    opened_ms: time_ms,
                };
                Change::NextRound
            }
            Next::Final { price: p, why } => {
                // The answers standing when that price was asked (it was: this round's
                // price or an end of the bracket an earlier round asked).
                let at = self.asked.get(&p).unwrap_or(&self.standing);
                self.state = State::Final(Final {
                    clearing: clear(p, at),
                    stop: why,
                    closed_height: height,
                });
                self.pending.clear();
                Change::Cleared
            }
        }
    }

    /// The clearing as validators log it, once discovery is over.
    pub fn record(&self, area: &str) -> Option<pb::MarketClearing> {
        let State::Final(f) = &self.state else {
            return None;
        };
        Some(pb::MarketClearing {
            area: area.to_string(),
            interval_ms: self.interval_ms,
            price_milli_per_kwh: f.clearing.price,
            stop: f.stop.name().to_string(),
            rounds: self.history.len() as u32,
            closed_height: f.closed_height,
            matched_wh: f.clearing.matched_wh,
            members: f
                .clearing
                .members
                .iter()
                .map(|(m, a)| pb::MarketAllocation {
                    member: m.clone(),
                    asked_wh: a.asked_wh,
                    matched_wh: a.matched_wh,
                    grid_wh: a.grid_wh,
                })
                .collect(),
            prices: self.history.iter().map(|r| r.price).collect(),
            imbalances_wh: self.history.iter().map(|r| r.imbalance_wh).collect(),
        })
    }

    /// The round under way as validators log it (with the previous round's imbalance).
    pub fn round_record(&self, area: &str) -> Option<pb::MarketRound> {
        let State::Open {
            round,
            price,
            opened_height,
            ..
        } = self.state
        else {
            return None;
        };
        Some(pb::MarketRound {
            area: area.to_string(),
            interval_ms: self.interval_ms,
            round,
            price_milli_per_kwh: price,
            opened_height,
            previous_imbalance_wh: self.history.last().map_or(0, |r| r.imbalance_wh),
        })
    }
}

/// The clearing `records` (each validator's, by validator id, as it logged them) make
/// final: the one at least `quorum` distinct validators logged byte for byte. An honest
/// validator logs one clearing per interval, so two quorums cannot disagree.
pub fn final_clearing<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    quorum: usize,
) -> Option<&'a [u8]> {
    let mut by: BTreeMap<&[u8], std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (v, bytes) in records {
        by.entry(bytes).or_default().insert(v);
    }
    by.into_iter()
        .find(|(_, vs)| vs.len() >= quorum.max(1))
        .map(|(b, _)| b)
}

/// The price of a round that `announced` (validator, round record) agree on: at least
/// `at_least` distinct validators (f+1: one of them honest) announcing the same price for
/// the round. A gateway answers at it; an answer at a price no honest validator asked is
/// not counted, so a lying validator costs a gateway one round at most.
pub fn agreed_price(
    announced: &[(String, pb::MarketRound)],
    round: u32,
    at_least: usize,
) -> Option<i64> {
    let mut by: BTreeMap<i64, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (v, r) in announced.iter().filter(|(_, r)| r.round == round) {
        by.entry(r.price_milli_per_kwh).or_default().insert(v);
    }
    by.into_iter()
        .find(|(_, vs)| vs.len() >= at_least.max(1))
        .map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quarter-hour boundary (2027-01-15 08:00 UTC).
    const START: i64 = 1_800_000_000_000;

    fn terms() -> MarketTerms {
        MarketTerms {
            floor: 400,
            cap: 1_200,
            tolerance_wh: 100,
            max_rounds: 30,
        }
    }

    fn schedule() -> Schedule {
        Schedule {
            interval_ms: 900_000,
            lead_ms: 600_000,
            gate_ms: 60_000,
            round_ms: 3_000,
        }
    }

    /// The worked example's members (docs/market.md).
    fn worked(member: &str, p: i64) -> i64 {
        match member {
            "pv" => -2_000,
            "storage" if p >= 800 => -3_000,
            "storage" if p < 600 => 1_000,
            "storage" => 0,
            _ if p >= 900 => 3_000,
            _ => 6_000,
        }
    }

    /// Feeds a cut a second from `opens`; every member in `answering` answers each round
    /// at the price under way, ordered by the next cut.
    fn run(r: &mut Rounds, answering: &[&str], cuts: u64) {
        let mut height = 100;
        let opens = schedule().opens(START);
        let mut due: Vec<Answer> = Vec::new();
        for i in 0..cuts {
            height += 1;
            r.on_cut(height, opens + i as i64 * 1_000, std::mem::take(&mut due));
            if let State::Open { round, price, .. } = *r.state() {
                due = answering
                    .iter()
                    .map(|m| Answer {
                        member: m.to_string(),
                        round,
                        price,
                        quantity_wh: worked(m, price),
                    })
                    .collect();
            }
        }
    }

    #[test]
    fn rounds_on_cuts_reach_the_worked_example_price_and_clear_at_it() {
        let mut r = Rounds::new(terms(), schedule(), START);
        run(&mut r, &["factory", "pv", "storage"], 100);
        let State::Final(f) = r.state() else {
            panic!("not final: {:?}", r.state());
        };
        assert_eq!((f.clearing.price, f.stop), (899, Stop::Bracketed));
        let prices: Vec<i64> = r.history().iter().map(|h| h.price).collect();
        assert_eq!(prices, [800, 1_000, 900, 850, 875, 887, 893, 896, 898, 899]);
        assert!(r.history().iter().all(|h| h.answered == 3));
        // A round lasts 3 s of cut time: closed by the third cut after it opened.
        assert!(
            r.history()
                .iter()
                .all(|h| h.closed_height == h.opened_height + 3)
        );
        assert_eq!(f.clearing.members["factory"].grid_wh, 1_000);
        let rec = r.record("feeder-7").expect("record");
        assert_eq!(rec.members.len(), 3);
        assert_eq!(rec.prices.len(), 10);
        assert_eq!(rec.stop, "bracketed");
    }

    #[test]
    fn an_answer_at_another_price_or_after_its_round_closed_does_not_count() {
        let mut r = Rounds::new(terms(), schedule(), START);
        let opens = schedule().opens(START);
        let a = |member: &str, round, price, q| Answer {
            member: member.into(),
            round,
            price,
            quantity_wh: q,
        };
        assert_eq!(r.on_cut(1, opens - 1, vec![]), Change::None);
        assert_eq!(r.state(), &State::Waiting);
        assert_eq!(
            r.on_cut(2, opens, vec![a("early", 1, 800, 9_000)]),
            Change::Opened
        );
        // A liar's price, a member answering at 800 twice (the later counts), and one
        // answering too big to be real.
        r.on_cut(
            3,
            opens + 1_000,
            vec![
                a("fooled", 1, 801, 7_000),
                a("twice", 1, 800, 5_000),
                a("twice", 1, 800, -1_000),
                a("huge", 1, 800, MAX_ANSWER_WH + 1),
                a("absurd", 1, 800, i64::MIN),
            ],
        );
        assert_eq!(r.on_cut(4, opens + 3_000, vec![]), Change::NextRound);
        let h = &r.history()[0];
        assert_eq!((h.imbalance_wh, h.answered), (8_000, 2), "early + twice");
        // Ordered after round 1 closed: too late for it, and it is not for round 2.
        r.on_cut(5, opens + 4_000, vec![a("late", 1, 800, -50_000)]);
        assert_eq!(r.on_cut(6, opens + 6_000, vec![]), Change::NextRound);
        // Nobody answered round 2 (price 1,000): the standing answers count again.
        assert_eq!(r.history()[1].imbalance_wh, 8_000);
        assert_eq!(r.history()[1].answered, 0);
        // A cut fed twice changes nothing.
        assert_eq!(r.on_cut(6, opens + 6_000, vec![]), Change::None);
    }

    #[test]
    fn an_excluded_member_answers_in_vain() {
        let mut r = Rounds::new(terms(), schedule(), START)
            .hearing(["factory", "pv", "storage"].map(String::from).into())
            .excluding(std::collections::BTreeSet::from(["factory".to_string()]));
        run(&mut r, &["factory", "pv", "storage"], 100);
        let State::Final(f) = r.state() else {
            panic!("not final");
        };
        // Only sellers are left: at the floor they still sell, and the grid takes it.
        assert_eq!((f.clearing.price, f.stop), (400, Stop::AtBound));
        assert!(!f.clearing.members.contains_key("factory"));
        // Neither is one that is not a member (a stranger, or a validator's log).
        let mut r = Rounds::new(terms(), schedule(), START)
            .hearing(["pv", "storage"].map(String::from).into());
        run(&mut r, &["factory", "pv", "storage"], 100);
        let State::Final(f) = r.state() else {
            panic!("not final");
        };
        assert!(!f.clearing.members.contains_key("factory"));
    }

    #[test]
    fn gate_closure_ends_discovery_at_the_last_price_and_a_late_opening_is_missed() {
        let t = MarketTerms {
            tolerance_wh: 0,
            ..terms()
        };
        let s = schedule();
        let mut r = Rounds::new(t, s, START);
        r.on_cut(1, s.opens(START), vec![]);
        let buy = |round, price| Answer {
            member: "buyer".into(),
            round,
            price,
            quantity_wh: 1_000,
        };
        // One round, then the next cut is past gate closure.
        r.on_cut(2, s.opens(START) + 3_000, vec![buy(1, 800)]);
        assert_eq!(r.on_cut(3, s.gate(START), vec![]), Change::Cleared);
        let State::Final(f) = r.state() else {
            panic!("not final");
        };
        assert_eq!((f.clearing.price, f.stop), (1_000, Stop::GateClosed));
        assert_eq!(f.clearing.members["buyer"].grid_wh, 1_000);

        let mut late = Rounds::new(t, s, START);
        assert_eq!(late.on_cut(9, s.gate(START), vec![]), Change::Missed);
        assert_eq!(late.record("a"), None);
    }

    #[test]
    fn the_intervals_open_at_a_time_are_those_between_lead_and_gate() {
        let s = schedule();
        // 10 min lead, 1 min gate, 15 min intervals: at START - 5 min, START is open (and
        // nothing later: START + 15 min opens at START + 5 min).
        assert_eq!(s.open_at(START - 300_000), [START]);
        assert_eq!(s.open_at(START - 60_000), Vec::<i64>::new(), "gate closed");
        assert_eq!(s.open_at(START - 600_001), Vec::<i64>::new(), "not yet");
        assert_eq!(s.open_at(START - 600_000), [START]);
        let long = Schedule {
            lead_ms: 3_600_000,
            ..s
        };
        // START itself is past its gate; the next three are open.
        assert_eq!(
            long.open_at(START - 30_000),
            [1, 2, 3].map(|i| START + i * 900_000)
        );
    }

    #[test]
    fn a_clearing_is_final_with_a_quorum_of_identical_records_and_a_price_with_f_plus_one() {
        let honest = b"clearing".as_slice();
        let other = b"forged".as_slice();
        let recs = [
            ("v0", honest),
            ("v1", honest),
            ("v2", other),
            ("v2", honest),
        ];
        assert_eq!(final_clearing(recs, 3), Some(honest));
        assert_eq!(
            final_clearing([("v0", honest), ("v1", honest), ("v1", honest)], 3),
            None
        );
        assert_eq!(
            final_clearing([("v0", other), ("v1", other), ("v2", honest)], 3),
            None
        );
        let round = |v: &str, price| {
            (
                v.to_string(),
                pb::MarketRound {
                    round: 2,
                    price_milli_per_kwh: price,
                    ..Default::default()
                },
            )
        };
        let said = [round("v0", 1_000), round("v3", 5), round("v1", 1_000)];
        assert_eq!(agreed_price(&said, 2, 2), Some(1_000));
        assert_eq!(agreed_price(&said, 2, 3), None);
        assert_eq!(agreed_price(&said, 3, 1), None);
    }
}
