//! A Modbus master on one line, with a timeout on every call.
//!
//! tokio-modbus's async client waits forever for a reply that never comes; here every call
//! is bounded, and after a timeout or an I/O error the connection is dropped and reopened on
//! the next call, so that a late reply can never be mistaken for the answer to a later
//! request.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use super::Table;
use crate::link::{Endpoint, Framing, Link, SerialSettings};

/// Data returned by a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Input or holding registers.
    Words(Vec<u16>),
}

/// Why a Modbus call failed.
#[derive(Debug, Error)]
pub enum ModbusError {
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The device answered with an exception.
    #[error("exception {code:02X} ({})", super::exception_text(*code))]
    Exception {
        /// Exception code.
        code: u8,
    },
    /// A reply that does not match the request (wrong unit, function or length).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The line failed.
    #[error("line I/O error: {0}")]
    Io(#[from] io::Error),
}

impl ModbusError {
    /// True when the line should be reopened.
    pub fn is_link_failure(&self) -> bool {
        matches!(self, ModbusError::Io(_))
    }
}

/// One Modbus line (a TCP connection, or a serial port with several units on it).
pub struct ModbusLine {
    link: Link,
    serial: SerialSettings,
    timeout: Duration,
    ctx: Option<Context>,
    /// Units that answered function 23 with "illegal function".
    without_read_write: Vec<u8>,
}

impl std::fmt::Debug for ModbusLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusLine")
            .field("link", &self.link)
            .field("timeout", &self.timeout)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

impl ModbusLine {
    /// A line on `link`; nothing is opened until the first call.
    pub fn new(link: Link, timeout: Duration) -> Self {
        ModbusLine {
            link,
            serial: SerialSettings::MODBUS_RTU,
            timeout,
            ctx: None,
            without_read_write: Vec::new(),
        }
    }

    /// The link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// True when a connection is open.
    pub fn is_connected(&self) -> bool {
        self.ctx.is_some()
    }

    /// Opens the line now (calls open it on demand anyway).
    pub async fn connect(&mut self) -> Result<(), ModbusError> {
        if self.ctx.is_some() {
            return Ok(());
        }
        let stream = self.link.open(self.serial, self.timeout).await?;
        let rtu = match (&self.link.endpoint, self.link.framing) {
            (_, Framing::Rtu) => true,
            // A raw serial link for Modbus can only mean RTU.
            (Endpoint::Serial { .. }, Framing::Raw) => true,
            (Endpoint::Tcp { .. }, Framing::Raw) => false,
        };
        self.ctx = Some(if rtu {
            tokio_modbus::client::rtu::attach(stream)
        } else {
            tokio_modbus::client::tcp::attach(stream)
        });
        Ok(())
    }

    /// Drops the connection; the next call reopens it.
    pub fn disconnect(&mut self) {
        self.ctx = None;
    }

    async fn call<T, F>(&mut self, unit: u8, f: F) -> Result<T, ModbusError>
    where
        F: for<'a> FnOnce(
            &'a mut Context,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = tokio_modbus::Result<T>> + Send + 'a>,
        >,
    {
        self.connect().await?;
        let timeout = self.timeout;
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(ModbusError::Io(io::Error::other("line not open")));
        };
        ctx.set_slave(Slave(unit));
        let outcome = tokio::time::timeout(timeout, f(ctx)).await;
        match outcome {
            Err(_) => {
                self.disconnect();
                Err(ModbusError::Timeout(timeout))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.disconnect();
                Err(ModbusError::Io(e))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                // The stream may be out of step: start again from a clean connection.
                self.disconnect();
                Err(ModbusError::Protocol(e.to_string()))
            }
            Ok(Ok(Err(code))) => Err(ModbusError::Exception {
                code: exception_code(code),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// Reads `count` registers or bits of `table` from `unit`, starting at `start`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<ReadData, ModbusError> {
        let data = match table {
            Table::Coil => ReadData::Bits(
                self.call(unit, |c| Box::pin(c.read_coils(start, count)))
                    .await?,
            ),
            Table::DiscreteInput => ReadData::Bits(
                self.call(unit, |c| Box::pin(c.read_discrete_inputs(start, count)))
                    .await?,
            ),
            Table::InputRegister => ReadData::Words(
                self.call(unit, |c| Box::pin(c.read_input_registers(start, count)))
                    .await?,
            ),
            Table::HoldingRegister => ReadData::Words(
                self.call(unit, |c| Box::pin(c.read_holding_registers(start, count)))
                    .await?,
            ),
        };
        let got = match &data {
            ReadData::Bits(b) => b.len(),
            ReadData::Words(w) => w.len(),
        };
        if got < usize::from(count) {
            return Err(ModbusError::Protocol(format!(
                "asked for {count} {table} values at {start}, got {got}"
            )));
        }
        Ok(data)
    }

    /// Writes holding registers (06 for one, 16 for several).
    pub async fn write_registers(
        &mut self,
        unit: u8,
        start: u16,
        words: &[u16],
    ) -> Result<(), ModbusError> {
        let words = words.to_vec();
        if words.len() == 1 {
            self.call(unit, move |c| {
                Box::pin(c.write_single_register(start, words[0]))
            })
            .await
        } else {
            self.call(unit, move |c| {
                Box::pin(async move { c.write_multiple_registers(start, &words).await })
            })
            .await
        }
    }

    /// Writes holding registers and reads the same registers back in one transaction
    /// (23, Read/Write Multiple Registers: the device writes before it reads), so a write
    /// and its confirmation cost one round trip instead of two.
    pub async fn write_read_registers(
        &mut self,
        unit: u8,
        start: u16,
        words: &[u16],
    ) -> Result<Vec<u16>, ModbusError> {
        let words = words.to_vec();
        let count = words.len() as u16;
        let read = self
            .call(unit, move |c| {
                Box::pin(async move {
                    c.read_write_multiple_registers(start, count, start, &words)
                        .await
                })
            })
            .await
            .inspect_err(|e| {
                if matches!(e, ModbusError::Exception { code: 1 })
                    && !self.without_read_write.contains(&unit)
                {
                    self.without_read_write.push(unit);
                }
            })?;
        if read.len() < usize::from(count) {
            return Err(ModbusError::Protocol(format!(
                "wrote {count} registers at {start}, read back {}",
                read.len()
            )));
        }
        Ok(read)
    }

    /// False once `unit` has answered function 23 with exception 01 (illegal function):
    /// it did nothing, and its writes go as 06/16 and a read from then on.
    pub fn has_read_write(&self, unit: u8) -> bool {
        !self.without_read_write.contains(&unit)
    }

    /// Writes one coil (05).
    pub async fn write_coil(
        &mut self,
        unit: u8,
        address: u16,
        on: bool,
    ) -> Result<(), ModbusError> {
        self.call(unit, move |c| Box::pin(c.write_single_coil(address, on)))
            .await
    }
}

fn exception_code(code: ExceptionCode) -> u8 {
    u8::from(code)
}
