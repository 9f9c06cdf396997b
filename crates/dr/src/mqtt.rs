//! DR over the master station's MQTT broker (the `[uplink]` broker): signed events and
//! cancels arrive on `[dr] command_topic` as `gridgate.v1.DrCommand` and get the same checks
//! and the same answer (`DispatchReply` on the reply topic) as over gRPC; signed
//! performance reports go out retained on `<report_topic>/<issuer>/<event id>`, so a
//! master station that subscribes later still gets each one. After a reconnect the reports
//! of the last day are published again (same bytes, same topic: harmless).

use std::sync::Arc;
use std::time::Duration;

use gridgate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desk::Desk;
use crate::tables::DrStore;
use gridgate_config::{DrConfig, UplinkConfig};
use gridgate_core::reading::now_ms;

/// Reports published again after a reconnect: those of events that ended this recently.
const REPUBLISH_WITHIN_MS: i64 = 86_400_000;

/// The retained topic of one event's report.
pub fn report_topic(dr: &DrConfig, issuer: &str, event_id: &str) -> String {
    format!("{}/{issuer}/{event_id}", dr.report_topic)
}

/// Decides one command message (a payload that is not a `DrCommand` is refused as malformed).
async fn decide(desk: &Desk, payload: &[u8]) -> pb::DispatchReply {
    let refused = |detail: String| pb::DispatchReply {
        accepted: false,
        refusal: pb::Refusal::Malformed as i32,
        detail,
        event_id: String::new(),
    };
    let command = match pb::DrCommand::decode(payload) {
        Ok(c) => c.command,
        Err(e) => return refused(format!("not a gridgate.v1.DrCommand: {e}")),
    };
    let outcome = match command {
        Some(pb::dr_command::Command::Event(e)) => desk.dispatch(e).await,
        Some(pb::dr_command::Command::Cancel(c)) => desk.cancel(c).await,
        None => return refused("the DrCommand carries neither an event nor a cancel".into()),
    };
    outcome.unwrap_or_else(|e| pb::DispatchReply {
        accepted: false,
        refusal: pb::Refusal::Unspecified as i32,
        detail: format!("not decided, send it again: {e}"),
        event_id: String::new(),
    })
}

/// Publishes the stored reports of events that ended within `within_ms`.
async fn publish_recent(desk: &Desk, dr: &DrConfig, client: &AsyncClient, within_ms: i64) {
    let Ok(records) = desk.store.run(|store| store.dr().events()).await else {
        warn!("DR reports: cannot read the events to publish their reports");
        return;
    };
    let since = now_ms() - within_ms;
    for (key, bytes) in records {
        let Ok(status) = pb::EventStatus::decode(bytes.as_slice()) else {
            continue;
        };
        if status.reported && status.end_ms >= since {
            publish_report(desk, dr, client, &key, &status).await;
        }
    }
}

async fn publish_report(
    desk: &Desk,
    dr: &DrConfig,
    client: &AsyncClient,
    key: &str,
    status: &pb::EventStatus,
) {
    let Some(event) = status
        .signed
        .as_ref()
        .and_then(|s| pb::DrEvent::decode(s.event.as_slice()).ok())
    else {
        return;
    };
    let k = key.to_string();
    let Ok(Some(report)) = desk.store.run(move |store| store.dr().report(&k)).await else {
        return;
    };
    let topic = report_topic(dr, &event.issuer, &event.id);
    // try_: the caller polls the connection; waiting on a full queue here would stall it.
    match client.try_publish(topic.clone(), QoS::AtLeastOnce, true, report) {
        Ok(()) => info!(event = %event.id, %topic, "DR performance report published"),
        Err(e) => warn!(event = %event.id, "cannot publish the DR report: {e}"),
    }
}

/// Runs until `cancel` fires, reconnecting with backoff.
pub async fn run(
    desk: Desk,
    uplink: UplinkConfig,
    dr: DrConfig,
    mut updates: broadcast::Receiver<Arc<pb::EventUpdate>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let creds = uplink.username.as_deref().zip(uplink.password.as_deref());
        let client_id = format!("{}-dr", uplink.client_id);
        let opts = match gridgate_acquire::broker::options(
            &uplink.broker,
            &client_id,
            uplink.keep_alive,
            creds,
        ) {
            Ok(o) => o,
            Err(e) => {
                warn!(broker = %uplink.broker, "DR over MQTT cannot set up its connection: {e}");
                return;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(opts, 512);
        let lost = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                u = updates.recv() => match u {
                    Ok(u) => {
                        if let Some(st) = u.status.as_ref().filter(|s| s.reported) {
                            let key = crate::event_key(&u.issuer, &u.event_id);
                            publish_report(&desk, &dr, &client, &key, st).await;
                        }
                    }
                    // Missed some: publish the recent reports again (idempotent).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        publish_recent(&desk, &dr, &client, REPUBLISH_WITHIN_MS).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(200);
                        info!(broker = %uplink.broker, command_topic = ?dr.command_topic, "DR over MQTT connected");
                        if let Some(t) = &dr.command_topic {
                            if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                                warn!(topic = %t, "cannot subscribe to the DR command topic: {e}");
                            }
                        }
                        publish_recent(&desk, &dr, &client, REPUBLISH_WITHIN_MS).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if dr.command_topic.as_deref() == Some(p.topic.as_str()) =>
                    {
                        let reply = decide(&desk, &p.payload).await;
                        if let Err(e) = client.try_publish(
                            dr.reply_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            reply.encode_to_vec(),
                        ) {
                            warn!("cannot publish the DR reply: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                },
            }
        };
        warn!(broker = %uplink.broker, retry_in = ?backoff, "DR over MQTT connection lost: {lost}");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
