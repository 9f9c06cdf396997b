//! The DR part of `gridgate demo`: an operator key and a site PKI made for the demo, a load
//! bound to a simulated plant device, and one signed event sent over the gateway's own
//! gRPC API (mutual TLS, operator role) after a delay, as a DR operator would send it.

use std::path::Path;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use gridgate_proto::v1::demand_response_client::DemandResponseClient;
use prost::Message;

use gridgate_core::Identity;

use super::DemoError;
use gridgate_dr::tables::DrStore;
use gridgate_store::Store;

/// The demo's load: the simulated plant's first unit (55 kW), on its setpoint register.
pub const LOAD: &str = "plant-pcs";

/// Makes the operator key and the PKI in `work` and returns the config text to append
/// (`[grpc]` on `port`, `[dr]`, `[[load]]`).
pub fn prepare(work: &Path, port: u16) -> Result<String, DemoError> {
    let operator = Identity::generate()?;
    operator.save(&work.join("operator.key"), &work.join("operator.pub"))?;
    gridgate_api::pki::make_site_pki(&work.join("pki"), "demo-site", &[])?;
    Ok(format!(
        r#"
[grpc]
listen = "127.0.0.1:{port}"
cert_file = "{pki}/server.pem"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.pem"

[dr]
issuers = [{{ name = "demo-operator", public_key = "{op}" }}]

[[load]]
name = "{LOAD}"
meter = "plant-unit1/active_power"
control = "plant-unit1/setpoint"
rated_kw = 55.0
min_setpoint = 0.0
max_setpoint = 100.0
"#,
        pki = work.join("pki").display(),
        op = work.join("operator.pub").display(),
    ))
}

/// Signs and dispatches the demo's event (shed 27.5 of 55 kW for `length`) over the
/// gateway's API; returns the gateway's answer as a sentence.
pub async fn dispatch(work: &Path, port: u16, length: Duration) -> Result<String, String> {
    let operator = Identity::load(&work.join("operator.key")).map_err(|e| e.to_string())?;
    let pki = work.join("pki");
    let channel = crate::tools::pull::connect(
        &format!("https://127.0.0.1:{port}"),
        Some(&pki.join("ca.pem")),
        Some(&pki.join("client-operator.pem")),
        Some(&pki.join("client-operator.key")),
    )
    .await
    .map_err(|e| e.to_string())?;
    let now = gridgate_core::reading::now_ms();
    let event = pb::DrEvent {
        id: format!("demo-{now}"),
        issuer: "demo-operator".into(),
        program: "demo".into(),
        targets: vec![pb::LoadTarget {
            load: LOAD.into(),
            action: Some(pb::load_target::Action::ShedKw(27.5)),
        }],
        start_ms: 0,
        duration_s: length.as_secs().max(1) as u32,
        expires_ms: now + 60_000,
        issued_ms: now,
        ..Default::default()
    };
    let reply = DemandResponseClient::new(channel)
        .dispatch(gridgate_core::signed::sign_event(&event, &operator))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok(if reply.accepted {
        format!(
            "DR event {} dispatched (shed 27.5 kW of {LOAD} for {} s): accepted",
            event.id, event.duration_s
        )
    } else {
        format!("DR event {} refused: {}", event.id, reply.detail)
    })
}

/// One line on the latest DR event in `store`, or `None` when there is none.
pub fn status_line(store: &Store) -> Option<String> {
    let records = store.dr().events().ok()?;
    let (key, status) = records
        .iter()
        .filter_map(|(k, b)| Some((k, pb::EventStatus::decode(b.as_slice()).ok()?)))
        .max_by_key(|(_, s)| s.accepted_ms)?;
    let state = pb::EventState::try_from(status.state).map_or("unknown", |s| {
        s.as_str_name().trim_start_matches("EVENT_STATE_")
    });
    let loads: Vec<String> = status
        .loads
        .iter()
        .map(|l| {
            let ls = pb::LoadState::try_from(l.state).map_or("unknown", |s| {
                s.as_str_name().trim_start_matches("LOAD_STATE_")
            });
            match l.previous {
                Some(p) if l.acknowledged_ms > 0 => format!(
                    "{} {ls} (setpoint {} was {p}, in {} ms)",
                    l.load, l.target, l.latency_ms
                ),
                _ => format!("{} {ls}", l.load),
            }
        })
        .collect();
    let report = store
        .dr()
        .report(key)
        .ok()
        .flatten()
        .and_then(|b| pb::SignedPerformanceReport::decode(b.as_slice()).ok())
        .and_then(|s| pb::PerformanceReport::decode(s.report.as_slice()).ok())
        .map_or(String::new(), |r| {
            format!(
                "; signed report: {:.1} kW off on average against the {} baseline",
                gridgate_dr::report::mean_reduction_w(&r) as f64 / 1000.0,
                pb::BaselineMethod::try_from(r.baseline).map_or("?", |m| {
                    m.as_str_name().trim_start_matches("BASELINE_METHOD_")
                })
            )
        });
    Some(format!("DR {state}: {}{report}", loads.join(", ")))
}
