//! Writes to field devices (DR relay, manual actions), done by the bus task that owns the
//! line, between polls: one request in flight per line, never two programs on one RS-485.
//! Each write reads the control first (so that the caller can restore it), writes, and
//! reads it back: a write counts as acknowledged only when the device shows the new value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridgate_drivers::modbus::{self, ModbusError, ModbusLine, ReadData, Table};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::bus::read_modbus;
use super::mqtt_command::CommandRequest;
use gridgate_config::dr::RELAY_POINT;
use gridgate_config::{
    BusTiming, Control, ControlPoint, DeviceConfig, DeviceKind, PointSource, RemoteAuth,
};
use gridgate_drivers::dlt645::{self, Client, DataId, MeterTime, RemoteCommand, RemoteControl};
use gridgate_drivers::link::LineStream;

/// Requests a bus task may have waiting.
pub const CONTROL_QUEUE: usize = 64;

/// A write asked of the bus that owns the device's line.
#[derive(Debug)]
pub struct ControlRequest {
    /// Device name.
    pub device: String,
    /// Point name (a holding register or coil point of the device).
    pub point: String,
    /// Engineering value to write (coils and DL/T 645 relays: 0 off, 1 on).
    pub value: f64,
    /// DL/T 645 remote-control credentials, for a meter's relay.
    pub auth: Option<RemoteAuth>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ControlOutcome, ControlError>>,
}

/// A one-off poll of a device (a field engineer's test read), done by its bus task between
/// polls like a write; the readings are stored like any poll's.
#[derive(Debug)]
pub struct PollRequest {
    /// Device name.
    pub device: String,
    /// Where the readings go.
    pub reply: oneshot::Sender<Result<Vec<gridgate_core::Reading>, ControlError>>,
}

/// A scan of a bus's line for what answers on it (`gridgate scan` from the page): the bus
/// task closes its own connection and its polls wait until the scan ends, so that the scan
/// never talks over them.
#[derive(Debug)]
pub struct ScanRequest {
    /// Modbus unit ids to probe (DL/T 645 lines search every address).
    pub units: std::ops::RangeInclusive<u8>,
    /// What was found.
    pub reply: oneshot::Sender<Result<ScanFound, ControlError>>,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanFound {
    /// One line per meter or unit found.
    pub found: Vec<String>,
    /// A config snippet for them, as `gridgate scan` prints it.
    pub snippet: String,
}

/// What a bus task is asked to do between its polls.
#[derive(Debug)]
pub enum BusRequest {
    /// Write a control point.
    Write(ControlRequest),
    /// Poll a device now.
    Poll(PollRequest),
    /// Scan the line.
    Scan(ScanRequest),
}

/// A confirmed write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlOutcome {
    /// The value before the write.
    pub previous: f64,
    /// The value read back after it.
    pub confirmed: f64,
}

/// Why a write did not happen or was not confirmed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ControlError {
    /// No such device or point in the config in force.
    #[error("no point {0} to write")]
    Unknown(String),
    /// The point cannot be written (input registers, discrete inputs, DL/T 645 points).
    #[error("{0} is not writable: {1}")]
    NotWritable(String, &'static str),
    /// The device did not take it.
    #[error("{point}: {error}")]
    Device {
        /// Point.
        point: String,
        /// What the device or line said.
        error: String,
    },
    /// Written, but the read-back shows another value.
    #[error("{point}: wrote {wrote}, the device shows {read}")]
    NotConfirmed {
        /// Point.
        point: String,
        /// Value written.
        wrote: f64,
        /// Value read back.
        read: f64,
        /// The value before the write, where it was read: what the end of the event puts
        /// back, since the write may have moved the load all the same.
        previous: Option<f64>,
    },
    /// The write was sent but went wrong after that (no reply to it, or no read-back): the
    /// load may have moved.
    #[error("{point}: {error}")]
    AfterWrite {
        /// Point.
        point: String,
        /// What the device or line said.
        error: String,
        /// The value before the write.
        previous: f64,
    },
    /// The bus task is gone (stopping, or reloading).
    #[error("bus for {0} is not running")]
    BusGone(String),
    /// No confirmation in time (the line is busy with a device that does not answer, or
    /// the device is slow).
    #[error("{0}: not confirmed within {1:?}")]
    Timeout(String, Duration),
}

impl ControlError {
    /// The control's value before a write that may have moved it, where one was read.
    pub fn previous(&self) -> Option<f64> {
        match self {
            ControlError::NotConfirmed { previous, .. } => *previous,
            ControlError::AfterWrite { previous, .. } => Some(*previous),
            _ => None,
        }
    }
}

/// Where to send writes: the running bus tasks, by bus name, and which bus each device is on.
#[derive(Debug, Clone, Default)]
pub struct Controls(Arc<Mutex<ControlMap>>);

#[derive(Debug, Default)]
struct ControlMap {
    buses: BTreeMap<String, mpsc::Sender<BusRequest>>,
    device_bus: BTreeMap<String, String>,
    /// The MQTT commander, for loads commanded over MQTT.
    mqtt: Option<mpsc::Sender<CommandRequest>>,
}

impl Controls {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlMap> {
        // Poisoned only by a panic elsewhere; the map itself stays consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a bus task's queue and its devices.
    pub fn attach(&self, bus: &str, devices: &[DeviceConfig], tx: mpsc::Sender<BusRequest>) {
        let mut m = self.lock();
        m.device_bus.retain(|_, b| b != bus);
        for d in devices {
            m.device_bus.insert(d.name.clone(), bus.to_string());
        }
        m.buses.insert(bus.to_string(), tx);
    }

    /// Forgets a bus (stopped by a reload).
    pub fn detach(&self, bus: &str) {
        let mut m = self.lock();
        m.buses.remove(bus);
        m.device_bus.retain(|_, b| b != bus);
    }

    /// Registers the MQTT commander's queue.
    pub fn attach_mqtt(&self, tx: mpsc::Sender<CommandRequest>) {
        self.lock().mqtt = Some(tx);
    }

    /// Moves a load: a point written by its bus (waiting at most `within` for the
    /// read-back), or an MQTT command (waiting for the acknowledgement, at most its
    /// `ack_timeout`).
    pub async fn write(
        &self,
        control: &Control,
        value: f64,
        within: Duration,
    ) -> Result<ControlOutcome, ControlError> {
        match control {
            Control::Point(p) => self.write_point(p, value, within).await,
            Control::Mqtt(m) => {
                let gone = || ControlError::BusGone(format!("MQTT commands for {}", m.load));
                let tx = self.lock().mqtt.clone().ok_or_else(gone)?;
                let (reply, rx) = oneshot::channel();
                let req = CommandRequest {
                    control: m.clone(),
                    value,
                    reply,
                };
                let asked = async {
                    tx.send(req).await.map_err(|_| gone())?;
                    rx.await.map_err(|_| gone())?
                };
                // The commander answers by the ack timeout; the margin covers a queue.
                let limit = m.ack_timeout + Duration::from_secs(1);
                tokio::time::timeout(limit, asked)
                    .await
                    .unwrap_or_else(|_| Err(ControlError::Timeout(m.load.clone(), limit)))
            }
        }
    }

    /// Polls a device now through its bus task, waiting at most `within` (the line may be
    /// busy with a device that does not answer).
    pub async fn poll_now(
        &self,
        device: &str,
        within: Duration,
    ) -> Result<Vec<gridgate_core::Reading>, ControlError> {
        let tx = {
            let m = self.lock();
            let bus = m
                .device_bus
                .get(device)
                .ok_or_else(|| ControlError::Unknown(device.to_string()))?;
            m.buses
                .get(bus)
                .cloned()
                .ok_or_else(|| ControlError::BusGone(device.to_string()))?
        };
        let (reply, rx) = oneshot::channel();
        let gone = || ControlError::BusGone(device.to_string());
        let asked = async {
            tx.send(BusRequest::Poll(PollRequest {
                device: device.to_string(),
                reply,
            }))
            .await
            .map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        };
        tokio::time::timeout(within, asked)
            .await
            .unwrap_or_else(|_| Err(ControlError::Timeout(device.to_string(), within)))
    }

    /// Scans the line of `bus` through its task, waiting at most `within`.
    pub async fn scan(
        &self,
        bus: &str,
        units: std::ops::RangeInclusive<u8>,
        within: Duration,
    ) -> Result<ScanFound, ControlError> {
        let gone = || ControlError::BusGone(format!("bus {bus}"));
        let tx = self
            .lock()
            .buses
            .get(bus)
            .cloned()
            .ok_or_else(|| ControlError::Unknown(format!("bus {bus}")))?;
        let (reply, rx) = oneshot::channel();
        let asked = async {
            tx.send(BusRequest::Scan(ScanRequest { units, reply }))
                .await
                .map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        };
        tokio::time::timeout(within, asked)
            .await
            .unwrap_or_else(|_| Err(ControlError::Timeout(format!("scan of bus {bus}"), within)))
    }

    /// Writes `value` to a device's point and waits (at most `within`) for the read-back.
    async fn write_point(
        &self,
        control: &ControlPoint,
        value: f64,
        within: Duration,
    ) -> Result<ControlOutcome, ControlError> {
        let device = control.device.as_str();
        let name = format!("{device}/{}", control.point);
        let tx = {
            let m = self.lock();
            let bus = m
                .device_bus
                .get(device)
                .ok_or_else(|| ControlError::Unknown(name.clone()))?;
            m.buses
                .get(bus)
                .cloned()
                .ok_or_else(|| ControlError::BusGone(name.clone()))?
        };
        let (reply, rx) = oneshot::channel();
        let req = ControlRequest {
            device: device.to_string(),
            point: control.point.clone(),
            value,
            auth: control.auth,
            reply,
        };
        let asked = async {
            tx.send(BusRequest::Write(req))
                .await
                .map_err(|_| ControlError::BusGone(name.clone()))?;
            rx.await.map_err(|_| ControlError::BusGone(name.clone()))?
        };
        tokio::time::timeout(within, asked)
            .await
            .unwrap_or_else(|_| Err(ControlError::Timeout(name.clone(), within)))
    }
}

/// Carries out one request on a Modbus line for `device` (the request's device): read,
/// write, read back.
pub async fn write_modbus(
    line: &mut ModbusLine,
    device: &DeviceConfig,
    timing: &BusTiming,
    req: &ControlRequest,
) -> Result<ControlOutcome, ControlError> {
    let name = format!("{}/{}", req.device, req.point);
    let DeviceKind::Modbus { unit, .. } = device.kind else {
        return Err(ControlError::NotWritable(
            name,
            "only Modbus points are written",
        ));
    };
    let point = device
        .points
        .iter()
        .find(|p| p.name == req.point)
        .ok_or_else(|| ControlError::Unknown(name.clone()))?;
    let PointSource::Modbus(spec) = point.source else {
        return Err(ControlError::NotWritable(name, "not a Modbus point"));
    };
    if !matches!(spec.table, Table::Coil | Table::HoldingRegister) {
        return Err(ControlError::NotWritable(
            name,
            "only coils and holding registers can be written",
        ));
    }
    let device_error = |e: ModbusError| ControlError::Device {
        point: name.clone(),
        error: e.to_string(),
    };
    let read = |data: &ReadData| {
        spec.decode(spec.address, data)
            .map_err(|e| ControlError::Device {
                point: name.clone(),
                error: e.to_string(),
            })
    };
    let len = spec.len();
    let before = read_modbus(line, unit, spec.table, spec.address, len, timing)
        .await
        .map_err(device_error)?;
    let previous = read(&before)?;
    // From here the load may have moved whatever goes wrong: every error carries the value
    // to put back.
    let after_write = |e: ControlError| ControlError::AfterWrite {
        point: name.clone(),
        error: match e {
            ControlError::Device { error, .. } => error,
            other => other.to_string(),
        },
        previous,
    };
    match spec.table {
        Table::Coil => line
            .write_coil(unit, spec.address, req.value != 0.0)
            .await
            .map_err(|e| after_write(device_error(e)))?,
        _ => {
            let raw = (req.value - spec.offset) / spec.scale;
            let words =
                modbus::encode_registers(raw, spec.data_type, spec.byte_order, spec.word_order);
            line.write_registers(unit, spec.address, &words)
                .await
                .map_err(|e| after_write(device_error(e)))?
        }
    }
    let after = read_modbus(line, unit, spec.table, spec.address, len, timing)
        .await
        .map_err(|e| after_write(device_error(e)))?;
    let confirmed = read(&after).map_err(after_write)?;
    // Registers hold whole raw steps: the value read back is the written one rounded to
    // a step of `scale`.
    let step = if spec.table == Table::Coil {
        0.5
    } else {
        spec.scale.abs() / 2.0 + 1e-9
    };
    if (confirmed - req.value).abs() > step {
        return Err(ControlError::NotConfirmed {
            point: name,
            wrote: req.value,
            read: confirmed,
            previous: Some(previous),
        });
    }
    Ok(ControlOutcome {
        previous,
        confirmed,
    })
}

/// Status word 3 (04000503): bit 4 set means the load switch is open (tripped).
const STATUS3: DataId = DataId(0x0400_0503);
const STATUS3_RELAY_OPEN: u32 = 1 << 4;
/// How long a remote-control command stays valid at the meter.
const REMOTE_VALID_S: i64 = 600;

async fn relay_closed(
    client: &mut Client<LineStream>,
    address: dlt645::Address,
    timing: &BusTiming,
    name: &str,
) -> Result<bool, ControlError> {
    let v = super::bus::read_dlt645(client, address, STATUS3, timing)
        .await
        .map_err(|e| ControlError::Device {
            point: name.to_string(),
            error: format!("status word 3: {e}"),
        })?;
    match v {
        dlt645::Value::Word(w) => Ok(w & STATUS3_RELAY_OPEN == 0),
        other => Err(ControlError::Device {
            point: name.to_string(),
            error: format!("status word 3 reads {other}"),
        }),
    }
}

/// Carries out one request on a DL/T 645 meter's load switch: reads status word 3, sends
/// the remote-control command (0 trips, anything else closes), reads status word 3 again.
pub async fn write_dlt645(
    client: &mut Client<LineStream>,
    device: &DeviceConfig,
    timing: &BusTiming,
    req: &ControlRequest,
) -> Result<ControlOutcome, ControlError> {
    let name = format!("{}/{}", req.device, req.point);
    let DeviceKind::Dlt645 { address } = device.kind else {
        return Err(ControlError::Unknown(name));
    };
    if req.point != RELAY_POINT {
        return Err(ControlError::NotWritable(
            name,
            "a DL/T 645 meter is controlled through its relay only",
        ));
    }
    let Some(auth) = req.auth else {
        return Err(ControlError::NotWritable(
            name,
            "no remote-control password",
        ));
    };
    let before = relay_closed(client, address, timing, &name).await?;
    let close = req.value != 0.0;
    // Meters keep their own clock; the validity window is generous so that a meter a few
    // minutes off still takes the command.
    let now_s = gridgate_core::now_ms() / 1000;
    let rc = RemoteControl {
        password: auth.password,
        operator: auth.operator,
        command: if close {
            RemoteCommand::Close
        } else {
            RemoteCommand::Trip
        },
        valid_until: MeterTime::from_unix(now_s + REMOTE_VALID_S),
    };
    let as_value = |closed: bool| if closed { 1.0 } else { 0.0 };
    let after_write = |error: String| ControlError::AfterWrite {
        point: name.clone(),
        error,
        previous: as_value(before),
    };
    client
        .remote_control(address, &rc)
        .await
        .map_err(|e| after_write(e.to_string()))?;
    let after = relay_closed(client, address, timing, &name)
        .await
        .map_err(|e| after_write(e.to_string()))?;
    if after != close {
        return Err(ControlError::NotConfirmed {
            point: name,
            wrote: as_value(close),
            read: as_value(after),
            previous: Some(as_value(before)),
        });
    }
    Ok(ControlOutcome {
        previous: as_value(before),
        confirmed: as_value(after),
    })
}
