//! Compiles the .proto files with protox (pure Rust: no protoc needed, in CI or in Yocto)
//! and generates the Rust types with prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["gridgate/v1/batch.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
