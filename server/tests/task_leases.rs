//! Task leases on a real 3-node cluster: a replaced (zombie) task can
//! make nothing visible, an uncommitted epoch stays invisible and is
//! dropped by the next lease, and bad task input gets a precise status
//! and changes nothing.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{
    pb, Client, ClientError, Consistency, Missing, TaskSessionConfig, TaskSpec,
};
use tonic::Code;

fn spec(job: &str, groups: std::ops::Range<u32>) -> TaskSpec {
    TaskSpec {
        job: job.into(),
        task: 0,
        key_groups: groups,
        input_partitions: vec![("input".into(), 0)],
    }
}

fn offset(o: u64) -> Vec<pb::InputOffset> {
    vec![pb::InputOffset {
        stream: "input".into(),
        partition: 0,
        offset: o,
    }]
}

async fn value(c: &Client, job: &str, key: &str) -> Option<String> {
    c.get(job, "counts", key, Consistency::Linearizable)
        .await
        .expect("read")
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

async fn task0(c: &Client, job: &str) -> pb::TaskInfo {
    let list = c
        .list_tasks(job, Consistency::Linearizable)
        .await
        .expect("list");
    list.tasks
        .into_iter()
        .find(|t| t.task == 0)
        .expect("task 0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_task_makes_nothing_visible_and_its_successor_resumes_from_its_last_commit() {
    let t = TestCluster::start(3, &[]).await;
    let admin = t.client();
    admin.create_job("fenced", 8).await.expect("create job");

    // Task A: epoch 1 committed, epoch 2 staged and not committed.
    let a_client = t.client();
    let (mut a, cp) = a_client
        .acquire(spec("fenced", 0..8), TaskSessionConfig::default())
        .await
        .expect("A acquires");
    assert!(cp.is_none(), "a new task has no checkpoint");
    assert_eq!(a.generation(), 1);
    for i in 0..20 {
        a.put("counts", format!("k{i}"), "epoch1").await.unwrap();
    }
    a.commit(offset(100), b"A1".to_vec())
        .await
        .expect("A commits epoch 1");
    for i in 0..20 {
        a.put("counts", format!("k{i}"), "epoch2").await.unwrap();
    }
    a.flush().await.unwrap();

    // Task B takes the task over: generation 2, A's last commit.
    let b_client = t.client();
    let (mut b, cp) = b_client
        .acquire(spec("fenced", 0..8), TaskSessionConfig::default())
        .await
        .expect("B acquires");
    assert_eq!(b.generation(), 2);
    let cp = cp.expect("A's checkpoint");
    assert_eq!((cp.epoch, cp.metadata.as_slice()), (1, &b"A1"[..]));
    assert_eq!(cp.input_offsets, offset(100));
    assert_eq!(b.epoch(), 2);

    // A goes on as if nothing happened: every write and commit refused.
    for i in 0..20 {
        a.put("counts", format!("k{i}"), "zombie").await.ok();
    }
    match a.commit(offset(200), b"A2".to_vec()).await {
        Err(ClientError::StaleLease {
            held: 1,
            current: 2,
        }) => {}
        other => panic!("the zombie's commit: {other:?}"),
    }
    let raw = admin
        .commit_epoch(pb::CommitEpochRequest {
            job: "fenced".into(),
            task: 0,
            generation: 1,
            epoch: 2,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            raw,
            Err(ClientError::StaleLease {
                held: 1,
                current: 2
            })
        ),
        "{raw:?}"
    );

    for i in 0..20 {
        assert_eq!(
            value(&admin, "fenced", &format!("k{i}")).await.as_deref(),
            Some("epoch1")
        );
    }
    // A sync table of the zombie: fenced the same way.
    let zombie_sync = a_client
        .write(
            streamshield_client::WriteBatch::new("fenced")
                .with_lease(0, 1)
                .put("counts", "k0", "zombie-sync"),
        )
        .await;
    assert!(
        matches!(
            zombie_sync,
            Err(ClientError::StaleLease {
                held: 1,
                current: 2
            })
        ),
        "{zombie_sync:?}"
    );
    // B's own epoch 2 commits, and B reads its own writes before that.
    b.put("counts", "k0", "B").await.unwrap();
    assert_eq!(
        b.get("counts", b"k0").await.unwrap().as_deref(),
        Some("B".as_bytes())
    );
    assert_eq!(
        value(&admin, "fenced", "k0").await.as_deref(),
        Some("epoch1")
    );
    b.commit(offset(150), b"B2".to_vec())
        .await
        .expect("B commits");
    assert_eq!(value(&admin, "fenced", "k0").await.as_deref(), Some("B"));
    assert_eq!(
        value(&admin, "fenced", "k1").await.as_deref(),
        Some("epoch1")
    );
    let info = task0(&admin, "fenced").await;
    assert_eq!((info.generation, info.checkpoint.unwrap().epoch), (2, 2));

    // A table written synchronously: visible at once, before any commit.
    let sync = TaskSessionConfig {
        sync_tables: vec!["marks".into()],
        ..Default::default()
    };
    let (mut c, _) = b_client
        .acquire(spec("fenced", 0..8), sync)
        .await
        .expect("C takes over from B");
    c.put("marks", "m", "now").await.expect("sync put");
    let kv = admin
        .get("fenced", "marks", "m", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(kv.unwrap().value, b"now");
    let async_write = pb::WriteRequest {
        job: "fenced".into(),
        mode: pb::WriteMode::Async as i32,
        ops: vec![pb::Op {
            state: "marks".into(),
            key: b"m".to_vec(),
            kind: Some(pb::op::Kind::Put(pb::Put {
                value: b"x".to_vec(),
            })),
        }],
        ..Default::default()
    };
    let leader = t.wait_for_leader(Duration::from_secs(30)).await;
    let mut raw = pb::state_client::StateClient::new(plain_channel(&t.addr(leader)).await);
    expect_code(
        "a Write in ASYNC mode",
        raw.write(async_write).await,
        Code::InvalidArgument,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_epoch_never_committed_stays_invisible_and_the_next_lease_drops_it() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("crashy", 4).await.expect("create job");
    {
        let (mut s, _) = c
            .acquire(spec("crashy", 0..4), TaskSessionConfig::default())
            .await
            .unwrap();
        s.put("counts", "a", "1").await.unwrap();
        s.commit(offset(1), Vec::new()).await.unwrap();
        for i in 0..50 {
            s.put("counts", format!("lost{i}"), "x").await.unwrap();
        }
        s.put("counts", "a", "2").await.unwrap();
        s.flush().await.unwrap();
        // Wait until the batch is staged: the task shows an open epoch.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while task0(&c, "crashy").await.open_epochs == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the batch was never staged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The task dies here: the session is gone without a commit.
    }
    assert_eq!(value(&c, "crashy", "a").await.as_deref(), Some("1"));
    let visible = c
        .scan_all("crashy", "counts", b"", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(visible.len(), 1, "only the committed key: {visible:?}");

    let (s, cp) = c
        .acquire(spec("crashy", 0..4), TaskSessionConfig::default())
        .await
        .unwrap();
    assert_eq!(cp.unwrap().epoch, 1);
    assert_eq!(s.generation(), 2);
    let info = task0(&c, "crashy").await;
    assert_eq!(
        info.open_epochs, 0,
        "the old generation's staged epoch is dropped"
    );
    // Committing epoch 2 of the new generation brings none of it back.
    let mut s = s;
    s.commit(offset(1), Vec::new()).await.unwrap();
    assert_eq!(value(&c, "crashy", "a").await.as_deref(), Some("1"));
    assert!(value(&c, "crashy", "lost0").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_task_input_gets_a_precise_status_and_changes_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("strict", 8).await.expect("create job");
    let acquire = |task: u32, start: u32, end: u32| pb::AcquireLeaseRequest {
        job: "strict".into(),
        task,
        key_group_start: start,
        key_group_end: end,
        ..Default::default()
    };
    let g = c
        .acquire_lease(acquire(0, 0, 4))
        .await
        .expect("task 0")
        .generation;
    let stage = |task: u32, generation: u64, epoch: u64, seq_from: u64, n: usize| {
        pb::StageWritesRequest {
            job: "strict".into(),
            task,
            generation,
            epoch,
            seq_from,
            ops: (0..n)
                .map(|i| pb::Op {
                    state: "s".into(),
                    // Keys of task 0's groups [0, 4).
                    key: owned_key(i, 8, 0..4),
                    kind: Some(pb::op::Kind::Put(pb::Put {
                        value: b"v".to_vec(),
                    })),
                })
                .collect(),
            ..Default::default()
        }
    };
    let before = task0(&c, "strict").await;

    assert_eq!(
        code(c.acquire_lease(acquire(1, 3, 6)).await),
        Code::FailedPrecondition,
        "overlapping"
    );
    assert_eq!(
        code(c.acquire_lease(acquire(1, 4, 9)).await),
        Code::InvalidArgument,
        "past the job"
    );
    assert_eq!(
        code(c.acquire_lease(acquire(1, 5, 5)).await),
        Code::InvalidArgument,
        "empty range"
    );
    let mut unknown_job = acquire(1, 4, 8);
    unknown_job.job = "nope".into();
    assert_eq!(
        missing(c.acquire_lease(unknown_job).await),
        Missing::Job { job: "nope".into() }
    );
    assert_eq!(
        missing(c.stage_writes(stage(7, 1, 1, 1, 1)).await),
        Missing::Task {
            job: "strict".into(),
            task: 7
        },
        "unknown task"
    );
    assert_eq!(
        code(c.stage_writes(stage(0, 0, 1, 1, 1)).await),
        Code::InvalidArgument,
        "generation 0"
    );
    assert_eq!(
        code(c.stage_writes(stage(0, g, 0, 1, 1)).await),
        Code::InvalidArgument,
        "epoch 0"
    );
    assert_eq!(
        code(c.stage_writes(stage(0, g, 1, 0, 1)).await),
        Code::InvalidArgument,
        "seq 0"
    );
    // The client folds OUT_OF_RANGE into InvalidArgument; the status on
    // the wire is the precise one.
    let leader = t.wait_for_leader(Duration::from_secs(30)).await;
    let mut raw = pb::tasks_client::TasksClient::new(plain_channel(&t.addr(leader)).await);
    expect_code(
        "a gap beyond the window",
        raw.stage_writes(stage(0, g, 1, 5 << 20, 1)).await,
        Code::OutOfRange,
    )
    .await;
    assert_eq!(
        code(c.stage_writes(stage(0, g, 1, u64::MAX, 2)).await),
        Code::InvalidArgument,
        "seqs overflow"
    );
    assert_eq!(
        code(c.stage_writes(stage(0, g, 1, 1, 10_001)).await),
        Code::InvalidArgument,
        "too many ops"
    );
    let mut huge = stage(0, g, 1, 1, 1);
    huge.ops[0].kind = Some(pb::op::Kind::Put(pb::Put {
        value: vec![0; (1 << 20) + 1],
    }));
    assert_eq!(
        code(c.stage_writes(huge).await),
        Code::InvalidArgument,
        "oversized value"
    );
    let mut foreign = stage(0, g, 1, 1, 1);
    foreign.ops[0].key = owned_key(0, 8, 4..8);
    assert_eq!(
        code(c.stage_writes(foreign).await),
        Code::InvalidArgument,
        "a key of another task"
    );
    let commit = |epoch: u64, last_seq: u64| pb::CommitEpochRequest {
        job: "strict".into(),
        task: 0,
        generation: g,
        epoch,
        last_seq,
        ..Default::default()
    };
    assert_eq!(
        code(c.commit_epoch(commit(u64::MAX, 0)).await),
        Code::InvalidArgument,
        "epoch u64::MAX"
    );
    assert_eq!(
        code(c.commit_epoch(commit(1, 3)).await),
        Code::FailedPrecondition,
        "nothing staged"
    );

    // Emitted records: a stream the job lacks, a partition past its
    // last, a table named besides the stream; and none in a sync write.
    c.create_stream("strict", "out", 2, 0)
        .await
        .expect("stream");
    let emit = |state: &str, stream: &str, partition: u32| {
        let mut r = stage(0, g, 1, 1, 2);
        r.ops[1] = pb::Op {
            state: state.into(),
            key: Vec::new(),
            kind: Some(pb::op::Kind::Emit(pb::Emit {
                stream: stream.into(),
                partition,
                value: b"r".to_vec(),
            })),
        };
        r
    };
    assert_eq!(
        missing(c.stage_writes(emit("", "nope", 0)).await),
        Missing::Stream {
            job: "strict".into(),
            stream: "nope".into()
        },
        "an emit to a missing stream"
    );
    assert_eq!(
        code(c.stage_writes(emit("", "out", u32::MAX)).await),
        Code::InvalidArgument,
        "an emit past the stream's partitions"
    );
    assert_eq!(
        code(c.stage_writes(emit("s", "out", 0)).await),
        Code::InvalidArgument,
        "an emit naming a table"
    );
    let mut state = pb::state_client::StateClient::new(plain_channel(&t.addr(leader)).await);
    let sync_emit = pb::WriteRequest {
        job: "strict".into(),
        ops: emit("", "out", 0).ops,
        ..Default::default()
    };
    expect_code(
        "an emit in a sync write",
        state.write(sync_emit).await,
        Code::InvalidArgument,
    )
    .await;
    assert_eq!(
        c.describe_stream("strict", "out")
            .await
            .expect("describe")
            .partition_info
            .iter()
            .map(|p| p.end_offset)
            .sum::<u64>(),
        0,
        "no record appended"
    );

    let after = task0(&c, "strict").await;
    assert_eq!(after, before, "the task record is unchanged");
    assert!(c
        .scan_all("strict", "s", b"", Consistency::Linearizable)
        .await
        .map_or(true, |kvs| kvs.is_empty()));

    // A good epoch; then one going backwards.
    c.stage_writes(stage(0, g, 2, 1, 3)).await.expect("stage");
    c.commit_epoch(commit(2, 3)).await.expect("commit");
    assert_eq!(
        code(c.commit_epoch(commit(1, 0)).await),
        Code::FailedPrecondition,
        "epoch backwards"
    );
    assert_eq!(
        code(c.stage_writes(stage(0, g, 2, 4, 1)).await),
        Code::FailedPrecondition,
        "a committed epoch"
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    r.unwrap_err().code()
}

/// What a call that must fail with NOT_FOUND says is missing.
fn missing<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Missing {
    match r.unwrap_err() {
        ClientError::NotFound(m) => m,
        e => panic!("expected NOT_FOUND, got {e:?}"),
    }
}

/// The `i`-th key (in a fixed order) whose group, of `groups`, is in `range`.
fn owned_key(i: usize, groups: u32, range: std::ops::Range<u32>) -> Vec<u8> {
    (0u64..)
        .map(|n| format!("key{n}").into_bytes())
        .filter(|k| range.contains(&group_of(k, groups)))
        .nth(i)
        .unwrap()
}

fn group_of(key: &[u8], groups: u32) -> u32 {
    u32::from(streamshield_server::keys::key_group(key, groups))
}
