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
//! or `StaleLease`), and [`key_group`] with [`placed_key_group`], the
//! placement of keys every side shares. Code is generated at build time with
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

/// The part of `key` that places it under `placement`: the whole key, or
/// for [`v1::KeyPlacement::Prefix`] the placement key it starts with
/// (`[n: u16 big-endian][n bytes]...`); `None` if it does not start so.
pub fn placement_key(key: &[u8], placement: v1::KeyPlacement) -> Option<&[u8]> {
    match placement {
        v1::KeyPlacement::WholeKey => Some(key),
        v1::KeyPlacement::Prefix => {
            let (len, rest) = key.split_first_chunk::<2>()?;
            rest.get(..usize::from(u16::from_be_bytes(*len)))
        }
    }
}

/// The key group of `key` in a table that places keys by `placement`;
/// `None` for a key a prefix-placed table refuses ([`placement_key`]).
pub fn placed_key_group(key: &[u8], placement: v1::KeyPlacement, key_groups: u32) -> Option<u16> {
    placement_key(key, placement).map(|k| key_group(k, key_groups))
}

/// A key of a prefix-placed table ([`v1::KeyPlacement::Prefix`]):
/// `placement_key` length first, then `rest`. All keys made with the same
/// `placement_key` share its key group, and
/// `prefixed_key(placement_key, b"")` is the scan prefix that finds them.
///
/// # Panics
///
/// If `placement_key` is longer than `u16::MAX` bytes (a node refuses
/// keys far shorter than that).
pub fn prefixed_key(placement_key: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = u16::try_from(placement_key.len()).expect("a placement key of at most 65,535 bytes");
    let mut k = Vec::with_capacity(2 + placement_key.len() + rest.len());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(placement_key);
    k.extend_from_slice(rest);
    k
}

/// Encoded `FileDescriptorSet` of every file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamshield_descriptor.bin"));

pub use prost;
pub use tonic;

#[cfg(test)]
mod tests {
    use super::*;
    use v1::KeyPlacement::{Prefix, WholeKey};

    #[test]
    fn a_prefixed_key_is_placed_by_its_placement_key_alone() {
        for rest in [&b""[..], b"a", b"window 10-20", &[0xff; 300]] {
            let k = prefixed_key(b"user-7", rest);
            assert_eq!(placement_key(&k, Prefix), Some(&b"user-7"[..]));
            assert_eq!(
                placed_key_group(&k, Prefix, 128),
                Some(key_group(b"user-7", 128))
            );
        }
        assert_eq!(
            placement_key(&prefixed_key(b"", b"x"), Prefix),
            Some(&b""[..])
        );
    }

    #[test]
    fn a_key_that_does_not_start_with_its_length_is_refused() {
        assert_eq!(placement_key(b"", Prefix), None);
        assert_eq!(placement_key(b"\x00", Prefix), None);
        assert_eq!(placement_key(b"\x00\x05abcd", Prefix), None);
        assert_eq!(placement_key(&[0xff, 0xff, 1], Prefix), None);
        // The same bytes place by themselves in a whole-key table.
        assert_eq!(
            placed_key_group(b"\x00", WholeKey, 7),
            Some(key_group(b"\x00", 7))
        );
    }
}
