//! Loads commanded over MQTT: one client on the `[ingest]` broker publishes each command on
//! the load's command topic and waits for the device's acknowledgement on its ack topic.
//!
//! Command (QoS 1): `{"id": "site-042-17", "value": 50.0}`. Acknowledgement, echoing the id:
//! `{"id": "site-042-17", "ok": true, "value": 50.0, "previous": 100.0}`, or
//! `{"id": "site-042-17", "ok": false, "error": "why"}`. `value` is what the device now runs
//! at, `previous` what it ran at before (what the end of an event restores). An
//! acknowledgement that does not come within the load's `ack_timeout` is a failed write:
//! the relay retries it with backoff, as it does a Modbus write that is not read back.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::request::{CommandRequest, ControlError, ControlOutcome};
use gridgate_config::dr::Control;
use gridgate_config::{GatewayConfig, MqttBroker};

/// Commands that may wait for the connection.
pub const COMMAND_QUEUE: usize = 64;

/// A device's acknowledgement.
#[derive(Debug, Deserialize)]
struct Ack {
    id: String,
    ok: bool,
    value: Option<f64>,
    previous: Option<f64>,
    #[serde(default)]
    error: String,
}

/// Reads an acknowledgement against the command it answers.
fn outcome(ack: &Ack, load: &str, value: f64) -> Result<ControlOutcome, ControlError> {
    let device = |error: String| ControlError::Device {
        point: load.to_string(),
        error,
    };
    if !ack.ok {
        return Err(device(format!(
            "the device refused the command: {}",
            ack.error
        )));
    }
    let confirmed = ack.value.unwrap_or(value);
    if (confirmed - value).abs() > 1e-6 * value.abs().max(1.0) {
        return Err(ControlError::NotConfirmed {
            point: load.to_string(),
            wrote: value,
            read: confirmed,
            previous: ack.previous.filter(|p| p.is_finite()),
        });
    }
    let previous = ack.previous.filter(|p| p.is_finite()).ok_or_else(|| {
        device("the acknowledgement does not say the previous value (\"previous\"), which the end of the event restores".into())
    })?;
    Ok(ControlOutcome {
        previous,
        confirmed,
    })
}

fn ack_topics(cfg: &GatewayConfig) -> BTreeSet<String> {
    cfg.loads
        .iter()
        .filter_map(|l| match &l.control {
            Some(Control::Mqtt(m)) => Some(m.ack_topic.clone()),
            _ => None,
        })
        .collect()
}

/// Where the commander connects: the `[ingest]` broker, as its own client.
#[derive(Debug, Clone, PartialEq)]
struct Connection {
    broker: MqttBroker,
    client_id: String,
    credentials: Option<(String, String)>,
}

fn broker_of(cfg: &GatewayConfig) -> Option<Connection> {
    let i = cfg.ingest.as_ref()?;
    Some(Connection {
        broker: i.broker.clone()?,
        client_id: format!("{}-dr", i.client_id),
        credentials: i.username.clone().zip(i.password.clone()),
    })
}

struct Waiting {
    load: String,
    value: f64,
    deadline: Instant,
    reply: oneshot::Sender<Result<ControlOutcome, ControlError>>,
}

/// Runs the commander until `cancel` fires, following the config (a reload that changes
/// the broker reconnects; one that adds loads subscribes their ack topics).
pub async fn run(
    mut config: watch::Receiver<Arc<GatewayConfig>>,
    mut requests: mpsc::Receiver<CommandRequest>,
    cancel: CancellationToken,
) {
    let mut next_id: u64 = 0;
    let mut backoff = Duration::from_millis(200);
    loop {
        let cfg = config.borrow_and_update().clone();
        let Some(conn) = broker_of(&cfg).filter(|_| !ack_topics(&cfg).is_empty()) else {
            // Nothing to command: refuse what comes until the config changes.
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = config.changed() => if r.is_err() { return },
                Some(req) = requests.recv() => {
                    let _ = req.reply.send(Err(ControlError::BusGone(format!(
                        "{} (no [ingest] broker to command it over)", req.control.load
                    ))));
                }
            }
            continue;
        };
        let broker = conn.broker.clone();
        let creds = conn
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let opts = match crate::broker::options(
            &broker,
            &conn.client_id,
            Duration::from_secs(30),
            creds,
        ) {
            Ok(o) => o,
            Err(e) => {
                warn!(broker = %broker, "DR commands cannot set up their MQTT connection: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = config.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                continue;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(opts, COMMAND_QUEUE);
        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let lost = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = config.borrow_and_update().clone();
                    if broker_of(&new).as_ref() != Some(&conn) {
                        break "the config changed the broker".to_string();
                    }
                    for t in ack_topics(&new).difference(&subscribed.clone()) {
                        if client.try_subscribe(t.clone(), QoS::AtLeastOnce).is_ok() {
                            subscribed.insert(t.clone());
                        }
                    }
                }
                Some(req) = requests.recv() => {
                    next_id += 1;
                    let id = format!("{}-{next_id}", cfg.id);
                    let body = serde_json::json!({ "id": id, "value": req.value }).to_string();
                    debug!(load = %req.control.load, topic = %req.control.command_topic, %body, "DR command");
                    match client.try_publish(req.control.command_topic.clone(), QoS::AtLeastOnce, false, body) {
                        Ok(()) => {
                            waiting.insert(id, Waiting {
                                load: req.control.load.clone(),
                                value: req.value,
                                deadline: Instant::now() + req.control.ack_timeout,
                                reply: req.reply,
                            });
                        }
                        Err(e) => {
                            let _ = req.reply.send(Err(ControlError::Device {
                                point: req.control.load,
                                error: format!("cannot publish the command: {e}"),
                            }));
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let late: Vec<String> = waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(k, _)| k.clone()).collect();
                    for id in late {
                        if let Some(w) = waiting.remove(&id) {
                            let _ = w.reply.send(Err(ControlError::Device {
                                point: w.load,
                                error: format!("no acknowledgement of command {id}"),
                            }));
                        }
                    }
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(200);
                        subscribed.clear();
                        let topics = ack_topics(&config.borrow());
                        info!(broker = %broker, ack_topics = ?topics, "DR commands connected");
                        for t in topics {
                            if client.try_subscribe(t.clone(), QoS::AtLeastOnce).is_ok() {
                                subscribed.insert(t);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match serde_json::from_slice::<Ack>(&p.payload) {
                            Ok(ack) => match waiting.remove(&ack.id) {
                                Some(w) => {
                                    let _ = w.reply.send(outcome(&ack, &w.load, w.value));
                                }
                                None => debug!(topic = %p.topic, id = %ack.id, "acknowledgement of no waiting command (late or repeated)"),
                            },
                            Err(e) => warn!(topic = %p.topic, "malformed DR acknowledgement ignored: {e}"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                },
            }
        };
        for (id, w) in waiting.drain() {
            let _ = w.reply.send(Err(ControlError::Device {
                point: w.load,
                error: format!("connection lost before command {id} was acknowledged"),
            }));
        }
        warn!(broker = %broker, retry_in = ?backoff, "DR command connection lost: {lost}");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(text: &str) -> Ack {
        serde_json::from_str(text).expect("ack")
    }

    #[test]
    fn an_acknowledgement_confirms_only_the_value_commanded_with_its_previous_value() {
        let good = ack(r#"{"id":"g-1","ok":true,"value":50.0,"previous":100.0}"#);
        assert_eq!(
            outcome(&good, "ev", 50.0),
            Ok(ControlOutcome {
                previous: 100.0,
                confirmed: 50.0
            })
        );
        let other = ack(r#"{"id":"g-1","ok":true,"value":40.0,"previous":100.0}"#);
        assert!(matches!(
            outcome(&other, "ev", 50.0),
            Err(ControlError::NotConfirmed { .. })
        ));
        let refused = ack(r#"{"id":"g-1","ok":false,"error":"local mode"}"#);
        assert!(
            matches!(outcome(&refused, "ev", 50.0), Err(ControlError::Device { error, .. }) if error.contains("local mode"))
        );
        let silent = ack(r#"{"id":"g-1","ok":true,"value":50.0}"#);
        assert!(
            matches!(outcome(&silent, "ev", 50.0), Err(ControlError::Device { error, .. }) if error.contains("previous"))
        );
    }
}
