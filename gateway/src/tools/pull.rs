//! `gridgate pull`: what a master station's engineer runs to check a gateway by hand. Pulls
//! signed batches over gRPC with mutual TLS, verifies each signature and the chain as it
//! goes, prints or saves them, and optionally acknowledges.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ed25519_dalek::VerifyingKey;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::admin_client::AdminClient;
use gridgate_proto::v1::telemetry_client::TelemetryClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use gridgate_core::identity::load_public;
use gridgate_store::batch::verify::ChainVerifier;

/// What `pull` needs (also its command-line arguments).
// Doc comments here are --help text (clap): TOML sections and file patterns are meant
// literally, not as rustdoc links or HTML.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// https://HOST:PORT (or http://127.0.0.1:PORT for the loopback plaintext listener).
    #[arg(long)]
    pub endpoint: String,
    /// CA that signed the gateway's server certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (its OU is your role).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Consumer name (your cursor at the gateway).
    #[arg(long)]
    pub consumer: String,
    /// First batch; default: your consumer's cursor.
    #[arg(long)]
    pub from: Option<u64>,
    /// At most this many batches (0: every stored batch).
    #[arg(long, default_value_t = 0)]
    pub max: u32,
    /// Keep the stream open and take new batches as they close.
    #[arg(long)]
    pub follow: bool,
    /// Acknowledge what verified (moves your cursor; master role).
    #[arg(long)]
    pub ack: bool,
    /// Save each batch as DIR/batch-<seq>.pb (the SignedBatch bytes).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The gateway's public key file; default: ask the gateway (GetIdentity).
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
}

/// Connects with the given TLS material.
pub async fn connect(
    endpoint: &str,
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> Result<Channel> {
    if !endpoint.contains("://") {
        bail!(
            "{endpoint:?} has no scheme: give https://{endpoint} (the gateway's [grpc] listen with TLS) or http://{endpoint} (its loopback plaintext listener)"
        );
    }
    let mut ep = Channel::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint:?}"))?;
    if endpoint.starts_with("https://") {
        let ca = ca.context(
            "--ca is needed for https:// (the CA that signed the gateway's certificate)",
        )?;
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        super::advice::check_ca_pem(ca, &pem)?;
        gridgate_core::tls::use_ring_provider();
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        match (cert, key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?,
                    std::fs::read(k).with_context(|| format!("cannot read {}", k.display()))?,
                ));
            }
            (None, None) => {}
            _ => bail!("--cert and --key go together"),
        }
        ep = ep.tls_config(tls).context("TLS setup")?;
    }
    ep.connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// Pulls, verifies, prints or saves; exit 1 on a verification fault.
pub async fn run(a: PullArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let channel = connect(&a.endpoint, a.ca.as_ref(), a.cert.as_ref(), a.key.as_ref()).await?;
    let key = match &a.pubkey {
        Some(p) => load_public(p)?,
        None => {
            let id = AdminClient::new(channel.clone())
                .get_identity(pb::GetIdentityRequest {})
                .await
                .context("GetIdentity")?
                .into_inner();
            let bytes: [u8; 32] = id
                .public_key
                .as_slice()
                .try_into()
                .context("gateway sent a public key that is not 32 bytes")?;
            writeln!(
                out,
                "gateway {} (version {}), key {}, you are {}",
                id.gateway_id,
                id.version,
                hex::encode(bytes),
                id.caller_role
            )?;
            VerifyingKey::from_bytes(&bytes)
                .context("gateway's public key is not a valid Ed25519 key")?
        }
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut client = TelemetryClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .pull_batches(pb::PullBatchesRequest {
            consumer: a.consumer.clone(),
            from_seq: a.from.unwrap_or(0),
            from_cursor: a.from.is_none(),
            max: a.max,
            follow: a.follow,
        })
        .await
        .context("PullBatches")?
        .into_inner();
    let mut verifier: Option<ChainVerifier> = None;
    let mut last_ok: Option<u64> = None;
    let mut fault = None;
    while let Some(item) = stream.message().await.context("pull stream")? {
        let v = verifier.get_or_insert_with(|| {
            let v = ChainVerifier::new(key);
            // A pull from the start checks the link to genesis; a resumed pull cannot check
            // its first link (the previous batch was verified by an earlier pull).
            if item.seq == 0 {
                v
            } else {
                v.anchor(item.seq, None)
            }
        });
        if item.dropped_before > 0 {
            writeln!(
                out,
                "note: {} batch(es) before {} are no longer on the gateway (delivered to its required consumers and pruned, or dropped by its disk budget: `gridgate status` counts those); the chain is checked from {} on",
                item.dropped_before, item.seq, item.seq
            )?;
            *v = ChainVerifier::new(key).anchor(item.seq, None);
        }
        match v.push(item.seq, &item.signed_batch) {
            Ok(batch) => {
                writeln!(
                    out,
                    "batch {}: {} readings, signature and chain OK",
                    item.seq,
                    batch.readings.len()
                )?;
                if let Some(dir) = &a.out {
                    let path = dir.join(format!("batch-{:010}.pb", item.seq));
                    std::fs::write(&path, &item.signed_batch)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                last_ok = Some(item.seq);
            }
            Err(f) => {
                fault = Some(f);
                break;
            }
        }
    }
    if a.ack {
        if let Some(seq) = last_ok {
            let r = client
                .ack(pb::AckRequest {
                    consumer: a.consumer.clone(),
                    seq,
                })
                .await
                .context("Ack")?
                .into_inner();
            writeln!(
                out,
                "acknowledged up to batch {seq}; cursor of {} is now {}",
                a.consumer, r.cursor
            )?;
        }
    }
    let (batches, readings) = verifier.map_or((0, 0), |v| (v.batches, v.readings));
    writeln!(
        out,
        "pulled and verified {batches} batch(es), {readings} reading(s)"
    )?;
    match fault {
        None => Ok(ExitCode::SUCCESS),
        Some(f) => {
            writeln!(out, "FAULT: {f}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}
