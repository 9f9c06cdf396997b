//! The end-to-end tests: the real `gridgate` binary against simulators, a real Mosquitto,
//! a Python master station, headless Chromium and each other, one module per area. They are
//! one test binary (not one per file) so that the gateway and its dependencies are linked
//! once: twelve binaries took 450 MiB of debug executables and the time to link each.
//!
//! Every listener a test starts gets its port from [`gridgate_tests::free_port`], which hands
//! out ports below the kernel's ephemeral range, so that a test holding hundreds of client
//! connections never takes a port another test is about to bind.
// A test stops at its first failure: a panic is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acquisition;
mod consensus;
mod dr;
mod grpc_api;
mod ledger;
mod market;
mod mqtt_tls;
mod openadr;
mod python_client;
mod reload;
mod store_and_forward;
mod systemd;
mod tools;
mod web;
mod yocto;
