//! Unit tests of a stream's deletion (`StreamDelete`) through the apply
//! path.

use rocksdb::IteratorMode;
use streamshield_proto::v1::{self as pb, command, command_response};
use tonic::Code;

use super::fixture::Fixture;
use super::output_tests::{
    committed, committed_in_steps, emit, promotion_step, records, task_with_stream,
};
use super::task_tests::{commit, lease, put, refused, stage, value};
use crate::keys::meta;
use crate::rocks;
use crate::state_machine::meta::{load_job, CF_META};

fn delete(f: &mut Fixture, stream: &str) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::DeleteStream(pb::StreamDelete {
            job: "j".into(),
            stream: stream.into(),
        })),
    })
}

fn deleted(r: &pb::CommandResponse) -> u32 {
    match r.kind {
        Some(command_response::Kind::StreamDeleted(id)) => id,
        ref other => panic!("not deleted: {other:?}"),
    }
}

fn created_id(f: &mut Fixture, name: &str) -> u32 {
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::CreateStream(pb::StreamCreate {
            job: "j".into(),
            stream: name.into(),
            partitions: 2,
            retention_bytes: 0,
            retention_ms: 0,
        })),
    });
    match r.kind {
        Some(command_response::Kind::StreamCreated(s)) => s.stream_id,
        other => panic!("not created: {other:?}"),
    }
}

fn append(f: &mut Fixture, stream: &str, value: &str, producer_seq: u64) -> pb::CommandResponse {
    f.apply(pb::Command {
        kind: Some(command::Kind::Append(pb::StreamAppend {
            principal: String::new(),
            job: "j".into(),
            stream: stream.into(),
            partition: 1,
            records: vec![pb::StreamEntry {
                key: Vec::new(),
                value: value.as_bytes().to_vec(),
            }],
            producer_id: 7,
            producer_seq,
        })),
    })
}

/// Meta records of stream `id` of the fixture's job: partitions, producers.
fn meta_records_of(f: &Fixture, id: u32) -> usize {
    let job_id = load_job(&f.db, 0, "j").unwrap().unwrap().job_id;
    let prefixes = meta::stream_record_prefixes(0, job_id, id);
    let cf = rocks::cf(&f.db, CF_META).unwrap();
    f.db.iterator_cf(cf, IteratorMode::Start)
        .filter(|kv| {
            let (k, _) = kv.as_ref().unwrap();
            prefixes.iter().any(|p| k.starts_with(p))
        })
        .count()
}

#[test]
fn a_deleted_stream_leaves_nothing_and_its_id_is_never_used_again() {
    let mut f = Fixture::new();
    let a = created_id(&mut f, "a");
    let b = created_id(&mut f, "b");
    append(&mut f, "a", "a0", 1);
    append(&mut f, "b", "b0", 1);
    assert_eq!(
        meta_records_of(&f, b),
        2,
        "a partition's bounds, a producer"
    );

    assert_eq!(deleted(&delete(&mut f, "b")), b);
    assert_eq!(meta_records_of(&f, b), 0);
    let left: Vec<u32> = records(&f).iter().map(|r| r.0).collect();
    assert_eq!(left, [a], "only stream a's record is left");
    assert_eq!(refused(&delete(&mut f, "b")).0, Code::NotFound);
    assert_eq!(refused(&append(&mut f, "b", "x", 2)).0, Code::NotFound);

    // The highest id was deleted: the next stream does not take it, and
    // "b" made again is a new stream whose producer starts afresh.
    let c = created_id(&mut f, "c");
    assert!(c > b, "id {c} after deleted {b}");
    let b2 = created_id(&mut f, "b");
    assert!(b2 > c);
    match append(&mut f, "b", "new b0", 1).kind {
        Some(command_response::Kind::Appended(x)) => {
            assert_eq!((x.base_offset, x.duplicate), (0, false))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(records(&f).len(), 2);
}

#[test]
fn outputs_staged_for_a_deleted_stream_are_dropped_at_the_commit() {
    let mut f = task_with_stream(1);
    stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("k", "1"), emit("out", 0, "for the old stream")],
    );
    let old = deleted(&delete(&mut f, "out"));
    // Made again: a new stream, which the staged output does not reach.
    let new = created_id(&mut f, "out");
    assert_ne!(old, new);
    committed(&commit(&mut f, lease(0, 1), 1, 2));
    assert_eq!(value(&f, "k").as_deref(), Some("1"), "the writes commit");
    assert!(records(&f).is_empty(), "{:?}", records(&f));
    // A stream id that nobody deleted and that is missing is still damage.
    let job_id = load_job(&f.db, 0, "j").unwrap().unwrap().job_id;
    assert!(f
        .db
        .get_cf(
            rocks::cf(&f.db, CF_META).unwrap(),
            meta::deleted_stream(0, job_id, old)
        )
        .unwrap()
        .is_some());
}

#[test]
fn outputs_of_an_epoch_promoted_in_steps_are_dropped_with_their_stream() {
    let mut f = task_with_stream(1);
    // More records than one step moves, so some remain after the commit.
    for b in 0..20u64 {
        let ops = (0..1_000)
            .map(|i| emit("out", 0, &format!("{b}-{i}")))
            .collect();
        stage(&mut f, lease(0, 1), 1, b * 1_000 + 1, ops);
    }
    committed_in_steps(&commit(&mut f, lease(0, 1), 1, 20_000));
    let first_step = promotion_step(&mut f, 1);
    assert!(!first_step.done);
    assert!(!records(&f).is_empty());
    deleted(&delete(&mut f, "out"));
    assert!(records(&f).is_empty());
    let mut steps = 0;
    while !promotion_step(&mut f, 1).done {
        steps += 1;
        assert!(steps < 10, "the promotion does not end");
    }
    assert!(records(&f).is_empty(), "nothing reached the deleted stream");
}

#[test]
fn a_read_pinned_to_a_deleted_stream_finds_it_gone_after_its_name_is_reused() {
    use crate::state_machine::read::{read_records, RecordRange};
    let mut f = Fixture::new();
    let old = created_id(&mut f, "s");
    append(&mut f, "s", "old", 1);
    let job = load_job(&f.db, 0, "j").unwrap().unwrap();
    deleted(&delete(&mut f, "s"));
    created_id(&mut f, "s");
    append(&mut f, "s", "new", 1);
    let read = |pinned| {
        let range = RecordRange {
            stream: "s",
            partition: 1,
            from_offset: 0,
            max_records: 10,
            max_bytes: 1 << 20,
            pinned,
        };
        read_records(&f.db, Some(&job), 0, "j", range, &[])
    };
    let (records, _) = read(None).expect("the new stream by name");
    assert_eq!(records[0].value, b"new");
    let gone = read(Some((job.job_id, old))).unwrap_err();
    assert!(
        matches!(gone, crate::error::ServiceError::StreamNotFound { .. }),
        "{gone:?}"
    );
}
