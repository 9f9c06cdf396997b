//! How busy the gateway keeps a DL/T 645 line: 8 meters x 6 identifiers on one RS-485 line
//! simulated at 2400 baud 8E1 (a pseudo-terminal whose simulated meters answer only after the
//! request and the reply would have crossed the wire, plus the standard's minimum 20 ms
//! turnaround). The real acquisition path polls it flat out; the line's time spent carrying
//! frames, over the elapsed time, is the utilisation.
//!
//!     cargo bench -p gridgate --bench line_utilisation [-- SECONDS]
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridgate::tools::sim;
use gridgate_acquire::{self as acquire, DeviceRegistry};
use gridgate_core::Reading;
use gridgate_drivers::link::SerialSettings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const METERS: usize = 8;
const DIS: [&str; 6] = [
    "00010000", "02030000", "02010100", "02020100", "02800002", "04000503",
];

fn main() {
    let seconds: u64 = common::size_arg(30);
    common::runtime().block_on(run(Duration::from_secs(seconds)));
}

async fn run(window: Duration) {
    let meters: Vec<String> = (1..=METERS)
        .map(|i| format!("{{ address = \"{i:012}\", rated_kw = {}.5 }}", i))
        .collect();
    let spec: sim::SimSpec = toml::from_str(&format!(
        "[[line]]\nname = \"rs485\"\nprotocol = \"dlt645\"\npty = \"auto\"\nbaud = 2400\nturnaround = \"20ms\"\nmeters = [{}]\n",
        meters.join(", ")
    ))
    .expect("spec");
    let sims = sim::start(&spec).await.expect("simulators");
    let line = &sims.lines[0];
    let stats = line.dlt645.as_ref().expect("dlt645 line").stats.clone();
    let mut config = format!(
        "[gateway]\nid = \"bench\"\n\n[[bus]]\nname = \"rs485\"\nlink = \"{}\"\ntimeout = \"1s\"\n\n",
        line.link
    );
    for i in 1..=METERS {
        let points: Vec<String> = DIS
            .iter()
            .enumerate()
            .map(|(j, di)| format!("{{ name = \"p{j}\", di = \"{di}\" }}"))
            .collect();
        // Poll far faster than a round takes, so the line never rests.
        config.push_str(&format!(
            "[[device]]\nname = \"m{i}\"\nbus = \"rs485\"\nprotocol = \"dlt645\"\naddress = \"{i:012}\"\npoll = \"100ms\"\npoints = [{}]\n\n",
            points.join(", ")
        ));
    }
    let cfg = gridgate_config::parse(&config, Path::new("<bench>")).expect("config");
    let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(1024);
    let cancel = CancellationToken::new();
    let mut pollers = acquire::start(&cfg, tx, DeviceRegistry::default(), cancel.clone());

    // Warm up: the first full round opens the line.
    let mut good = 0usize;
    let mut bad = 0usize;
    while good < METERS * DIS.len() {
        let Some(group) = rx.recv().await else { break };
        good += group.iter().filter(|r| r.quality.is_good()).count();
    }
    let req0 = stats.request_bytes.load(Ordering::SeqCst);
    let rep0 = stats.reply_bytes.load(Ordering::SeqCst);
    let ex0 = stats.exchanges.load(Ordering::SeqCst);
    let started = Instant::now();
    good = 0;
    while started.elapsed() < window {
        let Ok(Some(group)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await else {
            break;
        };
        for r in &group {
            if r.quality.is_good() {
                good += 1;
            } else {
                bad += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let bytes = stats.request_bytes.load(Ordering::SeqCst) - req0
        + stats.reply_bytes.load(Ordering::SeqCst)
        - rep0;
    let exchanges = stats.exchanges.load(Ordering::SeqCst) - ex0;
    cancel.cancel();
    drop(rx);
    while pollers.join_next().await.is_some() {}

    let settings = SerialSettings::DLT645;
    let bt = settings.byte_time().as_secs_f64();
    let frame_time = bytes as f64 * bt;
    let gap_time = exchanges as f64 * 0.020;
    let secs = elapsed.as_secs_f64();
    println!(
        "line_utilisation: {METERS} meters x {} identifiers, {settings} ({:.3} ms/byte), 20 ms turnaround",
        DIS.len(),
        bt * 1e3
    );
    println!(
        "  window                 {secs:.1} s, {exchanges} exchanges, {good} good / {bad} bad readings"
    );
    println!(
        "  frame bytes on line    {bytes} ({:.1} per exchange)",
        bytes as f64 / exchanges.max(1) as f64
    );
    println!(
        "  frames                 {:.1}% of the line's time",
        100.0 * frame_time / secs
    );
    println!(
        "  frames + 20 ms gaps    {:.1}% of the line's time",
        100.0 * (frame_time + gap_time) / secs
    );
    println!(
        "  idle beyond the gaps   {:.2} ms per exchange",
        1e3 * (secs - frame_time - gap_time) / exchanges.max(1) as f64
    );
}
