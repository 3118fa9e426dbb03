//! A follower that missed more log than one Raft message may carry (gRPC
//! refuses messages over 256 MiB) still catches up: replication reads are
//! bounded by bytes, not only by entry count, so the backlog goes over in
//! several AppendEntries instead of one that fails again on every retry.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

const VALUE_BYTES: usize = 1 << 20;
/// 300 MiB of log: above the 256 MiB message limit.
const WRITES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_behind_by_more_than_one_message_catches_up() {
    let mut t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("big", 4).await.expect("create job");
    let (follower, live) = t.pick_follower().await;
    t.cluster.kill(follower).expect("kill follower");

    let writer = t.client_of(&live);
    let mut last_index = 0;
    for i in 0..WRITES {
        let value = vec![(i % 251) as u8; VALUE_BYTES];
        let r = writer
            .put("big", "s", format!("k{i:03}"), value)
            .await
            .expect("put");
        last_index = last_index.max(r.index);
    }

    t.cluster.start_node(follower).expect("restart follower");
    let fs = t
        .wait_applied(follower, last_index, Duration::from_secs(180))
        .await;
    assert_eq!(
        fs.snapshots_installed, 0,
        "caught up by log, not by snapshot: {fs:?}"
    );

    let on_follower = t.client_of(&[follower]);
    for i in [0, WRITES / 2, WRITES - 1] {
        let kv = on_follower
            .get("big", "s", format!("k{i:03}"), Consistency::Stale)
            .await
            .expect("stale get on follower")
            .expect("key present");
        assert_eq!(kv.value, vec![(i % 251) as u8; VALUE_BYTES], "k{i:03}");
    }
}
