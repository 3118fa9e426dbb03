//! A client's sync write as the replicated log carries it: the client's
//! `WriteRequest` translated, field by field, into the log's own
//! [`pb::SyncWrite`].
//!
//! The log keeps messages of its own so that what is replicated changes
//! only when the state-machine format does (`command.rs`): a field added
//! to the client API is dropped here until it is given a field of the log
//! and a meaning in apply. The test below holds every field of the
//! client's messages to that: each is translated with its number and type,
//! or named as one the log does not carry.

use streamshield_proto::v1::{self as pb, condition, op, sync_condition, sync_op};

/// The log's form of `w`, which [`crate::validate::write`] has accepted. The
/// request's mode is not carried (only SYNC writes are proposed), nor an
/// emit, which validation refuses in a sync write: an op that had one
/// would reach apply without a kind, and apply refuses those.
pub fn from_request(w: pb::WriteRequest) -> pb::SyncWrite {
    // Taken apart whole, so that a field added to the request does not
    // compile here until it is translated or dropped on purpose.
    let pb::WriteRequest {
        shard,
        job,
        ops,
        conditions,
        client_id,
        seq,
        acked_below,
        mode: _,
        lease,
    } = w;
    pb::SyncWrite {
        shard,
        job,
        ops: ops.into_iter().map(sync_op).collect(),
        conditions: conditions.into_iter().map(sync_condition).collect(),
        client_id,
        seq,
        acked_below,
        lease: lease.map(|pb::TaskLease { task, generation }| pb::SyncLease { task, generation }),
    }
}

fn sync_op(pb::Op { state, key, kind }: pb::Op) -> pb::SyncOp {
    pb::SyncOp {
        state,
        key,
        kind: match kind {
            Some(op::Kind::Put(p)) => Some(sync_op::Kind::Put(pb::SyncPut { value: p.value })),
            Some(op::Kind::Delete(_)) => Some(sync_op::Kind::Delete(pb::SyncDelete {})),
            Some(op::Kind::Emit(_)) | None => None,
        },
    }
}

fn sync_condition(pb::Condition { state, key, test }: pb::Condition) -> pb::SyncCondition {
    pb::SyncCondition {
        state,
        key,
        test: test.map(|t| match t {
            condition::Test::Absent(a) => sync_condition::Test::Absent(a),
            condition::Test::ValueEquals(v) => sync_condition::Test::ValueEquals(v),
            condition::Test::VersionEquals(n) => sync_condition::Test::VersionEquals(n),
        }),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{field_descriptor_proto::Type, DescriptorProto, FileDescriptorSet};

    use super::*;

    /// Fields of a client message that the log does not carry, with why.
    const NOT_REPLICATED: &[(&str, &str)] = &[
        ("WriteRequest.mode", "only SYNC writes are proposed"),
        ("Op.emit", "refused in a sync write before it is proposed"),
    ];

    fn message<'a>(set: &'a FileDescriptorSet, name: &str) -> &'a DescriptorProto {
        set.file
            .iter()
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no message {name}"))
    }

    /// Each field of the client's message either has a field of the log's
    /// with its number, name and wire type (a message field: the log's own
    /// message, checked in turn), or is listed in [`NOT_REPLICATED`].
    #[test]
    fn every_field_of_a_client_write_is_translated_or_named_as_not_replicated() {
        let set = FileDescriptorSet::decode(streamshield_proto::FILE_DESCRIPTOR_SET).unwrap();
        let pairs = [
            ("WriteRequest", "SyncWrite"),
            ("Op", "SyncOp"),
            ("Put", "SyncPut"),
            ("Delete", "SyncDelete"),
            ("Condition", "SyncCondition"),
            ("TaskLease", "SyncLease"),
        ];
        for (client, log) in pairs {
            let (c, l) = (message(&set, client), message(&set, log));
            for f in &c.field {
                let qualified = format!("{client}.{}", f.name());
                if NOT_REPLICATED.iter().any(|(n, _)| *n == qualified) {
                    assert!(
                        l.field.iter().all(|g| g.number() != f.number()),
                        "{qualified} is listed as not replicated but {log} has its number"
                    );
                    continue;
                }
                let g = l
                    .field
                    .iter()
                    .find(|g| g.number() == f.number())
                    .unwrap_or_else(|| {
                        panic!(
                            "{qualified} (field {}) has no field in {log}: translate it in \
                             sync_write.rs with a new format, or list it in NOT_REPLICATED",
                            f.number()
                        )
                    });
                assert_eq!(g.name(), f.name(), "{qualified}");
                assert_eq!(g.label(), f.label(), "{qualified}");
                assert_eq!(g.proto3_optional(), f.proto3_optional(), "{qualified}");
                if f.r#type() == Type::Message {
                    let of = |t: &str| t.rsplit('.').next().unwrap().to_string();
                    let paired = pairs
                        .iter()
                        .any(|(a, b)| of(f.type_name()) == *a && of(g.type_name()) == *b);
                    assert!(
                        paired,
                        "{qualified}: {} against {}",
                        f.type_name(),
                        g.type_name()
                    );
                } else {
                    assert_eq!(g.r#type(), f.r#type(), "{qualified}");
                }
            }
            for g in &l.field {
                assert!(
                    c.field.iter().any(|f| f.number() == g.number()),
                    "{log}.{} has no field in {client}",
                    g.name()
                );
            }
        }
    }

    fn request() -> pb::WriteRequest {
        pb::WriteRequest {
            shard: 3,
            job: "j".into(),
            ops: vec![
                pb::Op {
                    state: "t".into(),
                    key: b"k".to_vec(),
                    kind: Some(op::Kind::Put(pb::Put {
                        value: b"v".to_vec(),
                    })),
                },
                pb::Op {
                    state: "t".into(),
                    key: b"gone".to_vec(),
                    kind: Some(op::Kind::Delete(pb::Delete {})),
                },
            ],
            conditions: vec![
                pb::Condition {
                    state: "t".into(),
                    key: b"k".to_vec(),
                    test: Some(condition::Test::VersionEquals(u64::MAX)),
                },
                pb::Condition {
                    state: "t".into(),
                    key: b"x".to_vec(),
                    test: Some(condition::Test::ValueEquals(vec![0, 1])),
                },
                pb::Condition {
                    state: "t".into(),
                    key: b"y".to_vec(),
                    test: Some(condition::Test::Absent(true)),
                },
            ],
            client_id: u64::MAX,
            seq: 9,
            acked_below: 4,
            mode: pb::WriteMode::Sync as i32,
            lease: Some(pb::TaskLease {
                task: 2,
                generation: 5,
            }),
        }
    }

    /// An entry from before `SyncWrite` (a `WriteRequest` in the log)
    /// applies as the translated request does, and the translation encodes
    /// to the bytes the log held then.
    #[test]
    fn a_write_logged_as_the_clients_request_decodes_as_its_translation() {
        let w = request();
        let logged = w.encode_to_vec();
        let translated = from_request(w);
        assert_eq!(
            pb::SyncWrite::decode(logged.as_slice()).unwrap(),
            translated
        );
        assert_eq!(translated.encode_to_vec(), logged);
    }

    #[test]
    fn an_emit_reaches_the_log_without_a_kind() {
        let mut w = request();
        w.ops[0].kind = Some(op::Kind::Emit(pb::Emit {
            stream: "s".into(),
            partition: 0,
            value: b"r".to_vec(),
        }));
        assert_eq!(from_request(w).ops[0].kind, None);
    }
}
