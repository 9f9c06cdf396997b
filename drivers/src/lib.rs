//! Field protocols and their simulators. This crate knows frames, registers, data
//! identifiers and serial timing, and nothing of stores, batches or ledgers.
//!
//! - [`link`]: link URLs (`serial://`, `tcp://`, `rtu-serial://`, `rtu-tcp://`) and opening them.
//! - [`dlt645`]: DL/T 645-2007 codec, data identifiers, client and simulated meters.
//! - [`modbus`]: Modbus data types, read planner, client with timeouts, simulated devices.
//! - [`sim`]: what the simulators share (loads, line timing, pseudo-terminals).
#![forbid(unsafe_code)]
// No unwrap()/expect() outside tests: bad input gets an error, never a panic (clippy
// enforces it; test code may still use them).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod dlt645;
pub mod link;
pub mod modbus;
#[cfg(feature = "sim")]
pub mod sim;
