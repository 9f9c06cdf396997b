//! `gridgate demo`: what the demo adds around a real gateway: simulated field devices, a DR
//! site with its operator, and an in-process consortium of validators.

pub mod dr;
pub mod ledger;
