//! An epoch's outputs are staged with its writes, so one epoch may produce
//! far more than one request holds (24 MiB here, against the 4 MiB of
//! `max_batch_bytes`): on a real 3-node cluster they reach their
//! partitions once each, in the order emitted, with the epoch's state,
//! and readers see them whole although they are appended in steps.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use streamshield_client::{Consistency, TaskSessionConfig};
use streamshield_proto::v1 as pb;

const JOB: &str = "big";
/// Records of 1 KiB, alternating between two partitions: 24 MiB.
const RECORDS: u64 = 24 * 1024;

fn record_value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(1024, b'.');
    v
}

/// Every record of `partition` from offset 0, once `n` are there.
async fn read_all(c: &streamshield_client::Client, partition: u32, n: usize) -> Vec<Vec<u8>> {
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "partition {partition}: {} of {n} records came",
            got.len()
        );
        let page = c
            .read_stream(JOB, "out", partition, got.len() as u64, 1000)
            .await
            .expect("read");
        if page.records.is_empty() {
            // The epoch's later steps are still being promoted.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for r in page.records {
            assert_eq!(r.offset, got.len() as u64, "offsets without gaps");
            got.push(r.value);
        }
    }
    got
}

/// A job with a stream `out` of two partitions, and its task 0's session
/// with `RECORDS` records emitted alternately to them (and a write every
/// 1,024), not yet committed.
async fn task_with_big_epoch(c: &streamshield_client::Client) -> streamshield_client::TaskSession {
    c.create_job(JOB, 4).await.expect("job");
    c.create_stream(JOB, "out", 2, 0).await.expect("stream");
    let (mut task, _) = c
        .acquire(whole_job_task(JOB, 4), TaskSessionConfig::default())
        .await
        .expect("lease");
    for i in 0..RECORDS {
        task.emit("out", (i % 2) as u32, format!("k{i}"), record_value(i))
            .await
            .expect("emit");
        if i % 1024 == 0 {
            task.put("s", format!("k{i}"), format!("{i}"))
                .await
                .expect("put");
        }
    }
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_epoch_emits_more_than_one_request_holds() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let mut task = task_with_big_epoch(&c).await;
    let first = task
        .commit(Vec::new(), Vec::new())
        .await
        .expect("an epoch of 24 MiB of outputs commits");
    assert!(first.promoting, "24 MiB is promoted in steps: {first:?}");
    // The next epoch commits once the promotion is over (the session
    // retries the refusal that says so), its record after the first's.
    task.emit("out", 0, "last", "after").await.expect("emit");
    task.commit(Vec::new(), Vec::new())
        .await
        .expect("the next epoch");

    let half = (RECORDS / 2) as usize;
    for p in 0..2u32 {
        let want_n = half + usize::from(p == 0);
        let got = read_all(&c, p, want_n).await;
        for (j, v) in got.iter().take(half).enumerate() {
            let i = 2 * j as u64 + u64::from(p);
            assert!(
                *v == record_value(i),
                "partition {p} offset {j}: not record {i}"
            );
        }
        if p == 0 {
            assert_eq!(got[half], b"after".to_vec());
        }
        let more = c
            .read_stream(JOB, "out", p, want_n as u64, 10)
            .await
            .expect("read past the end");
        assert!(
            more.records.is_empty(),
            "partition {p}: records past the epochs'"
        );
    }
    let kv = c
        .get(JOB, "s", b"k23552", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("the epoch's state is visible");
    assert_eq!(kv.value, b"23552".to_vec());
}

/// Kafka's read-committed consumers see a transaction's records all at
/// once; so do ours an epoch's, although a promotion in steps appends
/// them a step at a time: readers of a partition stop where the
/// promotion began appending until its last step. Polled and subscribed
/// on every node while the promotion runs, a partition's end is the one
/// before the epoch or the one after it, nothing between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_see_an_epoch_promoted_in_steps_whole() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let mut task = task_with_big_epoch(&c).await;
    let half = RECORDS / 2;
    let done = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for node in t.cluster.specs().map(|s| s.id).collect::<Vec<_>>() {
        let mut nc = pb::streams_client::StreamsClient::new(plain_channel(&t.addr(node)).await);
        let done = done.clone();
        // Polls this node as it has applied: every end offset it reported.
        watchers.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                let page = nc
                    .read(pb::ReadRequest {
                        job: JOB.into(),
                        stream: "out".into(),
                        max_records: 1,
                        consistency: pb::Consistency::Stale as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("read")
                    .into_inner();
                seen.insert(page.end_offset);
            }
            (node, seen)
        }));
    }
    let mut sub = c.subscribe(JOB, "out", 0, 0).await.expect("subscribe");
    let subscribed = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut got = 0u64;
        while got < half {
            let page = sub.message().await.expect("subscription").expect("a page");
            got += page.records.len() as u64;
            seen.insert(page.end_offset);
        }
        seen
    });
    let first = task
        .commit(Vec::new(), Vec::new())
        .await
        .expect("an epoch of 24 MiB of outputs commits");
    assert!(first.promoting, "24 MiB is promoted in steps: {first:?}");
    let from_subscription = tokio::time::timeout(Duration::from_secs(120), subscribed)
        .await
        .expect("the subscription got the epoch")
        .expect("subscriber");
    done.store(true, Ordering::SeqCst);
    for w in watchers {
        let (node, seen) = w.await.expect("poller");
        assert!(
            seen.iter().all(|&e| e == 0 || e == half),
            "node {node}: readers saw the partition end at {seen:?}, not only 0 or {half}"
        );
    }
    assert_eq!(
        from_subscription,
        BTreeSet::from([half]),
        "every page of the subscription saw the whole epoch"
    );
}
