//! `gridgate ledger verify`: every log every validator holds, checked against the
//! membership.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};

use gridgate_ledger::entry::check_certified;

use super::peers::*;

pub(super) async fn verify(config: &std::path::Path, out: &mut dyn Write) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    // (origin, seq) -> (entry hash, the validator that first showed it).
    let mut seen: std::collections::BTreeMap<(String, u64), ([u8; 32], String)> =
        std::collections::BTreeMap::new();
    let (mut answered, mut faults) = (0, 0u64);
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some((mut client, heads, members)) = answering(&ledger, &genesis, v, out).await? else {
            continue;
        };
        answered += 1;
        let mut entries_checked = 0u64;
        for h in heads {
            let entries = fetch_log(&mut client, &h.origin, 0).await?;
            let mut prev = [0u8; 32];
            for (want, c) in entries.iter().enumerate() {
                let (e, hash) = match check_certified(c, &members) {
                    Ok(v) => v,
                    Err(err) => {
                        faults += 1;
                        writeln!(
                            out,
                            "FAULT validator {}: {} entry {want}: {err}",
                            v.id, h.origin
                        )?;
                        break;
                    }
                };
                if e.origin != h.origin || e.seq != want as u64 || e.prev_hash != prev {
                    faults += 1;
                    writeln!(
                        out,
                        "FAULT validator {}: {}'s log breaks at {want} (holds {}:{} naming another previous entry)",
                        v.id, h.origin, e.origin, e.seq
                    )?;
                    break;
                }
                match seen.get(&(e.origin.clone(), e.seq)) {
                    Some((other, by)) if *other != hash => {
                        faults += 1;
                        writeln!(
                            out,
                            "FAULT FORK: validators {by} and {} hold different entries at {}:{}",
                            v.id, e.origin, e.seq
                        )?;
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((e.origin.clone(), e.seq), (hash, v.id.clone()));
                    }
                }
                prev = hash;
                entries_checked += 1;
            }
        }
        writeln!(
            out,
            "validator {}: {entries_checked} certified entries checked (certificates, chains)",
            v.id
        )?;
    }
    if answered == 0 {
        bail!("no validator answered");
    }
    writeln!(
        out,
        "{} place(s) on {} log(s) across {answered} validator(s): {}",
        seen.len(),
        seen.keys()
            .map(|(o, _)| o)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        if faults == 0 {
            "no fault, no fork".to_string()
        } else {
            format!("{faults} FAULT(S)")
        }
    )?;
    Ok(if faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
