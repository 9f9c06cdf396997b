//! MQTT uplink: every signed batch to the master station, in order, at least once.
//!
//! Batches go out as QoS 1 publishes of the stored `SignedBatch` bytes. rumqttc's
//! `publish()` does not say which packet id it used, so the uplink correlates through the
//! event loop: publishes leave in the order they were requested, each announced by an
//! outgoing-publish event with its packet id; a PUBACK names the id. The durable cursor moves
//! only to the highest batch below which every batch is acknowledged. After any connection
//! loss the client is rebuilt from scratch (no hidden resend queue) and sending resumes at the
//! cursor, so the master may see a batch twice (it de-duplicates by sequence) but never
//! misses one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use gridgate_config::{UPLINK_CONSUMER, UplinkConfig};
use gridgate_store::writer::StoreHandle;

/// What the uplink has done.
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// Publishes sent (resends included).
    pub published: AtomicU64,
    /// Batches acknowledged by the broker.
    pub acknowledged: AtomicU64,
    /// Next batch the master station needs (the durable cursor).
    pub cursor: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Batches skipped because retention had already dropped them.
    pub skipped: AtomicU64,
}

/// Why an uplink session ended before it was asked to stop; the next one starts at the
/// durable cursor, so none of these loses a batch.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The store would not give the cursor or a batch, or keep the moved cursor.
    #[error("store: {0}")]
    Store(#[from] gridgate_store::StoreError),
    /// The broker's TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] gridgate_core::tls::TlsError),
    /// The connection failed or the broker closed it.
    #[error(transparent)]
    Connection(#[from] rumqttc::ConnectionError),
    /// The client refused a publish (its queue is gone with the connection).
    #[error(transparent)]
    Client(#[from] rumqttc::ClientError),
    /// The blocking task that moves the cursor failed.
    #[error("cursor task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the uplink until `cancel` fires, reconnecting with backoff.
pub async fn run(
    cfg: UplinkConfig,
    store: StoreHandle,
    stats: Arc<UplinkStats>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&cfg, &store, &stats, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                warn!(broker = %cfg.broker, retry_in = ?backoff, "uplink connection lost: {e}; acquisition goes on, batches wait in the store");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        if stats.acknowledged.load(Ordering::Relaxed) > 0 {
            // A session that got work done resets the backoff for the next loss.
            backoff = backoff.min(Duration::from_secs(1));
        }
    }
}

async fn session(
    cfg: &UplinkConfig,
    store: &StoreHandle,
    stats: &UplinkStats,
    cancel: &CancellationToken,
) -> Result<(), SessionEnd> {
    let mut cursor = store.store.cursor(UPLINK_CONSUMER)?;
    stats.cursor.store(cursor, Ordering::Relaxed);
    let creds = cfg.username.as_deref().zip(cfg.password.as_deref());
    let mut opts =
        gridgate_acquire::broker::options(&cfg.broker, &cfg.client_id, cfg.keep_alive, creds)?;
    opts.set_clean_session(true);
    opts.set_inflight(cfg.window as u16);
    opts.set_max_packet_size(1 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, cfg.window * 2 + 4);
    let mut head = store.head.clone();
    let mut connected = false;
    let mut next = cursor;
    // Requested but not yet seen leaving: their ids are not known yet.
    let mut requested: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    loop {
        if connected {
            let top = *head.borrow_and_update();
            while requested.len() + in_flight.len() < cfg.window && next < top {
                let batch = store.store.batches_from(next, 1)?;
                let Some((seq, bytes)) = batch.into_iter().next() else {
                    break;
                };
                if seq != next {
                    // Retention dropped batches the master never had: say so, go on.
                    warn!(
                        from = next,
                        to = seq,
                        "batches dropped by the disk budget before upload"
                    );
                    stats.skipped.fetch_add(seq - next, Ordering::Relaxed);
                    if cursor == next {
                        cursor = seq;
                    }
                }
                client.try_publish(cfg.topic.clone(), QoS::AtLeastOnce, false, bytes)?;
                requested.push_back(seq);
                next = seq + 1;
            }
        }
        let event = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = client.try_disconnect();
                return Ok(());
            }
            _ = head.changed(), if connected => continue,
            e = eventloop.poll() => e,
        };
        match event? {
            Event::Incoming(Packet::ConnAck(_)) => {
                connected = true;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                info!(broker = %cfg.broker, topic = %cfg.topic, from = cursor, "uplink connected");
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(seq) = requested.pop_front() {
                    in_flight.insert(pkid, seq);
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let Some(seq) = in_flight.remove(&ack.pkid) else {
                    continue;
                };
                stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                acked.insert(seq);
                let before = cursor;
                while acked.remove(&cursor) {
                    cursor += 1;
                }
                // Anything acked below the cursor (after a skip) is done too.
                acked.retain(|s| *s >= cursor);
                if cursor != before {
                    let c = cursor;
                    let saved = store
                        .store
                        .run(move |st| st.set_cursor(UPLINK_CONSUMER, c))
                        .await?;
                    stats.cursor.store(saved, Ordering::Relaxed);
                    debug!(cursor = saved, "uplink cursor moved");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use gridgate_config::MqttBroker;
    use gridgate_core::Identity;
    use gridgate_proto::v1 as pb;
    use gridgate_store::Store;
    use gridgate_store::batch::{Framed, seal_framed};
    use gridgate_store::writer::{self, WriterConfig};
    use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A store holding `n` closed batches, behind a running writer.
    fn store_with(dir: &std::path::Path, n: u64) -> (StoreHandle, tokio::task::JoinHandle<()>) {
        let id = Identity::generate().unwrap();
        let store = Store::open(dir, "gw-1").unwrap();
        let sealer = |seq, prev, rs: &Framed| seal_framed(&id, "gw-1", seq, prev, 1000, rs);
        for i in 0..n {
            let r = pb::Reading {
                point: "m/p".into(),
                ts_ms: i as i64,
                ..Default::default()
            };
            store.commit(&[r], &[], Some(&sealer)).unwrap();
        }
        let cfg = WriterConfig {
            gateway_id: "gw-1".into(),
            batch_readings: 1000,
            batch_interval: Duration::from_secs(3600),
            budget: 1 << 30,
            required_consumers: vec![UPLINK_CONSUMER.into()],
        };
        writer::start(store, id, cfg).unwrap()
    }

    /// The broker's side of one connection: packets in, packets out.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        async fn next(&mut self) -> Packet {
            crate::scripted::read_packet(&mut self.stream, &mut self.buf, "uplink").await
        }

        async fn send(&mut self, write: impl FnOnce(&mut BytesMut)) {
            let mut out = BytesMut::new();
            write(&mut out);
            self.stream.write_all(&out).await.unwrap();
        }

        /// The next publish's packet id and batch sequence.
        async fn publish(&mut self) -> (u16, u64) {
            loop {
                if let Packet::Publish(p) = self.next().await {
                    let signed = <pb::SignedBatch as prost::Message>::decode(p.payload).unwrap();
                    let batch =
                        <pb::Batch as prost::Message>::decode(signed.batch.as_slice()).unwrap();
                    return (p.pkid, batch.seq);
                }
            }
        }

        async fn ack(&mut self, pkid: u16) {
            self.send(|o| {
                PubAck::new(pkid).write(o).unwrap();
            })
            .await;
        }
    }

    /// Waits until the durable cursor, and then the one the uplink reports, are `want`
    /// (the report follows the store's write).
    async fn cursor_becomes(store: &StoreHandle, stats: &UplinkStats, want: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = store.store.cursor(UPLINK_CONSUMER).unwrap();
            let reported = stats.cursor.load(Ordering::Relaxed);
            if c == want && reported == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cursor {c} (reported {reported}), not {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The PUBACKs of a window answered out of order: the durable cursor moves only past
    /// batches below which every one is acknowledged, and a session that ends with batches
    /// unacknowledged sends them again from the cursor on the next.
    #[tokio::test]
    async fn the_cursor_moves_only_past_contiguous_acknowledgements() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = store_with(dir.path(), 4);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = UplinkConfig {
            broker: MqttBroker {
                host: "127.0.0.1".into(),
                port,
                tls: None,
            },
            topic: "gw-1/batches".into(),
            client_id: "gw-1-uplink".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            window: 4,
        };
        let stats = Arc::new(UplinkStats::default());
        let cancel = CancellationToken::new();
        let uplink = tokio::spawn(run(cfg, store.clone(), stats.clone(), cancel.clone()));

        let (stream, _) = listener.accept().await.unwrap();
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
        };
        assert!(matches!(peer.next().await, Packet::Connect(_)));
        peer.send(|o| {
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(o)
                .unwrap();
        })
        .await;
        let mut sent = Vec::new();
        for _ in 0..4 {
            sent.push(peer.publish().await);
        }
        assert_eq!(sent.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // Batches 1 and 3 acknowledged: nothing below them is, so the cursor stays.
        peer.ack(sent[1].0).await;
        peer.ack(sent[3].0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.store.cursor(UPLINK_CONSUMER).unwrap(), 0);
        // Batch 0: the cursor moves past 0 and 1, and waits at 2.
        peer.ack(sent[0].0).await;
        cursor_becomes(&store, &stats, 2).await;

        // The connection drops with batch 2 unacknowledged: the next session starts there.
        drop(peer);
        let (stream, _) = listener.accept().await.unwrap();
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
        };
        assert!(matches!(peer.next().await, Packet::Connect(_)));
        peer.send(|o| {
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(o)
                .unwrap();
        })
        .await;
        let (a, first) = peer.publish().await;
        let (b, second) = peer.publish().await;
        assert_eq!((first, second), (2, 3), "resent from the cursor, in order");
        peer.ack(a).await;
        peer.ack(b).await;
        cursor_becomes(&store, &stats, 4).await;
        cancel.cancel();
        uplink.await.unwrap();
    }
}
