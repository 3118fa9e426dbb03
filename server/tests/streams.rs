//! Streams on a real 3-node cluster: offsets assigned in order at append
//! or at an epoch commit, idempotent producers, committed records only,
//! subscribers that see each committed record once across a leader kill,
//! retention by size and by offset, and precise refusals.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{pb, Client, ClientError, Producer, TaskSessionConfig, TaskSpec};
use tonic::Code;

fn record(value: &str) -> pb::Record {
    pb::Record {
        key: Vec::new(),
        value: value.as_bytes().to_vec(),
    }
}

fn values(records: &[pb::RecordAt]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

/// Follows a partition from offset 0 until `n` records came, reconnecting
/// (from the next offset) whenever its node goes away.
async fn collect(c: Client, job: &str, stream: &str, n: usize) -> Vec<pb::RecordAt> {
    let mut got: Vec<pb::RecordAt> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} records came",
            got.len()
        );
        let next = got.last().map_or(0, |r| r.offset + 1);
        let Ok(mut sub) = c.subscribe(job, stream, 0, next).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Ok(Some(page)) = sub.message().await {
            got.extend(page.records);
            if got.len() >= n {
                break;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_get_offsets_in_order_and_a_producer_retry_appends_nothing_twice() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("events", 4).await.expect("job");
    let info = c
        .create_stream("events", "clicks", 2, 0)
        .await
        .expect("stream");
    assert_eq!(info.partition_info.len(), 2);
    let p = |seq| Some(Producer { id: 77, seq });
    let a = c
        .append("events", "clicks", 1, vec![record("a"), record("b")], p(1))
        .await
        .unwrap();
    assert_eq!((a.base_offset, a.duplicate), (0, false));
    let retry = c
        .append("events", "clicks", 1, vec![record("a"), record("b")], p(1))
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (0, true));
    let b = c
        .append("events", "clicks", 1, vec![record("c")], p(2))
        .await
        .unwrap();
    assert_eq!(b.base_offset, 2);
    let old = c
        .append("events", "clicks", 1, vec![record("x")], p(1))
        .await;
    assert!(
        matches!(old, Err(ClientError::FailedPrecondition(_))),
        "{old:?}"
    );
    c.append("events", "clicks", 1, vec![record("d")], None)
        .await
        .unwrap();

    let r = c.read_stream("events", "clicks", 1, 0, 0).await.unwrap();
    assert_eq!(values(&r.records), ["a", "b", "c", "d"]);
    assert_eq!(
        r.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!((r.next_offset, r.end_offset), (4, 4));
    let r = c.read_stream("events", "clicks", 1, 2, 1).await.unwrap();
    assert_eq!(
        (values(&r.records), r.next_offset),
        (vec!["c".to_string()], 3)
    );
    let empty = c.read_stream("events", "clicks", 0, 0, 0).await.unwrap();
    assert!(empty.records.is_empty());

    // Bad input: each its status, nothing appended.
    let code = |r: Result<pb::AppendResponse, ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(c.append("events", "nope", 0, vec![record("x")], None).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.append("events", "clicks", 2, vec![record("x")], None)
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.append("events", "clicks", 0, vec![], None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_stream("events", "clicks", 2, 0)
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        c.create_stream("events", "none", 0, 0)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.read_stream("events", "nope", 0, 0, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let d = c.describe_stream("events", "clicks").await.unwrap();
    assert_eq!(
        (
            d.partition_info[0].end_offset,
            d.partition_info[1].end_offset
        ),
        (0, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_the_newest_records_within_its_bytes_and_trim_drops_below_an_offset() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("kept", 4).await.expect("job");
    c.create_stream("kept", "log", 1, 100)
        .await
        .expect("stream");
    for i in 0..30 {
        c.append("kept", "log", 0, vec![record(&format!("v{i:09}"))], None)
            .await
            .unwrap();
    }
    // 10 bytes each, at most 100 kept: the newest ten.
    let d = c.describe_stream("kept", "log").await.unwrap();
    let p = &d.partition_info[0];
    assert_eq!((p.start_offset, p.end_offset, p.bytes), (20, 30, 100));
    let r = c.read_stream("kept", "log", 0, 0, 0).await.unwrap();
    assert_eq!(
        r.records.first().unwrap().offset,
        20,
        "a read below the start begins at it"
    );
    assert_eq!(r.records.len(), 10);
    let trimmed = c.trim_stream("kept", "log", 0, 25).await.unwrap();
    assert_eq!(trimmed.start_offset, 25);
    let r = c.read_stream("kept", "log", 0, 0, 0).await.unwrap();
    assert_eq!(
        values(&r.records).first().map(String::as_str),
        Some("v000000025")
    );
    assert_eq!(
        c.describe_stream("kept", "log")
            .await
            .unwrap()
            .partition_info[0]
            .bytes,
        50
    );
}

/// Tasks emit records in epochs; a zombie's emits never appear, and a
/// subscriber sees exactly the committed ones, once each, in order,
/// across a leader kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_sees_exactly_the_committed_outputs_once_across_a_leader_kill() {
    let mut t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("pipeline", 4).await.expect("job");
    c.create_stream("pipeline", "out", 1, 0)
        .await
        .expect("stream");
    const EPOCHS: u64 = 6;
    const PER_EPOCH: u64 = 20;
    let want: Vec<String> = (1..=EPOCHS)
        .flat_map(|e| (0..PER_EPOCH).map(move |i| format!("e{e}-{i}")))
        .collect();
    let consumer = tokio::spawn(collect(t.client(), "pipeline", "out", want.len()));

    let spec = TaskSpec {
        job: "pipeline".into(),
        task: 0,
        key_groups: 0..4,
        input_partitions: vec![("in".into(), 0)],
    };
    let (mut zombie, _) = t
        .client()
        .acquire(spec.clone(), TaskSessionConfig::default())
        .await
        .unwrap();
    zombie
        .emit("out", 0, "", "zombie-uncommitted")
        .await
        .unwrap();
    let (mut task, _) = c.acquire(spec, TaskSessionConfig::default()).await.unwrap();
    for e in 1..=EPOCHS {
        for i in 0..PER_EPOCH {
            task.put("s", format!("k{i}"), format!("{e}"))
                .await
                .unwrap();
            task.emit("out", 0, format!("k{i}"), format!("e{e}-{i}"))
                .await
                .unwrap();
        }
        if e == EPOCHS / 2 {
            let leader = t.wait_for_leader(Duration::from_secs(60)).await;
            t.cluster.kill(leader).expect("kill the leader");
            // The commit below waits for the next leader and retries.
            let committed = task.commit(Vec::new(), Vec::new()).await;
            t.cluster.start_node(leader).expect("restart");
            committed.expect("commit across the kill");
        } else {
            task.commit(Vec::new(), Vec::new()).await.expect("commit");
        }
        // A fenced session may hear of it already here, or at the commit.
        let emitted = zombie.emit("out", 0, "", format!("zombie-{e}")).await;
        assert!(matches!(
            emitted,
            Ok(()) | Err(ClientError::StaleLease { .. })
        ));
        assert!(matches!(
            zombie.commit(Vec::new(), Vec::new()).await,
            Err(ClientError::StaleLease { .. })
        ));
    }
    let got = tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .expect("the subscriber saw every record")
        .unwrap();
    assert_eq!(
        values(&got),
        want,
        "exactly the committed outputs, in order"
    );
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..want.len() as u64).collect::<Vec<_>>());
    // An output to a stream that does not exist refuses the whole commit.
    task.put("s", "k0", "never").await.unwrap();
    task.emit("missing", 0, "", "x").await.unwrap();
    let e = task.commit(Vec::new(), Vec::new()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let kv = c
        .get(
            "pipeline",
            "s",
            "k0",
            streamshield_client::Consistency::Linearizable,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.value,
        EPOCHS.to_string().as_bytes(),
        "the refused commit changed nothing"
    );
}

/// A subscriber that stops reading holds up only its own subscription:
/// the client's other calls to the same node still get their answers.
/// (Over one HTTP/2 connection, the unread stream would fill the
/// connection's flow-control window and stall every answer behind it: a
/// stream task that subscribed to a backlog and then read its state
/// waited for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_stops_reading_holds_up_no_other_call() {
    const PARTITIONS: u32 = 4;
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("backlog", 4).await.expect("job");
    c.create_stream("backlog", "in", PARTITIONS, 0)
        .await
        .expect("stream");
    // 4 MiB a partition: each unread subscription can take a whole stream
    // window, and together they exceed the connection's.
    let value = "x".repeat(1 << 10);
    for p in 0..PARTITIONS {
        for _ in 0..16 {
            let records = (0..256).map(|_| record(&value)).collect();
            c.append("backlog", "in", p, records, None)
                .await
                .expect("append");
        }
    }
    let mut unread = Vec::new();
    for p in 0..PARTITIONS {
        unread.push(c.subscribe("backlog", "in", p, 0).await.expect("subscribe"));
    }
    // The node pushes pages until the windows are full, while the client
    // goes on with other calls for a second.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    let mut round = 0u32;
    while std::time::Instant::now() < until {
        round += 1;
        let value = format!("v{round}");
        c.put("backlog", "s", "k", value.as_str())
            .await
            .expect("put");
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            c.get(
                "backlog",
                "s",
                "k",
                streamshield_client::Consistency::Linearizable,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: no answer while a subscription goes unread"))
        .expect("get");
        assert_eq!(got.map(|kv| kv.value), Some(value.into_bytes()));
    }
    drop(unread);
}
