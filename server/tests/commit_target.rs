//! A task session with a commit target on a real 3-node cluster: once
//! the cluster has answered some of its batches, they shrink from
//! `batch_bytes` to what drains within the target at the rate it answers
//! them (never below 8 KiB), and its epochs commit exactly as without one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use streamshield_client::{Consistency, TaskSessionConfig};

const FULL: usize = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_target_sizes_batches_by_the_answered_rate_and_commits_exactly() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("paced", 8).await.expect("create job");
    let config = TaskSessionConfig {
        batch_bytes: FULL,
        // 1 ms: a full batch would need the cluster to answer this session
        // at 256 MB/s (two batches in flight), far beyond this machine.
        commit_target: Some(Duration::from_millis(1)),
        ..TaskSessionConfig::default()
    };
    let (mut s, _) = c
        .acquire(whole_job_task("paced", 8), config)
        .await
        .expect("acquire");
    assert_eq!(s.batch_bytes(), FULL, "full size before the first sample");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 0u64;
    while s.batch_bytes() == FULL {
        assert!(Instant::now() < deadline, "batches never shrank");
        s.put("t", key(written), value(written)).await.unwrap();
        written += 1;
    }
    let shrunk = s.batch_bytes();
    assert!((8 << 10..FULL).contains(&shrunk), "{shrunk}");
    // As much again in smaller batches, then one commit of everything.
    for i in written..2 * written {
        s.put("t", key(i), value(i)).await.unwrap();
    }
    s.commit(Vec::new(), Vec::new()).await.expect("commit");
    let kvs = c
        .scan_all("paced", "t", b"", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&kvs, 0..2 * written);
}
