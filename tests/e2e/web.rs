//! The commissioning page and /metrics of the real binary: counters that move as readings,
//! errors and DR events happen (read by Prometheus's own OpenMetrics parser), credentials
//! that decide who may read and who may act, `gridgate status`, pagination at 1,000
//! devices, and the page itself driven in headless Chromium.

use std::time::Duration;

use gridgate_tests::dr_site::{WAIT, event, plant, reads, wait_for_port};
use gridgate_tests::web::{get_json, request, scrape, value, web_token};
use gridgate_tests::{Gateway, free_port, run_to_end};

/// The idle-connections test opens 450 client sockets, each taking an ephemeral port: a port
/// another test of this file has just picked as free could be taken before its gateway
/// binds it. That test runs alone; the others share.
static PORTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within {limit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_readings_errors_and_dr_and_parse_as_openmetrics() {
    let _ports = PORTS.read().await;
    let (sims, site, mut config) = plant().await;
    let d = site.dir.path();
    let (admin_file, admin) = web_token(d, "web-admin.token").await;
    let (read_file, read) = web_token(d, "web-read.token").await;
    let web_port = free_port();
    config.push_str(&format!(
        "\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nadmin_token_file = \"{admin_file}\"\nread_token_file = \"{read_file}\"\n"
    ));
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(web_port).await;

    // No credential, or a wrong one: refused (anonymous reads are off by default).
    let (status, body) = request(web_port, "GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = request(web_port, "GET", "/metrics", Some("not-the-token"), None).await;
    assert_eq!(status, 401);

    let first = scrape(web_port, Some(&read)).await;
    let polls = |s: &[gridgate_tests::web::Sample]| {
        value(
            s,
            "gridgate_polls_total",
            &[("device", "plant-unit1"), ("bus", "plant")],
        )
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = scrape(web_port, Some(&read)).await;
    assert!(
        polls(&second) > polls(&first),
        "polls {} then {}",
        polls(&first),
        polls(&second)
    );
    assert!(
        value(&second, "gridgate_readings_stored_total", &[])
            > value(&first, "gridgate_readings_stored_total", &[])
    );
    assert_eq!(
        value(
            &second,
            "gridgate_device_online",
            &[("device", "plant-unit2")]
        ),
        1.0
    );
    assert!(value(&second, "gridgate_store_budget_bytes", &[]) > 0.0);

    // A scan of the plant's line from the page (admin only): units 1 and 2 answer, 3 does
    // not; the bus's polls go on afterwards.
    let (status, body) = request(
        web_port,
        "POST",
        "/api/buses/plant/scan?from=1&to=3",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = request(
        web_port,
        "POST",
        "/api/buses/plant/scan?from=1&to=3",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        found["found"],
        serde_json::json!(["unit 1: answered", "unit 2: answered"]),
        "{body}"
    );
    assert!(
        found["snippet"]
            .as_str()
            .is_some_and(|s| s.contains("unit = 2")),
        "{body}"
    );
    let before = polls(&scrape(web_port, Some(&read)).await);
    until("polls again after the scan", WAIT, || async {
        polls(&scrape(web_port, Some(&read)).await) > before
    })
    .await;

    // A device stops answering: its timeouts are counted by device and kind, and it goes
    // offline.
    sims.lines[0].devices[1].set_silent(true);
    until(
        "plant-unit2 counted offline with timeouts",
        WAIT,
        || async {
            let s = scrape(web_port, Some(&read)).await;
            value(
                &s,
                "gridgate_read_errors_total",
                &[("device", "plant-unit2"), ("kind", "timeout")],
            ) > 0.0
                && value(&s, "gridgate_device_online", &[("device", "plant-unit2")]) == 0.0
        },
    )
    .await;
    let s = scrape(web_port, Some(&read)).await;
    assert_eq!(
        value(
            &s,
            "gridgate_read_errors_total",
            &[("device", "plant-unit1"), ("kind", "timeout")]
        ),
        0.0,
        "the answering device has no timeouts"
    );

    // `gridgate status` shows the same facts on one screen and exits 2 for the offline device.
    let cfg_path = d.join("gridgate.toml").display().to_string();
    let (code, out, err) = run_to_end(&["status", "--config", &cfg_path], WAIT).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("gateway plant"), "{out}");
    let offline_line = out
        .lines()
        .find(|l| l.starts_with("plant-unit2"))
        .unwrap_or_default();
    assert!(offline_line.contains("offline"), "{out}");
    assert!(out.contains("bus      plant"), "{out}");

    // DR: one event accepted, one forged refused; the load's acknowledgement is timed.
    let (code, out) = site
        .send(
            "e1",
            &site.path("operator/identity.key"),
            &event("metrics-1", "operator", "load = \"pcs\"\nsetpoint = 40.0"),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    std::fs::create_dir_all(d.join("forger")).expect("dir");
    gridgate_tests::dr_site::keygen(&d.join("forger"));
    let (code, out) = site
        .send(
            "forged",
            &site.path("forger/identity.key"),
            &event("metrics-2", "operator", "load = \"pcs\"\nsetpoint = 10.0"),
        )
        .await;
    assert_eq!(code, 1, "{out}");
    gw.wait_for(WAIT, "pcs at 40 %", reads("plant-unit1/setpoint", 40.0))
        .await;
    until("the acknowledgement counted", WAIT, || async {
        let s = scrape(web_port, Some(&read)).await;
        value(
            &s,
            "gridgate_dr_load_ack_latency_seconds_count",
            &[("load", "pcs")],
        ) == 1.0
    })
    .await;
    let s = scrape(web_port, Some(&read)).await;
    assert_eq!(
        value(
            &s,
            "gridgate_dr_dispatches_total",
            &[("outcome", "accepted")]
        ),
        1.0
    );
    let refused: f64 = s
        .iter()
        .filter(|x| x.name == "gridgate_dr_dispatches_total")
        .filter(|x| x.labels.get("outcome").and_then(|v| v.as_str()) != Some("accepted"))
        .map(|x| x.value)
        .sum();
    assert_eq!(refused, 1.0, "the forged event is counted as refused");
    assert_eq!(value(&s, "gridgate_dr_events", &[("state", "ACTIVE")]), 1.0);
    let latency = value(
        &s,
        "gridgate_dr_load_ack_latency_seconds_sum",
        &[("load", "pcs")],
    );
    assert!(latency > 0.0 && latency < 5.0, "latency {latency} s");

    // The page's write actions: refused with the read credential, done with the admin one.
    let (status, body) = request(
        web_port,
        "POST",
        "/api/devices/plant-unit1/read",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = request(
        web_port,
        "POST",
        "/api/devices/plant-unit1/read",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("plant-unit1/active_power"), "{body}");
    let s = scrape(web_port, Some(&read)).await;
    assert_eq!(
        value(
            &s,
            "gridgate_web_actions_total",
            &[("action", "test_read"), ("outcome", "done")]
        ),
        1.0
    );
    assert!(value(&s, "gridgate_web_refused_total", &[("what", "test_read")]) >= 1.0);
    assert!(value(&s, "gridgate_web_refused_total", &[("what", "metrics")]) >= 2.0);
    assert_eq!(gw.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_list_pages_through_a_thousand_devices() {
    let _ports = PORTS.read().await;
    let dir = tempfile::tempdir().expect("dir");
    let (admin_file, admin) = web_token(dir.path(), "web-admin.token").await;
    let (web_port, mqtt_port) = (free_port(), free_port());
    let mut config = format!(
        "[gateway]\nid = \"big-site\"\n\n[broker]\nlisten = \"127.0.0.1:{mqtt_port}\"\n\n[ingest]\nbroker = \"mqtt://127.0.0.1:{mqtt_port}\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nadmin_token_file = \"{admin_file}\"\n"
    );
    for i in 0..1000 {
        config.push_str(&format!(
            "\n[[ingest.device]]\nname = \"dev-{i:04}\"\ntopic = \"field/dev-{i:04}\"\npoints = [{{ name = \"power\", unit = \"kW\" }}]\n"
        ));
    }
    let gw = Gateway::start_in(dir.path(), &config).await;
    wait_for_port(web_port).await;
    let page = get_json(web_port, "/api/devices?offset=0&limit=50", Some(&admin)).await;
    assert_eq!(page["total"], 1000);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(50));
    assert_eq!(page["items"][0]["name"], "dev-0000");
    assert_eq!(page["items"][0]["state"], "waiting");
    let last = get_json(web_port, "/api/devices?offset=990&limit=50", Some(&admin)).await;
    assert_eq!(last["items"].as_array().map(Vec::len), Some(10));
    assert_eq!(last["items"][9]["name"], "dev-0999");
    let found = get_json(web_port, "/api/devices?q=dev-0420", Some(&admin)).await;
    assert_eq!(found["total"], 1);
    // However much is asked, one answer holds at most 200 devices.
    let capped = get_json(web_port, "/api/devices?limit=100000", Some(&admin)).await;
    assert_eq!(capped["items"].as_array().map(Vec::len), Some(200));
    let o = get_json(web_port, "/api/overview", Some(&admin)).await;
    assert_eq!(o["devices"]["total"], 1000);
    assert_eq!(o["access"], "admin");
    assert_eq!(gw.stop().await, Some(0));
}

/// The demo's page in headless Chromium: live values, a refused and an authenticated test
/// read; its charts; screenshots in target/test-artifacts.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_of_a_running_demo_shows_live_values_and_test_reads_need_the_credential() {
    let _ports = PORTS.read().await;
    use fantoccini::{ClientBuilder, Locator};
    use tokio::io::AsyncBufReadExt;

    assert!(
        std::path::Path::new(gridgate_tests::web::CHROMEDRIVER).exists()
            && std::path::Path::new(gridgate_tests::web::CHROMIUM).exists(),
        "the browser test needs Debian's chromium and chromium-driver (scripts/test.sh installs them)"
    );
    // The demo is killed at the end, before it can remove its files: they go in a
    // directory the test removes.
    let files = tempfile::tempdir().expect("dir");
    let mut demo = tokio::process::Command::new(gridgate_tests::gridgate_bin())
        .args([
            "demo",
            "--duration",
            "300s",
            "--dr-after",
            "20s",
            "--dr-for",
            "20s",
            "--web-port",
            "0",
            "--keep",
        ])
        .arg(files.path().join("demo"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gridgate demo");
    let mut lines = tokio::io::BufReader::new(demo.stderr.take().expect("stderr")).lines();
    let (url, token) = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.trim().strip_prefix("commissioning page: ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let token = rest
                    .rsplit(": ")
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches(')')
                    .to_string();
                return (url, token);
            }
        }
        panic!("the demo never said where its page is");
    })
    .await
    .expect("the demo starts");
    // Keep reading the demo's output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let browser = gridgate_tests::web::Browser::start().await;
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(browser.capabilities())
        .connect(&browser.url())
        .await
        .expect("a WebDriver session in headless Chromium");
    c.goto(&format!("{url}#devices"))
        .await
        .expect("open the page");

    // The simulated devices appear, and their values change (anonymous reads are allowed
    // on this machine's loopback in the demo).
    let row = "#devices tbody tr[data-device=\"plant-unit1\"] td.values";
    let first = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(row))
        .await
        .expect("plant-unit1 listed")
        .text()
        .await
        .expect("text");
    assert!(first.contains("active_power"), "{first}");
    for name in ["meter-1", "meter-2", "meter-3", "plant-unit2", "sensor-1"] {
        c.find(Locator::Css(&format!("tr[data-device=\"{name}\"]")))
            .await
            .unwrap_or_else(|e| panic!("{name} listed: {e}"));
    }
    let mut changed = first.clone();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The table is drawn anew on each refresh: a row caught between two draws is
        // looked at again on the next turn.
        let Ok(found) = c.find(Locator::Css(row)).await else {
            continue;
        };
        let Ok(text) = found.text().await else {
            continue;
        };
        changed = text;
        if changed != first {
            break;
        }
    }
    assert_ne!(
        changed, first,
        "the values of plant-unit1 never changed on the page"
    );

    // Without the credential, the page offers no test read, and the API refuses one.
    c.find(Locator::Css(
        "#devices tbody tr[data-device=\"plant-unit1\"]",
    ))
    .await
    .expect("row")
    .click()
    .await
    .expect("open the device");
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(
            "#points tbody tr[data-point=\"plant-unit1/active_power\"]",
        ))
        .await
        .expect("its points");
    let access = c
        .find(Locator::Css("#access"))
        .await
        .expect("badge")
        .text()
        .await
        .expect("text");
    assert!(access.starts_with("read-only"), "{access}");
    assert!(
        !c.find(Locator::Css("#test-read"))
            .await
            .expect("button")
            .is_displayed()
            .await
            .expect("shown?"),
        "no test read button without the credential"
    );
    let refused = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/devices/plant-unit1/read', { method: 'POST' }).then(r => done(r.status));",
            vec![],
        )
        .await
        .expect("a POST from the page");
    // Read access (anonymous, on loopback) is not enough to act: 403.
    assert_eq!(refused, serde_json::json!(403));

    // With it: log in, read now.
    c.find(Locator::Css("#login-open"))
        .await
        .expect("log in")
        .click()
        .await
        .expect("click");
    c.find(Locator::Css("#token"))
        .await
        .expect("field")
        .send_keys(&token)
        .await
        .expect("type");
    c.find(Locator::Css("#login-button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#access[data-access=\"admin\"]"))
        .await
        .expect("admin access");
    let button = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#test-read"))
        .await
        .expect("test read button");
    for _ in 0..50 {
        if button.is_displayed().await.unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    button.click().await.expect("test read");
    let result = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#test-read-result[data-done=\"1\"]"))
        .await
        .expect("the test read answered")
        .text()
        .await
        .expect("text");
    assert!(result.contains("test read of plant-unit1"), "{result}");
    assert!(result.contains("plant-unit1/active_power = "), "{result}");
    assert!(result.contains("[good]"), "{result}");

    // The device's points are charted: one vertex or bad-reading mark per sample the API
    // holds for the point's last hour. (Counts are read in one script: the page redraws
    // every 2 s, and an element found before a redraw is gone after it.)
    let point = "#point-charts figure[data-point=\"plant-unit1/active_power\"]";
    let [samples, vertices, marks, _] = chart(&c, point, WAIT).await;
    assert!(samples >= 1, "no samples charted");
    assert_eq!(vertices + marks, samples, "every sample drawn once");
    let history = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/devices/plant-unit1').then(r => r.json()).then(d =>
               done(d.points.find(p => p.name === 'plant-unit1/active_power').history.length));",
            vec![],
        )
        .await
        .expect("the device's history");
    let history = history.as_u64().expect("a count") as usize;
    assert!(
        history.abs_diff(samples) <= 1,
        "the chart has {samples} samples, the API {history}"
    );
    // plant-unit1/active_power meters the demo's load: the store keeps its samples, and
    // the day chart has one vertex per five-minute mean the API gives.
    let day = "#point-charts figure[data-point-day=\"plant-unit1/active_power\"]";
    let [means, vertices, _, _] = chart(&c, day, WAIT).await;
    assert!(means >= 1, "no five-minute means charted");
    assert_eq!(vertices, means, "one vertex per mean");
    let dir = gridgate_tests::web::artifacts_dir();
    c.execute(
        "document.querySelector('#point-charts').scrollIntoView();",
        vec![],
    )
    .await
    .expect("scroll to the charts");
    std::fs::write(
        dir.join("commissioning-page-device.png"),
        c.screenshot().await.expect("device screenshot"),
    )
    .expect("save");

    // The demo's DR event (20 s from the start, 20 s long) is reported about ten seconds
    // after its end; the DR tab charts the report: for all loads and for each, baseline
    // and actual interval by interval, each complete interval's reduction shaded.
    c.find(Locator::Css("nav a[data-tab=\"dr\"]"))
        .await
        .expect("DR tab")
        .click()
        .await
        .expect("open the DR tab");
    let total = "figure[data-load=\"all loads\"]";
    let [intervals, vertices, _, bands] = chart(&c, total, Duration::from_secs(120)).await;
    let figures = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/dr').then(r => r.json()).then(v => {
               const e = v.events.find(e => e.report);
               done([e.report.total.length, e.report.total.filter(i => i.complete).length,
                     e.report.loads.map(l => l[0])]);
             });",
            vec![],
        )
        .await
        .expect("the report's figures");
    let (all, complete) = (
        figures[0].as_u64().expect("count") as usize,
        figures[1].as_u64().expect("count") as usize,
    );
    assert!(all >= 1, "a report with intervals");
    assert_eq!(intervals, all, "one interval charted per interval reported");
    assert_eq!(
        bands, complete,
        "one shaded reduction per complete interval"
    );
    assert_eq!(
        vertices,
        2 * (all + complete),
        "a baseline step per interval, an actual one per complete interval"
    );
    let loads = figures[2].as_array().expect("loads");
    assert!(!loads.is_empty(), "the report has its loads");
    for load in loads {
        let load = load.as_str().expect("a load");
        chart(&c, &format!("figure[data-load=\"{load}\"]"), WAIT).await;
    }

    // The overview's sparklines follow the page's refreshes.
    c.find(Locator::Css("nav a[data-tab=\"overview\"]"))
        .await
        .expect("overview tab")
        .click()
        .await
        .expect("open the overview");
    let rate = "#trends figure[data-trend=\"rate\"]";
    let mut drawn = 0;
    for _ in 0..20 {
        let [samples, vertices, _, _] = chart(&c, rate, WAIT).await;
        assert_eq!(vertices, samples, "one vertex per refresh");
        drawn = vertices;
        if drawn >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(drawn >= 2, "the readings/s sparkline has {drawn} points");
    // The ledger card shows today's settlement, as the demo's terminal does, once the
    // validators have certified the report.
    let mut settled = serde_json::Value::Null;
    for _ in 0..60 {
        settled = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch('/api/overview').then(r => r.json()).then(o => done(o.ledger.today || null));",
                vec![],
            )
            .await
            .expect("the overview");
        if !settled.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(settled["events"], serde_json::json!(1), "{settled}");
    assert!(
        settled["paid"].as_f64().is_some_and(|p| p > 0.0),
        "{settled}"
    );
    let mut card = String::new();
    for _ in 0..20 {
        let text = c
            .execute(
                "const e = document.querySelector('#ov-ledger'); return e ? e.textContent : '';",
                vec![],
            )
            .await
            .expect("ledger card");
        card = text.as_str().unwrap_or_default().to_string();
        if card.contains("1 event(s)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(card.contains("settled today1 event(s)"), "{card}");
    c.find(Locator::Css("nav a[data-tab=\"dr\"]"))
        .await
        .expect("DR tab")
        .click()
        .await
        .expect("back to the DR tab for the screenshots");
    chart(&c, total, WAIT).await;

    // On a phone's screen the page needs no sideways scrolling.
    c.set_window_size(390, 844).await.expect("phone size");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .expect("widths");
    let phone = c.screenshot().await.expect("phone screenshot");
    std::fs::write(dir.join("commissioning-page-phone.png"), &phone).expect("save");
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 1),
        "the page is {overflow} px wider than a phone's screen"
    );
    c.set_window_size(1280, 900).await.expect("laptop size");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let shot = c.screenshot().await.expect("screenshot");
    let path = dir.join("commissioning-page.png");
    std::fs::write(&path, &shot).expect("save screenshot");
    eprintln!("screenshot: {}", path.display());
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    c.close().await.expect("close the session");
    drop(browser);
    let _ = demo.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_over_https_with_the_site_certificate_and_gridgate_status_through_it() {
    let _ports = PORTS.read().await;
    let (_sims, site, mut config) = plant().await;
    let d = site.dir.path();
    let (read_file, _) = web_token(d, "web-read.token").await;
    let web_port = free_port();
    config.push_str(&format!(
        "\n[web]\nlisten = \"127.0.0.1:{web_port}\"\ncert_file = \"{pki}/server.pem\"\nkey_file = \"{pki}/server.key\"\nread_token_file = \"{read_file}\"\n",
        pki = site.path("pki")
    ));
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(web_port).await;
    gw.wait_for(WAIT, "a reading", reads("plant-unit1/setpoint", 100.0))
        .await;
    // Plain HTTP to the HTTPS port gets no page.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        gridgate_tests::web::try_request(web_port, "/api/overview"),
    )
    .await
    .expect("an answer or a closed connection within 10 s");
    assert!(plain.is_err(), "plain HTTP was served: {plain:?}");
    // gridgate status finds the address, the scheme and the credential in the config and
    // checks the page's certificate against the site CA.
    let cfg_path = d.join("gridgate.toml").display().to_string();
    let ca = site.path("pki/ca.pem");
    let (code, out, err) = run_to_end(&["status", "--config", &cfg_path, "--ca", &ca], WAIT).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gateway plant"), "{out}");
    assert!(out.contains("plant-unit1"), "{out}");
    // Without the CA it says what is missing.
    let (code, out, err) = run_to_end(&["status", "--config", &cfg_path], WAIT).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("--ca"), "{err}");
    assert_eq!(gw.stop().await, Some(0));
}

/// Connections that never speak (to gRPC) or never finish their request (to the page):
/// each listener holds at most its cap, refuses the rest at once and counts them, cuts the
/// held ones off after its handshake or header deadline, and polling goes on meanwhile.
/// 1,100 such connections used to take every descriptor and stop the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_capped_and_cut_off_while_the_gateway_goes_on() {
    let _ports = PORTS.write().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_sims, site, mut config) = plant().await;
    let d = site.dir.path();
    let (admin_file, admin) = web_token(d, "web-admin.token").await;
    let web_port = free_port();
    config.push_str(&format!(
        "\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nadmin_token_file = \"{admin_file}\"\n"
    ));
    let mut gw = Gateway::start_in(d, &config).await;
    wait_for_port(web_port).await;
    wait_for_port(site.port).await;

    let started = tokio::time::Instant::now();
    let mut held = Vec::new();
    for i in 0..450 {
        let (port, half_request) = if i < 300 {
            (site.port, None)
        } else {
            (web_port, Some("GET /metrics HTTP/1.1\r\nHost: gw\r\n"))
        };
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if let Some(r) = half_request {
            let _ = s.write_all(r.as_bytes()).await;
        }
        held.push((port, s));
    }
    // Polling goes on while they are held.
    gw.wait_for(WAIT, "a reading while 450 connections are held", |v| {
        v["point"] == "plant-unit1/active_power"
    })
    .await;
    // When did the gateway close each one?
    let mut waiting = tokio::task::JoinSet::new();
    for (port, mut s) in held {
        waiting.spawn(async move {
            let mut buf = [0u8; 256];
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(25), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                    Ok(Ok(_)) => continue, // a timeout answer (408), then the close
                    Err(_) => break None,
                }
            };
            (port, closed)
        });
    }
    let closes: Vec<(u16, Option<Duration>)> = waiting.join_all().await;
    let quickly = |port: u16| {
        closes
            .iter()
            .filter(|(p, c)| *p == port && c.is_some_and(|t| t < Duration::from_secs(3)))
            .count()
    };
    assert!(
        quickly(site.port) >= 44,
        "gRPC over its cap of 256: {closes:?}"
    );
    assert!(
        quickly(web_port) >= 22,
        "the page over its cap of 128: {closes:?}"
    );
    assert!(
        closes.iter().all(|(_, c)| c.is_some()),
        "every silent connection is cut off: {:?}",
        closes.iter().filter(|(_, c)| c.is_none()).count()
    );
    // And the gateway serves again, and says what it refused.
    let samples = scrape(web_port, Some(&admin)).await;
    let of = |name: &str, listener: &str| value(&samples, name, &[("listener", listener)]);
    assert!(of("gridgate_connections_refused_total", "grpc") >= 44.0);
    assert!(of("gridgate_connections_refused_total", "web") >= 22.0);
    assert!(of("gridgate_connections_open", "grpc") <= 1.0);
}

/// A chart's figures as the page drew them, once `figure` is on the page: what it stands
/// for (samples or intervals), then its svg's vertices, bad-reading marks and shaded bands.
async fn chart(c: &fantoccini::Client, figure: &str, within: Duration) -> [usize; 4] {
    let script = "const f = document.querySelector(arguments[0]);
        if (!f) return null;
        const s = f.querySelector('svg');
        return [f.dataset.samples || f.dataset.intervals, s.dataset.vertices,
                s.dataset.marks, s.dataset.bands].map(Number);";
    let start = tokio::time::Instant::now();
    loop {
        let got = c
            .execute(script, vec![serde_json::json!(figure)])
            .await
            .expect("read the chart");
        if let Some(a) = got.as_array() {
            let n = |i: usize| a[i].as_u64().expect("a count") as usize;
            return [n(0), n(1), n(2), n(3)];
        }
        assert!(
            start.elapsed() < within,
            "no chart {figure} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
