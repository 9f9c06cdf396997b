//! The wire contract between the gateway and the master station (protobuf package
//! `gridgate.v1`). Nothing else in the workspace defines wire messages for the master station.
#![forbid(unsafe_code)]

/// Package `gridgate.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/gridgate.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every .proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gridgate_descriptor.bin"));
