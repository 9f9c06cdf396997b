//! `gridgate-node`: a consortium validator (docs/ledger.md, Consensus). Runs what
//! `gridgate run` runs for a validator config (the Ledger service, votes, sync) and the
//! consensus on cuts beside it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use tracing::{error, info};

use gridgate_config::ledger::LedgerRole;
use gridgate_core::Identity;
use gridgate_node::engine::{self, Params};

/// A consortium validator: certifies members' entries and agrees with the other validators
/// on cuts (the order of every member's log), with commonware's simplex BFT consensus.
#[derive(Debug, Parser)]
#[command(name = "gridgate-node", version)]
struct Cli {
    /// The validator's config: `[ledger] role = "validator"` with `[ledger.consensus]`
    /// and each validator's `consensus` address (deploy/validator.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or per module).
    #[arg(long, env = "GRIDGATE_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _failpoints = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("gridgate-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let cfg = gridgate_config::load(&cli.config)?;
    let Some(ledger) = cfg.ledger.clone() else {
        bail!(
            "{}: no [ledger]: gridgate-node runs a validator",
            cli.config.display()
        );
    };
    if ledger.role != LedgerRole::Validator {
        bail!(
            "{}: [ledger] role is {:?}: gridgate-node runs a validator (a gateway or operator runs `gridgate run`)",
            cli.config.display(),
            ledger.role.as_str()
        );
    }
    let Some(consensus) = ledger.consensus.clone() else {
        bail!(
            "{}: no [ledger.consensus]: write its listen address (and each validator's consensus address in [ledger] members)",
            cli.config.display()
        );
    };
    let pem = std::fs::read_to_string(&cfg.identity)
        .with_context(|| format!("reading the identity key {}", cfg.identity.display()))?;
    let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("the identity key {}", cfg.identity.display()))?
        .to_bytes();
    let identity = Identity::load(&cfg.identity)?;
    let genesis = gridgate_ledger_node::load_members(&ledger)?;
    let addresses = ledger
        .members
        .iter()
        .filter_map(|m| Some((m.id.clone(), m.consensus?)))
        .collect();
    let pipeline = gridgate_app::Pipeline::start(&cfg, identity, None).await?;
    let status = pipeline.shared().instruments.clone();
    status
        .consensus
        .active
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let consensus = engine::start(Params {
        store: pipeline.shared().store.store.clone(),
        genesis,
        me: cfg.id.clone(),
        secret,
        cfg: consensus,
        addresses,
        journal: cfg.data_dir.join("consensus"),
        status: status.clone(),
    })?;
    info!(validator = %cfg.id, "gridgate-node running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                info!("{}", status.consensus.line());
                if consensus.finished() {
                    break;
                }
            }
        }
    }
    info!("stop requested");
    let stopped = tokio::task::spawn_blocking(move || consensus.stop()).await;
    pipeline.stop().await?;
    match stopped {
        Ok(r) => r?,
        Err(e) => bail!("consensus thread: {e}"),
    }
    info!("gridgate-node stopped");
    Ok(())
}
