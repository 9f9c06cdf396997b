//! The contract stands without the Rust types: a Python grpcio client generated from the
//! .proto files alone pulls, verifies and acknowledges over mutual TLS.

use std::time::Duration;

use gridgate_tests::{Gateway, ONE_METER_SITE, free_port, grpc_section, sims};

/// Runs the Python master station once; its output.
async fn python_pull(
    port: u16,
    pki: &std::path::Path,
    consumer: &str,
    count: u32,
    state: Option<&std::path::Path>,
) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(format!("{root}/tests/python/pull_client.py"))
        .arg(format!("{root}/proto"))
        .arg(format!("localhost:{port}"))
        .arg(pki.join("ca.pem"))
        .arg(pki.join("client-master.pem"))
        .arg(pki.join("client-master.key"))
        .arg(consumer)
        .arg(count.to_string());
    if let Some(state) = state {
        cmd.arg(state);
    }
    let out = cmd
        .output()
        .await
        .expect("python3 with the packages of tests/python/requirements.txt (scripts/test.sh puts them in target/pyenv: `. target/pyenv/bin/activate`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python client failed:\n{text}");
    text
}

/// A master station that resumes and one that arrives late: the gateway prunes what its
/// required consumer acknowledged, so the second run starts at batch 5 and checks its link
/// against the hash it kept, and a new consumer starts mid-chain at the first batch still
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_master_station_pulls_verifies_and_acks_from_mid_chain() {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let pki = dir.path().join("pki");
    gridgate_api::pki::make_site_pki(&pki, "py", &[]).expect("pki");
    let port = free_port();
    let mut config = s.gateway_config("py", "50ms");
    config.push_str(
        "\n[store]\nbatch_readings = 4\nbatch_interval = \"100ms\"\nrequired_consumers = [\"python-master\"]\n",
    );
    config.push_str(&grpc_section(port, &pki));
    let gw = Gateway::start(&config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = dir.path().join("master-state.json");

    let first = python_pull(port, &pki, "python-master", 5, Some(&state)).await;
    assert!(
        first.contains("5 batches (0..4)") && first.contains("signatures and chain OK"),
        "{first}"
    );
    // Batches 0..4 are delivered to the only required consumer: the gateway drops them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = python_pull(port, &pki, "python-master", 5, Some(&state)).await;
    assert!(second.contains("5 batches (5..9)"), "{second}");
    assert!(
        !second.contains("mid-chain"),
        "the kept hash links 4 to 5: {second}"
    );

    // A consumer the gateway has never seen starts at cursor 0; the batches before the
    // first still stored are a known gap (`dropped_before`), and the chain is anchored there.
    let late = python_pull(port, &pki, "python-late", 3, None).await;
    assert!(
        late.contains("are gone from the gateway; chain anchored at"),
        "{late}"
    );
    assert!(late.contains("signatures and chain OK"), "{late}");
    assert!(!late.contains("(0..2)"), "batch 0 was pruned: {late}");
    gw.stop().await;
}

/// grpcio-reflection's client asks v1alpha; the gateway lists its services and health there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_the_services_and_health() {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let pki = dir.path().join("pki");
    gridgate_api::pki::make_site_pki(&pki, "py", &[]).expect("pki");
    let port = free_port();
    let mut config = s.gateway_config("py", "1s");
    config.push_str(&grpc_section(port, &pki));
    let gw = Gateway::start(&config).await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = tokio::process::Command::new("python3")
        .arg(format!("{root}/tests/python/reflect.py"))
        .arg(format!("localhost:{port}"))
        .arg(pki.join("ca.pem"))
        .arg(pki.join("client-master.pem"))
        .arg(pki.join("client-master.key"))
        .output()
        .await
        .expect("python3 with grpcio-reflection (target/pyenv)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reflection client failed:\n{text}");
    for service in [
        "gridgate.v1.Telemetry",
        "gridgate.v1.Admin",
        "gridgate.v1.DemandResponse",
        "grpc.health.v1.Health",
    ] {
        assert!(
            text.lines().any(|l| l == service),
            "{service} not listed:\n{text}"
        );
    }
    gw.stop().await;
}
