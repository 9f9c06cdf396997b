//! `gridgate ledger settlement`: a day's settlement, from the certified entries the
//! validators hold.

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
    let mut hashes: Vec<(String, String)> = Vec::new();
    let mut statement = None;
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some(mut client) = reach(&ledger, v, out, "").await? else {
            continue;
        };
        let got = tokio::time::timeout(Duration::from_secs(30), fetch_all(&mut client, &members))
            .await
            .context("no answer within 30 s")
            .and_then(|r| r);
        match got {
            Ok(entries) => {
                let s = gridgate_ledger::settlement::settle_as_of(
                    from,
                    to,
                    as_of,
                    &entries,
                    &members,
                    &ledger.terms,
                );
                let h = hex::encode(s.hash());
                writeln!(
                    out,
                    "validator {}: {} certified entries, statement {h}",
                    v.id,
                    entries.len()
                )?;
                hashes.push((v.id.clone(), h));
                statement.get_or_insert(s);
            }
            Err(e) => writeln!(out, "validator {}: {e:#}", v.id)?,
        }
    }
    let Some(s) = statement else {
        bail!("no validator answered");
    };
    let close = to + gridgate_ledger::settlement::CLOSES_AFTER_MS;
    if s.as_of_ms < close {
        writeln!(
            out,
            "provisional: the statement closes at {} (reports logged until then count)",
            utc(close)
        )?;
    }
    write!(out, "{}", s.canonical())?;
    let agree = hashes.windows(2).all(|w| w[0].1 == w[1].1);
    if !agree {
        writeln!(out, "the validators' statements DIFFER")?;
    }
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
