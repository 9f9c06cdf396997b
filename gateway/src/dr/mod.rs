//! Demand response: signed events from the DR operator, checked before anything moves.
//!
//! - [`event`]: the acceptance rules (trusted issuer, signature, validity window, replay,
//!   known loads and their limits), pure and without I/O, so every refusal is testable.
//! - [`service`]: the `DemandResponse` gRPC service: check, store durably, answer.
//! - [`relay`]: drives each accepted event's loads through their controls (written by the
//!   bus tasks, confirmed by read-back), retries, restores at the end, survives restarts.
//!
//! Measuring the reduction against a baseline and the performance report build on these
//! (docs/dr-operator.md).

pub mod event;
pub mod measure;
pub mod mqtt;
pub mod relay;
pub mod report;
pub mod service;

pub use event::{Checked, Refused, Trust, check, check_cancel, event_key};
