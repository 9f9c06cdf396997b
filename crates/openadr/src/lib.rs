//! gridgate as an OpenADR 3 VEN (docs/openadr.md): a utility's VTN dispatches the gateway
//! through the standard it already runs. The VTN's events become the gateway's own DR events,
//! decided by the same desk under the same limits as a signed one, stored before anything
//! moves; the relay's measured performance goes back as OpenADR reports.
//!
//! The mapping, the reports and the telemetry plan are pure rules (`map`, `report`,
//! `telemetry`); `ven` is the client at
//! work, through the maintained `openleadr-client`; `tables` is what it keeps in the store.

pub mod map;
pub mod notify;
pub mod report;
pub mod tables;
pub mod telemetry;
pub mod ven;
