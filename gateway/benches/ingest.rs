//! End-to-end ingest: an MQTT publisher on loopback → Mosquitto → the real `gridgate run`
//! (durable store, group commit, signed batches) → uplink back through Mosquitto to this
//! process, with 10,000 points configured. The publisher is this process (rumqttc), then,
//! in the same run, a paho-mqtt (Python) script as a field integrator would write it
//! (`tests/python/paho_publisher.py`). Beside them, a bare redb loop inserting and
//! committing the same encoded readings in groups of the same size, with the same
//! durability: the ratio says what the pipeline costs over the storage engine alone.
//!
//!     cargo bench -p gridgate --bench ingest [-- READINGS]
//!
//! Needs `mosquitto` and Python's `paho-mqtt` (scripts/test.sh installs both).
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridgate_proto::v1 as pb;
use prost::Message;

const POINTS: usize = 10_000;
const PER_MESSAGE: usize = 100;
const BATCH: usize = 1000;

fn main() {
    let total: usize = common::size_arg(1_000_000);
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("dir");
    let bare = bare_redb(dir.path(), total);
    let (rust, rss_kib, batches) = rt.block_on(pipeline(
        &dir.path().join("rust"),
        total,
        Publisher::Rumqttc,
    ));
    let (paho, paho_rss_kib, paho_batches) =
        rt.block_on(pipeline(&dir.path().join("paho"), total, Publisher::Paho));
    println!(
        "ingest: {total} readings in messages of {PER_MESSAGE}, {POINTS} points configured, batches of {BATCH}"
    );
    println!(
        "  bare redb insert+commit ({BATCH} per durable commit)   {:>9.0} readings/s",
        bare
    );
    println!(
        "  rumqttc -> gridgate store -> batches -> uplink      {:>9.0} readings/s ({batches} batches), ratio to bare {:.2}, peak RSS {:.1} MiB",
        rust,
        rust / bare,
        rss_kib as f64 / 1024.0
    );
    println!(
        "  paho-mqtt -> gridgate store -> batches -> uplink    {:>9.0} readings/s ({paho_batches} batches), ratio to bare {:.2}, peak RSS {:.1} MiB",
        paho,
        paho / bare,
        paho_rss_kib as f64 / 1024.0
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tingest.readings_per_s\t{rust:.0}\treadings/s\thigher\t{bare:.0}\t{:.3}\tratio>=0.5",
        rust / bare
    );
    println!(
        "result\tingest.peak_rss_mib\t{:.1}\tMiB\tlower\t-\t-\tvalue<64",
        rss_kib.max(paho_rss_kib) as f64 / 1024.0
    );
    println!(
        "result\tingest.paho_readings_per_s\t{paho:.0}\treadings/s\thigher\t{bare:.0}\t{:.3}\t-",
        paho / bare
    );
}

/// Who publishes the readings.
#[derive(Clone, Copy, PartialEq)]
enum Publisher {
    /// This process, with rumqttc.
    Rumqttc,
    /// A Python script with paho-mqtt, QoS 1, as a field integrator would feed the gateway.
    Paho,
}

fn reading(i: usize, base: i64) -> pb::Reading {
    pb::Reading {
        point: format!("dev/p{}", i % POINTS),
        ts_ms: base + (i / POINTS) as i64,
        value: Some(pb::reading::Value::Number(i as f64 * 0.25)),
        unit: "kW".into(),
        quality: Some(pb::Quality {
            kind: pb::QualityKind::Good as i32,
            code: 0,
        }),
        error: String::new(),
    }
}

/// The storage engine alone: encoded readings inserted and committed durably in groups.
fn bare_redb(dir: &Path, total: usize) -> f64 {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("readings");
    let db = redb::Database::create(dir.join("bare.redb")).expect("redb");
    let base = 1_795_000_000_000;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(128);
    let mut id = 0u64;
    for chunk in (0..total).collect::<Vec<_>>().chunks(BATCH) {
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(T).expect("table");
            for &i in chunk {
                buf.clear();
                reading(i, base).encode(&mut buf).expect("encode");
                t.insert(id, buf.as_slice()).expect("insert");
                id += 1;
            }
        }
        txn.commit().expect("commit");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn pipeline(dir: &Path, total: usize, publisher_kind: Publisher) -> (f64, u64, u64) {
    std::fs::create_dir_all(dir).expect("dir");
    let port = common::free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 200\n"),
    )
    .expect("conf");
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is needed: scripts/test.sh installs it");
    let mut broker = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }

    let site = dir.join("site");
    gridgate_core::Identity::generate()
        .expect("key")
        .save(&site.join("id.key"), &site.join("id.pub"))
        .expect("save");
    let points: Vec<String> = (0..POINTS)
        .map(|i| format!("{{ name = \"p{i}\" }}"))
        .collect();
    // The last readings, under a batch, close when the first of them has waited
    // batch_interval: at 1 s that wait was up to 40 % of a 1.5 s run whenever the stream
    // did not end on a batch's edge (the runs read 0.40 or 0.63 by that alone). At 100 ms
    // no batch closes by time while the stream flows (one fills in a few milliseconds), and
    // the tail is a few percent of the run.
    let config = format!(
        r#"[gateway]
id = "bench"
data_dir = "{data}"
identity = "{key}"

[store]
batch_readings = {BATCH}
batch_interval = "100ms"
budget = "8GiB"

[ingest]
broker = "mqtt://127.0.0.1:{port}"
max_payload = "1MiB"

[[ingest.device]]
name = "dev"
topic = "field/dev"
points = [{points}]

[uplink]
broker = "mqtt://127.0.0.1:{port}"
topic = "gridgate/bench/batches"
window = 16
"#,
        data = site.join("data").display(),
        key = site.join("id.key").display(),
        points = points.join(", ")
    );
    std::fs::write(site.join("g.toml"), config).expect("config");
    let mut gw = tokio::process::Command::new(env!("CARGO_BIN_EXE_gridgate"))
        .args(["run", "--config"])
        .arg(site.join("g.toml"))
        .env("GRIDGATE_LOG", "warn")
        // As systemd/gridgate.service runs it.
        .env("MALLOC_ARENA_MAX", "2")
        .kill_on_drop(true)
        .spawn()
        .expect("gridgate");
    let pid = gw.id().expect("pid");

    // Count readings arriving in uplinked batches.
    let uplinked = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    let (u, b) = (uplinked.clone(), batches.clone());
    let mut opts = rumqttc::MqttOptions::new("bench-master", "127.0.0.1", port);
    opts.set_max_packet_size(64 << 20, 1 << 20);
    let (sub, mut sub_ev) = rumqttc::AsyncClient::new(opts, 64);
    let collector = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        loop {
            match sub_ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = sub.try_subscribe("gridgate/bench/batches", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let signed = pb::SignedBatch::decode(p.payload.as_ref()).expect("signed");
                    let batch = pb::Batch::decode(signed.batch.as_slice()).expect("batch");
                    if seen.insert(batch.seq) {
                        u.fetch_add(batch.readings.len() as u64, Ordering::SeqCst);
                        b.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // Let the gateway subscribe before publishing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let base = 1_795_000_000_000i64;
    let messages: Vec<Vec<u8>> = (0..total / PER_MESSAGE)
        .map(|m| {
            let items: Vec<String> = (0..PER_MESSAGE)
                .map(|k| {
                    let i = m * PER_MESSAGE + k;
                    format!(
                        r#"{{"point":"p{}","value":{},"ts_ms":{}}}"#,
                        i % POINTS,
                        i as f64 * 0.25,
                        base + (i / POINTS) as i64
                    )
                })
                .collect();
            format!("[{}]", items.join(",")).into_bytes()
        })
        .collect();
    let opts = rumqttc::MqttOptions::new("bench-device", "127.0.0.1", port);
    let (publ, mut pub_ev) = rumqttc::AsyncClient::new(opts, 256);
    let count = messages.len() as u64;
    let started = Instant::now();
    let elapsed = if publisher_kind == Publisher::Paho {
        drop(messages);
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/paho_publisher.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args([
                "--port",
                &port.to_string(),
                "--readings",
                &total.to_string(),
            ])
            .args([
                "--per-message",
                &PER_MESSAGE.to_string(),
                "--points",
                &POINTS.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with paho-mqtt (scripts/test.sh puts it in target/pyenv: `. target/pyenv/bin/activate`)");
        // The clock starts once Python has built its payloads and connected.
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines.next_line().await.ok().flatten();
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "paho publisher did not start"
        );
        let started = Instant::now();
        let waited = wait_uplinked(&uplinked, total, started).await;
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                eprintln!("  paho publisher: {line}; last batch uplinked after {waited:.2} s")
            }
            other => eprintln!("  paho publisher said nothing more: {other:?}"),
        }
        let _ = child.wait().await;
        waited
    } else {
        let publisher = tokio::spawn(async move {
            tokio::spawn(async move {
                for m in messages {
                    if publ
                        .publish("field/dev", rumqttc::QoS::AtLeastOnce, false, m)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            // Keep the connection going until the broker has acknowledged every message.
            let mut acked = 0u64;
            while acked < count {
                match pub_ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            started.elapsed()
        });
        let elapsed = wait_uplinked(&uplinked, total, started).await;
        if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(1), publisher).await {
            eprintln!(
                "  publisher done after {:.2} s; last batch uplinked after {elapsed:.2} s",
                p.as_secs_f64()
            );
        }
        elapsed
    };
    let rss = peak_rss(pid);
    collector.abort();
    let _ = gw.start_kill();
    let _ = gw.wait().await;
    let _ = broker.kill();
    let _ = broker.wait();
    (
        uplinked.load(Ordering::SeqCst) as f64 / elapsed,
        rss,
        batches.load(Ordering::SeqCst),
    )
}

/// Waits until every reading is back in an uplinked batch (at most 10 minutes, with a
/// progress line every 5 s); returns the seconds since `started`.
async fn wait_uplinked(uplinked: &AtomicU64, total: usize, started: Instant) -> f64 {
    let target = (total / PER_MESSAGE * PER_MESSAGE) as u64;
    let mut last_report = Instant::now();
    while uplinked.load(Ordering::SeqCst) < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  ... {} of {target} readings uplinked",
                uplinked.load(Ordering::SeqCst)
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up after 10 minutes");
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

/// The process's peak resident set (VmHWM), KiB.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
