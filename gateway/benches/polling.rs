//! Modbus polling flat out: the real `gridgate run` polling 50 simulated Modbus-TCP devices
//! (each on its own line and bus task) of 20 registers each, read in 3 merged requests a poll
//! (`max_gap = 0`), every 1 ms, storing every reading; beside it, in the same run and on the
//! same simulators, a bare tokio-modbus loop per device doing the same three reads as fast as
//! it can and keeping nothing. The ratio is what acquisition and storage cost over the wire.
//!
//!     cargo bench -p gridgate --bench polling [-- SECONDS]
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gridgate_core::Identity;
use tokio_modbus::client::{Reader, tcp};
use tokio_modbus::slave::Slave;

const DEVICES: usize = 50;
/// The simulated device's holding registers read, as (first, count): 20 registers in the
/// three runs the register map has without gaps.
const READS: [(u16, u16); 3] = [(0, 7), (10, 1), (20, 12)];

fn main() {
    let seconds: u64 = common::size_arg(20);
    common::runtime().block_on(run(Duration::from_secs(seconds)));
}

/// One `[[bus]]` and `[[device]]` per simulator line, each register a u16 point.
fn config(d: &Path, sims: &gridgate::tools::sim::RunningSims, web: u16) -> String {
    let mut c = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n\n[web]\nlisten = \"127.0.0.1:{web}\"\nanonymous_read = true\n",
        d.join("data").display(),
        d.join("id.key").display()
    );
    let mut points = String::new();
    for (first, count) in READS {
        for a in first..first + count {
            points.push_str(&format!(
                "  {{ name = \"r{a}\", table = \"holding\", address = {a}, type = \"u16\" }},\n"
            ));
        }
    }
    for (i, l) in sims.lines.iter().enumerate() {
        c.push_str(&format!(
            "\n[[bus]]\nname = \"b{i}\"\nlink = \"{}\"\n\n[[device]]\nname = \"d{i}\"\nbus = \"b{i}\"\nprotocol = \"modbus\"\nunit = 1\npoll = \"1ms\"\nmax_gap = 0\npoints = [\n{points}]\n",
            l.link
        ));
    }
    c
}

/// Sum of a counter family in a Prometheus text page.
fn total(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(web: u16) -> String {
    let url = format!("http://127.0.0.1:{web}/metrics");
    loop {
        if let Ok(text) = get(&url).await {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET on loopback (the page is the gateway's own, without TLS).
async fn get(url: &str) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.1 200") => Ok(rest.to_string()),
        _ => Err(std::io::Error::other("not 200")),
    }
}

async fn run(length: Duration) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    Identity::generate()
        .expect("key")
        .save(&d.join("id.key"), &d.join("id.pub"))
        .expect("save");
    let (sims, links) = common::modbus_devices(DEVICES).await;

    // The bare loop first, alone on the simulators.
    let polls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for a in &links {
        let mut ctx = tcp::connect_slave(*a, Slave(1)).await.expect("connect");
        let (polls, stop) = (polls.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (first, count) in READS {
                    let regs = ctx
                        .read_holding_registers(first, count)
                        .await
                        .expect("transport")
                        .expect("exception");
                    assert_eq!(regs.len(), usize::from(count));
                }
                polls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let bare = polls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    for t in tasks {
        t.await.expect("bare loop");
    }

    // The gateway, on the same simulators.
    let web = common::free_port();
    let mut gw = common::run_gateway(&d.join("g.toml"), &config(d, &sims, web));
    metrics(web).await;
    // Let every bus open its line and settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = metrics(web).await;
    let started = Instant::now();
    tokio::time::sleep(length).await;
    let after = metrics(web).await;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = gw.start_kill();
    let _ = gw.wait().await;
    let gateway =
        (total(&after, "gridgate_polls_total") - total(&before, "gridgate_polls_total")) / elapsed;
    let stored = (total(&after, "gridgate_readings_stored_total")
        - total(&before, "gridgate_readings_stored_total"))
        / elapsed;
    println!(
        "polling: {DEVICES} Modbus-TCP devices, 20 registers in 3 reads a poll, poll 1 ms, {} s each",
        length.as_secs()
    );
    println!("  bare tokio-modbus loop, same 3 reads       {bare:>9.0} polls/s");
    println!(
        "  gridgate run, storing every reading        {gateway:>9.0} polls/s ({stored:.0} readings/s stored), ratio to bare {:.2}",
        gateway / bare
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tpolling.polls_per_s\t{gateway:.0}\tpolls/s\thigher\t{bare:.0}\t{:.3}\tratio>=0.5",
        gateway / bare
    );
}
