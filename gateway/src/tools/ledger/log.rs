//! `gridgate ledger log` and `gridgate ledger watch`: a member's log, entry by entry, and
//! new certified entries as they come.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use gridgate_proto::v1 as pb;

use gridgate_ledger::entry::check_certified;

use super::peers::*;

/// One line on what an entry says.
fn summary(e: &pb::Entry) -> String {
    use prost::Message;
    let p = e.payload.as_slice();
    match pb::EntryKind::try_from(e.kind) {
        Ok(pb::EntryKind::BatchCommitment) => match pb::BatchCommitment::decode(p) {
            Ok(c) => format!(
                "batches {}..{} (tree of {} from batch {}) root {}",
                c.first_seq + c.previous_size,
                c.first_seq + c.tree_size,
                c.tree_size,
                c.first_seq,
                hex::encode(&c.root)
            ),
            Err(_) => "batch commitment (does not decode)".into(),
        },
        Ok(pb::EntryKind::DrEvent) => match pb::SignedDrEvent::decode(p)
            .ok()
            .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())
        {
            Some(ev) => format!(
                "DR event {}/{} program {} start {} for {} s{}",
                ev.issuer,
                ev.id,
                ev.program,
                utc(ev.start_ms),
                ev.duration_s,
                if ev.gateways.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", ev.gateways.join(", "))
                }
            ),
            None => "DR event (does not decode)".into(),
        },
        Ok(pb::EntryKind::PerformanceReport) => match pb::SignedPerformanceReport::decode(p)
            .ok()
            .and_then(|s| pb::PerformanceReport::decode(s.report.as_slice()).ok())
        {
            Some(r) => format!(
                "performance report of {} for {}/{}{}",
                r.gateway_id,
                r.issuer,
                r.event_id,
                if r.cancelled { " (cancelled)" } else { "" }
            ),
            None => "performance report (does not decode)".into(),
        },
        Ok(pb::EntryKind::Equivocation) => {
            let accused = pb::EquivocationProof::decode(p)
                .ok()
                .and_then(|proof| proof.a)
                .and_then(|a| pb::Entry::decode(a.entry.as_slice()).ok());
            match accused {
                Some(a) => format!(
                    "equivocation proof: {} signed two entries at {}",
                    a.origin, a.seq
                ),
                None => "equivocation proof (does not decode)".into(),
            }
        }
        Ok(pb::EntryKind::ProgramTerms) => match pb::ProgramTerms::decode(p) {
            Ok(t) => format!(
                "program terms {}: {} milli/kWh, cap {} %, threshold {} %, penalty {} milli/kWh, from {}",
                t.program,
                t.price_milli_per_kwh,
                t.cap_percent,
                t.threshold_percent,
                t.penalty_milli_per_kwh,
                utc(t.effective_ms)
            ),
            Err(_) => "program terms (do not decode)".into(),
        },
        Ok(pb::EntryKind::MarketTerms) => match pb::MarketTerms::decode(p) {
            Ok(t) => format!(
                "market terms {}: {}..{} milli/kWh, tolerance {} Wh, {} rounds, {} s intervals, open {} s before, closed {} s before, penalty {} milli/kWh, from {}",
                t.area,
                t.floor_milli_per_kwh,
                t.cap_milli_per_kwh,
                t.tolerance_wh,
                t.max_rounds,
                t.interval_s,
                t.lead_s,
                t.gate_closure_s,
                t.penalty_milli_per_kwh,
                utc(t.effective_ms)
            ),
            Err(_) => "market terms (do not decode)".into(),
        },
        Ok(pb::EntryKind::Membership) => {
            match pb::SignedMembershipChange::decode(p).ok().and_then(|s| {
                pb::MembershipChange::decode(s.change.as_slice())
                    .ok()
                    .map(|c| (c, s.approvals.len()))
            }) {
                Some((c, approvals)) => format!(
                    "membership change {}: add [{}] remove [{}], {approvals} approvals",
                    c.id,
                    c.add
                        .iter()
                        .map(|a| format!(
                            "{} ({})",
                            a.id,
                            pb::MemberRole::try_from(a.role)
                                .map_or("?", |r| r.as_str_name())
                                .trim_start_matches("MEMBER_ROLE_")
                                .to_lowercase()
                        ))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.remove.join(", ")
                ),
                None => "membership change (does not decode)".into(),
            }
        }
        Ok(pb::EntryKind::OpenadrEvent) => match pb::OpenAdrEvent::decode(p) {
            Ok(e) if e.refusal.is_empty() => format!(
                "OpenADR event {} version {} from {} received {}: DR events [{}]",
                e.event_id,
                e.version,
                e.vtn,
                utc(e.received_ms),
                e.dr_events.join(", ")
            ),
            Ok(e) => format!(
                "OpenADR event {} version {} from {} received {}: refused, {}",
                e.event_id,
                e.version,
                e.vtn,
                utc(e.received_ms),
                e.refusal
            ),
            Err(_) => "OpenADR event (does not decode)".into(),
        },
        Ok(k) => k
            .as_str_name()
            .trim_start_matches("ENTRY_KIND_")
            .to_lowercase(),
        Err(_) => format!("unknown kind {}", e.kind),
    }
}

pub(super) async fn log(
    config: &std::path::Path,
    origin: &str,
    only: Option<&str>,
    from: u64,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    let Some(held) = log_of(&ledger, &genesis, origin, from, only, out).await? else {
        bail!("no validator answered")
    };
    let entries = &held.entries;
    writeln!(
        out,
        "# {origin}'s log as validator {} holds it: {} certified entr{} from {from}",
        held.validator,
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    )?;
    let mut faults = 0;
    for c in entries {
        let (line, good) = entry_line(c, &held.members);
        faults += usize::from(!good);
        writeln!(out, "{line}")?;
    }
    Ok(if faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One certified entry as `log` and `watch` print it, and whether it checks.
fn entry_line(c: &pb::CertifiedEntry, members: &gridgate_ledger::Members) -> (String, bool) {
    match check_certified(c, members) {
        Ok((e, hash)) => (
            format!(
                "{:>6}  {}  {}  {} votes  {}",
                e.seq,
                utc(e.timestamp_ms),
                &hex::encode(hash)[..16],
                c.certificate.as_ref().map_or(0, |c| c.votes.len()),
                summary(&e)
            ),
            true,
        ),
        Err(err) => (format!("     ?  does not check: {err}"), false),
    }
}

pub(super) async fn watch(
    config: &std::path::Path,
    origins: Vec<String>,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    for v in ledger
        .members
        .iter()
        .filter(|m| m.role == "validator" && only.is_none_or(|o| o == m.id))
    {
        let Some(mut client) = reach(&ledger, v, out, "# ").await? else {
            continue;
        };
        let mut members = match members_held(&mut client, &genesis).await {
            Ok(m) => m,
            Err(e) => {
                writeln!(out, "# validator {}: {e:#}", v.id)?;
                continue;
            }
        };
        let mut stream = match client
            .watch(pb::WatchRequest {
                origins: origins.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                writeln!(out, "# validator {}: {}", v.id, s.message())?;
                continue;
            }
        };
        writeln!(
            out,
            "# following what validator {} certifies{} (Ctrl-C to stop)",
            v.id,
            if origins.is_empty() {
                String::new()
            } else {
                format!(" of {}", origins.join(", "))
            }
        )?;
        out.flush()?;
        while let Some(c) = stream.message().await? {
            let origin = gridgate_ledger_node::state::place(&c)
                .map(|(o, _)| o)
                .unwrap_or_default();
            writeln!(out, "{origin}  {}", entry_line(&c, &members).0)?;
            out.flush()?;
            // A membership change takes effect for what follows it.
            let is_change = c
                .entry
                .as_ref()
                .and_then(|s| {
                    use prost::Message;
                    pb::Entry::decode(s.entry.as_slice()).ok()
                })
                .is_some_and(|e| e.kind == pb::EntryKind::Membership as i32);
            if is_change {
                members = members_held(&mut client, &genesis).await?;
            }
        }
        bail!("validator {} ended the stream (it is stopping)", v.id);
    }
    bail!("no validator answered")
}
