//! One task per bus: it owns the line, polls each device on its own schedule, and turns
//! every outcome into readings.

use std::sync::Arc;
use std::time::Duration;

use gridgate_drivers::dlt645::{self, Address, Client, ClientOptions, Dlt645Error};
use gridgate_drivers::link::{LineStream, SerialSettings};
use gridgate_drivers::modbus::{self, ModbusError, ModbusLine, ReadData, Table};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::state::DeviceRegistry;
use crate::device::{read_dlt645, read_modbus, writable_modbus_point, write_dlt645, write_modbus};
use crate::request::{
    BusRequest, ControlError, ControlOutcome, ControlRequest, ReadAheadRequest, ScanFound,
};
use gridgate_config::{BusConfig, DeviceConfig, DeviceKind, PointSource, Protocol};
use gridgate_core::reading::{Quality, Reading, Value, now_ms};

/// Maps a DL/T 645 failure to a reading quality.
pub fn dlt645_quality(e: &Dlt645Error) -> Quality {
    match e {
        Dlt645Error::Timeout(_) => Quality::Timeout,
        Dlt645Error::Incomplete(_) | Dlt645Error::Corrupt(_) | Dlt645Error::Garbled(_) => {
            Quality::Crc
        }
        Dlt645Error::Meter { word, .. } => Quality::MeterError(word.0),
        Dlt645Error::Value(_) | Dlt645Error::Unexpected(_) | Dlt645Error::Encode(_) => {
            Quality::DecodeError
        }
        Dlt645Error::Io(_) => Quality::LinkDown,
    }
}

/// Maps a Modbus failure to a reading quality.
pub fn modbus_quality(e: &ModbusError) -> Quality {
    match e {
        ModbusError::Timeout(_) => Quality::Timeout,
        ModbusError::Exception { code } => Quality::Exception(*code),
        ModbusError::Protocol(_) => Quality::Crc,
        ModbusError::Io(_) => Quality::LinkDown,
    }
}

/// A DL/T 645 value as a reading value.
pub fn dlt645_value(v: &dlt645::Value) -> Value {
    match v.as_f64() {
        Some(n) => Value::Number(n),
        None => Value::Text(v.to_string()),
    }
}

enum Line {
    Dlt645(Option<Client<LineStream>>),
    Modbus(ModbusLine),
}

struct DeviceRuntime {
    // Shared, not cloned, by each poll: a poll borrows it across its awaits on the line.
    cfg: Arc<DeviceConfig>,
    /// Each point's reading id, `device/point`, and unit, made once and shared by every
    /// reading of it.
    ids: Arc<[Arc<str>]>,
    units: Arc<[Arc<str>]>,
    /// The grid slot the next poll serves.
    next_due: Instant,
    /// When the next poll starts: its slot, or at once after a poll that took its period.
    start_at: Instant,
    failures: u32,
    online: bool,
}

/// The poller of one bus.
pub struct BusPoller {
    bus: BusConfig,
    line: Line,
    devices: Vec<DeviceRuntime>,
    reopen_at: Option<Instant>,
    reopen_backoff: Duration,
    registry: DeviceRegistry,
    controls: Option<mpsc::Receiver<BusRequest>>,
    /// Control points read ahead of their writes, oldest first.
    read_ahead: Vec<KeptRead>,
}

/// A control point's value read ahead of its write.
struct KeptRead {
    device: String,
    point: String,
    at: Instant,
    data: ReadData,
}

const REOPEN_FIRST: Duration = Duration::from_millis(500);
/// How long a value read ahead stands for the value before the write: the read only
/// overlaps the event's store (milliseconds); past this the write reads again.
const READ_AHEAD_FRESH: Duration = Duration::from_secs(1);
/// Values read ahead a bus keeps (one per load on its line, at most).
const READ_AHEAD_KEPT: usize = 256;

/// The runtime's timer resolution.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// When a device's next poll is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NextPoll {
    /// The grid slot it serves.
    slot: Instant,
    /// When it starts.
    start_at: Instant,
    /// Slots passed with no poll of their own.
    missed: u64,
}

/// The poll after one due at `due` (a slot on the device's grid) that started at `started`
/// and ended `now`. Polls stay on the grid, so they do not drift; slots already passed are
/// skipped and counted, never caught up in a bunch. But a poll that itself took its period or
/// longer (the device cannot be polled that often) is followed at once: waiting for the
/// next slot would idle the line for up to a period each poll, and back-to-back polls are
/// still a period or more apart.
fn next_poll(
    due: Instant,
    started: Instant,
    now: Instant,
    period: Duration,
    answered: bool,
) -> NextPoll {
    let mut slot = due + period;
    let mut missed = 0;
    if slot <= now {
        let behind = now.duration_since(slot);
        let skip = (behind.as_nanos() / period.as_nanos().max(1)) as u32 + 1;
        slot += period * skip;
        missed = u64::from(skip);
    }
    let flat_out = answered && now.duration_since(started) >= period;
    NextPoll {
        slot,
        start_at: if flat_out { now } else { slot },
        missed,
    }
}

impl BusPoller {
    /// A poller for `bus`; nothing is opened until the first poll.
    pub fn new(bus: BusConfig, registry: DeviceRegistry) -> Self {
        let line = match bus.protocol {
            Protocol::Dlt645 => Line::Dlt645(None),
            Protocol::Modbus => Line::Modbus(ModbusLine::new(bus.link.clone(), bus.timing.timeout)),
        };
        let now = Instant::now();
        let devices = bus
            .devices
            .iter()
            .map(|d| {
                registry.register(&d.name, &bus.name);
                DeviceRuntime {
                    cfg: Arc::new(d.clone()),
                    ids: d
                        .points
                        .iter()
                        .map(|p| Arc::from(format!("{}/{}", d.name, p.name)))
                        .collect(),
                    units: d
                        .points
                        .iter()
                        .map(|p| Arc::from(p.unit.as_str()))
                        .collect(),
                    next_due: now,
                    start_at: now,
                    failures: 0,
                    online: true,
                }
            })
            .collect();
        BusPoller {
            bus,
            line,
            devices,
            reopen_at: None,
            reopen_backoff: REOPEN_FIRST,
            registry,
            controls: None,
            read_ahead: Vec::new(),
        }
    }

    /// Also carries out the writes sent to `rx`, between polls.
    pub fn with_controls(mut self, rx: mpsc::Receiver<BusRequest>) -> Self {
        self.controls = Some(rx);
        self
    }

    async fn next_control(&mut self) -> Option<BusRequest> {
        match &mut self.controls {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// One write, between polls (a write waits at most for the poll in progress).
    async fn control(&mut self, req: &ControlRequest) -> Result<ControlOutcome, ControlError> {
        let timing = self.bus.timing;
        // One device's config, owned: the DL/T 645 branch borrows the whole poller to open
        // the line.
        let device = self
            .devices
            .iter()
            .find(|d| d.cfg.name == req.device)
            .map(|d| d.cfg.clone())
            .ok_or_else(|| ControlError::Unknown(format!("{}/{}", req.device, req.point)))?;
        // Whatever the write does, a value read before it no longer stands for the value
        // before the next one.
        let kept = self
            .read_ahead
            .iter()
            .position(|k| k.device == req.device && k.point == req.point)
            .map(|i| self.read_ahead.remove(i))
            .filter(|k| k.at.elapsed() < READ_AHEAD_FRESH)
            .map(|k| k.data);
        match &mut self.line {
            Line::Modbus(line) => write_modbus(line, &device, &timing, req, kept).await,
            Line::Dlt645(_) => {
                let client = self
                    .dlt645_client()
                    .await
                    .map_err(|e| ControlError::Device {
                        point: format!("{}/{}", req.device, req.point),
                        error: e,
                    })?;
                write_dlt645(client, &device, &timing, req).await
            }
        }
    }

    /// Reads a Modbus control point now and keeps its value for the write about to follow;
    /// a failed read keeps nothing (the write reads for itself).
    async fn read_ahead(&mut self, req: ReadAheadRequest) {
        let Line::Modbus(line) = &mut self.line else {
            return;
        };
        let Some(device) = self.devices.iter().find(|d| d.cfg.name == req.device) else {
            return;
        };
        // A point that cannot be written: its write will say why.
        let Ok((unit, spec)) = writable_modbus_point(&device.cfg, &req.point) else {
            return;
        };
        match line.read(unit, spec.table, spec.address, spec.len()).await {
            Ok(data) => {
                self.read_ahead
                    .retain(|k| k.device != req.device || k.point != req.point);
                if self.read_ahead.len() >= READ_AHEAD_KEPT {
                    self.read_ahead.remove(0);
                }
                self.read_ahead.push(KeptRead {
                    device: req.device,
                    point: req.point,
                    at: Instant::now(),
                    data,
                });
            }
            Err(e) => {
                debug!(bus = %self.bus.name, device = %req.device, point = %req.point, "read ahead of a write failed: {e}")
            }
        }
    }

    /// Scans the line for what answers, with `gridgate scan`'s search; the bus's own
    /// connection is closed first and reopened by the next poll.
    async fn scan(
        &mut self,
        units: std::ops::RangeInclusive<u8>,
    ) -> Result<ScanFound, ControlError> {
        let timeout = self.bus.timing.timeout;
        let link = self.bus.link.clone();
        info!(bus = %self.bus.name, "line scan asked: polls wait until it ends");
        let found = match &mut self.line {
            Line::Dlt645(client) => {
                *client = None;
                super::scan::dlt645(&link, timeout, None).await.map(|v| {
                    let snippet = super::scan::dlt645_snippet(&link, &v.found);
                    (
                        v.found.iter().map(|a| format!("meter {a}")).collect(),
                        snippet,
                    )
                })
            }
            Line::Modbus(line) => {
                line.disconnect();
                super::scan::modbus(&link, units, Table::HoldingRegister, 0, timeout)
                    .await
                    .map(|v| {
                        let snippet =
                            super::scan::modbus_snippet(&link, Table::HoldingRegister, 0, &v);
                        let found = v
                            .into_iter()
                            .map(|(u, how)| format!("unit {u}: {how}"))
                            .collect();
                        (found, snippet)
                    })
            }
        };
        info!(bus = %self.bus.name, "line scan ended");
        found
            .map(|(found, snippet)| ScanFound { found, snippet })
            .map_err(|e| ControlError::Device {
                point: format!("bus {}", self.bus.name),
                error: format!("{e:#}"),
            })
    }

    /// Polls until `cancel` fires, sending each device's readings to `out`.
    pub async fn run(mut self, out: mpsc::Sender<Vec<Reading>>, cancel: CancellationToken) {
        info!(bus = %self.bus.name, link = %self.bus.link, devices = self.devices.len(), "bus started");
        if self.devices.is_empty() {
            cancel.cancelled().await;
            return;
        }
        loop {
            let (idx, due, start_at) = self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (i, d.next_due, d.start_at))
                .min_by_key(|(_, _, start_at)| *start_at)
                .unwrap_or((0, Instant::now(), Instant::now()));
            tokio::select! {
                // Writes first: a DR command waits at most for the poll in progress, never
                // behind a queue of due polls (a silent device keeps polls always due).
                biased;
                _ = cancel.cancelled() => break,
                Some(req) = self.next_control() => {
                    match req {
                        BusRequest::Write(req) => {
                            // Its requester stopped waiting (the line was busy past its
                            // deadline): written now, it would move a load nobody tracks,
                            // and the requester's retry would read the moved value as the
                            // one to restore at the end.
                            if req.reply.is_closed() {
                                warn!(bus = %self.bus.name, device = %req.device, point = %req.point, "control write dropped: its requester stopped waiting");
                                continue;
                            }
                            let outcome = self.control(&req).await;
                            if let Err(e) = &outcome {
                                warn!(bus = %self.bus.name, "control write failed: {e}");
                            }
                            let _ = req.reply.send(outcome);
                        }
                        BusRequest::ReadAhead(req) => {
                            tokio::select! {
                                _ = cancel.cancelled() => break,
                                () = self.read_ahead(req) => {}
                            }
                        }
                        BusRequest::Scan(req) => {
                            let found = tokio::select! {
                                _ = cancel.cancelled() => break,
                                f = self.scan(req.units) => f,
                            };
                            let _ = req.reply.send(found);
                        }
                        BusRequest::Poll(req) => {
                            let Some(idx) = self.devices.iter().position(|d| d.cfg.name == req.device) else {
                                let _ = req.reply.send(Err(ControlError::Unknown(req.device)));
                                continue;
                            };
                            let readings = tokio::select! {
                                _ = cancel.cancelled() => break,
                                r = self.poll(idx) => r,
                            };
                            let _ = req.reply.send(Ok(readings.clone()));
                            if out.send(readings).await.is_err() {
                                break;
                            }
                        }
                    }
                    continue;
                }
                // The timer wakes on the first millisecond tick at or after its deadline:
                // woken a tick early, a poll starts within a tick of its slot either side,
                // not up to a tick late (at a 1 ms period, every other slot lost).
                _ = tokio::time::sleep_until(start_at.checked_sub(TIMER_TICK).unwrap_or(start_at)) => {}
            }
            let started = Instant::now();
            let readings = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.poll(idx) => r,
            };
            self.reschedule(idx, due, started);
            if out.send(readings).await.is_err() {
                break;
            }
        }
        info!(bus = %self.bus.name, "bus stopped");
    }

    /// Schedules device `idx`'s next poll after the one due at `due` that started at
    /// `started` (see [`next_poll`]).
    fn reschedule(&mut self, idx: usize, due: Instant, started: Instant) {
        let dev = &mut self.devices[idx];
        // A device that did not answer is not polled back to back: a dead one would take
        // the line from the others.
        let answered = dev.failures == 0;
        let next = next_poll(due, started, Instant::now(), dev.cfg.poll, answered);
        if next.missed > 0 {
            self.registry.missed(&dev.cfg.name, next.missed);
            debug!(device = %dev.cfg.name, skipped = next.missed, "poll overran its interval");
        }
        dev.next_due = next.slot;
        dev.start_at = next.start_at;
    }

    /// Polls device `idx` once.
    pub async fn poll(&mut self, idx: usize) -> Vec<Reading> {
        let cfg = self.devices[idx].cfg.clone();
        let readings = match &cfg.kind {
            DeviceKind::Dlt645 { address } => self.poll_dlt645(idx, *address).await,
            DeviceKind::Modbus { unit, plan, .. } => self.poll_modbus(idx, *unit, plan).await,
        };
        self.update_state(idx, &readings);
        readings
    }

    fn update_state(&mut self, idx: usize, readings: &[Reading]) {
        let dev = &mut self.devices[idx];
        let any_good = readings.iter().any(|r| r.quality.is_good());
        let all_silent = readings.iter().all(|r| {
            matches!(
                r.quality,
                Quality::Timeout | Quality::LinkDown | Quality::Offline | Quality::Crc
            )
        });
        if any_good || !all_silent {
            if !dev.online {
                info!(device = %dev.cfg.name, bus = %self.bus.name, "device back online");
            }
            dev.failures = 0;
            dev.online = true;
        } else {
            dev.failures += 1;
            if dev.online && dev.failures >= self.bus.timing.offline_after {
                dev.online = false;
                warn!(
                    device = %dev.cfg.name,
                    bus = %self.bus.name,
                    failures = dev.failures,
                    "device offline: no valid reply in {} polls; check its wiring, address and power. \
                     Probing it with its first point each poll until it answers",
                    dev.failures
                );
            }
        }
        self.registry.record(&dev.cfg.name, dev.online, readings);
    }

    fn line_retry_pending(&self) -> Option<Duration> {
        self.reopen_at
            .and_then(|t| t.checked_duration_since(Instant::now()))
    }

    fn line_failed(&mut self, error: &str) {
        warn!(
            bus = %self.bus.name,
            link = %self.bus.link,
            retry_in = ?self.reopen_backoff,
            "line down: {error}"
        );
        self.reopen_at = Some(Instant::now() + self.reopen_backoff);
        self.reopen_backoff = (self.reopen_backoff * 2).min(self.bus.timing.reconnect_max);
    }

    fn line_ok(&mut self) {
        if self.reopen_at.take().is_some() {
            info!(bus = %self.bus.name, "line up again");
        }
        self.reopen_backoff = REOPEN_FIRST;
    }

    async fn dlt645_client(&mut self) -> Result<&mut Client<LineStream>, String> {
        let need_open = matches!(self.line, Line::Dlt645(None));
        if need_open {
            if let Some(wait) = self.line_retry_pending() {
                return Err(format!("line down, reopening in {wait:.1?}"));
            }
            let timing = self.bus.timing;
            match self
                .bus
                .link
                .open(SerialSettings::DLT645, timing.timeout)
                .await
            {
                Ok(stream) => {
                    let opts = ClientOptions {
                        response_timeout: timing.timeout,
                        inter_byte_timeout: timing.inter_byte_timeout,
                        wakeup_bytes: timing.wakeup_bytes,
                        ..ClientOptions::default()
                    };
                    self.line = Line::Dlt645(Some(Client::new(stream, opts)));
                    self.line_ok();
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.line_failed(&msg);
                    return Err(msg);
                }
            }
        }
        match &mut self.line {
            Line::Dlt645(Some(c)) => Ok(c),
            _ => Err("bus is not a DL/T 645 line".into()),
        }
    }

    async fn poll_dlt645(&mut self, idx: usize, address: Address) -> Vec<Reading> {
        let cfg = self.devices[idx].cfg.clone();
        let ids = self.devices[idx].ids.clone();
        let units = self.devices[idx].units.clone();
        let online = self.devices[idx].online;
        let points = &cfg.points;
        let timing = self.bus.timing;
        let mut out = Vec::with_capacity(points.len());
        let mut any_good = false;
        for (j, p) in points.iter().enumerate() {
            let id = ids[j].clone();
            let PointSource::Dlt645(di) = p.source else {
                continue;
            };
            if !online && j > 0 && !any_good {
                out.push(Reading::bad(
                    id,
                    now_ms(),
                    Quality::Offline,
                    units[j].clone(),
                    "device offline; probed with its first point".into(),
                ));
                continue;
            }
            let client = match self.dlt645_client().await {
                Ok(c) => c,
                Err(e) => {
                    out.push(Reading::bad(
                        id,
                        now_ms(),
                        Quality::LinkDown,
                        units[j].clone(),
                        e,
                    ));
                    continue;
                }
            };
            match read_dlt645(client, address, di, &timing).await {
                Ok(v) => {
                    any_good = true;
                    out.push(Reading::good(
                        id,
                        now_ms(),
                        dlt645_value(&v),
                        units[j].clone(),
                    ));
                }
                Err(e) => {
                    if e.is_link_failure() {
                        self.line = Line::Dlt645(None);
                        self.line_failed(&e.to_string());
                    }
                    out.push(Reading::bad(
                        id,
                        now_ms(),
                        dlt645_quality(&e),
                        units[j].clone(),
                        e.to_string(),
                    ));
                }
            }
        }
        out
    }

    async fn poll_modbus(
        &mut self,
        idx: usize,
        unit: u8,
        plan: &[modbus::ReadPlan],
    ) -> Vec<Reading> {
        let cfg = self.devices[idx].cfg.clone();
        let ids = self.devices[idx].ids.clone();
        let units = self.devices[idx].units.clone();
        let online = self.devices[idx].online;
        let points = &cfg.points;
        let timing = self.bus.timing;
        let mut slots: Vec<Option<Reading>> = vec![None; points.len()];
        let mut any_good = false;
        // One reading for point `j` from the outcome of a read that began at `start`.
        let reading = |j: usize, start: u16, outcome: Result<&ReadData, (Quality, String)>| {
            let p = &points[j];
            let id = ids[j].clone();
            let ts = now_ms();
            let PointSource::Modbus(spec) = p.source else {
                return Reading::bad(
                    id,
                    ts,
                    Quality::DecodeError,
                    units[j].clone(),
                    "not a Modbus point".into(),
                );
            };
            match outcome.map(|data| spec.decode(start, data)) {
                Ok(Ok(v)) if spec.data_type == modbus::DataType::Bool => {
                    Reading::good(id, ts, Value::Bool(v != 0.0), units[j].clone())
                }
                Ok(Ok(v)) => Reading::good(id, ts, Value::Number(v), units[j].clone()),
                Ok(Err(e)) => Reading::bad(
                    id,
                    ts,
                    Quality::DecodeError,
                    units[j].clone(),
                    e.to_string(),
                ),
                Err((q, msg)) => Reading::bad(id, ts, q, units[j].clone(), msg),
            }
        };
        let failed = |e: &ModbusError| (modbus_quality(e), e.to_string());
        for (n, read) in plan.iter().enumerate() {
            let skip = if !online && n > 0 && !any_good {
                Some((
                    Quality::Offline,
                    "device offline; probed with its first read".to_string(),
                ))
            } else if let (Line::Modbus(line), Some(wait)) = (&self.line, self.line_retry_pending())
            {
                (!line.is_connected()).then(|| {
                    (
                        Quality::LinkDown,
                        format!("line down, reopening in {wait:.1?}"),
                    )
                })
            } else {
                None
            };
            if let Some(why) = skip {
                for &j in &read.points {
                    slots[j] = Some(reading(j, read.start, Err(why.clone())));
                }
                continue;
            }
            let Line::Modbus(line) = &mut self.line else {
                break;
            };
            let result = read_modbus(line, unit, read.table, read.start, read.count, &timing).await;
            match result {
                Ok(data) => {
                    self.line_ok();
                    for &j in &read.points {
                        slots[j] = Some(reading(j, read.start, Ok(&data)));
                    }
                }
                Err(ModbusError::Exception { code: 2 }) if read.points.len() > 1 => {
                    // A merged read touched an address the device does not map: read its
                    // points one by one so that one bad address does not blank the rest.
                    debug!(device = %cfg.name, start = read.start, count = read.count, "merged read refused; reading points singly");
                    for &j in &read.points {
                        let PointSource::Modbus(spec) = points[j].source else {
                            continue;
                        };
                        let Line::Modbus(line) = &mut self.line else {
                            break;
                        };
                        let r =
                            read_modbus(line, unit, spec.table, spec.address, spec.len(), &timing)
                                .await;
                        slots[j] = Some(reading(j, spec.address, r.as_ref().map_err(failed)));
                    }
                }
                Err(e) => {
                    if e.is_link_failure() {
                        self.line_failed(&e.to_string());
                    }
                    for &j in &read.points {
                        slots[j] = Some(reading(j, read.start, Err(failed(&e))));
                    }
                }
            }
            any_good |= slots.iter().flatten().any(|r| r.quality.is_good());
        }
        slots.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gridgate_config::{Control, ControlPoint};
    use gridgate_drivers::modbus::sim::{SimBus, SimDevice, serve_tcp};
    use gridgate_drivers::sim::{LoadModel, SharedLoad};
    use tokio::net::TcpListener;

    use super::*;
    use crate::Controls;

    const WITHIN: Duration = Duration::from_secs(5);

    const MS: Duration = Duration::from_millis(1);

    /// Poll starts and slots missed of a device polled `polls` times from t = 0 every
    /// `period` ms, whose poll `n` starts `poll(n).0` ms after it could (the line busy with
    /// something else) and takes `poll(n).1` ms.
    fn schedule(
        period: u32,
        polls: u32,
        poll: impl Fn(u32) -> (u32, u32),
        answered: bool,
    ) -> (Vec<u32>, u64) {
        let t0 = Instant::now();
        let at = |t: Instant| (t.duration_since(t0).as_micros() / 1000) as u32;
        let (mut due, mut start_at, mut missed) = (t0, t0, 0);
        let mut starts = Vec::new();
        for n in 0..polls {
            let (late, took) = poll(n);
            let started = start_at + MS * late;
            starts.push(at(started));
            let next = next_poll(due, started, started + MS * took, MS * period, answered);
            (due, start_at) = (next.slot, next.start_at);
            missed += next.missed;
        }
        (starts, missed)
    }

    #[test]
    fn polls_keep_their_grid_and_skip_what_a_late_poll_passed() {
        // Quick polls: one a slot.
        assert_eq!(schedule(10, 4, |_| (0, 3), true), (vec![0, 10, 20, 30], 0));
        // One poll held up 22 ms by the line: the slots it passed are skipped and counted,
        // and the next is on the grid again, not at once after it.
        let (starts, missed) = schedule(10, 4, |n| (if n == 1 { 22 } else { 0 }, 3), true);
        assert_eq!((starts, missed), (vec![0, 32, 40, 50], 2));
    }

    #[test]
    fn a_device_slower_than_its_period_is_polled_back_to_back() {
        // 12 ms polls every 10 ms: one after the other, never nearer than a period; the
        // slots they cannot serve are counted (eight slots passed by 72 ms, six polls).
        let (starts, missed) = schedule(10, 6, |_| (0, 12), true);
        assert_eq!(starts, vec![0, 12, 24, 36, 48, 60]);
        assert_eq!(missed, 2);
        // Back on its grid once its polls are quick again.
        let (starts, _) = schedule(10, 5, |n| (0, if n < 2 { 12 } else { 3 }), true);
        assert_eq!(starts, vec![0, 12, 24, 40, 50]);
        // A device that does not answer (timeouts) keeps to its grid: polled back to back
        // it would take the line from the others.
        let (starts, _) = schedule(10, 4, |_| (0, 12), false);
        assert_eq!(starts, vec![0, 20, 40, 60]);
    }

    #[tokio::test]
    async fn a_value_read_ahead_stands_for_the_next_write_only_and_only_while_fresh() {
        let load = SharedLoad::new(LoadModel::new(50.0, 100.0, 0.0));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(serve_tcp(
            listener,
            SimBus::new(vec![SimDevice::new(1, load.clone())]),
        ));
        let cfg = gridgate_config::parse(
            &format!(
                "[gateway]\nid = \"t\"\n\n[[bus]]\nname = \"b\"\nlink = \"tcp://127.0.0.1:{port}\"\n\n\
                 [[device]]\nname = \"d\"\nbus = \"b\"\nprotocol = \"modbus\"\npoll = \"1h\"\n\
                 points = [{{ name = \"setpoint\", table = \"holding\", address = 10, type = \"u16\", scale = 0.1 }}]\n"
            ),
            Path::new("t.toml"),
        )
        .expect("config");
        let bus = cfg.buses[0].clone();
        let (tx, rx) = mpsc::channel(8);
        let controls = Controls::default();
        controls.attach("b", &bus.devices, tx);
        let (out, mut readings) = mpsc::channel(8);
        tokio::spawn(async move { while readings.recv().await.is_some() {} });
        let cancel = CancellationToken::new();
        tokio::spawn(
            BusPoller::new(bus, DeviceRegistry::default())
                .with_controls(rx)
                .run(out, cancel.clone()),
        );
        let setpoint = Control::Point(ControlPoint {
            device: "d".into(),
            point: "setpoint".into(),
            auth: None,
        });
        let set_locally = |pct: f64| load.lock().setpoint_pct = pct;

        controls.read_ahead(&setpoint);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Changed at the device after the read: the write takes the value read ahead (the
        // read stands for the one it would have made), the next write reads for itself.
        set_locally(80.0);
        let first = controls
            .write(&setpoint, 50.0, WITHIN)
            .await
            .expect("write");
        assert_eq!((first.previous, first.confirmed), (100.0, 50.0));
        let second = controls
            .write(&setpoint, 60.0, WITHIN)
            .await
            .expect("write");
        assert_eq!(second.previous, 50.0, "a value read ahead serves one write");

        // Past its freshness a value read ahead is not used.
        controls.read_ahead(&setpoint);
        tokio::time::sleep(READ_AHEAD_FRESH + Duration::from_millis(200)).await;
        set_locally(70.0);
        let late = controls
            .write(&setpoint, 40.0, WITHIN)
            .await
            .expect("write");
        assert_eq!(late.previous, 70.0);
        cancel.cancel();
    }
}
