//! Generated input for every decoder of network and disk input: a node
//! never panics on it, and anything it accepts is within the bounds the
//! rest of the node relies on.
//!
//! `make test` runs proptest's default 256 cases per property; `make fuzz`
//! runs many more (`PROPTEST_CASES`). An input that once failed is kept in
//! `proptest-regressions/` beside this file and tried first on every run.

use proptest::prelude::*;
use prost::Message;
use streamshield_proto::v1 as pb;
use streamshield_server::codec::{self, MAX_LOG_INDEX, MAX_TERM};
use streamshield_server::command::SharedCommand;
use streamshield_server::config::Limits;
use streamshield_server::keys::StoredValue;
use streamshield_server::segment_log::record::{self, HEADER_BYTES};
use streamshield_server::segment_log::SegmentLog;
use streamshield_server::validate;

/// Integers where the bugs live: the ends of the range and around the
/// bounds the node checks.
fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(MAX_TERM),
        Just(MAX_TERM + 1),
        Just(1 << 32),
        any::<u64>(),
        0u64..1000,
    ]
}

fn leader_id() -> impl Strategy<Value = pb::LeaderId> {
    (extreme_u64(), extreme_u64()).prop_map(|(term, node_id)| pb::LeaderId { term, node_id })
}

fn log_id() -> impl Strategy<Value = pb::LogId> {
    (leader_id(), extreme_u64()).prop_map(|(l, index)| pb::LogId {
        leader_id: Some(l),
        index,
    })
}

proptest! {
    #[test]
    fn raw_bytes_never_panic_a_decoder(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(e) = pb::Entry::decode(raw.as_slice()) {
            let _ = codec::entry_from_pb(e);
        }
        let _ = SharedCommand::decode(raw.clone().into());
        if let Ok(r) = pb::AppendEntriesRequest::decode(raw.as_slice()) {
            let _ = codec::append_request_from_pb(r);
        }
        if let Ok(r) = pb::VoteRequest::decode(raw.as_slice()) {
            let _ = codec::vote_request_from_pb(&r);
        }
        if let Ok(m) = pb::SnapshotMeta::decode(raw.as_slice()) {
            let _ = codec::snapshot_meta_from_pb(&m);
        }
        if let Ok(r) = pb::AppendStreamReply::decode(raw.as_slice()) {
            let _ = codec::stream_reply_from_pb(&r);
        }
        if let Ok(r) = pb::AppendEntriesResponse::decode(raw.as_slice()) {
            let _ = codec::append_response_from_pb(&r);
        }
        let _ = StoredValue::decode(&raw);
        let _ = StoredValue::version_of(&raw);
        if raw.len() >= HEADER_BYTES {
            let header: [u8; HEADER_BYTES] = raw[..HEADER_BYTES].try_into().unwrap();
            let _ = record::header(&header, 1, 1 << 20);
            let _ = record::verify(&header, &raw[HEADER_BYTES..]);
        }
    }

    #[test]
    fn accepted_peer_messages_stay_within_the_bounds(
        vote in leader_id(),
        last in proptest::option::of(log_id()),
        prev in proptest::option::of(log_id()),
        pre_vote in any::<bool>(),
    ) {
        let req = pb::VoteRequest {
            vote: Some(pb::Vote { leader_id: Some(vote), committed: false }),
            last_log_id: last,
            leadership_transfer: false,
            pre_vote,
        };
        if let Ok(v) = codec::vote_request_from_pb(&req) {
            prop_assert!(v.vote.leader_id.term <= MAX_TERM);
            prop_assert!(v.last_log_id.is_none_or(|l| l.index <= MAX_LOG_INDEX && l.leader_id.term <= MAX_TERM));
        }
        let append = pb::AppendEntriesRequest {
            vote: Some(pb::Vote { leader_id: Some(vote), committed: true }),
            prev_log_id: prev,
            entries: vec![],
            leader_commit: last,
        };
        if let Ok(a) = codec::append_request_from_pb(append) {
            prop_assert!(a.vote.leader_id.term <= MAX_TERM);
            prop_assert!(a.prev_log_id.is_none_or(|l| l.index <= MAX_LOG_INDEX));
            prop_assert!(a.leader_commit.is_none_or(|l| l.index <= MAX_LOG_INDEX));
        }
    }

    #[test]
    fn client_requests_never_panic_validation(
        job in ".{0,40}",
        state in ".{0,40}",
        key in proptest::collection::vec(any::<u8>(), 0..64),
        value_len in prop_oneof![Just(0usize), Just(1 << 20), Just((1 << 20) + 1), 0usize..64],
        client_id in extreme_u64(),
        seq in extreme_u64(),
        acked_below in extreme_u64(),
        mode in any::<i32>(),
        put in any::<bool>(),
    ) {
        let kind = if put {
            pb::op::Kind::Put(pb::Put { value: vec![0; value_len] })
        } else {
            pb::op::Kind::Delete(pb::Delete {})
        };
        let w = pb::WriteRequest {
            job,
            ops: vec![pb::Op { state, key, kind: Some(kind) }],
            client_id,
            seq,
            acked_below,
            mode,
            ..Default::default()
        };
        let accepted = validate::write(&w, &Limits::default()).is_ok();
        if accepted {
            prop_assert!(w.client_id != 0 || (w.seq == 0 && w.acked_below == 0));
            prop_assert!(w.acked_below <= w.seq || w.client_id == 0);
        }
    }

    /// A log directory whose segments hold anything at all opens or fails
    /// with an error; it never panics.
    #[test]
    fn damaged_segments_never_panic_recovery(
        files in proptest::collection::vec(
            (0u64..4, proptest::collection::vec(any::<u8>(), 0..4096)),
            0..3,
        ),
        tail_records in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (seq, bytes) in &files {
            let mut content = bytes.clone();
            // Some well-formed records after the garbage, so recovery has
            // something to read past.
            for i in 0..tail_records {
                let entry = pb::Entry {
                    log_id: Some(pb::LogId {
                        leader_id: Some(pb::LeaderId { term: 1, node_id: 1 }),
                        index: i as u64 + 1,
                    }),
                    payload: Some(pb::entry::Payload::Blank(true)),
                };
                let payload = entry.encode_to_vec();
                content.extend(record::encode(*seq, 1, record::Kind::Entry, &payload));
            }
            std::fs::write(dir.path().join(format!("seg-{seq:020}.log")), content).unwrap();
        }
        let _ = SegmentLog::open(dir.path(), 8192);
    }
}
