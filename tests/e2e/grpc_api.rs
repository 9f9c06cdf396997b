//! The master station's contract, with the real binary: mutual TLS that refuses strangers,
//! roles that refuse what a role may not do, and pulls that resume without gaps.

use std::path::Path;
use std::time::Duration;

use gridgate::tools::pull::connect;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::admin_client::AdminClient;
use gridgate_proto::v1::telemetry_client::TelemetryClient;
use gridgate_tests::{Gateway, free_port, sims};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'_, KeyPair>,
    sans: Vec<String>,
    ou: Option<&str>,
    expired: bool,
) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(sans).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    if let Some(ou) = ou {
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, ou);
    }
    if expired {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    }
    let cert = p.signed_by(&key, issuer).expect("sign");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
}

struct Site {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Site {
    fn p(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    async fn channel(&self, who: Option<&str>) -> Result<tonic::transport::Channel, String> {
        let (cert, key) = match who {
            Some(w) => (
                Some(self.p(&format!("{w}.pem"))),
                Some(self.p(&format!("{w}.key"))),
            ),
            None => (None, None),
        };
        connect(
            &self.endpoint,
            Some(&self.p("ca.pem")),
            cert.as_ref(),
            key.as_ref(),
        )
        .await
        .map_err(|e| format!("{e:#}"))
    }
}

fn pki() -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let site = ca("site CA");
    std::fs::write(d.join("ca.pem"), site.pem()).expect("write");
    leaf(
        d,
        "server",
        &site,
        vec!["localhost".into(), "127.0.0.1".into()],
        None,
        false,
    );
    leaf(d, "master", &site, vec![], Some("master"), false);
    leaf(d, "viewer", &site, vec![], Some("viewer"), false);
    leaf(d, "expired", &site, vec![], Some("master"), true);
    leaf(d, "norole", &site, vec![], Some("janitor"), false);
    let other = ca("someone else's CA");
    leaf(d, "stranger", &other, vec![], Some("master"), false);
    (dir, free_port())
}

async fn site() -> (Site, Gateway, gridgate::tools::sim::RunningSims) {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000001" }, { address = "000000000002" }]
"#,
    )
    .await;
    let (dir, port) = pki();
    let d = dir.path();
    let mut config = s.gateway_config("api", "50ms");
    config.push_str(&format!(
        r#"
[store]
batch_readings = 4
batch_interval = "100ms"

[grpc]
listen = "127.0.0.1:{port}"
cert_file = "{}"
key_file = "{}"
client_ca_file = "{}"
"#,
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("ca.pem").display()
    ));
    let gw = Gateway::start(&config).await;
    let site = Site {
        dir,
        endpoint: format!("https://127.0.0.1:{port}"),
    };
    // Wait for the API and a few batches.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(ch) = site.channel(Some("master")).await {
            if let Ok(st) = AdminClient::new(ch)
                .get_status(pb::GetStatusRequest {})
                .await
            {
                if st.into_inner().next_seq >= 8 {
                    break;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway's API did not come up with batches"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (site, gw, s)
}

/// A call's outcome as a gRPC code. A client the TLS layer refuses never reaches a service:
/// the connect fails, or (TLS 1.3 sends the refusal after the client's half of the
/// handshake) the first call fails as a transport error, which tonic reports as Unknown
/// "transport error" or Cancelled and other stacks as Unavailable. All are mapped to
/// Unavailable here.
async fn status_code(site: &Site, who: Option<&str>) -> Code {
    match site.channel(who).await {
        Err(_) => Code::Unavailable,
        Ok(ch) => match AdminClient::new(ch)
            .get_status(pb::GetStatusRequest {})
            .await
        {
            Ok(_) => Code::Ok,
            // The connection dies under the call: tonic says Unknown "transport error" or
            // Cancelled depending on timing; either way the service never saw the call.
            Err(s)
                if matches!(s.code(), Code::Unknown | Code::Cancelled)
                    && !s.message().contains("role") =>
            {
                Code::Unavailable
            }
            Err(s) => s.code(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_roles_are_enforced() {
    let (site, gw, _s) = site().await;
    assert_eq!(status_code(&site, Some("master")).await, Code::Ok);
    assert_eq!(status_code(&site, Some("viewer")).await, Code::Ok);
    assert_eq!(
        status_code(&site, None).await,
        Code::Unavailable,
        "no client certificate"
    );
    assert_eq!(
        status_code(&site, Some("stranger")).await,
        Code::Unavailable,
        "certificate from another CA"
    );
    assert_eq!(
        status_code(&site, Some("expired")).await,
        Code::Unavailable,
        "expired certificate"
    );
    assert_eq!(
        status_code(&site, Some("norole")).await,
        Code::PermissionDenied,
        "a certificate without a known role"
    );

    // A viewer may read but not acknowledge; nothing changes when it tries.
    let viewer = TelemetryClient::new(site.channel(Some("viewer")).await.expect("viewer"));
    let err = viewer
        .clone()
        .ack(pb::AckRequest {
            consumer: "sneaky".into(),
            seq: 3,
        })
        .await
        .expect_err("viewer Ack");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("needs master"), "{err}");
    let master = site.channel(Some("master")).await.expect("master");
    let st = AdminClient::new(master.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        !st.cursors.contains_key("sneaky"),
        "a refused Ack moved nothing: {:?}",
        st.cursors
    );
    let id = AdminClient::new(master)
        .get_identity(pb::GetIdentityRequest {})
        .await
        .expect("identity")
        .into_inner();
    assert_eq!(id.gateway_id, "api");
    assert_eq!(id.public_key.len(), 32);
    assert_eq!(id.caller_role, "master");
    let devices = viewer
        .clone()
        .list_devices(pb::ListDevicesRequest {})
        .await
        .expect("devices")
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .all(|d| d.protocol == "dlt645" && d.online && d.polls > 0),
        "{devices:?}"
    );
    let points = viewer
        .clone()
        .list_points(pb::ListPointsRequest {})
        .await
        .expect("points")
        .into_inner()
        .points;
    assert!(
        points.iter().any(|p| p.name == "meter-1/energy_import"
            && p.unit == "kWh"
            && p.source == "dlt645 DI 00010000"),
        "{points:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cut_off_midway_resumes_at_the_cursor_without_gap_or_duplicate() {
    let (site, gw, _s) = site().await;
    let ch = site.channel(Some("master")).await.expect("master");
    let mut t = TelemetryClient::new(ch.clone());
    let mut stream = t
        .pull_batches(pb::PullBatchesRequest {
            consumer: "master-1".into(),
            from_cursor: true,
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner();
    let mut got = vec![];
    while got.len() < 5 {
        let b = stream.message().await.expect("stream").expect("a batch");
        got.push(b.seq);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    drop(stream); // the link drops mid-pull
    let r = t
        .ack(pb::AckRequest {
            consumer: "master-1".into(),
            seq: 2,
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(r.cursor, 3);
    // Acks never move a cursor back.
    let r = t
        .ack(pb::AckRequest {
            consumer: "master-1".into(),
            seq: 0,
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(r.cursor, 3);
    let err = t
        .ack(pb::AckRequest {
            consumer: "master-1".into(),
            seq: 1_000_000,
        })
        .await
        .expect_err("future ack");
    assert_eq!(err.code(), Code::OutOfRange);
    let mut resumed = t
        .pull_batches(pb::PullBatchesRequest {
            consumer: "master-1".into(),
            from_cursor: true,
            max: 4,
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner();
    let mut again = vec![];
    while let Some(b) = resumed.message().await.expect("stream") {
        again.push(b.seq);
    }
    assert_eq!(again, vec![3, 4, 5, 6], "resumes right after the last ack");

    // The live feed delivers readings as they are acquired.
    let mut live = t
        .subscribe(pb::SubscribeRequest {
            point_prefix: "meter-2/".into(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(WAIT, live.message())
        .await
        .expect("a live reading")
        .expect("stream")
        .expect("item");
    let r = first.reading.expect("reading");
    assert!(r.point.starts_with("meter-2/"), "{r:?}");

    // `gridgate pull` verifies what it pulls and acknowledges it.
    let out = tempfile::tempdir().expect("dir");
    let (code, text, err) = gridgate_tests::run_to_end(
        &[
            "pull",
            "--endpoint",
            &site.endpoint,
            "--ca",
            site.p("ca.pem").to_str().expect("p"),
            "--cert",
            site.p("master.pem").to_str().expect("p"),
            "--key",
            site.p("master.key").to_str().expect("p"),
            "--consumer",
            "engineer",
            "--from",
            "0",
            "--max",
            "6",
            "--ack",
            "--out",
            out.path().to_str().expect("p"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("pulled and verified 6 batch(es)"), "{text}");
    assert!(text.contains("cursor of engineer is now 6"), "{text}");
    assert_eq!(std::fs::read_dir(out.path()).expect("dir").count(), 6);
    gw.stop().await;
}
