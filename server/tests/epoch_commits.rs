//! Epoch commits on a real 3-node cluster: a commit names the seqs it is
//! missing and succeeds once they are re-sent, duplicates and retried
//! commits apply once, and a commit racing a `kill -9` of the leader is
//! visible whole (state and checkpoint) or not at all.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{
    key_group, pb, Client, ClientError, Consistency, TaskSessionConfig, TaskSpec,
};

fn put(key: &str, value: &str) -> pb::Op {
    pb::Op {
        state: "s".into(),
        key: key.as_bytes().to_vec(),
        kind: Some(pb::op::Kind::Put(pb::Put {
            value: value.as_bytes().to_vec(),
        })),
    }
}

async fn value(c: &Client, job: &str, key: &str) -> Option<String> {
    c.get(job, "s", key, Consistency::Linearizable)
        .await
        .expect("read")
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

/// Creates `job` with `key_groups` groups and leases task 0 over group
/// 0; its generation.
async fn job_with_task_0(c: &Client, job: &str, key_groups: u32) -> u64 {
    c.create_job(job, key_groups).await.expect("create job");
    c.acquire_lease(pb::AcquireLeaseRequest {
        job: job.into(),
        task: 0,
        key_group_start: 0,
        key_group_end: 1,
        ..Default::default()
    })
    .await
    .expect("lease")
    .generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gaps_are_named_and_filled_duplicates_and_retried_commits_apply_once() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let g = job_with_task_0(&c, "gaps", 1).await;
    let stage = |seq_from: u64, ops: Vec<pb::Op>| pb::StageWritesRequest {
        job: "gaps".into(),
        task: 0,
        generation: g,
        epoch: 1,
        seq_from,
        ops,
        ..Default::default()
    };
    let commit = pb::CommitEpochRequest {
        job: "gaps".into(),
        task: 0,
        generation: g,
        epoch: 1,
        last_seq: 5,
        input_offsets: vec![pb::InputOffset {
            stream: "in".into(),
            partition: 0,
            offset: 5,
        }],
        ..Default::default()
    };
    let r = c
        .stage_writes(stage(1, vec![put("a", "1"), put("b", "2")]))
        .await
        .unwrap();
    assert_eq!(r.staged_through, 2);
    let r = c.stage_writes(stage(5, vec![put("e", "5")])).await.unwrap();
    assert_eq!(r.staged_through, 2, "seq 5 is staged behind a gap");
    match c.commit_epoch(commit.clone()).await {
        Err(ClientError::MissingSeqs { epoch: 1, missing }) => assert_eq!(missing, vec![(3, 4)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&c, "gaps", "a").await, None);
    // The re-send overlaps what is staged: seq 2 again, with another value,
    // is a duplicate and ignored.
    let r = c
        .stage_writes(stage(
            2,
            vec![put("b", "dup"), put("c", "3"), put("d", "4")],
        ))
        .await
        .unwrap();
    assert_eq!(r.staged_through, 5);
    let first = c.commit_epoch(commit.clone()).await.expect("commit");
    assert!(!first.already_committed);
    let retry = c
        .commit_epoch(commit.clone())
        .await
        .expect("retried commit");
    assert!(retry.already_committed);
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")] {
        let kv = c
            .get("gaps", "s", k, Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((kv.value.as_slice(), kv.version), (v.as_bytes(), 1), "{k}");
    }
    // A duplicate batch of a committed epoch is refused, and changes nothing.
    assert!(c
        .stage_writes(stage(1, vec![put("a", "late")]))
        .await
        .is_err());
    assert_eq!(value(&c, "gaps", "a").await.as_deref(), Some("1"));
}

/// Each round commits an epoch that sets every key to the round's number
/// and the input offset to it, and kills the leader while the commit is
/// under way. Afterwards the keys and the checkpoint must agree: all at
/// the new round, or all at the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_racing_a_leader_kill_is_visible_whole_or_not_at_all() {
    let mut t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("atomic", 8).await.expect("create job");
    const KEYS: usize = 200;
    let spec = TaskSpec {
        job: "atomic".into(),
        task: 0,
        key_groups: 0..8,
        input_partitions: vec![("in".into(), 0)],
    };
    let mut committed_round = 0u64;
    for round in 1..=4u64 {
        let (mut s, cp) = c
            .acquire(spec.clone(), TaskSessionConfig::default())
            .await
            .expect("acquire");
        let resumed = cp.map_or(0, |cp| cp.input_offsets[0].offset);
        assert_eq!(resumed, committed_round, "round {round}: the checkpoint");
        for k in 0..KEYS {
            s.put("s", format!("k{k}"), round.to_string())
                .await
                .unwrap();
        }
        s.flush().await.unwrap();
        let offsets = vec![pb::InputOffset {
            stream: "in".into(),
            partition: 0,
            offset: round,
        }];
        let leader = t.wait_for_leader(Duration::from_secs(60)).await;
        let commit = tokio::spawn(async move { s.commit(offsets, Vec::new()).await });
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        t.cluster.kill(leader).expect("kill the leader");
        let outcome = commit.await.unwrap();
        t.cluster.start_node(leader).expect("restart");
        t.wait_for_leader(Duration::from_secs(60)).await;

        let list = c
            .list_tasks("atomic", Consistency::Linearizable)
            .await
            .unwrap();
        let at = list.tasks[0]
            .checkpoint
            .as_ref()
            .map_or(0, |cp| cp.input_offsets[0].offset);
        let all = c
            .scan_all("atomic", "s", b"k", Consistency::Linearizable)
            .await
            .unwrap();
        let values: std::collections::BTreeSet<_> = all.iter().map(|kv| kv.value.clone()).collect();
        if at == round {
            assert_eq!(all.len(), KEYS, "round {round}: committed, every key");
            assert_eq!(values.len(), 1, "round {round}: one round's values only");
            assert_eq!(values.first().unwrap(), round.to_string().as_bytes());
        } else {
            assert_eq!(
                at, committed_round,
                "round {round}: the checkpoint moved elsewhere"
            );
            assert!(
                outcome.is_err(),
                "round {round}: an acknowledged commit was lost"
            );
            if committed_round == 0 {
                assert!(
                    all.is_empty(),
                    "round {round}: nothing committed yet, nothing visible"
                );
            } else {
                assert_eq!(values.len(), 1);
                assert_eq!(
                    values.first().unwrap(),
                    committed_round.to_string().as_bytes()
                );
            }
        }
        if outcome.is_ok() {
            assert_eq!(at, round, "round {round}: acknowledged, so committed");
        }
        committed_round = at;
    }
}

/// A commit may carry the epoch's last writes: the node stages them in
/// the commit's own entry, just before the commit. Without that, this
/// commit names seqs 3 and 4 as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_carries_its_last_writes_and_a_refused_tail_commits_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let g = job_with_task_0(&c, "tail", 2).await;
    let ours = |n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| key_group(k.as_bytes(), 2) == 0)
            .take(n)
            .collect()
    };
    let keys = ours(4);
    c.stage_writes(pb::StageWritesRequest {
        job: "tail".into(),
        task: 0,
        generation: g,
        epoch: 1,
        seq_from: 1,
        ops: vec![put(&keys[0], "1"), put(&keys[1], "2")],
        ..Default::default()
    })
    .await
    .unwrap();
    let commit = |epoch: u64, last_seq: u64, ops: Vec<pb::Op>| pb::CommitEpochRequest {
        job: "tail".into(),
        task: 0,
        generation: g,
        epoch,
        last_seq,
        input_offsets: vec![pb::InputOffset {
            stream: "in".into(),
            partition: 0,
            offset: epoch * 10,
        }],
        ops,
        ..Default::default()
    };
    let with_tail = commit(1, 4, vec![put(&keys[2], "3"), put(&keys[3], "4")]);
    let first = c.commit_epoch(with_tail.clone()).await.expect("commit");
    assert!(!first.already_committed);
    for (k, v) in keys.iter().zip(["1", "2", "3", "4"]) {
        assert_eq!(value(&c, "tail", k).await.as_deref(), Some(v), "{k}");
    }
    // Retried whole (its answer lost): the tail of a committed epoch is
    // refused and the commit answers as already done.
    let retry = c.commit_epoch(with_tail).await.expect("retried commit");
    assert!(retry.already_committed);

    // Bad tails change nothing: more ops than seqs, more than a batch may
    // hold.
    for (what, bad) in [
        (
            "5 ops ending at seq 4",
            commit(
                2,
                4,
                (0..5).map(|i| put(&keys[0], &i.to_string())).collect(),
            ),
        ),
        (
            "10,001 ops",
            commit(2, 10_001, (0..10_001).map(|_| put(&keys[0], "x")).collect()),
        ),
    ] {
        match c.commit_epoch(bad).await {
            Err(ClientError::InvalidArgument(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // A tail the node refuses to stage (a key of another task's group)
    // leaves the commit missing its seqs: nothing of epoch 2 is visible,
    // the checkpoint stays at epoch 1.
    let theirs = (0..)
        .map(|i| format!("x{i}"))
        .find(|k| key_group(k.as_bytes(), 2) == 1)
        .unwrap();
    match c
        .commit_epoch(commit(2, 2, vec![put(&keys[0], "new"), put(&theirs, "no")]))
        .await
    {
        Err(ClientError::MissingSeqs { epoch: 2, missing }) => assert_eq!(missing, vec![(1, 2)]),
        other => panic!("a refused tail: {other:?}"),
    }
    assert_eq!(value(&c, "tail", &keys[0]).await.as_deref(), Some("1"));
    let task = c
        .list_tasks("tail", Consistency::Linearizable)
        .await
        .unwrap()
        .tasks
        .into_iter()
        .find(|t| t.task == 0)
        .unwrap();
    let cp = task.checkpoint.expect("a checkpoint");
    assert_eq!((cp.epoch, cp.input_offsets[0].offset), (1, 10));
}
