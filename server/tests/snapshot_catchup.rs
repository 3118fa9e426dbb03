//! Raft §7: a follower that missed entries the leader has since compacted
//! away is brought up to date by InstallSnapshot, and then serves the same
//! data as the leader.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_by_snapshot() {
    // Concurrent writes share Raft entries (client coalescing, the write
    // batcher), so 10,000 writes take far fewer entries: snapshot often.
    let mut t = TestCluster::start(
        3,
        &["--snapshot-every=200", "--logs-kept-after-snapshot=20"],
    )
    .await;
    let client = t.client();
    client.create_job("snap", 64).await.expect("create job");
    write_keys(&client, "snap", "s", 0..100, 8).await;

    let (follower, live) = t.pick_follower().await;
    let before = t.status(follower).await.expect("follower status");
    t.cluster.kill(follower).expect("kill follower");

    let writer = t.client_of(&live);
    write_keys(&writer, "snap", "s", 100..10_100, 16).await;

    let lead = t
        .wait_for_leader_among(&live, Duration::from_secs(10))
        .await;
    let ls = t.status(lead).await.expect("leader status");
    assert!(
        ls.snapshot_index > before.last_applied,
        "leader built a snapshot past the follower"
    );
    assert!(
        ls.purged_index > before.last_log_index,
        "leader purged the log the follower needs (purged {}, follower had {})",
        ls.purged_index,
        before.last_log_index
    );

    t.cluster.start_node(follower).expect("restart follower");
    let fs = t
        .wait_applied(follower, ls.committed_index, Duration::from_secs(60))
        .await;
    assert!(
        fs.snapshots_installed >= 1,
        "follower caught up by snapshot: {fs:?}"
    );

    let on_follower = t
        .client_of(&[follower])
        .scan_all("snap", "s", b"user", Consistency::Stale)
        .await
        .expect("stale scan on follower");
    assert_exact(&on_follower, 0..10_100);
    let on_leader = writer
        .scan_all("snap", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan on leader");
    assert_eq!(
        on_follower, on_leader,
        "follower serves the leader's data, versions included"
    );
}
