//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`)
//! and hands the descriptors to tonic-prost-build.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/streamshield/v1/state.proto",
    "proto/streamshield/v1/admin.proto",
    "proto/streamshield/v1/raft.proto",
    "proto/streamshield/v1/errors.proto",
    "proto/streamshield/v1/auth.proto",
    "proto/streamshield/v1/command.proto",
    "proto/streamshield/v1/task.proto",
    "proto/streamshield/v1/stream.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC reflection so grpcurl and friends work without the files.
    std::fs::write(out.join("streamshield_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Shared, not copied, between the log, its cache and every
        // follower's AppendEntries.
        .bytes(".streamshield.v1.Entry.normal")
        // An epoch commit decodes every staged run it promotes: as slices
        // of the stored run, not a copy of each key and value.
        .bytes(".streamshield.v1.StagedEntry")
        .bytes(".streamshield.v1.StagedOutput")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
