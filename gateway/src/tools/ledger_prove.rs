//! `gridgate ledger prove`: what the master station checks of the batches it pulled against
//! the gateway's certified batch commitments. Each commitment is the RFC 6962 root over a
//! range of the gateway's signed batches (their canonical bytes, `SignedBatch.batch`); with
//! every batch of a range at hand the root is recomputed, and one batch's inclusion is shown
//! as its audit path. The commitments must follow one another: each starts where the one
//! before it ended (a gap is a range retention dropped before its commitment; an overlap is a
//! fault). Together with the certified, hash-chained log, a newer commitment extends the
//! older ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Verifier};
use gridgate_proto::v1 as pb;
use prost::Message;

use super::ledger::{consortium, fetch_log, members_held, reach, utc};
use crate::ledger::entry::check_certified;
use crate::ledger::merkle;

/// One certified commitment of the gateway's log.
struct Commitment {
    /// Its place in the gateway's log.
    entry_seq: u64,
    /// When the gateway logged it.
    at_ms: i64,
    /// Votes in its certificate.
    votes: usize,
    c: pb::BatchCommitment,
}

/// The canonical bytes of the batches in `dir` (`batch-<seq>.pb`, as `gridgate pull --out`
/// writes them), by sequence number, each signature checked with the gateway's key.
fn pulled_batches(
    dir: &Path,
    key: &ed25519_dalek::VerifyingKey,
    out: &mut dyn Write,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let mut batches = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        let Some(seq) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("batch-"))
            .and_then(|n| n.strip_suffix(".pb"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let signed = match pb::SignedBatch::decode(bytes.as_slice()) {
            Ok(s) => s,
            Err(e) => {
                writeln!(out, "skipped {}: not a signed batch ({e})", path.display())?;
                continue;
            }
        };
        let good = Signature::from_slice(&signed.signature)
            .is_ok_and(|s| key.verify(&signed.batch, &s).is_ok());
        if !good {
            writeln!(
                out,
                "skipped {}: its signature is not the gateway's",
                path.display()
            )?;
            continue;
        }
        let named = pb::Batch::decode(signed.batch.as_slice()).map(|b| b.seq);
        if named != Ok(seq) {
            writeln!(
                out,
                "skipped {}: the batch in it is not batch {seq}",
                path.display()
            )?;
            continue;
        }
        batches.insert(seq, signed.batch);
    }
    Ok(batches)
}

/// A reading to find: `POINT@TS_MS`.
pub fn parse_reading(spec: &str) -> Result<(String, i64)> {
    let Some((point, ts)) = spec.rsplit_once('@') else {
        bail!("--reading {spec:?}: write POINT@TS_MS, e.g. meter-1/energy_import@1795910400000");
    };
    let ts = ts
        .parse()
        .with_context(|| format!("--reading {spec:?}: {ts:?} is not a time in ms"))?;
    Ok((point.to_string(), ts))
}

/// The pulled batch that holds the reading of `point` at `ts_ms`, and its place in it.
fn batch_of_reading(
    batches: &BTreeMap<u64, Vec<u8>>,
    point: &str,
    ts_ms: i64,
) -> Option<(u64, usize)> {
    batches.iter().find_map(|(seq, bytes)| {
        let b = pb::Batch::decode(bytes.as_slice()).ok()?;
        let i = b
            .readings
            .iter()
            .position(|r| r.point == point && r.ts_ms == ts_ms)?;
        Some((*seq, i))
    })
}

/// `gridgate ledger prove`.
pub async fn prove(
    config: &Path,
    gateway: &str,
    dir: &Path,
    mut batch: Option<u64>,
    reading: Option<(String, i64)>,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let (ledger, genesis) = consortium(config)?;
    let mut found = None;
    for v in ledger
        .members
        .iter()
        .filter(|m| m.role == "validator" && only.is_none_or(|o| o == m.id))
    {
        let Some(mut client) = reach(&ledger, v, out, "# ").await? else {
            continue;
        };
        let fetched = match members_held(&mut client, &genesis).await {
            Ok(members) => fetch_log(&mut client, gateway, 0)
                .await
                .map(|log| (members, log)),
            Err(e) => Err(e),
        };
        match fetched {
            Ok(f) => {
                found = Some((v.id.clone(), f));
                break;
            }
            Err(e) => writeln!(out, "# validator {}: {e:#}", v.id)?,
        }
    }
    let Some((validator, (members, log))) = found else {
        bail!("no validator answered");
    };
    let Some(member) = members.0.get(gateway) else {
        bail!("{gateway:?} is not a member of the consortium");
    };
    let mut commitments = Vec::new();
    for c in &log {
        let (e, _) = check_certified(c, &members)
            .map_err(|e| anyhow::anyhow!("{gateway}'s log does not check: {e}"))?;
        if e.kind != pb::EntryKind::BatchCommitment as i32 {
            continue;
        }
        let bc = pb::BatchCommitment::decode(e.payload.as_slice())
            .with_context(|| format!("{gateway}'s entry {} is not a commitment", e.seq))?;
        commitments.push(Commitment {
            entry_seq: e.seq,
            at_ms: e.timestamp_ms,
            votes: c.certificate.as_ref().map_or(0, |c| c.votes.len()),
            c: bc,
        });
    }
    let batches = pulled_batches(dir, &member.key, out)?;
    writeln!(
        out,
        "{gateway}: {} certified commitment(s) from validator {validator}; {} signed batch(es) in {}",
        commitments.len(),
        batches.len(),
        dir.display()
    )?;
    if let Some((point, ts)) = &reading {
        match batch_of_reading(&batches, point, *ts) {
            Some((seq, i)) => {
                writeln!(
                    out,
                    "reading {point}@{ts}: reading {i} of batch {seq} (signed by {gateway})"
                )?;
                batch = Some(seq);
            }
            None => {
                writeln!(out, "reading {point}@{ts}: in none of the batches here")?;
                return Ok(ExitCode::from(1));
            }
        }
    }
    let mut faults = 0;
    let mut end: Option<u64> = None;
    let mut proved = batch.is_none();
    for k in &commitments {
        let (first, size) = (k.c.first_seq, k.c.tree_size);
        let last = first + size;
        match end {
            Some(e) if first < e => {
                faults += 1;
                writeln!(
                    out,
                    "FAULT commitment at entry {} (batches {first}..{last}) overlaps the one before it (which ended at {e})",
                    k.entry_seq
                )?;
            }
            Some(e) if first > e => writeln!(
                out,
                "note: batches {e}..{first} have no commitment (dropped by retention before it)"
            )?,
            _ => {}
        }
        end = Some(last);
        let leaves: Option<Vec<merkle::Hash>> = (first..last)
            .map(|s| batches.get(&s).map(|b| merkle::leaf(b)))
            .collect();
        let Some(leaves) = leaves else {
            let have = (first..last).filter(|s| batches.contains_key(s)).count();
            writeln!(
                out,
                "batches {first}..{last} (entry {}, {}): {have} of {size} here, root not recomputed",
                k.entry_seq,
                utc(k.at_ms)
            )?;
            continue;
        };
        let root = merkle::root(&leaves);
        if root.as_slice() != k.c.root.as_slice() {
            faults += 1;
            writeln!(
                out,
                "FAULT batches {first}..{last} (entry {}): the root over them is {}, the certified commitment says {}",
                k.entry_seq,
                hex::encode(root),
                hex::encode(&k.c.root)
            )?;
            continue;
        }
        writeln!(
            out,
            "batches {first}..{last} (entry {}, {}, {} votes): root {} matches",
            k.entry_seq,
            utc(k.at_ms),
            k.votes,
            &hex::encode(root)[..16]
        )?;
        if let Some(n) = batch.filter(|n| (first..last).contains(n)) {
            let index = (n - first) as usize;
            let path = merkle::audit_path(&leaves, index);
            let ok = merkle::verify_inclusion(&leaves[index], index as u64, size, &path, &root);
            writeln!(
                out,
                "batch {n}: leaf {index} of {size}, leaf hash {}, audit path [{}] to root {}: {}",
                hex::encode(leaves[index]),
                path.iter().map(hex::encode).collect::<Vec<_>>().join(", "),
                hex::encode(root),
                if ok { "included" } else { "NOT included" }
            )?;
            proved = ok;
        }
    }
    if let Some(n) = batch
        && !proved
    {
        writeln!(
            out,
            "batch {n}: no certified commitment with all of its range here proves it"
        )?;
    }
    Ok(if faults == 0 && proved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
