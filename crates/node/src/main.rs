//! `gridgate-node`: a consortium validator (docs/ledger.md, Consensus). Runs what
//! `gridgate run` runs for a validator config (the Ledger service, votes, sync) and the
//! consensus on cuts beside it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use tracing::{error, info};

use gridgate_core::Identity;
use gridgate_node::validator::Validator;

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
    // Any library that builds its TLS with rustls's process default gets ring.
    gridgate_core::tls::use_ring_provider();
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
    let validator = Validator::from_config(&cfg, &cli.config.display().to_string())?;
    let identity = Identity::load(&cfg.identity)?;
    let pipeline = gridgate_app::Pipeline::start(&cfg, identity, None).await?;
    let status = pipeline.shared().instruments.clone();
    let consensus = validator.start(pipeline.shared().store.store.clone(), status.clone())?;
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
