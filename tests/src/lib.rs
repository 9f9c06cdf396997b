//! Helpers for the end-to-end tests: find the real `gridgate` binary, run it on a config,
//! and read the readings it prints.

// Helpers for tests: a failure is a panic with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod dr_site;
pub mod vtn;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Path of the `gridgate` binary built next to the test executables.
///
/// The test command (`./scripts/test.sh`) builds it before the tests run.
pub fn gridgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/gridgate
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("gridgate");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p gridgate` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A `gridgate` command with logs kept quiet unless a test asks for them.
pub fn gridgate() -> Command {
    let mut c = Command::new(gridgate_bin());
    c.env(
        "GRIDGATE_LOG",
        std::env::var("GRIDGATE_LOG").unwrap_or_else(|_| "warn".into()),
    );
    c.kill_on_drop(true);
    c
}

/// Runs a `gridgate` command to completion: (exit code, stdout, stderr).
pub async fn run_to_end(args: &[&str], limit: Duration) -> (i32, String, String) {
    let out = tokio::time::timeout(limit, gridgate().args(args).output())
        .await
        .unwrap_or_else(|_| panic!("gridgate {args:?} did not finish within {limit:?}"))
        .expect("gridgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `gridgate verify` on the data directory `data` with the public key `pubkey`.
pub async fn verify_chain(data: &Path, pubkey: &Path, limit: Duration) -> (i32, String, String) {
    let data = data.to_str().expect("data dir path is UTF-8");
    let pubkey = pubkey.to_str().expect("public key path is UTF-8");
    run_to_end(&["verify", "--data-dir", data, "--pubkey", pubkey], limit).await
}

/// A `[grpc]` table serving mutual TLS on `127.0.0.1:port` with the site PKI in `pki`
/// (from `gridgate_api::pki::make_site_pki`).
pub fn grpc_section(port: u16, pki: &Path) -> String {
    format!(
        "\n[grpc]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{p}/server.pem\"\nkey_file = \"{p}/server.key\"\nclient_ca_file = \"{p}/ca.pem\"\n",
        p = pki.display()
    )
}

/// The smallest site: one simulated DL/T 645 meter (address 000000000001) on a line behind
/// a serial-to-Ethernet converter on loopback.
pub const ONE_METER_SITE: &str = r#"
[[line]]
name = "rs485"
protocol = "dlt645"
listen = "127.0.0.1:0"
meters = [{ address = "000000000001" }]
"#;

/// A running `gridgate run` daemon printing JSON readings (`--echo json`).
pub struct Gateway {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
    _dir: Option<tempfile::TempDir>,
}

/// Makes `dir/identity.key` and `dir/identity.pub` unless they exist, and returns `config`
/// with `data_dir = dir/data` and that identity in its `[gateway]` table.
pub fn with_site(dir: &Path, config: &str) -> String {
    let key = dir.join("identity.key");
    if !key.exists() {
        gridgate_core::Identity::generate()
            .expect("key")
            .save(&key, &dir.join("identity.pub"))
            .expect("save key");
    }
    config.replacen(
        "[gateway]\n",
        &format!(
            "[gateway]\ndata_dir = \"{}\"\nidentity = \"{}\"\n",
            dir.join("data").display(),
            key.display()
        ),
        1,
    )
}

impl Gateway {
    /// Starts `gridgate run` on `config` in a new temporary site directory.
    pub async fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut gw = Gateway::start_in(dir.path(), config).await;
        gw._dir = Some(dir);
        gw
    }

    /// Starts `gridgate run` on `config` with its data and identity in `dir` (kept between
    /// runs, for restart tests).
    pub async fn start_in(dir: &Path, config: &str) -> Gateway {
        Gateway::spawn_in(dir, config, None)
    }

    /// As [`Gateway::start_in`], with the daemon's log (stderr, at level info) in
    /// `dir/gridgate.log`, for tests that check what it logs.
    pub async fn start_logged(dir: &Path, config: &str) -> Gateway {
        let log = std::fs::File::create(dir.join("gridgate.log")).expect("log file");
        Gateway::spawn_in(dir, config, Some(log))
    }

    fn spawn_in(dir: &Path, config: &str, log: Option<std::fs::File>) -> Gateway {
        let path = dir.join("gridgate.toml");
        std::fs::write(&path, with_site(dir, config)).expect("write config");
        let mut command = gridgate();
        let stderr = match log {
            Some(file) => {
                command.env("GRIDGATE_LOG", "info");
                Stdio::from(file)
            }
            None => Stdio::inherit(),
        };
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--echo")
            .arg("json")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start gridgate");
        let stdout = child.stdout.take().expect("stdout");
        Gateway {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            _dir: None,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends the daemon a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("daemon still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Kills the daemon with SIGKILL, as a power cut would, and reaps it.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The next reading, or `None` after `limit` or when the daemon exits.
    pub async fn next(&mut self, limit: Duration) -> Option<Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .ok()?
            .ok()??;
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        self.seen.push(v.clone());
        Some(v)
    }

    /// Waits for a reading that satisfies `pred`; panics with the last readings otherwise.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_wait_for(limit, what, pred).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits for a reading that satisfies `pred`; otherwise says what it waited for and
    /// the last readings (for a test that adds what else it knows, a log, before failing).
    pub async fn try_wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) if pred(&v) => return Ok(v),
                Some(_) => {}
                None => {
                    let tail: Vec<String> = self
                        .seen
                        .iter()
                        .rev()
                        .take(12)
                        .map(|v| v.to_string())
                        .collect();
                    return Err(format!(
                        "no reading where {what} within {limit:?}; last readings:\n{}",
                        tail.join("\n")
                    ));
                }
            }
        }
    }

    /// Every reading seen so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit code.
    pub async fn stop(mut self) -> Option<i32> {
        if self.child.id().is_some() {
            self.signal("TERM");
        }
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()?
            .ok()?;
        if status.code().is_none() {
            eprintln!("gridgate ended by a signal: {status:?}");
        }
        status.code()
    }
}

/// `reading["point"] == point`
pub fn is_point(v: &Value, point: &str) -> bool {
    v["point"] == point
}

/// `reading["quality"] == quality`
pub fn has_quality(v: &Value, quality: &str) -> bool {
    v["quality"] == quality
}

/// Starts the simulators described by `spec` (the `gridgate sim` file format).
pub async fn sims(spec: &str) -> gridgate::tools::sim::RunningSims {
    let spec: gridgate::tools::sim::SimSpec = toml::from_str(spec).expect("simulator spec");
    gridgate::tools::sim::start(&spec)
        .await
        .expect("simulators start")
}

/// Ports handed out so far by this process.
static HANDED_OUT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A free TCP port on loopback, for a listener a test starts. Ports come from 20000 to
/// 32767, below the kernel's ephemeral range (32768 and up here), so that no outgoing
/// connection of any test can take one between this call and the bind; and this process
/// never hands out the same port twice, so two tests never race for one.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_768;
    // Test processes started together (the benches, a second test run) start apart.
    let offset = std::process::id() % COUNT;
    loop {
        let n = HANDED_OUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < COUNT, "no free port left below the ephemeral range");
        let port = u16::try_from(FIRST + (offset + n) % COUNT).expect("in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A Mosquitto broker on loopback, for tests against a real external broker.
pub struct Mosquitto {
    child: Option<std::process::Child>,
    /// Its port.
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` (installed by scripts/test.sh from the distribution's packages) on a
    /// free port, keeping any number of queued messages for persistent sessions.
    pub async fn start() -> Mosquitto {
        let port = free_port();
        Mosquitto::start_with(
            port,
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 50\n"
            ),
        )
        .await
    }

    /// Starts `mosquitto` on the configuration text `conf` and waits until it listens on
    /// `port` (one of the listeners `conf` names).
    pub async fn start_with(port: u16, conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("conf");
        let mut m = Mosquitto {
            child: None,
            port,
            conf: path,
            _dir: dir,
        };
        m.restart().await;
        m
    }

    /// Starts it again (after [`Mosquitto::kill`]) on the same port.
    pub async fn restart(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "mosquitto is not installed: run scripts/test.sh, which installs it with apt-get",
            );
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not listen on {}", self.port);
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Batches seen on an uplink topic: (seq, SignedBatch bytes) in arrival order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;

/// Subscribes to `topic` on a broker at `port` and records every signed batch that arrives,
/// resubscribing after the broker restarts.
pub fn collect_batches(port: u16, topic: &str) -> (Received, tokio::task::JoinHandle<()>) {
    use prost::Message;
    let got: Received = Default::default();
    let out = got.clone();
    let topic = topic.to_string();
    let task = tokio::spawn(async move {
        let mut opts = rumqttc::MqttOptions::new(format!("collector-{port}"), "127.0.0.1", port);
        opts.set_max_packet_size(64 << 20, 1 << 20);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 16);
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let seq = gridgate_proto::v1::SignedBatch::decode(p.payload.as_ref())
                        .ok()
                        .and_then(|s| gridgate_proto::v1::Batch::decode(s.batch.as_slice()).ok())
                        .map(|b| b.seq)
                        .expect("uplink payload is a SignedBatch");
                    out.lock().expect("lock").push((seq, p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (got, task)
}

/// Every batch stored in `data_dir` (the gateway must be stopped): (seq, bytes).
pub fn stored_batches(data_dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let store = gridgate_store::open_for_verify(data_dir).expect("open store");
    store.batches_from(0, usize::MAX).expect("read batches")
}
