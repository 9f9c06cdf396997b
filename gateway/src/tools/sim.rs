//! `gridgate sim`: simulated lines of meters and Modbus devices for bench work, tests and
//! the demo, described by a small TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridgate_drivers::dlt645::Address;
use gridgate_drivers::dlt645::sim::{SimLine, SimMeter};
use gridgate_drivers::link::SerialSettings;
use gridgate_drivers::modbus::sim::{SimBus, SimDevice, serve_rtu, serve_rtu_over_tcp, serve_tcp};
use gridgate_drivers::sim::{LineTiming, LoadModel, Pty, PtyHold, SharedLoad};
use serde::Deserialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::debug;

/// A simulator file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    /// Simulated lines.
    #[serde(default)]
    pub line: Vec<SimLineSpec>,
}

/// One simulated line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimLineSpec {
    /// Name, used as the bus name in the printed gateway config.
    pub name: String,
    /// `dlt645`, `modbus-tcp`, `modbus-rtu` (pty), `modbus-rtu-tcp`, or `mqtt` (devices that
    /// publish to, and take commands from, the broker at `broker`).
    pub protocol: String,
    /// `mqtt`: the broker's HOST:PORT.
    pub broker: Option<String>,
    /// `mqtt`: how often each device publishes its power (default 1s).
    pub period: Option<String>,
    /// TCP address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: Option<String>,
    /// Serve on a pseudo-terminal instead, with a symlink at this path (or `auto`).
    pub pty: Option<String>,
    /// Pace the DL/T 645 line as if at this baud rate (0: as fast as possible).
    #[serde(default)]
    pub baud: u32,
    /// DL/T 645 meters' reply delay (the standard allows 20 ms to 500 ms).
    pub turnaround: Option<String>,
    /// DL/T 645 meters.
    #[serde(default)]
    pub meters: Vec<SimMeterSpec>,
    /// Modbus devices.
    #[serde(default)]
    pub devices: Vec<SimDeviceSpec>,
}

/// A simulated meter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMeterSpec {
    /// 12-digit address.
    pub address: String,
    /// Rated power of the load it measures, kW.
    #[serde(default = "default_kw")]
    pub rated_kw: f64,
    /// Forward energy at start, kWh.
    #[serde(default)]
    pub energy_kwh: f64,
}

/// A simulated Modbus device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDeviceSpec {
    /// Unit id.
    pub unit: u8,
    /// Rated power, kW.
    #[serde(default = "default_kw")]
    pub rated_kw: f64,
    /// Forward energy at start, kWh.
    #[serde(default)]
    pub energy_kwh: f64,
}

fn default_kw() -> f64 {
    5.0
}

/// Why simulators cannot start.
#[derive(Debug, Error)]
pub enum SimError {
    /// Bad file.
    #[error("{0}")]
    Spec(String),
    /// Cannot listen or open a pty.
    #[error("line {line}: {source}")]
    Io {
        /// Line name.
        line: String,
        source: std::io::Error,
    },
}

/// A running line: where a gateway reaches it, and handles for tests.
#[derive(Debug)]
pub struct RunningLine {
    /// Name from the spec.
    pub name: String,
    /// `dlt645` or `modbus`.
    pub protocol: &'static str,
    /// Link URL a gateway uses.
    pub link: String,
    /// Meters on it (DL/T 645).
    pub meters: Vec<SimMeter>,
    /// Devices on it (Modbus).
    pub devices: Vec<SimDevice>,
    /// The DL/T 645 line, for fault injection.
    pub dlt645: Option<SimLine>,
    _pty: Option<PtyHold>,
}

/// Simulators started from a spec; stopped when dropped.
#[derive(Debug)]
pub struct RunningSims {
    /// The lines.
    pub lines: Vec<RunningLine>,
    tasks: JoinSet<()>,
}

impl RunningSims {
    /// A gateway config (TOML) that polls every simulated device with a useful set of points.
    pub fn gateway_config(&self, id: &str, poll: &str) -> String {
        let mut out = format!("[gateway]\nid = \"{id}\"\n\n");
        for l in self.lines.iter().filter(|l| l.protocol != "mqtt") {
            out.push_str(&format!(
                "[[bus]]\nname = \"{}\"\nlink = \"{}\"\n\n",
                l.name, l.link
            ));
        }
        for l in self.lines.iter().filter(|l| l.protocol != "mqtt") {
            for m in &l.meters {
                out.push_str(&format!(
                    "[[device]]\nname = \"meter-{}\"\nbus = \"{}\"\nprotocol = \"dlt645\"\naddress = \"{}\"\npoll = \"{poll}\"\npoints = [\n  {{ name = \"energy_import\", di = \"00010000\" }},\n  {{ name = \"active_power\", di = \"02030000\" }},\n  {{ name = \"voltage_a\", di = \"02010100\" }},\n  {{ name = \"status3\", di = \"04000503\" }},\n]\n\n",
                    m.address.to_string().trim_start_matches('0'),
                    l.name,
                    m.address
                ));
            }
            for d in &l.devices {
                out.push_str(&format!(
                    "[[device]]\nname = \"{}-unit{}\"\nbus = \"{}\"\nprotocol = \"modbus\"\nunit = {}\npoll = \"{poll}\"\npoints = [\n  {{ name = \"active_power\", table = \"holding\", address = 0, type = \"f32\", unit = \"kW\" }},\n  {{ name = \"voltage\", table = \"holding\", address = 2, type = \"f32\", unit = \"V\" }},\n  {{ name = \"energy\", table = \"holding\", address = 4, type = \"u32\", scale = 0.001, unit = \"kWh\" }},\n  {{ name = \"setpoint\", table = \"holding\", address = 10, type = \"u16\", scale = 0.1, unit = \"%\" }},\n  {{ name = \"running\", table = \"discrete\", address = 0 }},\n]\n\n",
                    l.name, d.unit, l.name, d.unit
                ));
            }
        }
        // MQTT loads: one [ingest] on the first MQTT line's broker, a device per load.
        let mqtt: Vec<&RunningLine> = self.lines.iter().filter(|l| l.protocol == "mqtt").collect();
        if let Some(first) = mqtt.first() {
            out.push_str(&format!(
                "[ingest]\nbroker = \"{}\"\nclient_id = \"{id}-ingest\"\n\n",
                first.link
            ));
            for l in &mqtt {
                for d in &l.devices {
                    out.push_str(&format!(
                        "[[ingest.device]]\nname = \"{}-unit{}\"\ntopic = \"{}\"\npoints = [{{ name = \"active_power\", unit = \"kW\" }}, {{ name = \"setpoint\", unit = \"%\" }}]\n\n",
                        l.name,
                        d.unit,
                        MqttLoadTopics::of(&l.name, d.unit).data
                    ));
                }
            }
        }
        out
    }
}

/// Reads a simulator file.
pub fn load_spec(path: &Path) -> Result<SimSpec, SimError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SimError::Spec(format!("{}: cannot read: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| SimError::Spec(format!("{}: {e}", path.display())))
}

/// The built-in simulator set: three meters on a 2400-baud RS-485 line (a pty), and two
/// Modbus TCP devices.
pub fn default_spec(pty_dir: Option<&Path>) -> SimSpec {
    let pty = pty_dir.map_or("auto".to_string(), |d| {
        d.join("ttyS1").display().to_string()
    });
    let text = format!(
        r#"
[[line]]
name = "rs485-1"
protocol = "dlt645"
pty = "{pty}"
baud = 2400
turnaround = "20ms"
meters = [
  {{ address = "000000000001", rated_kw = 3.2, energy_kwh = 10234.5 }},
  {{ address = "000000000002", rated_kw = 7.5, energy_kwh = 52001.25 }},
  {{ address = "000000000003", rated_kw = 1.1, energy_kwh = 877.0 }},
]

[[line]]
name = "plant"
protocol = "modbus-tcp"
listen = "127.0.0.1:0"
devices = [
  {{ unit = 1, rated_kw = 55.0, energy_kwh = 120000.0 }},
  {{ unit = 2, rated_kw = 22.0, energy_kwh = 8000.0 }},
]
"#
    );
    // The text above is fixed; a parse failure is a bug caught by the tests.
    toml::from_str(&text).unwrap_or(SimSpec { line: vec![] })
}

fn load_of(kw: f64, kwh: f64, seed: usize) -> SharedLoad {
    SharedLoad::new(LoadModel::new(kw, kwh, seed as f64 * 1.3))
}

/// Starts every line of `spec`.
pub async fn start(spec: &SimSpec) -> Result<RunningSims, SimError> {
    let mut tasks = JoinSet::new();
    let mut lines = Vec::new();
    for (n, l) in spec.line.iter().enumerate() {
        let io_err = |source| SimError::Io {
            line: l.name.clone(),
            source,
        };
        let bad = |m: String| SimError::Spec(format!("line {}: {m}", l.name));
        if l.protocol == "mqtt" {
            let broker = l
                .broker
                .clone()
                .ok_or_else(|| bad("an mqtt line needs broker = \"HOST:PORT\"".into()))?;
            let (host, port) = broker
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| bad(format!("broker {broker:?} is not HOST:PORT")))?;
            let period = match &l.period {
                Some(t) => humantime::parse_duration(t).map_err(|e| bad(format!("period: {e}")))?,
                None => Duration::from_secs(1),
            };
            let devices: Vec<SimDevice> = l
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| SimDevice::new(d.unit, load_of(d.rated_kw, d.energy_kwh, n * 16 + i)))
                .collect();
            for d in &devices {
                tasks.spawn(mqtt_load(
                    host.clone(),
                    port,
                    MqttLoadTopics::of(&l.name, d.unit),
                    d.clone(),
                    period,
                ));
            }
            lines.push(RunningLine {
                name: l.name.clone(),
                protocol: "mqtt",
                link: format!("mqtt://{broker}"),
                meters: vec![],
                devices,
                dlt645: None,
                _pty: None,
            });
            continue;
        }
        if l.listen.is_some() == l.pty.is_some() {
            return Err(bad(
                "give either listen = \"HOST:PORT\" or pty = \"PATH\"".into()
            ));
        }
        let pty_path = l.pty.as_deref().filter(|p| *p != "auto").map(PathBuf::from);
        match l.protocol.as_str() {
            "dlt645" => {
                let mut meters = Vec::new();
                for (i, m) in l.meters.iter().enumerate() {
                    let a = Address::parse(&m.address).map_err(|e| bad(e.to_string()))?;
                    meters.push(SimMeter::new(
                        a,
                        load_of(m.rated_kw, m.energy_kwh, n * 16 + i),
                    ));
                }
                let mut line = SimLine::new(meters.clone());
                if l.baud > 0 {
                    let settings = SerialSettings {
                        baud: l.baud,
                        ..SerialSettings::DLT645
                    };
                    let turnaround = match &l.turnaround {
                        Some(t) => humantime::parse_duration(t)
                            .map_err(|e| bad(format!("turnaround: {e}")))?,
                        None => Duration::from_millis(20),
                    };
                    line.timing = LineTiming {
                        byte_time: settings.byte_time(),
                        turnaround,
                    };
                }
                let (link, hold) = if let Some(listen) = &l.listen {
                    let listener = TcpListener::bind(listen).await.map_err(io_err)?;
                    let addr = listener.local_addr().map_err(io_err)?;
                    let served = line.clone();
                    tasks.spawn(async move {
                        loop {
                            let Ok((stream, peer)) = listener.accept().await else {
                                break;
                            };
                            let _ = stream.set_nodelay(true);
                            let line = served.clone();
                            tokio::spawn(async move {
                                if let Err(e) = line.serve(stream).await {
                                    debug!(%peer, "dlt645 sim connection ended: {e}");
                                }
                            });
                        }
                    });
                    (format!("tcp://{addr}"), None)
                } else {
                    let pty = Pty::open(pty_path.as_deref()).map_err(io_err)?;
                    let path = pty.path().display().to_string();
                    let Pty { master, hold } = pty;
                    let served = line.clone();
                    tasks.spawn(async move {
                        if let Err(e) = served.serve(master).await {
                            debug!("dlt645 sim pty ended: {e}");
                        }
                    });
                    let baud = if l.baud > 0 { l.baud } else { 2400 };
                    (
                        format!("serial://{path}?baud={baud}&parity=even"),
                        Some(hold),
                    )
                };
                lines.push(RunningLine {
                    name: l.name.clone(),
                    protocol: "dlt645",
                    link,
                    meters,
                    devices: vec![],
                    dlt645: Some(line),
                    _pty: hold,
                });
            }
            proto @ ("modbus-tcp" | "modbus-rtu" | "modbus-rtu-tcp") => {
                let devices: Vec<SimDevice> = l
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        SimDevice::new(d.unit, load_of(d.rated_kw, d.energy_kwh, n * 16 + i))
                    })
                    .collect();
                let bus = SimBus::new(devices.clone());
                let (link, hold) = match (proto, &l.listen) {
                    ("modbus-rtu", None) => {
                        let pty = Pty::open(pty_path.as_deref()).map_err(io_err)?;
                        let path = pty.path().display().to_string();
                        let Pty { master, hold } = pty;
                        tasks.spawn(async move {
                            if let Err(e) = serve_rtu(master, bus).await {
                                debug!("modbus sim pty ended: {e}");
                            }
                        });
                        (format!("rtu-serial://{path}?baud=9600"), Some(hold))
                    }
                    ("modbus-tcp" | "modbus-rtu-tcp", Some(listen)) => {
                        let listener = TcpListener::bind(listen).await.map_err(io_err)?;
                        let addr: SocketAddr = listener.local_addr().map_err(io_err)?;
                        if proto == "modbus-tcp" {
                            tasks.spawn(async move {
                                let _ = serve_tcp(listener, bus).await;
                            });
                            (format!("tcp://{addr}"), None)
                        } else {
                            tasks.spawn(async move {
                                let _ = serve_rtu_over_tcp(listener, bus).await;
                            });
                            (format!("rtu-tcp://{addr}"), None)
                        }
                    }
                    ("modbus-rtu", Some(_)) => {
                        return Err(bad(
                            "modbus-rtu runs on a pty; use modbus-rtu-tcp to listen on TCP".into(),
                        ));
                    }
                    _ => {
                        return Err(bad(format!(
                            "{proto} listens on TCP: give listen = \"HOST:PORT\""
                        )));
                    }
                };
                lines.push(RunningLine {
                    name: l.name.clone(),
                    protocol: "modbus",
                    link,
                    meters: vec![],
                    devices,
                    dlt645: None,
                    _pty: hold,
                });
            }
            other => {
                return Err(bad(format!(
                    "unknown protocol {other:?}; use dlt645, modbus-tcp, modbus-rtu, modbus-rtu-tcp or mqtt"
                )));
            }
        }
    }
    Ok(RunningSims { lines, tasks })
}

impl Drop for RunningSims {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The topics of a simulated MQTT load: `LINE/unitN/data` (its readings), `.../cmd` and
/// `.../ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLoadTopics {
    /// Where it publishes its readings.
    pub data: String,
    /// Where it takes commands.
    pub command: String,
    /// Where it acknowledges them.
    pub ack: String,
}

impl MqttLoadTopics {
    /// The topics of unit `unit` on line `line`.
    pub fn of(line: &str, unit: u8) -> Self {
        let base = format!("{line}/unit{unit}");
        MqttLoadTopics {
            data: format!("{base}/data"),
            command: format!("{base}/cmd"),
            ack: format!("{base}/ack"),
        }
    }
}

/// A simulated load commanded over MQTT: publishes its power and setpoint (JSON, QoS 1)
/// every `period` on `topics.data`, and takes `{"id", "value"}` commands (a setpoint in
/// percent of rated power) on `topics.command`, acknowledging each on `topics.ack` with
/// `{"id", "ok", "value", "previous"}` (the gateway's DR command protocol). A silent device
/// neither publishes nor acknowledges.
pub async fn mqtt_load(
    host: String,
    port: u16,
    topics: MqttLoadTopics,
    device: SimDevice,
    period: Duration,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(format!("sim-{}", topics.data.replace('/', "-")), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if device.is_silent() {
                    continue;
                }
                let (p, sp) = {
                    let l = device.load.lock();
                    (l.power_kw(tokio::time::Instant::now()), l.setpoint_pct)
                };
                let payload = format!(
                    r#"[{{"point":"active_power","value":{p}}},{{"point":"setpoint","value":{sp}}}]"#
                );
                let _ = client.try_publish(topics.data.clone(), QoS::AtLeastOnce, false, payload);
            }
            e = eventloop.poll() => match e {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topics.command.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(msg))) if msg.topic == topics.command => {
                    if device.is_silent() {
                        continue;
                    }
                    let Ok(cmd) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
                        continue;
                    };
                    let id = cmd["id"].clone();
                    let ack = match cmd["value"].as_f64() {
                        Some(v) if (0.0..=100.0).contains(&v) => {
                            let mut l = device.load.lock();
                            let previous = l.setpoint_pct;
                            l.setpoint_pct = v;
                            serde_json::json!({ "id": id, "ok": true, "value": v, "previous": previous })
                        }
                        _ => serde_json::json!({ "id": id, "ok": false, "error": "value must be a setpoint of 0 to 100 %" }),
                    };
                    let _ = client.try_publish(topics.ack.clone(), QoS::AtLeastOnce, false, ack.to_string());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            },
        }
    }
}

/// A simulated MQTT field device: publishes a temperature and a door contact as JSON
/// (QoS 1) every second on `topic` until `cancel` fires. Reconnects if the broker goes.
pub async fn mqtt_sensor(
    host: String,
    port: u16,
    topic: String,
    cancel: tokio_util::sync::CancellationToken,
) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let mut opts = MqttOptions::new(format!("sim-sensor-{port}"), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let publisher = {
        let client = client.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                n += 1;
                let t = 21.0 + ((n as f64) / 20.0).sin() * 1.5;
                let payload = format!(
                    r#"[{{"point":"temperature","value":{:.2}}},{{"point":"door_open","value":{}}}]"#,
                    t,
                    n % 30 < 3
                );
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            e = eventloop.poll() => {
                if e.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    publisher.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spec_parses() {
        let spec = default_spec(None);
        assert_eq!(spec.line.len(), 2);
        assert_eq!(spec.line[0].meters.len(), 3);
    }

    #[test]
    fn the_shipped_sim_file_parses() {
        let spec: SimSpec = toml::from_str(include_str!("../../../deploy/sim.toml")).unwrap();
        assert_eq!(spec.line.len(), 4);
    }

    #[tokio::test]
    async fn the_printed_config_is_a_valid_gateway_config() {
        let sims = start(&default_spec(None)).await.unwrap();
        let text = sims.gateway_config("demo", "5s");
        let cfg = gridgate_config::parse(&text, Path::new("<sim>")).unwrap();
        assert_eq!(cfg.buses.len(), 2);
        assert_eq!(cfg.devices().count(), 5);
    }
}
