//! Device I/O done by the bus task that owns the line: reads with retries, and writes that
//! read the control first (so that the caller can restore it), write, and read it back: a
//! write counts as acknowledged only when the device shows the new value. A Modbus device
//! with function 23 writes and reads back in one call.

use gridgate_config::dr::RELAY_POINT;
use gridgate_config::{BusTiming, DeviceConfig, DeviceKind, PointSource};
use gridgate_drivers::dlt645::{
    self, Address, Client, DataId, Dlt645Error, MeterTime, RemoteCommand, RemoteControl,
};
use gridgate_drivers::link::LineStream;
use gridgate_drivers::modbus::{self, ModbusError, ModbusLine, PointSpec, ReadData, Table};
use tracing::{debug, warn};

use crate::request::{ControlError, ControlOutcome, ControlRequest};

/// Reads one identifier, retrying what a retry can cure (silence, corruption).
pub async fn read_dlt645(
    client: &mut Client<LineStream>,
    address: Address,
    di: DataId,
    timing: &BusTiming,
) -> Result<dlt645::Value, Dlt645Error> {
    let mut attempt = 0;
    loop {
        match client.read_value(address, di).await {
            Err(
                e
                @ (Dlt645Error::Timeout(_) | Dlt645Error::Incomplete(_) | Dlt645Error::Corrupt(_)),
            ) if attempt < timing.retries => {
                debug!(%address, %di, attempt, error = %e, "retrying");
                tokio::time::sleep(timing.retry_backoff * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Reads a range, retrying timeouts and garbled replies.
pub async fn read_modbus(
    line: &mut ModbusLine,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    timing: &BusTiming,
) -> Result<ReadData, ModbusError> {
    let mut attempt = 0;
    loop {
        match line.read(unit, table, start, count).await {
            Err(e @ (ModbusError::Timeout(_) | ModbusError::Protocol(_)))
                if attempt < timing.retries =>
            {
                debug!(unit, %table, start, count, attempt, error = %e, "retrying");
                tokio::time::sleep(timing.retry_backoff * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The unit and register of `device`'s point `point` where it can be written (a coil or a
/// holding register of a Modbus device), or why not.
pub fn writable_modbus_point(
    device: &DeviceConfig,
    point: &str,
) -> Result<(u8, PointSpec), ControlError> {
    let name = || format!("{}/{point}", device.name);
    let DeviceKind::Modbus { unit, .. } = device.kind else {
        return Err(ControlError::NotWritable(
            name(),
            "only Modbus points are written",
        ));
    };
    let p = device
        .points
        .iter()
        .find(|p| p.name == point)
        .ok_or_else(|| ControlError::Unknown(name()))?;
    let PointSource::Modbus(spec) = p.source else {
        return Err(ControlError::NotWritable(name(), "not a Modbus point"));
    };
    if !matches!(spec.table, Table::Coil | Table::HoldingRegister) {
        return Err(ControlError::NotWritable(
            name(),
            "only coils and holding registers can be written",
        ));
    }
    Ok((unit, spec))
}

/// Carries out one request on a Modbus line for `device` (the request's device): read,
/// write, read back. `read_ahead` is the control's value read moments ago with no write
/// since (the bus task keeps it): the value to restore without a read of its own.
pub async fn write_modbus(
    line: &mut ModbusLine,
    device: &DeviceConfig,
    timing: &BusTiming,
    req: &ControlRequest,
    read_ahead: Option<ReadData>,
) -> Result<ControlOutcome, ControlError> {
    let (unit, spec) = writable_modbus_point(device, &req.point)?;
    let read_write_multiple = matches!(
        device.kind,
        DeviceKind::Modbus {
            read_write_multiple: true,
            ..
        }
    );
    let name = format!("{}/{}", req.device, req.point);
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
    let before = match read_ahead {
        Some(data) => data,
        None => read_modbus(line, unit, spec.table, spec.address, len, timing)
            .await
            .map_err(device_error)?,
    };
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
    let mut read_back = None;
    match spec.table {
        Table::Coil => line
            .write_coil(unit, spec.address, req.value != 0.0)
            .await
            .map_err(|e| after_write(device_error(e)))?,
        _ => {
            let raw = (req.value - spec.offset) / spec.scale;
            let words =
                modbus::encode_registers(raw, spec.data_type, spec.byte_order, spec.word_order);
            if read_write_multiple && line.has_read_write(unit) {
                match line.write_read_registers(unit, spec.address, &words).await {
                    Ok(w) => read_back = Some(ReadData::Words(w)),
                    // An exception is a request not carried out: nothing moved, so the
                    // plain write below is the first write.
                    Err(ModbusError::Exception { code: 1 }) => warn!(
                        device = %device.name,
                        "the device does not support function 23 (Read/Write Multiple \
                         Registers): writing with 06/16 and reading back instead; take \
                         read_write_multiple out of its [[device]]"
                    ),
                    Err(e) => return Err(after_write(device_error(e))),
                }
            }
            if read_back.is_none() {
                line.write_registers(unit, spec.address, &words)
                    .await
                    .map_err(|e| after_write(device_error(e)))?
            }
        }
    }
    let after = match read_back {
        Some(data) => data,
        None => read_modbus(line, unit, spec.table, spec.address, len, timing)
            .await
            .map_err(|e| after_write(device_error(e)))?,
    };
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
    let v = read_dlt645(client, address, STATUS3, timing)
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
