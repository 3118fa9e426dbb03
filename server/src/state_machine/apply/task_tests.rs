//! Unit tests of leases, staged writes and epoch commits through the apply
//! path, on a job of 4 key groups.

use prost::Message;
use rocksdb::IteratorMode;
use streamshield_proto::v1::{self as pb, command, command_response, error_detail};
use tonic::Code;

use super::fixture::Fixture;
use crate::keys;
use crate::rocks;
use crate::state_machine::meta::CF_STAGED;

pub(super) fn acquire(
    f: &mut Fixture,
    task: u32,
    groups: (u32, u32),
    principal: &str,
) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::AcquireLease(pb::LeaseAcquire {
            principal: principal.into(),
            job: "j".into(),
            task,
            key_group_start: groups.0,
            key_group_end: groups.1,
            input_partitions: vec![pb::PartitionRef {
                stream: "in".into(),
                partition: task,
            }],
        })),
    })
}

pub(super) fn granted(r: &pb::CommandResponse) -> pb::LeaseGranted {
    match &r.kind {
        Some(command_response::Kind::LeaseGranted(g)) => g.clone(),
        other => panic!("not granted: {other:?}"),
    }
}

pub(super) fn lease(task: u32, generation: u64) -> pb::LeaseRef {
    pb::LeaseRef {
        principal: String::new(),
        job: "j".into(),
        task,
        generation,
    }
}

pub(super) fn put(key: &str, value: &str) -> pb::StagedOp {
    pb::StagedOp {
        state: "s".into(),
        key: key.as_bytes().to_vec(),
        kind: Some(pb::staged_op::Kind::Put(value.as_bytes().to_vec())),
    }
}

pub(super) fn stage(
    f: &mut Fixture,
    l: pb::LeaseRef,
    epoch: u64,
    seq_from: u64,
    ops: Vec<pb::StagedOp>,
) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::StageWrites(pb::StageOps {
            lease: Some(l),
            epoch,
            seq_from,
            ops,
        })),
    })
}

pub(super) fn commit(
    f: &mut Fixture,
    l: pb::LeaseRef,
    epoch: u64,
    last_seq: u64,
) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
            lease: Some(l),
            epoch,
            last_seq,
            input_offsets: vec![pb::PartitionOffset {
                stream: "in".into(),
                partition: 0,
                offset: epoch * 10,
            }],
            metadata: format!("m{epoch}").into_bytes(),
            outputs: Vec::new(),
        })),
    })
}

pub(super) fn refused(r: &pb::CommandResponse) -> (Code, pb::ErrorDetail) {
    match &r.kind {
        Some(command_response::Kind::Error(e)) => (
            Code::from_i32(e.code),
            pb::ErrorDetail::decode(e.details.as_slice()).unwrap(),
        ),
        other => panic!("not refused: {other:?}"),
    }
}

pub(super) fn stale(r: &pb::CommandResponse) -> (u64, u64) {
    match refused(r) {
        (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                kind: Some(error_detail::Kind::StaleLease(s)),
            },
        ) => (s.held, s.current),
        other => panic!("not a stale lease: {other:?}"),
    }
}

pub(super) fn value(f: &Fixture, key: &str) -> Option<String> {
    f.get(key.as_bytes())
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

pub(super) fn staged_keys(f: &Fixture) -> usize {
    let cf = rocks::cf(&f.db, CF_STAGED).unwrap();
    f.db.iterator_cf(cf, IteratorMode::Start).count()
}

#[test]
fn a_new_generation_fences_the_old_one_and_drops_its_staged_writes() {
    let mut f = Fixture::new();
    assert_eq!(granted(&acquire(&mut f, 0, (0, 4), "")).generation, 1);
    stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("a", "1"), put("b", "1")],
    );
    assert!(matches!(
        commit(&mut f, lease(0, 1), 1, 2).kind,
        Some(command_response::Kind::EpochCommitted(_))
    ));
    // Epoch 2 is staged by generation 1 and never committed.
    stage(&mut f, lease(0, 1), 2, 1, vec![put("a", "zombie")]);
    assert_eq!(staged_keys(&f), 1);

    let g2 = granted(&acquire(&mut f, 0, (0, 4), ""));
    assert_eq!(g2.generation, 2);
    let cp = g2.checkpoint.expect("the last commit");
    assert_eq!(
        (cp.epoch, cp.metadata.as_slice(), cp.generation),
        (1, &b"m1"[..], 1)
    );
    assert_eq!(cp.input_offsets[0].offset, 10);
    assert_eq!(
        staged_keys(&f),
        0,
        "generation 1's staged writes are dropped"
    );

    assert_eq!(
        stale(&stage(&mut f, lease(0, 1), 2, 2, vec![put("b", "zombie")])),
        (1, 2)
    );
    assert_eq!(stale(&commit(&mut f, lease(0, 1), 2, 1)), (1, 2));
    assert_eq!(
        stale(&commit(&mut f, lease(0, 3), 2, 0)),
        (3, 2),
        "a generation never granted"
    );
    assert_eq!(value(&f, "a").as_deref(), Some("1"));
    assert_eq!(value(&f, "b").as_deref(), Some("1"));
    assert_eq!(staged_keys(&f), 0);
}

#[test]
fn staged_writes_are_invisible_until_their_epoch_commits_and_then_all_at_once() {
    let mut f = Fixture::new();
    acquire(&mut f, 0, (0, 4), "");
    stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("a", "1"), put("b", "1")],
    );
    stage(&mut f, lease(0, 1), 1, 3, vec![put("a", "2")]);
    assert_eq!(value(&f, "a"), None);
    let r = commit(&mut f, lease(0, 1), 1, 3);
    match r.kind {
        Some(command_response::Kind::EpochCommitted(c)) => {
            assert_eq!((c.promoted, c.already_committed), (2, false))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&f, "a").as_deref(), Some("2"), "the later seq wins");
    assert_eq!(
        f.get(b"a").unwrap().version,
        1,
        "one version per committed epoch"
    );
    assert_eq!(value(&f, "b").as_deref(), Some("1"));
    // The retry of the same commit changes nothing and says so.
    match commit(&mut f, lease(0, 1), 1, 3).kind {
        Some(command_response::Kind::EpochCommitted(c)) => assert!(c.already_committed),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.get(b"a").unwrap().version, 1);
    // An epoch going backwards, and staging into a committed epoch.
    stage(&mut f, lease(0, 1), 3, 1, vec![put("a", "3")]);
    commit(&mut f, lease(0, 1), 3, 1);
    assert_eq!(
        refused(&commit(&mut f, lease(0, 1), 2, 0)).0,
        Code::FailedPrecondition
    );
    assert_eq!(
        refused(&stage(&mut f, lease(0, 1), 3, 2, vec![put("a", "x")])).0,
        Code::FailedPrecondition
    );
    assert_eq!(value(&f, "a").as_deref(), Some("3"));
}

#[test]
fn a_commit_names_the_missing_seqs_and_succeeds_once_they_are_resent() {
    let mut f = Fixture::new();
    acquire(&mut f, 0, (0, 4), "");
    // Seqs 1-2 and 5 arrive; 3-4 are lost on the way.
    stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("a", "1"), put("b", "2")],
    );
    stage(&mut f, lease(0, 1), 1, 5, vec![put("e", "5")]);
    match refused(&commit(&mut f, lease(0, 1), 1, 6)) {
        (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                kind: Some(error_detail::Kind::MissingSeqs(m)),
            },
        ) => {
            assert_eq!(m.epoch, 1);
            assert_eq!(
                m.missing,
                vec![
                    pb::SeqRange { first: 3, last: 4 },
                    pb::SeqRange { first: 6, last: 6 }
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        value(&f, "a"),
        None,
        "a refused commit makes nothing visible"
    );
    // Re-sent with a duplicate of seq 2 ("b" again, another value): the
    // duplicate is ignored.
    stage(
        &mut f,
        lease(0, 1),
        1,
        2,
        vec![put("b", "dup"), put("c", "3"), put("d", "4")],
    );
    stage(&mut f, lease(0, 1), 1, 6, vec![put("f", "6")]);
    commit(&mut f, lease(0, 1), 1, 6);
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("e", "5"),
        ("f", "6"),
    ] {
        assert_eq!(value(&f, k).as_deref(), Some(v), "{k}");
    }
}

#[test]
fn overlapping_tasks_and_keys_outside_a_task_are_refused_without_a_change() {
    let mut f = Fixture::new();
    granted(&acquire(&mut f, 0, (0, 2), ""));
    assert_eq!(
        refused(&acquire(&mut f, 1, (1, 3), "")).0,
        Code::FailedPrecondition
    );
    assert_eq!(
        refused(&acquire(&mut f, 1, (2, 5), "")).0,
        Code::InvalidArgument,
        "past the job's 4 groups"
    );
    assert_eq!(
        refused(&acquire(&mut f, 1, (2, 2), "")).0,
        Code::InvalidArgument,
        "empty"
    );
    // A job runs at most one task per key group; from before that bound,
    // any task index was taken.
    for task in [4, u32::MAX] {
        assert_eq!(
            refused(&acquire(&mut f, task, (3, 4), "")).0,
            Code::InvalidArgument,
            "task {task} of the job's 4 groups"
        );
    }
    f.format = super::jobs::JOB_LIMITS_FORMAT - 1;
    granted(&acquire(&mut f, 4, (3, 4), ""));
    f.apply(pb::Command {
        kind: Some(command::Kind::ReleaseLease(pb::LeaseRelease {
            lease: Some(lease(4, 1)),
        })),
    });
    f.format = crate::command::FORMAT;
    granted(&acquire(&mut f, 1, (2, 4), ""));
    // A key of group 2 or 3 belongs to task 1, not task 0.
    let foreign = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| keys::key_group(k.as_bytes(), 4) >= 2)
        .unwrap();
    let before = staged_keys(&f);
    let r = stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("x", "ok"), put(&foreign, "no")],
    );
    assert_eq!(refused(&r).0, Code::InvalidArgument);
    assert_eq!(staged_keys(&f), before, "nothing of the batch staged");
    match commit(&mut f, lease(0, 1), 1, 1).kind {
        Some(command_response::Kind::Error(_)) => {}
        other => panic!("seq 1 was never staged: {other:?}"),
    }
    // Released, task 0's groups are free for task 1 to take over.
    f.apply(pb::Command {
        kind: Some(command::Kind::ReleaseLease(pb::LeaseRelease {
            lease: Some(lease(0, 1)),
        })),
    });
    assert_eq!(
        stale(&stage(&mut f, lease(0, 1), 1, 1, vec![put("x", "late")])),
        (1, 1)
    );
    assert_eq!(granted(&acquire(&mut f, 1, (0, 4), "")).generation, 2);
}

#[test]
fn a_lease_belongs_to_its_principal_and_sync_writes_carrying_it_are_fenced() {
    let mut f = Fixture::new();
    granted(&acquire(&mut f, 0, (0, 4), "alice"));
    let mut as_bob = lease(0, 1);
    as_bob.principal = "bob".into();
    assert_eq!(
        refused(&stage(&mut f, as_bob, 1, 1, vec![put("a", "1")])).0,
        Code::PermissionDenied
    );
    let write = |generation| pb::SyncWrite {
        job: "j".into(),
        ops: vec![pb::SyncOp {
            state: "s".into(),
            key: b"a".to_vec(),
            kind: Some(pb::sync_op::Kind::Put(pb::SyncPut {
                value: b"sync".to_vec(),
            })),
        }],
        lease: Some(pb::SyncLease {
            task: 0,
            generation,
        }),
        ..Default::default()
    };
    assert!(matches!(
        f.write(write(1)).kind,
        Some(command_response::Kind::Write(_))
    ));
    granted(&acquire(&mut f, 0, (0, 4), "alice"));
    assert_eq!(stale(&f.write(write(1))), (1, 2));
    assert_eq!(
        f.get(b"a").unwrap().version,
        1,
        "the fenced write changed nothing"
    );
}

fn create_stream(
    f: &mut Fixture,
    name: &str,
    partitions: u32,
    retention_bytes: u64,
) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::CreateStream(pb::StreamCreate {
            job: "j".into(),
            stream: name.into(),
            partitions,
            retention_bytes,
            retention_ms: 0,
        })),
    })
}

fn entries(values: &[&str]) -> Vec<pb::StreamEntry> {
    values
        .iter()
        .map(|v| pb::StreamEntry {
            key: Vec::new(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

pub(super) fn stream_records(f: &Fixture) -> Vec<(u64, String)> {
    let cf = rocks::cf(&f.db, crate::state_machine::meta::CF_STREAMS).unwrap();
    f.db.iterator_cf(cf, IteratorMode::Start)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            let r = pb::StoredRecord::decode(v.as_ref()).unwrap();
            (
                keys::offset_of_record(&k).unwrap(),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_commit_appends_its_outputs_at_the_next_offsets_and_a_refused_one_appends_nothing() {
    let mut f = Fixture::new();
    assert!(matches!(
        create_stream(&mut f, "out", 1, 0).kind,
        Some(command_response::Kind::StreamCreated(_))
    ));
    assert_eq!(
        refused(&create_stream(&mut f, "out", 1, 0)).0,
        Code::AlreadyExists
    );
    acquire(&mut f, 0, (0, 4), "");
    let commit_with = |f: &mut Fixture, epoch: u64, outputs: Vec<pb::PartitionEntries>| {
        f.apply(pb::Command {
            kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
                lease: Some(lease(0, 1)),
                epoch,
                last_seq: 0,
                input_offsets: Vec::new(),
                metadata: Vec::new(),
                outputs,
            })),
        })
    };
    let to = |stream: &str, partition: u32, values: &[&str]| pb::PartitionEntries {
        stream: stream.into(),
        partition,
        records: entries(values),
    };
    // Two outputs to one partition in one commit: consecutive, no overlap.
    commit_with(
        &mut f,
        1,
        vec![to("out", 0, &["a", "b"]), to("out", 0, &["c"])],
    );
    let r = commit_with(&mut f, 2, vec![to("out", 0, &["d"]), to("nope", 0, &["x"])]);
    assert_eq!(refused(&r).0, Code::NotFound);
    assert_eq!(
        refused(&commit_with(&mut f, 2, vec![to("out", 1, &["x"])])).0,
        Code::InvalidArgument
    );
    commit_with(&mut f, 2, vec![to("out", 0, &["d"])]);
    let got = stream_records(&f);
    assert_eq!(
        got,
        [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
            .map(|(o, v)| (o, v.to_string()))
            .to_vec()
    );
}

#[test]
fn appends_in_one_chunk_see_each_others_offsets_and_retention_trims_the_oldest() {
    let mut f = Fixture::new();
    create_stream(&mut f, "log", 1, 3);
    let append = |values: &[&str]| pb::Command {
        kind: Some(command::Kind::Append(pb::StreamAppend {
            principal: String::new(),
            job: "j".into(),
            stream: "log".into(),
            partition: 0,
            records: entries(values),
            producer_id: 0,
            producer_seq: 0,
        })),
    };
    let answers = f.apply_chunk(vec![append(&["a", "b"]), append(&["c", "d", "e"])]);
    let base = |r: &pb::CommandResponse| match &r.kind {
        Some(command_response::Kind::Appended(a)) => a.base_offset,
        other => panic!("{other:?}"),
    };
    assert_eq!((base(&answers[0]), base(&answers[1])), (0, 2));
    // One byte each, three kept: offsets 2, 3, 4.
    let got: Vec<u64> = stream_records(&f).into_iter().map(|(o, _)| o).collect();
    assert_eq!(got, [2, 3, 4]);
}

#[test]
fn a_command_list_applies_each_in_order_and_refuses_what_cannot_be_listed() {
    let mut f = Fixture::new();
    let stage = pb::Command {
        kind: Some(command::Kind::StageWrites(pb::StageOps {
            lease: Some(lease(0, 1)),
            epoch: 1,
            seq_from: 1,
            ops: vec![put("a", "listed")],
        })),
    };
    let acquire = pb::Command {
        kind: Some(command::Kind::AcquireLease(pb::LeaseAcquire {
            principal: String::new(),
            job: "j".into(),
            task: 0,
            key_group_start: 0,
            key_group_end: 4,
            input_partitions: Vec::new(),
        })),
    };
    let commit = pb::Command {
        kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
            lease: Some(lease(0, 1)),
            epoch: 1,
            last_seq: 1,
            ..Default::default()
        })),
    };
    let nested = pb::Command {
        kind: Some(command::Kind::Commands(pb::CommandList::default())),
    };
    let expire = pb::Command {
        kind: Some(command::Kind::ExpireSessions(pb::ExpireSessions {
            idle_ms: 1,
        })),
    };
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::Commands(pb::CommandList {
            commands: vec![acquire, stage, commit, nested, expire],
        })),
    });
    let Some(command_response::Kind::Batch(b)) = r.kind else {
        panic!("{r:?}");
    };
    assert_eq!(granted(&b.answers[0]).generation, 1);
    assert!(matches!(
        b.answers[1].kind,
        Some(command_response::Kind::StagedThrough(1))
    ));
    assert!(matches!(
        b.answers[2].kind,
        Some(command_response::Kind::EpochCommitted(_))
    ));
    assert_eq!(refused(&b.answers[3]).0, Code::InvalidArgument);
    assert_eq!(refused(&b.answers[4]).0, Code::InvalidArgument);
    assert_eq!(value(&f, "a").as_deref(), Some("listed"));
}

/// Task and stream records share the `meta` column family with the dedupe
/// sessions' time index, which a session expiry walks by prefix: a task
/// record under that prefix stopped every replica at the first sweep.
#[test]
fn a_session_sweep_walks_past_task_and_stream_records() {
    let mut f = Fixture::new();
    granted(&acquire(&mut f, 0, (0, 4), ""));
    create_stream(&mut f, "out", 2, 0);
    f.time_ms = 10_000_000;
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::ExpireSessions(pb::ExpireSessions {
            idle_ms: 1,
        })),
    });
    assert!(
        matches!(r.kind, Some(command_response::Kind::SessionsExpired(0))),
        "{r:?}"
    );
}

#[test]
fn a_job_s_tasks_are_listed_in_pages_of_bounded_bytes() {
    use crate::state_machine::read;
    let mut f = Fixture::new();
    for task in 0..4 {
        granted(&acquire(&mut f, task, (task, task + 1), ""));
    }
    let job = crate::state_machine::meta::load_job(&f.db, 0, "j")
        .unwrap()
        .unwrap();
    let page = |after, max_bytes| read::tasks(&f.db, Some(&job), 0, "j", after, max_bytes).unwrap();
    let (all, more) = page(None, usize::MAX);
    assert_eq!((all.len(), more), (4, false));
    // One byte a page: every page holds one task, in order, none twice.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (tasks, more) = page(after, 1);
        assert_eq!(tasks.len(), 1);
        seen.push(tasks[0].task);
        after = Some(tasks[0].task);
        if !more {
            break;
        }
    }
    assert_eq!(seen, [0, 1, 2, 3]);
    assert_eq!(page(Some(3), 1), (Vec::new(), false));
    assert_eq!(page(Some(u32::MAX), 1), (Vec::new(), false));
}
