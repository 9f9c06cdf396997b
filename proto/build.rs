//! Compiles the .proto files with protox (pure Rust: no protoc needed, in CI or in Yocto),
//! generates messages with prost and services with tonic, and keeps the encoded descriptor
//! set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "gridgate/v1/batch.proto",
        "gridgate/v1/telemetry.proto",
        "gridgate/v1/admin.proto",
        "gridgate/v1/dr.proto",
        "gridgate/v1/ledger.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("gridgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
