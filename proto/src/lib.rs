//! The wire contract between the gateway and the master station (protobuf package
//! `gridgate.v1`). Empty until the store issue defines `Batch`, `Reading` and `Quality`;
//! nothing else in the workspace may define wire messages for the master station.
#![forbid(unsafe_code)]
