//! The handle every part holds to reach field devices (DR relay, the page's test reads,
//! scans and writes): each request goes to the bus task that owns the device's line (one
//! request in flight per line, never two programs on one RS-485) or to the MQTT commander,
//! and is waited for with a deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridgate_config::{Control, ControlPoint, DeviceConfig};
use tokio::sync::{mpsc, oneshot};

use crate::request::{
    BusRequest, CommandRequest, ControlError, ControlOutcome, ControlRequest, PollRequest,
    ReadAheadRequest, ScanFound, ScanRequest,
};

/// Sends the request `make` builds around its reply channel to `tx` and waits at most
/// `within` for the answer. A closed channel (the task stopped or is reloading) is
/// [`ControlError::BusGone`]`(gone)`, an expired wait [`ControlError::Timeout`]`(waited_for)`.
async fn ask<R, T>(
    tx: mpsc::Sender<R>,
    make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> R,
    within: Duration,
    gone: String,
    waited_for: String,
) -> Result<T, ControlError> {
    let (reply, rx) = oneshot::channel();
    let asked = async {
        tx.send(make(reply))
            .await
            .map_err(|_| ControlError::BusGone(gone.clone()))?;
        rx.await.map_err(|_| ControlError::BusGone(gone.clone()))?
    };
    tokio::time::timeout(within, asked)
        .await
        .unwrap_or_else(|_| Err(ControlError::Timeout(waited_for, within)))
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
                let gone = format!("MQTT commands for {}", m.load);
                let tx = self.lock().mqtt.clone();
                let tx = tx.ok_or_else(|| ControlError::BusGone(gone.clone()))?;
                let make = |reply| CommandRequest {
                    control: m.clone(),
                    value,
                    reply,
                };
                // The commander answers by the ack timeout; the margin covers a queue.
                let limit = m.ack_timeout + Duration::from_secs(1);
                ask(tx, make, limit, gone, m.load.clone()).await
            }
        }
    }

    /// Asks the bus of a load's control point to read it now, ahead of a write about to
    /// follow (see [`ReadAheadRequest`]). Not waited for; skipped when the bus's queue is
    /// full, and for MQTT loads, which have nothing to read.
    pub fn read_ahead(&self, control: &Control) {
        let Control::Point(p) = control else {
            return;
        };
        if let Ok(tx) = self.bus_of(&p.device, &p.device) {
            let _ = tx.try_send(BusRequest::ReadAhead(ReadAheadRequest {
                device: p.device.clone(),
                point: p.point.clone(),
            }));
        }
    }

    /// Polls a device now through its bus task, waiting at most `within` (the line may be
    /// busy with a device that does not answer).
    pub async fn poll_now(
        &self,
        device: &str,
        within: Duration,
    ) -> Result<Vec<gridgate_core::Reading>, ControlError> {
        let tx = self.bus_of(device, device)?;
        let make = |reply| {
            BusRequest::Poll(PollRequest {
                device: device.to_string(),
                reply,
            })
        };
        ask(tx, make, within, device.to_string(), device.to_string()).await
    }

    /// Scans the line of `bus` through its task, waiting at most `within`.
    pub async fn scan(
        &self,
        bus: &str,
        units: std::ops::RangeInclusive<u8>,
        within: Duration,
    ) -> Result<ScanFound, ControlError> {
        let tx = self.lock().buses.get(bus).cloned();
        let tx = tx.ok_or_else(|| ControlError::Unknown(format!("bus {bus}")))?;
        let make = |reply| BusRequest::Scan(ScanRequest { units, reply });
        let (gone, waited_for) = (format!("bus {bus}"), format!("scan of bus {bus}"));
        ask(tx, make, within, gone, waited_for).await
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
        let tx = self.bus_of(device, &name)?;
        let make = |reply| {
            BusRequest::Write(ControlRequest {
                device: device.to_string(),
                point: control.point.clone(),
                value,
                auth: control.auth,
                reply,
            })
        };
        ask(tx, make, within, name.clone(), name).await
    }

    /// The task of the bus `device` is on; `what` names the request in errors.
    fn bus_of(&self, device: &str, what: &str) -> Result<mpsc::Sender<BusRequest>, ControlError> {
        let m = self.lock();
        let bus = m
            .device_bus
            .get(device)
            .ok_or_else(|| ControlError::Unknown(what.to_string()))?;
        m.buses
            .get(bus)
            .cloned()
            .ok_or_else(|| ControlError::BusGone(what.to_string()))
    }
}
