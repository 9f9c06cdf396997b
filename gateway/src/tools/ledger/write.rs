//! What the consortium's people write to the ledger by hand:
//!
//! - `gridgate ledger publish`: the DR operator appends a signed DR event, program terms or
//!   an approved membership change to its own log (in its config's data directory) and gets
//!   it certified by the validators; it waits for the certificate and says so.
//! - `gridgate ledger propose` writes a membership change for the validators to approve;
//!   `gridgate ledger approve` adds one validator's approval to the file, with its key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gridgate_proto::v1 as pb;
use prost::Message;
use serde::Deserialize;

use gridgate_core::Identity;
use gridgate_core::reading::now_ms;
use gridgate_ledger_node::state::LedgerState;
use gridgate_ledger_node::tables::LedgerStore;

/// What `publish` appends.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct WhatToPublish {
    /// A signed DR event (from `gridgate dr sign`), issued by this operator.
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// Program terms, in TOML (program, price_milli_per_kwh, effective; cap_percent,
    /// threshold_percent, penalty_milli_per_kwh optional).
    #[arg(long)]
    pub terms: Option<PathBuf>,
    /// A membership change approved by a quorum of validators (`gridgate ledger approve`).
    #[arg(long)]
    pub membership: Option<PathBuf>,
    /// An area's market terms, in TOML (area, floor_milli_per_kwh, cap_milli_per_kwh,
    /// effective; tolerance_wh, max_rounds, interval, lead, gate_closure,
    /// penalty_milli_per_kwh optional; docs/market.md).
    #[arg(long)]
    pub market_terms: Option<PathBuf>,
}

/// An area's market terms as an operator writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarketTermsFile {
    area: String,
    floor_milli_per_kwh: i64,
    cap_milli_per_kwh: i64,
    tolerance_wh: Option<i64>,
    max_rounds: Option<u32>,
    interval: Option<String>,
    lead: Option<String>,
    gate_closure: Option<String>,
    round: Option<String>,
    penalty_milli_per_kwh: Option<i64>,
    /// "now" or an RFC 3339 UTC time.
    effective: String,
}

/// "now" or an RFC 3339 UTC time, as ms since 1970.
fn effective_ms(effective: &str) -> Result<i64> {
    if effective == "now" {
        return Ok(now_ms());
    }
    let t = humantime::parse_rfc3339_weak(effective)
        .with_context(|| format!("effective = {effective:?}: write \"now\" or a UTC time"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .context("a time before 1970")?
        .as_millis() as i64)
}

/// A duration key in seconds, or its default.
fn seconds(v: &Option<String>, key: &str, default: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(s)
                .with_context(|| format!("{key} = {s:?}: write e.g. 15m, 1h"))?;
            u32::try_from(d.as_secs()).with_context(|| format!("{key} = {s:?} is too long"))
        }
    }
}

/// A program's terms as an operator writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermsFile {
    program: String,
    price_milli_per_kwh: i64,
    cap_percent: Option<i64>,
    threshold_percent: Option<i64>,
    penalty_milli_per_kwh: Option<i64>,
    /// "now" or an RFC 3339 UTC time.
    effective: String,
}

/// The entry `publish` appends: (claim key, kind, payload).
fn entry_of(what: &WhatToPublish, me: &str) -> Result<(String, pb::EntryKind, Vec<u8>)> {
    if let Some(path) = &what.event {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let signed = pb::SignedDrEvent::decode(bytes.as_slice())
            .with_context(|| format!("{} is not a signed DR event", path.display()))?;
        let event = pb::DrEvent::decode(signed.event.as_slice())
            .with_context(|| format!("{}: the event does not decode", path.display()))?;
        if event.issuer != me {
            bail!(
                "{} was issued by {:?}; this operator is {me:?} and logs only its own events",
                path.display(),
                event.issuer
            );
        }
        return Ok((
            format!("event/{}", event.id),
            pb::EntryKind::DrEvent,
            signed.encode_to_vec(),
        ));
    }
    if let Some(path) = &what.terms {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: TermsFile =
            toml::from_str(&text).with_context(|| format!("{} is not terms", path.display()))?;
        let d = gridgate_ledger::settlement::Terms::default();
        let effective_ms = effective_ms(&f.effective)?;
        let t = pb::ProgramTerms {
            program: f.program,
            price_milli_per_kwh: f.price_milli_per_kwh,
            cap_percent: f.cap_percent.unwrap_or(d.cap_percent),
            threshold_percent: f.threshold_percent.unwrap_or(d.threshold_percent),
            penalty_milli_per_kwh: f.penalty_milli_per_kwh.unwrap_or(d.penalty_milli_per_kwh),
            effective_ms,
        };
        if gridgate_ledger::settlement::terms_of(&t).is_none() {
            bail!(
                "{}: prices are not negative, cap_percent is 0..=1000 and threshold_percent 0..=100",
                path.display()
            );
        }
        let bytes = t.encode_to_vec();
        let claim = format!(
            "terms/{}/{}",
            t.program,
            hex::encode(gridgate_core::sha256(&bytes))
        );
        return Ok((claim, pb::EntryKind::ProgramTerms, bytes));
    }
    if let Some(path) = &what.membership {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let signed = pb::SignedMembershipChange::decode(bytes.as_slice())
            .with_context(|| format!("{} is not a membership change", path.display()))?;
        let change = gridgate_ledger::membership::decode_change(&signed.change)?;
        return Ok((
            format!("membership/{}", change.id),
            pb::EntryKind::Membership,
            bytes,
        ));
    }
    if let Some(path) = &what.market_terms {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: MarketTermsFile = toml::from_str(&text)
            .with_context(|| format!("{} is not market terms", path.display()))?;
        let t = pb::MarketTerms {
            area: f.area,
            floor_milli_per_kwh: f.floor_milli_per_kwh,
            cap_milli_per_kwh: f.cap_milli_per_kwh,
            tolerance_wh: f.tolerance_wh.unwrap_or(0),
            max_rounds: f.max_rounds.unwrap_or(30),
            interval_s: seconds(&f.interval, "interval", 900)?,
            lead_s: seconds(&f.lead, "lead", 3_600)?,
            gate_closure_s: seconds(&f.gate_closure, "gate_closure", 300)?,
            penalty_milli_per_kwh: f.penalty_milli_per_kwh.unwrap_or(0),
            effective_ms: effective_ms(&f.effective)?,
            round_s: seconds(&f.round, "round", 10)?,
        };
        if gridgate_ledger::market::terms_of(&t).is_none() {
            bail!(
                "{}: an area, 0 <= floor <= cap, tolerance_wh and the penalty not negative, max_rounds 1..=64, an interval of 1m..24h, gate_closure shorter than lead, a round of at most 10m",
                path.display()
            );
        }
        let bytes = t.encode_to_vec();
        let claim = format!(
            "market-terms/{}/{}",
            t.area,
            hex::encode(gridgate_core::sha256(&bytes))
        );
        return Ok((claim, pb::EntryKind::MarketTerms, bytes));
    }
    bail!("give --event, --terms, --membership or --market-terms")
}

/// `gridgate ledger publish`.
pub async fn publish(
    config: &Path,
    what: &WhatToPublish,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let cfg = gridgate_config::load(config)?;
    let Some(ledger) = cfg.ledger.clone() else {
        bail!("{} has no [ledger] table", config.display());
    };
    let genesis = gridgate_ledger_node::load_members(&ledger)?;
    let role = genesis.0.get(&cfg.id).map(|m| m.role);
    if role != Some(pb::MemberRole::Operator) {
        bail!(
            "{:?} ([gateway] id) is not an operator of the consortium: only an operator publishes events, terms and membership changes",
            cfg.id
        );
    }
    let (claim, kind, payload) = entry_of(what, &cfg.id)?;
    if kind == pb::EntryKind::Membership {
        let signed = pb::SignedMembershipChange::decode(payload.as_slice())?;
        gridgate_ledger::membership::check_change(&signed, &genesis)
            .context("the validators would not vote for it")?;
    }
    let key = Identity::load(&cfg.identity)?;
    let store = Arc::new(
        gridgate_store::Store::open(&cfg.data_dir, &cfg.id).with_context(|| {
            format!(
                "opening this operator's log in {} (is `gridgate run` using it? stop it first)",
                cfg.data_dir.display()
            )
        })?,
    );
    let state = Arc::new(LedgerState::new(genesis));
    state.recover(&store)?;
    let seq =
        gridgate_ledger_node::certifier::append(&store, &cfg.id, &key, &claim, kind, payload)?;
    let quorum = state.genesis().quorum();
    writeln!(
        out,
        "{}'s log, entry {seq}: {} ({claim}); asking the validators for {quorum} votes...",
        cfg.id,
        kind.as_str_name()
    )?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let certifier = gridgate_ledger_node::certifier::Certifier {
        store: store.clone(),
        state,
        me: cfg.id.clone(),
        key,
        wake: Arc::default(),
    };
    let task = tokio::spawn(gridgate_ledger_node::certifier::run(
        certifier,
        ledger,
        cancel.clone(),
    ));
    let started = Instant::now();
    let certified = loop {
        let next = store.ledger().next_certified(&cfg.id)?;
        if next > seq {
            break true;
        }
        if started.elapsed() >= wait {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cancel.cancel();
    let _ = task.await;
    if certified {
        writeln!(
            out,
            "certified in {:.1} s: entry {seq} of {}'s log is final; the validators spread it to every replica",
            started.elapsed().as_secs_f64(),
            cfg.id
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "not certified within {} s (too few validators answered; see the log above). The entry stays in {}'s log: the next publish, or `gridgate run` with this config, gets it certified",
            wait.as_secs(),
            cfg.id
        )?;
        Ok(ExitCode::from(1))
    }
}

/// Parses `ID:ROLE:PUBLIC_KEY_FILE`.
fn member_record(spec: &str) -> Result<pb::MemberRecord> {
    let mut parts = spec.splitn(3, ':');
    let (Some(id), Some(role), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--add {spec:?}: write ID:ROLE:PUBLIC_KEY_FILE, e.g. site-043:gateway:site-043.pub");
    };
    let role = match role {
        "gateway" => pb::MemberRole::Gateway,
        "operator" => pb::MemberRole::Operator,
        "observer" => pb::MemberRole::Observer,
        "validator" => bail!(
            "--add {spec:?}: the validator set changes only with a new genesis (every node's config)"
        ),
        other => bail!("--add {spec:?}: {other:?} is not gateway, operator or observer"),
    };
    let key = gridgate_core::identity::load_public(Path::new(path))?;
    Ok(pb::MemberRecord {
        id: id.to_string(),
        role: role as i32,
        public_key: key.to_bytes().to_vec(),
    })
}

/// `gridgate ledger propose`: writes the change, with no approval yet.
pub fn propose(
    id: &str,
    add: &[String],
    remove: &[String],
    path: &Path,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    if path.exists() {
        bail!("{} exists; a proposal is never overwritten", path.display());
    }
    let change = pb::MembershipChange {
        id: id.to_string(),
        add: add
            .iter()
            .map(|a| member_record(a))
            .collect::<Result<_>>()?,
        remove: remove.to_vec(),
        proposed_ms: now_ms(),
    };
    let bytes = change.encode_to_vec();
    gridgate_ledger::membership::decode_change(&bytes)?;
    let signed = pb::SignedMembershipChange {
        change: bytes,
        approvals: Vec::new(),
    };
    std::fs::write(path, signed.encode_to_vec())
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(
        out,
        "wrote {}: change {id:?} ({} added, {} removed); each validator's operator runs `gridgate ledger approve` on it, then the DR operator publishes it",
        path.display(),
        change.add.len(),
        change.remove.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `gridgate ledger approve`: adds this validator's approval to the file, in place.
pub fn approve(config: &Path, path: &Path, out: &mut dyn Write) -> Result<ExitCode> {
    let cfg = gridgate_config::load(config)?;
    let Some(ledger) = cfg.ledger.as_ref() else {
        bail!("{} has no [ledger] table", config.display());
    };
    let genesis = gridgate_ledger_node::load_members(ledger)?;
    if !genesis.validators().contains(cfg.id.as_str()) {
        bail!(
            "{:?} ([gateway] id) is not a validator: only validators approve membership changes",
            cfg.id
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut signed = pb::SignedMembershipChange::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a membership change", path.display()))?;
    let change = gridgate_ledger::membership::decode_change(&signed.change)?;
    let key = Identity::load(&cfg.identity)?;
    signed.approvals.retain(|a| a.validator != cfg.id);
    signed.approvals.push(gridgate_ledger::membership::approve(
        &signed.change,
        &cfg.id,
        &key,
    ));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, signed.encode_to_vec())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))?;
    let need = genesis.quorum();
    let have = match gridgate_ledger::membership::check_change(&signed, &genesis) {
        Ok(_) => need,
        Err(gridgate_ledger::membership::ChangeError::NoQuorum { have, .. }) => have,
        Err(e) => return Err(e.into()),
    };
    writeln!(
        out,
        "{} approved change {:?}: {have} of the {need} approvals it needs{}",
        cfg.id,
        change.id,
        if have >= need {
            "; ready for `gridgate ledger publish --membership`"
        } else {
            ""
        }
    )?;
    Ok(ExitCode::SUCCESS)
}
