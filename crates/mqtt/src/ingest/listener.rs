//! The durable field listener: field devices connect to the gateway itself over MQTT 3.1.1
//! and publish; a QoS 1 PUBLISH is acknowledged (PUBACK) only once its readings are committed
//! to the store. Unlike a broker, nothing sits in memory between the device and the disk, so
//! the guarantee holds end to end: a reading a device got a PUBACK for survives a power cut.
//!
//! It takes publishes only (CONNECT, PUBLISH QoS 0/1, PINGREQ, DISCONNECT); a SUBSCRIBE is
//! answered with failure codes, QoS 2 closes the connection with a log line saying why. The
//! packet codec is rumqttc's (`mqttbytes::v4`).
//!
//! Devices authenticate: with `[ingest] username`/`password` a CONNECT must carry them, and
//! with `listen = "mqtts://..."` and `listen_client_ca_file` the TLS handshake takes only
//! devices whose certificate chains to that CA; a refused device gets CONNACK "not
//! authorised", counted. The listener holds at most [`FIELD_MAX`](gridgate_core::admission::FIELD_MAX) devices at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{IngestStats, Live, handle};
use gridgate_config::IngestConfig;
use gridgate_core::admission::{Admission, HANDSHAKE_WITHIN};
use gridgate_store::writer::{StoreHandle, Stored};

/// Where the listener accepts devices, and how.
pub struct FieldListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// TLS, for `mqtts://`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Its connection cap.
    pub admission: Arc<Admission>,
}

/// Serves field devices on `listener` until `cancel` fires.
pub async fn serve(
    field: FieldListener,
    cfg: Arc<IngestConfig>,
    store: StoreHandle,
    stats: Arc<IngestStats>,
    live: Live,
    cancel: CancellationToken,
) {
    let FieldListener {
        listener,
        tls,
        admission,
    } = field;
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, tls = tls.is_some(), password = cfg.username.is_some(), "durable MQTT field listener: PUBACK only after the readings are on disk");
    }
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("field listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Some(permit) = admission.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (cfg, store, stats, live, cancel, tls, admission) = (
            cfg.clone(),
            store.clone(),
            stats.clone(),
            live.clone(),
            cancel.clone(),
            tls.clone(),
            admission.clone(),
        );
        conns.spawn(async move {
            let _held = permit;
            let ended = match tls {
                None => connection(stream, peer, &cfg, &store, &stats, &live, &cancel).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            connection(s, peer, &cfg, &store, &stats, &live, &cancel).await
                        }
                        Ok(Err(e)) => {
                            stats.not_authorised.fetch_add(1, Ordering::Relaxed);
                            Err(format!("TLS handshake refused: {e}"))
                        }
                        Err(_) => {
                            admission.timed_out();
                            Err("TLS handshake timed out".into())
                        }
                    }
                }
            };
            if let Err(e) = ended {
                debug!(%peer, "field device connection ended: {e}");
            }
        });
    }
    conns.abort_all();
}

/// A publish waiting for its commit before its PUBACK (None: QoS 0, nothing to send).
struct Waiting {
    pkid: Option<u16>,
    done: Option<tokio::sync::oneshot::Receiver<Stored>>,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    cfg: &IngestConfig,
    store: &StoreHandle,
    stats: &IngestStats,
    live: &Live,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let max = cfg.max_payload.saturating_mul(4).max(64 << 10);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(256);
    let mut connected = false;
    // Publishes read but not yet acknowledged, in arrival order: several are in flight at
    // once so that one commit (one fsync) serves many of them; PUBACKs still go out in order.
    let mut waiting: std::collections::VecDeque<Waiting> = std::collections::VecDeque::new();
    // Until CONNECT says otherwise: a device that says nothing for this long is dropped.
    let mut idle = Duration::from_secs(10);
    loop {
        // Acknowledge, in order, every publish at the front whose readings are on disk.
        while let Some(front) = waiting.front_mut() {
            if let Some(rx) = front.done.as_mut() {
                match rx.try_recv() {
                    Ok(Stored::Committed) => {}
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                    // No PUBACK: the device keeps the message and sends it again.
                    Ok(not) => {
                        return Err(format!(
                            "readings not stored ({not}); closing so the device resends"
                        ));
                    }
                    Err(_) => {
                        return Err(format!(
                            "readings not stored ({}); closing so the device resends",
                            Stored::WriterStopped
                        ));
                    }
                }
            }
            if let Some(pkid) = front.pkid {
                PubAck::new(pkid)
                    .write(&mut out)
                    .map_err(|e| e.to_string())?;
            }
            waiting.pop_front();
        }
        // Take every whole packet already buffered.
        loop {
            let packet = match Packet::read(&mut buf, max) {
                Ok(p) => p,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(e) => return Err(format!("bad packet: {e}")),
            };
            match packet {
                Packet::Connect(c) => {
                    if connected {
                        return Err("second CONNECT".into());
                    }
                    if !authorised(cfg, &c) {
                        stats.not_authorised.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, client = %c.client_id, "field device refused: wrong or missing username/password ([ingest] username, password)");
                        ConnAck::new(ConnectReturnCode::NotAuthorized, false)
                            .write(&mut out)
                            .map_err(|e| e.to_string())?;
                        stream.write_all(&out).await.map_err(|e| e.to_string())?;
                        return Err("not authorised".into());
                    }
                    connected = true;
                    if c.keep_alive > 0 {
                        idle = Duration::from_secs(u64::from(c.keep_alive) * 3 / 2 + 1);
                    }
                    debug!(%peer, client = %c.client_id, "field device connected");
                    // A publish-only listener keeps no session state of its own; what a
                    // persistent session holds is the device's unacknowledged publishes.
                    // Saying the session is present makes the device send those again
                    // (clients drop them on a fresh session), and de-duplication by device
                    // timestamp stores each once.
                    ConnAck::new(ConnectReturnCode::Success, !c.clean_session)
                        .write(&mut out)
                        .map_err(|e| e.to_string())?;
                }
                _ if !connected => return Err("packet before CONNECT".into()),
                Packet::Publish(p) => {
                    if p.qos == QoS::ExactlyOnce {
                        warn!(%peer, topic = %p.topic, "QoS 2 is not supported by the field listener; use QoS 1 (closing the connection)");
                        return Err("QoS 2".into());
                    }
                    let done = handle(cfg, store, stats, live, &p).await;
                    let pkid = (p.qos == QoS::AtLeastOnce).then_some(p.pkid);
                    waiting.push_back(Waiting { pkid, done });
                }
                Packet::PingReq => out.extend_from_slice(&[0xD0, 0x00]),
                Packet::Subscribe(s) => {
                    let codes = vec![SubscribeReasonCode::Failure; s.filters.len()];
                    SubAck::new(s.pkid, codes)
                        .write(&mut out)
                        .map_err(|e| e.to_string())?;
                }
                Packet::Disconnect => return Ok(()),
                other => debug!(%peer, "ignored packet {other:?}"),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if waiting.front().is_some_and(|w| w.done.is_none()) {
            continue;
        }
        let front_waiting = waiting.front().is_some();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = wait_front(&mut waiting), if front_waiting => {}
            // A device with this many publishes unacknowledged is read no further until its
            // oldest are stored: memory holds what the bound allows, whatever it sends.
            r = tokio::time::timeout(idle, stream.read_buf(&mut buf)), if waiting.len() < super::MAX_UNACKED => match r {
                Err(_) => return Err("keep-alive expired".into()),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
            },
        }
    }
}

/// Whether a CONNECT carries the credentials the config asks for (any, when it asks none).
fn authorised(cfg: &IngestConfig, c: &rumqttc::mqttbytes::v4::Connect) -> bool {
    let Some((user, pass)) = cfg.username.as_deref().zip(cfg.password.as_deref()) else {
        return true;
    };
    c.login.as_ref().is_some_and(|l| {
        // Both compared in full, whatever the first says.
        let u = gridgate_core::tls::same_secret(l.username.as_bytes(), user.as_bytes());
        let p = gridgate_core::tls::same_secret(l.password.as_bytes(), pass.as_bytes());
        u & p
    })
}

/// Resolves once the front publish's commit has finished (successfully or not); the result
/// is read again, without waiting, by the acknowledging loop.
async fn wait_front(waiting: &mut std::collections::VecDeque<Waiting>) {
    let Some(Waiting { done: Some(rx), .. }) = waiting.front_mut() else {
        return std::future::pending().await;
    };
    let result = Stored::from_reply(rx.await);
    let (tx, again) = tokio::sync::oneshot::channel();
    let _ = tx.send(result);
    if let Some(front) = waiting.front_mut() {
        front.done = Some(again);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_core::Identity;
    use gridgate_store::Store;
    use gridgate_store::writer::{self, WriterConfig};
    use rumqttc::mqttbytes::v4::{Connect, Publish};
    use tokio::net::TcpStream;

    use crate::scripted::read_packet;

    const CONFIG: &str = r#"
[gateway]
id = "gw-1"

[ingest]
listen = "127.0.0.1:1884"

[[ingest.device]]
name = "sensor-1"
topic = "field/sensor-1"
points = [{ name = "t", unit = "C" }]
"#;

    /// A device connects, publishes at QoS 1 and is acknowledged with its packet id only
    /// when the reading is in the store; a publish on a topic no device owns is acknowledged
    /// and stored nowhere.
    #[tokio::test]
    async fn a_publish_is_acknowledged_once_its_reading_is_stored() {
        let cfg = gridgate_config::parse(CONFIG, std::path::Path::new("<test>")).unwrap();
        let ingest = Arc::new(cfg.ingest.clone().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "gw-1").unwrap();
        let wcfg = WriterConfig {
            gateway_id: "gw-1".into(),
            batch_readings: 1000,
            batch_interval: Duration::from_secs(3600),
            budget: 1 << 30,
            required_consumers: Vec::new(),
        };
        let (handle, _writer) = writer::start(store, Identity::generate().unwrap(), wcfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let field = FieldListener {
            listener,
            tls: None,
            admission: Admission::new("field", 4),
        };
        let stats = Arc::new(IngestStats::default());
        let cancel = CancellationToken::new();
        let live = tokio::sync::broadcast::channel(16).0;
        let served = tokio::spawn(serve(
            field,
            ingest,
            handle.clone(),
            stats.clone(),
            live,
            cancel.clone(),
        ));

        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        Connect::new("sensor-1").write(&mut out).unwrap();
        s.write_all(&out).await.unwrap();
        assert!(matches!(
            read_packet(&mut s, &mut buf, "listener").await,
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Success
        ));

        let publish = |topic: &str, pkid: u16| {
            let mut p = Publish::new(
                topic,
                QoS::AtLeastOnce,
                r#"{"point":"t","value":21.5,"ts_ms":1795000000000}"#,
            );
            p.pkid = pkid;
            let mut out = BytesMut::new();
            p.write(&mut out).unwrap();
            out
        };
        s.write_all(&publish("field/nobody", 6)).await.unwrap();
        s.write_all(&publish("field/sensor-1", 7)).await.unwrap();
        let first = read_packet(&mut s, &mut buf, "listener").await;
        assert!(
            matches!(&first, Packet::PubAck(a) if a.pkid == 6),
            "{first:?}"
        );
        let second = read_packet(&mut s, &mut buf, "listener").await;
        assert!(
            matches!(&second, Packet::PubAck(a) if a.pkid == 7),
            "{second:?}"
        );
        // Acknowledged: so already in the store.
        assert_eq!(handle.store.stats().unwrap().open_readings, 1);
        assert_eq!(stats.unknown_topic.load(Ordering::Relaxed), 1);

        cancel.cancel();
        served.await.unwrap();
    }
}
