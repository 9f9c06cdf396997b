//! The `gridgate` command's own parts: the field engineer's and operator's tools ([`tools`]:
//! read, scan, verify, status, pull, DR and ledger commands, simulators) and `gridgate demo`
//! (`demo`, in builds with the `demo` feature: simulators stay out of production builds). The gateway itself is the crates in `crates/` (docs/dev/architecture.md);
//! `main.rs` only parses the command line and calls them.

#[cfg(feature = "demo")]
pub mod demo;
pub mod tools;
