//! Unit tests of client writes through the apply path.

use std::sync::Mutex;

use rocksdb::WriteOptions;
use streamshield_proto::v1::{self as pb, command, command_response, sync_condition, sync_op};

use super::fixture::Fixture;
use super::kv::FORGET_STEP;
use super::*;
use crate::keys::meta;
use crate::rocks;
use crate::state_machine::meta::{CF_DATA, CF_META};

fn put(key: &[u8], value: &[u8]) -> pb::SyncOp {
    pb::SyncOp {
        state: "s".into(),
        key: key.to_vec(),
        kind: Some(sync_op::Kind::Put(pb::SyncPut {
            value: value.to_vec(),
        })),
    }
}

fn req(ops: Vec<pb::SyncOp>) -> pb::SyncWrite {
    pb::SyncWrite {
        job: "j".into(),
        ops,
        ..Default::default()
    }
}

fn succeeded(r: &pb::CommandResponse) -> bool {
    matches!(&r.kind, Some(command_response::Kind::Write(w)) if w.succeeded)
}

#[test]
fn versions_grow_per_write_and_reset_on_delete() {
    let mut f = Fixture::new();
    f.write(req(vec![put(b"k", b"a")]));
    f.write(req(vec![put(b"k", b"b"), put(b"k", b"c")]));
    let kv = f.get(b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"c"[..], 3));
    let del = pb::SyncOp {
        state: "s".into(),
        key: b"k".to_vec(),
        kind: Some(sync_op::Kind::Delete(pb::SyncDelete {})),
    };
    f.write(req(vec![del]));
    assert!(f.get(b"k").is_none());
    f.write(req(vec![put(b"k", b"d")]));
    assert_eq!(f.get(b"k").unwrap().version, 1);
}

#[test]
fn versions_are_the_same_from_the_memo_and_from_the_store() {
    let mut f = Fixture::new();
    let del = || pb::SyncOp {
        state: "s".into(),
        key: b"k".to_vec(),
        kind: Some(sync_op::Kind::Delete(pb::SyncDelete {})),
    };
    let versions = |r: &pb::CommandResponse| match &r.kind {
        Some(command_response::Kind::Write(w)) => w.versions.clone(),
        other => panic!("{other:?}"),
    };
    // Chunk after chunk (memo hits), a delete, and within one chunk.
    assert_eq!(versions(&f.write(req(vec![put(b"k", b"a")]))), [1]);
    assert_eq!(versions(&f.write(req(vec![put(b"k", b"b")]))), [2]);
    assert_eq!(versions(&f.write(req(vec![del()]))), [0]);
    assert_eq!(versions(&f.write(req(vec![put(b"k", b"c")]))), [1]);
    let chunk = f.apply_chunk(vec![
        pb::Command {
            kind: Some(command::Kind::Write(req(vec![put(b"k", b"d")]))),
        },
        pb::Command {
            kind: Some(command::Kind::Write(req(vec![put(b"k", b"e")]))),
        },
    ]);
    assert_eq!(versions(&chunk[1]), [3]);
    // A restart (or an install) starts with an empty memo: the store
    // answers, and the count goes on.
    f.memo = Mutex::default();
    assert_eq!(versions(&f.write(req(vec![put(b"k", b"f")]))), [4]);
    assert_eq!(f.get(b"k").unwrap().version, 4);
}

#[test]
fn a_retry_is_answered_from_its_record_even_after_a_restart_and_newer_writes() {
    let mut f = Fixture::new();
    let id = f.register("");
    let write = |seq: u64, value: &[u8]| {
        let mut w = req(vec![put(b"k", value)]);
        w.client_id = id;
        w.seq = seq;
        w
    };
    let five = f.write(write(5, b"a"));
    let six = f.write(write(6, b"b"));
    // A restart forgets the memo; then seq 4, never applied, comes
    // late. It is new and applies; the retried 6 must not.
    f.memo = Mutex::default();
    assert!(succeeded(&f.write(write(4, b"c"))));
    assert_eq!(
        f.write(write(6, b"b")),
        six,
        "seq 6 answered from its record"
    );
    assert_eq!(f.get(b"k").unwrap().version, 3, "5, 6 and 4: three puts");
    // And with the memo warm: 5 again is a retry, 7 is new.
    assert_eq!(f.write(write(5, b"d")), five);
    assert_eq!(f.get(b"k").unwrap().version, 3);
    assert!(succeeded(&f.write(write(7, b"e"))));
    assert_eq!(f.get(b"k").unwrap().version, 4);
}

#[test]
fn only_creating_a_job_or_a_state_table_marks_job_records_changed() {
    let f = Fixture::new();
    let changed = |cmd: pb::Command, index: u64| {
        let mut p = PendingWrites::new(&f.db);
        apply_command(&mut p, index, &cmd).unwrap();
        let changed = p.jobs_changed();
        p.write(&WriteOptions::default()).unwrap();
        changed
    };
    let write = |w| pb::Command {
        kind: Some(command::Kind::Write(w)),
    };
    assert!(changed(write(req(vec![put(b"k", b"a")])), 2), "new table s");
    assert!(!changed(write(req(vec![put(b"k", b"b")])), 3), "s exists");
    let mut other = put(b"k", b"c");
    other.state = "t".into();
    assert!(changed(write(req(vec![other])), 4), "new table t");
    let job = pb::Command {
        kind: Some(command::Kind::CreateJob(pb::CreateJob {
            job: "j2".into(),
            key_groups: 1,
            tables: Vec::new(),
        })),
    };
    assert!(changed(job, 5));
}

#[test]
fn a_retried_request_applies_once() {
    let mut f = Fixture::new();
    let id = f.register("");
    let mut w = req(vec![put(b"k", b"x")]);
    w.client_id = id;
    w.seq = 7;
    let first = f.write(w.clone());
    let again = f.write(w.clone());
    assert_eq!(first, again, "the recorded answer comes back");
    assert_eq!(f.get(b"k").unwrap().version, 1, "applied once");
    // Once acknowledged (acked_below passes it by a step), it is dropped.
    let recorded = |f: &Fixture, seq: u64| {
        let cf = rocks::cf(&f.db, CF_META).unwrap();
        f.db.get_cf(cf, meta::dedupe(id, seq)).unwrap().is_some()
    };
    let mut next = req(vec![put(b"other", b"y")]);
    next.client_id = id;
    next.seq = 8;
    next.acked_below = 8;
    f.write(next.clone());
    assert!(recorded(&f, 7), "kept until a full step");
    next.seq = FORGET_STEP + 1;
    next.acked_below = FORGET_STEP;
    f.write(next);
    assert!(!recorded(&f, 7));
    assert!(recorded(&f, FORGET_STEP + 1));
    // A seq below the mark cannot be told apart from a replay: refused.
    let mut stale = req(vec![put(b"k", b"again")]);
    stale.client_id = id;
    stale.seq = 7;
    match f.write(stale).kind {
        Some(command_response::Kind::Error(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.get(b"k").unwrap().version, 1);
}

#[test]
fn seqs_and_marks_at_the_top_of_the_range_apply_and_keep_the_mark() {
    let mut f = Fixture::new();
    let id = f.register("");
    let write = |seq: u64, acked_below: u64| {
        let mut w = req(vec![put(b"k", b"v")]);
        w.client_id = id;
        w.seq = seq;
        w.acked_below = acked_below;
        w
    };
    assert!(succeeded(&f.write(write(u64::MAX - 1, u64::MAX - 1))));
    assert!(succeeded(&f.write(write(u64::MAX, u64::MAX))));
    let mark = sessions::load(&mut PendingWrites::new(&f.db), id)
        .unwrap()
        .unwrap()
        .forgotten;
    assert_eq!(mark, u64::MAX - 1, "the mark never moves backwards");
    assert_eq!(f.get(b"k").unwrap().version, 2);
    // And a retry of the last one is still answered from its record.
    assert_eq!(
        f.write(write(u64::MAX, u64::MAX)),
        f.write(write(u64::MAX, u64::MAX))
    );
    assert_eq!(f.get(b"k").unwrap().version, 2);
}

#[test]
fn failed_condition_writes_nothing() {
    let mut f = Fixture::new();
    f.write(req(vec![put(b"k", b"a")]));
    let mut w = req(vec![put(b"new", b"1"), put(b"k", b"b")]);
    w.conditions.push(pb::SyncCondition {
        state: "s".into(),
        key: b"k".to_vec(),
        test: Some(sync_condition::Test::ValueEquals(b"zzz".to_vec())),
    });
    let r = f.write(w);
    assert!(!succeeded(&r));
    match r.kind {
        Some(command_response::Kind::Write(w)) => {
            assert_eq!(w.failed_condition, Some(0));
            assert_eq!(w.current.unwrap().value, b"a");
        }
        other => panic!("{other:?}"),
    }
    assert!(f.get(b"new").is_none());
    assert_eq!(f.get(b"k").unwrap().value, b"a");
}

#[test]
fn conditions_on_absent_keys_and_versions() {
    let mut f = Fixture::new();
    let cond = |test| pb::SyncCondition {
        state: "s".into(),
        key: b"k".to_vec(),
        test: Some(test),
    };
    let mut w = req(vec![put(b"k", b"1")]);
    w.conditions.push(cond(sync_condition::Test::Absent(true)));
    assert!(succeeded(&f.write(w.clone())));
    assert!(!succeeded(&f.write(w)), "no longer absent");
    let mut w = req(vec![put(b"k", b"2")]);
    w.conditions
        .push(cond(sync_condition::Test::VersionEquals(1)));
    assert!(succeeded(&f.write(w.clone())));
    assert!(!succeeded(&f.write(w)), "version moved on");
}

#[test]
fn unknown_job_is_not_found_and_job_names_are_unique() {
    let mut f = Fixture::new();
    let mut w = req(vec![put(b"k", b"1")]);
    w.job = "missing".into();
    match f.write(w).kind {
        Some(command_response::Kind::Error(e)) => assert_eq!(e.code, Code::NotFound as i32),
        other => panic!("{other:?}"),
    }
    let dup = f.apply(pb::Command {
        kind: Some(command::Kind::CreateJob(pb::CreateJob {
            job: "j".into(),
            key_groups: 4,
            tables: Vec::new(),
        })),
    });
    match dup.kind {
        Some(command_response::Kind::Error(e)) => {
            assert_eq!(e.code, Code::AlreadyExists as i32)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn entries_of_one_chunk_see_each_other() {
    let mut f = Fixture::new();
    let mut retried = req(vec![put(b"k", b"b")]);
    retried.client_id = f.register("");
    retried.seq = 1;
    retried.acked_below = 1;
    let write = |w: pb::SyncWrite| pb::Command {
        kind: Some(command::Kind::Write(w)),
    };
    let out = f.apply_chunk(vec![
        write(req(vec![put(b"k", b"a")])),
        write(retried.clone()),
        write(retried),
        write(req(vec![put(b"k", b"c")])),
    ]);
    let versions: Vec<Vec<u64>> = out
        .iter()
        .map(|r| match &r.kind {
            Some(command_response::Kind::Write(w)) => w.versions.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // The retry in the same chunk is answered from the dedupe record.
    assert_eq!(versions, vec![vec![1], vec![2], vec![2], vec![3]]);
    let kv = f.get(b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"c"[..], 3));
}

#[test]
fn a_batch_applies_each_write_on_its_own_in_order() {
    let mut f = Fixture::new();
    let mut cas = req(vec![put(b"k", b"second")]);
    cas.conditions = vec![pb::SyncCondition {
        state: "s".into(),
        key: b"k".to_vec(),
        test: Some(sync_condition::Test::VersionEquals(1)),
    }];
    let mut stale_cas = cas.clone();
    stale_cas.ops = vec![put(b"k", b"never")];
    let mut unknown_job = req(vec![put(b"x", b"y")]);
    unknown_job.job = "nope".into();
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::Batch(pb::WriteBatch {
            writes: vec![req(vec![put(b"k", b"first")]), cas, stale_cas, unknown_job],
        })),
    });
    let Some(command_response::Kind::Batch(b)) = r.kind else {
        panic!("{r:?}")
    };
    assert_eq!(b.answers.len(), 4);
    assert!(succeeded(&b.answers[0]) && succeeded(&b.answers[1]));
    // The third saw the second's version 2, so its condition failed.
    assert!(!succeeded(&b.answers[2]));
    assert!(matches!(
        &b.answers[3].kind,
        Some(command_response::Kind::Error(e)) if e.code == Code::NotFound as i32
    ));
    let kv = f.get(b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"second"[..], 2));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(FORGET_STEP),
            0u64..8,
            any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = pb::Op> {
        (
            prop_oneof![Just("s".to_string()), Just("t".to_string()), ".{0,8}"],
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            any::<bool>(),
            // Some ops emit a record instead (refused in a sync write: the log's
            // form of it has no kind).
            proptest::option::weighted(0.2, (stream_name(), prop_oneof![0u32..3, Just(u32::MAX)])),
        )
            .prop_map(|(state, key, value, has_kind, emit_to)| pb::Op {
                state,
                key,
                kind: has_kind.then_some(match (value, emit_to) {
                    (Some(value), Some((stream, partition))) => pb::op::Kind::Emit(pb::Emit {
                        stream,
                        partition,
                        value,
                    }),
                    (Some(value), None) => pb::op::Kind::Put(pb::Put { value }),
                    (None, _) => pb::op::Kind::Delete(pb::Delete {}),
                }),
            })
    }

    fn write() -> impl Strategy<Value = pb::SyncWrite> {
        (
            prop_oneof![Just("j".to_string()), ".{0,4}"],
            proptest::collection::vec(op(), 0..4),
            extreme(),
            extreme(),
            extreme(),
            proptest::option::of((extreme(), any::<bool>())),
            any::<u32>(),
        )
            .prop_map(|(job, ops, client_id, seq, acked_below, cond, shard)| {
                let conditions = cond
                    .map(|(v, absent)| pb::Condition {
                        state: "s".into(),
                        key: b"k".to_vec(),
                        test: Some(if absent {
                            pb::condition::Test::Absent(true)
                        } else {
                            pb::condition::Test::VersionEquals(v)
                        }),
                    })
                    .into_iter()
                    .collect();
                crate::sync_write::from_request(pb::WriteRequest {
                    job,
                    ops,
                    conditions,
                    client_id,
                    seq,
                    acked_below,
                    shard: shard % 2,
                    ..Default::default()
                })
            })
    }

    fn command() -> BoxedStrategy<pb::Command> {
        prop_oneof![
            write().prop_map(|w| pb::Command {
                kind: Some(command::Kind::Write(w))
            }),
            proptest::collection::vec(write(), 0..4).prop_map(|writes| pb::Command {
                kind: Some(command::Kind::Batch(pb::WriteBatch { writes }))
            }),
            (
                ".{0,4}",
                prop_oneof![Just(0u32), Just(u32::MAX), 1u32..64],
                proptest::collection::vec(table_mode("j"), 0..3)
            )
                .prop_map(|(job, key_groups, tables)| pb::Command {
                    kind: Some(command::Kind::CreateJob(pb::CreateJob {
                        job,
                        key_groups,
                        tables
                    }))
                }),
            table_mode("j").prop_map(|t| pb::Command {
                kind: Some(command::Kind::SetTableMode(t))
            }),
            Just(pb::Command { kind: None }),
            // Hands out ids from 1 on, which `extreme` writes under.
            prop_oneof![Just(String::new()), Just("p".to_string())].prop_map(|principal| {
                pb::Command {
                    kind: Some(command::Kind::RegisterClient(pb::ClientRegister {
                        principal,
                    })),
                }
            }),
            task_command(),
            stream_name().prop_map(|stream| pb::Command {
                kind: Some(command::Kind::DeleteStream(pb::StreamDelete {
                    job: "j".into(),
                    stream,
                })),
            }),
            (prop_oneof![Just("j".to_string()), ".{0,4}"], any::<bool>()).prop_map(
                |(job, force)| pb::Command {
                    kind: Some(command::Kind::DeleteJob(pb::JobDelete { job, force })),
                }
            ),
        ]
        .boxed()
    }

    fn small() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4, extreme()]
    }

    fn lease() -> impl Strategy<Value = Option<pb::LeaseRef>> {
        proptest::option::of(
            (
                prop_oneof![Just(String::new()), Just("p".to_string())],
                0u32..3,
                small(),
            )
                .prop_map(|(principal, task, generation)| pb::LeaseRef {
                    principal,
                    job: "j".into(),
                    task,
                    generation,
                }),
        )
    }

    /// A table of `job` declared with a mode, known or not.
    fn table_mode(job: &'static str) -> impl Strategy<Value = pb::TableModeSet> {
        (
            prop_oneof![Just("s".to_string()), ".{0,3}"],
            prop_oneof![0i32..2, Just(7), Just(i32::MIN), Just(i32::MAX)],
            prop::option::of(prop_oneof![0i32..2, Just(2), Just(-1)]),
        )
            .prop_map(move |(state, mode, placement)| pb::TableModeSet {
                job: job.to_string(),
                state,
                mode,
                placement,
            })
    }

    fn staged_op() -> impl Strategy<Value = pb::StagedOp> {
        op().prop_map(|o| pb::StagedOp {
            state: o.state,
            key: o.key,
            kind: o.kind.map(|k| match k {
                pb::op::Kind::Put(p) => pb::staged_op::Kind::Put(p.value),
                pb::op::Kind::Delete(_) => pb::staged_op::Kind::Delete(true),
                pb::op::Kind::Emit(e) => pb::staged_op::Kind::Emit(pb::StagedEmit {
                    stream: e.stream,
                    partition: e.partition,
                    value: e.value,
                }),
            }),
        })
    }

    fn stream_name() -> impl Strategy<Value = String> {
        prop_oneof![Just("out".to_string()), Just("x".to_string())]
    }

    fn outputs() -> impl Strategy<Value = pb::PartitionEntries> {
        (
            stream_name(),
            prop_oneof![0u32..3, Just(u32::MAX)],
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..4),
        )
            .prop_map(|(stream, partition, values)| pb::PartitionEntries {
                stream,
                partition,
                records: values
                    .into_iter()
                    .map(|value| pb::StreamEntry {
                        key: Vec::new(),
                        value,
                    })
                    .collect(),
            })
    }

    /// Leases, staged writes, commits and releases of three tasks of the
    /// fixture's 4-group job, with generations, epochs and seqs near the
    /// edges.
    fn task_command() -> BoxedStrategy<pb::Command> {
        let group = || prop_oneof![0u32..5, Just(u32::MAX)];
        prop_oneof![
            (
                0u32..3,
                group(),
                group(),
                prop_oneof![Just(String::new()), Just("p".to_string())]
            )
                .prop_map(|(task, start, end, principal)| pb::Command {
                    kind: Some(command::Kind::AcquireLease(pb::LeaseAcquire {
                        principal,
                        job: "j".into(),
                        task,
                        key_group_start: start,
                        key_group_end: end,
                        input_partitions: Vec::new(),
                    })),
                }),
            (
                lease(),
                small(),
                small(),
                proptest::collection::vec(staged_op(), 0..4)
            )
                .prop_map(|(lease, epoch, seq_from, ops)| pb::Command {
                    kind: Some(command::Kind::StageWrites(pb::StageOps {
                        lease,
                        epoch,
                        seq_from,
                        ops,
                    })),
                }),
            (
                lease(),
                small(),
                small(),
                proptest::collection::vec(outputs(), 0..3)
            )
                .prop_map(|(lease, epoch, last_seq, outputs)| pb::Command {
                    kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
                        lease,
                        epoch,
                        last_seq,
                        input_offsets: Vec::new(),
                        metadata: Vec::new(),
                        outputs,
                    })),
                }),
            (
                stream_name(),
                prop_oneof![Just(0u32), 1u32..3, Just(u32::MAX)],
                small(),
                small()
            )
                .prop_map(|(stream, partitions, retention_bytes, retention_ms)| {
                    pb::Command {
                        kind: Some(command::Kind::CreateStream(pb::StreamCreate {
                            job: "j".into(),
                            stream,
                            partitions,
                            retention_bytes,
                            retention_ms,
                        })),
                    }
                }),
            (outputs(), small(), small()).prop_map(|(o, producer_id, producer_seq)| pb::Command {
                kind: Some(command::Kind::Append(pb::StreamAppend {
                    principal: String::new(),
                    job: "j".into(),
                    stream: o.stream,
                    partition: o.partition,
                    records: o.records,
                    producer_id,
                    producer_seq,
                })),
            }),
            (stream_name(), 0u32..3, small()).prop_map(|(stream, partition, before_offset)| {
                pb::Command {
                    kind: Some(command::Kind::TrimStream(pb::StreamTrim {
                        job: "j".into(),
                        stream,
                        partition,
                        before_offset,
                    })),
                }
            }),
            lease().prop_map(|lease| pb::Command {
                kind: Some(command::Kind::ReleaseLease(pb::LeaseRelease { lease })),
            }),
            (0u32..3, small(), small()).prop_map(|(task, generation, epoch)| pb::Command {
                kind: Some(command::Kind::PromoteEpoch(pb::EpochPromote {
                    job: "j".into(),
                    task,
                    generation,
                    epoch,
                })),
            }),
        ]
        .boxed()
    }

    type Rows = Vec<(Box<[u8]>, Box<[u8]>)>;

    fn rows(f: &Fixture, cf: &str) -> Rows {
        let cf = rocks::cf(&f.db, cf).unwrap();
        f.db.iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap())
            .collect()
    }

    /// Everything a task command may touch: a refused one touches none of
    /// it (unlike a refused write, whose answer is recorded for dedupe).
    fn all_cfs(f: &Fixture) -> [Rows; 3] {
        [
            rows(f, CF_DATA),
            rows(f, crate::state_machine::meta::CF_STAGED),
            rows(f, CF_META),
        ]
    }

    proptest! {
        /// Whatever the commands, apply answers every one (a storage
        /// error is the only `Err`), and one answered with an error
        /// left the visible data as it was.
        #[test]
        fn any_command_applies_or_is_refused_leaving_data_unchanged(
            cmds in proptest::collection::vec(command(), 1..12)
        ) {
            let mut f = Fixture::new();
            for cmd in cmds {
                let is_task = matches!(
                    cmd.kind,
                    Some(command::Kind::AcquireLease(_) | command::Kind::StageWrites(_)
                        | command::Kind::CommitEpoch(_) | command::Kind::ReleaseLease(_)
                        | command::Kind::CreateStream(_) | command::Kind::Append(_)
                        | command::Kind::TrimStream(_) | command::Kind::PromoteEpoch(_)
                        | command::Kind::SetTableMode(_) | command::Kind::RegisterClient(_)
                        | command::Kind::DeleteJob(_) | command::Kind::DeleteStream(_))
                );
                let before = all_cfs(&f);
                let r = f.apply(cmd);
                if let Some(command_response::Kind::Error(_)) = r.kind {
                    let after = all_cfs(&f);
                    prop_assert_eq!(&before[0], &after[0]);
                    if is_task {
                        prop_assert_eq!(before, after);
                    }
                }
            }
        }
    }
}
