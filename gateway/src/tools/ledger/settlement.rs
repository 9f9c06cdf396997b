//! `gridgate ledger settlement`: a period's settlement, from the certified entries the
//! validators hold, closed on the first decided cut past the period's end and grace: each
//! validator's statement is computed from the entries that cut orders, so they agree.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::peers::*;

pub(super) async fn settlement(
    config: &std::path::Path,
    from: i64,
    to: i64,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    // One moment for every validator's statement, so that their hashes compare.
    let as_of = gridgate_core::reading::now_ms();
    let (ledger, members) = consortium(config)?;
    let close = gridgate_ledger::settlement::close_ms(to, &ledger.terms);
    let mut hashes: Vec<(String, String)> = Vec::new();
    let mut statement = None;
    // First every validator's entries and its closing cut (its chain checked); then one
    // closing cut for all: each statement is that cut's order over the validator's entries.
    let mut held = Vec::new();
    let mut closing: Option<gridgate_ledger::settlement::ClosingCut> = None;
    let mut no_cuts = 0;
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some(mut client) = reach(&ledger, v, out, "").await? else {
            continue;
        };
        let got = tokio::time::timeout(Duration::from_secs(30), fetch_all(&mut client, &members))
            .await
            .context("no answer within 30 s")
            .and_then(|r| r);
        let entries = match got {
            Ok(entries) => entries,
            Err(e) => {
                writeln!(out, "validator {}: {e:#}", v.id)?;
                continue;
            }
        };
        let cuts = match super::cuts::fetch_cuts(&mut client).await {
            Ok(c) => c,
            Err(e) => {
                writeln!(out, "validator {}: its decided cuts: {e}", v.id)?;
                continue;
            }
        };
        no_cuts += usize::from(cuts.is_empty());
        match gridgate_ledger_node::cuts::closing_cut(&cuts, &members, close) {
            Ok(Some(c)) => match &closing {
                Some(first) if (first.height, first.digest) != (c.height, c.digest) => {
                    writeln!(
                        out,
                        "validator {}: closes on cut {} {}, another validator on cut {} {}",
                        v.id,
                        c.height,
                        hex::encode(c.digest),
                        first.height,
                        hex::encode(first.digest)
                    )?;
                    hashes.push((v.id.clone(), "another closing cut".into()));
                }
                Some(_) => {}
                None => closing = Some(c),
            },
            Ok(None) => {}
            Err(e) => {
                writeln!(
                    out,
                    "validator {}: its decided cuts DO NOT CHECK: {e}",
                    v.id
                )?;
                hashes.push((v.id.clone(), "cuts do not check".into()));
            }
        }
        held.push((v.id.clone(), entries));
    }
    for (id, entries) in &held {
        let s = match &closing {
            Some(cut) => gridgate_ledger::settlement::settle_on_cut(
                from,
                to,
                cut,
                entries,
                &members,
                &ledger.terms,
            ),
            None => gridgate_ledger::settlement::settle_as_of(
                from,
                to,
                as_of,
                entries,
                &members,
                &ledger.terms,
            ),
        };
        let h = hex::encode(s.hash());
        writeln!(
            out,
            "validator {id}: {} certified entries, statement {h}",
            entries.len()
        )?;
        hashes.push((id.clone(), h));
        statement.get_or_insert(s);
    }
    let Some(s) = statement else {
        bail!("no validator answered");
    };
    match s.cut {
        Some((height, digest)) => writeln!(
            out,
            "closed on decided cut {height} {}: the entries it orders count, nothing later",
            hex::encode(digest)
        )?,
        None if no_cuts == held.len() && s.as_of_ms >= close => writeln!(
            out,
            "closed by the entries' own times: these validators decide no cuts (gridgate run, not gridgate-node)"
        )?,
        None => writeln!(
            out,
            "provisional: the statement closes on the first decided cut at or after {} (entries ordered until then count)",
            utc(close)
        )?,
    }
    write!(out, "{}", s.canonical())?;
    let agree = hashes.iter().all(|h| h.1 == hashes[0].1);
    if !agree {
        writeln!(out, "the validators' statements DIFFER")?;
    }
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
