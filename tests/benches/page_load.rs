//! The commissioning page at 10 and at 1,000 devices, side by side in one run: two real
//! gateways (MQTT field devices on their embedded brokers, every device with a value),
//! each page opened fresh N times in headless Chromium, timed from navigation start to the
//! device list drawn (a performance mark the page sets); and the JSON it reads, timed from
//! here. Medians.
//!
//!     cargo bench -p gridgate-tests --bench page_load -- [N]
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
use gridgate_tests::dr_site::wait_for_port;
use gridgate_tests::web::{Browser, request};
use gridgate_tests::{Gateway, free_port};

struct Site {
    gw: Gateway,
    web: u16,
    _dir: tempfile::TempDir,
}

async fn site(devices: usize) -> Site {
    let dir = tempfile::tempdir().expect("dir");
    let (web, mqtt) = (free_port(), free_port());
    let mut config = format!(
        "[gateway]\nid = \"bench-{devices}\"\n\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n\n[ingest]\nbroker = \"mqtt://127.0.0.1:{mqtt}\"\n\n[web]\nlisten = \"127.0.0.1:{web}\"\nanonymous_read = true\n"
    );
    for i in 0..devices {
        config.push_str(&format!(
            "\n[[ingest.device]]\nname = \"dev-{i:04}\"\ntopic = \"field/dev-{i:04}\"\npoints = [{{ name = \"power\", unit = \"kW\" }}, {{ name = \"voltage\", unit = \"V\" }}]\n"
        ));
    }
    let gw = Gateway::start_in(dir.path(), &config).await;
    wait_for_port(web).await;
    wait_for_port(mqtt).await;
    // One message per device, so that every row has values.
    let mut opts = rumqttc::MqttOptions::new(format!("bench-{devices}"), "127.0.0.1", mqtt);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for i in 0..devices {
        let payload = format!(
            "[{{\"point\": \"power\", \"value\": {}}}, {{\"point\": \"voltage\", \"value\": 230.1}}]",
            i as f64 / 10.0
        );
        client
            .publish(
                format!("field/dev-{i:04}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish");
    }
    // Wait until the last device shows a value.
    let last = format!("/api/devices?q=dev-{:04}", devices - 1);
    for _ in 0..300 {
        let (_, body) = request(web, "GET", &last, None, None).await;
        if body.contains("\"quality\":\"good\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
    Site { gw, web, _dir: dir }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn api_ms(port: u16, path: &str, n: usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = request(port, "GET", path, None, None).await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
        bytes = body.len();
    }
    (median(times), bytes)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let small = site(10).await;
    let large = site(1000).await;
    let browser = Browser::start().await;
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(browser.capabilities())
        .connect(&browser.url())
        .await
        .expect("WebDriver session");
    println!(
        "| devices | page drawn (median of {n}) | GET /api/devices?limit=50 | its size | GET /api/overview |"
    );
    println!("|---|---|---|---|---|");
    for (count, s) in [(10, &small), (1000, &large)] {
        let mut drawn = Vec::new();
        for _ in 0..n {
            // A fresh document each time (about:blank in between), the devices tab open.
            c.goto("about:blank").await.expect("blank");
            c.goto(&format!("http://127.0.0.1:{}/#devices", s.web))
                .await
                .expect("open");
            let mut at = None;
            for _ in 0..200 {
                let v = c
                    .execute(
                        "const m = performance.getEntriesByName('devices-drawn'); return m.length ? m[0].startTime : null;",
                        vec![],
                    )
                    .await
                    .expect("script");
                if let Some(ms) = v.as_f64() {
                    at = Some(ms);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drawn.push(at.expect("the device list is drawn"));
        }
        let (list_ms, list_bytes) = api_ms(s.web, "/api/devices?limit=50", n * 5).await;
        let (ov_ms, _) = api_ms(s.web, "/api/overview", n * 5).await;
        println!(
            "| {count} | {:.0} ms | {list_ms:.1} ms | {:.1} KiB | {ov_ms:.1} ms |",
            median(drawn),
            list_bytes as f64 / 1024.0
        );
    }
    let _ = c.close().await;
    drop(browser);
    for s in [small, large] {
        let _ = s.gw.stop().await;
    }
}
