//! DR dispatch latency: from `Dispatch` received to the last of 100 simulated Modbus-TCP
//! loads acknowledged (each load's own TCP device and bus task; the relay reads the
//! control, then writes it and reads it back in one function-23 call, as the simulated
//! devices support it), over many events, against the real
//! `gridgate run`. Beside it, in the same run, 100 bare concurrent tokio-modbus register
//! writes to the same simulators: the ratio is what the relay costs over the wire alone.
//!
//!     cargo bench -p gridgate --bench dr_latency [-- EVENTS]
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use gridgate_core::Identity;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::demand_response_client::DemandResponseClient;
use tokio_modbus::client::{Writer, tcp};
use tokio_modbus::slave::Slave;

const LOADS: usize = 100;

fn main() {
    let events: usize = common::size_arg(40);
    common::runtime().block_on(run(events));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn config(d: &Path, sims: &gridgate::tools::sim::RunningSims, port: u16) -> String {
    let mut c = sims
        .gateway_config("bench", "30s")
        .replace(
            "protocol = \"modbus\"\n",
            "protocol = \"modbus\"\nread_write_multiple = true\n",
        )
        .replacen(
            "[gateway]\nid = \"bench\"\n",
            &format!(
                "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n",
                d.join("data").display(),
                d.join("id.key").display()
            ),
            1,
        );
    c.push_str(&format!(
        "\n[grpc]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{p}/server.pem\"\nkey_file = \"{p}/server.key\"\nclient_ca_file = \"{p}/ca.pem\"\n\n[dr]\nissuers = [{{ name = \"operator\", public_key = \"{o}\" }}]\n",
        p = d.join("pki").display(),
        o = d.join("operator.pub").display()
    ));
    for i in 0..LOADS {
        c.push_str(&format!(
            "\n[[load]]\nname = \"load-{i}\"\nmeter = \"l{i}-unit1/active_power\"\ncontrol = \"l{i}-unit1/setpoint\"\nmin_setpoint = 0.0\nmax_setpoint = 100.0\nmax_events_per_day = 100000\n"
        ));
    }
    c
}

async fn run(events: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    Identity::generate()
        .expect("key")
        .save(&d.join("id.key"), &d.join("id.pub"))
        .expect("save");
    let operator = Identity::generate().expect("key");
    operator
        .save(&d.join("operator.key"), &d.join("operator.pub"))
        .expect("save");
    gridgate_api::pki::make_site_pki(&d.join("pki"), "bench", &[]).expect("pki");
    let (sims, links) = common::modbus_devices(LOADS).await;
    let port = common::free_port();
    let mut gw = common::run_gateway(&d.join("g.toml"), &config(d, &sims, port));
    let pki = d.join("pki");
    let channel = common::connect_when_up(port, &pki, "operator").await;
    let mut client = DemandResponseClient::new(channel);
    // Let every bus open its line (first polls) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut relay_ms = Vec::new();
    let mut bare_ms = Vec::new();
    for n in 0..events {
        let setpoint = if n % 2 == 0 { 50.0 } else { 60.0 };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let event = pb::DrEvent {
            id: format!("bench-{n}"),
            issuer: "operator".into(),
            program: "bench".into(),
            targets: (0..LOADS)
                .map(|i| pb::LoadTarget {
                    load: format!("load-{i}"),
                    action: Some(pb::load_target::Action::Setpoint(setpoint)),
                })
                .collect(),
            start_ms: 0,
            duration_s: 1,
            expires_ms: now + 60_000,
            issued_ms: now,
            ..Default::default()
        };
        let reply = client
            .dispatch(gridgate_core::signed::sign_event(&event, &operator))
            .await
            .expect("dispatch")
            .into_inner();
        assert!(reply.accepted, "{reply:?}");
        // Until every load acknowledged (the event's record has each load's latency from
        // acceptance), then until it completed (restored) before the next event.
        let mut latest: Option<f64> = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = client
                .get_event(pb::GetEventRequest {
                    issuer: "operator".into(),
                    event_id: event.id.clone(),
                })
                .await
                .expect("get")
                .into_inner();
            if latest.is_none()
                && st.loads.len() == LOADS
                && st.loads.iter().all(|l| l.acknowledged_ms > 0)
            {
                // Microseconds: at 5-10 ms a whole millisecond is a 10-20 % step.
                latest = st
                    .loads
                    .iter()
                    .map(|l| l.latency_us as f64 / 1000.0)
                    .reduce(f64::max);
            }
            if st.state == pb::EventState::Completed as i32 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "event {n} did not complete: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay_ms.push(latest.expect("every load acknowledged"));

        // The same number of writes, bare: one register write per device, all at once, on
        // connections opened beforehand (the relay's lines are open too).
        let mut contexts = Vec::with_capacity(LOADS);
        for a in &links {
            contexts.push(tcp::connect_slave(*a, Slave(1)).await.expect("connect"));
        }
        let started = Instant::now();
        let outcomes = futures::future::join_all(
            contexts
                .iter_mut()
                .map(|c| c.write_single_register(10, 700)),
        )
        .await;
        bare_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(
            outcomes.iter().all(|o| matches!(o, Ok(Ok(())))),
            "bare writes failed"
        );
    }
    let _ = gw.start_kill();
    let _ = gw.wait().await;
    relay_ms.sort_by(f64::total_cmp);
    bare_ms.sort_by(f64::total_cmp);
    println!(
        "dr_latency: {events} events, each setting {LOADS} Modbus-TCP loads (one device and bus each)"
    );
    println!(
        "relay, Dispatch accepted -> last load acknowledged (read ahead, write with read-back): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&relay_ms, 0.5),
        percentile(&relay_ms, 0.99),
        relay_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "bare tokio-modbus, {LOADS} concurrent register writes (one round trip each): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&bare_ms, 0.5),
        percentile(&bare_ms, 0.99)
    );
    println!(
        "ratio relay / bare (p50): {:.2}",
        percentile(&relay_ms, 0.5) / percentile(&bare_ms, 0.5)
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tdr.p50_ms\t{:.1}\tms\tlower\t{:.1}\t{:.3}\tratio<=3",
        percentile(&relay_ms, 0.5),
        percentile(&bare_ms, 0.5),
        percentile(&relay_ms, 0.5) / percentile(&bare_ms, 0.5)
    );
    println!(
        "result\tdr.p99_ms\t{:.1}\tms\tlower\t{:.1}\t{:.3}\tvalue<10",
        percentile(&relay_ms, 0.99),
        percentile(&bare_ms, 0.99),
        percentile(&relay_ms, 0.99) / percentile(&bare_ms, 0.99)
    );
}
