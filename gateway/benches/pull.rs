//! The master station's side: batches and readings pulled over mutual TLS on loopback from
//! the real `gridgate run`, and the latency of live readings from acquisition (the reading's
//! own timestamp, taken when the meter's reply arrived) to a `Subscribe` client.
//!
//!     cargo bench -p gridgate --bench pull [-- BATCHES]
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use gridgate_core::Identity;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::telemetry_client::TelemetryClient;
use gridgate_store::Store;
use gridgate_store::batch::{Framed, seal_framed};
use prost::Message;

const PER_BATCH: usize = 1000;

fn main() {
    let batches: u64 = common::size_arg(500);
    common::runtime().block_on(run(batches));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn prefill(data: &Path, id: &Identity, batches: u64) {
    let store = Store::open(data, "bench").expect("store");
    let sealer =
        |seq: u64, prev: [u8; 32], rs: &Framed| seal_framed(id, "bench", seq, prev, now_ms(), rs);
    for b in 0..batches {
        let rs: Vec<pb::Reading> = (0..PER_BATCH)
            .map(|i| pb::Reading {
                point: format!("meter-{}/active_power", i % 100),
                ts_ms: 1_795_000_000_000 + b as i64,
                value: Some(pb::reading::Value::Number(i as f64 * 0.5)),
                unit: "kW".into(),
                quality: Some(pb::Quality {
                    kind: pb::QualityKind::Good as i32,
                    code: 0,
                }),
                error: String::new(),
            })
            .collect();
        store.commit(&rs, &[], Some(&sealer)).expect("commit");
    }
}

async fn run(batches: u64) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let id = Identity::generate().expect("key");
    id.save(&d.join("id.key"), &d.join("id.pub")).expect("save");
    gridgate_api::pki::make_site_pki(&d.join("pki"), "bench", &[]).expect("pki");
    eprintln!("prefilling {batches} batches of {PER_BATCH} readings...");
    prefill(&d.join("data"), &id, batches);

    let spec: gridgate::tools::sim::SimSpec = toml::from_str(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000001" }, { address = "000000000002" }, { address = "000000000003" }]
"#,
    )
    .expect("spec");
    let sims = gridgate::tools::sim::start(&spec).await.expect("sims");
    let port = common::free_port();
    let mut config = sims.gateway_config("bench", "20ms");
    config = config.replacen(
        "[gateway]\nid = \"bench\"\n",
        &format!(
            "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n",
            d.join("data").display(),
            d.join("id.key").display()
        ),
        1,
    );
    config.push_str(&format!(
        "\n[store]\nbatch_readings = 1000\nbatch_interval = \"1s\"\nbudget = \"8GiB\"\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{p}/server.pem\"\nkey_file = \"{p}/server.key\"\nclient_ca_file = \"{p}/ca.pem\"\n",
        p = d.join("pki").display()
    ));
    let mut gw = common::run_gateway(&d.join("g.toml"), &config);

    let pki = d.join("pki");
    let channel = common::connect_when_up(port, &pki, "master").await;
    let mut client = TelemetryClient::new(channel).max_decoding_message_size(64 << 20);

    // Pull every prefilled batch; decode each to count its readings (what a master does).
    let mut pull_times = Vec::new();
    let mut readings = 0usize;
    for _ in 0..3 {
        let started = Instant::now();
        let mut stream = client
            .pull_batches(pb::PullBatchesRequest {
                consumer: "bench".into(),
                from_seq: 0,
                max: batches as u32,
                ..Default::default()
            })
            .await
            .expect("pull")
            .into_inner();
        readings = 0;
        let mut n = 0u64;
        while let Some(b) = stream.message().await.expect("stream") {
            let signed = pb::SignedBatch::decode(b.signed_batch.as_slice()).expect("signed");
            readings += pb::Batch::decode(signed.batch.as_slice())
                .expect("batch")
                .readings
                .len();
            n += 1;
        }
        assert_eq!(n, batches);
        pull_times.push(started.elapsed().as_secs_f64());
    }
    pull_times.sort_by(f64::total_cmp);
    let median = pull_times[1];

    // Live latency: reading timestamp (taken at acquisition) to arrival here.
    let mut live = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut lat_us: Vec<i64> = Vec::new();
    let started = Instant::now();
    while lat_us.len() < 3000 && started.elapsed() < Duration::from_secs(60) {
        let Some(item) = live.message().await.expect("live") else {
            break;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        if let Some(r) = item.reading {
            lat_us.push(now - r.ts_ms * 1000);
        }
    }
    lat_us.sort_unstable();
    let pct = |p: f64| lat_us[((lat_us.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    let _ = gw.start_kill();
    let _ = gw.wait().await;
    println!(
        "pull: {batches} batches of {PER_BATCH} readings over mutual TLS on loopback, one puller (median of 3)"
    );
    println!("  {:>10.0} batches/s", batches as f64 / median);
    println!("  {:>10.0} readings/s", readings as f64 / median);
    println!(
        "subscribe: {} live readings from 3 simulated meters polled every 20 ms",
        lat_us.len()
    );
    println!(
        "  latency acquisition -> subscriber  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("  (timestamps have millisecond resolution: each figure may read up to 1 ms high)");
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tpull.readings_per_s\t{:.0}\treadings/s\thigher\t-\t-\t-",
        readings as f64 / median
    );
    println!(
        "result\tsubscribe.p99_ms\t{:.2}\tms\tlower\t-\t-\t-",
        pct(0.99)
    );
}
