//! Protocol buffers of StreamShield.
//!
//! One package, `streamshield.v1`, in seven files: `state.proto` (the client
//! API: Get, Scan, Write), `task.proto` (task leases, staged epoch writes,
//! epoch commits), `admin.proto` (status, membership, jobs, snapshots),
//! `auth.proto` (grants of roles and bearer tokens), `raft.proto`
//! (node-to-node Raft RPCs, which double as the on-disk encoding of log
//! entries), `command.proto` (the replicated log's own commands and the
//! task records of the state machine, never sent by clients) and
//! `errors.proto` (details carried in a gRPC status, such as `NotLeader`
//! or `StaleLease`). Code is generated at build time with
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
