//! The demo's master station: once the first batch is closed, it pulls it over gRPC with the
//! master's client certificate, as a master station does, and checks its Ed25519 signature
//! and its place in the hash chain against the key the gateway's identity file holds.

use std::path::Path;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::telemetry_client::TelemetryClient;
use gridgate_store::batch::verify::ChainVerifier;

/// Pulls batch 0 and verifies it; the outcome as a sentence for the status lines.
pub async fn check_first_batch(work: &Path, port: u16) -> Result<String, String> {
    let pki = work.join("pki");
    let key = gridgate_core::identity::load_public(&work.join("identity.pub"))
        .map_err(|e| e.to_string())?;
    let channel = crate::tools::pull::connect(
        &format!("https://127.0.0.1:{port}"),
        Some(&pki.join("ca.pem")),
        Some(&pki.join("client-master.pem")),
        Some(&pki.join("client-master.key")),
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    let mut stream = TelemetryClient::new(channel)
        .pull_batches(pb::PullBatchesRequest {
            consumer: "demo-master-check".into(),
            from_seq: 0,
            from_cursor: false,
            max: 1,
            follow: false,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let item = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
        .ok_or("no batch closed yet")?;
    let batch = ChainVerifier::new(key)
        .push(item.seq, &item.signed_batch)
        .map_err(|f| format!("batch {} does not verify: {f}", item.seq))?;
    Ok(format!(
        "master station's check: batch {} ({} readings) pulled over gRPC with mutual TLS; its Ed25519 signature verifies with the gateway's identity.pub and it starts the hash chain",
        item.seq,
        batch.readings.len()
    ))
}
