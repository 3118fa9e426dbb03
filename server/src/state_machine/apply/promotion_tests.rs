//! Unit tests of large epochs promoted in steps after their commit, through
//! the apply path, on a job of 4 key groups.

use std::collections::BTreeMap;

use streamshield_proto::v1::{self as pb, command, command_response, error_detail};
use tonic::Code;

use super::fixture::Fixture;
use super::promotion::STEP;
use super::task_tests::{acquire, commit, granted, lease, put, refused, stage, staged_keys, value};
use crate::keys::{key_group, meta};
use crate::state_machine::meta::CF_META;

/// Values of 1 KiB: 6,000 writes stage ~6 MiB, three steps' worth.
const WRITES: u64 = 6_000;
const KEYS: u64 = 4_000;

fn big(key: &str, seq: u64) -> pb::StagedOp {
    let mut v = format!("{seq:08}-").into_bytes();
    v.resize(1024, b'x');
    put(key, std::str::from_utf8(&v).unwrap())
}

/// `KEYS` keys of key groups `[groups.0, groups.1)` of the 4.
fn keys_in(groups: (u32, u32)) -> Vec<String> {
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| (groups.0..groups.1).contains(&u32::from(key_group(k.as_bytes(), 4))))
        .take(KEYS as usize)
        .collect()
}

/// A key named `name…` of key groups `[groups.0, groups.1)`.
fn one_key(name: &str, groups: (u32, u32)) -> String {
    (0..)
        .map(|i| format!("{name}{i}"))
        .find(|k| (groups.0..groups.1).contains(&u32::from(key_group(k.as_bytes(), 4))))
        .unwrap()
}

/// Stages `WRITES` writes of keys in `groups` in batches of 100, every
/// key once, then again from the first (the second write of a key wins);
/// what each key must read after.
fn stage_big_epoch(
    f: &mut Fixture,
    l: &pb::LeaseRef,
    epoch: u64,
    groups: (u32, u32),
) -> BTreeMap<String, String> {
    let keys = keys_in(groups);
    let mut expect = BTreeMap::new();
    for batch in 0..WRITES / 100 {
        let ops: Vec<_> = (0..100)
            .map(|i| {
                let seq = batch * 100 + i + 1;
                big(&keys[((seq - 1) % KEYS) as usize], seq)
            })
            .collect();
        for o in &ops {
            let Some(pb::staged_op::Kind::Put(v)) = &o.kind else {
                unreachable!()
            };
            expect.insert(
                String::from_utf8(o.key.clone()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            );
        }
        let r = stage(f, l.clone(), epoch, batch * 100 + 1, ops);
        assert!(
            matches!(r.kind, Some(command_response::Kind::StagedThrough(_))),
            "{r:?}"
        );
    }
    expect
}

fn committed(r: &pb::CommandResponse) -> pb::EpochCommitted {
    match &r.kind {
        Some(command_response::Kind::EpochCommitted(c)) => *c,
        other => panic!("not committed: {other:?}"),
    }
}

fn promote_cmd(task: u32, generation: u64, epoch: u64) -> pb::Command {
    pb::Command {
        kind: Some(command::Kind::PromoteEpoch(pb::EpochPromote {
            job: "j".into(),
            task,
            generation,
            epoch,
        })),
    }
}

fn step(f: &mut Fixture, task: u32, generation: u64, epoch: u64) -> pb::PromotionStep {
    let r = f.apply(promote_cmd(task, generation, epoch));
    match r.kind {
        Some(command_response::Kind::PromotionStep(s)) => s,
        other => panic!("not a step: {other:?}"),
    }
}

/// Steps until done; how many it took.
fn promote_all(f: &mut Fixture, task: u32, generation: u64, epoch: u64) -> u64 {
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100, "the promotion does not end");
        if step(f, task, generation, epoch).done {
            return steps;
        }
    }
}

fn busy(r: &pb::CommandResponse) {
    match refused(r) {
        (
            Code::Unavailable,
            pb::ErrorDetail {
                kind: Some(error_detail::Kind::Overloaded(o)),
            },
        ) => assert!(o.retry_after_ms > 0),
        other => panic!("not busy: {other:?}"),
    }
}

fn sync_put(key: &str, v: &str) -> pb::SyncWrite {
    pb::SyncWrite {
        job: "j".into(),
        ops: vec![pb::SyncOp {
            state: "s".into(),
            key: key.as_bytes().to_vec(),
            kind: Some(pb::sync_op::Kind::Put(pb::SyncPut {
                value: v.as_bytes().to_vec(),
            })),
        }],
        ..Default::default()
    }
}

fn promotions_record(f: &Fixture) -> bool {
    let cf = crate::rocks::cf(&f.db, CF_META).unwrap();
    f.db.get_cf(cf, meta::promotions(0, 1)).unwrap().is_some()
}

#[test]
fn a_large_epoch_commits_at_once_and_is_promoted_in_bounded_steps() {
    let mut f = Fixture::new();
    let g = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
    let expect = stage_big_epoch(&mut f, &lease(1, g), 1, (0, 4));
    let c = committed(&commit(&mut f, lease(1, g), 1, WRITES));
    assert!(
        c.promoting,
        "{} bytes staged, above {}",
        WRITES * 1024,
        STEP.bytes
    );
    assert_eq!(c.promoted, 0, "the commit itself promotes nothing");
    assert!(promotions_record(&f));
    assert_eq!(value(&f, "k0"), None, "nothing is in data before a step");
    let steps = promote_all(&mut f, 1, g, 1);
    let bound = (WRITES * 1100).div_ceil(STEP.bytes as u64);
    assert!(
        (3..=bound + 1).contains(&steps),
        "{steps} steps for ~6 MiB of runs of at most {} bytes each",
        STEP.bytes
    );
    for (k, v) in &expect {
        assert_eq!(value(&f, k).as_ref(), Some(v), "{k}");
    }
    assert_eq!(staged_keys(&f), 0, "every run is gone");
    assert!(
        !promotions_record(&f),
        "the job's promotions record is gone"
    );
    // A duplicate step (a second leader's) changes nothing.
    let again = step(&mut f, 1, g, 1);
    assert_eq!((again.promoted, again.done), (0, true));
}

#[test]
fn an_epoch_of_many_small_writes_is_promoted_in_steps_bounded_by_writes() {
    let mut f = Fixture::new();
    let g = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
    let writes = STEP.writes + 3_616;
    for batch in 0..writes / 100 {
        let ops = (0..100)
            .map(|i| put(&format!("s{}", batch * 100 + i), "v"))
            .collect();
        stage(&mut f, lease(1, g), 1, batch * 100 + 1, ops);
    }
    let c = committed(&commit(&mut f, lease(1, g), 1, writes));
    assert!(
        c.promoting,
        "{writes} writes, under a MiB, above {} writes",
        STEP.writes
    );
    let first = step(&mut f, 1, g, 1);
    assert!(!first.done);
    assert!(
        (STEP.writes..STEP.writes + 100).contains(&first.promoted),
        "a step stops after the run that reaches the bound: {}",
        first.promoted
    );
    let second = step(&mut f, 1, g, 1);
    assert!(second.done);
    assert_eq!(first.promoted + second.promoted, writes);
    assert_eq!(value(&f, &format!("s{}", writes - 1)).as_deref(), Some("v"));
    assert_eq!(staged_keys(&f), 0);
}

#[test]
fn a_small_epoch_and_an_old_format_commit_promote_inline() {
    let mut f = Fixture::new();
    let g = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
    stage(
        &mut f,
        lease(1, g),
        1,
        1,
        vec![put("a", "1"), put("b", "2")],
    );
    let c = committed(&commit(&mut f, lease(1, g), 1, 2));
    assert_eq!((c.promoting, c.promoted), (false, 2));
    assert_eq!(value(&f, "a").as_deref(), Some("1"));
    // An entry written before format 4 promotes as it did then, whatever
    // its size: replicas replaying an old log must apply it alike.
    let expect = stage_big_epoch(&mut f, &lease(1, g), 2, (0, 4));
    f.format = super::promotion::FORMAT - 1;
    let c = committed(&commit(&mut f, lease(1, g), 2, WRITES));
    assert_eq!((c.promoting, c.promoted), (false, KEYS));
    for (k, v) in &expect {
        assert_eq!(value(&f, k).as_ref(), Some(v), "{k}");
    }
    assert_eq!(staged_keys(&f), 0);
}

#[test]
fn while_promoting_writes_commits_and_overlapping_leases_wait_and_a_new_lease_keeps_the_runs() {
    let mut f = Fixture::new();
    let g = granted(&acquire(&mut f, 1, (0, 2), "")).generation;
    let other = granted(&acquire(&mut f, 2, (2, 4), "")).generation;
    let expect = stage_big_epoch(&mut f, &lease(1, g), 1, (0, 2));
    let next = one_key("next", (0, 2));
    let theirs = one_key("other", (2, 4));
    // The next epoch is staged before the commit; a later one after it.
    stage(&mut f, lease(1, g), 2, 1, vec![put(&next, "2")]);
    let c = committed(&commit(&mut f, lease(1, g), 1, WRITES));
    assert!(c.promoting);
    assert!(step(&mut f, 1, g, 1).promoted > 0);

    // Keys of task 1's groups: a sync write would be overwritten by a
    // later step, so it is refused, with a pause to retry after.
    let mine = expect.keys().next().unwrap().clone();
    busy(&f.write(sync_put(&mine, "sync")));
    // Refusals for now are not recorded as a deduplicated write's answer:
    // its retry after the promotion applies.
    let deduplicated = pb::SyncWrite {
        client_id: f.register(""),
        seq: 1,
        acked_below: 1,
        ..sync_put(&mine, "retried")
    };
    busy(&f.write(deduplicated.clone()));
    busy(&commit(&mut f, lease(1, g), 2, 1));
    // Task 2's groups are not held up.
    stage(&mut f, lease(2, other), 1, 1, vec![put(&theirs, "o")]);
    assert_eq!(
        committed(&commit(&mut f, lease(2, other), 1, 1)).promoted,
        1
    );
    // Nobody takes task 1's groups over while they are promoted, even
    // after task 1 let them go.
    let r = f.apply(pb::Command {
        kind: Some(command::Kind::ReleaseLease(pb::LeaseRelease {
            lease: Some(lease(1, g)),
        })),
    });
    assert!(matches!(
        r.kind,
        Some(command_response::Kind::LeaseReleased(true))
    ));
    busy(&acquire(&mut f, 3, (1, 2), ""));
    // Task 1 itself comes back: the commit stands, and so do the runs
    // its promotion still needs.
    let g2 = granted(&acquire(&mut f, 1, (0, 2), ""));
    assert_eq!(g2.checkpoint.unwrap().epoch, 1);
    promote_all(&mut f, 1, g, 1);
    for (k, v) in &expect {
        assert_eq!(value(&f, k).as_ref(), Some(v), "{k}");
    }
    assert_eq!(
        value(&f, &next),
        None,
        "the old generation's epoch 2 was dropped"
    );
    assert_eq!(staged_keys(&f), 0);
    // Over: writes and the next commit go through again.
    let w = f.write(deduplicated);
    assert!(
        matches!(w.kind, Some(command_response::Kind::Write(ref w)) if w.succeeded),
        "the retry of a refused write applies: {w:?}"
    );
    let w = f.write(sync_put(&mine, "sync"));
    assert!(
        matches!(w.kind, Some(command_response::Kind::Write(ref w)) if w.succeeded),
        "{w:?}"
    );
    stage(&mut f, lease(1, g2.generation), 2, 1, vec![put(&next, "3")]);
    assert!(!committed(&commit(&mut f, lease(1, g2.generation), 2, 1)).promoting);
    assert_eq!(value(&f, &next).as_deref(), Some("3"));
}

#[test]
fn the_last_batch_the_commit_and_a_step_in_one_chunk_promote_what_the_chunk_staged() {
    let mut f = Fixture::new();
    let g = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
    let mut expect = stage_big_epoch(&mut f, &lease(1, g), 1, (0, 4));
    let keys = keys_in((0, 4));
    let last: Vec<_> = (0..50)
        .map(|i| big(&keys[i as usize], WRITES + 1 + i))
        .collect();
    for o in &last {
        let Some(pb::staged_op::Kind::Put(v)) = &o.kind else {
            unreachable!()
        };
        expect.insert(
            String::from_utf8(o.key.clone()).unwrap(),
            String::from_utf8(v.clone()).unwrap(),
        );
    }
    let promote = promote_cmd(1, g, 1);
    // Run keys the chunk wrote are only in its pending writes when the
    // steps read them.
    let mut chunk = vec![
        pb::Command {
            kind: Some(command::Kind::StageWrites(pb::StageOps {
                lease: Some(lease(1, g)),
                epoch: 1,
                seq_from: WRITES + 1,
                ops: last,
            })),
        },
        pb::Command {
            kind: Some(command::Kind::CommitEpoch(pb::EpochCommit {
                lease: Some(lease(1, g)),
                epoch: 1,
                last_seq: WRITES + 50,
                ..Default::default()
            })),
        },
    ];
    chunk.extend(std::iter::repeat_n(promote, 8));
    let answers = f.apply_chunk(chunk);
    assert!(committed(&answers[1]).promoting);
    let done = answers[2..]
        .iter()
        .filter(|a| matches!(&a.kind, Some(command_response::Kind::PromotionStep(s)) if s.done))
        .count();
    assert!(done >= 1, "eight steps promote ~6 MiB: {answers:?}");
    for (k, v) in &expect {
        assert_eq!(value(&f, k).as_ref(), Some(v), "{k}");
    }
    assert_eq!(staged_keys(&f), 0);
}
