//! The real `gridgate run` against simulated meters and devices: DL/T 645 and Modbus, over
//! TCP and over pseudo-terminals, with meters that fall silent, corrupt replies and
//! exception replies.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gridgate_tests::{Gateway, has_quality, is_point, sims};

const WAIT: Duration = Duration::from_secs(20);

fn number(v: &serde_json::Value) -> f64 {
    v["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("no number in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlt645_meters_over_tcp_and_over_a_pty() {
    let s = sims(
        r#"
[[line]]
name = "converter"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000011", rated_kw = 4.0, energy_kwh = 12345.67 }]

[[line]]
name = "rs485"
protocol = "dlt645"
pty = "auto"
meters = [
  { address = "000000000021", rated_kw = 2.0, energy_kwh = 500.0 },
  { address = "000000000022", rated_kw = 9.0, energy_kwh = 70000.5 },
]
"#,
    )
    .await;
    assert!(s.lines[0].link.starts_with("tcp://"));
    assert!(s.lines[1].link.starts_with("serial:///"));
    let mut gw = Gateway::start(&s.gateway_config("t1", "300ms")).await;
    for (meter, energy, kw) in [
        ("meter-11", 12345.67, 4.0),
        ("meter-21", 500.0, 2.0),
        ("meter-22", 70000.5, 9.0),
    ] {
        let e = gw
            .wait_for(WAIT, &format!("{meter} energy is good"), |v| {
                is_point(v, &format!("{meter}/energy_import")) && has_quality(v, "good")
            })
            .await;
        assert_eq!(e["unit"], "kWh");
        let got = number(&e);
        assert!(
            (energy..energy + 0.5).contains(&got),
            "{meter}: energy {got}, meter started at {energy}"
        );
        let p = gw
            .wait_for(WAIT, &format!("{meter} power is good"), |v| {
                is_point(v, &format!("{meter}/active_power")) && has_quality(v, "good")
            })
            .await;
        let got = number(&p);
        assert!(
            (kw * 0.9..kw * 1.1).contains(&got),
            "{meter}: power {got}, rated {kw}"
        );
    }
    assert_eq!(gw.stop().await, Some(0), "SIGTERM stops the daemon cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_over_tcp_rtu_on_a_pty_and_rtu_over_tcp() {
    let s = sims(
        r#"
[[line]]
name = "tcp"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 50.0 }]

[[line]]
name = "rtu"
protocol = "modbus-rtu"
pty = "auto"
devices = [{ unit = 5, rated_kw = 20.0 }, { unit = 6, rated_kw = 30.0 }]

[[line]]
name = "rtutcp"
protocol = "modbus-rtu-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 9, rated_kw = 11.0 }]
"#,
    )
    .await;
    let mut gw = Gateway::start(&s.gateway_config("t2", "300ms")).await;
    for (dev, kw) in [
        ("tcp-unit1", 50.0),
        ("rtu-unit5", 20.0),
        ("rtu-unit6", 30.0),
        ("rtutcp-unit9", 11.0),
    ] {
        let p = gw
            .wait_for(WAIT, &format!("{dev} power is good"), |v| {
                is_point(v, &format!("{dev}/active_power")) && has_quality(v, "good")
            })
            .await;
        let got = number(&p);
        assert!(
            (kw * 0.9..kw * 1.1).contains(&got),
            "{dev}: power {got}, rated {kw}"
        );
        let r = gw
            .wait_for(WAIT, &format!("{dev} running bit"), |v| {
                is_point(v, &format!("{dev}/running"))
            })
            .await;
        assert_eq!(r["value"], true);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_meter_goes_offline_and_comes_back() {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
pty = "auto"
meters = [
  { address = "000000000001", rated_kw = 3.0 },
  { address = "000000000002", rated_kw = 5.0 },
]
"#,
    )
    .await;
    let link = &s.lines[0].link;
    let config = format!(
        r#"
[gateway]
id = "t3"

[[bus]]
name = "rs485"
link = "{link}"
timeout = "150ms"
retries = 0
offline_after = 2

[[device]]
name = "m1"
bus = "rs485"
protocol = "dlt645"
address = "000000000001"
poll = "300ms"
points = [{{ name = "p", di = "02030000" }}, {{ name = "e", di = "00010000" }}]

[[device]]
name = "m2"
bus = "rs485"
protocol = "dlt645"
address = "000000000002"
poll = "300ms"
points = [{{ name = "p", di = "02030000" }}]
"#
    );
    let mut gw = Gateway::start(&config).await;
    gw.wait_for(WAIT, "m1/p good", |v| {
        is_point(v, "m1/p") && has_quality(v, "good")
    })
    .await;
    let m1 = s.lines[0].meters[0].clone();
    m1.set_silent(true);
    gw.wait_for(WAIT, "m1/p timeout", |v| {
        is_point(v, "m1/p") && has_quality(v, "timeout")
    })
    .await;
    // After two silent polls only the first point is probed; the rest are marked offline.
    gw.wait_for(WAIT, "m1/e offline", |v| {
        is_point(v, "m1/e") && has_quality(v, "offline")
    })
    .await;
    // The other meter on the same line keeps answering meanwhile.
    gw.wait_for(WAIT, "m2/p good while m1 is silent", |v| {
        is_point(v, "m2/p") && has_quality(v, "good")
    })
    .await;
    m1.set_silent(false);
    gw.wait_for(WAIT, "m1/e good again", |v| {
        is_point(v, "m1/e") && has_quality(v, "good")
    })
    .await;
    // No point was ever skipped silently: every m1 poll produced both readings.
    let m1_p = gw.seen().iter().filter(|v| is_point(v, "m1/p")).count();
    let m1_e = gw.seen().iter().filter(|v| is_point(v, "m1/e")).count();
    assert!(
        m1_p.abs_diff(m1_e) <= 1,
        "m1/p {m1_p} readings, m1/e {m1_e}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_replies_and_exception_replies_become_qualities() {
    let s = sims(
        r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000001", rated_kw = 3.0 }]

[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [{ unit = 1, rated_kw = 10.0 }]
"#,
    )
    .await;
    let (dlt, mb) = (&s.lines[0].link, &s.lines[1].link);
    let config = format!(
        r#"
[gateway]
id = "t4"

[[bus]]
name = "rs485"
link = "{dlt}"
timeout = "300ms"
retries = 0

[[bus]]
name = "plant"
link = "{mb}"
timeout = "300ms"

[[device]]
name = "m1"
bus = "rs485"
protocol = "dlt645"
address = "000000000001"
poll = "200ms"
points = [{{ name = "p", di = "02030000" }}, {{ name = "nosuch", di = "0EEE0000" }}]

[[device]]
name = "pcs"
bus = "plant"
protocol = "modbus"
unit = 1
poll = "200ms"
points = [
  {{ name = "power", address = 0, type = "f32" }},
  {{ name = "unmapped", address = 100, type = "u16" }},
  {{ name = "gap_neighbour", address = 6, type = "i16", scale = 0.1 }},
  {{ name = "hole", address = 8, type = "u16" }},
]
"#
    );
    let mut gw = Gateway::start(&config).await;
    gw.wait_for(WAIT, "m1/p good", |v| {
        is_point(v, "m1/p") && has_quality(v, "good")
    })
    .await;
    let meter_err = gw
        .wait_for(WAIT, "unknown DI refused by the meter", |v| {
            is_point(v, "m1/nosuch")
        })
        .await;
    assert_eq!(meter_err["quality"], "meter_error:02", "{meter_err}");
    s.lines[0]
        .dlt645
        .as_ref()
        .expect("dlt645 line")
        .faults
        .corrupt_replies
        .store(1, Ordering::SeqCst);
    let crc = gw
        .wait_for(WAIT, "a corrupt reply", |v| {
            v["point"].as_str().is_some_and(|p| p.starts_with("m1/"))
                && !has_quality(v, "good")
                && !is_point(v, "m1/nosuch")
        })
        .await;
    assert_eq!(crc["quality"], "crc", "{crc}");
    assert!(
        crc["error"].as_str().unwrap_or("").contains("checksum"),
        "{crc}"
    );
    gw.wait_for(WAIT, "m1/p good after the corruption", |v| {
        is_point(v, "m1/p") && has_quality(v, "good")
    })
    .await;

    let exc = gw
        .wait_for(WAIT, "pcs/unmapped", |v| is_point(v, "pcs/unmapped"))
        .await;
    assert_eq!(exc["quality"], "exception:02", "{exc}");
    // Register 8 is a hole: the merged read 0..9 is refused, and the gateway falls back to
    // single reads so that its neighbours are still good.
    let hole = gw
        .wait_for(WAIT, "pcs/hole", |v| is_point(v, "pcs/hole"))
        .await;
    assert_eq!(hole["quality"], "exception:02", "{hole}");
    let n = gw
        .wait_for(WAIT, "pcs/gap_neighbour good", |v| {
            is_point(v, "pcs/gap_neighbour")
        })
        .await;
    assert_eq!(n["quality"], "good", "{n}");
    assert!((number(&n) - 31.5).abs() < 1e-9, "{n}");
    let p = gw
        .wait_for(WAIT, "pcs/power", |v| is_point(v, "pcs/power"))
        .await;
    assert_eq!(p["quality"], "good", "{p}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_line_is_reported_and_reopened() {
    // A TCP converter that is not there yet: readings say link_down, then good once it is.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let config = format!(
        r#"
[gateway]
id = "t5"

[[bus]]
name = "conv"
link = "tcp://127.0.0.1:{port}"
timeout = "200ms"
reconnect_max = "1s"

[[device]]
name = "m1"
bus = "conv"
protocol = "dlt645"
address = "000000000001"
poll = "200ms"
points = [{{ name = "p", di = "02030000" }}]
"#
    );
    let mut gw = Gateway::start(&config).await;
    gw.wait_for(WAIT, "link_down", |v| {
        is_point(v, "m1/p") && has_quality(v, "link_down")
    })
    .await;
    let _s = sims(&format!(
        r#"
[[line]]
name = "conv"
protocol = "dlt645"
listen = "127.0.0.1:{port}"
meters = [{{ address = "000000000001", rated_kw = 3.0 }}]
"#
    ))
    .await;
    gw.wait_for(WAIT, "good after the converter appears", |v| {
        is_point(v, "m1/p") && has_quality(v, "good")
    })
    .await;
    gw.stop().await;
}
