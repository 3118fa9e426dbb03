//! Unit tests of a job's deletion (`JobDelete`) through the apply path.

use rocksdb::IteratorMode;
use streamshield_proto::v1::{self as pb, command, command_response};
use tonic::Code;

use super::fixture::Fixture;
use super::output_tests::{committed, create_stream, emit, records};
use super::task_tests::{
    acquire, commit, granted, lease, put, refused, stage, staged_keys, stale, value,
};
use crate::keys::{self, meta};
use crate::rocks;
use crate::state_machine::meta::{load_job, ALL_CFS, CF_META};

fn delete(f: &mut Fixture, force: bool) -> pb::CommandResponse {
    f.apply(delete_cmd(force))
}

fn delete_cmd(force: bool) -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::DeleteJob(pb::JobDelete {
            job: "j".into(),
            force,
        })),
    }
}

fn create_cmd() -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::CreateJob(pb::CreateJob {
            job: "j".into(),
            key_groups: 4,
            tables: Vec::new(),
        })),
    }
}

fn tables(f: &Fixture) -> usize {
    load_job(&f.db, 0, "j")
        .unwrap()
        .expect("job j")
        .states
        .len()
}

fn job_id(f: &Fixture) -> u32 {
    load_job(&f.db, 0, "j").unwrap().expect("job j").job_id
}

/// Keys of job `id` in every column family: its data, staged writes and
/// stream records, and its records in `meta` (the job's own included).
fn keys_of(f: &Fixture, id: u32, name: &str) -> usize {
    let scoped = keys::job_prefix(0, id);
    let mut owned = meta::job_record_prefixes(0, id);
    owned.push(meta::job(0, name));
    let mut n = 0;
    for cf in ALL_CFS {
        let handle = rocks::cf(&f.db, cf).unwrap();
        for kv in f.db.iterator_cf(handle, IteratorMode::Start) {
            let (k, _) = kv.unwrap();
            let mine = if *cf == CF_META {
                owned.iter().any(|p| k.starts_with(p))
            } else {
                k.starts_with(&scoped)
            };
            n += usize::from(mine);
        }
    }
    n
}

/// The fixture's job with a committed key "a", a staged uncommitted
/// write of task 0 (generation 1), and stream "out" with one committed
/// record.
fn job_with_everything() -> Fixture {
    let mut f = Fixture::new();
    create_stream(&mut f, "out", 2);
    granted(&acquire(&mut f, 0, (0, 4), ""));
    stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("a", "1"), emit("out", 1, "r1")],
    );
    committed(&commit(&mut f, lease(0, 1), 1, 2));
    stage(&mut f, lease(0, 1), 2, 1, vec![put("a", "uncommitted")]);
    f
}

#[test]
fn a_job_whose_task_holds_a_lease_is_deleted_only_with_force() {
    let mut f = job_with_everything();
    let id = job_id(&f);
    let before = keys_of(&f, id, "j");
    let (code, _) = refused(&delete(&mut f, false));
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(keys_of(&f, id, "j"), before, "a refusal changes nothing");
    assert_eq!(value(&f, "a").as_deref(), Some("1"));

    // Released, the job goes without force.
    let released = f.apply(pb::Command {
        kind: Some(command::Kind::ReleaseLease(pb::LeaseRelease {
            lease: Some(lease(0, 1)),
        })),
    });
    assert!(
        matches!(
            released.kind,
            Some(command_response::Kind::LeaseReleased(true))
        ),
        "{released:?}"
    );
    match delete(&mut f, false).kind {
        Some(command_response::Kind::JobDeleted(d)) => {
            assert_eq!((d.job_id, d.leased_tasks), (id, vec![]))
        }
        other => panic!("not deleted: {other:?}"),
    }
}

#[test]
fn a_deleted_job_leaves_nothing_under_its_id_and_its_name_starts_afresh() {
    let mut f = job_with_everything();
    let id = job_id(&f);
    assert!(
        keys_of(&f, id, "j") > 4,
        "data, staged, record, task, stream"
    );
    assert_eq!(staged_keys(&f), 1);
    assert_eq!(records(&f).len(), 1);

    match delete(&mut f, true).kind {
        Some(command_response::Kind::JobDeleted(d)) => {
            assert_eq!((d.job_id, d.leased_tasks), (id, vec![0]))
        }
        other => panic!("not deleted: {other:?}"),
    }
    assert_eq!(keys_of(&f, id, "j"), 0);
    assert_eq!((staged_keys(&f), records(&f).len()), (0, 0));
    assert!(load_job(&f.db, 0, "j").unwrap().is_none());
    let (code, _) = refused(&delete(&mut f, true));
    assert_eq!(code, Code::NotFound, "deleted once");
    let (code, _) = refused(&stage(&mut f, lease(0, 1), 2, 2, vec![put("a", "z")]));
    assert_eq!(code, Code::NotFound, "the zombie's job is gone");

    // The same name again: a new id, nothing of the old job in it.
    f.apply(create_cmd());
    let new_id = job_id(&f);
    assert!(new_id > id, "ids are never handed out again");
    assert_eq!(tables(&f), 0, "not even the old job's tables");
    create_stream(&mut f, "out", 2);
    assert!(records(&f).is_empty());
    let g = granted(&acquire(&mut f, 0, (0, 4), ""));
    assert_eq!(g.generation, 2, "above the deleted job's generation 1");
    assert!(g.checkpoint.is_none(), "no checkpoint carried over");
    // The deleted job's task still running: every write and commit of
    // its generation is stale in the new job, and none is visible.
    assert_eq!(
        stale(&stage(&mut f, lease(0, 1), 2, 2, vec![put("a", "z")])),
        (1, 2)
    );
    assert_eq!(stale(&commit(&mut f, lease(0, 1), 2, 2)), (1, 2));
    assert_eq!(tables(&f), 0, "the zombie made nothing");
    stage(&mut f, lease(0, 2), 1, 1, vec![put("a", "new")]);
    committed(&commit(&mut f, lease(0, 2), 1, 1));
    assert_eq!(value(&f, "a").as_deref(), Some("new"));
}

#[test]
fn generations_stay_above_every_earlier_job_of_the_name() {
    let mut f = Fixture::new();
    // Task 3 reaches generation 3 in the first job; task 0 never leases.
    for _ in 0..3 {
        granted(&acquire(&mut f, 3, (3, 4), ""));
    }
    delete(&mut f, true);
    f.apply(create_cmd());
    assert_eq!(granted(&acquire(&mut f, 0, (0, 1), "")).generation, 4);
    // Deleted again before task 3 of the second job leased: the tombstone
    // keeps the first job's 3 as well as the second's 4.
    delete(&mut f, true);
    f.apply(create_cmd());
    assert_eq!(granted(&acquire(&mut f, 3, (3, 4), "")).generation, 5);
}

#[test]
fn a_deletion_hides_what_earlier_entries_of_its_chunk_wrote() {
    let mut f = Fixture::new();
    granted(&acquire(&mut f, 0, (0, 4), ""));
    let write = pb::Command {
        kind: Some(command::Kind::Write(pb::SyncWrite {
            job: "j".into(),
            ops: vec![pb::SyncOp {
                state: "s".into(),
                key: b"a".to_vec(),
                kind: Some(pb::sync_op::Kind::Put(pb::SyncPut {
                    value: b"old".to_vec(),
                })),
            }],
            ..Default::default()
        })),
    };
    let answers = f.apply_chunk(vec![write, delete_cmd(true), create_cmd()]);
    assert!(
        matches!(answers[1].kind, Some(command_response::Kind::JobDeleted(_))),
        "{answers:?}"
    );
    assert_eq!(tables(&f), 0, "the write before the deletion is gone");
    assert_eq!(keys_of(&f, job_id(&f) - 1, "none"), 0);
}

#[test]
fn deleting_a_job_that_does_not_exist_is_not_found() {
    let mut f = Fixture::new();
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::DeleteJob(pb::JobDelete {
            job: "nope".into(),
            force: true,
        })),
    });
    assert_eq!(refused(&r).0, Code::NotFound);
    assert!(load_job(&f.db, 0, "j").unwrap().is_some());
}
