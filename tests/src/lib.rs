//! Helpers for the end-to-end tests: find the real `gridgate` binary, run it on a config,
//! and read the readings it prints.

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
        gridgate::batch::Identity::generate()
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
        let path = dir.join("gridgate.toml");
        std::fs::write(&path, with_site(dir, config)).expect("write config");
        let mut child = gridgate()
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--echo")
            .arg("json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => {
                    let tail: Vec<String> = self
                        .seen
                        .iter()
                        .rev()
                        .take(12)
                        .map(|v| v.to_string())
                        .collect();
                    panic!(
                        "no reading where {what} within {limit:?}; last readings:\n{}",
                        tail.join("\n")
                    );
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
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()?
            .ok()?
            .code()
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
