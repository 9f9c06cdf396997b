//! The ledger part of `gridgate demo`: a consortium of four validators (f = 1) run in this
//! process beside the demo gateway, each a full [`gridgate_app::Pipeline`] with its own
//! store, key and gRPC listener over mutual TLS, and gridgate-node's consensus deciding cuts
//! over their P2P listeners, so that the whole way (a DR event, the gateway's signed
//! performance report, its certificate, the settlement; the market's rounds and clearing)
//! is visible on one machine.

use std::path::{Path, PathBuf};

use gridgate_app::Pipeline;
use gridgate_node::engine::Running;
use gridgate_node::validator::Validator;

use super::DemoError;
use gridgate_core::Identity;
use gridgate_ledger_node::tables::LedgerStore;

/// Validators in the demo's consortium.
pub const VALIDATORS: usize = 4;

/// A member of the demo's consortium other than its validators.
pub struct Member {
    /// Its id.
    pub id: String,
    /// `gateway` or `operator`.
    pub role: &'static str,
    /// Its public key file.
    pub public_key: PathBuf,
}

/// The demo consortium's files, ports and members.
pub struct Consortium {
    dir: PathBuf,
    /// Each validator's gRPC port and consensus (P2P) port.
    ports: Vec<(u16, u16)>,
    others: Vec<Member>,
}

/// A running validator: its pipeline (ledger parts, gRPC) and its consensus thread.
pub struct RunningValidator {
    /// The validator's parts.
    pub pipeline: Pipeline,
    consensus: Running,
}

impl RunningValidator {
    /// Stops consensus, then the pipeline.
    pub async fn stop(self) -> Result<(), String> {
        let consensus = self.consensus;
        let stopped = tokio::task::spawn_blocking(move || consensus.stop()).await;
        let pipeline = self.pipeline.stop().await;
        match stopped {
            Ok(Ok(())) => pipeline.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("consensus thread: {e}")),
        }
    }
}

impl Consortium {
    /// Makes the consortium's PKI and the validators' keys in `work/consortium`, and picks
    /// their ports; `others` are the members besides the validators.
    pub fn prepare(work: &Path, others: Vec<Member>) -> Result<Consortium, DemoError> {
        let dir = work.join("consortium");
        gridgate_api::pki::make_site_pki(&dir.join("pki"), "demo-consortium", &[])?;
        let mut ports = Vec::new();
        for i in 0..VALIDATORS {
            let d = dir.join(format!("v{i}"));
            std::fs::create_dir_all(&d)?;
            Identity::generate()
                .and_then(|k| k.save(&d.join("identity.key"), &d.join("identity.pub")))?;
            ports.push((super::free_port()?, super::free_port()?));
        }
        Ok(Consortium { dir, ports, others })
    }

    /// `[ledger]` for the node `node` (its id and identity key: the member certificate of
    /// that key, issued here, is its TLS client identity) of `role`.
    pub fn ledger_section(&self, role: &str, node: (&str, &Path)) -> Result<String, DemoError> {
        let pki = self.dir.join("pki");
        let cert = self.dir.join(format!("{}-member.pem", node.0));
        let pem = gridgate_api::pki::member_cert(&pki, &node.1.with_extension("pub"), node.0, &[])?;
        std::fs::write(&cert, pem)?;
        let mut members = String::new();
        for (i, (grpc, p2p)) in self.ports.iter().enumerate() {
            members.push_str(&format!(
                "  {{ id = \"v{i}\", role = \"validator\", public_key = \"{}\", endpoint = \"https://localhost:{grpc}\", consensus = \"127.0.0.1:{p2p}\" }},\n",
                self.dir.join(format!("v{i}/identity.pub")).display()
            ));
        }
        for m in &self.others {
            members.push_str(&format!(
                "  {{ id = \"{}\", role = \"{}\", public_key = \"{}\" }},\n",
                m.id,
                m.role,
                m.public_key.display()
            ));
        }
        Ok(format!(
            "\n[ledger]\nrole = \"{role}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nmembers = [\n{members}]\n\n[[ledger.program]]\nname = \"demo\"\nprice_milli_per_kwh = 1500\n",
            ca = pki.join("ca.pem").display(),
            cert = cert.display(),
            key = node.1.display(),
        ))
    }

    /// Starts the validators, each a pipeline with only its gRPC API and its ledger, and
    /// consensus beside it.
    pub async fn start(&self) -> Result<Vec<RunningValidator>, DemoError> {
        let pki = self.dir.join("pki");
        let mut running = Vec::new();
        for (i, (grpc, p2p)) in self.ports.iter().enumerate() {
            let d = self.dir.join(format!("v{i}"));
            let text = format!(
                "[gateway]\nid = \"v{i}\"\ndata_dir = \"{data}\"\nidentity = \"{key}\"\n\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\ncert_file = \"{pki}/server.pem\"\nkey_file = \"{pki}/server.key\"\nclient_ca_file = \"{pki}/ca.pem\"\n{ledger}\n[ledger.consensus]\nlisten = \"127.0.0.1:{p2p}\"\n",
                data = d.join("data").display(),
                key = d.join("identity.key").display(),
                pki = pki.display(),
                ledger =
                    self.ledger_section("validator", (&format!("v{i}"), &d.join("identity.key")))?,
            );
            let cfg = gridgate_config::parse(&text, Path::new("<demo validator>"))?;
            let validator = Validator::from_config(&cfg, "<demo validator>")
                .map_err(|e| DemoError::Consensus(format!("{e:#}")))?;
            let identity = Identity::load(&d.join("identity.key"))?;
            let pipeline = Pipeline::start(&cfg, identity, None).await?;
            let shared = pipeline.shared();
            let consensus = validator
                .start(shared.store.store.clone(), shared.instruments.clone())
                .map_err(|e| DemoError::Consensus(e.to_string()))?;
            running.push(RunningValidator {
                pipeline,
                consensus,
            });
        }
        Ok(running)
    }
}

/// The unit the demo's programs are priced in (the ledger counts thousandths of whatever
/// currency the consortium settles in).
const CURRENCY: &str = "CNY";

/// One line on the demo gateway's own ledger log, and the settlement of today once a claim
/// is certified (then `true`); `None` before anything was logged.
pub fn status_line(
    store: &gridgate_store::Store,
    cfg: &gridgate_config::GatewayConfig,
) -> Option<(String, bool)> {
    let l = cfg.ledger.as_ref()?;
    let certified = store.ledger().next_certified(&cfg.id).ok()?;
    let pending = store.ledger().pending_count(&cfg.id).ok()?;
    if certified + pending == 0 {
        return None;
    }
    let mut line = format!(
        "ledger: {certified} own entr{} certified by the {VALIDATORS} validators, {pending} waiting",
        if certified == 1 { "y" } else { "ies" }
    );
    let s = gridgate_ledger_node::today(store, l, gridgate_core::reading::now_ms())?;
    let paid = s.lines.iter().find(|x| x.gateway == cfg.id);
    if let Some(paid) = paid {
        line.push_str(&format!(
            "; settlement of today: {} delivered {:.3} kWh, paid {:.3} {CURRENCY} (statement {})",
            paid.event_id,
            paid.delivered_mwh as f64 / 1_000_000.0,
            s.lines.iter().map(|x| x.payment_milli).sum::<i64>() as f64 / 1000.0,
            &hex::encode(s.hash())[..16]
        ));
    }
    Some((line, paid.is_some()))
}
