//! Settlement and reputation: deterministic functions over certified entries, in integer
//! arithmetic, so that every replica computes the same statement and the same hash.
//!
//! Inputs: DR events (signed by their issuer, an operator member; a gateway puts the event it
//! acted on into its log before its report), performance reports (signed by the gateway that
//! measured, and carried in that gateway's own log), and the programs' terms from the genesis
//! config (the same on every node). Units: watts, milliwatt-hours, milli-units of currency.
//!
//! Per event and gateway, per interval of the report's finest series: the paid reduction is
//! the measured reduction held within 0 and the committed load times the program's cap; the
//! payment is the paid energy at the program's price; a delivery below the program's
//! threshold of the committed energy pays a penalty on the shortfall.
//!
//! Reputation (0 to 1000, from 500): +10 for a report on time that met its threshold, -30
//! for a shortfall, -20 for a report more than an hour late. Below 300 a member is excluded:
//! its claims are not paid and the event is recorded as such. Its n-th offence keeps it out
//! for a day times 2^(n-1); it returns (at 300) only after that, and only if nothing
//! counted against it in the meantime.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Verifier};
use gridgate_proto::v1 as pb;
use prost::Message;

use super::Members;
use crate::batch::sha256;

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
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            price_milli_per_kwh: 0,
            cap_percent: 120,
            threshold_percent: 80,
            penalty_milli_per_kwh: 0,
        }
    }
}

/// A report is late after this long past its event's end.
pub const LATE_AFTER_MS: i64 = 3_600_000;
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
pub struct Line {
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
    /// By (issuer, event, gateway).
    pub lines: Vec<Line>,
    /// By member.
    pub standing: BTreeMap<String, Standing>,
}

impl Statement {
    /// The canonical text: the same bytes on every replica for the same inputs.
    pub fn canonical(&self) -> String {
        let mut s = format!("gridgate settlement v1 {}..{}\n", self.from_ms, self.to_ms);
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

/// Settles the period `[from_ms, to_ms)` (events by their start) from certified entries
/// (any order; they are sorted here), with the programs' terms.
pub fn settle(
    from_ms: i64,
    to_ms: i64,
    entries: &[Certified],
    members: &Members,
    terms: &BTreeMap<String, Terms>,
) -> Statement {
    let mut sorted: Vec<&pb::Entry> = entries.iter().map(|c| &c.entry).collect();
    sorted.sort_by(|a, b| {
        (a.timestamp_ms, &a.origin, a.seq).cmp(&(b.timestamp_ms, &b.origin, b.seq))
    });
    // Events, by the hash of their signed bytes, believed only with their issuer's
    // signature (an operator member's).
    let mut events: BTreeMap<Vec<u8>, pb::DrEvent> = BTreeMap::new();
    for e in &sorted {
        if e.kind != pb::EntryKind::DrEvent as i32 {
            continue;
        }
        let Ok(signed) = pb::SignedDrEvent::decode(e.payload.as_slice()) else {
            continue;
        };
        let Ok(event) = pb::DrEvent::decode(signed.event.as_slice()) else {
            continue;
        };
        let operator = members
            .0
            .get(&event.issuer)
            .is_some_and(|m| m.role == pb::MemberRole::Operator);
        if operator && verify(members, &event.issuer, &signed.event, &signed.signature) {
            events.insert(sha256(&signed.event).to_vec(), event);
        }
    }
    // Claims: reports signed by the gateway whose log carries them, for a known event; one
    // per (event, gateway), the first.
    let mut claims: Vec<Claim> = Vec::new();
    let mut seen: BTreeSet<(Vec<u8>, String)> = BTreeSet::new();
    for e in &sorted {
        if e.kind != pb::EntryKind::PerformanceReport as i32 {
            continue;
        }
        let Ok(signed) = pb::SignedPerformanceReport::decode(e.payload.as_slice()) else {
            continue;
        };
        if !verify(members, &e.origin, &signed.report, &signed.signature) {
            continue;
        }
        let Ok(report) = pb::PerformanceReport::decode(signed.report.as_slice()) else {
            continue;
        };
        if report.gateway_id != e.origin {
            continue;
        }
        let Some(event) = events.get(&report.event_hash) else {
            continue;
        };
        if !seen.insert((report.event_hash.clone(), e.origin.clone())) {
            continue;
        }
        claims.push(Claim {
            gateway: e.origin.clone(),
            at_ms: e.timestamp_ms,
            report,
            event: event.clone(),
        });
    }
    // Proofs of equivocation, attested by validators, one per proven place: each is an
    // offence that takes the member's score to nothing and starts its probation.
    let mut proven: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();
    let mut accusations: Vec<(i64, String)> = Vec::new();
    for e in &sorted {
        if e.kind != pb::EntryKind::Equivocation as i32 {
            continue;
        }
        let by_validator = members
            .0
            .get(&e.origin)
            .is_some_and(|m| m.role == pb::MemberRole::Validator);
        let Ok(proof) = pb::EquivocationProof::decode(e.payload.as_slice()) else {
            continue;
        };
        let Ok(accused) = super::entry::check_proof(&proof, members) else {
            continue;
        };
        // The place: the accused's (origin, seq), the same in both entries of the proof.
        let place = proof
            .a
            .as_ref()
            .and_then(|a| pb::Entry::decode(a.entry.as_slice()).ok())
            .map(|a| a.seq.to_be_bytes().to_vec())
            .unwrap_or_default();
        if by_validator && e.timestamp_ms < to_ms && proven.insert((accused.clone(), place)) {
            accusations.push((e.timestamp_ms, accused));
        }
    }
    let mut accusations = accusations.into_iter().peekable();
    // Reputation runs over every claim up to the period's end, in order; payments over the
    // period's events.
    let mut standing: BTreeMap<String, Standing> = members
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Gateway)
        .map(|m| {
            (
                m.id.clone(),
                Standing {
                    score: START_SCORE,
                    offences: 0,
                    excluded_until_ms: 0,
                },
            )
        })
        .collect();
    let mut lines = Vec::new();
    let convict = |standing: &mut BTreeMap<String, Standing>, at_ms: i64, accused: String| {
        let st = standing.entry(accused).or_insert(Standing {
            score: START_SCORE,
            offences: 0,
            excluded_until_ms: 0,
        });
        st.score = 0;
        st.offences += 1;
        st.excluded_until_ms = at_ms + PROBATION_BASE_MS * (1i64 << (st.offences - 1).min(20));
    };
    for c in claims.iter().filter(|c| c.at_ms < to_ms) {
        while let Some((at, accused)) = accusations.next_if(|(at, _)| *at <= c.at_ms) {
            convict(&mut standing, at, accused);
        }
        let t = terms.get(&c.report.program).cloned().unwrap_or_default();
        let (committed, delivered) = energy(c, &t);
        let late = c.at_ms > c.report.end_ms + LATE_AFTER_MS;
        let shortfall =
            delivered.saturating_mul(100) < committed.saturating_mul(t.threshold_percent);
        let st = standing.entry(c.gateway.clone()).or_insert(Standing {
            score: START_SCORE,
            offences: 0,
            excluded_until_ms: 0,
        });
        // Back from probation once it is over (nothing counted against it meanwhile, or it
        // would have been extended).
        if st.excluded_until_ms > 0 && c.at_ms >= st.excluded_until_ms {
            st.excluded_until_ms = 0;
            st.score = st.score.max(THRESHOLD_SCORE);
        }
        let excluded = st.excluded_until_ms > 0;
        let delta = if shortfall {
            -30
        } else if late {
            -20
        } else {
            10
        };
        st.score = (st.score + delta).clamp(0, 1000);
        if delta < 0 && (excluded || st.score < THRESHOLD_SCORE) {
            st.offences += 1;
            st.excluded_until_ms =
                c.at_ms + PROBATION_BASE_MS * (1i64 << (st.offences - 1).min(20));
        }
        let in_period = c.report.start_ms >= from_ms && c.report.start_ms < to_ms;
        if !in_period {
            continue;
        }
        let paid = !excluded;
        lines.push(Line {
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
            penalty_milli: if shortfall {
                (committed.saturating_mul(t.threshold_percent) / 100 - delivered)
                    .saturating_mul(t.penalty_milli_per_kwh)
                    / 1_000_000
            } else {
                0
            },
            note: if excluded {
                "excluded"
            } else if shortfall {
                "shortfall"
            } else if late {
                "late"
            } else {
                "paid"
            },
        });
    }
    for (at, accused) in accusations {
        convict(&mut standing, at, accused);
    }
    lines.sort_by(|a, b| {
        (&a.issuer, &a.event_id, &a.gateway).cmp(&(&b.issuer, &b.event_id, &b.gateway))
    });
    Statement {
        from_ms,
        to_ms,
        lines,
        standing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Identity;
    use crate::ledger::Member;

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
        let event = pb::DrEvent {
            id: id.into(),
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
        let signed = crate::dr::sign_event(&event, &w.operator);
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
            gateway_id: "gw".into(),
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
        let signed_report = crate::dr::report::sign(&w.gw, &report);
        vec![
            Certified {
                entry: pb::Entry {
                    origin: "gw".into(),
                    seq: 0,
                    timestamp_ms: at_ms,
                    kind: pb::EntryKind::DrEvent as i32,
                    payload: signed.encode_to_vec(),
                    ..Default::default()
                },
            },
            Certified {
                entry: pb::Entry {
                    origin: "gw".into(),
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

    /// Two different entries signed by `key` as `gw`'s entry 7, as a validator's entry.
    fn accusation(key: &Identity, by: &str, at_ms: i64) -> Certified {
        let place = |payload: &[u8]| {
            crate::ledger::entry::sign_entry(
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
        let resigned = crate::dr::report::sign(
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
}
