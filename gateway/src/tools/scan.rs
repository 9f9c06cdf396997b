//! `gridgate scan`: finds what answers on a line ([`gridgate_acquire::scan`]) and prints a
//! config snippet for it.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use gridgate_acquire::scan;
use gridgate_drivers::dlt645::Address;
use gridgate_drivers::link::Link;
use gridgate_drivers::modbus::Table;

/// Finds the meters on a DL/T 645 line (stopping at `expect` of them, when given) and prints
/// their `[[device]]` sections.
pub async fn dlt645(
    link: &Link,
    timeout: Duration,
    expect: Option<usize>,
    out: &mut (dyn Write + Send),
) -> Result<Vec<Address>> {
    let scan = scan::dlt645(link, timeout, expect).await?;
    out.write_all(scan::dlt645_snippet(link, &scan.found).as_bytes())?;
    if scan.stopped_early {
        writeln!(
            out,
            "# the search stopped at the {} meter(s) expected, after {} probe(s)",
            scan.found.len(),
            scan.probes
        )?;
    } else {
        writeln!(out, "# {} probe(s)", scan.probes)?;
    }
    Ok(scan.found)
}

/// Finds the Modbus unit ids in `units` that answer on `link` and prints their sections.
pub async fn modbus(
    link: &Link,
    units: std::ops::RangeInclusive<u8>,
    table: Table,
    address: u16,
    timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<Vec<(u8, String)>> {
    let found = scan::modbus(link, units, table, address, timeout).await?;
    out.write_all(scan::modbus_snippet(link, table, address, &found).as_bytes())?;
    Ok(found)
}
