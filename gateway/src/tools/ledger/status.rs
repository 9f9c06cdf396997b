//! `gridgate ledger status`: every validator's heads, each log's certificates checked.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use gridgate_ledger::entry::check_certified;

use super::peers::*;

pub(super) async fn status(config: &std::path::Path, out: &mut dyn Write) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    let mut answered = 0;
    let mut faults = 0;
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some((mut client, heads, members)) = answering(&ledger, &genesis, v, out).await? else {
            continue;
        };
        answered += 1;
        writeln!(out, "validator {}: {} log(s)", v.id, heads.len())?;
        if members != genesis {
            let now: Vec<String> = members
                .0
                .values()
                .filter(|m| !genesis.0.contains_key(&m.id) || m.removed)
                .map(|m| {
                    if m.removed {
                        format!("{} removed", m.id)
                    } else {
                        format!("{} added", m.id)
                    }
                })
                .collect();
            writeln!(
                out,
                "  membership: {} member(s), changed since genesis: {}",
                members.0.values().filter(|m| !m.removed).count(),
                now.join(", ")
            )?;
        }
        for h in heads {
            let entries = fetch_log(&mut client, &h.origin, 0)
                .await
                .with_context(|| format!("fetch {} from {}", h.origin, v.id))?;
            let (mut good, mut bad) = (0u64, Vec::new());
            for c in &entries {
                match check_certified(c, &members) {
                    Ok(_) => good += 1,
                    Err(e) => bad.push(e.to_string()),
                }
            }
            faults += bad.len();
            writeln!(
                out,
                "  {}: {} certified entries (next {}), {}",
                h.origin,
                good,
                h.next_certified,
                if bad.is_empty() {
                    "every certificate checks".to_string()
                } else {
                    format!("{} do not check: {}", bad.len(), bad.join("; "))
                }
            )?;
        }
    }
    if answered == 0 {
        bail!("no validator answered");
    }
    Ok(if faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
