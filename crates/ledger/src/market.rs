//! The flexibility market's mechanism (docs/market.md), pure: the price of each round from
//! the members' answers, when discovery stops, and the clearing at the final price. Every
//! validator computes it from the same answers (those the decided cuts order), in integer
//! arithmetic, so every validator's clearing is the same to the last watt-hour.
//!
//! Quantities are watt-hours for one delivery interval: positive buys, negative sells.
//! Prices are milli-units of currency per kWh, between the market's floor (the feed-in
//! tariff) and cap (the retail tariff).

use std::collections::BTreeMap;

mod rounds;
pub use rounds::*;

/// The market's terms for an area (certified from the operator's log, like program terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketTerms {
    /// Lowest price: what the grid pays for energy fed in (milli per kWh).
    pub floor: i64,
    /// Highest price: what the grid charges (milli per kWh).
    pub cap: i64,
    /// Discovery stops once the imbalance is within this many Wh either way.
    pub tolerance_wh: i64,
    /// Rounds at most.
    pub max_rounds: u32,
}

/// The discovery terms a certified `MarketTerms` entry sets, if it makes sense: an area
/// named, 0 <= floor <= cap, a tolerance not negative, 1..=64 rounds, an interval of a
/// minute to a day, gate closure before the lead, a penalty not negative, rounds of at most ten minutes.
pub fn terms_of(t: &gridgate_proto::v1::MarketTerms) -> Option<MarketTerms> {
    let sane = !t.area.is_empty()
        && 0 <= t.floor_milli_per_kwh
        && t.floor_milli_per_kwh <= t.cap_milli_per_kwh
        && t.tolerance_wh >= 0
        && (1..=64).contains(&t.max_rounds)
        && (60..=86_400).contains(&t.interval_s)
        && t.gate_closure_s < t.lead_s
        && t.penalty_milli_per_kwh >= 0
        && t.round_s <= 600;
    sane.then_some(MarketTerms {
        floor: t.floor_milli_per_kwh,
        cap: t.cap_milli_per_kwh,
        tolerance_wh: t.tolerance_wh,
        max_rounds: t.max_rounds,
    })
}

/// Where price discovery stands after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another round at this price.
    Round {
        /// Its price.
        price: i64,
    },
    /// Discovery is over at this price.
    Final {
        /// The clearing price.
        price: i64,
        /// Why it stopped.
        why: Stop,
    },
}

/// Why discovery stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The imbalance is within the tolerance.
    Balanced,
    /// The bracket is one price unit wide: no price in between balances better.
    Bracketed,
    /// Even at the floor there is more to sell than to buy, or even at the cap more to buy
    /// than to sell: the grid takes or gives the rest.
    AtBound,
    /// The rounds ran out.
    OutOfRounds,
    /// Gate closure came first: the last round's price stands.
    GateClosed,
}

impl Stop {
    /// As the clearing record and the tools say it.
    pub fn name(self) -> &'static str {
        match self {
            Stop::Balanced => "balanced",
            Stop::Bracketed => "bracketed",
            Stop::AtBound => "at-bound",
            Stop::OutOfRounds => "out-of-rounds",
            Stop::GateClosed => "gate-closed",
        }
    }
}

/// Price discovery by bisection on the bracket [low, high]: the price that balances lies
/// in it. Demand net of supply is non-increasing in the price for every member (by how
/// the agents answer), so where the imbalance is positive the balancing price is higher,
/// where negative lower: each round halves the bracket, and discovery ends within
/// ceil(log2(cap - floor)) + 2 rounds whatever the answers (see docs/market.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    /// The bracket's low end: at it buyers want more than sellers offer (when known).
    pub low: i64,
    /// Its high end: at it sellers offer more than buyers want (when known).
    pub high: i64,
    /// The imbalance answered at `low`, once a round asked that price.
    pub at_low: Option<i64>,
    /// The imbalance answered at `high`, once a round asked that price.
    pub at_high: Option<i64>,
    /// The price of the round under way.
    pub price: i64,
    /// Rounds asked so far (the one under way included).
    pub round: u32,
}

impl Discovery {
    /// The first round: the middle of [floor, cap].
    pub fn start(t: &MarketTerms) -> Discovery {
        let (low, high) = (t.floor.min(t.cap), t.cap.max(t.floor));
        Discovery {
            low,
            high,
            at_low: None,
            at_high: None,
            price: midpoint(low, high),
            round: 1,
        }
    }

    /// What follows a round whose answers sum to `imbalance_wh` (demand minus supply at
    /// this round's price). `self` moves to the next round when there is one.
    pub fn next(&mut self, t: &MarketTerms, imbalance_wh: i64) -> Next {
        let p = self.price;
        let done = |price, why| Next::Final { price, why };
        if imbalance_wh.abs() <= t.tolerance_wh {
            return done(p, Stop::Balanced);
        }
        if imbalance_wh > 0 {
            (self.low, self.at_low) = (p, Some(imbalance_wh));
        } else {
            (self.high, self.at_high) = (p, Some(imbalance_wh));
        }
        if (imbalance_wh > 0 && p >= t.cap.max(t.floor))
            || (imbalance_wh < 0 && p <= t.floor.min(t.cap))
        {
            return done(p, Stop::AtBound);
        }
        if self.high - self.low <= 1 {
            match (self.at_low, self.at_high) {
                // Both ends asked: the one whose imbalance is smaller (the lower on a tie).
                (Some(l), Some(h)) => {
                    let price = if l.abs() <= h.abs() {
                        self.low
                    } else {
                        self.high
                    };
                    return done(price, Stop::Bracketed);
                }
                // An end never asked (the floor or the cap itself): ask it once.
                (None, _) => self.price = self.low,
                (_, None) => self.price = self.high,
            }
        } else {
            self.price = midpoint(self.low, self.high);
        }
        if self.round >= t.max_rounds {
            return done(p, Stop::OutOfRounds);
        }
        self.round += 1;
        Next::Round { price: self.price }
    }
}

/// The middle, rounded towards the low end (exact for any two i64 prices).
fn midpoint(low: i64, high: i64) -> i64 {
    low + (high - low) / 2
}

/// One member's part of a clearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Its answer at the clearing price (Wh; + buys, - sells).
    pub asked_wh: i64,
    /// What it trades with other members (same sign as asked, at most as much).
    pub matched_wh: i64,
    /// The rest, with the grid at its tariff: bought at the cap or sold at the floor.
    pub grid_wh: i64,
}

/// The clearing of one interval at `price`: each member's last answer, the long side
/// rationed pro rata, the residual with the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearing {
    /// The clearing price.
    pub price: i64,
    /// Energy traded between members (Wh, bought = sold).
    pub matched_wh: i64,
    /// By member.
    pub members: BTreeMap<String, Allocation>,
}

/// Clears at `price` with each member's answer at it. Members trade `min(bought, sold)`;
/// the short side gets all it asked; the long side gets `asked x matched / long` each,
/// rounded down, and the Wh the rounding left go one each to the largest remainders (ties:
/// the member id in order). What a member does not trade with members it trades with the
/// grid.
pub fn clear(price: i64, answers: &BTreeMap<String, i64>) -> Clearing {
    let bought: i64 = answers.values().filter(|q| **q > 0).sum();
    let sold: i64 = answers.values().filter(|q| **q < 0).map(|q| -q).sum();
    let matched = bought.min(sold);
    let (long_total, long_sign) = if bought >= sold {
        (bought, 1)
    } else {
        (sold, -1)
    };
    let mut members: BTreeMap<String, Allocation> = answers
        .iter()
        .map(|(m, &q)| {
            (
                m.clone(),
                Allocation {
                    asked_wh: q,
                    matched_wh: if q.signum() == -long_sign { q } else { 0 },
                    grid_wh: 0,
                },
            )
        })
        .collect();
    if long_total > 0 {
        // (remainder, member) of the long side's shares, in i128: asked x matched fits.
        let mut shares: Vec<(i128, &String)> = Vec::new();
        let mut given: i64 = 0;
        for (m, &q) in answers.iter().filter(|(_, q)| q.signum() == long_sign) {
            let exact = i128::from(q.abs()) * i128::from(matched);
            let floor = (exact / i128::from(long_total)) as i64;
            given += floor;
            shares.push((exact % i128::from(long_total), m));
            if let Some(a) = members.get_mut(m) {
                a.matched_wh = floor * long_sign;
            }
        }
        shares.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (_, m) in shares.into_iter().take((matched - given).max(0) as usize) {
            if let Some(a) = members.get_mut(m) {
                a.matched_wh += long_sign;
            }
        }
    }
    for a in members.values_mut() {
        a.grid_wh = a.asked_wh - a.matched_wh;
    }
    Clearing {
        price,
        matched_wh: matched,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms() -> MarketTerms {
        MarketTerms {
            floor: 400,
            cap: 1_200,
            tolerance_wh: 100,
            max_rounds: 30,
        }
    }

    /// Runs discovery against `d(price)`: (final price, why, rounds).
    fn discover(t: &MarketTerms, d: impl Fn(i64) -> i64) -> (i64, Stop, u32) {
        let mut s = Discovery::start(t);
        loop {
            match s.next(t, d(s.price)) {
                Next::Round { .. } => {}
                Next::Final { price, why } => return (price, why, s.round),
            }
        }
    }

    #[test]
    fn the_worked_example_of_docs_market_md() {
        // docs/market.md: a household with PV sells 2 kWh at any price; storage sells 3 kWh
        // from 800 up and buys 1 kWh below 600; a factory buys 6 kWh, sheds 3 kWh of it
        // from 900 up.
        let answer = |p: i64| -> BTreeMap<String, i64> {
            BTreeMap::from([
                ("pv".to_string(), -2_000),
                (
                    "storage".to_string(),
                    if p >= 800 {
                        -3_000
                    } else if p < 600 {
                        1_000
                    } else {
                        0
                    },
                ),
                ("factory".to_string(), if p >= 900 { 3_000 } else { 6_000 }),
            ])
        };
        let t = terms();
        let mut s = Discovery::start(&t);
        let mut path = Vec::new();
        let next = loop {
            let d: i64 = answer(s.price).values().sum();
            path.push((s.price, d));
            match s.next(&t, d) {
                Next::Round { .. } => {}
                f @ Next::Final { .. } => break f,
            }
        };
        assert_eq!(
            path,
            [
                (800, 1_000),
                (1_000, -2_000),
                (900, -2_000),
                (850, 1_000),
                (875, 1_000),
                (887, 1_000),
                (893, 1_000),
                (896, 1_000),
                (898, 1_000),
                (899, 1_000)
            ]
        );
        // 899 and 900 bracket the balance: 1 kWh short at 899, 2 kWh over at 900.
        assert_eq!(
            next,
            Next::Final {
                price: 899,
                why: Stop::Bracketed
            }
        );
        let c = clear(899, &answer(899));
        assert_eq!(c.matched_wh, 5_000);
        // Buyers are long (6 kWh wanted, 5 offered): the factory gets 5, 1 from the grid.
        assert_eq!(
            c.members["pv"],
            Allocation {
                asked_wh: -2_000,
                matched_wh: -2_000,
                grid_wh: 0
            }
        );
        assert_eq!(
            c.members["storage"],
            Allocation {
                asked_wh: -3_000,
                matched_wh: -3_000,
                grid_wh: 0
            }
        );
        assert_eq!(
            c.members["factory"],
            Allocation {
                asked_wh: 6_000,
                matched_wh: 5_000,
                grid_wh: 1_000
            }
        );
        // At 900 the sellers would be long (5 kWh offered, 3 bought): pro rata, 2:3.
        let c = clear(900, &answer(900));
        assert_eq!(
            c.members["pv"],
            Allocation {
                asked_wh: -2_000,
                matched_wh: -1_200,
                grid_wh: -800
            }
        );
        assert_eq!(
            c.members["storage"],
            Allocation {
                asked_wh: -3_000,
                matched_wh: -1_800,
                grid_wh: -1_200
            }
        );
    }

    #[test]
    fn market_terms_on_the_ledger_are_taken_only_when_they_make_sense() {
        let good = gridgate_proto::v1::MarketTerms {
            area: "feeder-7".into(),
            floor_milli_per_kwh: 400,
            cap_milli_per_kwh: 1_200,
            tolerance_wh: 100,
            max_rounds: 30,
            interval_s: 900,
            lead_s: 3_600,
            gate_closure_s: 300,
            penalty_milli_per_kwh: 500,
            effective_ms: 0,
            round_s: 0,
        };
        assert_eq!(terms_of(&good), Some(terms()));
        let bad = |f: &dyn Fn(&mut gridgate_proto::v1::MarketTerms)| {
            let mut t = good.clone();
            f(&mut t);
            terms_of(&t)
        };
        assert_eq!(
            bad(&|t| t.cap_milli_per_kwh = 300),
            None,
            "cap under the floor"
        );
        assert_eq!(bad(&|t| t.max_rounds = 0), None);
        assert_eq!(
            bad(&|t| t.gate_closure_s = 3_600),
            None,
            "gate closure at the lead"
        );
        assert_eq!(bad(&|t| t.area.clear()), None);
        assert_eq!(bad(&|t| t.tolerance_wh = -1), None);
        assert_eq!(bad(&|t| t.interval_s = 30), None);
    }

    #[test]
    fn at_the_bounds_the_grid_takes_the_rest() {
        let t = terms();
        // More to sell than to buy at any price: down to the floor.
        assert_eq!(discover(&t, |_| -5_000), (400, Stop::AtBound, 10));
        // More to buy at any price: up to the cap.
        assert_eq!(discover(&t, |_| 5_000).0, 1_200);
        assert_eq!(discover(&t, |_| 5_000).1, Stop::AtBound);
        // Balanced at once.
        assert_eq!(discover(&t, |_| 50), (800, Stop::Balanced, 1));
    }

    #[test]
    fn the_rounding_of_a_pro_rata_share_goes_to_the_largest_remainders_then_by_id() {
        // 10 Wh bought, three sellers of 10 each: 3.33 each, one Wh left over: to "a" (ties).
        let answers = BTreeMap::from([
            ("b".to_string(), 10),
            ("s1".to_string(), -10),
            ("s2".to_string(), -10),
            ("s3".to_string(), -10),
        ]);
        let c = clear(500, &answers);
        let got: Vec<i64> = ["s1", "s2", "s3"]
            .iter()
            .map(|m| c.members[*m].matched_wh)
            .collect();
        assert_eq!(got, [-4, -3, -3]);
        assert_eq!(c.members["b"].matched_wh, 10);
        assert_eq!(c.members["s1"].grid_wh, -6);
    }

    fn step_members() -> impl Strategy<Value = Vec<Vec<(i64, i64)>>> {
        // Each member: up to 4 steps (price from which, Wh change), a non-increasing curve.
        prop::collection::vec(
            prop::collection::vec((0i64..2_000, -5_000i64..5_000), 1..5),
            1..40,
        )
    }

    /// A member's answer at `p`: its base, less each step's amount from its price on.
    fn answer(steps: &[(i64, i64)], p: i64) -> i64 {
        let base: i64 = steps.iter().map(|s| s.1).sum();
        base - steps
            .iter()
            .filter(|(from, _)| p >= *from)
            .map(|(_, amount)| amount.abs())
            .sum::<i64>()
    }

    proptest! {
        #[test]
        fn discovery_ends_within_log2_of_the_range_and_clearing_sums_exactly(
            members in step_members(),
            floor in 0i64..1_000,
            width in 1i64..100_000,
            tolerance in 0i64..1_000,
        ) {
            let t = MarketTerms { floor, cap: floor + width, tolerance_wh: tolerance, max_rounds: 64 };
            let d = |p: i64| members.iter().map(|m| answer(m, p)).sum::<i64>();
            let (price, why, rounds) = discover(&t, d);
            let bound = (64 - (width as u64).leading_zeros()) + 2;
            prop_assert!(rounds <= bound, "{rounds} rounds for a range of {width}");
            prop_assert!(price >= t.floor && price <= t.cap);
            match why {
                Stop::Balanced => prop_assert!(d(price).abs() <= tolerance),
                Stop::AtBound => prop_assert!(
                    (price == t.cap && d(price) > 0) || (price == t.floor && d(price) < 0)
                ),
                Stop::Bracketed => {
                    // No price one unit away on the other side balances better: the
                    // imbalance changes sign across the final unit.
                    let (below, here, above) = (d(price - 1), d(price), d(price + 1));
                    prop_assert!(below >= here && here >= above);
                    prop_assert!(
                        (price > t.floor && below.signum() != here.signum())
                            || (price < t.cap && above.signum() != here.signum())
                    );
                }
                Stop::OutOfRounds | Stop::GateClosed => {
                    prop_assert!(false, "64 rounds are never needed")
                }
            }
            let answers: BTreeMap<String, i64> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("m{i:02}"), answer(m, price)))
                .collect();
            let c = clear(price, &answers);
            let bought: i64 = c.members.values().map(|a| a.matched_wh).filter(|q| *q > 0).sum();
            let sold: i64 = c.members.values().map(|a| a.matched_wh).filter(|q| *q < 0).sum();
            prop_assert_eq!(bought, c.matched_wh);
            prop_assert_eq!(sold, -c.matched_wh);
            for a in c.members.values() {
                prop_assert_eq!(a.matched_wh + a.grid_wh, a.asked_wh);
                prop_assert!(a.matched_wh.abs() <= a.asked_wh.abs());
                prop_assert!(a.matched_wh == 0 || a.matched_wh.signum() == a.asked_wh.signum());
            }
            // Deterministic: the same answers clear the same way.
            prop_assert_eq!(clear(price, &answers), c);
        }
    }
}
