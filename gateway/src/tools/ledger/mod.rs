//! `gridgate ledger status`: asks every validator the config's `[ledger]` names for its heads,
//! fetches the certified entries of every log it holds, and checks each certificate against
//! the membership; prints one line per validator and per log. Exit 1 when an entry does not
//! check or no validator answers.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_client::LedgerClient;

use gridgate_ledger::entry::check_certified;

/// `gridgate ledger ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LedgerCommand {
    /// Every validator's certified heads, each log's entries checked against the membership.
    ///
    /// Example: gridgate ledger status --config /etc/gridgate/gridgate.toml
    Status {
        /// The node's config (its [ledger] lists the members, the validators' endpoints and
        /// the TLS client identity to reach them).
        #[arg(long)]
        config: PathBuf,
    },
    /// The settlement statement of one UTC day, computed from each validator's certified
    /// entries (every certificate checked); prints each validator's statement hash (they must
    /// agree) and the statement.
    ///
    /// Example: gridgate ledger settlement --config /etc/gridgate/gridgate.toml --day 2026-11-29
    Settlement {
        /// The node's config (members, validators, terms, TLS client identity).
        #[arg(long)]
        config: PathBuf,
        /// The day, UTC (YYYY-MM-DD); events settle on the day they start.
        #[arg(long, required_unless_present = "period", conflicts_with = "period")]
        day: Option<String>,
        /// Several days, UTC: FROM..TO (YYYY-MM-DD..YYYY-MM-DD, TO not included).
        #[arg(long)]
        period: Option<String>,
    },
    /// One member's log as a validator holds it: each certified entry with its time, kind,
    /// what it says and its certificate checked.
    ///
    /// Example: gridgate ledger log --config /etc/gridgate/gridgate.toml --origin site-042
    Log {
        /// The node's config (members, validators, TLS client identity).
        #[arg(long)]
        config: PathBuf,
        /// Whose log (a member id).
        #[arg(long)]
        origin: String,
        /// Which validator to ask (default: the first that answers).
        #[arg(long)]
        validator: Option<String>,
        /// First sequence number to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Issues a member's TLS certificate for its identity key, signed by the consortium's
    /// CA: the Ledger service knows its callers by this key. Run where the CA key is kept.
    ///
    /// Example: gridgate ledger member-cert --pki /etc/gridgate/consortium --public-key
    /// members/site-042.pub --id site-042 --out site-042-member.pem
    MemberCert {
        /// The consortium CA's directory (ca.pem and ca.key, from gridgate keygen --pki).
        #[arg(long)]
        pki: PathBuf,
        /// The member's public identity key (identity.pub, from gridgate keygen on the
        /// member's machine; the private key never leaves it).
        #[arg(long)]
        public_key: PathBuf,
        /// The member's id.
        #[arg(long)]
        id: String,
        /// Names a validator serves under, besides localhost (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Where to write the certificate (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks every validator's replica: each certificate, each log's chain (gapless, every
    /// entry naming the hash of the one before), and that no two validators hold different
    /// entries for one place (a fork). Exit 1 on any fault.
    ///
    /// Example: gridgate ledger verify --config /etc/gridgate/gridgate.toml
    Verify {
        /// The node's config (members, validators, TLS client identity).
        #[arg(long)]
        config: PathBuf,
    },
    /// Checks batches pulled from a gateway (`gridgate pull --out DIR`) against its certified
    /// batch commitments: each range's RFC 6962 root recomputed, the ranges following one
    /// another, and with --batch (or --reading) one batch's audit path. Exit 1 on a mismatch,
    /// or when the batch asked for is not proved.
    ///
    /// Example: gridgate ledger prove --config /etc/gridgate/gridgate.toml --gateway site-042
    /// --batches pulled/ --batch 1234
    Prove {
        /// The node's config (members, validators, TLS client identity).
        #[arg(long)]
        config: PathBuf,
        /// The gateway (its member id).
        #[arg(long)]
        gateway: String,
        /// Where the pulled batches are (batch-<seq>.pb files).
        #[arg(long)]
        batches: PathBuf,
        /// Show this batch's inclusion proof.
        #[arg(long, conflicts_with = "reading")]
        batch: Option<u64>,
        /// Show the inclusion proof of the batch that holds this reading: POINT@TS_MS.
        #[arg(long)]
        reading: Option<String>,
        /// Which validator to ask (default: the first that answers).
        #[arg(long)]
        validator: Option<String>,
    },
    /// Follows the certified entries a validator stores from now on (all logs, or --origin
    /// only), each checked and printed as `gridgate ledger log` does, until interrupted.
    ///
    /// Example: gridgate ledger watch --config /etc/gridgate/gridgate.toml --origin dr-operator
    Watch {
        /// The node's config (members, validators, TLS client identity).
        #[arg(long)]
        config: PathBuf,
        /// Only these logs (repeatable).
        #[arg(long)]
        origin: Vec<String>,
        /// Which validator to follow (default: the first that answers).
        #[arg(long)]
        validator: Option<String>,
    },
    /// The DR operator appends a signed DR event, program terms or an approved membership
    /// change to its own log and waits until the validators certify it.
    ///
    /// Example: gridgate ledger publish --config /etc/gridgate/operator.toml --event
    /// event.signed
    Publish {
        /// The operator's config ([gateway] id an operator member, data_dir its log, identity
        /// its key, [ledger] the validators).
        #[arg(long)]
        config: PathBuf,
        /// What to append.
        #[command(flatten)]
        what: super::ledger_write::WhatToPublish,
        /// How long to wait for the certificate.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Writes a membership change (members added or removed) for the validators to approve.
    ///
    /// Example: gridgate ledger propose --id add-site-043 --add
    /// site-043:gateway:members/site-043.pub --out add-site-043.change
    Propose {
        /// The change's id, unique for all time.
        #[arg(long)]
        id: String,
        /// A member to add: ID:ROLE:PUBLIC_KEY_FILE (role gateway, operator or observer;
        /// repeatable).
        #[arg(long)]
        add: Vec<String>,
        /// A member id to remove (repeatable).
        #[arg(long)]
        remove: Vec<String>,
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds this validator's approval (a signature with its identity key) to a membership
    /// change file, in place. 2f+1 validators approve before it is published.
    ///
    /// Example: gridgate ledger approve --config /etc/gridgate/gridgate.toml add-site-043.change
    Approve {
        /// The validator's config ([gateway] id and identity).
        #[arg(long)]
        config: PathBuf,
        /// The change (from gridgate ledger propose).
        change: PathBuf,
    },
}

/// Runs a `gridgate ledger` command.
pub async fn run(cmd: LedgerCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match cmd {
        LedgerCommand::Status { config } => status(&config, out).await,
        LedgerCommand::Settlement {
            config,
            day,
            period,
        } => {
            let (from, to) = match (day, period) {
                (Some(d), _) => {
                    let from = day_start_ms(&d)?;
                    (from, from + 86_400_000)
                }
                (None, Some(p)) => {
                    let Some((a, b)) = p.split_once("..") else {
                        bail!("--period {p:?}: write FROM..TO, e.g. 2026-11-01..2026-12-01");
                    };
                    let (from, to) = (day_start_ms(a)?, day_start_ms(b)?);
                    if to <= from {
                        bail!("--period {p:?}: TO must come after FROM");
                    }
                    (from, to)
                }
                (None, None) => bail!("give --day or --period"),
            };
            settlement(&config, from, to, out).await
        }
        LedgerCommand::Log {
            config,
            origin,
            validator,
            from,
        } => log(&config, &origin, validator.as_deref(), from, out).await,
        LedgerCommand::Verify { config } => verify(&config, out).await,
        LedgerCommand::Prove {
            config,
            gateway,
            batches,
            batch,
            reading,
            validator,
        } => {
            let reading = reading
                .as_deref()
                .map(super::ledger_prove::parse_reading)
                .transpose()?;
            super::ledger_prove::prove(
                &config,
                &gateway,
                &batches,
                batch,
                reading,
                validator.as_deref(),
                out,
            )
            .await
        }
        LedgerCommand::Watch {
            config,
            origin,
            validator,
        } => watch(&config, origin, validator.as_deref(), out).await,
        LedgerCommand::Publish { config, what, wait } => {
            super::ledger_write::publish(&config, &what, wait, out).await
        }
        LedgerCommand::Propose {
            id,
            add,
            remove,
            out: path,
        } => super::ledger_write::propose(&id, &add, &remove, &path, out),
        LedgerCommand::Approve { config, change } => {
            super::ledger_write::approve(&config, &change, out)
        }
        LedgerCommand::MemberCert {
            pki,
            public_key,
            id,
            hosts,
            out: path,
        } => {
            if path.exists() {
                bail!(
                    "{} exists; a certificate is never overwritten",
                    path.display()
                );
            }
            let pem = gridgate_api::pki::member_cert(&pki, &public_key, &id, &hosts)?;
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            writeln!(
                out,
                "wrote {} for member {id:?}: its [ledger] cert_file, with its identity.key as key_file",
                path.display(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Midnight UTC of `day` (YYYY-MM-DD), ms.
fn day_start_ms(day: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(&format!("{day} 00:00:00"))
        .with_context(|| format!("--day {day:?}: write YYYY-MM-DD"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .context("a day before 1970")?;
    Ok(d.as_millis() as i64)
}

/// The membership a validator's replica puts in force: the genesis one with the certified
/// membership changes in its operators' and validators' logs (each certificate checked
/// against the genesis membership) applied.
pub(super) async fn members_held(
    client: &mut LedgerClient<tonic::transport::Channel>,
    genesis: &gridgate_ledger::Members,
) -> Result<gridgate_ledger::Members> {
    let mut entries = Vec::new();
    for m in genesis
        .0
        .values()
        .filter(|m| matches!(m.role, pb::MemberRole::Operator | pb::MemberRole::Validator))
    {
        for c in fetch_log(client, &m.id, 0).await? {
            if let Ok((e, _)) = check_certified(&c, genesis) {
                entries.push(e);
            }
        }
    }
    let changes = gridgate_ledger::membership::changes_in(entries.iter(), genesis);
    Ok(gridgate_ledger::membership::apply(genesis, changes.iter()))
}

/// Every certified entry a validator holds, each certificate checked (against the
/// membership its replica puts in force).
async fn fetch_all(
    client: &mut LedgerClient<tonic::transport::Channel>,
    genesis: &gridgate_ledger::Members,
) -> Result<Vec<gridgate_ledger::settlement::Certified>> {
    let members = &members_held(client, genesis).await?;
    let heads = client.heads(pb::HeadsRequest {}).await?.into_inner().heads;
    let mut out = Vec::new();
    for h in heads {
        for c in fetch_log(client, &h.origin, 0).await? {
            let (entry, _) = check_certified(&c, members)
                .map_err(|e| anyhow::anyhow!("{} entry does not check: {e}", h.origin))?;
            out.push(gridgate_ledger::settlement::Certified { entry });
        }
    }
    Ok(out)
}

/// The config's `[ledger]` and its membership with the keys read.
pub(super) fn consortium(
    config: &std::path::Path,
) -> Result<(
    gridgate_config::ledger::LedgerConfig,
    gridgate_ledger::Members,
)> {
    let cfg = gridgate_config::load(config)?;
    let Some(ledger) = cfg.ledger else {
        bail!("{} has no [ledger] table", config.display());
    };
    let members = gridgate_ledger_node::load_members(&ledger)?;
    Ok((ledger, members))
}

/// A client of the validator at `endpoint`, with the config's TLS client identity.
async fn validator(
    ledger: &gridgate_config::ledger::LedgerConfig,
    endpoint: &str,
) -> Result<LedgerClient<tonic::transport::Channel>> {
    let channel = super::pull::connect(
        endpoint,
        ledger.ca_file.as_ref(),
        ledger.cert_file.as_ref(),
        ledger.key_file.as_ref(),
    )
    .await?;
    Ok(LedgerClient::new(channel))
}

/// A client of validator `v`, or `None` after saying on `out` why it cannot be reached
/// (each line starts with `prefix`).
pub(super) async fn reach(
    ledger: &gridgate_config::ledger::LedgerConfig,
    v: &gridgate_config::ledger::MemberConfig,
    out: &mut dyn Write,
    prefix: &str,
) -> Result<Option<LedgerClient<tonic::transport::Channel>>> {
    let Some(endpoint) = &v.endpoint else {
        writeln!(out, "{prefix}validator {}: no endpoint in the config", v.id)?;
        return Ok(None);
    };
    match validator(ledger, endpoint).await {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            writeln!(out, "{prefix}validator {}: unreachable ({e:#})", v.id)?;
            Ok(None)
        }
    }
}

/// A validator's heads, or why not (within 10 s).
async fn heads_of(
    client: &mut LedgerClient<tonic::transport::Channel>,
) -> std::result::Result<Vec<pb::Head>, String> {
    match tokio::time::timeout(Duration::from_secs(10), client.heads(pb::HeadsRequest {})).await {
        Ok(Ok(h)) => Ok(h.into_inner().heads),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

async fn settlement(
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

/// A validator that answers with its heads, and the membership its replica puts in force;
/// `None` after saying on `out` why not.
async fn answering(
    ledger: &gridgate_config::ledger::LedgerConfig,
    genesis: &gridgate_ledger::Members,
    v: &gridgate_config::ledger::MemberConfig,
    out: &mut dyn Write,
) -> Result<
    Option<(
        LedgerClient<tonic::transport::Channel>,
        Vec<pb::Head>,
        gridgate_ledger::Members,
    )>,
> {
    let Some(mut client) = reach(ledger, v, out, "").await? else {
        return Ok(None);
    };
    let heads = match heads_of(&mut client).await {
        Ok(h) => h,
        Err(why) => {
            writeln!(out, "validator {}: {why}", v.id)?;
            return Ok(None);
        }
    };
    let members = members_held(&mut client, genesis).await?;
    Ok(Some((client, heads, members)))
}

async fn status(config: &std::path::Path, out: &mut dyn Write) -> Result<ExitCode> {
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

/// Every certified entry of `origin` a validator holds from `from`, as sent.
pub(super) async fn fetch_log(
    client: &mut LedgerClient<tonic::transport::Channel>,
    origin: &str,
    from: u64,
) -> Result<Vec<pb::CertifiedEntry>> {
    let mut stream = client
        .fetch(pb::FetchRequest {
            origin: origin.to_string(),
            from_seq: from,
            max: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .context("no entry within 30 s")??
    {
        out.push(c);
    }
    Ok(out)
}

/// A time as `2026-11-29T05:20:00Z`.
pub(super) fn utc(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

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
        Ok(k) => k
            .as_str_name()
            .trim_start_matches("ENTRY_KIND_")
            .to_lowercase(),
        Err(_) => format!("unknown kind {}", e.kind),
    }
}

/// A member's log as one validator holds it, with the membership that validator's replica
/// puts in force.
pub(super) struct HeldLog {
    /// The validator.
    pub validator: String,
    /// Its membership in force.
    pub members: gridgate_ledger::Members,
    /// The log's certified entries, as sent.
    pub entries: Vec<pb::CertifiedEntry>,
}

/// `origin`'s log from `from` as the validator named by `only` (or the first that answers)
/// holds it; `None` after saying on `out` why each validator could not give it.
pub(super) async fn log_of(
    ledger: &gridgate_config::ledger::LedgerConfig,
    genesis: &gridgate_ledger::Members,
    origin: &str,
    from: u64,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<Option<HeldLog>> {
    for v in ledger
        .members
        .iter()
        .filter(|m| m.role == "validator" && only.is_none_or(|o| o == m.id))
    {
        let Some(mut client) = reach(ledger, v, out, "# ").await? else {
            continue;
        };
        let fetched = match members_held(&mut client, genesis).await {
            Ok(members) => fetch_log(&mut client, origin, from)
                .await
                .map(|e| (members, e)),
            Err(e) => Err(e),
        };
        match fetched {
            Ok((members, entries)) => {
                return Ok(Some(HeldLog {
                    validator: v.id.clone(),
                    members,
                    entries,
                }));
            }
            Err(e) => writeln!(out, "# validator {}: {e:#}", v.id)?,
        }
    }
    Ok(None)
}

async fn log(
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

async fn watch(
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

async fn verify(config: &std::path::Path, out: &mut dyn Write) -> Result<ExitCode> {
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
