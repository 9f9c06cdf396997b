//! The gateway's first promise, tested with the real binary, a real Mosquitto and SIGKILL:
//! every reading it acknowledged reaches the master station, exactly as measured, provably
//! from this gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gridgate_proto::v1 as pb;
use gridgate_tests::{
    Gateway, Mosquitto, ONE_METER_SITE, collect_batches, free_port, has_quality, run_to_end, sims,
    stored_batches, verify_chain,
};
use prost::Message;

const WAIT: Duration = Duration::from_secs(30);

fn readings_of(batches: &[(u64, Vec<u8>)]) -> Vec<pb::Reading> {
    batches
        .iter()
        .flat_map(|(_, bytes)| {
            let signed = pb::SignedBatch::decode(bytes.as_slice()).expect("signed batch");
            pb::Batch::decode(signed.batch.as_slice())
                .expect("batch")
                .readings
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Messages the crash test's device publishes (at full speed, then it waits).
const LIMIT: u64 = 30_000;

/// A field device publishing numbered readings (QoS 1, with its own timestamps) as fast as
/// the broker takes them, up to [`LIMIT`]. Returns (messages acknowledged by the broker, stop
/// flag, task).
fn fast_publisher(
    port: u16,
    topic: &str,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s, topic) = (acked.clone(), stop.clone(), topic.to_string());
    let task = tokio::spawn(async move {
        let opts = rumqttc::MqttOptions::new(format!("field-device-{port}"), "127.0.0.1", port);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
        let base = now_ms() - 60_000;
        let mut sent: u64 = 0;
        loop {
            if !s.load(Ordering::SeqCst) && sent < LIMIT {
                // Each message: two readings, both stamped by the device.
                let payload = format!(
                    r#"[{{"point":"n","value":{sent},"ts_ms":{}}},{{"point":"half","value":{},"ts_ms":{}}}]"#,
                    base + sent as i64,
                    sent as f64 / 2.0,
                    base + sent as i64
                );
                if client
                    .try_publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
                    .is_ok()
                {
                    sent += 1;
                }
            } else if a.load(Ordering::SeqCst) >= sent {
                return sent;
            }
            match tokio::time::timeout(Duration::from_millis(50), ev.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {}
            }
        }
    });
    (acked, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000001" }, { address = "000000000002" }]

[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1 }]
"#,
    )
    .await;
    let mq = Mosquitto::start().await;
    let port = mq.port;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = s.gateway_config("crash", "50ms");
    config.push_str(&format!(
        r#"
[store]
batch_readings = 200
batch_interval = "300ms"

[ingest]
broker = "mqtt://127.0.0.1:{port}"

[[ingest.device]]
name = "dev"
topic = "field/dev"
points = [{{ name = "n" }}, {{ name = "half" }}]

[uplink]
broker = "mqtt://127.0.0.1:{port}"
topic = "gridgate/crash/batches"
"#
    ));
    let (received, collector) = collect_batches(port, "gridgate/crash/batches");
    let mut gw = Gateway::start_in(dir.path(), &config).await;
    gw.wait_for(WAIT, "a good polled reading", |v| has_quality(v, "good"))
        .await;
    // Let the ingest session subscribe once, so that the broker keeps messages for it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (acked, stop, publisher) = fast_publisher(port, "field/dev");

    let mut seed: u64 = now_ms() as u64;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pause = 100 + (seed >> 33) % 600;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        gw.kill9().await;
        gw = Gateway::start_in(dir.path(), &config).await;
        if round % 5 == 4 {
            eprintln!(
                "crash round {}: {} messages acknowledged by the broker so far",
                round + 1,
                acked.load(Ordering::SeqCst)
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let published = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher");
    assert!(
        published > 100,
        "the publisher got {published} messages out"
    );

    // Give the gateway time to take everything the broker kept for it (followed through
    // the batches it uplinks, so it runs undisturbed), then stop it cleanly (which closes
    // the last batch) and look at what it stored.
    let data = dir.path().join("data");
    let uplinked = || {
        let got = received.lock().expect("lock").clone();
        readings_of(&got)
            .iter()
            .filter(|r| r.point == "dev/n")
            .filter_map(|r| match r.value {
                Some(pb::reading::Value::Number(v)) => Some(v as i64),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<i64>>()
            .len() as u64
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while uplinked() < published && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(gw.stop().await, Some(0), "clean stop");
    // Retention drops each batch once the uplink has it, so count what the master station
    // got, one copy per batch number, as it de-duplicates.
    let by_seq: BTreeMap<u64, Vec<u8>> = received.lock().expect("lock").iter().cloned().collect();
    let delivered: Vec<(u64, Vec<u8>)> = by_seq.into_iter().collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in readings_of(&delivered) {
        if r.point == "dev/n" {
            let Some(pb::reading::Value::Number(v)) = r.value else {
                panic!("dev/n without a number: {r:?}")
            };
            *counts.entry(v as i64).or_default() += 1;
        }
    }
    let missing: Vec<u64> = (0..published)
        .filter(|i| !counts.contains_key(&(*i as i64)))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {published} acknowledged messages missing, e.g. {missing:?}",
        published - counts.len() as u64
    );
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).take(10).collect();
    assert!(
        twice.is_empty(),
        "readings stored more than once: {twice:?}"
    );

    let pubkey = dir.path().join("identity.pub");
    let (code, out, err) = verify_chain(&data, &pubkey, WAIT).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chain OK"), "{out}");

    // Every batch the master station received and the gateway still holds is byte for byte
    // the stored one; the received ones chain without a gap.
    let stored: BTreeMap<u64, Vec<u8>> = stored_batches(&data).into_iter().collect();
    let got = received.lock().expect("lock").clone();
    assert!(!got.is_empty(), "the uplink published batches");
    for (seq, bytes) in &got {
        if let Some(kept) = stored.get(seq) {
            assert_eq!(
                kept, bytes,
                "uplinked batch {seq} differs from the stored one"
            );
        }
    }
    let seqs: std::collections::BTreeSet<u64> = got.iter().map(|(s, _)| *s).collect();
    let (first, last) = (
        seqs.first().copied().unwrap_or(0),
        seqs.last().copied().unwrap_or(0),
    );
    assert_eq!(
        seqs.len() as u64,
        last - first + 1,
        "no batch number skipped"
    );
    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_catches_up_in_order_after_a_broker_outage() {
    let s = sims(ONE_METER_SITE).await;
    let mut mq = Mosquitto::start().await;
    let port = mq.port;
    let mut config = s.gateway_config("outage", "100ms");
    config.push_str(&format!(
        r#"
[store]
batch_readings = 8
batch_interval = "200ms"

[uplink]
broker = "mqtt://127.0.0.1:{port}"
topic = "gridgate/outage/batches"
"#
    ));
    let (received, collector) = collect_batches(port, "gridgate/outage/batches");
    let mut gw = Gateway::start(&config).await;
    let seen = |n: usize| received.lock().expect("lock").len() >= n;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen(3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batches before the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mq.kill();
    let outage = now_ms();
    let before = received.lock().expect("lock").len();
    // Acquisition goes on while the broker is away.
    gw.wait_for(WAIT, "readings during the outage", |v| {
        has_quality(v, "good") && v["ts_ms"].as_i64().unwrap_or(0) > outage + 2000
    })
    .await;
    assert_eq!(
        received.lock().expect("lock").len(),
        before,
        "nothing can arrive while the broker is down"
    );
    mq.restart().await;
    let resumed = now_ms();
    // Wait for a batch closed after the broker came back: everything before it must be there.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = received.lock().expect("lock").clone();
        let mut first_arrival: Vec<u64> = Vec::new();
        for (seq, _) in &got {
            if !first_arrival.contains(seq) {
                first_arrival.push(*seq);
            }
        }
        let latest_after = got.iter().any(|(_, bytes)| {
            let signed = pb::SignedBatch::decode(bytes.as_slice()).expect("signed");
            pb::Batch::decode(signed.batch.as_slice())
                .expect("batch")
                .created_at_ms
                > resumed + 500
        });
        if latest_after {
            let max = *first_arrival.iter().max().expect("some");
            assert_eq!(
                first_arrival.len() as u64,
                max + 1,
                "a gap in the uplinked batches: {first_arrival:?}"
            );
            assert!(
                first_arrival.windows(2).all(|w| w[0] < w[1]),
                "batches out of order: {first_arrival:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the uplink did not catch up: {first_arrival:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.stop().await;
    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mqtt_payloads_are_refused_and_good_ones_stored() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        r#"
[gateway]
id = "ingest"

[store]
batch_readings = 1000
batch_interval = "200ms"

[broker]
listen = "127.0.0.1:{port}"

[ingest]
broker = "mqtt://127.0.0.1:{port}"
topics = ["field/#"]
max_payload = "4KiB"

[[ingest.device]]
name = "sensor"
topic = "field/sensor"
points = [{{ name = "temperature", unit = "°C" }}, {{ name = "door" }}]
"#
    );
    let gw = Gateway::start_in(dir.path(), &config).await;
    let opts = rumqttc::MqttOptions::new("test-device", "127.0.0.1", port);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
    let pump = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t0 = now_ms() - 10_000;
    let huge = format!(
        r#"{{"point":"temperature","value":1,"pad":"{}"}}"#,
        "x".repeat(8000)
    );
    let bad: Vec<(&str, String)> = vec![
        ("field/sensor", "{\"point\":".into()),
        (
            "field/sensor",
            r#"{"point":"temperature","value":"hot"}"#.replace("\"hot\"", "[1,2]"),
        ),
        ("field/sensor", r#"{"point":"humidity","value":40}"#.into()),
        (
            "field/sensor",
            r#"{"point":"temperature","value":1,"ts_ms":"yesterday"}"#.into(),
        ),
        ("field/sensor", huge),
        ("field/sensor", "\u{8}\u{ff}".into()),
        (
            "field/unknown",
            r#"{"point":"temperature","value":1}"#.into(),
        ),
    ];
    for (topic, payload) in &bad {
        client
            .publish(*topic, rumqttc::QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
    }
    for i in 0..5 {
        let good = format!(
            r#"[{{"point":"temperature","value":{}.5,"ts_ms":{}}},{{"point":"door","value":true,"ts_ms":{}}}]"#,
            20 + i,
            t0 + i,
            t0 + i
        );
        client
            .publish("field/sensor", rumqttc::QoS::AtLeastOnce, false, good)
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        gw.stop().await,
        Some(0),
        "the daemon survived every bad payload"
    );
    pump.abort();
    let readings = readings_of(&stored_batches(&dir.path().join("data")));
    let temps: Vec<f64> = readings
        .iter()
        .filter(|r| r.point == "sensor/temperature")
        .filter_map(|r| match r.value {
            Some(pb::reading::Value::Number(n)) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(
        temps,
        vec![20.5, 21.5, 22.5, 23.5, 24.5],
        "only the good messages were stored"
    );
    assert_eq!(readings.len(), 10, "{readings:?}");
    assert!(
        readings
            .iter()
            .all(|r| r.unit == "°C" || r.point == "sensor/door")
    );
}

/// A message far over the client's packet limit, held by the broker's persistent session:
/// the gateway used to drop the connection on it, get it again at every reconnect, and
/// store nothing more from that broker. It is refused once, acknowledged, and ingest goes
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversized_message_is_refused_once_and_ingest_goes_on() {
    let broker = Mosquitto::start().await;
    let port = broker.port;
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        r#"
[gateway]
id = "poison"

[store]
batch_readings = 1000
batch_interval = "200ms"

[ingest]
broker = "mqtt://127.0.0.1:{port}"
topics = ["field/#"]
max_payload = "4KiB"

[[ingest.device]]
name = "sensor"
topic = "field/sensor"
points = [{{ name = "temperature" }}]
"#
    );
    let gw = Gateway::start_logged(dir.path(), &config).await;
    let mut opts = rumqttc::MqttOptions::new("poison-device", "127.0.0.1", port);
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
    let pump = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let log = dir.path().join("gridgate.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log_text().contains("ingest connected") {
        assert!(tokio::time::Instant::now() < deadline, "{}", log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = now_ms() - 10_000;
    let reading = |i: i64| {
        format!(
            r#"{{"point":"temperature","value":{i},"ts_ms":{}}}"#,
            t0 + i
        )
    };
    // The subscription follows the CONNACK at once; the session keeps what comes after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .publish("field/sensor", rumqttc::QoS::AtLeastOnce, false, reading(1))
        .await
        .expect("publish");
    // 5 MiB: over the 4 MiB that ingest reads (4 x max_payload, at least 4 MiB).
    let poison = format!(
        r#"{{"point":"temperature","value":0,"pad":"{}"}}"#,
        "x".repeat(5 << 20)
    );
    client
        .publish("field/sensor", rumqttc::QoS::AtLeastOnce, false, poison)
        .await
        .expect("publish");
    for i in 2..=4 {
        client
            .publish("field/sensor", rumqttc::QoS::AtLeastOnce, false, reading(i))
            .await
            .expect("publish");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log_text().contains("payload refused") {
        assert!(tokio::time::Instant::now() < deadline, "{}", log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The readings after it: committed within a batch interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.stop().await, Some(0));
    pump.abort();
    let stored: Vec<f64> = readings_of(&stored_batches(&dir.path().join("data")))
        .iter()
        .filter_map(|r| match r.value {
            Some(pb::reading::Value::Number(n)) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(
        stored,
        vec![1.0, 2.0, 3.0, 4.0],
        "every good reading, before and after the big one: {}",
        log_text()
    );
    let text = log_text();
    assert_eq!(
        text.matches("reading it once to refuse").count(),
        1,
        "read once: {text}"
    );
    assert_eq!(
        text.matches("payload refused").count(),
        1,
        "refused and acknowledged once: {text}"
    );
    assert!(text.contains("over the 4096-byte limit"), "{text}");
    assert!(
        text.matches("ingest connected").count() <= 3,
        "no reconnect storm: {text}"
    );
}

/// A small filesystem of its own for the data directory, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` at `at`: the full-disk test needs a disk it can fill
    /// without filling the machine's (scripts/test.sh and CI run as root).
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a {size} tmpfs at {} failed: the full-disk test needs root (run scripts/test.sh as root, as CI does)",
            at.display()
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk: commits fail, nothing is acknowledged, the log says so without flooding;
/// once space is back the store is reopened by itself and acknowledging resumes, with the
/// chain intact. (redb refuses every commit after one I/O error until it is reopened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_storing_and_storing_resumes_when_space_is_back() {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let _disk = SmallDisk::mount(&data, "16m");
    let mut config = s.gateway_config("full", "50ms");
    config.push_str("\n[store]\nbatch_readings = 50\nbatch_interval = \"200ms\"\n");
    let mut gw = Gateway::start_logged(dir.path(), &config).await;
    gw.wait_for(WAIT, "a good polled reading", |v| has_quality(v, "good"))
        .await;
    let log = dir.path().join("gridgate.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Fill the disk.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log_text().contains("store commit failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed commit on a full disk: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = log_text();
    let errors = text.lines().filter(|l| l.contains("ERROR")).count();
    assert!(errors <= 2, "a failing store floods the log: {text}");
    // Space is back: the gateway takes commits again without a restart.
    std::fs::remove_file(&filler).expect("free space");
    let freed = now_ms();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log_text().contains("store takes commits again") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.stop().await, Some(0), "clean stop");
    let readings = readings_of(&stored_batches(&data));
    assert!(
        readings.iter().any(|r| r.ts_ms > freed + 500),
        "readings polled after space came back are stored: {}",
        log_text()
    );
    let (code, out, err) = verify_chain(&data, &dir.path().join("identity.pub"), WAIT).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_disk_budget_drops_the_oldest_batches_and_says_so() {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = s.gateway_config("budget", "50ms");
    config.push_str(
        r#"
[store]
batch_readings = 8
batch_interval = "100ms"
budget = "3KiB"
required_consumers = ["master-station"]
"#,
    );
    let mut gw = Gateway::start_in(dir.path(), &config).await;
    for _ in 0..150 {
        gw.next(WAIT).await.expect("readings");
    }
    assert_eq!(gw.stop().await, Some(0));
    let data = dir.path().join("data");
    let pubkey = dir.path().join("identity.pub");
    let (code, out, _) = verify_chain(&data, &pubkey, WAIT).await;
    assert_eq!(
        code, 0,
        "a pruned chain still verifies from its anchor: {out}"
    );
    assert!(out.contains("the disk budget dropped"), "{out}");
    assert!(out.contains("chain OK"), "{out}");

    // Another key: the first batch is named as the fault.
    let other = tempfile::tempdir().expect("dir");
    let (okey, opub) = (other.path().join("k"), other.path().join("k.pub"));
    gridgate_core::Identity::generate()
        .expect("key")
        .save(&okey, &opub)
        .expect("save");
    let (code, out, _) = verify_chain(&data, &opub, WAIT).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("FAULT: batch") && out.contains("signature does not verify"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_to_start_without_its_identity_key() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"nokey\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("missing.key").display()
        ),
    )
    .expect("write");
    let (code, _, err) =
        run_to_end(&["run", "--config", config.to_str().expect("path")], WAIT).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("missing.key") && err.contains("gridgate keygen"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause said once: {err}"
    );
    // keygen makes one, and refuses to overwrite it.
    let keys = dir.path().join("keys");
    let k = keys.to_str().expect("path");
    let (code, out, _) = run_to_end(&["keygen", "--out", k], WAIT).await;
    assert_eq!(code, 0);
    assert!(out.contains("public key:"), "{out}");
    // The key is one OpenSSL reads (as its comment in the docs says), to the same public key.
    let derived = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(keys.join("identity.key"))
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(
        derived.status.success(),
        "{}",
        String::from_utf8_lossy(&derived.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout),
        std::fs::read_to_string(keys.join("identity.pub")).expect("pub")
    );
    let (code, _, err) = run_to_end(&["keygen", "--out", k], WAIT).await;
    assert_ne!(code, 0);
    assert!(err.contains("refusing to overwrite"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_listener_acknowledges_only_what_survives_sigkill() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        r#"
[gateway]
id = "direct"

[store]
batch_readings = 100
batch_interval = "200ms"

[ingest]
listen = "127.0.0.1:{port}"

[[ingest.device]]
name = "dev"
topic = "field/dev"
points = [{{ name = "n" }}, {{ name = "half" }}]
"#
    );
    let mut gw = Gateway::start_in(dir.path(), &config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The device publishes straight to the gateway; its client library resends whatever was
    // not acknowledged when the connection comes back.
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    const N: u64 = 4000;
    let device = tokio::spawn(async move {
        let mut opts = rumqttc::MqttOptions::new("direct-device", "127.0.0.1", port);
        opts.set_clean_session(false);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
        let base = now_ms() - 60_000;
        tokio::spawn(async move {
            for i in 0..N {
                let payload = format!(
                    r#"[{{"point":"n","value":{i},"ts_ms":{}}},{{"point":"half","value":{},"ts_ms":{}}}]"#,
                    base + i as i64,
                    i as f64 / 2.0,
                    base + i as i64
                );
                if client
                    .publish("field/dev", rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let mut seed: u64 = now_ms() as u64;
    let kills: u32 = std::env::var("GRIDGATE_TEST_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    for _ in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(100 + (seed >> 33) % 300)).await;
        gw.kill9().await;
        gw = Gateway::start_in(dir.path(), &config).await;
    }
    // The last gateway must be up (listening) before it is asked to stop cleanly.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the device finish (or settle on what its library still holds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while acked.load(Ordering::SeqCst) < N && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_n = acked.load(Ordering::SeqCst);
    assert_eq!(gw.stop().await, Some(0));
    device.abort();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in readings_of(&stored_batches(&dir.path().join("data"))) {
        if r.point == "dev/n" {
            if let Some(pb::reading::Value::Number(v)) = r.value {
                *counts.entry(v as i64).or_default() += 1;
            }
        }
    }
    // The device's client library (rumqttc) may give up its own unacknowledged messages
    // across reconnects, so not every published message need arrive; but every message the
    // gateway acknowledged must be stored, and none twice. PUBACKs name packet ids, not
    // messages, so the check is by count: stored >= acknowledged.
    assert!(
        acked_n > N / 2,
        "the device got only {acked_n} of {N} acknowledgements"
    );
    assert!(
        counts.len() as u64 >= acked_n,
        "{acked_n} messages acknowledged but only {} stored",
        counts.len()
    );
    assert!(
        counts.values().all(|c| *c == 1),
        "stored twice: {:?}",
        counts
            .iter()
            .filter(|(_, c)| **c != 1)
            .take(5)
            .collect::<Vec<_>>()
    );
}
