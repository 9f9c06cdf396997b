//! OpenADR 3: the gateway as a VEN of the real LF Energy VTN (`openleadr-vtn` on
//! PostgreSQL 18, its internal OAuth provider), driven by a business-logic client as a
//! utility's back office would drive it. The gateway registers, takes an event's interval
//! as its own DR event and moves a simulated Modbus load at its start and back at its end,
//! and posts its measured performance, which the back office reads from the VTN; a restart
//! acts on nothing twice; a modification moves the load again, a withdrawal restores it; an
//! event beyond the load's limits and one with absurd values move nothing and come back as
//! opt-outs, one beyond them in one interval of two is followed in the other and opted out of
//! in that one; the telemetry a program asks for is measured and posted as its intervals end;
//! and with the VTN
//! down for a while, the report made meanwhile arrives once it is back, once. The gateway is a
//! consortium member: its validators certify each version of each VTN event as received.

use std::path::Path;
use std::time::Duration;

use gridgate_tests::dr_site::{WAIT, keygen, plant, reads};
use gridgate_tests::vtn::Vtn;
use gridgate_tests::{Gateway, run_to_end};
use openleadr_client::{BusinessLogic, EventClient, Filter, ProgramClient};
use openleadr_wire::event::EventRequest;
use serde_json::json;

use crate::ledger::Validators;

fn at(offset: Duration) -> String {
    (chrono::Utc::now() + offset).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An event of `program` from `start` lasting `duration` (ISO 8601), with one interval
/// carrying `payloads`.
fn event(
    program: &ProgramClient<BusinessLogic>,
    name: &str,
    start: Duration,
    duration: &str,
    payloads: serde_json::Value,
) -> EventRequest {
    serde_json::from_value(json!({
        "objectType": "EVENT",
        "programID": program.id(),
        "eventName": name,
        "intervalPeriod": {"start": at(start), "duration": duration},
        "intervals": [{"id": 0, "payloads": payloads}],
    }))
    .expect("event")
}

/// The reports the VTN holds for `event`, once there are at least `n` (names).
async fn reports(
    event: &EventClient<BusinessLogic>,
    n: usize,
) -> Vec<openleadr_wire::report::ReportRequest> {
    for _ in 0..240 {
        let got = event.get_report_list(None).await.expect("reports");
        if got.len() >= n {
            return got.iter().map(|r| r.content().clone()).collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the VTN holds fewer than {n} report(s) for {}", event.id());
}

/// Prints the gateway's log when the test fails: what the VEN did is there.
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- the gateway's log:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utility_vtn_dispatches_the_gateway_and_reads_its_reports() {
    let mut vtn = Vtn::start().await;
    let (_sims, site, config) = plant().await;
    // Four of the events below move pcs: more than the default two a day.
    let config = config.replace(
        "max_setpoint = 100.0\n",
        "max_setpoint = 100.0\nmax_events_per_day = 10\n",
    );
    let d = site.dir.path();
    keygen(d);
    // The gateway is a member of a consortium: three of its four validators run, a quorum.
    let validators = Validators::new(4);
    let gateways = [("plant", d)];
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(validators.start(i, &gateways).await);
    }
    let web = gridgate_tests::free_port();
    let config = format!(
        "{config}\n[web]\nlisten = \"127.0.0.1:{web}\"\nanonymous_read = true\n{}\n[[openadr.load]]\nname = \"pcs\"\nsimple_shed_kw = [0.0, 5.5, 11.0, 16.5]\nimport_limit = true\n{}",
        vtn.openadr_section(d, &["peak-shave"]),
        validators.ledger_section("gateway", &gateways, gateways[0])
    );
    let bl = vtn.business();
    let program = bl
        .create_program(openleadr_wire::program::ProgramRequest::new("peak-shave"))
        .await
        .expect("program");
    let mut gw = Gateway::start_logged(d, &config).await;
    let _log = LogOnFailure(d.join("gridgate.log"));

    // 1. SIMPLE level 2 for 6 s: pcs sheds 11 kW of 55 (setpoint 80 %), then back.
    let e1 = program
        .create_event(event(
            &program,
            "level-2",
            Duration::from_secs(3),
            "PT6S",
            json!([{"type": "SIMPLE", "values": [2]}]),
        ))
        .await
        .expect("event");
    gw.wait_for(
        WAIT,
        "pcs at 80 % (SIMPLE 2)",
        reads("plant-unit1/setpoint", 80.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "pcs back at 100 %",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    let got = reports(&e1, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = serde_json::to_value(&got[0]).expect("json");
    assert_eq!(
        r["reportName"],
        format!("gridgate-performance/{}/0/0", e1.id())
    );
    assert_eq!(r["clientName"], gridgate_tests::vtn::VEN_NAME);
    assert_eq!(r["resources"][0]["resourceName"], "pcs");
    let first = &r["resources"][0]["intervals"][0]["payloads"];
    let types: Vec<&str> = first
        .as_array()
        .expect("payloads")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["USAGE", "DEMAND", "BASELINE"], "{r}");
    // Shed: what the meter saw is below the baseline.
    let demand = first[1]["values"][0].as_f64().expect("demand");
    let baseline = first[2]["values"][0].as_f64().expect("baseline");
    assert!(demand < baseline, "{r}");

    // A restart acts on nothing twice: the VEN knows the event, the desk its intervals.
    gw.stop().await;
    let mut gw = Gateway::start_logged(d, &config).await;

    // 2. Modified on the VTN while it runs: level 1 (90 %), then level 3 (70 %).
    let mut e2 = program
        .create_event(event(
            &program,
            "modified",
            Duration::from_secs(1),
            "PT60S",
            json!([{"type": "SIMPLE", "values": [1]}]),
        ))
        .await
        .expect("event");
    gw.wait_for(
        WAIT,
        "pcs at 90 % (SIMPLE 1)",
        reads("plant-unit1/setpoint", 90.0),
    )
    .await;
    e2.content_mut().intervals =
        serde_json::from_value(json!([{"id": 0, "payloads": [{"type": "SIMPLE", "values": [3]}]}]))
            .expect("intervals");
    e2.update().await.expect("modify");
    gw.wait_for(
        WAIT,
        "pcs at 70 % (modified to SIMPLE 3)",
        reads("plant-unit1/setpoint", 70.0),
    )
    .await;

    // 3. Withdrawn: the load is restored at once.
    let e2_id = e2.id().to_string();
    e2.delete().await.expect("delete");
    gw.wait_for(
        WAIT,
        "pcs back at 100 % (event withdrawn)",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;

    // 4. Beyond the load's limits: an import limit of 5 kW is a setpoint under pcs's
    // min_setpoint (20). Nothing moves; the VTN gets an opt-out.
    let e4 = program
        .create_event(event(
            &program,
            "too-low",
            Duration::from_secs(1),
            "PT30S",
            json!([{"type": "IMPORT_CAPACITY_LIMIT", "values": [5.0]}]),
        ))
        .await
        .expect("event");
    let got = reports(&e4, 1).await;
    let r = serde_json::to_value(&got[0]).expect("json");
    assert_eq!(r["reportName"], format!("gridgate-opt-out/{}/0", e4.id()));
    let why = r["resources"][0]["intervals"][0]["payloads"][0]["values"][0]
        .as_str()
        .expect("reason")
        .to_string();
    assert!(why.contains("pcs"), "{why}");

    // 4b. In part: SIMPLE 1 for 3 s, then an import limit under min_setpoint for 3 s. The
    // first interval moves the load; the VTN gets an opt-out naming the second.
    let e4b = program
        .create_event(
            serde_json::from_value(json!({
                "objectType": "EVENT",
                "programID": program.id(),
                "eventName": "in-part",
                "intervalPeriod": {"start": at(Duration::from_secs(1)), "duration": "PT3S"},
                "intervals": [
                    {"id": 0, "payloads": [{"type": "SIMPLE", "values": [1]}]},
                    {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [5.0]}]},
                ],
            }))
            .expect("event"),
        )
        .await
        .expect("event");
    let got = reports(&e4b, 1).await;
    let r = serde_json::to_value(&got[0]).expect("json");
    assert_eq!(r["reportName"], format!("gridgate-opt-out/{}/0", e4b.id()));
    let opted: Vec<i64> = r["resources"][0]["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .filter_map(|i| i["id"].as_i64())
        .collect();
    assert_eq!(opted, [1], "{r}");
    gw.wait_for(
        WAIT,
        "pcs at 90 % (the interval taken)",
        reads("plant-unit1/setpoint", 90.0),
    )
    .await;
    gw.wait_for(
        WAIT,
        "pcs back at 100 % (the refused interval moves nothing)",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    let got = reports(&e4b, 2).await;
    assert!(
        got.iter()
            .any(|r| r.report_name.as_deref()
                == Some(&format!("gridgate-performance/{}/0/0", e4b.id()))),
        "{got:?}"
    );

    // 4c. Telemetry the program asks for: two 2 s intervals that move nothing (SIMPLE 0),
    // DEMAND per interval for pcs as each ends, and USAGE of both summed at the end.
    let e4c = program
        .create_event(
            serde_json::from_value(json!({
                "objectType": "EVENT",
                "programID": program.id(),
                "eventName": "telemetry",
                "intervalPeriod": {"start": at(Duration::from_secs(1)), "duration": "PT2S"},
                "reportDescriptors": [
                    {"payloadType": "DEMAND", "startInterval": 0, "numIntervals": 1,
                     "frequency": 1, "repeat": -1},
                    {"payloadType": "USAGE", "aggregate": true},
                    {"payloadType": "USAGE_FORECAST", "historical": false},
                ],
                "intervals": [
                    {"id": 0, "payloads": [{"type": "SIMPLE", "values": [0]}]},
                    {"id": 1, "payloads": [{"type": "SIMPLE", "values": [0]}]},
                ],
            }))
            .expect("event"),
        )
        .await
        .expect("event");
    let mut got: Vec<serde_json::Value> = reports(&e4c, 3)
        .await
        .iter()
        .map(|r| serde_json::to_value(r).expect("json"))
        .collect();
    got.sort_by_key(|r| r["reportName"].as_str().unwrap_or_default().to_string());
    let names: Vec<&str> = got
        .iter()
        .filter_map(|r| r["reportName"].as_str())
        .collect();
    let name = |d: u32, n: u32| format!("gridgate-telemetry/{}/0/{d}/{n}", e4c.id());
    assert_eq!(names, [name(0, 0), name(0, 1), name(1, 0)], "{got:?}");
    for (r, interval) in got[..2].iter().zip([0, 1]) {
        let iv = &r["resources"][0]["intervals"][0];
        assert_eq!(r["resources"][0]["resourceName"], "pcs", "{r}");
        assert_eq!(iv["id"], interval, "{r}");
        assert_eq!(iv["payloads"][0]["type"], "DEMAND", "{r}");
        // pcs draws its rated 55 kW at 100 %: DEMAND is a mean in kW, not W or a count.
        let kw = iv["payloads"][0]["values"][0].as_f64().expect("kW");
        assert!((20.0..=80.0).contains(&kw), "{r}");
    }
    let usage = &got[2]["resources"][0];
    assert_eq!(usage["resourceName"], "AGGREGATED_REPORT", "{usage}");
    assert_eq!(
        usage["intervals"].as_array().map(Vec::len),
        Some(2),
        "{usage}"
    );
    // About 55 kW for 2 s: 0.03 kWh an interval.
    let kwh = usage["intervals"][1]["payloads"][0]["values"][0]
        .as_f64()
        .expect("kWh");
    assert!((0.01..=0.05).contains(&kwh), "{usage}");

    // 5. Bad input: a SIMPLE level of 9 and a payload type nobody maps.
    let e5 = program
        .create_event(event(
            &program,
            "absurd",
            Duration::from_secs(1),
            "PT30S",
            json!([{"type": "SIMPLE", "values": [9]}, {"type": "X-VENDOR-MODE", "values": ["eco"]}]),
        ))
        .await
        .expect("event");
    let got = reports(&e5, 1).await;
    let r = serde_json::to_value(&got[0]).expect("json");
    let why = r["resources"][0]["intervals"][0]["payloads"][0]["values"][0].to_string();
    assert!(why.contains("SIMPLE level 9"), "{why}");
    // Neither moved the load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = gw
        .seen()
        .iter()
        .rev()
        .find(|v| v["point"] == "plant-unit1/setpoint")
        .cloned()
        .expect("a setpoint reading");
    assert_eq!(last["value"].as_f64(), Some(100.0), "{last}");

    // 6. The VTN goes away while an event runs: the gateway acts on what it has, and the
    // report made meanwhile is posted once the VTN is back, once.
    let e6 = program
        .create_event(event(
            &program,
            "offline",
            Duration::from_secs(2),
            "PT4S",
            json!([{"type": "SIMPLE", "values": [2]}]),
        ))
        .await
        .expect("event");
    gw.wait_for(
        WAIT,
        "pcs at 80 % again",
        reads("plant-unit1/setpoint", 80.0),
    )
    .await;
    vtn.stop();
    gw.wait_for(
        WAIT,
        "pcs back at 100 % with the VTN down",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    // The relay measures and signs its report about 2 s after the end; the VEN cannot post.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, out, err) = run_to_end(
        &[
            "openadr",
            "status",
            "--config",
            &d.join("gridgate.toml").display().to_string(),
        ],
        WAIT,
    )
    .await;
    // Exit 1: the VTN does not answer, and the status says so.
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("last error VTN:"), "{out}");
    assert!(out.contains("1 report(s) waiting"), "{out}");
    assert!(out.contains("absurd_value"), "{out}");
    vtn.start_vtn().await;
    let got = reports(&e6, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = reports(&e6, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(again.len(), 1, "posted twice: {again:?}");
    let _ = bl.get_program_list(Filter::none()).await.expect("VTN back");
    assert_eq!(reports(&e1, 1).await.len(), 1, "e1 reported twice");
    // The counters a monitoring system watches.
    let m = gridgate_tests::web::scrape(web, None).await;
    let v = |name: &str, labels: &[(&str, &str)]| gridgate_tests::web::value(&m, name, labels);
    assert_eq!(
        v(
            "gridgate_openadr_refused_total",
            &[("kind", "absurd_value")]
        ),
        1.0
    );
    assert_eq!(
        v("gridgate_openadr_refused_total", &[("kind", "limit")]),
        2.0
    );
    assert_eq!(
        v(
            "gridgate_openadr_unmapped_payloads_total",
            &[("type", "X-VENDOR-MODE")]
        ),
        0.0,
        "an event refused whole counts its refusal, not its payloads"
    );
    assert_eq!(
        v(
            "gridgate_openadr_unmapped_payloads_total",
            &[("type", "report USAGE_FORECAST forecast")]
        ),
        1.0,
        "a forecast is not measured"
    );
    // Level 2, the three opt-outs, the one taken in part and the offline one; the withdrawn
    // event's reports have no event left on the VTN to go to (dropped, with a warning).
    let posted = v("gridgate_openadr_reports_posted_total", &[]);
    assert!(posted >= 9.0, "{posted}");
    assert_eq!(v("gridgate_openadr_reports_waiting", &[]), 0.0);

    // The ledger holds each version of each VTN event as received, certified by the
    // validators, beside what the gateway made of it, and its performance claims.
    let log = logged_until(&d.join("gridgate.toml"), |log| {
        log.contains(&format!("OpenADR event {} version 0", e6.id()))
            && log.contains(&format!(
                "performance report of plant for openadr:utility/{}/0/0",
                e6.id()
            ))
    })
    .await;
    let line = |what: String| {
        log.lines()
            .find(|l| l.contains(&what))
            .unwrap_or_else(|| panic!("no {what:?} in\n{log}"))
            .to_string()
    };
    let e1_line = line(format!("OpenADR event {} version 0", e1.id()));
    assert!(
        e1_line.contains(&format!("DR events [{}/0/0]", e1.id())),
        "{e1_line}"
    );
    let e2_line = line(format!("OpenADR event {e2_id} version 1"));
    assert!(
        e2_line.contains(&format!("DR events [{e2_id}/1/0]")),
        "{e2_line}"
    );
    for refused in [e4.id(), e5.id()] {
        let l = line(format!("OpenADR event {refused} version 0"));
        assert!(l.contains(": refused, "), "{l}");
    }
    line(format!(
        "performance report of plant for openadr:utility/{}/0/0",
        e1.id()
    ));
    gw.stop().await;
    drop(running);
}

/// `gridgate ledger log` of the gateway's own log, once `done` holds for it (a minute).
async fn logged_until(config: &Path, done: impl Fn(&str) -> bool) -> String {
    let config = config.display().to_string();
    let args = ["ledger", "log", "--config", &config, "--origin", "plant"];
    let mut last = String::new();
    for _ in 0..120 {
        let (code, out, err) = run_to_end(&args, WAIT).await;
        if code == 0 && done(&out) {
            return out;
        }
        last = format!("(exit {code}) {out}{err}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the ledger never held the VTN's events: {last}");
}

/// `gridgate openadr status` with the gateway's config, once `done` holds for its output
/// (30 s).
async fn openadr_status_until(config: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let config = config.display().to_string();
    let mut last = String::new();
    for _ in 0..120 {
        let (_, out, err) = run_to_end(&["openadr", "status", "--config", &config], WAIT).await;
        if done(&out) {
            return out;
        }
        last = format!("{out}{err}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("never saw {what}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vtn_notifier_brings_events_in_as_they_are_published() {
    // The VTN's notifier publishes to a real Mosquitto; the gateway polls only every 10
    // minutes, so a change it acts on within seconds reached it as a notification.
    let broker = gridgate_tests::Mosquitto::start().await;
    let vtn = Vtn::start_notifying(Some(broker.port)).await;
    let (_sims, site, config) = plant().await;
    let d = site.dir.path();
    let web = gridgate_tests::free_port();
    let config = format!(
        "{config}\n[web]\nlisten = \"127.0.0.1:{web}\"\nanonymous_read = true\n{}\n[[openadr.load]]\nname = \"pcs\"\nsimple_shed_kw = [0.0, 5.5, 11.0, 16.5]\n",
        vtn.openadr_section(d, &["peak-shave"])
            .replace("poll = \"500ms\"", "poll = \"10m\"")
    );
    let program = vtn
        .business()
        .create_program(openleadr_wire::program::ProgramRequest::new("peak-shave"))
        .await
        .expect("program");
    let mut gw = Gateway::start_logged(d, &config).await;
    let _log = LogOnFailure(d.join("gridgate.log"));
    let gw_config = d.join("gridgate.toml");
    let out = openadr_status_until(&gw_config, "the VEN subscribed", |o| {
        o.contains("notified   subscribed via mqtt://127.0.0.1:")
    })
    .await;
    assert!(out.contains("events/+"), "{out}");

    // The utility puts the site on a feeder: the VEN's own object changes, and the VEN
    // knows its new target without a poll.
    let bl = vtn.business();
    let mut ven = bl
        .get_ven_by_name(gridgate_tests::vtn::VEN_NAME)
        .await
        .expect("the VEN registered");
    ven.content_mut().targets = vec![serde_json::from_value(json!("feeder-7")).expect("target")];
    ven.update().await.expect("targets");
    openadr_status_until(&gw_config, "the VEN's target", |o| {
        o.contains(", targets feeder-7")
    })
    .await;

    // An event for that feeder: the VEN takes it as its own, as it is published.
    let created = std::time::Instant::now();
    let mut request = event(
        &program,
        "notified",
        Duration::from_secs(1),
        "PT30S",
        json!([{"type": "SIMPLE", "values": [2]}]),
    );
    request.targets = vec![serde_json::from_value(json!("feeder-7")).expect("target")];
    let e = program.create_event(request).await.expect("event");
    gw.wait_for(
        WAIT,
        "pcs at 80 % (SIMPLE 2)",
        reads("plant-unit1/setpoint", 80.0),
    )
    .await;
    let moved = created.elapsed();
    assert!(moved < Duration::from_secs(10), "moved after {moved:?}");

    // A withdrawal arrives the same way: the load is back long before a poll.
    let withdrawn = std::time::Instant::now();
    e.delete().await.expect("delete");
    gw.wait_for(
        WAIT,
        "pcs back at 100 % (withdrawn)",
        reads("plant-unit1/setpoint", 100.0),
    )
    .await;
    let back = withdrawn.elapsed();
    assert!(back < Duration::from_secs(5), "restored after {back:?}");
    let out = openadr_status_until(&gw_config, "notifications counted", |o| {
        o.contains("notification(s)")
    })
    .await;
    assert!(out.contains("withdrawn"), "{out}");
    gw.stop().await;
}
