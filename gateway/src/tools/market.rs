//! `gridgate market`: the flexibility market as the validators' logs show it
//! (docs/market.md): the rounds under way, each interval's clearing (final only when 2f+1
//! validators logged it byte for byte, every entry's certificate checked), and a gateway's
//! own answers and what it was accepted for.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use gridgate_ledger::entry::check_certified;
use gridgate_ledger_node::market::Logged;
use gridgate_proto::v1 as pb;
use prost::Message;

use super::ledger::peers::{consortium, fetch_log, reach, utc};

/// `gridgate market ...`
// Doc comments here are --help text (clap).
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MarketCommand {
    /// The market's newest intervals: the round under way and its price (as f+1
    /// validators announce it), or the clearing.
    ///
    /// Example: gridgate market status --config /etc/gridgate/gridgate.toml
    Status {
        /// The node's config (its [ledger] names the validators and the TLS identity).
        #[arg(long)]
        config: PathBuf,
        /// How many intervals to show per area, newest last.
        #[arg(long, default_value_t = 5)]
        last: usize,
    },
    /// One interval's clearing: price, why discovery stopped, the price path, each
    /// member's quantity; final only when 2f+1 validators logged the same one. Exit 1 when
    /// it is not final.
    ///
    /// Example: gridgate market clearing --config gridgate.toml --interval 2027-01-15T08:00:00Z
    Clearing {
        /// The node's config.
        #[arg(long)]
        config: PathBuf,
        /// The interval's start (RFC 3339, UTC); default: the newest cleared.
        #[arg(long)]
        interval: Option<String>,
        /// The area (default: the config's [market] area, else any).
        #[arg(long)]
        area: Option<String>,
    },
    /// This gateway's part: its answer in each round and what each final clearing
    /// accepted of it.
    ///
    /// Example: gridgate market position --config /etc/gridgate/gridgate.toml
    Position {
        /// The gateway's config (its [gateway] id is whose position).
        #[arg(long)]
        config: PathBuf,
        /// How many intervals to show, newest last.
        #[arg(long, default_value_t = 10)]
        last: usize,
    },
}

/// Runs a `gridgate market` command.
pub async fn run(cmd: MarketCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match cmd {
        MarketCommand::Status { config, last } => status(&config, last, out).await,
        MarketCommand::Clearing {
            config,
            interval,
            area,
        } => clearing(&config, interval.as_deref(), area.as_deref(), out).await,
        MarketCommand::Position { config, last } => position(&config, last, out).await,
    }
}

/// What the validators logged, by (area, interval), each entry's certificate checked.
struct Seen {
    intervals: BTreeMap<(String, i64), Logged>,
    quorum: usize,
    at_least: usize,
    answered: usize,
    validators: usize,
}

/// Every validator's own log as it holds it; validators that cannot be reached are said on
/// `out`.
async fn gather(config: &std::path::Path, out: &mut dyn Write) -> Result<Seen> {
    let (ledger, genesis) = consortium(config)?;
    let mut intervals: BTreeMap<(String, i64), Logged> = BTreeMap::new();
    let mut answered = 0;
    let validators: Vec<_> = ledger
        .members
        .iter()
        .filter(|m| m.role == "validator")
        .collect();
    for v in &validators {
        let Some(mut client) = reach(&ledger, v, out, "# ").await? else {
            continue;
        };
        let log = match fetch_log(&mut client, &v.id, 0).await {
            Ok(l) => l,
            Err(e) => {
                writeln!(out, "# validator {}: {e:#}", v.id)?;
                continue;
            }
        };
        answered += 1;
        for c in log {
            let Ok((e, _)) = check_certified(&c, &genesis) else {
                writeln!(
                    out,
                    "# validator {}: an entry does not check; skipped",
                    v.id
                )?;
                continue;
            };
            if e.kind == pb::EntryKind::MarketRound as i32 {
                if let Ok(r) = pb::MarketRound::decode(e.payload.as_slice()) {
                    intervals
                        .entry((r.area.clone(), r.interval_ms))
                        .or_default()
                        .rounds
                        .push((v.id.clone(), r));
                }
            } else if e.kind == pb::EntryKind::MarketClearing as i32
                && let Ok(c) = pb::MarketClearing::decode(e.payload.as_slice())
            {
                intervals
                    .entry((c.area, c.interval_ms))
                    .or_default()
                    .clearings
                    .push((v.id.clone(), e.payload));
            }
        }
    }
    let n = genesis.validators().len();
    Ok(Seen {
        intervals,
        quorum: genesis.quorum(),
        at_least: n - genesis.quorum() + 1,
        answered,
        validators: n,
    })
}

fn stop_words(stop: &str) -> &str {
    match stop {
        "balanced" => "balanced within the tolerance",
        "bracketed" => "bracketed to one price unit",
        "at-bound" => "at a bound: the grid takes the rest",
        "out-of-rounds" => "the rounds ran out",
        "gate-closed" => "gate closure came first",
        other => other,
    }
}

async fn status(config: &std::path::Path, last: usize, out: &mut dyn Write) -> Result<ExitCode> {
    let seen = gather(config, out).await?;
    writeln!(
        out,
        "{} of {} validators answered; a clearing is final with {} identical, a price with {} agreeing",
        seen.answered, seen.validators, seen.quorum, seen.at_least
    )?;
    if seen.intervals.is_empty() {
        writeln!(out, "no market round logged yet")?;
        return Ok(ExitCode::SUCCESS);
    }
    let areas: std::collections::BTreeSet<&String> =
        seen.intervals.keys().map(|(a, _)| a).collect();
    for area in areas {
        writeln!(out, "area {area}:")?;
        let mine: Vec<(&i64, &Logged)> = seen
            .intervals
            .iter()
            .filter(|((a, _), _)| a == area)
            .map(|((_, t), l)| (t, l))
            .collect();
        for (start, l) in mine.iter().skip(mine.len().saturating_sub(last)) {
            let line = match l.final_clearing(seen.quorum) {
                Some((c, signers)) => format!(
                    "cleared at {} milli/kWh ({}, {} round(s)), {} Wh traded between {} member(s); final: {}",
                    c.price_milli_per_kwh,
                    stop_words(&c.stop),
                    c.rounds,
                    c.matched_wh,
                    c.members.len(),
                    signers.join(", ")
                ),
                None => match l.current_round(seen.at_least) {
                    Some((round, price)) => {
                        let who: Vec<&str> = l
                            .rounds
                            .iter()
                            .filter(|(_, r)| r.round == round && r.price_milli_per_kwh == price)
                            .map(|(v, _)| v.as_str())
                            .collect();
                        format!(
                            "round {round} at {price} milli/kWh (announced by {})",
                            who.join(", ")
                        )
                    }
                    None => "rounds announced, no price agreed by enough validators".into(),
                },
            };
            writeln!(out, "  interval {}: {line}", utc(**start))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_utc(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| anyhow::anyhow!("--interval {s:?}: {e} (write 2027-01-15T08:00:00Z)"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64)
}

async fn clearing(
    config: &std::path::Path,
    interval: Option<&str>,
    area: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let cfg_area = gridgate_config::load(config)?.market.map(|m| m.area);
    let area = area.map(str::to_string).or(cfg_area);
    let want = interval.map(parse_utc).transpose()?;
    let seen = gather(config, out).await?;
    let pick = seen.intervals.iter().rfind(|((a, t), l)| {
        area.as_ref().is_none_or(|x| x == a)
            && want.is_none_or(|w| w == *t)
            && (want.is_some() || !l.clearings.is_empty())
    });
    let Some(((a, start), l)) = pick else {
        bail!(
            "no clearing logged{}{}",
            area.map(|a| format!(" for area {a}")).unwrap_or_default(),
            interval
                .map(|i| format!(" for the interval {i}"))
                .unwrap_or_default()
        );
    };
    writeln!(out, "area {a}, interval {}", utc(*start))?;
    let Some((c, signers)) = l.final_clearing(seen.quorum) else {
        writeln!(
            out,
            "NOT FINAL: {} validator(s) logged a clearing, {} identical needed",
            l.clearings.len(),
            seen.quorum
        )?;
        return Ok(ExitCode::from(1));
    };
    writeln!(
        out,
        "price {} milli/kWh: {} after {} round(s), the last closed by cut {}",
        c.price_milli_per_kwh,
        stop_words(&c.stop),
        c.rounds,
        c.closed_height
    )?;
    writeln!(
        out,
        "final: logged identically by {} of {} validators ({} needed): {}",
        signers.len(),
        seen.validators,
        seen.quorum,
        signers.join(", ")
    )?;
    let agreed = c.encode_to_vec();
    for (v, bytes) in l.clearings.iter().filter(|(_, b)| *b != agreed) {
        writeln!(
            out,
            "validator {v} logged a DIFFERENT clearing ({} bytes): not counted",
            bytes.len()
        )?;
    }
    let path: Vec<String> = c
        .prices
        .iter()
        .zip(&c.imbalances_wh)
        .map(|(p, d)| format!("{p} ({d:+} Wh)"))
        .collect();
    writeln!(out, "price path: {}", path.join(" -> "))?;
    writeln!(out, "traded between members: {} Wh", c.matched_wh)?;
    writeln!(
        out,
        "{:<20} {:>12} {:>12} {:>12}",
        "member", "asked Wh", "matched Wh", "grid Wh"
    )?;
    for m in &c.members {
        writeln!(
            out,
            "{:<20} {:>12} {:>12} {:>12}",
            m.member, m.asked_wh, m.matched_wh, m.grid_wh
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn position(config: &std::path::Path, last: usize, out: &mut dyn Write) -> Result<ExitCode> {
    let cfg = gridgate_config::load(config)?;
    let me = cfg.id.clone();
    let (ledger, genesis) = consortium(config)?;
    let seen = gather(config, out).await?;
    // Its own answers, as the first validator that answers holds its log.
    let mut answers: BTreeMap<(String, i64), Vec<pb::MarketAnswer>> = BTreeMap::new();
    let mut deliveries: BTreeMap<(String, i64), pb::MarketDelivery> = BTreeMap::new();
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some(mut client) = reach(&ledger, v, out, "# ").await? else {
            continue;
        };
        let Ok(log) = fetch_log(&mut client, &me, 0).await else {
            continue;
        };
        for c in log {
            let Ok((e, _)) = check_certified(&c, &genesis) else {
                continue;
            };
            if e.kind == pb::EntryKind::MarketAnswer as i32
                && let Ok(a) = pb::MarketAnswer::decode(e.payload.as_slice())
            {
                answers
                    .entry((a.area.clone(), a.interval_ms))
                    .or_default()
                    .push(a);
            } else if e.kind == pb::EntryKind::MarketDelivery as i32
                && let Ok(d) = pb::MarketDelivery::decode(e.payload.as_slice())
            {
                deliveries.insert((d.area.clone(), d.interval_ms), d);
            }
        }
        break;
    }
    if answers.is_empty() {
        writeln!(out, "{me} has not answered in any round")?;
        return Ok(ExitCode::SUCCESS);
    }
    // The operators' market terms (floor, cap, penalty), to price what was traded.
    let mut terms: Vec<pb::MarketTerms> = Vec::new();
    for op in genesis
        .0
        .values()
        .filter(|m| m.role == pb::MemberRole::Operator)
    {
        for v in ledger.members.iter().filter(|m| m.role == "validator") {
            let Some(mut client) = reach(&ledger, v, out, "# ").await? else {
                continue;
            };
            let Ok(log) = fetch_log(&mut client, &op.id, 0).await else {
                continue;
            };
            for c in log {
                if let Ok((e, _)) = check_certified(&c, &genesis)
                    && e.kind == pb::EntryKind::MarketTerms as i32
                    && let Ok(t) = pb::MarketTerms::decode(e.payload.as_slice())
                    && gridgate_ledger::market::terms_of(&t).is_some()
                {
                    terms.push(t);
                }
            }
            break;
        }
    }
    for ((area, start), mine) in answers.iter().skip(answers.len().saturating_sub(last)) {
        let said: Vec<String> = mine
            .iter()
            .map(|a| {
                format!(
                    "r{} {} milli/kWh: {:+} Wh",
                    a.round, a.price_milli_per_kwh, a.quantity_wh
                )
            })
            .collect();
        writeln!(out, "{area} {}: answered {}", utc(*start), said.join("; "))?;
        let cleared = seen
            .intervals
            .get(&(area.clone(), *start))
            .and_then(|l| l.final_clearing(seen.quorum));
        match &cleared {
            Some((c, _)) => match c.members.iter().find(|m| m.member == me) {
                Some(m) => writeln!(
                    out,
                    "  cleared at {} milli/kWh: accepted {:+} Wh, {:+} Wh with members, {:+} Wh with the grid",
                    c.price_milli_per_kwh, m.asked_wh, m.matched_wh, m.grid_wh
                )?,
                None => writeln!(
                    out,
                    "  cleared at {} milli/kWh without it (no answer counted)",
                    c.price_milli_per_kwh
                )?,
            },
            None => writeln!(out, "  not cleared (final) yet")?,
        }
        let delivery = deliveries.get(&(area.clone(), *start));
        let in_force = terms
            .iter()
            .filter(|t| &t.area == area && t.effective_ms <= *start)
            .max_by_key(|t| t.effective_ms);
        if let (Some((c, _)), Some(t)) = (&cleared, in_force)
            && let Some(l) =
                gridgate_ledger::settlement::line_of(c, t, &me, delivery.map(|d| d.delivered_wh))
        {
            let note = match l.note {
                "undelivered" => {
                    "no delivery logged yet: the whole quantity counts as deviation if none comes within a day"
                }
                n => n,
            };
            writeln!(
                out,
                "  payments (milli-units, + received): trades {:+}, grid {:+}, penalty {} ({note}; the statement decides)",
                l.trade_milli, l.grid_milli, -l.penalty_milli
            )?;
        }
        if let Some(d) = delivery {
            let moved = if d.loads.is_empty() {
                String::new()
            } else {
                format!(", loads moved: {}", d.loads.join(", "))
            };
            writeln!(
                out,
                "  delivered {:+} Wh against {:+} Wh accepted (deviation {} Wh){moved}",
                d.delivered_wh,
                d.accepted_wh,
                (d.delivered_wh - d.accepted_wh).abs()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
