//! Finds what answers on a line, for `gridgate scan` and for a running bus asked to scan
//! (which closes its own connection first); printing what was found is the caller's.
//!
//! DL/T 645: a wildcard read-address (13) first; a clean reply means one meter. When replies
//! collide (several meters), the search narrows the address byte by byte from the lowest
//! digits, with the rest left as `AA` wildcards: a silent prefix has no meter, a clean reply
//! is one meter, a collision is searched one byte further. A silent probe costs the whole
//! timeout, so an engineer who knows how many meters share the line says so, and the search
//! stops at the last of them instead of probing every value left.
//!
//! Modbus: each unit id in the range is asked for one register; any reply, even an
//! exception, means a device is there.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use gridgate_drivers::dlt645::{Address, Client, ClientOptions, Dlt645Error};
use gridgate_drivers::link::{LineStream, Link, SerialSettings};
use gridgate_drivers::modbus::{ModbusError, ModbusLine, Table};
use indicatif::{ProgressBar, ProgressStyle};

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Outcome of one probe of a DL/T 645 address pattern.
enum Probe {
    Nobody,
    One(Address),
    Several,
}

async fn probe(client: &mut Client<LineStream>, pattern: Address) -> Result<Probe> {
    match client.read_address(pattern).await {
        Ok(a) => Ok(Probe::One(a)),
        Err(Dlt645Error::Timeout(_)) => Ok(Probe::Nobody),
        Err(e) if e.is_link_failure() => Err(e).context("line failed during the scan"),
        // Garbage, checksum errors, cut-short frames: replies collided.
        Err(_) => Ok(Probe::Several),
    }
}

fn bcd(n: u8) -> u8 {
    ((n / 10) << 4) | (n % 10)
}

/// The meters a DL/T 645 search found, and the probes it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dlt645Scan {
    pub found: Vec<Address>,
    pub probes: u32,
    /// It stopped at the number of meters it was told to expect.
    pub stopped_early: bool,
}

/// Finds the meters on a DL/T 645 line; with `expect`, stops once that many are found.
pub async fn dlt645(link: &Link, timeout: Duration, expect: Option<usize>) -> Result<Dlt645Scan> {
    let stream = link
        .open(SerialSettings::DLT645, timeout)
        .await
        .with_context(|| format!("cannot open {link}"))?;
    let mut client = Client::new(
        stream,
        ClientOptions {
            response_timeout: timeout,
            ..ClientOptions::default()
        },
    );
    let mut found = Vec::new();
    let mut probes = 1;
    let mut stopped_early = false;
    match probe(&mut client, Address::WILDCARD).await? {
        Probe::Nobody => {}
        Probe::One(a) => found.push(a),
        Probe::Several => {
            // Depth-first over address bytes, lowest first.
            let mut stack: Vec<Vec<u8>> = vec![vec![]];
            let pb = bar(100, "searching addresses");
            'search: while let Some(prefix) = stack.pop() {
                if prefix.len() >= 6 {
                    continue;
                }
                for n in 0..100u8 {
                    if expect.is_some_and(|e| found.len() >= e) {
                        stopped_early = true;
                        break 'search;
                    }
                    probes += 1;
                    let mut bytes = [0xAAu8; 6];
                    bytes[..prefix.len()].copy_from_slice(&prefix);
                    bytes[prefix.len()] = bcd(n);
                    if prefix.is_empty() {
                        pb.set_position(u64::from(n) + 1);
                    }
                    pb.set_message(format!("probing {}", Address(bytes)));
                    match probe(&mut client, Address(bytes)).await? {
                        Probe::Nobody => {}
                        Probe::One(a) => {
                            pb.println(format!("found meter {a}"));
                            found.push(a);
                        }
                        Probe::Several => {
                            let mut p = prefix.clone();
                            p.push(bcd(n));
                            stack.push(p);
                        }
                    }
                }
            }
            pb.finish_and_clear();
        }
    }
    found.sort();
    found.dedup();
    Ok(Dlt645Scan {
        found,
        probes,
        stopped_early,
    })
}

/// Finds the Modbus unit ids in `units` that answer on `link`.
pub async fn modbus(
    link: &Link,
    units: std::ops::RangeInclusive<u8>,
    table: Table,
    address: u16,
    timeout: Duration,
) -> Result<Vec<(u8, String)>> {
    let mut line = ModbusLine::new(link.clone(), timeout);
    line.connect()
        .await
        .with_context(|| format!("cannot open {link}"))?;
    let pb = bar(units.clone().count() as u64, "probing unit ids");
    let mut found = Vec::new();
    for unit in units {
        pb.set_message(format!("unit {unit}"));
        match line.read(unit, table, address, 1).await {
            Ok(_) => found.push((unit, "answered".to_string())),
            // A TCP gateway's "no such device" is not a device.
            Err(ModbusError::Exception { code: 0x0A | 0x0B }) => {}
            Err(ModbusError::Exception { code }) => {
                found.push((unit, format!("answered with exception {code:02X}")));
            }
            Err(ModbusError::Timeout(_)) | Err(ModbusError::Protocol(_)) => {}
            Err(e @ ModbusError::Io(_)) => {
                pb.finish_and_clear();
                return Err(e).context("line failed during the scan");
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(found)
}

/// The `[[bus]]` and `[[device]]` sections for the meters `found` on `link`.
pub fn dlt645_snippet(link: &Link, found: &[Address]) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "# {} DL/T 645 meter(s) on {link}", found.len());
    if !found.is_empty() {
        let _ = writeln!(s, "[[bus]]\nname = \"rs485-1\"\nlink = \"{link}\"\n");
        for a in found {
            let _ = writeln!(
                s,
                "[[device]]\nname = \"meter-{}\"\nbus = \"rs485-1\"\nprotocol = \"dlt645\"\naddress = \"{a}\"\npoll = \"15s\"\npoints = [\n  {{ name = \"energy_import\", di = \"00010000\" }},\n  {{ name = \"active_power\", di = \"02030000\" }},\n]\n",
                a.to_string().trim_start_matches('0')
            );
        }
    }
    s
}

/// The `[[bus]]` and `[[device]]` sections for the Modbus units `found` on `link`, each with
/// the register that answered.
pub fn modbus_snippet(link: &Link, table: Table, address: u16, found: &[(u8, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} Modbus unit(s) on {link}", found.len());
    if !found.is_empty() {
        let _ = writeln!(s, "[[bus]]\nname = \"modbus-1\"\nlink = \"{link}\"\n");
        for (unit, how) in found {
            let _ = writeln!(
                s,
                "# unit {unit}: {how}\n[[device]]\nname = \"unit-{unit}\"\nbus = \"modbus-1\"\nprotocol = \"modbus\"\nunit = {unit}\npoll = \"5s\"\npoints = [\n  {{ name = \"reg{address}\", table = \"{}\", address = {address}, type = \"u16\" }},\n]\n",
                table.name()
            );
        }
    }
    s
}
