//! Compiles the wire contract with protox (pure Rust, no system `protoc`), generates the tonic
//! client and server, and writes the encoded descriptor set that server reflection serves.

use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/streaming/v1/streaming.proto";
    println!("cargo:rerun-if-changed={proto}");
    // sqlx::migrate! embeds migrations/ at compile time: a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");

    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("streaming_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
