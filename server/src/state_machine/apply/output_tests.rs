//! Unit tests of output records staged with an epoch's writes
//! (`StagedOp.emit`), through the apply path.

use prost::Message;
use rocksdb::IteratorMode;
use streamshield_proto::v1::{self as pb, command, command_response};
use tonic::Code;

use super::fixture::Fixture;
use super::task_tests::{acquire, commit, lease, put, refused, stage, staged_keys, value};
use crate::keys;
use crate::rocks;
use crate::state_machine::meta::CF_STREAMS;
use crate::state_machine::promotions;

pub(super) fn create_stream(f: &mut Fixture, name: &str, partitions: u32) {
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::CreateStream(pb::StreamCreate {
            job: "j".into(),
            stream: name.into(),
            partitions,
            retention_bytes: 0,
            retention_ms: 0,
        })),
    });
    assert!(
        matches!(r.kind, Some(command_response::Kind::StreamCreated(_))),
        "{r:?}"
    );
}

/// A fixture whose job has stream "out" of `partitions` and whose task 0
/// holds every key group at generation 1.
pub(super) fn task_with_stream(partitions: u32) -> Fixture {
    let mut f = Fixture::new();
    create_stream(&mut f, "out", partitions);
    acquire(&mut f, 0, (0, 4), "");
    f
}

pub(super) fn emit(stream: &str, partition: u32, value: &str) -> pb::StagedOp {
    pb::StagedOp {
        state: String::new(),
        key: Vec::new(),
        kind: Some(pb::staged_op::Kind::Emit(pb::StagedEmit {
            stream: stream.into(),
            partition,
            value: value.as_bytes().to_vec(),
        })),
    }
}

/// Every stored record: (stream id, partition, offset, value).
pub(super) fn records(f: &Fixture) -> Vec<(u32, u32, u64, String)> {
    let cf = rocks::cf(&f.db, CF_STREAMS).unwrap();
    f.db.iterator_cf(cf, IteratorMode::Start)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            let r = pb::StoredRecord::decode(v.as_ref()).unwrap();
            // `keys::record_key`: shard, job id, stream id, partition, offset.
            let word = |at: usize| u32::from_be_bytes(k[at..at + 4].try_into().unwrap());
            let (stream_id, partition) = (word(8), word(12));
            (
                stream_id,
                partition,
                keys::offset_of_record(&k).unwrap(),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect()
}

/// Where readers of partition `partition` of the job's first stream stop
/// now, if a promotion holds its records back.
fn held(f: &Fixture, partition: u32) -> Option<u64> {
    let promoting = promotions::load(&f.db).unwrap();
    let job_id = promoting.first().map_or(0, |j| j.record.job_id);
    promotions::held_from(&promoting, 0, job_id, 1, partition)
}

/// Task 0's (generation 1) commit of `epoch` through `last_seq`, carrying
/// one record for partition `partition` of "out" itself.
fn commit_carrying(epoch: u64, last_seq: u64, partition: u32, value: &str) -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
            lease: Some(lease(0, 1)),
            epoch,
            last_seq,
            input_offsets: Vec::new(),
            metadata: Vec::new(),
            outputs: vec![pb::PartitionEntries {
                stream: "out".into(),
                partition,
                records: vec![pb::StreamEntry {
                    key: Vec::new(),
                    value: value.as_bytes().to_vec(),
                }],
            }],
        })),
    }
}

/// Panics unless `r` committed an epoch to be promoted in steps.
pub(super) fn committed_in_steps(r: &pb::CommandResponse) {
    match &r.kind {
        Some(command_response::Kind::EpochCommitted(c)) => assert!(c.promoting, "{c:?}"),
        other => panic!("not committed: {other:?}"),
    }
}

/// The next step of task 0's (generation 1) promotion of `epoch`.
pub(super) fn promotion_step(f: &mut Fixture, epoch: u64) -> pb::PromotionStep {
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::PromoteEpoch(pb::EpochPromote {
            job: "j".into(),
            task: 0,
            generation: 1,
            epoch,
        })),
    });
    match r.kind {
        Some(command_response::Kind::PromotionStep(s)) => s,
        other => panic!("not a step: {other:?}"),
    }
}

fn staged_through(r: &pb::CommandResponse) -> u64 {
    match r.kind {
        Some(command_response::Kind::StagedThrough(n)) => n,
        ref other => panic!("not staged: {other:?}"),
    }
}

pub(super) fn committed(r: &pb::CommandResponse) {
    assert!(
        matches!(r.kind, Some(command_response::Kind::EpochCommitted(_))),
        "{r:?}"
    );
}

#[test]
fn staged_outputs_appear_at_the_commit_in_seq_order_after_earlier_appends() {
    let mut f = task_with_stream(2);
    // A producer outside the job appends first: the epoch's records follow.
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::Append(pb::StreamAppend {
            principal: String::new(),
            job: "j".into(),
            stream: "out".into(),
            partition: 0,
            producer_id: 0,
            producer_seq: 0,
            records: vec![pb::StreamEntry {
                key: Vec::new(),
                value: b"before".to_vec(),
            }],
        })),
    });
    assert!(matches!(r.kind, Some(command_response::Kind::Appended(_))));
    // Seqs 1..=3, then 4..=6 sent first (out of order), then 1..=3 again.
    let first = vec![emit("out", 0, "a"), put("k", "v"), emit("out", 1, "b")];
    let second = vec![
        emit("out", 0, "c"),
        emit("out", 0, "d"),
        emit("out", 1, "e"),
    ];
    assert_eq!(staged_through(&stage(&mut f, lease(0, 1), 1, 4, second)), 0);
    assert_eq!(
        staged_through(&stage(&mut f, lease(0, 1), 1, 1, first.clone())),
        6
    );
    assert_eq!(staged_through(&stage(&mut f, lease(0, 1), 1, 1, first)), 6);
    assert_eq!(
        records(&f).len(),
        1,
        "nothing is appended before the commit"
    );
    assert_eq!(value(&f, "k"), None);
    committed(&commit(&mut f, lease(0, 1), 1, 6));
    let got: Vec<_> = records(&f)
        .into_iter()
        .map(|(_, p, o, v)| (p, o, v))
        .collect();
    let want = [
        (0, 0, "before"),
        (0, 1, "a"),
        (0, 2, "c"),
        (0, 3, "d"),
        (1, 0, "b"),
        (1, 1, "e"),
    ]
    .map(|(p, o, v)| (p, o, v.to_string()))
    .to_vec();
    assert_eq!(
        got, want,
        "in seq order per partition, the re-sent batch once"
    );
    assert_eq!(value(&f, "k").as_deref(), Some("v"));
    assert_eq!(staged_keys(&f), 0);
}

#[test]
fn an_emit_to_a_missing_stream_or_partition_refuses_its_whole_batch() {
    let mut f = task_with_stream(2);
    let r = stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("k", "v"), emit("nope", 0, "x")],
    );
    assert_eq!(refused(&r).0, Code::NotFound);
    let r = stage(
        &mut f,
        lease(0, 1),
        1,
        1,
        vec![put("k", "v"), emit("out", 2, "x")],
    );
    assert_eq!(refused(&r).0, Code::InvalidArgument);
    assert_eq!(staged_keys(&f), 0, "nothing of a refused batch is staged");
    // The epoch has nothing staged: a commit of seq 1 finds it missing.
    assert_eq!(
        refused(&commit(&mut f, lease(0, 1), 1, 1)).0,
        Code::FailedPrecondition
    );
    assert!(records(&f).is_empty());
}

#[test]
fn an_epoch_with_staged_outputs_cannot_commit_outputs_of_its_own() {
    let mut f = task_with_stream(1);
    stage(&mut f, lease(0, 1), 1, 1, vec![emit("out", 0, "staged")]);
    let r = f.apply(commit_carrying(1, 1, 0, "inline"));
    assert_eq!(refused(&r).0, Code::InvalidArgument);
    assert!(records(&f).is_empty(), "a refused commit appends nothing");
    committed(&commit(&mut f, lease(0, 1), 1, 1));
    assert_eq!(records(&f), vec![(1, 0, 0, "staged".to_string())]);
}

#[test]
fn a_new_lease_drops_the_outputs_its_predecessor_staged() {
    let mut f = task_with_stream(1);
    stage(&mut f, lease(0, 1), 1, 1, vec![emit("out", 0, "zombie")]);
    acquire(&mut f, 0, (0, 4), "");
    // The old generation can neither stage nor commit any more.
    assert_eq!(
        refused(&stage(
            &mut f,
            lease(0, 1),
            1,
            2,
            vec![emit("out", 0, "z2")]
        ))
        .0,
        Code::FailedPrecondition
    );
    assert_eq!(
        refused(&commit(&mut f, lease(0, 1), 1, 1)).0,
        Code::FailedPrecondition
    );
    stage(&mut f, lease(0, 2), 1, 1, vec![emit("out", 0, "new")]);
    committed(&commit(&mut f, lease(0, 2), 1, 1));
    assert_eq!(records(&f), vec![(1, 0, 0, "new".to_string())]);
}

#[test]
fn outputs_of_an_epoch_promoted_in_steps_reach_their_partition_in_order() {
    let mut f = task_with_stream(1);
    // More records than one step moves (`STEP.writes`): 20,000 in 20 batches.
    let n = 20_000u64;
    for b in 0..20 {
        let ops = (0..1_000)
            .map(|i| emit("out", 0, &format!("{:05}", b * 1_000 + i)))
            .collect();
        stage(&mut f, lease(0, 1), 1, b * 1_000 + 1, ops);
    }
    let r = commit(&mut f, lease(0, 1), 1, n);
    committed_in_steps(&r);
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10, "the promotion does not end");
        let s = promotion_step(&mut f, 1);
        let got = records(&f);
        // Each step appends a prefix of the epoch's records, in order.
        for (i, (_, _, offset, v)) in got.iter().enumerate() {
            assert_eq!(
                (*offset, v.as_str()),
                (i as u64, format!("{i:05}").as_str())
            );
        }
        if s.done {
            assert_eq!(got.len() as u64, n);
            assert_eq!(held(&f, 0), None, "the last step lets the records go");
            break;
        }
        assert!((got.len() as u64) < n);
        // Readers stop where the promotion began appending.
        assert_eq!(held(&f, 0), Some(0), "after step {steps}");
    }
    assert!(steps >= 2, "promoted in {steps} step(s)");
    assert_eq!(staged_keys(&f), 0);
}

/// A commit that carries its outputs (`EpochCommit.outputs`) appends them
/// in its own apply; when its writes are promoted in steps, readers get
/// those records with the last step too. Entries of a format before
/// holds show them at once, as they did when they were written.
#[test]
fn outputs_carried_by_a_commit_promoted_in_steps_are_held_to_the_last_step() {
    for (format, holds) in [
        (crate::command::FORMAT, true),
        (super::promotion::HOLD_FORMAT - 1, false),
    ] {
        let mut f = task_with_stream(2);
        // One record before the epoch: readers keep seeing it.
        stage(&mut f, lease(0, 1), 1, 1, vec![emit("out", 1, "before")]);
        committed(&commit(&mut f, lease(0, 1), 1, 1));
        // More writes than one step moves (`STEP.writes`).
        for b in 0..20u64 {
            let ops = (0..1_000)
                .map(|i| put(&format!("k{}", b * 1_000 + i), "v"))
                .collect();
            stage(&mut f, lease(0, 1), 2, b * 1_000 + 1, ops);
        }
        f.format = format;
        let r = f.apply(commit_carrying(2, 20_000, 1, "carried"));
        committed_in_steps(&r);
        assert_eq!(records(&f).len(), 2, "both appended");
        assert_eq!(held(&f, 1), holds.then_some(1), "format {format}");
        assert_eq!(held(&f, 0), None, "a partition it did not append to");
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10, "the promotion does not end");
            let s = promotion_step(&mut f, 2);
            if s.done {
                break;
            }
            assert_eq!(held(&f, 1), holds.then_some(1), "format {format}");
        }
        assert_eq!(held(&f, 1), None);
    }
}

#[test]
fn a_job_has_at_most_max_streams_and_entries_from_before_apply_as_they_did() {
    let create = |f: &mut Fixture, name: &str| {
        f.apply(pb::Command {
            kind: Some(command::Kind::CreateStream(pb::StreamCreate {
                job: "j".into(),
                stream: name.into(),
                partitions: 1,
                retention_bytes: 0,
                retention_ms: 0,
            })),
        })
    };
    let mut f = Fixture::new();
    for i in 0..keys::MAX_STREAMS {
        create_stream(&mut f, &format!("s{i}"), 1);
    }
    let (code, _) = refused(&create(&mut f, "one-more"));
    assert_eq!(code, Code::ResourceExhausted);
    f.format = super::jobs::JOB_LIMITS_FORMAT - 1;
    assert!(matches!(
        create(&mut f, "one-more").kind,
        Some(command_response::Kind::StreamCreated(_))
    ));
}
