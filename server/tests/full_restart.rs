//! Durability: with every node killed at once (kill -9) and restarted from
//! its data directory, nothing acknowledged is lost — the log is fsynced
//! before a write is acknowledged.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all_and_restart_keeps_every_acknowledged_write() {
    let mut t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("durable", 16).await.expect("create job");
    write_keys(&client, "durable", "s", 0..500, 16).await;
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
