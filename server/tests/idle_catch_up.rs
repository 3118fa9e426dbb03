//! A follower that stops answering in the middle of replication (SIGSTOP)
//! and comes back once writes have stopped still receives every entry:
//! the leader's replication to it resumes on its own, without waiting for
//! a new write to wake it.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_paused_mid_replication_catches_up_on_an_idle_cluster() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("idle", 4).await.expect("create job");
    let (follower, live) = t.pick_follower().await;

    t.cluster.pause(follower, true);
    let writer = t.client_of(&live);
    let mut last_index = 0;
    for i in 0..3 {
        let r = writer
            .put("idle", "s", format!("k{i:02}"), vec![i as u8; 64])
            .await
            .expect("put");
        last_index = last_index.max(r.index);
    }
    // The leader has sent these to the stopped follower; let its stream
    // to it time out unanswered (the deadline is the 100 ms heartbeat
    // interval of these tests) before the follower continues.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    t.cluster.pause(follower, false);

    // No write from here on.
    t.wait_applied(follower, last_index, Duration::from_secs(30))
        .await;
    let kv = t
        .client_of(&[follower])
        .get("idle", "s", "k02", Consistency::Stale)
        .await
        .expect("stale get on the follower")
        .expect("last key present");
    assert_eq!(kv.value, vec![2u8; 64]);
}
