//! Protocol buffers of StreamShield.
//!
//! One package, `streamshield.v1`, in eight files: `state.proto` (the client
//! API: Get, Scan, Write), `task.proto` (task leases, staged epoch writes,
//! epoch commits), `stream.proto` (partitioned logs: append, read,
//! subscribe), `admin.proto` (status, membership, jobs, snapshots),
//! `auth.proto` (grants of roles and bearer tokens), `raft.proto`
//! (node-to-node Raft RPCs, which double as the on-disk encoding of log
//! entries), `command.proto` (the replicated log's own commands and the
//! task records of the state machine, never sent by clients) and
//! `errors.proto` (details carried in a gRPC status, such as `NotLeader`
//! or `StaleLease`), and [`key_group`], the placement of keys every side
//! shares. Code is generated at build time with
//! protox, so no system `protoc` is needed. Wire types only: no runtime.

mod display;

/// Generated messages, clients and servers of `streamshield.v1`.
pub mod v1 {
    tonic::include_proto!("streamshield.v1");
}

/// The key group of a user key among `key_groups`: where the key lives,
/// which task owns it, fixed forever (xxh3-64 of the key, modulo the
/// count). Part of the protocol: a client places keys with it exactly as
/// the state machine does.
pub fn key_group(user_key: &[u8], key_groups: u32) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(user_key) % u64::from(key_groups.max(1))) as u16
}

/// Encoded `FileDescriptorSet` of every file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamshield_descriptor.bin"));

pub use prost;
pub use tonic;
