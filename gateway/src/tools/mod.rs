//! Field tools: what an engineer runs by hand on site.

pub mod advice;
pub mod check_config;
pub mod dr;
pub mod ledger;
pub mod market;
pub mod openadr;
pub mod pull;
pub mod read;
pub mod scan;
#[cfg(feature = "demo")]
pub mod sim;
pub mod status;
pub mod verify;
