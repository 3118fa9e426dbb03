//! With the majority gone, writes stall and fail with UNAVAILABLE (or an
//! unknown outcome) instead of being acknowledged; when the majority comes
//! back the same client resumes, and nothing acknowledged is lost.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{ClientConfig, ClientError, Consistency};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_pause_without_a_majority_and_resume_after() {
    let (mut t, client) = TestCluster::with_keys(3, "quorum", 8, 0..100, 4).await;

    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    for id in &others {
        t.cluster.kill(*id).expect("kill");
    }

    // A short deadline: the write must not be acknowledged.
    let mut cfg = ClientConfig::new(t.cluster.endpoints());
    cfg.deadline = Duration::from_secs(3);
    let impatient = streamshield_client::Client::new(cfg).expect("client");
    match impatient.put("quorum", "s", "during-outage", "x").await {
        Err(ClientError::Unavailable { .. } | ClientError::DeadlineExceeded(_)) => {}
        other => panic!("a write without a majority must not succeed: {other:?}"),
    }

    // The patient client keeps retrying while the majority returns.
    let writer = client.clone();
    let pending = tokio::spawn(async move { writer.put("quorum", "s", "after-outage", "y").await });
    for id in &others {
        t.cluster.start_node(*id).expect("restart");
    }
    pending
        .await
        .expect("task")
        .expect("write resumes once a majority is back");

    let all = client
        .scan_all("quorum", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..100);
    let after = client
        .get(
            "quorum",
            "s",
            b"after-outage".to_vec(),
            Consistency::Linearizable,
        )
        .await
        .expect("get");
    assert_eq!(after.expect("present").value, b"y");
}
