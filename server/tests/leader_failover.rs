//! Raft §5.2/§5.4: a leader's death elects a new one within a few election
//! timeouts, and every write acknowledged before is still there (Leader
//! Completeness), readable linearizably.

mod common;

use std::time::{Duration, Instant};

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_loses_no_acknowledged_write() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client
        .create_job("failover", 128)
        .await
        .expect("create job");
    write_keys(&client, "failover", "s", 0..1000, 16).await;

    let mut t = t;
    let old = t.wait_for_leader(Duration::from_secs(10)).await;
    let killed_at = Instant::now();
    t.cluster.kill(old).expect("kill leader");
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = t
        .wait_for_leader_among(&survivors, Duration::from_secs(20))
        .await;
    let took = killed_at.elapsed();
    assert_ne!(new, old);
    // A few election timeouts (max 1.2 s here), with slack for a loaded machine.
    assert!(took < Duration::from_secs(15), "new leader took {took:?}");

    let after = t.client_of(&survivors);
    let all = after
        .scan_all("failover", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..1000);
    for i in [0, 499, 999] {
        let kv = after
            .get("failover", "s", key(i), Consistency::Linearizable)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(kv.value, value(i));
    }

    write_keys(&after, "failover", "s", 1000..1100, 4).await;
    let all = after
        .scan_all("failover", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..1100);
}
