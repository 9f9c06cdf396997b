//! MQTT, both ways: field devices' readings in ([`ingest`]: from a broker, or from the
//! gateway's own durable listener, with the embedded broker for devices that need one), and
//! signed batches out to the master station ([`uplink`]). Nothing is acknowledged before the
//! store has it: a device's PUBACK waits for the commit, and the uplink's cursor moves only
//! past batches the master station acknowledged.

pub mod ingest;
pub mod uplink;

#[cfg(test)]
mod scripted;
