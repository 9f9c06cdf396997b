//! The uplink and ingest against a Mosquitto that demands TLS, a client certificate signed by
//! its CA, and a username and password: a locked-down site broker.

use std::time::Duration;

use gridgate_tests::{Gateway, Mosquitto, collect_batches, free_port, run_to_end};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const WAIT: Duration = Duration::from_secs(30);

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gridgate test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()], "broker"),
        client: leaf(vec![], "gateway-site-tls"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_and_ingest_over_tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let p = pki();
    for (name, text) in [
        ("ca.pem", &p.ca),
        ("server.pem", &p.server.0),
        ("server.key", &p.server.1),
        ("client.pem", &p.client.0),
        ("client.key", &p.client.1),
    ] {
        std::fs::write(d.join(name), text).expect("write");
    }
    let passwd = d.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gateway", "s3cret"])
        .status()
        .expect("mosquitto_passwd (package mosquitto) is installed by scripts/test.sh");
    assert!(status.success());
    let (tls_port, plain_port) = (free_port(), free_port());
    let mut broker = Mosquitto::start_with(
        tls_port,
        &format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nallow_anonymous false\npassword_file {passwd}\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            ca = d.join("ca.pem").display(),
            cert = d.join("server.pem").display(),
            key = d.join("server.key").display(),
            passwd = passwd.display(),
        ),
    )
    .await;
    let (received, collector) = collect_batches(plain_port, "gridgate/tls/batches");
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nusername = \"gateway\"\npassword = \"s3cret\"\n",
        d.join("ca.pem").display(),
        d.join("client.pem").display(),
        d.join("client.key").display()
    );
    let config = format!(
        r#"
[gateway]
id = "tls"

[store]
batch_readings = 2
batch_interval = "200ms"

[ingest]
broker = "mqtts://127.0.0.1:{tls_port}"
{tls}
[[ingest.device]]
name = "sensor"
topic = "field/sensor"
points = [{{ name = "t" }}]

[uplink]
broker = "mqtts://127.0.0.1:{tls_port}"
topic = "gridgate/tls/batches"
{tls}"#
    );
    let gw = Gateway::start(&config).await;
    // A device on the plain listener publishes; the gateway takes it over TLS and sends the
    // batch back over TLS; the collector sees it on the plain listener.
    let opts = rumqttc::MqttOptions::new("plain-device", "127.0.0.1", plain_port);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 16);
    let pump = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    while received.lock().expect("lock").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch came back over TLS"
        );
        n += 1;
        let payload = format!(r#"{{"point":"t","value":{n}}}"#);
        let _ = client
            .publish("field/sensor", rumqttc::QoS::AtLeastOnce, false, payload)
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(gw.stop().await, Some(0));
    pump.abort();
    collector.abort();
    broker.kill();

    // A CA file that is not there: the config is well-formed, but the daemon refuses to start
    // and names the file, rather than retrying a connection that can never work.
    let cfg2 = d.join("bad.toml");
    std::fs::write(
        &cfg2,
        format!(
            "[gateway]\nid = \"tls2\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n\n[uplink]\nbroker = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\n",
            d.join("data2").display(),
            d.join("nokey").display(),
            d.join("nope.pem").display()
        ),
    )
    .expect("write");
    let (code, _, err) = run_to_end(
        &[
            "check-config",
            "--no-files",
            "--config",
            cfg2.to_str().expect("path"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "the config itself is well-formed: {err}");
    gridgate::batch::Identity::generate()
        .expect("key")
        .save(&d.join("nokey"), &d.join("nokey.pub"))
        .expect("save");
    let (code, _, err) = run_to_end(&["run", "--config", cfg2.to_str().expect("path")], WAIT).await;
    assert_ne!(code, 0);
    assert!(err.contains("nope.pem"), "{err}");
}
