//! The flexibility market's part of a statement (docs/market.md, Settlement): each final
//! clearing's trades paid at the clearing price, the rest with the grid at its tariffs, and
//! each member's deviation from what it was accepted for charged at the market's penalty;
//! what a delivery (or its absence) does to the member's reputation.

use std::collections::BTreeMap;

use gridgate_proto::v1 as pb;
use prost::Message;

use crate::Members;

/// A delivery is met when it deviates from what was accepted by at most this percentage of
/// it (or [`MET_WITHIN_WH`], whichever is larger): meters and forecasts are not exact.
pub const MET_WITHIN_PERCENT: i64 = 10;
/// ...or by at most this many Wh.
pub const MET_WITHIN_WH: i64 = 10;

/// A final clearing, as settlement reads it.
#[derive(Debug, Clone)]
pub(super) struct Cleared {
    pub clearing: pb::MarketClearing,
    /// The terms in force for it (floor, cap, penalty).
    pub terms: pb::MarketTerms,
}

/// A gateway's delivery report, as logged.
#[derive(Debug, Clone)]
pub(super) struct Delivered {
    pub gateway: String,
    pub at_ms: i64,
    pub delivery: pb::MarketDelivery,
}

/// The market's entries, read once.
#[derive(Debug, Default)]
pub(super) struct MarketLedger {
    /// By (area, interval start).
    pub cleared: BTreeMap<(String, i64), Cleared>,
    /// By (gateway, area, interval start): the first logged.
    pub delivered: BTreeMap<(String, String, i64), Delivered>,
}

impl MarketLedger {
    /// Reads the final clearings (logged identically by a quorum of the validators), the
    /// terms in force for each (an operator's, the latest effective by the interval's start)
    /// and the gateways' delivery reports, from entries sorted as settlement sorts them.
    pub fn read<'a>(
        sorted: impl Iterator<Item = &'a pb::Entry> + Clone,
        members: &Members,
    ) -> MarketLedger {
        let role = |who: &str, r: pb::MemberRole| members.0.get(who).is_some_and(|m| m.role == r);
        let mut terms: Vec<pb::MarketTerms> = Vec::new();
        // (area, interval) -> each validator's record as logged.
        type Records<'e> = BTreeMap<(String, i64), Vec<(&'e str, &'e [u8])>>;
        let mut clearings = Records::new();
        let mut out = MarketLedger::default();
        for e in sorted {
            match pb::EntryKind::try_from(e.kind) {
                Ok(pb::EntryKind::MarketTerms) if role(&e.origin, pb::MemberRole::Operator) => {
                    if let Ok(t) = pb::MarketTerms::decode(e.payload.as_slice())
                        && crate::market::terms_of(&t).is_some()
                    {
                        terms.push(t);
                    }
                }
                Ok(pb::EntryKind::MarketClearing) if role(&e.origin, pb::MemberRole::Validator) => {
                    if let Ok(c) = pb::MarketClearing::decode(e.payload.as_slice()) {
                        clearings
                            .entry((c.area, c.interval_ms))
                            .or_default()
                            .push((e.origin.as_str(), e.payload.as_slice()));
                    }
                }
                Ok(pb::EntryKind::MarketDelivery) if role(&e.origin, pb::MemberRole::Gateway) => {
                    if let Ok(d) = pb::MarketDelivery::decode(e.payload.as_slice()) {
                        out.delivered
                            .entry((e.origin.clone(), d.area.clone(), d.interval_ms))
                            .or_insert(Delivered {
                                gateway: e.origin.clone(),
                                at_ms: e.timestamp_ms,
                                delivery: d,
                            });
                    }
                }
                _ => {}
            }
        }
        let quorum = members.quorum();
        for ((area, start), recs) in clearings {
            let Some(bytes) = crate::market::final_clearing(recs, quorum) else {
                continue;
            };
            let Ok(clearing) = pb::MarketClearing::decode(bytes) else {
                continue;
            };
            // The latest effective by the start; among equal, the later logged.
            let Some(t) = terms
                .iter()
                .filter(|t| t.area == area && t.effective_ms <= start)
                .max_by_key(|t| t.effective_ms)
            else {
                continue;
            };
            out.cleared.insert(
                (area, start),
                Cleared {
                    clearing,
                    terms: t.clone(),
                },
            );
        }
        out
    }
}

/// One member's line for one cleared interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketLine {
    /// The area.
    pub area: String,
    /// The interval's start.
    pub interval_ms: i64,
    /// The member.
    pub member: String,
    /// The clearing price, milli per kWh.
    pub price_milli_per_kwh: i64,
    /// Accepted (its answer at the clearing price), Wh.
    pub accepted_wh: i64,
    /// Traded with members, Wh (+ bought).
    pub matched_wh: i64,
    /// Traded with the grid, Wh (+ bought).
    pub grid_wh: i64,
    /// Measured, Wh; `None` when it logged no delivery in time.
    pub delivered_wh: Option<i64>,
    /// Paid for (−) or paid (+) what it traded with members, milli-units.
    pub trade_milli: i64,
    /// Paid for (−) or paid (+) what it traded with the grid, milli-units.
    pub grid_milli: i64,
    /// Its deviation at the market's penalty rate, milli-units.
    pub penalty_milli: i64,
    /// `delivered`, `deviated`, `undelivered`, `pending` (no report yet, and there is still
    /// time) or `excluded`.
    pub note: &'static str,
}

/// Energy (Wh) at a price (milli per kWh), in milli-units, rounded towards zero.
fn value(wh: i64, milli_per_kwh: i64) -> i64 {
    (i128::from(wh) * i128::from(milli_per_kwh) / 1000) as i64
}

/// Whether `delivered` meets `accepted` (within [`MET_WITHIN_PERCENT`] or
/// [`MET_WITHIN_WH`]).
pub fn met(accepted: i64, delivered: i64) -> bool {
    let allowed = (i128::from(accepted).abs() * i128::from(MET_WITHIN_PERCENT) / 100)
        .max(i128::from(MET_WITHIN_WH));
    (i128::from(delivered) - i128::from(accepted)).abs() <= allowed
}

/// The line of `a` in a cleared interval, with its delivery (if logged in time), whether
/// it was excluded then, and whether its delivery is still awaited (no report, and the day
/// it has is not over: nothing charged yet).
pub(super) fn line(
    c: &Cleared,
    a: &pb::MarketAllocation,
    delivered: Option<i64>,
    excluded: bool,
    awaited: bool,
) -> MarketLine {
    let t = &c.terms;
    let price = c.clearing.price_milli_per_kwh;
    let grid_price = if a.grid_wh > 0 {
        t.cap_milli_per_kwh
    } else {
        t.floor_milli_per_kwh
    };
    let deviation = match delivered {
        Some(d) => (i128::from(d) - i128::from(a.asked_wh)).unsigned_abs() as i64,
        None => a.asked_wh.unsigned_abs() as i64,
    };
    let note = match delivered {
        _ if excluded => "excluded",
        None if awaited => "pending",
        None => "undelivered",
        Some(d) if met(a.asked_wh, d) => "delivered",
        Some(_) => "deviated",
    };
    MarketLine {
        area: c.clearing.area.clone(),
        interval_ms: c.clearing.interval_ms,
        member: a.member.clone(),
        price_milli_per_kwh: price,
        accepted_wh: a.asked_wh,
        matched_wh: a.matched_wh,
        grid_wh: a.grid_wh,
        delivered_wh: delivered,
        trade_milli: -value(a.matched_wh, price),
        grid_milli: -value(a.grid_wh, grid_price),
        penalty_milli: if note == "delivered" || note == "pending" {
            0
        } else {
            value(deviation, t.penalty_milli_per_kwh)
        },
        note,
    }
}

/// What `member` is paid and charged for a final clearing under `terms` with the delivery it
/// logged (`None`: none yet): the statement's line, for a gateway's own view before the
/// statement closes (its reputation may still exclude it there).
pub fn line_of(
    clearing: &pb::MarketClearing,
    terms: &pb::MarketTerms,
    member: &str,
    delivered: Option<i64>,
) -> Option<MarketLine> {
    let a = clearing.members.iter().find(|a| a.member == member)?;
    let c = Cleared {
        clearing: clearing.clone(),
        terms: terms.clone(),
    };
    Some(line(&c, a, delivered, false, delivered.is_none()))
}

impl MarketLine {
    /// Its line of the canonical text.
    pub fn canonical(&self) -> String {
        format!(
            "market {} {} member {} price {} accepted_wh {} matched_wh {} grid_wh {} delivered_wh {} trade_milli {} grid_milli {} penalty_milli {} {}\n",
            self.area,
            self.interval_ms,
            self.member,
            self.price_milli_per_kwh,
            self.accepted_wh,
            self.matched_wh,
            self.grid_wh,
            self.delivered_wh
                .map_or_else(|| "-".to_string(), |d| d.to_string()),
            self.trade_milli,
            self.grid_milli,
            self.penalty_milli,
            self.note
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Certified, settle};
    use crate::{Member, Members};
    use gridgate_core::Identity;
    use gridgate_proto::v1 as pb;
    use prost::Message;

    /// 2027-01-15 10:00 UTC, in a day that starts at `DAY`.
    const DAY: i64 = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000;
    const START: i64 = DAY + 10 * 3_600_000;
    const END: i64 = START + 900_000;

    fn members() -> Members {
        let mut m = Members::default();
        let ids = [
            ("v0", pb::MemberRole::Validator),
            ("v1", pb::MemberRole::Validator),
            ("v2", pb::MemberRole::Validator),
            ("v3", pb::MemberRole::Validator),
            ("op", pb::MemberRole::Operator),
            ("ga", pb::MemberRole::Gateway),
            ("gb", pb::MemberRole::Gateway),
            ("gc", pb::MemberRole::Gateway),
        ];
        for (id, role) in ids {
            m.0.insert(
                id.into(),
                Member {
                    id: id.into(),
                    role,
                    key: Identity::generate().expect("key").public(),
                    removed: false,
                },
            );
        }
        m
    }

    fn entry(origin: &str, at: i64, kind: pb::EntryKind, payload: Vec<u8>) -> Certified {
        Certified {
            entry: pb::Entry {
                origin: origin.into(),
                seq: at as u64,
                timestamp_ms: at,
                kind: kind as i32,
                payload,
                ..Default::default()
            },
        }
    }

    fn alloc(member: &str, asked: i64, matched: i64) -> pb::MarketAllocation {
        pb::MarketAllocation {
            member: member.into(),
            asked_wh: asked,
            matched_wh: matched,
            grid_wh: asked - matched,
        }
    }

    /// The operator's terms, a clearing at 1,000 that `agree` validators log identically (the
    /// others a forged one at 9,999), and the deliveries of ga (met) and gb (150 Wh short).
    fn ledger(agree: usize) -> Vec<Certified> {
        let terms = pb::MarketTerms {
            area: "feeder-7".into(),
            floor_milli_per_kwh: 400,
            cap_milli_per_kwh: 1_200,
            max_rounds: 30,
            interval_s: 900,
            lead_s: 3_600,
            gate_closure_s: 300,
            penalty_milli_per_kwh: 500,
            ..Default::default()
        };
        let clearing = pb::MarketClearing {
            area: "feeder-7".into(),
            interval_ms: START,
            price_milli_per_kwh: 1_000,
            stop: "balanced".into(),
            rounds: 3,
            matched_wh: 300,
            members: vec![
                alloc("ga", -200, -200),
                alloc("gb", 300, 300),
                alloc("gc", -100, -100),
            ],
            ..Default::default()
        };
        let forged = pb::MarketClearing {
            price_milli_per_kwh: 9_999,
            ..clearing.clone()
        };
        let mut out = vec![entry(
            "op",
            DAY,
            pb::EntryKind::MarketTerms,
            terms.encode_to_vec(),
        )];
        out.extend(logged_by(0..agree, &clearing));
        out.extend(logged_by(agree..4, &forged));
        for (g, delivered, accepted) in [("ga", -195, -200), ("gb", 150, 300)] {
            out.push(delivery(g, START, END + 5_000, delivered, accepted));
        }
        out
    }

    /// `c` logged by validators `v{i}` for each i of `validators`, before its interval.
    fn logged_by(validators: std::ops::Range<usize>, c: &pb::MarketClearing) -> Vec<Certified> {
        validators
            .map(|i| {
                entry(
                    &format!("v{i}"),
                    c.interval_ms - 200_000,
                    pb::EntryKind::MarketClearing,
                    c.encode_to_vec(),
                )
            })
            .collect()
    }

    /// Gateway `g`'s delivery report for the interval at `start`, logged at `at`.
    fn delivery(g: &str, start: i64, at: i64, delivered: i64, accepted: i64) -> Certified {
        let d = pb::MarketDelivery {
            area: "feeder-7".into(),
            interval_ms: start,
            delivered_wh: delivered,
            accepted_wh: accepted,
            loads: Vec::new(),
        };
        entry(g, at, pb::EntryKind::MarketDelivery, d.encode_to_vec())
    }

    #[test]
    fn trades_pay_the_clearing_price_deviations_pay_the_penalty_and_reputation_follows() {
        let s = settle(
            DAY,
            DAY + 86_400_000,
            &ledger(3),
            &members(),
            &Default::default(),
        );
        let line = |m: &str| s.market.iter().find(|l| l.member == m).expect("line");
        // ga sold 200 Wh to members at 1,000/kWh and delivered within 10 %.
        let ga = line("ga");
        assert_eq!(
            (ga.trade_milli, ga.grid_milli, ga.penalty_milli, ga.note),
            (200, 0, 0, "delivered")
        );
        // gb bought 300 Wh and consumed 150: half its purchase deviates, at 500/kWh.
        let gb = line("gb");
        assert_eq!(
            (gb.trade_milli, gb.penalty_milli, gb.note),
            (-300, 75, "deviated")
        );
        // gc never reported within a day: all it sold counts as undelivered.
        let gc = line("gc");
        assert_eq!(
            (gc.delivered_wh, gc.penalty_milli, gc.note),
            (None, 50, "undelivered")
        );
        assert_eq!(s.standing["ga"].score, 510);
        assert_eq!(s.standing["gb"].score, 470);
        assert_eq!(s.standing["gc"].score, 450);
        assert!(s.canonical().contains("market feeder-7"));
        // The forged clearing of the fourth validator changed nothing.
        assert!(s.market.iter().all(|l| l.price_milli_per_kwh == 1_000));
    }

    #[test]
    fn without_a_quorum_of_identical_clearings_nothing_is_settled() {
        let s = settle(
            DAY,
            DAY + 86_400_000,
            &ledger(2),
            &members(),
            &Default::default(),
        );
        assert!(s.market.is_empty());
        assert_eq!(s.standing["gb"].score, 500);
    }

    #[test]
    fn a_member_that_keeps_deviating_is_excluded_and_returns_after_its_probation() {
        let mut entries = ledger(4);
        // gb deviates in eight more intervals that day, one an hour from 11:00.
        for k in 1..=8 {
            let start = START + k * 3_600_000;
            let c = pb::MarketClearing {
                area: "feeder-7".into(),
                interval_ms: start,
                price_milli_per_kwh: 900,
                members: vec![alloc("gb", 300, 0)],
                ..Default::default()
            };
            entries.extend(logged_by(0..4, &c));
            entries.push(delivery("gb", start, start + 905_000, 0, 300));
        }
        let s = settle(
            DAY,
            DAY + 86_400_000,
            &entries,
            &members(),
            &Default::default(),
        );
        // 500 - 30 x 9 = 230: under 300, excluded for a day from its seventh shortfall.
        let gb = &s.standing["gb"];
        assert_eq!(gb.score, 230);
        assert!(gb.offences >= 1 && gb.excluded_until_ms > DAY, "{gb:?}");
        // Its later lines say it was excluded then.
        assert!(
            s.market
                .iter()
                .any(|l| l.member == "gb" && l.note == "excluded")
        );
        // Its shortfalls while excluded were offences too: out for 1 + 2 + 4 days in all
        // from the seventh. A week later, with nothing against it meanwhile, it trades again
        // and delivers: back at the threshold, plus what the delivery earns.
        assert_eq!(gb.offences, 3);
        let start = DAY + 7 * 86_400_000 + 10 * 3_600_000;
        let c = pb::MarketClearing {
            area: "feeder-7".into(),
            interval_ms: start,
            price_milli_per_kwh: 900,
            members: vec![alloc("gb", 300, 300)],
            ..Default::default()
        };
        entries.extend(logged_by(0..3, &c));
        entries.push(delivery("gb", start, start + 905_000, 290, 300));
        let later = super::super::settle_as_of(
            DAY + 86_400_000 * 7,
            DAY + 86_400_000 * 8,
            DAY + 86_400_000 * 8,
            &entries,
            &members(),
            &Default::default(),
        );
        assert_eq!(later.standing["gb"].excluded_until_ms, 0);
        assert_eq!(later.standing["gb"].score, 310);
        assert_eq!(later.market[0].note, "delivered");
    }
}
