//! SIGHUP re-reads the config while the gateway runs: a good config is applied without a gap
//! in the readings of what it did not change and without losing any reading; a bad one, or
//! one that only a restart can apply, is refused and logged, and the old config keeps running.

use std::path::Path;
use std::time::Duration;

use gridgate_tests::{Gateway, ONE_METER_SITE, is_point, sims, verify_chain, with_site};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const POLL_MS: i64 = 100;

/// Waits until the daemon's log holds `needle`.
async fn wait_for_log(dir: &Path, needle: &str) -> String {
    for _ in 0..300 {
        let log = std::fs::read_to_string(dir.join("gridgate.log")).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("gridgate.log")).unwrap_or_default();
    panic!("the log never said {needle:?}:\n{log}");
}

/// Rewrites the config file in place, as an engineer editing /etc/gridgate/gridgate.toml.
fn rewrite(dir: &Path, config: &str) {
    std::fs::write(dir.join("gridgate.toml"), with_site(dir, config)).expect("write config");
}

fn timestamps(seen: &[Value], point: &str) -> Vec<i64> {
    seen.iter()
        .filter(|v| is_point(v, point))
        .filter_map(|v| v["ts_ms"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_without_a_gap_and_refuses_a_bad_one() {
    let first = sims(ONE_METER_SITE).await;
    let second = sims(
        r#"
[[line]]
name = "rs485-b"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000002" }]
"#,
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let before = first.gateway_config("reload", &format!("{POLL_MS}ms"));
    // The second line and its meter, added by the reload.
    let added = second
        .gateway_config("reload", &format!("{POLL_MS}ms"))
        .replacen("[gateway]\nid = \"reload\"\n", "", 1);
    let after = format!("{before}\n{added}");

    let mut gw = Gateway::start_logged(d, &before).await;
    for _ in 0..20 {
        gw.next(WAIT).await.expect("readings before the reload");
    }

    // A good config: the new meter comes in, the old one never stops.
    rewrite(d, &after);
    gw.signal("HUP");
    gw.wait_for(WAIT, "the added meter is polled", |v| {
        is_point(v, "meter-2/active_power")
    })
    .await;
    wait_for_log(d, "config reloaded").await;

    // A bad config (a typo in a key): refused, logged, and both meters keep coming.
    rewrite(d, &after.replace("poll = ", "pol = "));
    gw.signal("HUP");
    let log = wait_for_log(d, "reload refused").await;
    assert!(log.contains("pol"), "the error names the bad key:\n{log}");
    for point in ["meter-1/active_power", "meter-2/active_power"] {
        let n = timestamps(gw.seen(), point).len();
        gw.wait_for(WAIT, point, |v| is_point(v, point)).await;
        assert!(timestamps(gw.seen(), point).len() > n);
    }

    // A change only a restart applies: refused whole, with the reason.
    rewrite(d, &after.replacen("id = \"reload\"", "id = \"renamed\"", 1));
    gw.signal("HUP");
    let log = wait_for_log(d, "only a restart applies").await;
    assert!(log.contains("[gateway] id"), "{log}");
    while timestamps(gw.seen(), "meter-1/active_power").len() < 25 {
        gw.next(WAIT)
            .await
            .expect("readings after the refused reloads");
    }

    // No gap: the meter the reloads did not touch was polled on its grid throughout.
    let seen = timestamps(gw.seen(), "meter-1/active_power");
    let widest = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(
        widest < 5 * POLL_MS,
        "meter-1 went {widest} ms without a reading across the reloads (polled every {POLL_MS} ms)"
    );

    assert_eq!(gw.stop().await, Some(0));
    // Nothing lost and the chain intact: every reading echoed is in a verified batch.
    let (code, out, err) = verify_chain(&d.join("data"), &d.join("identity.pub"), WAIT).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chain OK"), "{out}");
}
