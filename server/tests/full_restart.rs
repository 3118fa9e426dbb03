//! Durability: with every node killed at once (kill -9) and restarted from
//! its data directory, nothing acknowledged is lost — the log is fsynced
//! before a write is acknowledged, and the state machine catches up from it.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all_and_restart_keeps_every_acknowledged_write() {
    let (mut t, client) = TestCluster::with_keys(3, "durable", 16, 0..500, 16).await;
    // Overwrites too, so versions must survive as well.
    write_keys(&client, "durable", "s", 0..50, 4).await;

    for id in [1, 2, 3] {
        t.cluster.kill(id).expect("kill");
    }
    for id in [1, 2, 3] {
        t.cluster.start_node(id).expect("restart");
    }
    t.wait_for_leader(Duration::from_secs(60)).await;

    let after = t.client();
    let all = after
        .scan_all("durable", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..500);
    for kv in &all[..50] {
        assert_eq!(kv.version, 2, "overwritten keys keep their version");
    }
    let job = after.describe_job("durable").await.expect("job survives");
    assert_eq!(job.key_groups, 16);
    after
        .put("durable", "s", "more", "ok")
        .await
        .expect("writes continue");
}

/// The log is purged behind snapshots: every store must still hold, on
/// disk, all that its log no longer does. Frequent snapshots with few
/// entries kept make each node purge many times before it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all_after_log_purges_keeps_every_acknowledged_write() {
    let mut t = TestCluster::start(
        3,
        &["--snapshot-every=100", "--logs-kept-after-snapshot=10"],
    )
    .await;
    let client = t.client();
    client.create_job("purged", 16).await.expect("create job");
    write_keys(&client, "purged", "s", 0..3_000, 16).await;
    // Snapshots and purges run in the background on every node.
    for id in [1, 2, 3] {
        t.wait_status(id, Duration::from_secs(30), "purge its log", |s| {
            s.purged_index > 0
        })
        .await;
    }

    for id in [1, 2, 3] {
        t.cluster.kill(id).expect("kill");
    }
    for id in [1, 2, 3] {
        t.cluster.start_node(id).expect("restart");
    }
    t.wait_for_leader(Duration::from_secs(60)).await;

    let all = t
        .client()
        .scan_all("purged", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..3_000);
}
