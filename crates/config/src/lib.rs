//! The gateway's TOML config: parsed strictly (unknown keys are errors), then checked as a
//! whole, so that every problem is reported with its file, line and key at once.
//!
//! [`RawConfig`] mirrors the file; [`GatewayConfig`] is what the rest of the gateway uses,
//! with links parsed, durations resolved, defaults applied and Modbus reads planned.

pub mod dr;
pub mod files;
pub mod ledger;
pub mod market;
pub mod openadr;
mod raw;
pub mod services;
mod summary;
pub mod web;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gridgate_core::names::valid_name;
use gridgate_drivers::dlt645::{Address, DataId, di};
use gridgate_drivers::link::{Framing, Link};
use gridgate_drivers::modbus::{self, DataType, Order, PointSpec, ReadPlan, Table};
use thiserror::Error;

pub use dr::{
    Accepts, BaselineConfig, Control, ControlPoint, DrConfig, LoadConfig, MqttControl,
    ProgramConfig, RemoteAuth,
};
pub use raw::RawConfig;
use raw::{RawBus, RawDevice, RawPoint};
pub use services::{
    BrokerConfig, DEDUPE_RECENT, GrpcConfig, IngestConfig, MqttBroker, MqttDevice, MqttTls,
    StoreConfig, UPLINK_CONSUMER, UplinkConfig,
};
pub use summary::summary;
use toml::Spanned;

/// A problem found in a config file, located to its line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted key path, e.g. `device[2].bus`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Why a config cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more problems, each located.
    #[error("{}", render(path, problems))]
    Invalid {
        /// File (or `<embedded>`).
        path: PathBuf,
        /// Problems, in file order.
        problems: Vec<Problem>,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}:{}:{}: {}: {}",
            path.display(),
            p.line,
            p.column,
            p.key,
            p.message
        ));
    }
    out
}

/// Which protocol a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// DL/T 645-2007.
    Dlt645,
    /// Modbus (TCP or RTU, by the bus link).
    Modbus,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Dlt645 => "dlt645",
            Protocol::Modbus => "modbus",
        })
    }
}

/// The whole, checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Gateway id, unique in the aggregator's fleet.
    pub id: String,
    /// Where the gateway keeps its data.
    pub data_dir: PathBuf,
    /// The gateway's Ed25519 identity key (PKCS#8 PEM), made by `gridgate keygen`.
    pub identity: PathBuf,
    /// Buses with their devices.
    pub buses: Vec<BusConfig>,
    /// Batching and retention.
    pub store: StoreConfig,
    /// Signed batches to the master station over MQTT.
    pub uplink: Option<UplinkConfig>,
    /// Field devices over MQTT.
    pub ingest: Option<IngestConfig>,
    /// The embedded MQTT broker.
    pub broker: Option<BrokerConfig>,
    /// The master station's gRPC API.
    pub grpc: Option<GrpcConfig>,
    /// Trusted DR issuers.
    pub dr: Option<DrConfig>,
    /// Loads DR events may move.
    pub loads: Vec<LoadConfig>,
    /// The consortium ledger.
    pub ledger: Option<ledger::LedgerConfig>,
    /// The commissioning page and `/metrics`.
    pub web: Option<web::WebConfig>,
    /// The flexibility market.
    pub market: Option<market::MarketConfig>,
    /// The gateway as an OpenADR 3 VEN.
    pub openadr: Option<openadr::OpenAdrConfig>,
}

impl GatewayConfig {
    /// The points whose samples the store keeps: the loads' meters (DR baselines) and what
    /// the market agent forecasts from and reads storage from.
    pub fn metered_points(&self) -> Vec<String> {
        let mut out: Vec<String> = self.loads.iter().map(|l| l.meter.clone()).collect();
        if let Some(m) = &self.market {
            out.extend(m.meter.clone());
            for r in &m.resources {
                match r {
                    market::ResourceConfig::Pv { meter } => out.push(meter.clone()),
                    market::ResourceConfig::Storage { soc_point, .. } => {
                        out.push(soc_point.clone())
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Every device, with its bus.
    pub fn devices(&self) -> impl Iterator<Item = (&BusConfig, &DeviceConfig)> {
        self.buses
            .iter()
            .flat_map(|b| b.devices.iter().map(move |d| (b, d)))
    }

    /// Number of points over all devices (polled and MQTT).
    pub fn point_count(&self) -> usize {
        self.devices().map(|(_, d)| d.points.len()).sum::<usize>()
            + self
                .ingest
                .as_ref()
                .map_or(0, |i| i.devices.iter().map(|d| d.points.len()).sum())
    }
}

/// Timing and retry policy of a bus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusTiming {
    /// Response timeout of one request.
    pub timeout: Duration,
    /// Longest silence inside one reply (DL/T 645).
    pub inter_byte_timeout: Duration,
    /// FE wake-up bytes before each DL/T 645 request.
    pub wakeup_bytes: usize,
    /// Extra attempts after a failed request (timeout, corrupt reply).
    pub retries: u32,
    /// Pause before the first retry; doubles each time.
    pub retry_backoff: Duration,
    /// Failed polls in a row before a device is reported offline.
    pub offline_after: u32,
    /// Longest wait between attempts to reopen a failed link.
    pub reconnect_max: Duration,
}

/// A bus: one line (serial port or TCP connection) and the devices on it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    pub name: String,
    /// Where the line is.
    pub link: Link,
    /// Protocol of its devices.
    pub protocol: Protocol,
    pub timing: BusTiming,
    pub devices: Vec<DeviceConfig>,
}

/// A device on a bus.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Name, unique in the gateway.
    pub name: String,
    /// Poll interval.
    pub poll: Duration,
    /// Protocol-specific addressing.
    pub kind: DeviceKind,
    /// Points, in config order.
    pub points: Vec<PointConfig>,
}

/// How a device is addressed and its reads planned.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    /// A DL/T 645 meter.
    Dlt645 {
        /// Its address.
        address: Address,
    },
    /// A Modbus device.
    Modbus {
        /// Unit id.
        unit: u8,
        /// Reads that cover all points.
        plan: Vec<ReadPlan>,
        /// Writes holding registers with function 23 (Read/Write Multiple Registers), which
        /// returns the read-back in the same reply: one round trip fewer per DR write.
        read_write_multiple: bool,
    },
}

/// A point of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// Name, unique within the device.
    pub name: String,
    /// Engineering unit.
    pub unit: String,
    /// Where it is read from.
    pub source: PointSource,
}

/// Driver-specific source address of a point.
#[derive(Debug, Clone, PartialEq)]
pub enum PointSource {
    /// DL/T 645 data identifier.
    Dlt645(DataId),
    /// Modbus table, address, type, orders, scale.
    Modbus(PointSpec),
}

/// Parses and checks the file at `path`.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and checks `text`; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<GatewayConfig, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let (raw, unknown) = parse_raw(text);
    let Some(raw) = raw else {
        return Err(invalid(unknown));
    };
    let mut checker = Checker {
        text,
        problems: unknown,
    };
    let cfg = checker.check(raw);
    if checker.problems.is_empty() {
        Ok(cfg)
    } else {
        let mut problems = checker.problems;
        problems.sort_by_key(|p| (p.line, p.column));
        Err(invalid(problems))
    }
}

/// Unknown keys reported in one go at most; a file with more is not a config.
const MAX_UNKNOWN_KEYS: usize = 50;

/// Parses `text`, reporting every unknown key rather than stopping at the first: each is
/// blanked out (its line turned to spaces, so that every later offset stays true) and the
/// parse tried again. Any other error ends it. The config, when it parsed, and the problems.
fn parse_raw(text: &str) -> (Option<RawConfig>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut current = text.to_string();
    for _ in 0..MAX_UNKNOWN_KEYS {
        let e = match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => return (Some(raw), problems),
            Err(e) => e,
        };
        let start = e.span().map(|s| s.start);
        let (line, column) = start.map_or((0, 0), |s| line_col(text, s));
        problems.push(Problem {
            line,
            column,
            key: key_at(text, start),
            message: e.message().trim().to_string(),
        });
        let blanked = start
            .filter(|_| e.message().starts_with("unknown field"))
            .and_then(|s| blank_entry(&current, s));
        match blanked {
            Some(next) => current = next,
            None => break,
        }
    }
    (None, problems)
}

/// `text` with the `key = value` line at `offset` turned to spaces; `None` where the key is
/// not the first thing on its line or its value goes on past the line (an array or table
/// written over several lines), which blanking one line would break.
fn blank_entry(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset].rfind('\n').map_or(0, |p| p + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |p| offset + p);
    if !text[start..offset].trim().is_empty() {
        return None;
    }
    let line = &text[start..end];
    let opens = line.matches(['[', '{']).count();
    let closes = line.matches([']', '}']).count();
    if opens != closes || line.contains("\"\"\"") || line.contains("'''") {
        return None;
    }
    let mut out = text.as_bytes().to_vec();
    out[start..end].fill(b' ');
    String::from_utf8(out).ok()
}

/// Every file `text` names (keys, certificates, credentials) with where it names it;
/// `cfg` is what `text` parsed to. A text that does not parse names none.
pub fn named_files(text: &str, cfg: &GatewayConfig) -> Vec<files::NamedFile> {
    match toml::from_str::<RawConfig>(text) {
        Ok(raw) => files::named(text, &raw, &cfg.identity),
        Err(_) => Vec::new(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

/// The key written at `offset`, for parse errors whose message does not name it.
fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else {
        return "config".into();
    };
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |p| p + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key: String = line
        .trim_start()
        .trim_start_matches('[')
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
        .collect();
    if key.is_empty() { "config".into() } else { key }
}

struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, key: String, message: String) {
        let (line, column) = line_col(self.text, at.span().start);
        self.problems.push(Problem {
            line,
            column,
            key,
            message,
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: String,
        default: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(s, key, "must be longer than zero".into());
                default
            }
            Err(e) => {
                self.problem(
                    s,
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write 500ms, 15s, 5m",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// `[gateway]`: the id, and where the data and the identity key are.
    fn check_gateway(&mut self, raw: &RawConfig) -> (String, PathBuf, PathBuf) {
        let id = raw.gateway.id.get_ref().trim().to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            self.problem(
                &raw.gateway.id,
                "gateway.id".into(),
                "use letters, digits, '-', '_' or '.' (for example site-042)".into(),
            );
        }
        let data_dir = raw
            .gateway
            .data_dir
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/var/lib/gridgate"));
        let identity = raw
            .gateway
            .identity
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/etc/gridgate/identity.key"));

        (id, data_dir, identity)
    }

    /// `[[bus]]`: each line, named once; by name, the index of each.
    fn check_buses(&mut self, raw: &RawConfig) -> (Vec<BusConfig>, BTreeMap<String, usize>) {
        let mut buses: Vec<BusConfig> = Vec::new();
        let mut bus_names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, b) in raw.bus.iter().enumerate() {
            if let Some(bus) = self.check_bus(i, b) {
                if bus_names.contains_key(&bus.name) {
                    self.problem(
                        &b.name,
                        format!("bus[{i}].name"),
                        format!("a bus named {:?} is already defined", bus.name),
                    );
                    continue;
                }
                bus_names.insert(bus.name.clone(), buses.len());
                buses.push(bus);
            }
        }

        (buses, bus_names)
    }

    /// `[[device]]`: each device on its bus (one protocol per bus, one device per address
    /// or unit); the names of all devices.
    fn check_devices(
        &mut self,
        raw: &RawConfig,
        buses: &mut [BusConfig],
        bus_names: &BTreeMap<String, usize>,
    ) -> BTreeSet<String> {
        let mut device_names = BTreeSet::new();
        let mut bus_protocol: BTreeMap<usize, Protocol> = BTreeMap::new();
        let mut dlt_addresses: BTreeSet<(usize, Address)> = BTreeSet::new();
        let mut modbus_units: BTreeSet<(usize, u8)> = BTreeSet::new();
        for (i, d) in raw.device.iter().enumerate() {
            let name = d.name.get_ref().clone();
            if !valid_name(&name) {
                self.problem(
                    &d.name,
                    format!("device[{i}].name"),
                    "use letters, digits, '-', '_' or '.' (it becomes part of point names)".into(),
                );
            }
            if !device_names.insert(name.clone()) {
                self.problem(
                    &d.name,
                    format!("device[{i}].name"),
                    format!("a device named {name:?} is already defined"),
                );
            }
            let bus_idx = bus_names.get(d.bus.get_ref()).copied();
            if bus_idx.is_none() {
                let known: Vec<&str> = bus_names.keys().map(String::as_str).collect();
                self.problem(
                    &d.bus,
                    format!("device[{i}].bus"),
                    format!(
                        "no bus named {:?}; defined buses: {}",
                        d.bus.get_ref(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            // Check the device even without its bus, so that every problem shows at once.
            let device = self.check_device(i, d, bus_idx.map(|b| &buses[b]));
            let (Some(bus_idx), Some(device)) = (bus_idx, device) else {
                continue;
            };
            let protocol = match device.kind {
                DeviceKind::Dlt645 { address } => {
                    if !dlt_addresses.insert((bus_idx, address)) {
                        self.problem(
                            d.address.as_ref().unwrap_or(&d.name),
                            format!("device[{i}].address"),
                            format!(
                                "another meter on bus {:?} has address {address}",
                                buses[bus_idx].name
                            ),
                        );
                    }
                    Protocol::Dlt645
                }
                DeviceKind::Modbus { unit, .. } => {
                    if !modbus_units.insert((bus_idx, unit)) {
                        self.problem(
                            &d.name,
                            format!("device[{i}].unit"),
                            format!(
                                "another device on bus {:?} has unit {unit}",
                                buses[bus_idx].name
                            ),
                        );
                    }
                    Protocol::Modbus
                }
            };
            match bus_protocol.get(&bus_idx) {
                Some(p) if *p != protocol => {
                    self.problem(
                        &d.protocol,
                        format!("device[{i}].protocol"),
                        format!(
                            "bus {:?} already carries {p} devices; put {protocol} devices on their own bus",
                            buses[bus_idx].name
                        ),
                    );
                    continue;
                }
                _ => {
                    bus_protocol.insert(bus_idx, protocol);
                }
            }
            buses[bus_idx].protocol = protocol;
            buses[bus_idx].devices.push(device);
        }
        device_names
    }

    fn check(&mut self, raw: RawConfig) -> GatewayConfig {
        let (id, data_dir, identity) = self.check_gateway(&raw);
        let (mut buses, bus_names) = self.check_buses(&raw);
        let device_names = self.check_devices(&raw, &mut buses, &bus_names);
        let uplink = self.check_uplink(raw.uplink.as_ref(), &id);
        let store = self.check_store(raw.store.as_ref(), uplink.is_some());
        let ingest = self.check_ingest(raw.ingest.as_ref(), &id, &device_names);
        let broker = self.check_broker(raw.broker.as_ref());
        let grpc = self.check_grpc(raw.grpc.as_ref());
        let points = point_names(&buses, ingest.as_ref());
        let writable = writable_points(&buses);
        let dr = self.check_dr(raw.dr.as_ref(), &id, raw.openadr.is_some());
        let mqtt_broker = ingest.as_ref().is_some_and(|i| i.broker.is_some());
        let loads = self.check_loads(&raw.load, &points, &writable, mqtt_broker);
        let ledger = self.check_ledger(raw.ledger.as_ref(), &id);
        let web = self.check_web(raw.web.as_ref());
        let market = self.check_market(raw.market.as_ref(), &loads, &points);
        let openadr = self.check_openadr(raw.openadr.as_ref(), &id, dr.as_ref(), &loads);
        GatewayConfig {
            id,
            data_dir,
            identity,
            buses,
            store,
            uplink,
            ingest,
            broker,
            grpc,
            dr,
            loads,
            ledger,
            web,
            market,
            openadr,
        }
    }

    fn check_bus(&mut self, i: usize, b: &RawBus) -> Option<BusConfig> {
        let name = b.name.get_ref().clone();
        if !valid_name(&name) {
            self.problem(
                &b.name,
                format!("bus[{i}].name"),
                "use letters, digits, '-', '_' or '.'".into(),
            );
        }
        let link = match Link::parse(b.link.get_ref()) {
            Ok(l) => l,
            Err(e) => {
                self.problem(&b.link, format!("bus[{i}].link"), e.to_string());
                return None;
            }
        };
        let key = |k: &str| format!("bus[{i}].{k}");
        let timing = BusTiming {
            timeout: self.duration(&b.timeout, key("timeout"), Duration::from_millis(1000)),
            inter_byte_timeout: self.duration(
                &b.inter_byte_timeout,
                key("inter_byte_timeout"),
                Duration::from_millis(500),
            ),
            wakeup_bytes: b.wakeup_bytes.as_ref().map_or(4, |w| *w.get_ref() as usize),
            retries: b.retries.as_ref().map_or(1, |r| *r.get_ref()),
            retry_backoff: self.duration(
                &b.retry_backoff,
                key("retry_backoff"),
                Duration::from_millis(100),
            ),
            offline_after: b
                .offline_after
                .as_ref()
                .map_or(3, |r| (*r.get_ref()).max(1)),
            reconnect_max: self.duration(
                &b.reconnect_max,
                key("reconnect_max"),
                Duration::from_secs(30),
            ),
        };
        if let Some(w) = &b.wakeup_bytes {
            if *w.get_ref() > 16 {
                self.problem(w, key("wakeup_bytes"), "at most 16 wake-up bytes".into());
            }
        }
        if let Some(r) = &b.retries {
            if *r.get_ref() > 10 {
                self.problem(
                    r,
                    key("retries"),
                    "at most 10 retries: a line is shared".into(),
                );
            }
        }
        Some(BusConfig {
            name,
            link,
            protocol: match link_default_protocol(b) {
                Some(p) => p,
                None => Protocol::Dlt645,
            },
            timing,
            devices: Vec::new(),
        })
    }

    fn check_device(
        &mut self,
        i: usize,
        d: &RawDevice,
        bus: Option<&BusConfig>,
    ) -> Option<DeviceConfig> {
        let key = |k: &str| format!("device[{i}].{k}");
        let poll = self.duration(&d.poll, key("poll"), Duration::from_secs(15));
        let protocol = match d.protocol.get_ref().as_str() {
            "dlt645" | "dlt645-2007" => Protocol::Dlt645,
            "modbus" => Protocol::Modbus,
            other => {
                self.problem(
                    &d.protocol,
                    key("protocol"),
                    format!("unknown protocol {other:?}; use dlt645 or modbus"),
                );
                return None;
            }
        };
        if let Some(bus) =
            bus.filter(|b| protocol == Protocol::Dlt645 && b.link.framing == Framing::Rtu)
        {
            self.problem(
                &d.protocol,
                key("protocol"),
                format!(
                    "bus {:?} has a Modbus RTU link; DL/T 645 meters need serial:// or tcp://",
                    bus.name
                ),
            );
            return None;
        }
        if d.points.is_empty() {
            self.problem(
                &d.name,
                key("points"),
                "a device needs at least one point".into(),
            );
        }
        let mut names = BTreeSet::new();
        let mut points = Vec::new();
        for (j, p) in d.points.iter().enumerate() {
            let pkey = |k: &str| format!("device[{i}].points[{j}].{k}");
            let pname = p.name.get_ref().clone();
            if !valid_name(&pname) {
                self.problem(
                    &p.name,
                    pkey("name"),
                    "use letters, digits, '-', '_' or '.'".into(),
                );
            }
            if !names.insert(pname.clone()) {
                self.problem(
                    &p.name,
                    pkey("name"),
                    format!(
                        "device {:?} already has a point named {pname:?}",
                        d.name.get_ref()
                    ),
                );
            }
            if let Some(point) = self.check_point(p, protocol, &pkey) {
                points.push(point);
            }
        }
        let kind = match protocol {
            Protocol::Dlt645 => {
                if let Some(r) = &d.read_write_multiple {
                    self.problem(
                        r,
                        key("read_write_multiple"),
                        "read_write_multiple is a Modbus function; DL/T 645 meters do not have it"
                            .into(),
                    );
                }
                if let Some(u) = &d.unit {
                    self.problem(
                        u,
                        key("unit"),
                        "DL/T 645 meters have an address, not a unit id".into(),
                    );
                }
                let Some(a) = &d.address else {
                    self.problem(
                        &d.name,
                        key("address"),
                        "a DL/T 645 meter needs address = \"000000000001\" (12 digits from its nameplate)".into(),
                    );
                    return None;
                };
                match Address::parse(a.get_ref()) {
                    Ok(addr) if !addr.has_wildcard() => DeviceKind::Dlt645 { address: addr },
                    Ok(_) => {
                        self.problem(
                            a,
                            key("address"),
                            "a polled meter needs its full address, not a wildcard".into(),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.problem(a, key("address"), e.to_string());
                        return None;
                    }
                }
            }
            Protocol::Modbus => {
                if let Some(a) = &d.address {
                    self.problem(
                        a,
                        key("address"),
                        "Modbus devices have unit = N, not an address".into(),
                    );
                }
                let unit = match &d.unit {
                    None => 1,
                    Some(u) if (0..=247).contains(u.get_ref()) => *u.get_ref() as u8,
                    Some(u) => {
                        self.problem(u, key("unit"), "unit id must be 0..247".into());
                        return None;
                    }
                };
                let specs: Vec<PointSpec> = points
                    .iter()
                    .filter_map(|p: &PointConfig| match p.source {
                        PointSource::Modbus(s) => Some(s),
                        PointSource::Dlt645(_) => None,
                    })
                    .collect();
                let max_gap = d.max_gap.as_ref().map_or(8, |g| *g.get_ref());
                DeviceKind::Modbus {
                    unit,
                    plan: modbus::plan(&specs, max_gap),
                    read_write_multiple: d
                        .read_write_multiple
                        .as_ref()
                        .is_some_and(|r| *r.get_ref()),
                }
            }
        };
        Some(DeviceConfig {
            name: d.name.get_ref().clone(),
            poll,
            kind,
            points,
        })
    }

    fn check_point(
        &mut self,
        p: &RawPoint,
        protocol: Protocol,
        pkey: &dyn Fn(&str) -> String,
    ) -> Option<PointConfig> {
        let name = p.name.get_ref().clone();
        match protocol {
            Protocol::Dlt645 => {
                for (k, present) in [
                    ("table", p.table.is_some()),
                    ("type", p.data_type.is_some()),
                    ("address", p.address.is_some()),
                    ("byte_order", p.byte_order.is_some()),
                    ("word_order", p.word_order.is_some()),
                ] {
                    if present {
                        self.problem(
                            &p.name,
                            pkey(k),
                            format!("{k} is a Modbus key; DL/T 645 points take di = \"00010000\""),
                        );
                    }
                }
                let Some(di_text) = &p.di else {
                    self.problem(
                        &p.name,
                        pkey("di"),
                        "a DL/T 645 point needs di = \"DI3DI2DI1DI0\", e.g. \"00010000\"".into(),
                    );
                    return None;
                };
                let di = match DataId::parse(di_text.get_ref()) {
                    Ok(d) => d,
                    Err(e) => {
                        self.problem(di_text, pkey("di"), e.to_string());
                        return None;
                    }
                };
                let unit = p
                    .unit
                    .as_ref()
                    .map(|u| u.get_ref().clone())
                    .or_else(|| di::lookup(di).map(|i| i.unit.to_string()))
                    .unwrap_or_default();
                Some(PointConfig {
                    name,
                    unit,
                    source: PointSource::Dlt645(di),
                })
            }
            Protocol::Modbus => {
                if let Some(d) = &p.di {
                    self.problem(
                        d,
                        pkey("di"),
                        "di is a DL/T 645 key; Modbus points take table, address and type".into(),
                    );
                }
                let table = match &p.table {
                    None => Table::HoldingRegister,
                    Some(t) => match t.get_ref().parse::<Table>() {
                        Ok(t) => t,
                        Err(e) => {
                            self.problem(t, pkey("table"), e.to_string());
                            return None;
                        }
                    },
                };
                let Some(address) = &p.address else {
                    self.problem(
                        &p.name,
                        pkey("address"),
                        "a Modbus point needs address = N (0-based register or bit)".into(),
                    );
                    return None;
                };
                let address_v = match u16::try_from(*address.get_ref()) {
                    Ok(a) => a,
                    Err(_) => {
                        self.problem(address, pkey("address"), "address must be 0..65535".into());
                        return None;
                    }
                };
                let data_type = match &p.data_type {
                    None if table.is_bits() => DataType::Bool,
                    None => DataType::U16,
                    Some(t) => match t.get_ref().parse::<DataType>() {
                        Ok(ty) => ty,
                        Err(e) => {
                            self.problem(t, pkey("type"), e.to_string());
                            return None;
                        }
                    },
                };
                if table.is_bits() && data_type != DataType::Bool {
                    if let Some(t) = &p.data_type {
                        self.problem(
                            t,
                            pkey("type"),
                            format!("{table} points are bits: use type = \"bool\""),
                        );
                    }
                }
                let mut order = |v: &Option<Spanned<String>>, k: &str| -> Order {
                    match v {
                        None => Order::Big,
                        Some(s) => s.get_ref().parse::<Order>().unwrap_or_else(|e| {
                            self.problem(s, pkey(k), e.to_string());
                            Order::Big
                        }),
                    }
                };
                let byte_order = order(&p.byte_order, "byte_order");
                let word_order = order(&p.word_order, "word_order");
                let spec = PointSpec {
                    table,
                    address: address_v,
                    data_type,
                    byte_order,
                    word_order,
                    scale: p.scale.as_ref().map_or(1.0, |s| *s.get_ref()),
                    offset: p.offset.as_ref().map_or(0.0, |s| *s.get_ref()),
                };
                if spec.end() > 65536 {
                    self.problem(
                        address,
                        pkey("address"),
                        format!(
                            "a {} at {address_v} runs past register 65535",
                            data_type.name()
                        ),
                    );
                    return None;
                }
                if !spec.scale.is_finite() || spec.scale == 0.0 || !spec.offset.is_finite() {
                    if let Some(s) = &p.scale {
                        self.problem(
                            s,
                            pkey("scale"),
                            "scale must be a finite, non-zero number".into(),
                        );
                    }
                }
                Some(PointConfig {
                    name,
                    unit: p
                        .unit
                        .as_ref()
                        .map(|u| u.get_ref().clone())
                        .unwrap_or_default(),
                    source: PointSource::Modbus(spec),
                })
            }
        }
    }
}

fn link_default_protocol(b: &RawBus) -> Option<Protocol> {
    let l = b.link.get_ref();
    if l.starts_with("rtu-") {
        Some(Protocol::Modbus)
    } else {
        None
    }
}

/// Every point's full name (`device/point`), polled or from MQTT field devices.
fn point_names(buses: &[BusConfig], ingest: Option<&IngestConfig>) -> Vec<String> {
    buses
        .iter()
        .flat_map(|b| &b.devices)
        .flat_map(|d| {
            d.points
                .iter()
                .map(move |p| format!("{}/{}", d.name, p.name))
        })
        .chain(
            ingest
                .into_iter()
                .flat_map(|i| &i.devices)
                .flat_map(|d| d.points.iter().map(move |(p, _)| format!("{}/{p}", d.name))),
        )
        .collect()
}

/// The points a DR load may write, with what each accepts: Modbus coils and holding
/// registers, and each DL/T 645 meter's relay.
fn writable_points(buses: &[BusConfig]) -> Vec<(String, dr::Accepts)> {
    buses
        .iter()
        .flat_map(|b| &b.devices)
        .flat_map(|d| {
            d.points.iter().filter_map(move |p| match &p.source {
                PointSource::Modbus(s)
                    if matches!(s.table, Table::Coil | Table::HoldingRegister) =>
                {
                    let accepts = if s.table == Table::Coil || s.data_type == DataType::Bool {
                        dr::Accepts::Switch
                    } else {
                        let (lo, hi) = s.writable_range();
                        dr::Accepts::Range(lo, hi)
                    };
                    Some((format!("{}/{}", d.name, p.name), accepts))
                }
                _ => None,
            })
        })
        .chain(
            buses
                .iter()
                .flat_map(|b| &b.devices)
                .filter(|d| matches!(d.kind, DeviceKind::Dlt645 { .. }))
                .map(|d| {
                    (
                        format!("{}/{}", d.name, dr::RELAY_POINT),
                        dr::Accepts::Switch,
                    )
                }),
        )
        .collect()
}

#[cfg(test)]
mod tests;
