//! Consensus on cuts with real processes on loopback: four `gridgate-node` validators
//! (f = 1), each with its own store, key, gRPC listener and consensus P2P listener, and a
//! gateway that keeps the decided cuts in its replica. Checked with `gridgate ledger cuts`,
//! which verifies every chain link and finalization offline and compares the validators.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gridgate_tests::dr_site::{WAIT, keygen, wait_for_port};
use gridgate_tests::{Gateway, free_port, gridgate_bin, grpc_section, run_to_end, with_site};
use tokio::process::{Child, Command};

/// A consortium of `n` validators run by `gridgate-node`, and other members.
pub(crate) struct Consortium {
    dir: tempfile::TempDir,
    /// v0's page and /metrics (open to read on loopback).
    web: u16,
    grpc: Vec<u16>,
    p2p: Vec<u16>,
    nodes: Vec<Option<Child>>,
    /// The members that are not validators: (id, role).
    others: Vec<(String, String)>,
    /// The cut interval the validators run.
    cut_interval: &'static str,
}

impl Consortium {
    fn new(n: usize) -> Consortium {
        Consortium::with_members(n, &[("gw", "gateway")])
    }

    /// `n` validators and `others` (id, role), each with a key in its directory.
    pub(crate) fn with_members(n: usize, others: &[(&str, &str)]) -> Consortium {
        let dir = tempfile::tempdir().expect("dir");
        gridgate_api::pki::make_site_pki(&dir.path().join("pki"), "consortium", &[]).expect("pki");
        let ids = (0..n)
            .map(|i| format!("v{i}"))
            .chain(others.iter().map(|(id, _)| id.to_string()));
        for id in ids {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).expect("dir");
            keygen(&d);
        }
        Consortium {
            web: free_port(),
            dir,
            grpc: (0..n).map(|_| free_port()).collect(),
            p2p: (0..n).map(|_| free_port()).collect(),
            nodes: (0..n).map(|_| None).collect(),
            others: others
                .iter()
                .map(|(id, role)| (id.to_string(), role.to_string()))
                .collect(),
            cut_interval: "100ms",
        }
    }

    /// The consortium's PKI (its CA, the gRPC server's and each role's client certificate).
    pub(crate) fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub(crate) fn node_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// `[ledger]` for node `id` of `role`: the validators (with their gRPC endpoints and
    /// consensus addresses) and one gateway, `gw`.
    pub(crate) fn ledger_section(&self, role: &str, id: &str) -> String {
        let d = self.node_dir(id);
        let cert = d.join("member.pem");
        if !cert.exists() {
            let pem = gridgate_api::pki::member_cert(
                &self.dir.path().join("pki"),
                &d.join("identity.pub"),
                id,
                &[],
            )
            .expect("member certificate");
            std::fs::write(&cert, pem).expect("write certificate");
        }
        let mut members = String::new();
        for i in 0..self.grpc.len() {
            members.push_str(&format!(
                "  {{ id = \"v{i}\", role = \"validator\", public_key = \"{}\", endpoint = \"https://localhost:{}\", consensus = \"127.0.0.1:{}\" }},\n",
                self.node_dir(&format!("v{i}")).join("identity.pub").display(),
                self.grpc[i],
                self.p2p[i],
            ));
        }
        for (other, role) in &self.others {
            members.push_str(&format!(
                "  {{ id = \"{other}\", role = \"{role}\", public_key = \"{}\" }},\n",
                self.node_dir(other).join("identity.pub").display()
            ));
        }
        let pki = self.dir.path().join("pki");
        format!(
            "\n[ledger]\nrole = \"{role}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nmembers = [\n{members}]\n\n[[ledger.program]]\nname = \"peak-shave\"\nprice_milli_per_kwh = 1500\ngrace = \"1s\"\n",
            ca = pki.join("ca.pem").display(),
            cert = cert.display(),
            key = d.join("identity.key").display(),
        )
    }

    pub(crate) fn config_path(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("gridgate.toml")
    }

    /// Starts validator `i` (again, after a stop, on the same store and journal).
    pub(crate) async fn start(&mut self, i: usize) {
        self.start_with(i, &[]).await
    }

    /// As [`Consortium::start`], with `env` set for the process (fail points).
    pub(crate) async fn start_with(&mut self, i: usize, env: &[(&str, &str)]) {
        let id = format!("v{i}");
        let d = self.node_dir(&id);
        let web = if i == 0 {
            format!(
                "\n[web]\nlisten = \"127.0.0.1:{}\"\nanonymous_read = true\n",
                self.web
            )
        } else {
            String::new()
        };
        let config = format!(
            "[gateway]\nid = \"{id}\"\n{}{}\n[ledger.consensus]\nlisten = \"127.0.0.1:{}\"\ncut_interval = \"{}\"\n{web}",
            grpc_section(self.grpc[i], &self.dir.path().join("pki")),
            self.ledger_section("validator", &id),
            self.p2p[i],
            self.cut_interval,
        );
        std::fs::write(self.config_path(&id), with_site(&d, &config)).expect("config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("node.log"))
            .expect("log");
        let bin = gridgate_bin().with_file_name("gridgate-node");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(self.config_path(&id))
            .env("GRIDGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.nodes[i] = Some(child);
        wait_for_port(self.grpc[i]).await;
    }

    pub(crate) async fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(&format!("v{i}")).join("node.log"))
            .unwrap_or_default()
    }

    /// `gridgate ledger cuts` with `config`: (exit code, output).
    async fn cuts(&self, config: &Path, extra: &[&str]) -> (i32, String) {
        let config = config.display().to_string();
        let mut args = vec!["ledger", "cuts", "--config", &config];
        if !extra.contains(&"--last") {
            args.extend_from_slice(&["--last", "3"]);
        }
        args.extend_from_slice(extra);
        let (code, out, err) = run_to_end(&args, WAIT).await;
        (code, format!("{out}{err}"))
    }

    /// Each validator's decided height as `gridgate ledger cuts` reports it (None: did not
    /// answer).
    fn heights(out: &str) -> Vec<(String, u64)> {
        out.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("validator ")?;
                let (id, rest) = rest.split_once(": decided height ")?;
                let h = rest.split(',').next()?.parse().ok()?;
                Some((id.to_string(), h))
            })
            .collect()
    }

    /// Polls until every validator in `who` answers with a checked chain of at least
    /// `height` and all agree; the last output.
    pub(crate) async fn until_decided(&self, who: &[usize], height: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (code, out) = self.cuts(&self.config_path("v0"), &[]).await;
            let hs = Self::heights(&out);
            let reached = who.iter().all(|i| {
                hs.iter()
                    .any(|(id, h)| *id == format!("v{i}") && *h >= height)
            });
            // Each of `who` checks and none disagrees (a validator outside `who` may lie).
            let checks = who.iter().all(|i| {
                out.lines().any(|l| {
                    l.starts_with(&format!("validator v{i}: "))
                        && l.ends_with("every link and finalization checks")
                })
            });
            if reached && checks && !out.contains("decided different cuts") {
                return out;
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = who
                    .iter()
                    .map(|&i| {
                        let l = self.log(i);
                        // Without the frames of a backtrace.
                        let tail: Vec<&str> = l
                            .lines()
                            .filter(|l| {
                                let t = l.trim_start();
                                !(t.starts_with("at ")
                                    || t.split(':')
                                        .next()
                                        .is_some_and(|n| n.parse::<u32>().is_ok()))
                            })
                            .rev()
                            .take(20)
                            .collect();
                        format!(
                            "--- v{i}:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "validators {who:?} never reached height {height}; last (exit {code}):\n{out}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_decide_cuts_and_a_killed_one_catches_up_and_agrees() {
    let mut c = Consortium::new(4);
    for i in 0..4 {
        c.start(i).await;
    }
    // Cuts are decided continuously, every validator the same chain, every link and
    // finalization checked offline.
    let out = c.until_decided(&[0, 1, 2, 3], 10).await;
    assert!(
        out.contains("4 validators agree on every cut up to height"),
        "{out}"
    );
    assert!(out.contains("every link and finalization checks"), "{out}");

    // v0's /metrics and page show where consensus stands.
    let (status, metrics) =
        gridgate_tests::web::request(c.web, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{metrics}");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(value("gridgate_ledger_decided_height") >= 10.0, "{metrics}");
    assert!(value("gridgate_consensus_view") >= 10.0, "{metrics}");
    assert_eq!(value("gridgate_consensus_peers"), 3.0, "{metrics}");
    assert!(
        metrics.contains("gridgate_consensus_finality_seconds{quantile=\"0.99\"}"),
        "{metrics}"
    );
    let (status, overview) =
        gridgate_tests::web::request(c.web, "GET", "/api/overview", None, None).await;
    assert_eq!(status, 200, "{overview}");
    let o: serde_json::Value = serde_json::from_str(&overview).expect("overview JSON");
    assert!(
        o["ledger"]["decided"]["height"]
            .as_u64()
            .is_some_and(|h| h >= 10),
        "{overview}"
    );

    // Yesterday's statement closes on the first cut past its end and grace (1 s here): every
    // validator's statement is computed from what that cut orders, and they agree.
    let yesterday =
        humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(86_400))
            .to_string();
    let (code, settled, err) = run_to_end(
        &[
            "ledger",
            "settlement",
            "--config",
            &c.config_path("v0").display().to_string(),
            "--day",
            &yesterday[..10],
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "{settled}{err}");
    assert!(settled.contains("closed on decided cut 1 "), "{settled}");
    assert_eq!(
        settled
            .lines()
            .filter(|l| l.starts_with("validator ") && l.contains(", statement "))
            .count(),
        4,
        "{settled}"
    );
    assert!(
        settled
            .lines()
            .any(|l| l.starts_with("gridgate settlement v1 ") && l.contains(" on cut 1 ")),
        "{settled}"
    );

    // A gateway keeps the decided cuts in its replica, each checked before it is stored.
    let gw_dir = c.node_dir("gw");
    let gw_config = format!(
        "[gateway]\nid = \"gw\"\n{}",
        c.ledger_section("gateway", "gw")
    );
    let gw = Gateway::start_logged(&gw_dir, &gw_config).await;

    // f = 1: with one validator killed, the other three keep deciding.
    c.kill9(3).await;
    let before = Consortium::heights(&c.cuts(&c.config_path("v0"), &["--validator", "v0"]).await.1)
        .first()
        .map_or(0, |h| h.1);
    c.until_decided(&[0, 1, 2], before + 20).await;

    // Restarted on its store and journal, it catches up and agrees on every past cut.
    c.start(3).await;
    let now = Consortium::heights(&c.cuts(&c.config_path("v0"), &["--validator", "v0"]).await.1)
        .first()
        .map_or(0, |h| h.1);
    let out = c.until_decided(&[0, 1, 2, 3], now + 5).await;
    assert!(out.contains("4 validators agree"), "{out}");

    // The gateway fetched the cuts (with its anti-entropy rounds) and checked them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(gw_dir.join("gridgate.log")).unwrap_or_default();
        if log.contains("cut sync: decided cuts fetched, checked and stored") {
            assert!(!log.contains("cut sync: refused"), "{log}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never stored cuts:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gw.stop().await;
    for i in 0..4 {
        c.kill9(i).await;
    }
}

/// The decided height one validator reports.
async fn height_of(c: &Consortium, v: &str) -> u64 {
    let out = c.cuts(&c.config_path("v0"), &["--validator", v]).await.1;
    Consortium::heights(&out).first().map_or(0, |h| h.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_progress_without_a_quorum_and_no_decision_for_a_cut_no_one_holds() {
    let mut c = Consortium::new(4);
    for i in 0..3 {
        c.start(i).await;
    }
    // v3 is Byzantine: every cut it proposes names an entry at a place no one holds.
    c.start_with(3, &[("FAILPOINTS", "node-propose-unheld=return")])
        .await;
    let out = c.until_decided(&[0, 1, 2, 3], 12).await;
    // Its views time out instead: no honest validator voted for what it proposed.
    let decided = c
        .cuts(
            &c.config_path("v0"),
            &["--validator", "v0", "--last", "100000"],
        )
        .await
        .1;
    assert!(
        !decided.lines().any(|l| l.split_whitespace().any(|w| w
            .rsplit(':')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1000))),
        "a cut naming an entry no one holds was decided:\n{decided}"
    );
    assert!(out.contains("4 validators agree"), "{out}");
    // And the views it led were skipped: more views than cuts (honest runs: view = height + 2).
    let (height, view) = decided
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix("cut ")?;
            let h: u64 = rest.split_whitespace().next()?.parse().ok()?;
            let v: u64 = rest
                .split("(view ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((h, v))
        })
        .expect("a decided cut");
    assert!(
        view >= height + 2 + height / 8,
        "cut {height} in view {view}: the Byzantine leader's views were not skipped\n{decided}"
    );

    // Two of four down: no quorum, so no progress; and nothing is decided wrongly.
    c.kill9(3).await;
    c.kill9(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = height_of(&c, "v0").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        height_of(&c, "v0").await,
        stalled,
        "decided without a quorum"
    );
    assert_eq!(height_of(&c, "v1").await.max(stalled), stalled);

    // Back (v3 honest now): progress resumes and all agree.
    c.start(2).await;
    c.start(3).await;
    let out = c.until_decided(&[0, 1, 2, 3], stalled + 10).await;
    assert!(out.contains("4 validators agree"), "{out}");
    for i in 0..4 {
        c.kill9(i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_forged_finalizations_and_takes_the_cuts_from_honest_validators() {
    let mut c = Consortium::new(4);
    for i in 0..3 {
        c.start(i).await;
    }
    // v3 decides honestly but every finalization it serves is forged (one signature bit).
    c.start_with(3, &[("FAILPOINTS", "ledger-cuts-forge=return")])
        .await;
    c.until_decided(&[0, 1, 2], 10).await;
    let (code, out) = c.cuts(&c.config_path("v0"), &["--validator", "v3"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DO NOT CHECK"), "{out}");

    // A gateway that was not there while they were decided, and finds only v3 answering:
    // v3's answers are refused; once the honest validators are back, theirs are stored.
    for i in 0..3 {
        c.kill9(i).await;
    }
    let gw_dir = c.node_dir("gw");
    let gw = Gateway::start_logged(
        &gw_dir,
        &format!(
            "[gateway]\nid = \"gw\"\n{}",
            c.ledger_section("gateway", "gw")
        ),
    )
    .await;
    let log = || std::fs::read_to_string(gw_dir.join("gridgate.log")).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !log().contains("cut sync: refused what the validator sent") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "v3's forgeries were not refused:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        !log().contains("cut sync: decided cuts fetched"),
        "{}",
        log()
    );
    for i in 0..3 {
        c.start(i).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(gw_dir.join("gridgate.log")).unwrap_or_default();
        let refused = log
            .lines()
            .any(|l| l.contains("cut sync: refused what the validator sent") && l.contains("v3"));
        let stored = log.contains("cut sync: decided cuts fetched, checked and stored");
        if refused && stored {
            assert!(
                !log.lines()
                    .any(|l| l.contains("cut sync: refused") && !l.contains("v3")),
                "{log}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not refuse v3's forgeries and store the others' cuts:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gw.stop().await;
    for i in 0..4 {
        c.kill9(i).await;
    }
}
