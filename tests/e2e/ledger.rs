//! The consortium ledger with real processes on loopback: four validators (f = 1) and one or
//! two gateways, each a `gridgate run` with its own store and key, over mutual TLS. A
//! gateway's DR performance report becomes an entry of its log, certified by 2f+1
//! validators; a validator that was down catches up when it is back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gridgate_tests::dr_site::{Site, WAIT, event, keygen, plant, wait_for_port};
use gridgate_tests::{Gateway, free_port, grpc_section, run_to_end};

/// The consortium's gateways: id and site directory.
pub(crate) type Gateways<'a> = &'a [(&'a str, &'a Path)];

/// The validators: their directories and ports, and the consortium's PKI.
pub(crate) struct Validators {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl Validators {
    pub(crate) fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        gridgate_api::pki::make_site_pki(&dir.path().join("pki"), "consortium", &[]).expect("pki");
        for i in 0..n {
            let d = dir.path().join(format!("v{i}"));
            std::fs::create_dir_all(&d).expect("dir");
            keygen(&d);
        }
        Validators {
            dir,
            ports: (0..n).map(|_| free_port()).collect(),
        }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// `[ledger]` for a node of `role` in a consortium with these validators, the
    /// `gateways` (each its id and its site directory, which holds its key; the first's also
    /// holds the DR operator's), and the DR operator (whose key signs the events settlement
    /// reads).
    ///
    /// `node` is the node's own id and directory: its identity key there gets a member
    /// certificate of the consortium's CA, its TLS client identity.
    pub(crate) fn ledger_section(
        &self,
        role: &str,
        gateways: Gateways,
        node: (&str, &Path),
    ) -> String {
        let cert = node.1.join("member.pem");
        if !cert.exists() {
            let pem = gridgate_api::pki::member_cert(
                &self.pki(),
                &node.1.join("identity.pub"),
                node.0,
                &[],
            )
            .expect("member certificate");
            std::fs::write(&cert, pem).expect("write certificate");
        }
        let mut members = String::new();
        for (i, port) in self.ports.iter().enumerate() {
            members.push_str(&format!(
                "  {{ id = \"v{i}\", role = \"validator\", public_key = \"{}\", endpoint = \"https://localhost:{port}\" }},\n",
                self.dir.path().join(format!("v{i}/identity.pub")).display()
            ));
        }
        for (id, dir) in gateways {
            members.push_str(&format!(
                "  {{ id = \"{id}\", role = \"gateway\", public_key = \"{}\" }},\n",
                dir.join("identity.pub").display(),
            ));
        }
        members.push_str(&format!(
            "  {{ id = \"operator\", role = \"operator\", public_key = \"{}\" }},\n",
            gateways[0].1.join("operator/identity.pub").display()
        ));
        let pki = self.pki();
        format!(
            "\n[ledger]\nrole = \"{role}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nmembers = [\n{members}]\n\n[[ledger.program]]\nname = \"peak-shave\"\nprice_milli_per_kwh = 1500\n",
            ca = pki.join("ca.pem").display(),
            cert = cert.display(),
            key = node.1.join("identity.key").display(),
        )
    }

    pub(crate) async fn start(&self, i: usize, gateways: Gateways<'_>) -> Gateway {
        self.start_with(i, gateways, "").await
    }

    /// As [`Validators::start`], with `extra` appended to the validator's config.
    async fn start_with(&self, i: usize, gateways: Gateways<'_>, extra: &str) -> Gateway {
        let d = self.dir.path().join(format!("v{i}"));
        let config = format!(
            "[gateway]\nid = \"v{i}\"\n{}{}{extra}",
            grpc_section(self.ports[i], &self.pki()),
            self.ledger_section("validator", gateways, (&format!("v{i}"), &d))
        );
        let gw = Gateway::start_logged(&d, &config).await;
        wait_for_port(self.ports[i]).await;
        gw
    }
}

/// Runs `gridgate ledger status` with the gateway's config until `done` holds for its
/// output (or panics after a minute).
async fn status_until(config: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let config = config.display().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = run_to_end(&["ledger", "status", "--config", &config], WAIT).await;
        if code == 0 && done(&out) {
            return out;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(config.replace("gridgate.toml", "gridgate.log"))
                .unwrap_or_default();
            // The gateway's log, without its readings, says where the ledger stopped.
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("reading")).collect();
            panic!(
                "never saw {what}; last status (exit {code}):\n{out}{err}\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `gridgate ledger settlement` for today (UTC) with the gateway's config; its output, once
/// it exits 0 (the validators' statements agree).
async fn settlement_today(config: &Path) -> String {
    let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let (code, out, err) = run_to_end(
        &[
            "ledger",
            "settlement",
            "--config",
            &config.display().to_string(),
            "--day",
            &today[..10],
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// `n` lines saying a validator holds `count` certified entries of `origin`, all checking.
fn holds(out: &str, origin: &str, count: u64) -> usize {
    let line = format!("  {origin}: {count} certified entries");
    out.lines()
        .filter(|l| l.starts_with(&line) && l.ends_with("every certificate checks"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_certify_two_gateways_dr_claims_and_a_killed_one_catches_up() {
    let validators = Validators::new(4);
    let (_sims, site, config): (_, Site, String) = plant().await;
    let d = site.dir.path().to_path_buf();
    keygen(&d);
    // A second gateway at another plant, trusting the same DR operator.
    let (_sims2, site2, config2): (_, Site, String) = plant().await;
    let d2 = site2.dir.path().to_path_buf();
    keygen(&d2);
    let config2 = config2
        .replacen("id = \"plant\"", "id = \"plant2\"", 1)
        .replace(
            &site2.path("operator/identity.pub"),
            &site.path("operator/identity.pub"),
        );
    let gateways = [("plant", d.as_path()), ("plant2", d2.as_path())];
    // The first validator also serves /metrics (anonymous reads on loopback).
    let web_port = free_port();
    let web = format!("\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nanonymous_read = true\n");
    let mut running = vec![validators.start_with(0, &gateways, &web).await];
    for i in 1..3 {
        running.push(validators.start(i, &gateways).await);
    }
    // The fourth validator is down for the first event.
    let ledger = validators.ledger_section("gateway", &gateways, gateways[0]);
    let ledger2 = validators.ledger_section("gateway", &gateways, gateways[1]);
    let _gw = Gateway::start_logged(&d, &format!("{config}{ledger}")).await;
    let _gw2 = Gateway::start_logged(&d2, &format!("{config2}{ledger2}")).await;
    wait_for_port(site.port).await;
    wait_for_port(site2.port).await;
    let operator = site.path("operator/identity.key");
    let shed = |id: &str| {
        event(id, "operator", "load = \"pcs\"\nshed_kw = 27.5")
            .replace("duration = \"15m\"", "duration = \"2s\"")
    };
    // One signed event to both gateways; each reports its own performance.
    let both = |id: &'static str| {
        let (site, site2, shed) = (&site, &site2, &shed);
        let operator = operator.clone();
        async move {
            let watch = site.watch_until_reported(id);
            let watch2 = site2.watch_until_reported(id);
            let signed = site.sign(id, &operator, &shed(id)).await;
            for s in [site, site2] {
                let (code, out) = s.dispatch("operator", &signed).await;
                assert_eq!(code, 0, "{out}");
            }
            for w in [watch, watch2] {
                let (code, out, err) = w.await.expect("watch");
                assert_eq!(code, 0, "{out}{err}");
            }
        }
    };
    both("claim-1").await;

    // Three of four validators are a quorum (2f+1 = 3): the claims are certified and every
    // running validator holds them.
    let gw_config = d.join("gridgate.toml");
    let out = status_until(
        &gw_config,
        "both gateways' claims on the three running validators",
        |o| holds(o, "plant", 2) == 3 && holds(o, "plant2", 2) == 3,
    )
    .await;
    assert!(out.contains("validator v3: unreachable"), "{out}");

    // The fourth comes back and catches up by itself (it asks the others for their heads
    // and fetches what it lacks, every certificate checked), before any new claim.
    running.push(validators.start(3, &gateways).await);
    status_until(&gw_config, "v3 caught up by itself", |o| {
        holds(o, "plant", 2) == 4 && holds(o, "plant2", 2) == 4
    })
    .await;

    // Validator v2 is killed (SIGKILL, no clean stop) before the next claims: the other
    // three still certify them; restarted on its store, it catches up by itself.
    let v2 = running.remove(2);
    v2.kill9().await;
    both("claim-2").await;
    status_until(
        &gw_config,
        "the second claims certified with v2 killed",
        |o| holds(o, "plant", 4) == 3 && holds(o, "plant2", 4) == 3,
    )
    .await;
    running.push(validators.start(2, &gateways).await);
    let out = status_until(
        &gw_config,
        "both claims of both gateways on all four validators",
        |o| holds(o, "plant", 4) == 4 && holds(o, "plant2", 4) == 4,
    )
    .await;
    assert!(!out.contains("do not check"), "{out}");

    // Every validator's replica gives the same settlement statement, and each gateway is
    // paid for both events.
    let out = settlement_today(&gw_config).await;
    let hashes: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(", statement ").nth(1))
        .collect();
    assert_eq!(hashes.len(), 4, "{out}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{out}");
    for (id, gw) in [
        ("claim-1", "plant"),
        ("claim-2", "plant"),
        ("claim-1", "plant2"),
        ("claim-2", "plant2"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("event operator {id} gateway {gw} ")))
            .unwrap_or_else(|| panic!("no settlement of {id} with {gw}:\n{out}"));
        let payment: i64 = line
            .split("payment_milli ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(payment > 0, "{line}");
    }
    // A log as a validator holds it, and every replica verified: certificates, chains, no
    // fork between validators.
    let cfg = gw_config.display().to_string();
    let (code, log, err) = run_to_end(
        &[
            "ledger",
            "log",
            "--config",
            &cfg,
            "--origin",
            "plant2",
            "--validator",
            "v3",
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "{log}{err}");
    assert!(
        log.starts_with("# plant2's log as validator v3 holds it: 4 certified entries"),
        "{log}"
    );
    assert!(
        log.contains("DR event operator/claim-1 program peak-shave"),
        "{log}"
    );
    assert!(
        log.contains("performance report of plant2 for operator/claim-2"),
        "{log}"
    );
    let (code, verified, err) = run_to_end(&["ledger", "verify", "--config", &cfg], WAIT).await;
    assert_eq!(code, 0, "{verified}{err}");
    assert!(
        verified.contains("8 place(s) on 2 log(s) across 4 validator(s): no fault, no fork"),
        "{verified}"
    );

    // The first validator's /metrics shows the gateway's reputation as settlement gives it.
    let metrics = gridgate_tests::web::scrape(web_port, None).await;
    let score: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("member plant score "))
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no standing of plant:\n{out}"));
    let shown = gridgate_tests::web::value(
        &metrics,
        "gridgate_ledger_reputation",
        &[("member", "plant")],
    );
    assert_eq!(shown, score);
    assert_eq!(
        gridgate_tests::web::value(
            &metrics,
            "gridgate_ledger_certified_entries",
            &[("origin", "plant")]
        ),
        4.0
    );
    for v in running {
        assert_eq!(v.stop().await, Some(0));
    }
}

/// A client of validator `i` that presents `cert` and `key`.
async fn client_as(
    v: &Validators,
    i: usize,
    cert: &PathBuf,
    key: &PathBuf,
) -> gridgate_proto::v1::ledger_client::LedgerClient<tonic::transport::Channel> {
    let channel = gridgate::tools::pull::connect(
        &format!("https://localhost:{}", v.ports[i]),
        Some(&v.pki().join("ca.pem")),
        Some(cert),
        Some(key),
    )
    .await
    .expect("connect");
    gridgate_proto::v1::ledger_client::LedgerClient::new(channel)
}

/// A client of validator `i` as member v0 (any member may relay entries and certificates:
/// they carry their own signatures).
async fn client_of(
    v: &Validators,
    i: usize,
) -> gridgate_proto::v1::ledger_client::LedgerClient<tonic::transport::Channel> {
    let v0 = v.dir.path().join("v0");
    client_as(v, i, &v0.join("member.pem"), &v0.join("identity.key")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_gateway_is_shut_out_and_forgeries_never_make_a_certificate() {
    use gridgate_ledger::entry::{entry_hash, sign_entry, sign_vote};
    use gridgate_proto::v1 as pb;
    use prost::Message;

    let validators = Validators::new(4);
    let rogue_dir = tempfile::tempdir().expect("dir");
    keygen(rogue_dir.path());
    std::fs::create_dir_all(rogue_dir.path().join("operator")).expect("dir");
    keygen(&rogue_dir.path().join("operator"));
    let me = ("rogue", rogue_dir.path());
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(validators.start(i, &[me]).await);
    }
    let rogue = gridgate_core::Identity::load(&rogue_dir.path().join("identity.key")).expect("key");
    let stranger = gridgate_core::Identity::generate().expect("key");
    let entry = |seq: u64, prev: Vec<u8>, claim: &[u8]| pb::Entry {
        origin: "rogue".into(),
        seq,
        prev_hash: prev,
        timestamp_ms: 1,
        kind: pb::EntryKind::PerformanceReport as i32,
        payload: pb::SignedPerformanceReport {
            report: claim.to_vec(),
            signature: vec![0; 64],
        }
        .encode_to_vec(),
    };
    let refusal = |r: &pb::SubmitReply| pb::VoteRefusal::try_from(r.refusal).unwrap_or_default();

    // A caller whose certificate the consortium's CA signed, but for a key that is no
    // member's, is refused before anything it sends is read.
    let pki = validators.pki();
    let mut outsider = client_as(
        &validators,
        0,
        &pki.join("client-validator.pem"),
        &pki.join("client-validator.key"),
    )
    .await;
    let refused = outsider
        .heads(pb::HeadsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("member"), "{refused:?}");

    // Forgeries are refused with their reason at every validator.
    let mut v0 = client_of(&validators, 0).await;
    let forged = sign_entry(&entry(0, vec![0; 32], b"claim"), &stranger);
    let r = v0.submit(forged).await.expect("submit").into_inner();
    assert_eq!(refusal(&r), pb::VoteRefusal::BadSignature, "{r:?}");
    let mut unknown = entry(0, vec![0; 32], b"claim");
    unknown.origin = "nobody".into();
    let r = v0
        .submit(sign_entry(&unknown, &stranger))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refusal(&r), pb::VoteRefusal::UnknownMember, "{r:?}");
    let wrong_prev = sign_entry(&entry(0, vec![1; 32], b"claim"), &rogue);
    let r = v0.submit(wrong_prev).await.expect("submit").into_inner();
    assert_eq!(refusal(&r), pb::VoteRefusal::WrongPrevious, "{r:?}");

    // The rogue signs two entries for its seq 0 and shows each to different validators.
    let a = sign_entry(&entry(0, vec![0; 32], b"claim A"), &rogue);
    let b = sign_entry(&entry(0, vec![0; 32], b"claim B"), &rogue);
    let mut votes_a = Vec::new();
    for i in 0..2 {
        let r = client_of(&validators, i)
            .await
            .submit(a.clone())
            .await
            .expect("submit")
            .into_inner();
        votes_a.push(r.vote.expect("a vote for A"));
    }
    let r = client_of(&validators, 2)
        .await
        .submit(b.clone())
        .await
        .expect("submit")
        .into_inner();
    assert!(r.vote.is_some(), "v2 has not seen A: it votes for B");
    // Validator 1 is shown B too: the pair is the proof, and the rogue is shut out there.
    let mut v1 = client_of(&validators, 1).await;
    let r = v1.submit(b.clone()).await.expect("submit").into_inner();
    assert_eq!(refusal(&r), pb::VoteRefusal::Equivocation, "{r:?}");
    let next = sign_entry(&entry(1, entry_hash(&a).to_vec(), b"more"), &rogue);
    let r = v1.submit(next).await.expect("submit").into_inner();
    assert_eq!(refusal(&r), pb::VoteRefusal::ShutOut, "{r:?}");

    // The proof becomes an entry of v1's own log, certified by the validators; every one of
    // them then shuts the rogue out, v2 (which voted for B) and v3 (which saw neither)
    // included.
    for i in 0..4 {
        let mut c = client_of(&validators, i).await;
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let heads = c
                .heads(pb::HeadsRequest {})
                .await
                .expect("heads")
                .into_inner()
                .heads;
            if heads
                .iter()
                .any(|h| h.origin == "v1" && h.next_certified >= 1)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "v{i} never held v1's certified proof: {heads:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let proof = c
            .fetch(pb::FetchRequest {
                origin: "v1".into(),
                from_seq: 0,
                max: 1,
            })
            .await
            .expect("fetch")
            .into_inner()
            .message()
            .await
            .expect("stream")
            .expect("v1's entry 0");
        let e = pb::Entry::decode(proof.entry.expect("entry").entry.as_slice()).expect("entry");
        assert_eq!(e.kind, pb::EntryKind::Equivocation as i32);
    }
    for i in [2, 3] {
        let r = client_of(&validators, i)
            .await
            .submit(a.clone())
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(refusal(&r), pb::VoteRefusal::ShutOut, "v{i}: {r:?}");
    }

    // Two votes are not a certificate, nor are two votes and a forged third (signed by the
    // rogue, not a validator): no validator stores it.
    let forged_vote = sign_vote("v3", "rogue", 0, &entry_hash(&a), &rogue);
    for votes in [
        votes_a.clone(),
        [votes_a.clone(), vec![forged_vote]].concat(),
    ] {
        let c = pb::CertifiedEntry {
            entry: Some(a.clone()),
            certificate: Some(pb::Certificate { votes }),
        };
        let r = client_of(&validators, 3)
            .await
            .push_certificate(c)
            .await
            .expect("push")
            .into_inner();
        assert!(!r.stored && r.detail.contains("valid votes"), "{r:?}");
    }

    // A Byzantine validator (v3's own key) votes for a forged entry and signs garbage for a
    // real one: with the honest validators' votes neither makes a certificate.
    let v3_key = gridgate_core::Identity::load(&validators.dir.path().join("v3/identity.key"))
        .expect("v3's key");
    let forged_entry = sign_entry(&entry(0, vec![0; 32], b"claim F"), &stranger);
    let byzantine = sign_vote("v3", "rogue", 0, &entry_hash(&forged_entry), &v3_key);
    let mut garbage = sign_vote("v3", "rogue", 0, &entry_hash(&a), &v3_key);
    garbage.signature = vec![0x5a; 64];
    let cases = [
        (
            forged_entry,
            vec![votes_a[0].clone(), votes_a[1].clone(), byzantine],
        ),
        (a.clone(), [votes_a.clone(), vec![garbage]].concat()),
    ];
    for (entry, votes) in cases {
        let c = pb::CertifiedEntry {
            entry: Some(entry),
            certificate: Some(pb::Certificate { votes }),
        };
        let r = client_of(&validators, 2)
            .await
            .push_certificate(c)
            .await
            .expect("push")
            .into_inner();
        assert!(!r.stored, "{r:?}");
    }

    // Every validator's settlement counts the proven equivocation: the rogue's score is gone
    // and it sits out its first probation (a day), whatever it claims meanwhile.
    let out = settlement_today(&validators.dir.path().join("v0/gridgate.toml")).await;
    let standing = out
        .lines()
        .find(|l| l.starts_with("member rogue "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        standing.starts_with("member rogue score 0 offences 1 excluded_until "),
        "{out}"
    );
    let until: i64 = standing
        .rsplit(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("excluded_until");
    assert!(until > gridgate_core::reading::now_ms(), "{out}");
    for v in running {
        assert_eq!(v.stop().await, Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_for_a_whole_event_gets_its_claim_certified_when_back() {
    let validators = Validators::new(4);
    let (_sims, site, config): (_, Site, String) = plant().await;
    let d = site.dir.path().to_path_buf();
    keygen(&d);
    let me = ("plant", d.as_path());
    // No validator is reachable during the event: the claim waits in the gateway's store.
    let config = format!(
        "{config}{}",
        validators.ledger_section("gateway", &[me], me)
    );
    let _gw = Gateway::start_logged(&d, &config).await;
    wait_for_port(site.port).await;
    let operator = site.path("operator/identity.key");
    let watch = site.watch_until_reported("offline-1");
    let event = event("offline-1", "operator", "load = \"pcs\"\nshed_kw = 27.5")
        .replace("duration = \"15m\"", "duration = \"2s\"");
    let (code, out) = site.send("offline-1", &operator, &event).await;
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = watch.await.expect("watch");
    assert_eq!(code, 0, "{out}{err}");

    // The validators come back: the backlog (the event and the report) is certified late,
    // and every replica settles it the same way.
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(validators.start(i, &[me]).await);
    }
    let gw_config = d.join("gridgate.toml");
    status_until(&gw_config, "the late claim on all four validators", |o| {
        holds(o, "plant", 2) == 4
    })
    .await;
    let out = settlement_today(&gw_config).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("event operator offline-1 gateway plant")),
        "{out}"
    );
    for v in running {
        assert_eq!(v.stop().await, Some(0));
    }
}

/// `gridgate <args>`, which must exit 0; its output.
async fn ok(args: &[&str]) -> String {
    let (code, out, err) = run_to_end(args, Duration::from_secs(90)).await;
    assert_eq!(code, 0, "gridgate {args:?}:\n{out}{err}");
    out
}

/// A UTC time `days` days before now, as RFC 3339.
fn days_ago(days: u64) -> String {
    let t = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_logs_terms_events_and_membership_changes_and_named_gateways_miss_events() {
    use gridgate_proto::v1 as pb;
    use prost::Message;

    let validators = Validators::new(4);
    let sites: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    for s in &sites {
        keygen(s.path());
    }
    let op = sites[0].path().join("operator");
    std::fs::create_dir_all(&op).expect("dir");
    keygen(&op);
    let gws = [("gw-a", sites[0].path()), ("gw-b", sites[1].path())];
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(validators.start(i, &gws).await);
    }
    let op_config = op.join("gridgate.toml");
    std::fs::write(
        &op_config,
        format!(
            "[gateway]\nid = \"operator\"\ndata_dir = \"{}\"\nidentity = \"{}\"\n{}",
            op.join("data").display(),
            op.join("identity.key").display(),
            validators.ledger_section("operator", &gws, ("operator", &op))
        ),
    )
    .expect("operator config");
    let op_config = op_config.display().to_string();
    let file = |name: &str, text: &str| {
        let p = op.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };

    // Terms for the program from four days ago: 2.500 per kWh (the genesis says 1.500).
    let terms = file(
        "terms.toml",
        &format!(
            "program = \"peak-shave\"\nprice_milli_per_kwh = 2500\neffective = \"{}\"\n",
            days_ago(4)
        ),
    );
    let out = ok(&[
        "ledger", "publish", "--config", &op_config, "--terms", &terms,
    ])
    .await;
    assert!(out.contains("certified in"), "{out}");

    // An event 26 hours ago (an hour long, so a day has passed since its end) for gw-a and
    // gw-b, which neither reported on.
    let start = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(26 * 3600),
    )
    .to_string();
    let event = file(
        "old-1.toml",
        &format!(
            "id = \"old-1\"\nissuer = \"operator\"\nprogram = \"peak-shave\"\nstart = \"{start}\"\nduration = \"1h\"\nexpires = \"10m\"\ngateways = [\"gw-a\", \"gw-b\"]\n\n[[target]]\nload = \"pcs\"\nshed_kw = 10.0\n"
        ),
    );
    let signed = op.join("old-1.signed").display().to_string();
    let key = op.join("identity.key").display().to_string();
    ok(&["dr", "sign", "--key", &key, &event, "--out", &signed]).await;
    let out = ok(&[
        "ledger", "publish", "--config", &op_config, "--event", &signed,
    ])
    .await;
    assert!(out.contains("entry 1"), "{out}");

    // A third gateway joins by a change two validators approved: not enough, and publish
    // says so before anything is logged; with a third approval it is certified.
    let newcomer = sites[2].path();
    let change = op.join("add-gw-c.change").display().to_string();
    let add = format!("gw-c:gateway:{}", newcomer.join("identity.pub").display());
    ok(&[
        "ledger", "propose", "--id", "add-gw-c", "--add", &add, "--out", &change,
    ])
    .await;
    let validator_config = |i: usize| {
        validators
            .dir
            .path()
            .join(format!("v{i}/gridgate.toml"))
            .display()
            .to_string()
    };
    for i in 0..2 {
        let out = ok(&[
            "ledger",
            "approve",
            "--config",
            &validator_config(i),
            &change,
        ])
        .await;
        assert!(
            out.contains(&format!("{} of the 3 approvals", i + 1)),
            "{out}"
        );
    }
    let (code, out, err) = run_to_end(
        &[
            "ledger",
            "publish",
            "--config",
            &op_config,
            "--membership",
            &change,
        ],
        WAIT,
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("2 valid validator approvals, 3 needed"),
        "{err}"
    );
    ok(&[
        "ledger",
        "approve",
        "--config",
        &validator_config(2),
        &change,
    ])
    .await;

    // Before it is published, gw-c's member certificate is no member's.
    let gw_c_cert = newcomer.join("member.pem");
    let pem = gridgate_api::pki::member_cert(
        &validators.pki(),
        &newcomer.join("identity.pub"),
        "gw-c",
        &[],
    )
    .expect("certificate");
    std::fs::write(&gw_c_cert, pem).expect("write");
    let gw_c_key = newcomer.join("identity.key");
    let mut as_c = client_as(&validators, 1, &gw_c_cert, &gw_c_key).await;
    let refused = as_c
        .heads(pb::HeadsRequest {})
        .await
        .expect_err("not a member yet");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A replica watching the operator's log sees the change as it is stored.
    let mut watch = client_of(&validators, 3)
        .await
        .watch(pb::WatchRequest {
            origins: vec!["operator".into()],
        })
        .await
        .expect("watch")
        .into_inner();
    // And so does `gridgate ledger watch`, an operator's view of it.
    let mut follower = gridgate_tests::gridgate()
        .args([
            "ledger",
            "watch",
            "--config",
            &op_config,
            "--origin",
            "operator",
            "--validator",
            "v2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gridgate ledger watch");
    let mut followed = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().expect("stdout"),
    ));
    let header = tokio::time::timeout(Duration::from_secs(20), followed.next_line())
        .await
        .expect("the watch starts")
        .expect("read");
    assert!(
        header.is_some_and(|h| h.starts_with("# following what validator v2 certifies")),
        "watch did not start"
    );
    let out = ok(&[
        "ledger",
        "publish",
        "--config",
        &op_config,
        "--membership",
        &change,
    ])
    .await;
    assert!(out.contains("entry 2"), "{out}");
    let line = tokio::time::timeout(Duration::from_secs(20), followed.next_line())
        .await
        .expect("the change reaches gridgate ledger watch")
        .expect("read")
        .unwrap_or_default();
    assert!(
        line.starts_with("operator       2  ")
            && line.contains("3 votes  membership change add-gw-c: add [gw-c (gateway)]"),
        "{line}"
    );
    let _ = follower.kill().await;
    let seen = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the change reaches the watcher")
        .expect("stream")
        .expect("an entry");
    let seen = pb::Entry::decode(seen.entry.expect("entry").entry.as_slice()).expect("entry");
    assert_eq!((seen.origin.as_str(), seen.seq), ("operator", 2));
    assert_eq!(seen.kind, pb::EntryKind::Membership as i32);

    // Now every validator takes gw-c's calls and votes for its entries.
    let c_key = gridgate_core::Identity::load(&gw_c_key).expect("key");
    let entry = gridgate_ledger::entry::sign_entry(
        &pb::Entry {
            origin: "gw-c".into(),
            seq: 0,
            prev_hash: vec![0; 32],
            timestamp_ms: 1,
            kind: pb::EntryKind::BatchCommitment as i32,
            payload: gridgate_ledger::commitment::next(
                None,
                0,
                &[gridgate_ledger::merkle::leaf(b"batch 0")],
            )
            .encode_to_vec(),
        },
        &c_key,
    );
    for i in 0..4 {
        let mut client = client_as(&validators, i, &gw_c_cert, &gw_c_key).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // A validator the certificate was not pushed to learns it by anti-entropy.
            match client.submit(entry.clone()).await {
                Ok(r) if r.get_ref().vote.is_some() => break,
                other if tokio::time::Instant::now() >= deadline => {
                    panic!("validator v{i} never voted for gw-c: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    // Every validator's replica puts the change in force.
    let out = ok(&["ledger", "status", "--config", &op_config]).await;
    assert_eq!(
        out.matches("  membership: 8 member(s), changed since genesis: gw-c added")
            .count(),
        4,
        "{out}"
    );

    // An area's market terms, the same way; terms that make no sense are refused before
    // anything is logged.
    let market = file(
        "feeder-7.toml",
        "area = \"feeder-7\"\nfloor_milli_per_kwh = 400\ncap_milli_per_kwh = 1200\ntolerance_wh = 100\neffective = \"now\"\n",
    );
    let out = ok(&[
        "ledger",
        "publish",
        "--config",
        &op_config,
        "--market-terms",
        &market,
    ])
    .await;
    assert!(out.contains("certified in"), "{out}");
    let upside_down = file(
        "upside-down.toml",
        "area = \"feeder-7\"\nfloor_milli_per_kwh = 1200\ncap_milli_per_kwh = 400\neffective = \"now\"\n",
    );
    let (code, out, err) = run_to_end(
        &[
            "ledger",
            "publish",
            "--config",
            &op_config,
            "--market-terms",
            &upside_down,
        ],
        WAIT,
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("0 <= floor <= cap"), "{err}");

    // The operator's log, as the validators hold it.
    let out = ok(&[
        "ledger", "log", "--config", &op_config, "--origin", "operator",
    ])
    .await;
    assert!(
        out.contains("program terms peak-shave: 2500 milli/kWh"),
        "{out}"
    );
    assert!(
        out.contains("market terms feeder-7: 400..1200 milli/kWh, tolerance 100 Wh, 30 rounds, 900 s intervals"),
        "{out}"
    );
    assert!(
        out.contains("DR event operator/old-1 program peak-shave"),
        "{out}"
    );
    assert!(out.contains("for gw-a, gw-b"), "{out}");
    assert!(
        out.contains("membership change add-gw-c: add [gw-c (gateway)]"),
        "{out}"
    );

    // The event's day: both named gateways missed it, on every validator alike; gw-c is a
    // member in good standing.
    let out = ok(&[
        "ledger",
        "settlement",
        "--config",
        &op_config,
        "--day",
        &start[..10],
    ])
    .await;
    for g in ["gw-a", "gw-b"] {
        assert!(
            out.lines().any(
                |l| l.starts_with(&format!("event operator old-1 gateway {g} "))
                    && l.ends_with(" missed")
            ),
            "{out}"
        );
        assert!(out.contains(&format!("member {g} score 450 ")), "{out}");
    }
    assert!(out.contains("member gw-c score 500 "), "{out}");
    let statements: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("validator "))
        .filter_map(|l| l.split("statement ").nth(1))
        .collect();
    assert_eq!(statements.len(), 4, "{out}");
    assert!(statements.iter().all(|h| *h == statements[0]), "{out}");
    assert!(
        out.contains("provisional: the statement closes on the first decided cut at or after"),
        "{out}"
    );
    // A period of several days says the same of the event.
    let later = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(2 * 86_400),
    )
    .to_string();
    let period = format!("{}..{}", &start[..10], &later[..10]);
    let out = ok(&[
        "ledger",
        "settlement",
        "--config",
        &op_config,
        "--period",
        &period,
    ])
    .await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("event operator old-1 gateway gw-a ") && l.ends_with(" missed")),
        "{out}"
    );
    for (i, v) in running.into_iter().enumerate() {
        let log = validators.dir.path().join(format!("v{i}/gridgate.log"));
        let code = v.stop().await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        assert_eq!(code, Some(0), "v{i}: {tail:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_station_proves_pulled_batches_against_the_certified_commitments() {
    let validators = Validators::new(4);
    let (_sims, site, config) = plant().await;
    let d = site.dir.path().to_path_buf();
    keygen(&d);
    let me = ("plant", d.as_path());
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(validators.start(i, &[me]).await);
    }
    // Batches close every 200 ms and are committed three at a time.
    let config = format!(
        "{config}\n[store]\nbatch_interval = \"200ms\"\n{}",
        validators.ledger_section("gateway", &[me], me).replace(
            "role = \"gateway\"\n",
            "role = \"gateway\"\ncommit_batches = 3\n"
        )
    );
    let gw = Gateway::start_logged(&d, &config).await;
    wait_for_port(site.port).await;
    let gw_config = d.join("gridgate.toml").display().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, _) = run_to_end(
            &["ledger", "log", "--config", &gw_config, "--origin", "plant"],
            WAIT,
        )
        .await;
        if code == 0 && out.matches("  batches ").count() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw two certified commitments:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The master station pulls the first six batches, verified, as it always does.
    let pulled = tempfile::tempdir().expect("dir");
    let pulled_dir = pulled.path().display().to_string();
    let (code, out, err) = run_to_end(
        &[
            "pull",
            "--endpoint",
            &format!("https://localhost:{}", site.port),
            "--ca",
            &site.path("pki/ca.pem"),
            "--cert",
            &site.path("pki/client-master.pem"),
            "--key",
            &site.path("pki/client-master.key"),
            "--consumer",
            "auditor",
            "--from",
            "0",
            "--max",
            "6",
            "--out",
            &pulled_dir,
        ],
        WAIT,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");

    // The second commitment extends the first (its consistency proof); the batches each
    // added grow the tree to its certified root; batch 4 is leaf 4 of the tree of six.
    let prove = |what: [String; 2]| {
        let (config, dir) = (gw_config.clone(), pulled_dir.clone());
        async move {
            run_to_end(
                &[
                    "ledger",
                    "prove",
                    "--config",
                    &config,
                    "--gateway",
                    "plant",
                    "--batches",
                    &dir,
                    &what[0],
                    &what[1],
                ],
                WAIT,
            )
            .await
        }
    };
    let batch4 = || ["--batch".to_string(), "4".to_string()];
    let (code, out, err) = prove(batch4()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 signed batch(es)"), "{out}");
    assert!(
        out.contains("entry 1 extends entry 0: its consistency proof checks"),
        "{out}"
    );
    for range in ["batches 0..3 ", "batches 3..6 "] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(range) && l.ends_with(" matches")),
            "{range}: {out}"
        );
    }
    assert!(
        out.lines().any(
            |l| l.starts_with("batch 4: leaf 4 of 6 in the tree of entry 1")
                && l.ends_with(": included")
        ),
        "{out}"
    );

    // One reading: found in its batch, and that batch proved.
    let file = pulled.path().join("batch-0000000004.pb");
    let signed = {
        use prost::Message;
        gridgate_proto::v1::SignedBatch::decode(std::fs::read(&file).expect("batch").as_slice())
            .expect("signed batch")
    };
    let reading = {
        use prost::Message;
        gridgate_proto::v1::Batch::decode(signed.batch.as_slice())
            .expect("batch")
            .readings
            .pop()
            .expect("a reading")
    };
    let spec = format!("{}@{}", reading.point, reading.ts_ms);
    let (code, out, err) = prove(["--reading".into(), spec.clone()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("reading {spec}: reading ")), "{out}");
    assert!(out.contains(" of batch 4 (signed by plant)"), "{out}");
    assert!(out.contains(": included"), "{out}");

    // A batch changed after the pull is not the gateway's, and proves nothing.
    let mut bytes = std::fs::read(&file).expect("batch");
    let last = bytes.len() - 70;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).expect("write");
    let (code, out, _) = prove(batch4()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("its signature is not the gateway's"), "{out}");
    assert!(
        out.contains("batches 3..6 ") && out.contains("2 of 3 here"),
        "{out}"
    );
    assert!(out.contains("batch 4: not proved"), "{out}");

    assert_eq!(gw.stop().await, Some(0));
    for v in running {
        assert_eq!(v.stop().await, Some(0));
    }
}
