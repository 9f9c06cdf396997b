//! DR dispatch with the real binary over mutual TLS: the operator signs an event by hand
//! (`gridgate dr sign`) and sends it (`gridgate dr dispatch`); the gateway accepts it only if
//! it is signed by a trusted issuer, in time, new, and within each load's limits, answers
//! with the precise reason otherwise, and remembers accepted events across a restart.

use std::path::Path;
use std::time::Duration;

use gridgate_tests::{Gateway, ONE_METER_SITE, free_port, grpc_section, run_to_end, sims};

const WAIT: Duration = Duration::from_secs(30);

struct Site {
    dir: tempfile::TempDir,
    port: u16,
}

impl Site {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes an event file and signs it with `key`; returns the signed file.
    async fn sign(&self, name: &str, key: &str, toml: &str) -> String {
        let file = self.path(&format!("{name}.toml"));
        std::fs::write(&file, toml).expect("event file");
        let signed = self.path(&format!("{name}.signed"));
        let (code, out, err) =
            run_to_end(&["dr", "sign", "--key", key, &file, "--out", &signed], WAIT).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("signed event"), "{out}");
        signed
    }

    /// Dispatches a signed file with the client certificate of `role`.
    async fn dispatch(&self, role: &str, signed: &str) -> (i32, String) {
        let (code, out, err) = run_to_end(
            &[
                "dr",
                "dispatch",
                "--endpoint",
                &format!("https://localhost:{}", self.port),
                "--ca",
                &self.path("pki/ca.pem"),
                "--cert",
                &self.path(&format!("pki/client-{role}.pem")),
                "--key",
                &self.path(&format!("pki/client-{role}.key")),
                signed,
            ],
            WAIT,
        )
        .await;
        (code, format!("{out}{err}"))
    }
}

fn event(id: &str, issuer: &str, target: &str) -> String {
    format!(
        "id = \"{id}\"\nissuer = \"{issuer}\"\nprogram = \"peak-shave\"\nstart = \"now\"\nduration = \"15m\"\nexpires = \"10m\"\n\n[[target]]\n{target}\n"
    )
}

async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway's gRPC port {port} never opened");
}

fn keygen(dir: &Path) {
    gridgate::batch::Identity::generate()
        .expect("key")
        .save(&dir.join("identity.key"), &dir.join("identity.pub"))
        .expect("save");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_are_accepted_once_and_everything_else_is_refused_with_its_reason() {
    let s = sims(ONE_METER_SITE).await;
    let site = Site {
        dir: tempfile::tempdir().expect("dir"),
        port: free_port(),
    };
    let d = site.dir.path();
    gridgate::api::pki::make_site_pki(&d.join("pki"), "dr", &[]).expect("pki");
    std::fs::create_dir_all(d.join("operator")).expect("dir");
    keygen(&d.join("operator"));
    std::fs::create_dir_all(d.join("forger")).expect("dir");
    keygen(&d.join("forger"));
    let mut config = s.gateway_config("dr", "200ms");
    config.push_str(&grpc_section(site.port, &d.join("pki")));
    config.push_str(&format!(
        "\n[dr]\nissuers = [{{ name = \"operator\", public_key = \"{}\" }}]\n\n[[load]]\nname = \"meter-1-load\"\nmeter = \"meter-1/active_power\"\nmax_shed_kw = 10.0\nmin_setpoint = 0.0\nmax_setpoint = 100.0\nmax_events_per_day = 5\n",
        site.path("operator/identity.pub")
    ));
    let gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let forger = site.path("forger/identity.key");

    let good = site
        .sign(
            "good",
            &operator,
            &event("e-1", "operator", "load = \"meter-1-load\"\nshed_kw = 5.0"),
        )
        .await;
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted \"e-1\""), "{out}");

    // The same event again: a replay.
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSAL_REPLAYED"), "{out}");

    // Each way an event can be wrong, and the reason the gateway gives.
    let cases = [
        (
            "forged",
            forger.as_str(),
            event("e-2", "operator", "load = \"meter-1-load\"\nshed_kw = 5.0"),
            "REFUSAL_BAD_SIGNATURE",
        ),
        (
            "stranger",
            operator.as_str(),
            event("e-3", "stranger", "load = \"meter-1-load\"\nshed_kw = 5.0"),
            "REFUSAL_UNKNOWN_ISSUER",
        ),
        (
            "expired",
            operator.as_str(),
            event("e-4", "operator", "load = \"meter-1-load\"\nshed_kw = 5.0")
                .replace("expires = \"10m\"", "expires = \"2020-01-01T00:00:00Z\""),
            "REFUSAL_EXPIRED",
        ),
        (
            "boiler",
            operator.as_str(),
            event("e-5", "operator", "load = \"boiler\"\non = false"),
            "REFUSAL_UNKNOWN_LOAD",
        ),
        (
            "too-much",
            operator.as_str(),
            event("e-6", "operator", "load = \"meter-1-load\"\nshed_kw = 50.0"),
            "REFUSAL_LIMIT",
        ),
        (
            "setpoint",
            operator.as_str(),
            event(
                "e-7",
                "operator",
                "load = \"meter-1-load\"\nsetpoint = 120.0",
            ),
            "REFUSAL_LIMIT",
        ),
    ];
    for (name, key, text, reason) in &cases {
        let signed = site.sign(name, key, text).await;
        let (code, out) = site.dispatch("operator", &signed).await;
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(reason), "{name}: expected {reason}: {out}");
    }

    // Only the operator role may dispatch.
    let fresh = site
        .sign(
            "viewer",
            &operator,
            &event("e-8", "operator", "load = \"meter-1-load\"\non = false"),
        )
        .await;
    let (code, out) = site.dispatch("viewer", &fresh).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("may not call Dispatch"), "{out}");

    // Accepted events are stored durably: after a restart the first is still a replay.
    assert_eq!(gw.stop().await, Some(0));
    let gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSAL_REPLAYED"), "after a restart: {out}");
    let (code, out) = site.dispatch("operator", &fresh).await;
    assert_eq!(code, 0, "a new event is still accepted: {out}");
    assert_eq!(gw.stop().await, Some(0));
}
