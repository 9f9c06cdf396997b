//! The config's service sections: `[store]`, `[uplink]`, `[ingest]`, `[broker]`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::Checker;

/// How many of the most recently stored readings that carry a device timestamp a
/// redelivery is checked against, when `[store] dedupe_window` does not say. Brokers and
/// devices resend their in-flight messages right after a reconnect; an older redelivery is
/// stored again (at least once, never lost). The window is kept in the store itself
/// (its `dedupe_recent` table), so it survives retention pruning the batches the readings went out in.
pub const DEDUPE_RECENT: usize = 200_000;
use super::raw::{RawBroker, RawGrpc, RawIngest, RawStore, RawUplink};

/// `[store]`: batching and retention.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Close a batch once this many readings wait.
    pub batch_readings: usize,
    /// Close a batch once its first reading has waited this long.
    pub batch_interval: Duration,
    /// Disk budget in bytes.
    pub budget: u64,
    /// Consumers retention waits for.
    pub required_consumers: Vec<String>,
    /// How many of the last readings stored with a device timestamp a redelivered message
    /// is checked against (kept in the store, so pruned batches do not shorten it).
    pub dedupe_window: usize,
}

/// An MQTT broker address: `mqtt://host:port`, or `mqtts://host:port` with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttBroker {
    pub host: String,
    /// Port (1883 when not given, 8883 with TLS).
    pub port: u16,
    /// TLS, for `mqtts://`.
    pub tls: Option<MqttTls>,
}

/// TLS material for a broker connection (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// Client certificate chain, for brokers that authenticate clients by certificate.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key.
    pub key: Option<std::path::PathBuf>,
}

impl std::fmt::Display for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// `[uplink]`: signed batches to the master station over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    pub broker: MqttBroker,
    /// Topic batches go to.
    pub topic: String,
    /// MQTT client id.
    pub client_id: String,
    /// Credentials.
    pub username: Option<String>,
    /// Credentials.
    pub password: Option<String>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Batches in flight (published, not yet acknowledged).
    pub window: usize,
}

/// The consumer name the MQTT uplink's cursor is stored under.
pub const UPLINK_CONSUMER: &str = "mqtt-uplink";

/// One field device that publishes over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttDevice {
    /// Device name (first half of its points' names).
    pub name: String,
    /// Topic it publishes on.
    pub topic: String,
    /// Its points: (name, unit).
    pub points: Vec<(String, String)>,
    /// Point name → index in `points`: a device may have thousands of points, and every
    /// reading in every message is looked up.
    by_name: std::collections::HashMap<String, usize>,
}

impl MqttDevice {
    /// A device with `points` (name, unit).
    pub fn new(name: String, topic: String, points: Vec<(String, String)>) -> Self {
        let by_name = points
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        MqttDevice {
            name,
            topic,
            points,
            by_name,
        }
    }

    /// The unit of point `name`, or `None` when the device has no such point.
    pub fn unit_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|&i| self.points[i].1.as_str())
    }
}

/// `[ingest]`: field devices over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Broker to subscribe at (the embedded one is just its listen address).
    pub broker: Option<MqttBroker>,
    /// The durable field listener: devices publish to the gateway itself, PUBACK after the
    /// commit.
    pub listen: Option<SocketAddr>,
    /// TLS on the field listener (`listen = "mqtts://..."`).
    pub listen_tls: Option<ListenTls>,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// MQTT client id.
    pub client_id: String,
    /// Credentials.
    pub username: Option<String>,
    /// Credentials.
    pub password: Option<String>,
    /// Largest payload accepted, bytes.
    pub max_payload: usize,
    /// Devices by topic.
    pub devices: Vec<MqttDevice>,
}

/// The field listener's TLS: its certificate and key, and the CA that field devices'
/// client certificates must chain to (when given, a device without one is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    /// Server certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Its key (PEM).
    pub key: std::path::PathBuf,
    /// CA of the devices' client certificates (PEM).
    pub client_ca: Option<std::path::PathBuf>,
}

/// `[grpc]`: the master station's API over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcConfig {
    /// TLS listener.
    pub listen: SocketAddr,
    /// The gateway's server certificate (PEM).
    pub cert_file: std::path::PathBuf,
    /// Its key (PEM).
    pub key_file: std::path::PathBuf,
    /// CA that client certificates must chain to (PEM).
    pub client_ca_file: std::path::PathBuf,
    /// Optional plaintext listener, loopback only; its callers are viewers.
    pub plaintext_listen: Option<SocketAddr>,
}

/// `[broker]`: the embedded MQTT broker for field devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
}

/// Parses `512MiB`, `1GB`, `100000` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Checker<'_> {
    fn size(&mut self, v: &Option<Spanned<String>>, key: &str, default: u64) -> u64 {
        let Some(s) = v else { return default };
        match parse_size(s.get_ref()) {
            Some(n) if n > 0 => n,
            _ => {
                self.problem(
                    s,
                    key.into(),
                    format!(
                        "{:?} is not a size; write 512MiB, 2GiB or a number of bytes",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn broker_url(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        files: [&Option<Spanned<String>>; 3],
    ) -> Option<MqttBroker> {
        let text = v.get_ref();
        let bad =
            |why: &str| format!("{text:?}: {why}; write mqtt://HOST:PORT or mqtts://HOST:PORT");
        let Ok(url) = url::Url::parse(text) else {
            self.problem(v, key.into(), bad("not a URL"));
            return None;
        };
        let section = key.split('.').next().unwrap_or(key).to_string();
        let [ca, cert, key_file] = files;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => {
                for f in [ca, cert, key_file].into_iter().flatten() {
                    self.problem(
                        f,
                        format!("{section}.ca_file"),
                        "TLS files need an mqtts:// broker".into(),
                    );
                }
                false
            }
            "mqtts" | "ssl" => true,
            _ => {
                self.problem(v, key.into(), bad("unknown scheme"));
                return None;
            }
        };
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            self.problem(v, key.into(), bad("no host"));
            return None;
        };
        let tls = if tls {
            let Some(ca) = ca else {
                self.problem(v, format!("{section}.ca_file"), "mqtts:// needs ca_file = \"/etc/gridgate/broker-ca.pem\" (the CA that signed the broker's certificate)".into());
                return None;
            };
            if cert.is_some() != key_file.is_some() {
                let at = cert.as_ref().or(key_file.as_ref()).unwrap_or(v);
                self.problem(
                    at,
                    format!("{section}.cert_file"),
                    "a client certificate needs both cert_file and key_file".into(),
                );
            }
            Some(MqttTls {
                ca: ca.get_ref().into(),
                cert: cert.as_ref().map(|c| c.get_ref().into()),
                key: key_file.as_ref().map(|k| k.get_ref().into()),
            })
        } else {
            None
        };
        Some(MqttBroker {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url
                .port()
                .unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
            tls,
        })
    }

    pub(super) fn check_store(&mut self, raw: Option<&RawStore>, uplink: bool) -> StoreConfig {
        let default_required = if uplink {
            vec![UPLINK_CONSUMER.to_string()]
        } else {
            vec![]
        };
        let Some(r) = raw else {
            return StoreConfig {
                batch_readings: 1000,
                batch_interval: Duration::from_secs(10),
                budget: 1 << 30,
                required_consumers: default_required,
                dedupe_window: DEDUPE_RECENT,
            };
        };
        let batch_readings = match &r.batch_readings {
            None => 1000,
            Some(n) if (1..=100_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    n,
                    "store.batch_readings".into(),
                    "use 1..100000 readings per batch".into(),
                );
                1000
            }
        };
        let dedupe_window = match &r.dedupe_window {
            None => DEDUPE_RECENT,
            Some(n) if (1_000..=10_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    n,
                    "store.dedupe_window".into(),
                    "use 1000..10000000 readings (about 60 bytes of memory each; at least a broker's in-flight window times the readings a message carries)".into(),
                );
                DEDUPE_RECENT
            }
        };
        StoreConfig {
            dedupe_window,
            batch_readings,
            batch_interval: self.duration(
                &r.batch_interval,
                "store.batch_interval".into(),
                Duration::from_secs(10),
            ),
            budget: self.size(&r.budget, "store.budget", 1 << 30),
            required_consumers: r
                .required_consumers
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or(default_required),
        }
    }

    pub(super) fn check_uplink(
        &mut self,
        raw: Option<&RawUplink>,
        gateway_id: &str,
    ) -> Option<UplinkConfig> {
        let r = raw?;
        let broker = self.broker_url(
            &r.broker,
            "uplink.broker",
            [&r.ca_file, &r.cert_file, &r.key_file],
        )?;
        let topic = r
            .topic
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_else(|| format!("gridgate/{gateway_id}/batches"));
        if topic.is_empty() || topic.contains(['+', '#']) {
            if let Some(t) = &r.topic {
                self.problem(
                    t,
                    "uplink.topic".into(),
                    "a topic to publish on has no wildcards".into(),
                );
            }
        }
        let window = match &r.window {
            None => 8,
            Some(w) if (1..=100).contains(w.get_ref()) => *w.get_ref() as usize,
            Some(w) => {
                self.problem(
                    w,
                    "uplink.window".into(),
                    "use 1..100 batches in flight".into(),
                );
                8
            }
        };
        Some(UplinkConfig {
            broker,
            topic,
            client_id: r
                .client_id
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| format!("gridgate-{gateway_id}-uplink")),
            username: r.username.as_ref().map(|u| u.get_ref().clone()),
            password: r.password.as_ref().map(|u| u.get_ref().clone()),
            keep_alive: self.duration(
                &r.keep_alive,
                "uplink.keep_alive".into(),
                Duration::from_secs(30),
            ),
            window,
        })
    }

    pub(super) fn check_ingest(
        &mut self,
        raw: Option<&RawIngest>,
        gateway_id: &str,
        taken: &BTreeSet<String>,
    ) -> Option<IngestConfig> {
        let r = raw?;
        let broker = r
            .broker
            .as_ref()
            .map(|b| self.broker_url(b, "ingest.broker", [&r.ca_file, &r.cert_file, &r.key_file]));
        let (listen, listen_tls) = self.check_field_listener(r);
        let mut devices = Vec::new();
        let mut names = BTreeSet::new();
        let mut topics = BTreeSet::new();
        for (i, d) in r.device.iter().enumerate() {
            let name = d.name.get_ref().clone();
            if !super::valid_name(&name) {
                self.problem(
                    &d.name,
                    format!("ingest.device[{i}].name"),
                    "use letters, digits, '-', '_' or '.'".into(),
                );
            }
            if taken.contains(&name) || !names.insert(name.clone()) {
                self.problem(
                    &d.name,
                    format!("ingest.device[{i}].name"),
                    format!("a device named {name:?} is already defined"),
                );
            }
            let topic = d.topic.get_ref().clone();
            if topic.is_empty() || topic.contains(['+', '#']) {
                self.problem(
                    &d.topic,
                    format!("ingest.device[{i}].topic"),
                    "a device's topic is exact, without wildcards".into(),
                );
            }
            if !topics.insert(topic.clone()) {
                self.problem(
                    &d.topic,
                    format!("ingest.device[{i}].topic"),
                    format!("another device publishes on {topic:?}"),
                );
            }
            if d.points.is_empty() {
                self.problem(
                    &d.name,
                    format!("ingest.device[{i}].points"),
                    "a device needs at least one point".into(),
                );
            }
            let mut pnames = BTreeSet::new();
            let mut points = Vec::new();
            for (j, p) in d.points.iter().enumerate() {
                let pn = p.name.get_ref().clone();
                if !super::valid_name(&pn) || !pnames.insert(pn.clone()) {
                    self.problem(
                        &p.name,
                        format!("ingest.device[{i}].points[{j}].name"),
                        format!("point name {pn:?} is invalid or repeated"),
                    );
                }
                points.push((
                    pn,
                    p.unit
                        .as_ref()
                        .map(|u| u.get_ref().clone())
                        .unwrap_or_default(),
                ));
            }
            devices.push(MqttDevice::new(name, topic, points));
        }
        let filters = r
            .topics
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_else(|| devices.iter().map(|d| d.topic.clone()).collect());
        if broker.is_none() && r.listen.is_none() {
            if let Some(d) = r.device.first() {
                self.problem(&d.name, "ingest".into(), "give broker = \"mqtt://HOST:PORT\" (subscribe at a broker) or listen = \"0.0.0.0:1884\" (devices publish to the gateway), or both".into());
            }
            return None;
        }
        let broker = match broker {
            Some(None) => return None,
            Some(Some(b)) => Some(b),
            None => None,
        };
        Some(IngestConfig {
            broker,
            listen,
            listen_tls,
            topics: filters,
            client_id: r
                .client_id
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| format!("gridgate-{gateway_id}-ingest")),
            username: r.username.as_ref().map(|u| u.get_ref().clone()),
            password: r.password.as_ref().map(|u| u.get_ref().clone()),
            max_payload: self.size(&r.max_payload, "ingest.max_payload", 256 << 10) as usize,
            devices,
        })
    }

    /// `[ingest] listen` (`HOST:PORT`, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`) and its
    /// TLS files. Off loopback the listener must authenticate its devices: a password or
    /// client certificates; anyone on the plant network could otherwise publish readings
    /// the gateway signs as its own.
    fn check_field_listener(&mut self, r: &RawIngest) -> (Option<SocketAddr>, Option<ListenTls>) {
        let Some(l) = &r.listen else {
            self.stray_listener_files(
                r,
                "listen_* files belong to a field listener: give listen = \"mqtts://0.0.0.0:8883\"",
            );
            return (None, None);
        };
        let text = l.get_ref().as_str();
        let (tls, addr) = match text.split_once("://") {
            None => (false, text),
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl", rest)) => (true, rest),
            Some(_) => {
                self.problem(
                    l,
                    "ingest.listen".into(),
                    "write HOST:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtts://0.0.0.0:8883".into(),
                );
                return (None, None);
            }
        };
        let Ok(addr) = addr.trim_end_matches('/').parse::<SocketAddr>() else {
            self.problem(
                l,
                "ingest.listen".into(),
                "write an address and port, e.g. 0.0.0.0:1884 or mqtts://0.0.0.0:8883".into(),
            );
            return (None, None);
        };
        let path =
            |v: &Option<Spanned<String>>| v.as_ref().map(|p| std::path::PathBuf::from(p.get_ref()));
        let listen_tls = if tls {
            match (path(&r.listen_cert_file), path(&r.listen_key_file)) {
                (Some(cert), Some(key)) => Some(ListenTls {
                    cert,
                    key,
                    client_ca: path(&r.listen_client_ca_file),
                }),
                _ => {
                    self.problem(
                        l,
                        "ingest.listen_cert_file".into(),
                        "mqtts:// needs listen_cert_file and listen_key_file (the gateway's certificate for field devices)".into(),
                    );
                    None
                }
            }
        } else {
            self.stray_listener_files(r, "TLS files need listen = \"mqtts://HOST:PORT\"");
            None
        };
        let password = r.username.is_some() && r.password.is_some();
        let client_certs = listen_tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !addr.ip().is_loopback() && !password && !client_certs {
            self.problem(
                l,
                "ingest.listen".into(),
                format!("{addr} is reachable from the network, and anyone there could publish readings this gateway signs as its own: set [ingest] username and password (devices must send them), or listen = \"mqtts://{addr}\" with listen_client_ca_file (devices need a certificate), or listen on 127.0.0.1"),
            );
        }
        (Some(addr), listen_tls)
    }

    /// A problem at each listener TLS file written where no TLS listener takes it.
    fn stray_listener_files(&mut self, r: &RawIngest, why: &str) {
        for f in [
            &r.listen_cert_file,
            &r.listen_key_file,
            &r.listen_client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            self.problem(f, "ingest.listen".into(), why.into());
        }
    }

    pub(super) fn check_grpc(&mut self, raw: Option<&RawGrpc>) -> Option<GrpcConfig> {
        let r = raw?;
        let listen = match r.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    &r.listen,
                    "grpc.listen".into(),
                    "write an address and port, e.g. 0.0.0.0:50051".into(),
                );
                return None;
            }
        };
        let plaintext_listen = match &r.plaintext_listen {
            None => None,
            Some(p) => {
                match p.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.ip().is_loopback() => Some(a),
                    Ok(_) => {
                        self.problem(p, "grpc.plaintext_listen".into(), "a plaintext listener may only bind a loopback address (127.0.0.1 or ::1)".into());
                        None
                    }
                    Err(_) => {
                        self.problem(
                            p,
                            "grpc.plaintext_listen".into(),
                            "write an address and port, e.g. 127.0.0.1:50052".into(),
                        );
                        None
                    }
                }
            }
        };
        Some(GrpcConfig {
            listen,
            cert_file: r.cert_file.get_ref().into(),
            key_file: r.key_file.get_ref().into(),
            client_ca_file: r.client_ca_file.get_ref().into(),
            plaintext_listen,
        })
    }

    pub(super) fn check_broker(&mut self, raw: Option<&RawBroker>) -> Option<BrokerConfig> {
        let r = raw?;
        match r.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) => Some(BrokerConfig { listen }),
            Err(_) => {
                self.problem(
                    &r.listen,
                    "broker.listen".into(),
                    "write an address and port, e.g. 127.0.0.1:1883".into(),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }
}
