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

use crate::ledger::entry::check_certified;

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
        #[arg(long)]
        day: String,
    },
}

/// Runs a `gridgate ledger` command.
pub async fn run(cmd: LedgerCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match cmd {
        LedgerCommand::Status { config } => status(&config, out).await,
        LedgerCommand::Settlement { config, day } => settlement(&config, &day, out).await,
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

/// Every certified entry a validator holds, each certificate checked.
async fn fetch_all(
    client: &mut LedgerClient<tonic::transport::Channel>,
    members: &crate::ledger::Members,
) -> Result<Vec<crate::ledger::settlement::Certified>> {
    let heads = client.heads(pb::HeadsRequest {}).await?.into_inner().heads;
    let mut out = Vec::new();
    for h in heads {
        let mut stream = client
            .fetch(pb::FetchRequest {
                origin: h.origin.clone(),
                from_seq: 0,
                max: 0,
            })
            .await?
            .into_inner();
        while let Some(c) = stream.message().await? {
            let (entry, _) = check_certified(&c, members)
                .map_err(|e| anyhow::anyhow!("{} entry does not check: {e}", h.origin))?;
            out.push(crate::ledger::settlement::Certified { entry });
        }
    }
    Ok(out)
}

/// The config's `[ledger]` and its membership with the keys read.
fn consortium(
    config: &std::path::Path,
) -> Result<(crate::config::ledger::LedgerConfig, crate::ledger::Members)> {
    let cfg = crate::config::load(config)?;
    let Some(ledger) = cfg.ledger else {
        bail!("{} has no [ledger] table", config.display());
    };
    let members = crate::ledger::load_members(&ledger)?;
    Ok((ledger, members))
}

/// A client of the validator at `endpoint`, with the config's TLS client identity.
async fn validator(
    ledger: &crate::config::ledger::LedgerConfig,
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

async fn settlement(config: &std::path::Path, day: &str, out: &mut dyn Write) -> Result<ExitCode> {
    let from = day_start_ms(day)?;
    let (ledger, members) = consortium(config)?;
    let mut hashes: Vec<(String, String)> = Vec::new();
    let mut statement = None;
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some(endpoint) = &v.endpoint else {
            continue;
        };
        let got = async {
            let mut client = validator(&ledger, endpoint).await?;
            tokio::time::timeout(Duration::from_secs(30), fetch_all(&mut client, &members))
                .await
                .context("no answer within 30 s")?
        }
        .await;
        match got {
            Ok(entries) => {
                let s = crate::ledger::settlement::settle(
                    from,
                    from + 86_400_000,
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

async fn status(config: &std::path::Path, out: &mut dyn Write) -> Result<ExitCode> {
    let (ledger, members) = consortium(config)?;
    let mut answered = 0;
    let mut faults = 0;
    for v in ledger.members.iter().filter(|m| m.role == "validator") {
        let Some(endpoint) = &v.endpoint else {
            writeln!(out, "validator {}: no endpoint in the config", v.id)?;
            continue;
        };
        let mut client = match validator(&ledger, endpoint).await {
            Ok(c) => c,
            Err(e) => {
                writeln!(out, "validator {}: unreachable ({e:#})", v.id)?;
                continue;
            }
        };
        let heads =
            match tokio::time::timeout(Duration::from_secs(10), client.heads(pb::HeadsRequest {}))
                .await
            {
                Ok(Ok(h)) => h.into_inner().heads,
                Ok(Err(s)) => {
                    writeln!(out, "validator {}: {}", v.id, s.message())?;
                    continue;
                }
                Err(_) => {
                    writeln!(out, "validator {}: no answer within 10 s", v.id)?;
                    continue;
                }
            };
        answered += 1;
        writeln!(out, "validator {}: {} log(s)", v.id, heads.len())?;
        for h in heads {
            let mut stream = client
                .fetch(pb::FetchRequest {
                    origin: h.origin.clone(),
                    from_seq: 0,
                    max: 0,
                })
                .await
                .with_context(|| format!("fetch {} from {}", h.origin, v.id))?
                .into_inner();
            let (mut good, mut bad) = (0u64, Vec::new());
            while let Some(c) = stream.message().await? {
                match check_certified(&c, &members) {
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
