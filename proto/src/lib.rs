//! Protocol buffers of StreamShield.
//!
//! One package, `streamshield.v1`, in five files: `state.proto` (the client
//! API: Get, Scan, Write), `admin.proto` (status, membership, jobs,
//! snapshots), `auth.proto` (grants of roles and bearer tokens),
//! `raft.proto` (node-to-node Raft RPCs, which double as the
//! on-disk encoding of log entries) and `errors.proto` (details carried in a
//! gRPC status, such as `NotLeader`). Code is generated at build time with
//! protox, so no system `protoc` is needed. Wire types only: no runtime.

mod display;

/// Generated messages, clients and servers of `streamshield.v1`.
pub mod v1 {
    tonic::include_proto!("streamshield.v1");
}

/// Encoded `FileDescriptorSet` of every file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamshield_descriptor.bin"));

pub use prost;
pub use tonic;
