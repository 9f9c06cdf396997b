//! MQTT field devices: subscribe, decode, store, and only then acknowledge.
//!
//! A QoS 1 message is acknowledged (PUBACK) only once its readings are committed to the
//! store; a payload that cannot be decoded is counted, logged with its topic and reason, and
//! acknowledged so that the broker does not send it again and again. The session is
//! persistent (clean session off), so the broker keeps what arrives while the gateway is
//! down and resends whatever was not acknowledged.

pub mod broker;
pub mod listener;
pub mod payload;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, Packet, Publish, QoS, StateError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use gridgate_config::IngestConfig;
use gridgate_core::reading::now_ms;
use gridgate_store::writer::{StoreHandle, Stored, Submission};

/// What ingest has seen.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages received.
    pub messages: AtomicU64,
    /// Readings stored.
    pub readings: AtomicU64,
    /// Messages on a topic no device owns.
    pub unknown_topic: AtomicU64,
    /// Field devices the listener refused: wrong credentials, or no acceptable certificate.
    pub not_authorised: AtomicU64,
    /// Refused payloads by reason.
    pub malformed: Mutex<BTreeMap<&'static str, u64>>,
    /// What the log has said of refused payloads.
    refusals_logged: Mutex<Quieted>,
}

/// A log line for the first refusal of a stretch, then at most one summary per
/// [`SUMMARY_EVERY`]: a device that publishes garbage flat out must not flood the log (the
/// counters have every one).
#[derive(Debug, Default)]
struct Quieted {
    since: Option<std::time::Instant>,
    unlogged: u64,
}

/// Longest stretch of refusals summed up in one log line.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl Quieted {
    /// Whether to log this refusal, and how many refusals since the last line were not.
    fn note(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.since {
            Some(t) if now.duration_since(t) < SUMMARY_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.since = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

impl IngestStats {
    /// Refused payloads, all reasons.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// Where live readings go (gRPC Subscribe).
pub type Live = tokio::sync::broadcast::Sender<gridgate_core::LiveReadings>;

/// A received message waiting for its acknowledgement.
enum Ack {
    /// Its readings are being committed.
    Waiting(oneshot::Receiver<Stored>),
    /// Committed (or refused, or needing no storage): acknowledge it.
    Ready,
    /// Not stored: leave it unacknowledged for the broker to resend.
    Failed,
}

/// Runs the ingest client until `cancel` fires, reconnecting with backoff.
///
/// One loop polls the connection and acknowledges, in arrival order (MQTT requires it),
/// each message once its readings are durable. Acknowledging never waits on the connection
/// (`try_ack`), so the loop cannot deadlock on its own request queue.
pub async fn run(
    cfg: IngestConfig,
    store: StoreHandle,
    stats: Arc<IngestStats>,
    live: Live,
    cancel: CancellationToken,
) {
    let Some(broker) = cfg.broker.clone() else {
        return;
    };
    let mut backoff = Duration::from_millis(200);
    let normal_limit = cfg.max_payload.max(1 << 20) * 4;
    // Raised for one session when the broker holds a message larger than we read (see
    // below); back to normal on the next.
    let mut packet_limit = normal_limit;
    loop {
        let creds = cfg.username.as_deref().zip(cfg.password.as_deref());
        let keep_alive = Duration::from_secs(30);
        let mut opts =
            match gridgate_acquire::broker::options(&broker, &cfg.client_id, keep_alive, creds) {
                Ok(o) => o,
                Err(e) => {
                    warn!(broker = %broker, "ingest cannot set up its connection: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                    }
                }
            };
        opts.set_manual_acks(true);
        opts.set_clean_session(false);
        // Packets up to four times max_payload are read and refused by our own limit, with
        // an acknowledgement. A larger one makes the client drop the connection before it
        // is read, and a persistent session would bring it back at every reconnect: that
        // one session reads it (its size is known from the header) to refuse it.
        opts.set_max_packet_size(packet_limit, 1 << 20);
        packet_limit = normal_limit;
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let mut pending: VecDeque<(Unacked, Ack)> = VecDeque::new();
        let mut connected_at: Option<tokio::time::Instant> = None;
        let ended = loop {
            // Acknowledge, in order, every message at the front that is done: one commit
            // answers many messages at once, and their PUBACKs go out together rather than
            // one per turn of this loop (which let them lag the commits by hundreds).
            while let Some((p, state)) = pending.front_mut() {
                if let Ack::Waiting(rx) = state {
                    *state = match rx.try_recv() {
                        Err(oneshot::error::TryRecvError::Empty) => break,
                        Ok(Stored::Committed) => Ack::Ready,
                        _ => Ack::Failed,
                    };
                }
                match state {
                    Ack::Waiting(_) => break,
                    Ack::Failed => {
                        warn!(
                            pkid = p.pkid,
                            "readings not stored; message left for the broker to resend"
                        );
                    }
                    Ack::Ready => {
                        if p.qos != QoS::AtMostOnce && client.try_ack(&p.ack()).is_err() {
                            // Request queue full: the next poll drains it; try again then.
                            break;
                        }
                    }
                }
                pending.pop_front();
            }
            let front_waiting = matches!(pending.front(), Some((_, Ack::Waiting(_))));
            // Past this many messages read and not yet acknowledged, stop reading: the socket
            // fills and TCP holds the broker back, however large its in-flight window.
            let room = pending.len() < MAX_UNACKED;
            tokio::select! {
                _ = cancel.cancelled() => break None,
                stored = wait_front(&mut pending), if front_waiting => {
                    if let Some((_, state)) = pending.front_mut() {
                        *state = if stored { Ack::Ready } else { Ack::Failed };
                    }
                }
                event = eventloop.poll(), if room || !front_waiting => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        info!(broker = %broker, topics = ?cfg.topics, "ingest connected");
                        connected_at = Some(tokio::time::Instant::now());
                        for t in &cfg.topics {
                            if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                                warn!(topic = %t, "cannot subscribe: {e}");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let state = match handle(&cfg, &store, &stats, &live, &p).await {
                            None => Ack::Ready,
                            Some(rx) => Ack::Waiting(rx),
                        };
                        // Only what the PUBACK needs is kept: the payload is a slice of
                        // the client's read buffer, and holding it would pin that whole
                        // buffer until the commit (42 MB at the peak of the ingest bench).
                        pending.push_back((Unacked { pkid: p.pkid, qos: p.qos }, state));
                    }
                    Ok(_) => {}
                    Err(ConnectionError::MqttState(StateError::Deserialization(
                        rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
                    ))) if size <= MQTT_MAX_PACKET => {
                        warn!(broker = %broker, size, max_payload = cfg.max_payload, "the broker holds a message of {size} bytes for ingest, over its limit: reading it once to refuse and acknowledge it");
                        packet_limit = size;
                        break Some(format!("a {size}-byte message over the limit"));
                    }
                    Err(e) => break Some(e.to_string()),
                },
            }
        };
        // Whatever was not acknowledged, the broker sends again to the next session.
        drop(pending);
        match ended {
            None => return,
            Some(e) => {
                // Only a connection that lasted counts as a recovery: a broker that accepts
                // and then drops at once (a bad session, a poison message) is retried with
                // the backoff still growing.
                if connected_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
                    backoff = Duration::from_millis(200);
                }
                if packet_limit != normal_limit {
                    backoff = Duration::ZERO;
                }
                warn!(broker = %broker, retry_in = ?backoff, "ingest connection lost: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2)
                    .max(Duration::from_millis(200))
                    .min(Duration::from_secs(30));
            }
        }
    }
}

/// Messages ingest holds between reading them and their PUBACK. With the writer's queue
/// (`store::writer::QUEUE` submissions) this bounds the memory between the broker and the
/// store by construction: at most this many messages of up to `max_payload` each.
const MAX_UNACKED: usize = 256;

/// MQTT's largest packet: a remaining length of 268,435,455 bytes.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// A connection that lasts this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// A message read and not yet acknowledged: what its PUBACK needs.
struct Unacked {
    pkid: u16,
    qos: QoS,
}

impl Unacked {
    /// The message as `AsyncClient::try_ack` takes it (it reads only the id and QoS).
    fn ack(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::<u8>::new());
        p.pkid = self.pkid;
        p
    }
}

/// Waits for the front message's commit; true when its readings are durable.
async fn wait_front(pending: &mut VecDeque<(Unacked, Ack)>) -> bool {
    match pending.front_mut() {
        Some((_, Ack::Waiting(rx))) => Stored::from_reply(rx.await).is_committed(),
        _ => std::future::pending().await,
    }
}

/// Decodes and submits one message; returns what to wait for before acknowledging it
/// (`None`: acknowledge at once, it was refused or needs no storage).
async fn handle(
    cfg: &IngestConfig,
    store: &StoreHandle,
    stats: &IngestStats,
    live: &Live,
    p: &Publish,
) -> Option<oneshot::Receiver<Stored>> {
    stats.messages.fetch_add(1, Ordering::Relaxed);
    let Some(device) = cfg.devices.iter().find(|d| d.topic == p.topic) else {
        stats.unknown_topic.fetch_add(1, Ordering::Relaxed);
        warn!(topic = %p.topic, "message on a topic no [[ingest.device]] owns; acknowledged and dropped");
        return None;
    };
    match payload::decode(&p.payload, device, cfg.max_payload, now_ms()) {
        Ok(decoded) => {
            let n = decoded.readings.len() as u64;
            let (done, rx) = oneshot::channel();
            let sub = Submission {
                readings: gridgate_core::publish(decoded.readings, live),
                dedupe: decoded.device_time,
                done: Some(done),
            };
            if store.tx.send(sub).await.is_err() {
                warn!("store writer stopped; message left unacknowledged");
                let (_, never) = oneshot::channel();
                return Some(never);
            }
            stats.readings.fetch_add(n, Ordering::Relaxed);
            Some(rx)
        }
        Err(e) => {
            if let Ok(mut m) = stats.malformed.lock() {
                *m.entry(e.kind()).or_default() += 1;
            }
            let log = stats
                .refusals_logged
                .lock()
                .ok()
                .and_then(|mut q| q.note(std::time::Instant::now()));
            match log {
                Some(0) => {
                    warn!(topic = %p.topic, device = %device.name, reason = %e, "payload refused; acknowledged so it is not resent, nothing stored")
                }
                Some(more) => {
                    warn!(topic = %p.topic, device = %device.name, reason = %e, "payload refused; acknowledged so it is not resent, nothing stored ({more} more refused in the last {}s, not logged one by one; see gridgate_mqtt_refused_total)", SUMMARY_EVERY.as_secs())
                }
                None => {}
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_first_then_summed_up_at_most_every_ten_seconds() {
        let mut q = Quieted::default();
        let t = std::time::Instant::now();
        assert_eq!(q.note(t), Some(0), "the first is logged");
        for i in 1..=500 {
            assert_eq!(q.note(t + Duration::from_millis(i)), None);
        }
        assert_eq!(
            q.note(t + SUMMARY_EVERY),
            Some(500),
            "then one line says how many were not"
        );
        assert_eq!(q.note(t + SUMMARY_EVERY * 3), Some(0));
    }
}
