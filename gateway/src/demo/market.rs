//! The market part of `gridgate demo` (docs/market.md): three prosumers, each a gateway in
//! this process on its own simulated Modbus device (PV, a battery, a load that sheds),
//! trade one-minute intervals of the area `demo-feeder`. The demo's operator publishes the
//! area's terms on its log; the validators run the rounds on their decided cuts and log the
//! clearing; the prosumers answer from their readings, deliver through their DR relays and
//! log what they measured; the day's settlement pays the trades.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use gridgate_app::Pipeline;
use gridgate_config::ledger::LedgerConfig;
use gridgate_core::Identity;
use gridgate_store::Store;

use super::DemoError;
use super::ledger::{Consortium, Member};
use crate::tools::sim;

/// The demo's market area.
pub const AREA: &str = "demo-feeder";

/// The prosumers: their ids, in the order the status lines name them.
pub const PROSUMERS: [&str; 3] = ["prosumer-pv", "prosumer-battery", "prosumer-load"];

/// The unit the demo's prices are in (milli-units per kWh on the ledger).
const CURRENCY: &str = "CNY";

/// The simulated devices: PV of 8 kW, a battery of 10 kW holding 5 kWh, a shop's 30 kW load.
const DEVICES: &str = r#"
[[line]]
name = "pv"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 8.0 }]

[[line]]
name = "bms"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 10.0, energy_kwh = 5.0 }]

[[line]]
name = "shop"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 30.0 }]
"#;

/// The area's terms as the operator publishes them: one-minute intervals, discovery from 30 s
/// to 5 s before each, rounds of 2 s. With the devices above a minute clears at about
/// 1 CNY/kWh: PV sells 133 Wh at any price, the battery sells 166 Wh from 0.8, the shop buys
/// 500 Wh and sheds 12 kW from 0.9.
const TERMS: &str = "area = \"demo-feeder\"\nfloor_milli_per_kwh = 400\ncap_milli_per_kwh = 1200\ntolerance_wh = 60\nmax_rounds = 20\ninterval = \"1m\"\nlead = \"30s\"\ngate_closure = \"5s\"\nround = \"2s\"\npenalty_milli_per_kwh = 500\neffective = \"now\"\n";

/// The prosumers' simulators and files.
pub struct Prosumers {
    dir: PathBuf,
    sims: sim::RunningSims,
}

impl Prosumers {
    /// Starts the simulated devices and makes each prosumer's key in `work/prosumers`.
    pub async fn prepare(work: &Path) -> Result<Prosumers, DemoError> {
        let dir = work.join("prosumers");
        for id in PROSUMERS {
            let d = dir.join(id);
            std::fs::create_dir_all(&d)?;
            Identity::generate()
                .and_then(|k| k.save(&d.join("identity.key"), &d.join("identity.pub")))?;
        }
        let spec: sim::SimSpec = toml::from_str(DEVICES)
            .map_err(|e| sim::SimError::Spec(format!("the demo's market devices: {e}")))?;
        Ok(Prosumers {
            dir,
            sims: sim::start(&spec).await?,
        })
    }

    /// The prosumers as consortium members (gateways).
    pub fn members(&self) -> Vec<Member> {
        PROSUMERS
            .iter()
            .map(|id| Member {
                id: id.to_string(),
                role: "gateway",
                public_key: self.dir.join(id).join("identity.pub"),
            })
            .collect()
    }

    fn link(&self, line: &str) -> String {
        self.sims
            .lines
            .iter()
            .find(|l| l.name == line)
            .map(|l| l.link.clone())
            .unwrap_or_default()
    }

    /// Starts the three prosumers' gateways.
    pub async fn start(&self, consortium: &Consortium) -> Result<Vec<Pipeline>, DemoError> {
        // Each answers from the last minute of its readings ("recent": a demo has no days
        // of history for "high-5-of-10").
        let market =
            format!("\n[market]\narea = \"{AREA}\"\ninterval = \"1m\"\nforecast = \"recent\"\n");
        let bodies = [
            format!(
                "{}{market}\n[[market.resource]]\nkind = \"pv\"\nmeter = \"pv/active_power\"\n",
                device("pv", &self.link("pv"), "")
            ),
            format!(
                "{}{market}\n[[market.resource]]\nkind = \"storage\"\nname = \"battery\"\nsoc_point = \"bms/stored\"\ncharge_below = 600\ndischarge_above = 800\nmax_charge_kw = 6.0\nmax_discharge_kw = 10.0\nmin_soc_wh = 0\nmax_soc_wh = 100000\n",
                device(
                    "bms",
                    &self.link("bms"),
                    "  { name = \"stored\", table = \"holding\", address = 4, type = \"u32\", unit = \"Wh\" },\n"
                )
            ),
            format!(
                "{}\n[[load]]\nname = \"shop-pcs\"\nmeter = \"shop/active_power\"\ncontrol = \"shop/setpoint\"\nrated_kw = 30.0\nmax_shed_kw = 15.0\nmin_setpoint = 20.0\nmax_setpoint = 100.0\n{market}meter = \"shop/active_power\"\n\n[[market.resource]]\nkind = \"shed\"\nload = \"shop-pcs\"\nsteps = [{{ kw = 12.0, from = 900 }}]\n",
                device(
                    "shop",
                    &self.link("shop"),
                    "  { name = \"setpoint\", table = \"holding\", address = 10, type = \"u16\", scale = 0.1, unit = \"%\" },\n"
                )
            ),
        ];
        let mut running = Vec::new();
        for (id, body) in PROSUMERS.iter().zip(bodies) {
            let d = self.dir.join(id);
            let key = d.join("identity.key");
            let text = format!(
                "[gateway]\nid = \"{id}\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n{body}{}",
                d.join("data").display(),
                key.display(),
                consortium.ledger_section("gateway", (id, &key))?
            );
            let cfg = gridgate_config::parse(&text, Path::new("<demo prosumer>"))?;
            running.push(Pipeline::start(&cfg, Identity::load(&key)?, None).await?);
        }
        Ok(running)
    }
}

/// `[[bus]]` and one Modbus `[[device]]` named `name` (unit 1) on `link`, polled every
/// second, with `extra_points` after its active power.
fn device(name: &str, link: &str, extra_points: &str) -> String {
    format!(
        "\n[[bus]]\nname = \"{name}-bus\"\nlink = \"{link}\"\n\n[[device]]\nname = \"{name}\"\nbus = \"{name}-bus\"\nprotocol = \"modbus\"\nunit = 1\npoll = \"1s\"\npoints = [\n  {{ name = \"active_power\", table = \"holding\", address = 0, type = \"f32\", unit = \"kW\" }},\n{extra_points}]\n"
    )
}

/// Writes the operator's config (`work/operator.toml`, its log in `work/operator`) and the
/// area's terms, and publishes them as `gridgate ledger publish --market-terms` does; returns
/// what happened as a sentence.
pub async fn publish_terms(work: PathBuf, ledger_section: String) -> String {
    let config = work.join("operator.toml");
    let terms = work.join("demo-feeder.toml");
    let written = std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"demo-operator\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n{ledger_section}",
            work.join("operator").display(),
            work.join("operator.key").display()
        ),
    )
    .and_then(|()| std::fs::write(&terms, TERMS));
    if let Err(e) = written {
        return format!("market terms not published: {e}");
    }
    let what = crate::tools::ledger::write::WhatToPublish {
        event: None,
        terms: None,
        membership: None,
        market_terms: Some(terms),
    };
    let mut out = Vec::new();
    let said =
        crate::tools::ledger::write::publish(&config, &what, Duration::from_secs(60), &mut out)
            .await;
    match said {
        Ok(code) if code == ExitCode::SUCCESS => format!(
            "market: demo-operator published the terms of {AREA} (1-minute intervals, 0.400 to 1.200 {CURRENCY}/kWh, discovery from 30 s to 5 s before each, rounds of 2 s); certified"
        ),
        Ok(_) => format!(
            "market terms not certified: {}",
            String::from_utf8_lossy(&out).trim()
        ),
        Err(e) => format!("market terms not published: {e:#}"),
    }
}

/// A price in milli-units per kWh, in the currency.
fn price(milli: i64) -> String {
    format!("{:.3} {CURRENCY}/kWh", milli as f64 / 1000.0)
}

/// A quantity as a prosumer's position: sells or buys.
fn position(wh: i64) -> String {
    match wh {
        0 => "nothing".into(),
        q if q < 0 => format!("sells {} Wh", -q),
        q => format!("buys {q} Wh"),
    }
}

/// A time of day, UTC.
fn clock(ms: i64) -> String {
    let s = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

/// The market as the status lines show it.
#[derive(Debug, Default)]
pub struct MarketStatus {
    /// The lines: the newest cleared interval and its delivery, the interval under
    /// discovery, today's market settlement. None until the terms are certified and a round
    /// opens.
    pub lines: Vec<String>,
    /// Whether every prosumer's part of an interval is settled.
    pub settled: bool,
}

/// The market read from a validator's store (`ledger`, its config), as far back as
/// `since_ms`.
pub fn status(store: &Store, ledger: &LedgerConfig, since_ms: i64) -> MarketStatus {
    let Ok(members) = gridgate_ledger_node::load_members(ledger) else {
        return MarketStatus::default();
    };
    let views: Vec<Vec<gridgate_ledger_node::market::IntervalView>> = PROSUMERS
        .iter()
        .map(|me| {
            gridgate_ledger_node::market::view(store, &members, AREA, me, since_ms, 3)
                .unwrap_or_default()
        })
        .collect();
    let Some(first) = views.first() else {
        return MarketStatus::default();
    };
    let mut out = Vec::new();
    if let Some(cleared) = first.iter().rev().find(|v| v.clearing.is_some())
        && let Some(c) = &cleared.clearing
    {
        let parts: Vec<String> = c
            .members
            .iter()
            .map(|a| format!("{} {}", a.member, position(a.asked_wh)))
            .collect();
        out.push(format!(
            "market {AREA}, interval {}: cleared at {} in {} round(s) ({}), final with {}: {}",
            clock(cleared.interval_ms),
            price(c.price_milli_per_kwh),
            c.rounds,
            c.stop,
            cleared.signers.join(", "),
            if parts.is_empty() {
                "no answers, nothing traded".into()
            } else {
                parts.join(", ")
            }
        ));
    }
    // The newest interval a prosumer logged its delivery of (one before the newest
    // cleared: a delivery is measured once its interval is over).
    let delivered_in = views
        .iter()
        .flatten()
        .filter(|v| v.delivery.is_some())
        .map(|v| v.interval_ms)
        .max();
    if let Some(start) = delivered_in {
        let delivered: Vec<String> = PROSUMERS
            .iter()
            .zip(&views)
            .filter_map(|(id, v)| {
                let d = v
                    .iter()
                    .find(|x| x.interval_ms == start)?
                    .delivery
                    .as_ref()?;
                let moved = if d.loads.is_empty() {
                    String::new()
                } else {
                    format!(", moved {}", d.loads.join(", "))
                };
                Some(format!(
                    "{id} {:+} Wh (cleared {:+}{moved})",
                    d.delivered_wh, d.accepted_wh
                ))
            })
            .collect();
        out.push(format!(
            "market {AREA}, interval {}: delivered {}",
            clock(start),
            delivered.join(", ")
        ));
    }
    // The interval under discovery: the newest with rounds and no clearing yet.
    if let Some(open) = first
        .iter()
        .rev()
        .find(|v| v.clearing.is_none() && !v.rounds.is_empty())
        && let Some((round, asked)) = open.rounds.last()
    {
        let answers: Vec<String> = PROSUMERS
            .iter()
            .zip(&views)
            .filter_map(|(id, v)| {
                let mine = v.iter().find(|x| x.interval_ms == open.interval_ms)?;
                let (_, _, q) = mine.answers.last()?;
                Some(format!("{id} {q:+} Wh"))
            })
            .collect();
        out.push(format!(
            "market {AREA}, interval {}: price discovery, round {round} asks {}; answers standing: {}",
            clock(open.interval_ms),
            price(*asked),
            if answers.is_empty() {
                "none yet".into()
            } else {
                answers.join(", ")
            }
        ));
    }
    let mut settled = false;
    if let Some(s) = gridgate_ledger_node::today(store, ledger, gridgate_core::reading::now_ms()) {
        // Each prosumer's day: what it was paid (+) or paid (-) for its trades with members and
        // the grid, less penalties, and how its intervals went.
        let mut by: BTreeMap<&str, (i64, i64, BTreeSet<&str>)> = BTreeMap::new();
        for l in s
            .market
            .iter()
            .filter(|l| l.area == AREA && l.note != "pending")
        {
            let e = by.entry(l.member.as_str()).or_default();
            e.0 += l.trade_milli + l.grid_milli;
            e.1 += l.penalty_milli;
            e.2.insert(l.note);
        }
        settled = PROSUMERS.iter().all(|p| by.contains_key(p));
        if !by.is_empty() {
            let parts: Vec<String> = by
                .iter()
                .map(|(member, (paid, penalty, notes))| {
                    format!(
                        "{member} {:+.3} {CURRENCY}{} ({})",
                        (paid - penalty) as f64 / 1000.0,
                        if *penalty > 0 {
                            format!(" after a penalty of {:.3}", *penalty as f64 / 1000.0)
                        } else {
                            String::new()
                        },
                        notes.iter().copied().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            out.push(format!(
                "market settlement of today (statement {}): {}",
                &hex::encode(s.hash())[..16],
                parts.join("; ")
            ));
        }
    }
    MarketStatus {
        lines: out,
        settled,
    }
}
