//! Compiles the wire contract with protox (pure Rust, no system `protoc`), generates the tonic
//! client and (in a second pass, see below) the server, and writes the encoded descriptor set that server reflection serves.

use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/streaming/v1/streaming.proto";
    println!("cargo:rerun-if-changed={proto}");
    // sqlx::migrate! embeds migrations/ at compile time: a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations_pg");

    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("streaming_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // Messages and the client, for the CLI, the tests and the server's own use.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors.clone())?;
    // The server, on the same messages, except that a UserEvent goes out as
    // `crate::wire::UserEventOut`: its stored body is forwarded as bytes, never decoded and
    // encoded again.
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&server_dir)
        .extern_path(".streaming.v1", "crate::proto::v1")
        .extern_path(".streaming.v1.UserEvent", "crate::wire::UserEventOut")
        .compile_fds(descriptors)?;
    Ok(())
}
