//! Demand response: signed events from the DR operator, checked before anything moves.
//!
//! - [`event`]: the acceptance rules (trusted issuer, signature, validity window, replay,
//!   known loads and their limits), pure and without I/O, so every refusal is testable.
//! - [`desk`]: where events, cancels and overrides are decided, whichever way they came:
//!   check, store durably, answer.
//! - [`mqtt`]: events and cancels over the master station's broker, and the reports.
//! - [`relay`]: drives each accepted event's loads through their controls (written by the
//!   bus tasks, confirmed by read-back), retries, restores at the end, survives restarts.
//!
//! - [`agent`]: the gateway's market agent: its answer at an announced price, from its
//!   forecast and flexible resources (docs/market.md); [`market`]: the agent at work,
//!   answering each open round the validators announce.
//! - [`shared`]: the record lock, the relay's wake-up and the feed of changes.
//! - [`measure`] and [`report`]: the reduction against a baseline, and the signed
//!   performance report (docs/dr-operator.md).

pub mod agent;
pub mod desk;
pub mod event;
pub mod market;
pub mod measure;
pub mod mqtt;
pub mod relay;
pub mod report;
pub mod shared;
pub mod tables;

pub use event::{Checked, Refused, Trust, check, check_cancel, event_key};
