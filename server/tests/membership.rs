//! Membership changes (Raft §6, joint consensus in openraft): a new node
//! joins as a learner, catches up, is promoted to voter; a voter is
//! removed; the cluster keeps serving throughout.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_learner_promote_and_remove() {
    let (mut t, client) = TestCluster::with_keys(3, "members", 32, 0..200, 8).await;

    // A node the cluster has never heard of cannot be made a voter: the
    // refusal names it and what to do, and nothing changes.
    let refused = client
        .change_membership(vec![1, 2, 3, 9], false)
        .await
        .expect_err("node 9 is no learner");
    assert!(
        matches!(&refused, streamshield_client::ClientError::FailedPrecondition(m)
            if m.contains("node 9 is not a learner yet")),
        "{refused}"
    );

    let spec = t.cluster.add_node(4).expect("start node 4");
    let r = client
        .add_learner(4, &spec.addr, true)
        .await
        .expect("add learner");
    let four = r.members.iter().find(|m| m.id == 4).expect("node 4 listed");
    assert!(!four.voter, "joins as a learner");

    let r = client
        .change_membership(vec![1, 2, 3, 4], false)
        .await
        .expect("promote");
    let voters: Vec<u64> = r.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);

    write_keys(&client, "members", "s", 200..300, 8).await;
    let leader_status = t
        .status(t.wait_for_leader(Duration::from_secs(10)).await)
        .await
        .unwrap();
    t.wait_applied(4, leader_status.committed_index, Duration::from_secs(30))
        .await;
    let on_four = t
        .client_of(&[4])
        .scan_all("members", "s", b"user", Consistency::Stale)
        .await
        .expect("stale scan on node 4");
    assert_exact(&on_four, 0..300);

    // Remove node 1 (whether or not it leads).
    let r = client
        .change_membership(vec![2, 3, 4], false)
        .await
        .expect("remove node 1");
    let ids: Vec<u64> = r.members.iter().map(|m| m.id).collect();
    assert!(!ids.contains(&1), "node 1 is gone: {ids:?}");
    let rest = t.client_of(&[2, 3, 4]);
    let leader = t
        .wait_for_leader_among(&[2, 3, 4], Duration::from_secs(20))
        .await;
    assert_ne!(leader, 1);
    write_keys(&rest, "members", "s", 300..400, 8).await;
    let all = rest
        .scan_all("members", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..400);
}
