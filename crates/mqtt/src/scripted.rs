//! The scripted MQTT peer of this crate's unit tests: reads whole packets off a socket.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The next whole packet `peer` sends on `stream` (`buf` keeps what came after it).
pub(crate) async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut, peer: &str) -> Packet {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return p,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet from the {peer}: {e}"),
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(buf)).await;
        let n = read
            .unwrap_or_else(|_| panic!("the {peer} said nothing for 10 s"))
            .unwrap();
        assert!(n > 0, "the {peer} closed the connection");
    }
}
