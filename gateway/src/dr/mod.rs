//! Demand response: signed events from the DR operator, checked before anything moves.
//!
//! - [`event`]: the acceptance rules (trusted issuer, signature, validity window, replay,
//!   known loads and their limits), pure and without I/O, so every refusal is testable.
//! - [`service`]: the `DemandResponse` gRPC service: check, store durably, answer.
//!
//! Relaying accepted events to the loads' controls, restoring them and measuring the
//! reduction against a baseline build on these (DESIGN.md, DR).

pub mod event;
pub mod service;

pub use event::{Checked, Refused, Trust, check, event_key, sign_event};
