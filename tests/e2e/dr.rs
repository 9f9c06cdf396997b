//! DR dispatch with the real binary over mutual TLS: the operator signs an event by hand
//! (`gridgate dr sign`) and sends it (`gridgate dr dispatch`); the gateway accepts it only if
//! it is signed by a trusted issuer, in time, new, and within each load's limits, answers
//! with the precise reason otherwise, and remembers accepted events across a restart.

use std::time::Duration;

use gridgate_dr::tables::DrStore;
use gridgate_tests::dr_site::{
    Site, WAIT, event, keygen, pcs_with_read_write_multiple, plant, reads, switched, wait_for_port,
};
use gridgate_tests::{Gateway, sims};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_are_accepted_once_and_everything_else_is_refused_with_its_reason() {
    let (_sims, site, config) = plant().await;
    let d = site.dir.path();
    std::fs::create_dir_all(d.join("forger")).expect("dir");
    keygen(&d.join("forger"));
    let gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let forger = site.path("forger/identity.key");

    let good = site
        .sign(
            "good",
            &operator,
            &event("e-1", "operator", "load = \"pcs\"\nshed_kw = 5.0"),
        )
        .await;
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted \"e-1\""), "{out}");

    // The same event again: a replay.
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSAL_REPLAYED"), "{out}");

    // Each way an event can be wrong, and the reason the gateway gives.
    let cases = [
        (
            "forged",
            forger.as_str(),
            event("e-2", "operator", "load = \"pcs\"\nshed_kw = 5.0"),
            "REFUSAL_BAD_SIGNATURE",
        ),
        (
            "stranger",
            operator.as_str(),
            event("e-3", "stranger", "load = \"pcs\"\nshed_kw = 5.0"),
            "REFUSAL_UNKNOWN_ISSUER",
        ),
        (
            "expired",
            operator.as_str(),
            event("e-4", "operator", "load = \"pcs\"\nshed_kw = 5.0")
                .replace("expires = \"10m\"", "expires = \"2020-01-01T00:00:00Z\""),
            "REFUSAL_EXPIRED",
        ),
        (
            "boiler",
            operator.as_str(),
            event("e-5", "operator", "load = \"boiler\"\non = false"),
            "REFUSAL_UNKNOWN_LOAD",
        ),
        (
            "too-much",
            operator.as_str(),
            event("e-6", "operator", "load = \"pcs\"\nshed_kw = 50.0"),
            "REFUSAL_LIMIT",
        ),
        (
            "setpoint",
            operator.as_str(),
            event("e-7", "operator", "load = \"pcs\"\nsetpoint = 120.0"),
            "REFUSAL_LIMIT",
        ),
        (
            "off-below-minimum",
            operator.as_str(),
            event("e-10", "operator", "load = \"pcs\"\non = false"),
            "on = false writes 0, outside the allowed range 20..=100",
        ),
        (
            "setpoint-to-a-switch",
            operator.as_str(),
            event("e-11", "operator", "load = \"pump\"\nsetpoint = 50.0"),
            "only on = true or false moves it",
        ),
        (
            "elsewhere",
            operator.as_str(),
            event("e-9", "operator", "load = \"pcs\"\nshed_kw = 5.0").replace(
                "\n[[target]]",
                "gateways = [\"site-elsewhere\"]\n\n[[target]]",
            ),
            "REFUSAL_NOT_ADDRESSED",
        ),
    ];
    for (name, key, text, reason) in &cases {
        let signed = site.sign(name, key, text).await;
        let (code, out) = site.dispatch("operator", &signed).await;
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(reason), "{name}: expected {reason}: {out}");
    }

    // Only the operator role may dispatch.
    let fresh = site
        .sign(
            "viewer",
            &operator,
            &event("e-8", "operator", "load = \"pump\"\non = false"),
        )
        .await;
    let (code, out) = site.dispatch("viewer", &fresh).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("may not call Dispatch"), "{out}");
    // Nor read DR: events, their reports and their changes are for the operator and the
    // master station.
    for (rpc, args) in [
        (
            "GetReport",
            ["report", "--issuer", "operator", "--id", "e-1"],
        ),
        (
            "WatchEvents",
            ["watch", "--until-reported", "e-1", "--issuer", "operator"],
        ),
    ] {
        let (code, out) = site.dr("viewer", &args).await;
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(&format!("may not call {rpc}")), "{rpc}: {out}");
    }

    // Accepted events are stored durably: after a restart the first is still a replay.
    assert_eq!(gw.stop().await, Some(0));
    let gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let (code, out) = site.dispatch("operator", &good).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSAL_REPLAYED"), "after a restart: {out}");
    let (code, out) = site.dispatch("operator", &fresh).await;
    assert_eq!(code, 0, "a new event is still accepted: {out}");
    assert_eq!(gw.stop().await, Some(0));
}

/// A plant with two Modbus loads on two kinds of control: a setpoint register (mapped from
/// shed_kw) and a switch coil. The event moves both, the readings show the power come off,
/// the end restores both, and the event's record shows each load acknowledged and restored.
/// A kill -9 in the middle does not leave a load shed: after the restart the relay finds
/// the event over and restores the loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sheds_two_loads_and_restores_them_even_across_a_kill_9() {
    let (_sims, site, config) = plant().await;
    let d = site.dir.path();
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let number = |v: &serde_json::Value| v["value"].as_f64();

    // 1. A 3-second event: pcs capped at 55 - 27.5 kW (setpoint 50 %), pump off.
    let targets = "load = \"pcs\"\nshed_kw = 27.5\n\n[[target]]\nload = \"pump\"\non = false";
    let (code, out) = site
        .send(
            "shed",
            &operator,
            &event("shed-1", "operator", targets)
                .replace("duration = \"15m\"", "duration = \"3s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    gw.wait_for(
        WAIT,
        "the pcs setpoint at 50 %",
        reads("plant-unit1/setpoint", 50.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "the pump switched off",
        switched("plant-unit2/switch", false),
    )
    .await;
    let shed = gw
        .wait_for(WAIT, "pcs power about half of rated", |v| {
            v["point"] == "plant-unit1/active_power" && number(v).is_some_and(|p| p < 30.0)
        })
        .await;
    assert!(number(&shed).is_some_and(|p| p > 25.0), "{shed}");
    gw.wait_for(WAIT, "the pump's power gone", |v| {
        v["point"] == "plant-unit2/active_power" && number(v) == Some(0.0)
    })
    .await;
    // The end restores both.
    gw.wait_for(
        WAIT,
        "the pcs setpoint back at 100 %",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "the pump back on",
        switched("plant-unit2/switch", true),
    )
    .await;

    // 2. A 4-second event, and a kill -9 while the loads are shed.
    let (code, out) = site
        .send(
            "shed2",
            &operator,
            &event("shed-2", "operator", targets)
                .replace("duration = \"15m\"", "duration = \"4s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    gw.wait_for(
        WAIT,
        "the pcs setpoint at 50 % again",
        reads("plant-unit1/setpoint", 50.0),
    )
    .await;
    gw.kill9().await;
    // The event ends while the gateway is down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut gw = Gateway::start_in(d, &config).await;
    gw.wait_for(
        WAIT,
        "the pcs setpoint restored after the restart",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "the pump on after the restart",
        switched("plant-unit2/switch", true),
    )
    .await;
    assert_eq!(gw.stop().await, Some(0));

    // The records: both events completed, every load acknowledged then restored.
    let store = gridgate_store::Store::open(&d.join("data"), "plant").expect("store");
    for id in ["shed-1", "shed-2"] {
        use prost::Message;
        let bytes = store
            .dr()
            .event(&gridgate_dr::event_key("operator", id))
            .expect("read")
            .expect("stored");
        let status = gridgate_proto::v1::EventStatus::decode(bytes.as_slice()).expect("decode");
        assert_eq!(
            status.state,
            gridgate_proto::v1::EventState::Completed as i32,
            "{id}: {status:?}"
        );
        assert_eq!(status.loads.len(), 2, "{id}");
        for l in &status.loads {
            assert_eq!(
                l.state,
                gridgate_proto::v1::LoadState::Restored as i32,
                "{id}: {l:?}"
            );
            assert!(l.acknowledged_ms > 0 && l.latency_ms >= 0, "{id}: {l:?}");
        }
        let pcs = &status.loads[0];
        assert_eq!((pcs.previous, pcs.target), (Some(100.0), 50.0), "{id}");
    }
}

/// A meter room: a DL/T 645 meter's load switch driven by remote control (trip, then close
/// at the end), confirmed through status word 3; a wrong password is a failed load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlt645_meter_is_tripped_by_remote_control_and_closed_at_the_end() {
    let s = sims(gridgate_tests::ONE_METER_SITE).await;
    let site = Site::create();
    let d = site.dir.path();
    let mut config = s.gateway_config("room", "100ms");
    config.push_str(&site.grpc_and_dr());
    config.push_str(
        r#"
[[load]]
name = "tenant"
meter = "meter-1/active_power"
control = "meter-1/relay"
password = "02000000"
"#,
    );
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let (code, out) = site
        .send(
            "trip",
            &operator,
            &event("trip-1", "operator", "load = \"tenant\"\non = false")
                .replace("duration = \"15m\"", "duration = \"2s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    // Status word 3 bit 4 (16): relay open; the meter then measures no power.
    gw.wait_for(WAIT, "the relay open", reads("meter-1/status3", 16.0))
        .await;
    gw.wait_for(
        WAIT,
        "no power through the meter",
        reads("meter-1/active_power", 0.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "the relay closed again",
        reads("meter-1/status3", 0.0),
    )
    .await;
    gw.wait_for(WAIT, "power back", |v| {
        v["point"] == "meter-1/active_power" && v["value"].as_f64().is_some_and(|p| p > 0.5)
    })
    .await;
    assert_eq!(gw.stop().await, Some(0));
}

/// The issuer cancels an active event: the load goes back at once and the event's record
/// says cancelled; a cancel of an unknown event, a forged one and a second one are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_event_restores_its_loads_at_once() {
    let (_sims, site, config) = plant().await;
    let d = site.dir.path();
    std::fs::create_dir_all(d.join("forger")).expect("dir");
    keygen(&d.join("forger"));
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let (code, out) = site
        .send(
            "long",
            &operator,
            &event("long-1", "operator", "load = \"pcs\"\nsetpoint = 40.0"),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    gw.wait_for(
        WAIT,
        "the pcs setpoint at 40 %",
        reads("plant-unit1/setpoint", 40.0),
    )
    .await;

    let cancel = |key: String, id: &'static str| {
        let site = &site;
        async move {
            site.dr(
                "operator",
                &[
                    "cancel",
                    "--sign-key",
                    &key,
                    "--issuer",
                    "operator",
                    "--id",
                    id,
                ],
            )
            .await
        }
    };
    let (code, out) = cancel(site.path("forger/identity.key"), "long-1").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSAL_BAD_SIGNATURE"), "{out}");
    let (code, out) = cancel(operator.clone(), "nothing-like-it").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("was accepted here"), "{out}");

    let (code, out) = cancel(operator.clone(), "long-1").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cancelled"), "{out}");
    gw.wait_for(
        WAIT,
        "the pcs setpoint restored",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    let (code, out) = cancel(operator.clone(), "long-1").await;
    assert_eq!(code, 1, "a second cancel: {out}");
    assert_eq!(gw.stop().await, Some(0));

    use prost::Message;
    let store = gridgate_store::Store::open(&d.join("data"), "plant").expect("store");
    let bytes = store
        .dr()
        .event(&gridgate_dr::event_key("operator", "long-1"))
        .expect("read")
        .expect("stored");
    let status = gridgate_proto::v1::EventStatus::decode(bytes.as_slice()).expect("decode");
    assert!(status.cancelled);
    assert_eq!(
        status.state,
        gridgate_proto::v1::EventState::Cancelled as i32
    );
    assert_eq!(
        status.loads[0].state,
        gridgate_proto::v1::LoadState::Restored as i32
    );
}

/// Manual override wins: set during an active event, it puts the load back at once; while
/// it is set, a new event naming the load is refused; cleared, the load can be moved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_override_wins_over_any_event() {
    let (_sims, site, config) = plant().await;
    let d = site.dir.path();
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let override_load = |clear: bool| {
        let site = &site;
        async move {
            let mut args = vec![
                "override",
                "--load",
                "pcs",
                "--reason",
                "technician on site",
            ];
            if clear {
                args.push("--clear");
            }
            let (code, out) = site.dr("operator", &args).await;
            assert_eq!(code, 0, "{out}");
            out
        }
    };
    let (code, out) = site
        .send(
            "e1",
            &operator,
            &event("ov-1", "operator", "load = \"pcs\"\nsetpoint = 40.0"),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    gw.wait_for(
        WAIT,
        "the pcs setpoint at 40 %",
        reads("plant-unit1/setpoint", 40.0),
    )
    .await;

    let out = override_load(false).await;
    assert!(out.contains("under manual override: pcs"), "{out}");
    gw.wait_for(
        WAIT,
        "the pcs put back by the override",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    let (code, out) = site
        .send(
            "e2",
            &operator,
            &event("ov-2", "operator", "load = \"pcs\"\nsetpoint = 30.0"),
        )
        .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REFUSAL_LIMIT") && out.contains("manual override"),
        "{out}"
    );

    let out = override_load(true).await;
    assert!(out.contains("no load is under manual override"), "{out}");
    let (code, out) = site
        .send(
            "e3",
            &operator,
            &event("ov-3", "operator", "load = \"pcs\"\nsetpoint = 30.0"),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    gw.wait_for(
        WAIT,
        "the pcs moved again",
        reads("plant-unit1/setpoint", 30.0),
    )
    .await;
    assert_eq!(gw.stop().await, Some(0));

    use prost::Message;
    let store = gridgate_store::Store::open(&d.join("data"), "plant").expect("store");
    let bytes = store
        .dr()
        .event(&gridgate_dr::event_key("operator", "ov-1"))
        .expect("read")
        .expect("stored");
    let status = gridgate_proto::v1::EventStatus::decode(bytes.as_slice()).expect("decode");
    assert_eq!(
        status.loads[0].state,
        gridgate_proto::v1::LoadState::Overridden as i32,
        "{status:?}"
    );
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Energy counters of the simulated loads, read every 20 ms: the loads' true average power
/// over any window, independent of what the gateway polled.
struct EnergyTrace(std::sync::Arc<std::sync::Mutex<Vec<EnergyAt>>>);

/// (ms since the epoch, each load's energy in kWh).
type EnergyAt = (i64, Vec<f64>);

impl EnergyTrace {
    fn start(loads: Vec<gridgate_drivers::sim::SharedLoad>) -> Self {
        let trace = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = trace.clone();
        std::thread::spawn(move || {
            while std::sync::Arc::strong_count(&t) > 1 {
                let now = unix_now_ms();
                let e = loads.iter().map(|l| l.lock().energy_kwh).collect();
                t.lock().expect("trace").push((now, e));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        EnergyTrace(trace)
    }

    /// Load `i`'s energy (kWh) at `t` (ms), interpolated.
    fn energy(&self, i: usize, t: i64) -> f64 {
        let trace = self.0.lock().expect("trace");
        let k = trace.partition_point(|(at, _)| *at <= t);
        assert!(k > 0 && k < trace.len(), "no energy trace around {t}");
        let ((t0, e0), (t1, e1)) = (&trace[k - 1], &trace[k]);
        e0[i] + (e1[i] - e0[i]) * (t - t0) as f64 / (t1 - t0) as f64
    }

    /// Load `i`'s true mean power (W) over [a, b).
    fn mean_w(&self, i: usize, a: i64, b: i64) -> f64 {
        (self.energy(i, b) - self.energy(i, a)) * 3_600_000.0 * 1000.0 / (b - a) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_performance_report_matches_the_loads_known_response_within_one_percent() {
    let (sims, site, mut config) = plant().await;
    config.push_str(
        "\n[[dr.program]]\nname = \"peak-shave\"\nbaseline = \"meter-before\"\nbefore = \"8s\"\nintervals = [\"10s\", \"20s\"]\n",
    );
    let trace = EnergyTrace::start(
        sims.lines[0]
            .devices
            .iter()
            .map(|d| d.load.clone())
            .collect(),
    );
    let d = site.dir.path();
    let _gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");

    // A 20-second event starting on a 10-second boundary at least 12 s from now, so that
    // the baseline window (8 s before the start) is fully polled and the intervals are whole.
    let now = unix_now_ms();
    let start = (now + 12_000).div_euclid(10_000) * 10_000 + 10_000;
    let start_text = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(start as u64),
    )
    .to_string();
    let targets = "load = \"pcs\"\nshed_kw = 27.5\n\n[[target]]\nload = \"pump\"\non = false";
    let toml = event("acc-1", "operator", targets)
        .replace("start = \"now\"", &format!("start = \"{start_text}\""))
        .replace("duration = \"15m\"", "duration = \"20s\"");
    // WatchEvents follows it from acceptance to the report.
    let watch = site.watch_until_reported("acc-1");
    let (code, out) = site.send("acc", &operator, &toml).await;
    assert_eq!(code, 0, "{out}");
    let (code, watched, err) = watch.await.expect("watch");
    assert_eq!(code, 0, "{watched}{err}");
    for seen in [
        "SCHEDULED",
        "ACTIVE",
        "pcs=ACKNOWLEDGED",
        "pump=RESTORED",
        "COMPLETED reported",
    ] {
        assert!(
            watched.contains(seen),
            "watch never showed {seen}:\n{watched}"
        );
    }

    let (code, out) = site
        .dr(
            "operator",
            &[
                "report",
                "--issuer",
                "operator",
                "--id",
                "acc-1",
                "--gateway-key",
                &site.path("identity.pub"),
                "--json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
    assert_eq!(report["start_ms"], start, "{report}");
    assert_eq!(report["end_ms"], start + 20_000, "{report}");
    assert_eq!(report["baseline"], "BASELINE_METHOD_METER_BEFORE");

    // The known response: each load's true baseline (its mean over the 8 s before the start)
    // minus its true mean over the interval, from the simulators' own energy counters.
    let baseline: Vec<f64> = (0..2)
        .map(|i| trace.mean_w(i, start - 8_000, start))
        .collect();
    let loads = report["loads"].as_array().expect("loads");
    assert_eq!(loads.len(), 2);
    let mut checked = 0;
    for (series_idx, length) in [(0, 10), (1, 20)] {
        let total = &report["total"][series_idx];
        assert_eq!(total["length_s"], length, "{report}");
        for (k, iv) in total["intervals"]
            .as_array()
            .expect("intervals")
            .iter()
            .enumerate()
        {
            let (a, b) = (
                iv["start_ms"].as_i64().expect("a"),
                iv["end_ms"].as_i64().expect("b"),
            );
            assert_eq!(iv["complete"], true, "{iv}");
            let mut want_total = 0.0;
            for (i, load) in loads.iter().enumerate() {
                let want = baseline[i] - trace.mean_w(i, a, b);
                let got = load["series"][series_idx]["intervals"][k]["reduction_w"]
                    .as_f64()
                    .expect("reduction");
                assert!(
                    (got - want).abs() <= 0.01 * want,
                    "load {} interval {a}..{b}: reported {got} W, known {want:.0} W",
                    load["load"]
                );
                want_total += want;
            }
            let got = iv["reduction_w"].as_f64().expect("total");
            eprintln!(
                "{length} s interval {a}..{b}: reported {got} W, known {want_total:.0} W ({:+.3} %)",
                (got - want_total) / want_total * 100.0
            );
            assert!(
                (got - want_total).abs() <= 0.01 * want_total,
                "total {a}..{b}: reported {got} W, known {want_total:.0} W"
            );
            checked += 1;
        }
    }
    // 20 s in 10-s intervals, and in 20-s intervals (one or two, by the clock).
    assert!(checked >= 3, "{report}");
    // About 27.5 kW + 20 kW came off.
    let first = report["total"][0]["intervals"][0]["reduction_w"]
        .as_f64()
        .expect("first");
    assert!((first - 47_500.0).abs() < 0.05 * 47_500.0, "{report}");
}

/// Waits until `cond` holds, polling every 20 ms.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The simulated load's setpoint, percent.
fn setpoint(d: &gridgate_drivers::modbus::sim::SimDevice) -> f64 {
    d.load.lock().setpoint_pct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_sheds_three_loads_on_three_kinds_of_control_and_restores_them() {
    let broker = gridgate_tests::Mosquitto::start().await;
    let s = sims(&format!(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{{ address = "000000000001" }}]

[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{{ unit = 1, rated_kw = 55.0 }}]

[[line]]
name = "field"
protocol = "mqtt"
broker = "127.0.0.1:{}"
period = "200ms"
devices = [{{ unit = 1, rated_kw = 11.0 }}]
"#,
        broker.port
    ))
    .await;
    let site = Site::create();
    let d = site.dir.path();
    let mut config = s.gateway_config("three", "100ms");
    config.push_str(&site.grpc_and_dr());
    config.push_str(
        r#"
[[load]]
name = "pcs"
meter = "plant-unit1/active_power"
control = "plant-unit1/setpoint"
rated_kw = 55.0

[[load]]
name = "tenant"
meter = "meter-1/active_power"
control = "meter-1/relay"
password = "02000000"

[[load]]
name = "charger"
meter = "field-unit1/active_power"
control = "mqtt"
command_topic = "field/unit1/cmd"
ack_topic = "field/unit1/ack"
ack_timeout = "2s"
rated_kw = 11.0
"#,
    );
    let gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let (pcs, meter, charger) = (
        &s.lines[1].devices[0],
        &s.lines[0].meters[0],
        &s.lines[2].devices[0],
    );
    let operator = site.path("operator/identity.key");
    let targets = "load = \"pcs\"\nshed_kw = 27.5\n\n[[target]]\nload = \"tenant\"\non = false\n\n[[target]]\nload = \"charger\"\nsetpoint = 40.0";
    let (code, out) = site
        .send(
            "three",
            &operator,
            &event("three-1", "operator", targets)
                .replace("duration = \"15m\"", "duration = \"4s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    // Each device itself shows the event: a register, a meter's relay, an MQTT command.
    until("the pcs at 50 %", || setpoint(pcs) == 50.0).await;
    until("the tenant's relay open", || !meter.load.lock().on).await;
    until("the charger at 40 %", || setpoint(charger) == 40.0).await;
    // And all three come back.
    until("the pcs back at 100 %", || setpoint(pcs) == 100.0).await;
    until("the tenant's relay closed", || meter.load.lock().on).await;
    until("the charger back at 100 %", || setpoint(charger) == 100.0).await;
    let (code, out) = site
        .dr("operator", &["watch", "--until-reported", "three-1"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("COMPLETED reported pcs=RESTORED tenant=RESTORED charger=RESTORED"),
        "{out}"
    );
    // The MQTT readings of the charger were measured too.
    let (code, out) = site
        .dr(
            "operator",
            &[
                "report", "--issuer", "operator", "--id", "three-1", "--json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let charger_first = &report["loads"][2]["series"][0]["intervals"][0];
    assert_eq!(report["loads"][2]["load"], "charger");
    assert!(
        charger_first["samples"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert_eq!(gw.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_never_acknowledges_is_retried_and_reported_failed() {
    let (sims, site, config) = plant().await;
    let d = site.dir.path();
    let _gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    // The pump's device stops answering: its coil can be neither read nor written.
    sims.lines[0].devices[1].set_silent(true);
    let operator = site.path("operator/identity.key");
    let watch = site.watch_until_reported("dead-1");
    let targets = "load = \"pcs\"\nshed_kw = 27.5\n\n[[target]]\nload = \"pump\"\non = false";
    let (code, out) = site
        .send(
            "dead",
            &operator,
            // Long enough for the answering load to be confirmed while the line is busy
            // timing out on the silent device, even on a loaded machine (10 s was not, once).
            &event("dead-1", "operator", targets)
                .replace("duration = \"15m\"", "duration = \"20s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let (code, watched, err) = watch.await.expect("watch");
    assert_eq!(code, 0, "{watched}{err}");
    assert!(
        watched.contains("pcs=ACKNOWLEDGED pump=PENDING"),
        "{watched}"
    );
    assert!(
        watched.contains("COMPLETED reported pcs=RESTORED pump=FAILED"),
        "{watched}"
    );
    let (code, out) = site
        .dr(
            "operator",
            &["report", "--issuer", "operator", "--id", "dead-1", "--json"],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let pump = &report["loads"][1];
    assert_eq!(pump["state"], "LOAD_STATE_FAILED", "{report}");
    // Retried within the 20 s event (each attempt waits up to 5 s for the line, which is
    // busy timing out on the silent device's polls), and the reason kept.
    assert!(
        pump["attempts"].as_u64().is_some_and(|n| n >= 2),
        "{report}"
    );
    assert!(
        pump["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("plant-unit2/switch")),
        "{report}"
    );
    // The pump never moved; the one that answered was restored.
    assert!(sims.lines[0].devices[1].load.lock().on);
    assert_eq!(setpoint(&sims.lines[0].devices[0]), 100.0);
}

/// A device that takes the write but runs at its own floor (as an inverter's local limit
/// does): the read-back never shows the target, so the load ends FAILED; the write moved it
/// all the same, so the end of the event still puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_moved_by_an_unconfirmed_write_is_restored_at_the_end() {
    let (sims, site, config) = plant().await;
    // The read-back comes in function 23's own reply, and still shows the floor.
    let config = pcs_with_read_write_multiple(&config);
    let d = site.dir.path();
    let _gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let pcs = &sims.lines[0].devices[0];
    pcs.set_floor_pct(70.0);
    let operator = site.path("operator/identity.key");
    let watch = site.watch_until_reported("floor-1");
    let (code, out) = site
        .send(
            "floor",
            &operator,
            &event("floor-1", "operator", "load = \"pcs\"\nsetpoint = 40.0")
                .replace("duration = \"15m\"", "duration = \"4s\""),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    until("the device runs at its floor", || setpoint(pcs) == 70.0).await;
    let (code, watched, err) = watch.await.expect("watch");
    assert_eq!(code, 0, "{watched}{err}");
    assert!(watched.contains("pcs=FAILED"), "{watched}");
    assert_eq!(setpoint(pcs), 100.0, "put back to what it ran at before");
    let (code, out) = site
        .dr(
            "operator",
            &[
                "report", "--issuer", "operator", "--id", "floor-1", "--json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let load = &report["loads"][0];
    assert_eq!(load["state"], "LOAD_STATE_FAILED", "{report}");
    assert!(
        load["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("wrote 40, the device shows 70")),
        "{report}"
    );
}

/// Messages received: (topic, payload).
type Inbox = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// The master station's side of DR over MQTT: publishes commands, collects what comes back.
struct MqttOperator {
    client: rumqttc::AsyncClient,
    got: Inbox,
    _task: tokio::task::JoinHandle<()>,
}

impl MqttOperator {
    async fn connect(port: u16, topics: &[&str]) -> Self {
        static CLIENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut opts = rumqttc::MqttOptions::new(format!("master-station-{n}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 16);
        let got: Inbox = Default::default();
        let (out, sub, topics) = (
            got.clone(),
            client.clone(),
            topics.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        );
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready);
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        for t in &topics {
                            let _ = sub.try_subscribe(t.clone(), rumqttc::QoS::AtLeastOnce);
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        out.lock()
                            .expect("lock")
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed)
            .await
            .expect("subscribed in time")
            .expect("subscribed");
        MqttOperator {
            client,
            got,
            _task: task,
        }
    }

    async fn send(&self, topic: &str, command: gridgate_proto::v1::DrCommand) {
        use prost::Message;
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                command.encode_to_vec(),
            )
            .await
            .expect("publish");
    }

    /// Waits for the `n`th message (from 0) on `topic`.
    async fn nth(&self, topic: &str, n: usize) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .got
                .lock()
                .expect("lock")
                .iter()
                .filter(|(t, _)| t == topic)
                .nth(n)
                .map(|(_, p)| p.clone());
            if let Some(p) = found {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing ({n}) on {topic}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_over_mqtt_and_the_signed_report_goes_back_over_mqtt() {
    use gridgate_proto::v1 as pb;
    use prost::Message;
    let broker = gridgate_tests::Mosquitto::start().await;
    let (sims, site, mut config) = plant().await;
    config.push_str(&format!(
        "\n[uplink]\nbroker = \"mqtt://127.0.0.1:{}\"\n",
        broker.port
    ));
    let config = config.replace("[dr]\n", "[dr]\ncommand_topic = \"ops/plant/dr\"\n");
    let d = site.dir.path();
    let _gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let reply_topic = "ops/plant/dr/reply";
    let report_topic = "gridgate/plant/dr/reports/operator/m-1";
    let ops =
        MqttOperator::connect(broker.port, &[reply_topic, "gridgate/plant/dr/reports/#"]).await;

    let operator = gridgate_core::Identity::load(&d.join("operator/identity.key")).expect("key");
    let now = unix_now_ms();
    let event = pb::DrEvent {
        id: "m-1".into(),
        issuer: "operator".into(),
        program: "peak-shave".into(),
        targets: vec![pb::LoadTarget {
            load: "pcs".into(),
            action: Some(pb::load_target::Action::ShedKw(27.5)),
        }],
        start_ms: 0,
        duration_s: 3,
        expires_ms: now + 600_000,
        issued_ms: now,
        ..Default::default()
    };
    let command = |signed| pb::DrCommand {
        command: Some(pb::dr_command::Command::Event(signed)),
    };
    // A forged copy first: refused, nothing moves.
    let mut forged = gridgate_core::signed::sign_event(&event, &operator);
    forged.signature[0] ^= 1;
    // The gateway subscribes when it connects; send until the first answer comes.
    let mut first = None;
    for _ in 0..100 {
        ops.send("ops/plant/dr", command(forged.clone())).await;
        if let Ok(p) =
            tokio::time::timeout(Duration::from_millis(300), ops.nth(reply_topic, 0)).await
        {
            first = Some(p);
            break;
        }
    }
    let reply = pb::DispatchReply::decode(first.expect("an answer on the reply topic").as_slice())
        .expect("reply");
    assert!(!reply.accepted);
    assert_eq!(reply.refusal, pb::Refusal::BadSignature as i32, "{reply:?}");
    let answered = ops
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, _)| t == reply_topic)
        .count();

    ops.send(
        "ops/plant/dr",
        command(gridgate_core::signed::sign_event(&event, &operator)),
    )
    .await;
    let reply =
        pb::DispatchReply::decode(ops.nth(reply_topic, answered).await.as_slice()).expect("reply");
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.event_id, "m-1");
    until("the pcs at 50 %", || {
        setpoint(&sims.lines[0].devices[0]) == 50.0
    })
    .await;
    until("the pcs back", || {
        setpoint(&sims.lines[0].devices[0]) == 100.0
    })
    .await;

    // The report comes out retained on its own topic, signed by the gateway.
    let signed = pb::SignedPerformanceReport::decode(ops.nth(report_topic, 0).await.as_slice())
        .expect("report");
    let key = gridgate_core::identity::load_public(&d.join("identity.pub")).expect("pub");
    let report = gridgate_core::signed::verify_report(&key, &signed).expect("signature");
    assert_eq!(report.event_id, "m-1");
    assert_eq!(report.gateway_id, "plant");
    assert_eq!(report.loads.len(), 1);
    // A station that subscribes later still gets it (retained).
    let late = MqttOperator::connect(broker.port, &[report_topic]).await;
    assert_eq!(late.nth(report_topic, 0).await, signed.encode_to_vec());
}

/// Records every change of a value read every 5 ms: (ms since the start, value).
fn record_changes(
    read: impl Fn() -> f64 + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<(u128, f64)>>> {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(u128, f64)>>> = Default::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while std::sync::Arc::strong_count(&out) > 1 {
            let v = read();
            let mut s = out.lock().expect("lock");
            if s.last().is_none_or(|(_, last)| *last != v) {
                s.push((t0.elapsed().as_millis(), v));
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_events_follow_priority_and_hand_the_load_back() {
    let (sims, site, config) = plant().await;
    // Written by function 23 until the device turns out not to have it (below).
    let config = pcs_with_read_write_multiple(&config);
    let d = site.dir.path();
    let _gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let pcs = sims.lines[0].devices[0].clone();
    let seen = record_changes(move || pcs.load.lock().setpoint_pct);
    let watch = site.watch_until_reported("low");
    let operator = site.path("operator/identity.key");
    // A: priority 0, 8 s at 60 %. B, sent once A holds the load: priority 5, 3 s at 30 %.
    let a = event("low", "operator", "load = \"pcs\"\nsetpoint = 60.0")
        .replace("duration = \"15m\"", "duration = \"8s\"");
    let (code, out) = site.send("low", &operator, &a).await;
    assert_eq!(code, 0, "{out}");
    until("A's setpoint", || {
        setpoint(&sims.lines[0].devices[0]) == 60.0
    })
    .await;
    // From here the device answers function 23 with "illegal function": the gateway falls
    // back to a plain write and a read, and the sequence below is the same.
    sims.lines[0].devices[0].set_without_read_write(true);
    let b = event("high", "operator", "load = \"pcs\"\nsetpoint = 30.0")
        .replace("duration = \"15m\"", "duration = \"3s\"")
        .replace("expires = ", "priority = 5\nexpires = ");
    let (code, out) = site.send("high", &operator, &b).await;
    assert_eq!(code, 0, "{out}");
    until("B's setpoint", || {
        setpoint(&sims.lines[0].devices[0]) == 30.0
    })
    .await;
    // B ends first: the load goes back to A's target, not to the value before both; when A
    // ends it goes back to that.
    until("A's setpoint again", || {
        setpoint(&sims.lines[0].devices[0]) == 60.0
    })
    .await;
    until("the value from before", || {
        setpoint(&sims.lines[0].devices[0]) == 100.0
    })
    .await;
    // The recorder samples every 5 ms on its own thread: let it see the last change too.
    until("the recorder sees the value from before", || {
        seen.lock().expect("lock").last().map(|(_, v)| *v) == Some(100.0)
    })
    .await;
    let values: Vec<f64> = seen.lock().expect("lock").iter().map(|(_, v)| *v).collect();
    assert_eq!(values, vec![100.0, 60.0, 30.0, 60.0, 100.0]);
    let (code, out, err) = watch.await.expect("watch");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("operator/high ACTIVE") && out.contains("pcs=SUPERSEDED"),
        "{out}"
    );
    assert!(
        out.contains("operator/low COMPLETED reported pcs=RESTORED"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_off_time_holds_a_cancelled_load_and_a_local_switch_keeps_it_out() {
    let (sims, site, config) = plant().await;
    // The pump stays off at least 3 s once switched off, and a key switch on its panel
    // (discrete input 1) takes it out of DR.
    let config = config
        .replace(
            "  { name = \"switch\", table = \"coil\", address = 0 },\n",
            "  { name = \"switch\", table = \"coil\", address = 0 },\n  { name = \"inhibit\", table = \"discrete\", address = 1 },\n",
        )
        .replace(
            "control = \"plant-unit2/switch\"\n",
            "control = \"plant-unit2/switch\"\nmin_off = \"3s\"\noverride_point = \"plant-unit2/inhibit\"\n",
        );
    let d = site.dir.path();
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(site.port).await;
    let pump = sims.lines[0].devices[1].clone();
    let operator = site.path("operator/identity.key");
    let off = |id: &str| {
        event(id, "operator", "load = \"pump\"\non = false")
            .replace("duration = \"15m\"", "duration = \"30s\"")
    };
    let (code, out) = site.send("off-1", &operator, &off("off-1")).await;
    assert_eq!(code, 0, "{out}");
    until("the pump off", || !pump.load.lock().on).await;
    let switched_off = std::time::Instant::now();
    let key = site.path("operator/identity.key");
    let (code, out) = site
        .dr(
            "operator",
            &[
                "cancel",
                "--sign-key",
                &key,
                "--issuer",
                "operator",
                "--id",
                "off-1",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    until("the pump on again", || pump.load.lock().on).await;
    let held = switched_off.elapsed();
    assert!(
        held >= Duration::from_millis(2_900),
        "cancelled, but the pump must stay off 3 s; it was back after {held:?}"
    );

    // The key switch on: the next event leaves the pump alone.
    pump.set_inhibit(true);
    gw.wait_for(
        WAIT,
        "the switch read on",
        switched("plant-unit2/inhibit", true),
    )
    .await;
    let (code, out) = site.send("off-2", &operator, &off("off-2")).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = site
        .dr(
            "operator",
            &[
                "cancel",
                "--sign-key",
                &key,
                "--issuer",
                "operator",
                "--id",
                "off-2",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = site
        .dr("operator", &["watch", "--until-reported", "off-2"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pump=OVERRIDDEN"), "{out}");
    assert!(
        pump.load.lock().on,
        "the pump was never switched off under the key switch"
    );
}
