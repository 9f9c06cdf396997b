//! The field tools as an engineer runs them: `read`, `scan`, `check-config`, against
//! simulators and against a peer that answers with frames written out byte by byte.

use std::time::Duration;

use gridgate_tests::{run_to_end, sims};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(60);

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A meter implemented by nobody but the standard: it expects exact request bytes and
/// answers with exact reply bytes, in the ways real meters and converters do (wake-up bytes
/// or none, an echo of the request first, a reply split across packets).
async fn scripted_meter(
    script: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut problems = Vec::new();
        let Ok((mut s, _)) = listener.accept().await else {
            return vec!["no connection".to_string()];
        };
        for (expect, replies) in script {
            let mut got = vec![0u8; expect.len()];
            if s.read_exact(&mut got).await.is_err() {
                problems.push("connection closed early".into());
                break;
            }
            if got != expect {
                problems.push(format!("request bytes {got:02X?}, expected {expect:02X?}"));
            }
            for part in replies {
                let _ = s.write_all(&part).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        problems
    });
    (format!("tcp://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_dlt645_decodes_frames_from_the_standard() {
    // Requests: FE×4, 68, address 01 00 00 00 00 00 (000000000001, low digits first), 68,
    // C=11, L=04, DI low byte first plus 33, CS, 16.
    let req_energy = hex("FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16");
    let req_power = hex("FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 36 35 B7 16");
    let req_freq = hex("FE FE FE FE 68 01 00 00 00 00 00 68 11 04 35 33 B3 35 36 16");
    // Forward active energy 12345.67 kWh: BCD 67 45 23 01 plus 33 = 9A 78 56 34; the
    // converter echoes the request first; the reply comes in two packets.
    let rep_energy = vec![
        req_energy.clone(),
        hex("FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33"),
        hex("34 33 9A 78 56 34 D3 16"),
    ];
    // Total active power -1.2345 kW: 45 23 81 (sign bit set) plus 33 = 78 56 B4; no
    // wake-up bytes.
    let rep_power = vec![hex(
        "68 01 00 00 00 00 00 68 91 07 33 33 36 35 78 56 B4 BC 16",
    )];
    // Frequency refused: abnormal reply D1, error word 02 (no requested data) plus 33.
    let rep_freq = vec![hex("FE FE 68 01 00 00 00 00 00 68 D1 01 35 D8 16")];
    let (link, meter) = scripted_meter(vec![
        (req_energy, rep_energy),
        (req_power, rep_power),
        (req_freq, rep_freq),
    ])
    .await;
    let (code, out, err) = run_to_end(
        &[
            "read",
            "dlt645",
            "--link",
            &link,
            "--addr",
            "000000000001",
            "--di",
            "00010000",
            "--di",
            "02030000",
            "--di",
            "02800002",
            "--json",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(meter.await.expect("meter task"), Vec::<String>::new());
    let v = json_lines(&out);
    assert_eq!(v.len(), 3, "{out}{err}");
    assert_eq!(v[0]["di"], "00010000");
    assert_eq!(v[0]["value"].as_f64(), Some(12345.67));
    assert_eq!(v[0]["unit"], "kWh");
    assert_eq!(v[0]["quality"], "good");
    assert_eq!(v[1]["value"].as_f64(), Some(-1.2345));
    assert_eq!(v[1]["unit"], "kW");
    assert_eq!(v[2]["quality"], "meter_error:02");
    assert!(
        v[2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no requested data"),
        "{}",
        v[2]
    );
    assert_eq!(code, 1, "a failed read makes the exit code non-zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_dlt645_text_output_and_success() {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
pty = "auto"
meters = [{ address = "000000000007", rated_kw = 3.0, energy_kwh = 42.5 }]
"#,
    )
    .await;
    let (code, out, err) = run_to_end(
        &[
            "read",
            "dlt645",
            "--link",
            &s.lines[0].link,
            "--addr",
            "000000000007",
            "--di",
            "00010000",
            "--di",
            "04000401",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("forward active energy, total"), "{out}");
    assert!(out.contains("42.50 kWh"), "{out}");
    assert!(out.contains("000000000007"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modbus_types_orders_and_exceptions() {
    let s = sims(
        r#"
[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 3, rated_kw = 50.0, energy_kwh = 1234.5 }]
"#,
    )
    .await;
    let link = s.lines[0].link.clone();
    let read = |args: Vec<&str>| {
        let mut all = vec![
            "read",
            "modbus",
            "--link",
            link.as_str(),
            "--unit",
            "3",
            "--json",
        ];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_to_end(&refs, LIMIT).await
        }
    };
    let (code, out, _) = read(vec!["--address", "0", "--type", "f32"]).await;
    assert_eq!(code, 0, "{out}");
    let p = json_lines(&out)[0]["value"].as_f64().expect("number");
    assert!((45.0..55.0).contains(&p), "{p}");
    let (_, out, _) = read(vec![
        "--address",
        "40",
        "--type",
        "f32",
        "--word-order",
        "little",
    ])
    .await;
    let p2 = json_lines(&out)[0]["value"].as_f64().expect("number");
    assert!((45.0..55.0).contains(&p2), "{p2}");
    let (_, out, _) = read(vec!["--address", "20", "--type", "f64"]).await;
    let e = json_lines(&out)[0]["value"].as_f64().expect("number");
    assert!((1234.5..1235.5).contains(&e), "{e}");
    let (_, out, _) = read(vec!["--address", "30", "--type", "i64"]).await;
    assert_eq!(json_lines(&out)[0]["value"].as_f64(), Some(-12345.0));
    let (_, out, _) = read(vec![
        "--address",
        "6",
        "--type",
        "i16",
        "--scale",
        "0.1",
        "--unit-label",
        "°C",
    ])
    .await;
    let t = &json_lines(&out)[0];
    assert_eq!(t["value"].as_f64(), Some(31.5));
    assert_eq!(t["unit"], "°C");
    let (code, out, _) = read(vec!["--address", "100"]).await;
    assert_eq!(code, 1);
    assert_eq!(json_lines(&out)[0]["quality"], "exception:02");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_every_meter_on_a_shared_line_and_every_modbus_unit() {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
pty = "auto"
meters = [
  { address = "000000000001" },
  { address = "000000000002" },
  { address = "000000000102" },
]

[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 2 }, { unit = 4 }]
"#,
    )
    .await;
    let (code, out, err) = run_to_end(
        &[
            "scan",
            "dlt645",
            "--link",
            &s.lines[0].link,
            "--timeout",
            "60ms",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("# 3 DL/T 645 meter(s)"), "{out}");
    for a in ["000000000001", "000000000002", "000000000102"] {
        assert!(
            out.contains(&format!("address = \"{a}\"")),
            "{a} missing from\n{out}"
        );
    }
    // Told that three meters share the line, the search stops at the third: the same
    // meters, fewer probes (each silent one costs the timeout on a real line).
    let probes = |out: &str| -> u32 {
        out.lines()
            .find_map(|l| {
                l.strip_suffix(" probe(s)")
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("no probe count in\n{out}"))
    };
    let all = probes(&out);
    let (code, told, err) = run_to_end(
        &[
            "scan",
            "dlt645",
            "--link",
            &s.lines[0].link,
            "--timeout",
            "60ms",
            "--meters",
            "3",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{told}{err}");
    assert!(told.contains("# 3 DL/T 645 meter(s)"), "{told}");
    assert!(
        told.contains("the search stopped at the 3 meter(s) expected"),
        "{told}"
    );
    assert!(
        probes(&told) < all,
        "{} probes, {all} without --meters",
        probes(&told)
    );
    let (code, out, err) = run_to_end(
        &[
            "scan",
            "modbus",
            "--link",
            &s.lines[1].link,
            "--from",
            "1",
            "--to",
            "6",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("# 2 Modbus unit(s)"), "{out}");
    assert!(
        out.contains("unit = 2") && out.contains("unit = 4"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"s1\"\n\n[[bus]]\nname = \"b\"\nlink = \"tcp://127.0.0.1:1\"\n\n[[device]]\nname = \"m\"\nbus = \"nope\"\nprotocol = \"dlt645\"\naddress = \"000000000001\"\npoints = [{ name = \"e\", di = \"00010000\" }]\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf-8 path");
    let (code, _, err) = run_to_end(&["check-config", "--config", p], LIMIT).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{p}:10:7: device[0].bus: no bus named \"nope\"")),
        "{err}"
    );
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .expect("read")
            .replace("\"nope\"", "\"b\""),
    )
    .expect("write");
    // Its rules hold; the identity key it names by default is not there.
    let (code, out, err) = run_to_end(&["check-config", "--no-files", "--config", p], LIMIT).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 bus(es), 1 device(s), 1 point(s)"), "{out}");
    let key = dir.path().join("identity.key");
    gridgate_core::Identity::generate()
        .expect("key")
        .save(&key, &dir.path().join("identity.pub"))
        .expect("save");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).expect("read").replace(
            "id = \"s1\"\n",
            &format!("id = \"s1\"\nidentity = \"{}\"\n", key.display()),
        ),
    )
    .expect("write");
    let (code, out, err) = run_to_end(&["check-config", "--config", p], LIMIT).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 bus(es), 1 device(s), 1 point(s)"), "{out}");
    let (code, _, err) =
        run_to_end(&["check-config", "--config", "/nonexistent/x.toml"], LIMIT).await;
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/x.toml: cannot read"), "{err}");
}

/// check-config opens every file the config names, as the daemon will: the unit's
/// ExecStartPre runs it, so each of these would otherwise fail only at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_opens_and_parses_every_file_the_config_names() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let garbage = d.join("garbage.key");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let short = d.join("short.token");
    std::fs::write(&short, "0123456789\n").expect("write");
    let config = format!(
        "[gateway]\nid = \"s1\"\nidentity = \"{garbage}\"\n\n[grpc]\nlisten = \"127.0.0.1:50051\"\ncert_file = \"{missing_cert}\"\nkey_file = \"{dir}\"\nclient_ca_file = \"{garbage}\"\n\n[dr]\nissuers = [{{ name = \"operator\", public_key = \"{missing_pub}\" }}]\n\n[web]\nadmin_token_file = \"{short}\"\n",
        garbage = garbage.display(),
        missing_cert = d.join("server.pem").display(),
        dir = d.display(),
        missing_pub = d.join("operator.pub").display(),
        short = short.display(),
    );
    let path = d.join("site.toml");
    std::fs::write(&path, &config).expect("write");
    let p = path.to_str().expect("utf-8 path");
    let (code, _, err) = run_to_end(&["check-config", "--config", p], LIMIT).await;
    assert_eq!(code, 1, "{err}");
    for (line, key, says) in [
        (3, "gateway.identity", "not an Ed25519 private key"),
        (7, "grpc.cert_file", "No such file"),
        (8, "grpc.key_file", "is a directory"),
        (9, "grpc.client_ca_file", "no certificate in it"),
        (12, "dr.issuers[0].public_key", "No such file"),
        (15, "web.admin_token_file", "at least 32 characters"),
    ] {
        let at = format!("{p}:{line}:");
        assert!(
            err.lines().any(|l| l.starts_with(&at)
                && l.contains(&format!(": {key}: "))
                && l.contains(says)),
            "{key} ({says}) at line {line}: {err}"
        );
    }
    // Each cause said once, not repeated after itself.
    assert!(
        !err.contains("(os error 2): No such file"),
        "a repeated cause: {err}"
    );
    // A missing identity key (the default path) is reported too, without a line.
    std::fs::write(&path, "[gateway]\nid = \"s1\"\n").expect("write");
    let (code, _, err) = run_to_end(&["check-config", "--config", p], LIMIT).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{p}:0:0: gateway.identity: /etc/gridgate/identity.key"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_with_no_arguments_and_shows_readings() {
    let (code, out, err) = run_to_end(
        &["demo", "--duration", "4s", "--json", "--web-port", "0"],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    let good = |prefix: &str| {
        v.iter().any(|r| {
            r["point"].as_str().is_some_and(|p| p.starts_with(prefix)) && r["quality"] == "good"
        })
    };
    assert!(good("meter-1/"), "{out}");
    assert!(good("plant-unit1/"), "{out}");
    // The MQTT sensor's readings are printed like the polled ones.
    assert!(good("sensor-1/"), "{out}");
    assert!(err.contains("simulated line rs485-1 (dlt645)"), "{err}");
    // The banner and the page's address come before anything the validators log.
    let page = err
        .lines()
        .position(|l| l.contains("commissioning page: http://"))
        .unwrap_or_else(|| panic!("no page address:\n{err}"));
    let banner = err
        .lines()
        .position(|l| l.starts_with("gridgate demo: "))
        .unwrap_or_else(|| panic!("no banner:\n{err}"));
    let validators = err.lines().position(|l| l.contains("/consortium/v"));
    assert!(
        banner < page && validators.is_none_or(|v| v > page),
        "the validators logged before the page's address:\n{err}"
    );
}

/// `--keep DIR` leaves a store that `gridgate verify` checks as a master station would;
/// `--status-only` prints no readings. Once the first batch closes, the demo pulls it over
/// gRPC and verifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_its_store_for_verify_and_checks_a_batch_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let keep = dir.path().join("demo");
    let keep_arg = keep.to_str().expect("utf-8");
    let (code, out, err) = run_to_end(
        &[
            "demo",
            "--duration",
            "12s",
            "--dr-after",
            "600s",
            "--status-only",
            "--keep",
            keep_arg,
            "--web-port",
            "0",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().is_empty(), "status only, yet readings:\n{out}");
    assert!(
        err.contains("master station's check: batch 0 (")
            && err.contains("its Ed25519 signature verifies"),
        "{err}"
    );
    assert!(
        err.contains(&format!("gridgate verify --data-dir {keep_arg}/data")),
        "{err}"
    );
    let (code, out, verr) =
        gridgate_tests::verify_chain(&keep.join("data"), &keep.join("identity.pub"), LIMIT).await;
    assert_eq!(code, 0, "{out}{verr}");
    assert!(out.contains("chain OK"), "{out}");
    // A second run into the same directory would mix two keys' batches: refused.
    let (code, _, err) = run_to_end(
        &[
            "demo",
            "--duration",
            "1s",
            "--keep",
            keep_arg,
            "--web-port",
            "0",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a demo's data"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_sends_a_signed_dr_event_and_the_load_comes_off() {
    let (code, out, err) = run_to_end(
        &[
            "demo",
            "--duration",
            "9s",
            "--dr-after",
            "1s",
            "--json",
            "--web-port",
            "0",
        ],
        LIMIT,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("dispatched (shed 27.5 kW of plant-pcs for 20 s): accepted"),
        "{err}"
    );
    assert!(
        err.contains("DR ACTIVE: plant-pcs ACKNOWLEDGED (setpoint 50 was 100"),
        "{err}"
    );
    let v = json_lines(&out);
    let power: Vec<f64> = v
        .iter()
        .filter(|r| r["point"] == "plant-unit1/active_power")
        .filter_map(|r| r["value"].as_f64())
        .collect();
    // Polled every 5 s: once at full power before the event, then at about half.
    assert!(power.len() >= 2, "{power:?}");
    assert!(
        power[0] > 50.0 && power[power.len() - 1] < 30.0,
        "{power:?}"
    );
}

/// The demo's consortium certifies and settles its DR claim, and its three prosumers trade a
/// market interval end to end: cleared final by the validators, delivered (the shop's load
/// moved by its relay), settled. `--until-settled` stops it then: one to three minutes,
/// as the minute boundaries fall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_settles_its_dr_claim_and_a_market_interval_on_four_validators() {
    let (code, out, err) = run_to_end(
        &[
            "demo",
            "--duration",
            "280s",
            "--until-settled",
            "--dr-after",
            "1s",
            "--dr-for",
            "3s",
            "--json",
            "--web-port",
            "0",
        ],
        Duration::from_secs(330),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(
        err.contains("4 validator(s), 3 votes certify (tolerates 1 faulty)"),
        "{err}"
    );
    // The event and the signed report, both on the gateway's log, certified; and the
    // settlement of the day pays the claim.
    let settled = err
        .lines()
        .find(|l| l.contains("ledger: 2 own entries certified by the 4 validators, 0 waiting"))
        .unwrap_or_else(|| panic!("the claim was never certified:\n{err}"));
    assert!(
        settled.contains("; settlement of today: demo-"),
        "{settled}"
    );
    assert!(!settled.contains("paid 0.000"), "{settled}");
    // The market: an interval all three traded in cleared, final with at least three
    // validators; delivered, the shop's load moved for it; and settled.
    assert!(
        err.contains("-- market: demo-operator published the terms of demo-feeder"),
        "{err}"
    );
    let cleared = err
        .lines()
        .find(|l| {
            l.starts_with("-- market demo-feeder, interval ")
                && l.contains(": cleared at ")
                && l.contains("prosumer-pv sells")
        })
        .unwrap_or_else(|| panic!("no interval cleared with the prosumers:\n{err}"));
    assert!(
        cleared.contains("prosumer-battery sells") && cleared.contains("prosumer-load buys"),
        "{cleared}"
    );
    let signers = cleared
        .split("final with ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .map_or(0, |s| s.split(", ").count());
    assert!(signers >= 3, "{cleared}");
    let delivered = err
        .lines()
        .find(|l| l.contains(": delivered prosumer-pv"))
        .unwrap_or_else(|| panic!("no delivery logged:\n{err}"));
    assert!(delivered.contains("moved shop-pcs"), "{delivered}");
    let settlement = err
        .lines()
        .find(|l| l.starts_with("-- market settlement of today"))
        .unwrap_or_else(|| panic!("no market settlement:\n{err}"));
    // PV sold what it cleared and is paid for it.
    let pv = settlement
        .split("; ")
        .find(|p| p.contains("prosumer-pv "))
        .unwrap_or_else(|| panic!("PV not settled: {settlement}"));
    assert!(
        pv.contains("prosumer-pv +0.") && !pv.contains("+0.000") && pv.ends_with("(delivered)"),
        "{settlement}"
    );
    assert!(
        err.contains("a market interval are settled: stopping (--until-settled)"),
        "{err}"
    );
}
