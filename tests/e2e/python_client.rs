//! The contract stands without the Rust types: a Python grpcio client generated from the
//! .proto files alone pulls, verifies and acknowledges over mutual TLS.

use std::time::Duration;

use gridgate_tests::{Gateway, ONE_METER_SITE, free_port, grpc_section, sims};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_master_station_pulls_verifies_and_acks() {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let pki = dir.path().join("pki");
    gridgate_api::pki::make_site_pki(&pki, "py", &[]).expect("pki");
    let port = free_port();
    let mut config = s.gateway_config("py", "50ms");
    config.push_str("\n[store]\nbatch_readings = 4\nbatch_interval = \"100ms\"\n");
    config.push_str(&grpc_section(port, &pki));
    let gw = Gateway::start(&config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = tokio::process::Command::new("python3")
        .arg(format!("{root}/tests/python/pull_client.py"))
        .arg(format!("{root}/proto"))
        .arg(format!("localhost:{port}"))
        .arg(pki.join("ca.pem"))
        .arg(pki.join("client-master.pem"))
        .arg(pki.join("client-master.key"))
        .arg("python-master")
        .arg("5")
        .output()
        .await
        .expect("python3 with the packages of tests/python/requirements.txt (scripts/test.sh puts them in target/pyenv: `. target/pyenv/bin/activate`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python client failed:\n{text}");
    assert!(
        text.contains("5 batches") && text.contains("signatures and chain OK"),
        "{text}"
    );
    gw.stop().await;
}
