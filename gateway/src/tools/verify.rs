//! `gridgate verify`: the whole chain in a data directory, checked offline.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use gridgate_core::identity::load_public;
use gridgate_store as store;
use gridgate_store::batch::verify::ChainVerifier;

/// Verifies every stored batch; prints counts and the first fault.
pub fn run(data_dir: &Path, pubkey: &Path, list: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let key = load_public(pubkey)?;
    let st = store::open_for_verify(data_dir).context("cannot open the store")?;
    let stats = st.stats()?;
    let (first, anchor) = st.anchor()?;
    let mut v = ChainVerifier::new(key);
    if first > 0 {
        v = v.anchor(first, Some(anchor));
    }
    writeln!(
        out,
        "store {} (gateway {}): batches {}..{}",
        st.path().display(),
        st.gateway_id(),
        stats.first_seq,
        stats.next_seq
    )?;
    let mut next = first;
    let mut fault = None;
    'outer: loop {
        let chunk = st.batches_from(next, 256)?;
        if chunk.is_empty() {
            break;
        }
        for (seq, bytes) in chunk {
            match v.push(seq, &bytes) {
                Ok(b) => {
                    if list {
                        writeln!(
                            out,
                            "  batch {seq}: {} readings, closed at {} ms",
                            b.readings.len(),
                            b.created_at_ms
                        )?;
                    }
                }
                Err(f) => {
                    fault = Some(f);
                    break 'outer;
                }
            }
            next = seq + 1;
        }
    }
    if fault.is_none() && next != stats.next_seq {
        fault = Some(gridgate_store::batch::verify::Fault::Gap {
            expected: next,
            found: stats.next_seq,
        });
    }
    writeln!(
        out,
        "verified {} batch(es), {} reading(s)",
        v.batches, v.readings
    )?;
    if stats.first_seq > 0 {
        writeln!(
            out,
            "batches before {} were pruned after delivery (or dropped by the disk budget)",
            stats.first_seq
        )?;
    }
    if stats.dropped_readings > 0 {
        writeln!(
            out,
            "the disk budget dropped {} undelivered reading(s) in {} batch(es)",
            stats.dropped_readings, stats.dropped_batches
        )?;
    }
    writeln!(
        out,
        "{} reading(s) wait for the next batch",
        stats.open_readings
    )?;
    match fault {
        None => {
            writeln!(out, "chain OK")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(f) => {
            writeln!(out, "FAULT: {f}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}
