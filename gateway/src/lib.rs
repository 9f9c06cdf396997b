//! gridgate: the demand-response edge gateway.
//!
//! Modules follow the data's way through the gateway (see docs/dev/architecture.md):
//! [`config`] → [`acquire`] (buses, polling, device state, readings, sinks). [`tools`] holds
//! the field engineer's one-off commands (read, scan, simulators) and [`daemon`] the
//! long-running jobs (run, demo). `main.rs` only parses the command line.
#![forbid(unsafe_code)]
// No unwrap()/expect() outside tests: bad input gets an error, never a panic (clippy
// enforces it; test code may still use them).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod daemon;
pub mod demo;
pub mod service;
pub mod tools;
