//! `gridgate ledger cuts`: each validator's decided cuts (the consortium's agreed order),
//! every chain link and finalization checked offline against the genesis validators, and
//! the validators compared with one another.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use gridgate_ledger::cut::{self, CutState};
use gridgate_proto::v1 as pb;

use super::peers::*;

/// Cuts asked for in one call.
const PAGE: u32 = 1024;

/// Every decided cut `client`'s validator holds, from the first.
pub(super) async fn fetch_cuts(
    client: &mut gridgate_proto::v1::ledger_client::LedgerClient<tonic::transport::Channel>,
) -> std::result::Result<Vec<pb::DecidedCut>, String> {
    let mut out = Vec::new();
    loop {
        let ask = client.cuts(pb::CutsRequest {
            from_height: out.len() as u64 + 1,
            max: PAGE,
        });
        let reply = match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(s.message().to_string()),
            Err(_) => return Err("no answer within 10 s".into()),
        };
        if reply.cuts.is_empty() {
            return Ok(out);
        }
        out.extend(reply.cuts);
    }
}

/// One line for a decided cut.
fn describe(d: &pb::DecidedCut, c: &pb::Cut) -> String {
    let moved: Vec<String> = c
        .heads
        .iter()
        .map(|h| format!("{}:{}", h.origin, h.next))
        .collect();
    let fin = d.certificate.as_ref().map_or_else(
        || "decided by a later cut's finalization".to_string(),
        |f| format!("view {}, {} votes", f.view, f.votes.len()),
    );
    format!(
        "cut {} {} {} ({fin}) moved: {}",
        c.height,
        utc(c.time_ms),
        &hex::encode(cut::digest(&d.cut))[..16],
        if moved.is_empty() {
            "nothing".to_string()
        } else {
            moved.join(" ")
        }
    )
}

pub(super) async fn cuts(
    config: &std::path::Path,
    last: usize,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    let mut answered = 0;
    let mut faults = 0;
    // Each validator's chain as digests by height, to compare.
    let mut chains: Vec<(String, Vec<[u8; 32]>)> = Vec::new();
    for v in ledger
        .members
        .iter()
        .filter(|m| m.role == "validator" && only.is_none_or(|o| o == m.id))
    {
        let Some(mut client) = reach(&ledger, v, out, "").await? else {
            continue;
        };
        let got = match fetch_cuts(&mut client).await {
            Ok(g) => g,
            Err(e) => {
                writeln!(out, "validator {}: {e}", v.id)?;
                continue;
            }
        };
        answered += 1;
        let (decided, state, refused) =
            gridgate_ledger_node::cuts::check_chain(&CutState::genesis(), &genesis, &got);
        let pending = got.len() - decided.len();
        write!(
            out,
            "validator {}: decided height {}, {} cut(s) ",
            v.id,
            state.height,
            got.len()
        )?;
        match &refused {
            None => writeln!(out, "every link and finalization checks")?,
            Some(e) => {
                faults += 1;
                writeln!(out, "DO NOT CHECK: {e}")?
            }
        }
        if pending > 0 && refused.is_none() {
            faults += 1;
            writeln!(
                out,
                "  {pending} cut(s) after the last finalization: not decided"
            )?;
        }
        for (_, d) in decided.iter().rev().take(last).rev() {
            if let Ok(c) = cut::decode(&d.cut) {
                writeln!(out, "  {}", describe(d, &c))?;
            }
        }
        chains.push((
            v.id.clone(),
            decided.iter().map(|(_, d)| cut::digest(&d.cut)).collect(),
        ));
    }
    if answered == 0 {
        bail!("no validator answered");
    }
    // Every two validators hold the same cut at every height both hold.
    for (i, (a, ca)) in chains.iter().enumerate() {
        for (b, cb) in &chains[i + 1..] {
            if let Some(h) = ca.iter().zip(cb).position(|(x, y)| x != y) {
                faults += 1;
                writeln!(
                    out,
                    "validators {a} and {b} decided different cuts at height {}",
                    h + 1
                )?;
            }
        }
    }
    if chains.len() > 1 && faults == 0 {
        let common = chains.iter().map(|c| c.1.len()).min().unwrap_or(0);
        writeln!(
            out,
            "{} validators agree on every cut up to height {common}",
            chains.len()
        )?;
    }
    Ok(if faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
