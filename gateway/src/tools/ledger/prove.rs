//! `gridgate ledger prove`: what the master station checks of the batches it pulled against
//! the gateway's certified batch commitments ([`gridgate_ledger_node::commitment`]): that each
//! commitment extends the one before it (its RFC 9162 consistency proof), that the batches it
//! added, where all are at hand, grow the tree to its root, and one batch's (or one reading's)
//! inclusion as its audit path.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Verifier};
use gridgate_proto::v1 as pb;
use prost::Message;

use super::peers::{consortium, log_of, utc};
use gridgate_ledger::commitment::{self, Finding, Logged};
use gridgate_ledger::entry::check_certified;
use gridgate_ledger::merkle;

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
    let Some(held) = log_of(&ledger, &genesis, gateway, 0, only, out).await? else {
        bail!("no validator answered");
    };
    let (validator, members, log) = (held.validator, held.members, held.entries);
    let Some(member) = members.0.get(gateway) else {
        bail!("{gateway:?} is not a member of the consortium");
    };
    let mut commitments = Vec::new();
    let mut when: BTreeMap<u64, (i64, usize)> = BTreeMap::new();
    for c in &log {
        let (e, _) = check_certified(c, &members)
            .map_err(|e| anyhow::anyhow!("{gateway}'s log does not check: {e}"))?;
        if e.kind != pb::EntryKind::BatchCommitment as i32 {
            continue;
        }
        let bc = pb::BatchCommitment::decode(e.payload.as_slice())
            .with_context(|| format!("{gateway}'s entry {} is not a commitment", e.seq))?;
        when.insert(
            e.seq,
            (
                e.timestamp_ms,
                c.certificate.as_ref().map_or(0, |c| c.votes.len()),
            ),
        );
        commitments.push(Logged {
            entry: e.seq,
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
    let leaf = |seq: u64| batches.get(&seq).map(|b| merkle::leaf(b));
    let stamp = |entry: u64| {
        when.get(&entry)
            .map(|(at, votes)| format!("entry {entry}, {}, {votes} votes", utc(*at)))
            .unwrap_or_else(|| format!("entry {entry}"))
    };
    let mut faults = 0;
    for f in commitment::audit(&commitments, &leaf) {
        match f {
            Finding::Extends { entry, previous } => writeln!(
                out,
                "entry {entry} extends entry {previous}: its consistency proof checks"
            )?,
            Finding::NewTree { entry, from, first } if from < first => writeln!(
                out,
                "note: entry {entry} starts a new tree at batch {first}; batches {from}..{first} have no commitment (retention dropped them before it)"
            )?,
            Finding::NewTree { entry, first, .. } => {
                writeln!(out, "entry {entry} starts the tree at batch {first}")?
            }
            Finding::Matches { entry, from, to } => writeln!(
                out,
                "batches {from}..{to} ({}): they grow the tree to its certified root: matches",
                stamp(entry)
            )?,
            Finding::Partial {
                entry,
                from,
                to,
                have,
            } => writeln!(
                out,
                "batches {from}..{to} ({}): {have} of {} here, root not recomputed",
                stamp(entry),
                to - from
            )?,
            Finding::Fault { entry, what } => {
                faults += 1;
                writeln!(out, "FAULT entry {entry}: {what}")?;
            }
        }
    }
    let mut proved = batch.is_none();
    if let Some(n) = batch {
        match commitment::prove(&commitments, &leaf, n) {
            Some(p) => {
                writeln!(
                    out,
                    "batch {n}: leaf {} of {} in the tree of entry {}, leaf hash {}, audit path [{}] to root {}: included",
                    p.index,
                    p.size,
                    p.entry,
                    hex::encode(p.leaf),
                    p.path
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(", "),
                    hex::encode(p.root)
                )?;
                proved = true;
            }
            None => writeln!(
                out,
                "batch {n}: not proved (no certified commitment added it, or the batches it added are not all here)"
            )?,
        }
    }
    Ok(if faults == 0 && proved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
