//! Under systemd (`Type=notify`): READY only once the store is open, STATUS lines, the
//! watchdog fed while the pipeline makes progress, STOPPING on shutdown. systemd's side is a
//! datagram socket this test reads, passed as NOTIFY_SOCKET.

use std::process::Stdio;
use std::time::Duration;

use gridgate_tests::{ONE_METER_SITE, gridgate, sims, with_site};

/// A one-meter site in a temporary directory, and the datagram socket that plays systemd's
/// side (pass its path as NOTIFY_SOCKET).
async fn notified_site(
    id: &str,
    poll: &str,
) -> (
    gridgate::tools::sim::RunningSims,
    tempfile::TempDir,
    tokio::net::UnixDatagram,
    std::path::PathBuf,
) {
    let s = sims(ONE_METER_SITE).await;
    let dir = tempfile::tempdir().expect("dir");
    let sock = tokio::net::UnixDatagram::bind(dir.path().join("notify.sock")).expect("bind");
    let config = dir.path().join("g.toml");
    std::fs::write(&config, with_site(dir.path(), &s.gateway_config(id, poll))).expect("config");
    (s, dir, sock, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_store_is_open_watchdog_while_alive_stopping_at_the_end() {
    let (_sims, dir, sock, config) = notified_site("sd", "100ms").await;
    let sock_path = dir.path().join("notify.sock");
    let mut child = gridgate()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "900000")
        .stdout(Stdio::null())
        .spawn()
        .expect("gridgate");
    let pid = child.id().expect("pid");
    let store_file = dir.path().join("data").join("gridgate.redb");
    let mut buf = vec![0u8; 4096];
    let mut messages: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut watchdogs = 0;
    while watchdogs < 3 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = tokio::time::timeout(left, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("not enough notifications: {messages:?}"))
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            assert!(
                messages.is_empty(),
                "READY is the first thing said: {messages:?}"
            );
            assert!(store_file.exists(), "READY came before the store was open");
        }
        if msg.contains("WATCHDOG=1") {
            assert!(
                messages.iter().any(|m| m.contains("READY=1")),
                "watchdog fed before READY"
            );
            watchdogs += 1;
        }
        messages.push(msg);
    }
    // A reload (ExecReload sends SIGHUP): RELOADING=1 with its monotonic time, then READY=1
    // again once the config is re-read.
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    let mut reloading = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no READY after RELOADING (reloading: {reloading})"))
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("RELOADING=1") {
            assert!(msg.contains("MONOTONIC_USEC="), "{msg}");
            reloading = true;
        }
        if msg.contains("READY=1") {
            assert!(
                reloading,
                "READY after a reload comes after RELOADING: {msg}"
            );
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut stopping = false;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success());
}

/// A store that stops answering (the commit hangs, as on a dying SD card): the watchdog is
/// no longer fed, so systemd restarts the gateway, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_store_stops_the_watchdog() {
    let (_sims, dir, sock, config) = notified_site("wedge", "50ms").await;
    let sock_path = dir.path().join("notify.sock");
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    // The first 20 commits go through; the 21st never returns.
    let mut child = gridgate()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "600000")
        .env("FAILPOINTS", "store-commit=20*off->sleep(600000)")
        .env("GRIDGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("gridgate");
    let mut buf = vec![0u8; 4096];
    let mut fed_at = Vec::new();
    let start = tokio::time::Instant::now();
    // Watch for 6 s: 30 watchdog periods' worth of 200 ms feeds if nothing were wrong.
    while start.elapsed() < Duration::from_secs(6) {
        let left = Duration::from_secs(6).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                    fed_at.push(start.elapsed());
                }
            }
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => break,
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert!(
        !text.contains("built without the failpoints feature"),
        "target/debug/gridgate has no fail points: it was last built for the gridgate package \
         alone; build the workspace (`cargo build --workspace`, as scripts/test.sh does) so \
         that the tests crate's failpoints feature is in it"
    );
    assert!(
        !fed_at.is_empty(),
        "the watchdog was fed while the store still committed"
    );
    let last = *fed_at.last().expect("fed");
    assert!(
        last < Duration::from_secs(4),
        "the watchdog was still fed {last:?} after start, with the store wedged: {fed_at:?}"
    );
    assert!(
        text.contains("not feeding the systemd watchdog") && text.contains("storing=false"),
        "{text}"
    );
}
