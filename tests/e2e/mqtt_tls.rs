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

impl Pki {
    /// Writes ca.pem, server.pem/.key and client.pem/.key into `d`.
    fn write(&self, d: &std::path::Path) {
        for (name, text) in [
            ("ca.pem", &self.ca),
            ("server.pem", &self.server.0),
            ("server.key", &self.server.1),
            ("client.pem", &self.client.0),
            ("client.key", &self.client.1),
        ] {
            std::fs::write(d.join(name), text).expect("write");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_and_ingest_over_tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    pki().write(d);
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
    gridgate_core::Identity::generate()
        .expect("key")
        .save(&d.join("nokey"), &d.join("nokey.pub"))
        .expect("save");
    let (code, _, err) = run_to_end(&["run", "--config", cfg2.to_str().expect("path")], WAIT).await;
    assert_ne!(code, 0);
    assert!(err.contains("nope.pem"), "{err}");
}

/// What one field device's attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// Connected, published, got its PUBACK.
    Stored,
    /// CONNACK refused the connection with this code.
    Refused(rumqttc::ConnectReturnCode),
    /// The connection failed before any CONNACK (the TLS handshake).
    Failed,
}

/// A device that connects over TLS (with a client certificate when `cert` is given), logs in
/// with `login`, and publishes one reading.
async fn device(
    port: u16,
    d: &std::path::Path,
    cert: bool,
    login: Option<(&str, &str)>,
    value: i64,
) -> Attempt {
    let mut opts = rumqttc::MqttOptions::new(format!("field-{value}"), "127.0.0.1", port);
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let client = (d.join("client.pem"), d.join("client.key"));
    let tls = gridgate_core::tls::client_tls(
        &d.join("ca.pem"),
        cert.then_some((client.0.as_path(), client.1.as_path())),
    )
    .expect("client tls");
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
    ));
    let (c, mut ev) = rumqttc::AsyncClient::new(opts, 8);
    let payload = format!(r#"{{"point":"t","value":{value},"ts_ms":1795000000{value:03}}}"#);
    let attempt = async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    c.try_publish(
                        "field/sensor",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .expect("publish");
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return Attempt::Stored,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    return Attempt::Refused(code);
                }
                Err(_) => return Attempt::Failed,
            }
        }
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .expect("an answer in time")
}

/// The durable field listener over TLS with client certificates and a password: a device
/// needs both; the others are refused (CONNACK "not authorised", or no handshake), counted,
/// and nothing of theirs is stored. check-config refuses a listener off loopback that asks
/// for neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_listener_takes_only_devices_that_authenticate() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    pki().write(d);
    let port = free_port();
    let config = format!(
        "[gateway]\nid = \"field-tls\"\n\n[store]\nbatch_interval = \"200ms\"\n\n[ingest]\nlisten = \"mqtts://127.0.0.1:{port}\"\nlisten_cert_file = \"{0}/server.pem\"\nlisten_key_file = \"{0}/server.key\"\nlisten_client_ca_file = \"{0}/ca.pem\"\nusername = \"device\"\npassword = \"s3cret\"\n\n[[ingest.device]]\nname = \"sensor\"\ntopic = \"field/sensor\"\npoints = [{{ name = \"t\" }}]\n",
        d.display()
    );
    let gw = Gateway::start_logged(d, &config).await;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        device(port, d, true, Some(("device", "s3cret")), 1).await,
        Attempt::Stored
    );
    assert_eq!(
        device(port, d, true, Some(("device", "guess")), 2).await,
        Attempt::Refused(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        device(port, d, true, None, 3).await,
        Attempt::Refused(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        device(port, d, false, Some(("device", "s3cret")), 4).await,
        Attempt::Failed,
        "no client certificate, no handshake"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.stop().await, Some(0));
    let log = std::fs::read_to_string(d.join("gridgate.log")).expect("log");
    assert_eq!(log.matches("field device refused").count(), 2, "{log}");
    let stored: Vec<f64> = gridgate_tests::stored_batches(&d.join("data"))
        .iter()
        .flat_map(|(_, bytes)| {
            use prost::Message;
            let signed = gridgate_proto::v1::SignedBatch::decode(bytes.as_slice()).expect("signed");
            gridgate_proto::v1::Batch::decode(signed.batch.as_slice())
                .expect("batch")
                .readings
        })
        .filter_map(|r| match r.value {
            Some(gridgate_proto::v1::reading::Value::Number(n)) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(stored, vec![1.0], "only the device that authenticated");

    // Off loopback, a listener that asks for neither a password nor certificates is refused.
    let open = d.join("open.toml");
    std::fs::write(
        &open,
        "[gateway]\nid = \"open\"\n\n[ingest]\nlisten = \"0.0.0.0:1884\"\n\n[[ingest.device]]\nname = \"sensor\"\ntopic = \"field/sensor\"\npoints = [{ name = \"t\" }]\n",
    )
    .expect("write");
    let (code, _, err) = run_to_end(
        &[
            "check-config",
            "--no-files",
            "--config",
            open.to_str().expect("path"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ingest.listen: 0.0.0.0:1884 is reachable from the network"),
        "{err}"
    );
}
