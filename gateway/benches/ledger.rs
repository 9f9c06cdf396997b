//! Ledger throughput: four validators (f = 1), each a real `Ledger` gRPC service on its own
//! redb store on loopback, and a gateway whose certifier gets ENTRIES pending entries of its
//! own log certified (the catch-up of a gateway that was offline); then the latency of one
//! validator's vote (Submit: checks, durable vote lock, signature) over many fresh origins.
//!
//!     cargo bench -p gridgate --bench ledger [-- ENTRIES]
//!
//! ENTRIES defaults to 2000; the catch-up figure is `-- 100000`.
// A bench stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridgate_api::ledger::LedgerService;
use gridgate_config::ledger::{LedgerConfig, LedgerRole, MemberConfig};
use gridgate_core::Identity;
use gridgate_ledger::entry::{Member, Members, sign_entry};
use gridgate_ledger_node::node::VoteForm;
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_proto::v1 as pb;
use gridgate_proto::v1::ledger_client::LedgerClient;
use gridgate_proto::v1::ledger_server::LedgerServer;
use gridgate_store::Store;
use prost::Message;

const VALIDATORS: usize = 4;
/// Fresh origins for the vote-latency samples.
const LATENCY_SAMPLES: usize = 300;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn payload() -> Vec<u8> {
    pb::SignedPerformanceReport {
        report: vec![7; 200],
        signature: vec![0; 64],
    }
    .encode_to_vec()
}

/// What one consortium measured.
struct Measured {
    appended: f64,
    certified_s: f64,
    rate: f64,
    p50: f64,
    p99: f64,
}

#[tokio::main]
async fn main() {
    let entries: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    println!(
        "ledger: {VALIDATORS} validators (quorum 3) on loopback, each a gRPC service on its own redb store"
    );
    // Side by side in one run: validators that sign one vote per entry, then one per window.
    let per_entry = measure(entries, VoteForm::PerEntry).await;
    let window = measure(entries, VoteForm::Window).await;
    for (name, m) in [
        ("one vote per entry", &per_entry),
        ("window votes", &window),
    ] {
        println!("{name}:");
        println!(
            "  append {entries} own entries (signed, durable): {:.0} entries/s",
            m.appended
        );
        println!(
            "  certify the backlog of {entries} (votes from each, certificate stored, pushed to each): {:.1} s, {:.0} certified entries/s",
            m.certified_s, m.rate
        );
        println!(
            "  vote latency (one Submit, {LATENCY_SAMPLES} samples): p50 {:.2} ms, p99 {:.2} ms",
            m.p50, m.p99
        );
    }
    println!(
        "window votes / one vote per entry: {:.2}x certified entries/s",
        window.rate / per_entry.rate
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tledger.certified_per_s\t{:.0}\tentries/s\thigher\t{:.0}\t{:.3}\tvalue>=5000",
        window.rate,
        per_entry.rate,
        window.rate / per_entry.rate
    );
    println!(
        "result\tledger.vote_p99_ms\t{:.2}\tms\tlower\t-\t-\t-",
        window.p99
    );
}

async fn measure(entries: u64, form: VoteForm) -> Measured {
    let dir = tempfile::tempdir().expect("dir");
    let gw_key = Identity::generate().expect("key");
    let keys: Vec<Identity> = (0..VALIDATORS)
        .map(|_| Identity::generate().expect("key"))
        .collect();
    let probes: Vec<Identity> = (0..LATENCY_SAMPLES)
        .map(|_| Identity::generate().expect("key"))
        .collect();
    let mut members = Members::default();
    let mut member = |id: String, role, key: &Identity| {
        members.0.insert(
            id.clone(),
            Member {
                id,
                role,
                key: key.public(),
                removed: false,
            },
        );
    };
    for (i, k) in keys.iter().enumerate() {
        member(format!("v{i}"), pb::MemberRole::Validator, k);
    }
    member("gw".into(), pb::MemberRole::Gateway, &gw_key);
    for (i, k) in probes.iter().enumerate() {
        member(format!("probe-{i}"), pb::MemberRole::Gateway, k);
    }
    let state = Arc::new(gridgate_ledger_node::state::LedgerState::new(members));

    // Four validators, each with its own store and port.
    let mut ports = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let store = Arc::new(
            Store::open(&dir.path().join(format!("v{i}")), &format!("v{i}")).expect("store"),
        );
        let service = LedgerService {
            store,
            state: Arc::new(gridgate_ledger_node::state::LedgerState::new(
                state.genesis().clone(),
            )),
            me: format!("v{i}"),
            key: key.clone(),
            role: LedgerRole::Validator,
            // Plain HTTP on loopback: this measures signatures and storage, not TLS.
            callers: gridgate_api::ledger::Callers::Unchecked,
            shutdown: Default::default(),
            vote_form: form,
        };
        let port = common::free_port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LedgerServer::new(service))
                .serve(addr),
        );
        ports.push(port);
    }

    // The gateway's backlog, appended as it would be while offline.
    let gw_store = Arc::new(Store::open(&dir.path().join("gw"), "gw").expect("store"));
    let started = Instant::now();
    for n in 0..entries {
        gridgate_ledger_node::certifier::append(
            &gw_store,
            "gw",
            &gw_key,
            &format!("claim-{n}"),
            pb::EntryKind::PerformanceReport,
            payload(),
        )
        .expect("append");
    }
    let appended = started.elapsed();

    let cfg = LedgerConfig {
        role: LedgerRole::Gateway,
        members: (0..VALIDATORS)
            .map(|i| MemberConfig {
                id: format!("v{i}"),
                role: "validator".into(),
                public_key: Default::default(),
                endpoint: Some(format!("http://127.0.0.1:{}", ports[i])),
                consensus: None,
            })
            .collect(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        commit_batches: 0,
        terms: Default::default(),
        consensus: None,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let certifier = gridgate_ledger_node::certifier::Certifier {
        store: gw_store.clone(),
        state: state.clone(),
        me: "gw".into(),
        key: gw_key.clone(),
        wake: Arc::default(),
    };
    let started = Instant::now();
    let task = tokio::spawn(gridgate_ledger_node::certifier::run(
        certifier,
        cfg,
        cancel.clone(),
    ));
    loop {
        let done = gw_store.ledger().next_certified("gw").expect("head");
        if done >= entries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let certified = started.elapsed();
    cancel.cancel();
    let _ = task.await;

    // Vote latency: one Submit to one validator, each for a fresh origin's first entry.
    let mut client = LedgerClient::connect(format!("http://127.0.0.1:{}", ports[0]))
        .await
        .expect("connect");
    let mut lat = Vec::new();
    for (i, k) in probes.iter().enumerate() {
        let signed = sign_entry(
            &pb::Entry {
                origin: format!("probe-{i}"),
                seq: 0,
                prev_hash: vec![0; 32],
                timestamp_ms: 1,
                kind: pb::EntryKind::PerformanceReport as i32,
                payload: payload(),
            },
            k,
        );
        let t = Instant::now();
        let reply = client.submit(signed).await.expect("submit").into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(reply.vote.is_some(), "{reply:?}");
    }
    lat.sort_by(f64::total_cmp);
    Measured {
        appended: entries as f64 / appended.as_secs_f64(),
        certified_s: certified.as_secs_f64(),
        rate: entries as f64 / certified.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}
