//! `gridgate ledger`: the consortium ledger's commands, one file each, over `peers` (the
//! config's `[ledger]`, the validators that answer, the logs they hold).

mod cuts;
mod log;
pub(crate) mod peers;
mod prove;
mod settlement;
mod status;
mod verify;
pub(crate) mod write;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// `gridgate ledger ...`
// Doc comments here are --help text (clap): TOML sections and file patterns are meant
// literally, not as rustdoc links or HTML.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
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
    /// Each validator's decided cuts (the consortium's agreed order over every member's
    /// log): every link of the chain and every finalization checked against the genesis
    /// validators, and the validators compared. Exit 1 on a fault or a disagreement.
    ///
    /// Example: gridgate ledger cuts --config /etc/gridgate/gridgate.toml --last 5
    Cuts {
        /// The node's config (members, validators, TLS client identity).
        #[arg(long)]
        config: PathBuf,
        /// How many of the newest cuts to print per validator (all are checked).
        #[arg(long, default_value_t = 10)]
        last: usize,
        /// Ask only this validator.
        #[arg(long)]
        validator: Option<String>,
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
        what: write::WhatToPublish,
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
        LedgerCommand::Status { config } => status::status(&config, out).await,
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
            settlement::settlement(&config, from, to, out).await
        }
        LedgerCommand::Log {
            config,
            origin,
            validator,
            from,
        } => log::log(&config, &origin, validator.as_deref(), from, out).await,
        LedgerCommand::Cuts {
            config,
            last,
            validator,
        } => cuts::cuts(&config, last, validator.as_deref(), out).await,
        LedgerCommand::Verify { config } => verify::verify(&config, out).await,
        LedgerCommand::Prove {
            config,
            gateway,
            batches,
            batch,
            reading,
            validator,
        } => {
            let reading = reading.as_deref().map(prove::parse_reading).transpose()?;
            prove::prove(
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
        } => log::watch(&config, origin, validator.as_deref(), out).await,
        LedgerCommand::Publish { config, what, wait } => {
            write::publish(&config, &what, wait, out).await
        }
        LedgerCommand::Propose {
            id,
            add,
            remove,
            out: path,
        } => write::propose(&id, &add, &remove, &path, out),
        LedgerCommand::Approve { config, change } => write::approve(&config, &change, out),
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
