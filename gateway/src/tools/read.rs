//! `gridgate read`: one-off reads for commissioning.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use gridgate_drivers::dlt645::{Address, Client, ClientOptions, DataId, di};
use gridgate_drivers::link::{Link, SerialSettings};
use gridgate_drivers::modbus::{DataType, ModbusLine, Order, PointSpec, Table};
use serde_json::json;

use gridgate_acquire::bus::{dlt645_quality, dlt645_value, modbus_quality};
use gridgate_core::{Quality, Value};

/// What `read dlt645` needs.
#[derive(Debug, Clone)]
pub struct Dlt645Read {
    /// Line.
    pub link: Link,
    /// Meter.
    pub address: Address,
    /// Identifiers, in order.
    pub dis: Vec<DataId>,
    /// Reply timeout.
    pub timeout: Duration,
    /// FE bytes before each request.
    pub wakeup_bytes: usize,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Reads each identifier and prints it; exit code 1 when any read failed.
pub async fn dlt645(req: Dlt645Read, out: &mut dyn Write) -> Result<ExitCode> {
    let stream = req
        .link
        .open(SerialSettings::DLT645, req.timeout)
        .await
        .with_context(|| format!("cannot open {}", req.link))?;
    let mut client = Client::new(
        stream,
        ClientOptions {
            response_timeout: req.timeout,
            wakeup_bytes: req.wakeup_bytes,
            ..ClientOptions::default()
        },
    );
    let mut failed = false;
    for di in &req.dis {
        let info = di::lookup(*di);
        let unit = info.as_ref().map_or("", |i| i.unit);
        let name = info.as_ref().map_or_else(
            || "unknown identifier (raw bytes)".to_string(),
            |i| i.name.clone(),
        );
        let result = client.read_value(req.address, *di).await;
        match (&result, req.json) {
            (Ok(v), true) => {
                let value = match dlt645_value(v) {
                    Value::Number(n) => json!(n),
                    other => json!(other.to_string()),
                };
                writeln!(
                    out,
                    "{}",
                    json!({"meter": req.address.to_string(), "di": di.to_string(), "name": name, "value": value, "unit": unit, "quality": "good"})
                )?;
            }
            (Ok(v), false) => writeln!(out, "{di}  {name:<40} {v} {unit}")?,
            (Err(e), true) => {
                failed = true;
                writeln!(
                    out,
                    "{}",
                    json!({"meter": req.address.to_string(), "di": di.to_string(), "name": name, "value": null, "unit": unit, "quality": dlt645_quality(e).to_string(), "error": e.to_string()})
                )?;
            }
            (Err(e), false) => {
                failed = true;
                writeln!(out, "{di}  {name:<40} FAILED ({}): {e}", dlt645_quality(e))?;
            }
        }
        if matches!(result, Err(ref e) if e.is_link_failure()) {
            break;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `read modbus` needs.
#[derive(Debug, Clone)]
pub struct ModbusRead {
    /// Line.
    pub link: Link,
    /// Unit id.
    pub unit: u8,
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Values to read, one after the other.
    pub count: u16,
    /// Type.
    pub data_type: DataType,
    pub byte_order: Order,
    pub word_order: Order,
    pub scale: f64,
    pub offset: f64,
    /// Unit to print.
    pub unit_label: String,
    /// Reply timeout.
    pub timeout: Duration,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Reads `count` values and prints them; exit code 1 when the read failed.
pub async fn modbus(req: ModbusRead, out: &mut dyn Write) -> Result<ExitCode> {
    let mut line = ModbusLine::new(req.link.clone(), req.timeout);
    let spec = PointSpec {
        table: req.table,
        address: req.address,
        data_type: req.data_type,
        byte_order: req.byte_order,
        word_order: req.word_order,
        scale: req.scale,
        offset: req.offset,
    };
    let width = spec.len();
    let total = u32::from(width) * u32::from(req.count.max(1));
    if total > u32::from(req.table.max_read()) || u32::from(req.address) + total > 65536 {
        anyhow::bail!(
            "{} values of {} at {} do not fit one read (at most {} {} per read)",
            req.count,
            req.data_type.name(),
            req.address,
            req.table.max_read(),
            if req.table.is_bits() {
                "bits"
            } else {
                "registers"
            }
        );
    }
    let result = line
        .read(req.unit, req.table, req.address, total as u16)
        .await;
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            let q: Quality = modbus_quality(&e);
            if req.json {
                writeln!(
                    out,
                    "{}",
                    json!({"unit_id": req.unit, "table": req.table.name(), "address": req.address, "value": null, "unit": req.unit_label, "quality": q.to_string(), "error": e.to_string()})
                )?;
            } else {
                writeln!(
                    out,
                    "unit {} {} {}: FAILED ({q}): {e}",
                    req.unit, req.table, req.address
                )?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut failed = false;
    for i in 0..req.count.max(1) {
        let p = PointSpec {
            address: req.address + i * width,
            ..spec
        };
        match p.decode(req.address, &data) {
            Ok(v) => {
                if req.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"unit_id": req.unit, "table": req.table.name(), "address": p.address, "type": req.data_type.name(), "value": v, "unit": req.unit_label, "quality": "good"})
                    )?;
                } else {
                    writeln!(
                        out,
                        "unit {} {} {:>5} {:<4} {} {}",
                        req.unit,
                        req.table,
                        p.address,
                        req.data_type.name(),
                        v,
                        req.unit_label
                    )?;
                }
            }
            Err(e) => {
                failed = true;
                if req.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"unit_id": req.unit, "table": req.table.name(), "address": p.address, "value": null, "unit": req.unit_label, "quality": "decode_error", "error": e.to_string()})
                    )?;
                } else {
                    writeln!(
                        out,
                        "unit {} {} {:>5}: FAILED (decode_error): {e}",
                        req.unit, req.table, p.address
                    )?;
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
