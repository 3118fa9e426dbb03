//! Raft messages that no honest member sends are refused before openraft
//! sees them, and the cluster keeps its leader and its term.
//!
//! Raft makes a node adopt any higher term it hears of (§5.1 of the
//! paper), so without these checks a `Vote` of term `u64::MAX` from a node
//! that is not a member, sent across a leader change, was granted by the
//! followers: the cluster sat at that term with no leader for good (the
//! next term wraps in a release build and panics in a debug one).

mod common;

use std::time::Duration;

use common::*;
use streamshield_proto::v1::{self as pb, raft_client::RaftClient};
use tonic::transport::Channel;
use tonic::Code;

async fn raft_client(addr: &str) -> RaftClient<Channel> {
    let ch = plain_channel(addr).await;
    RaftClient::new(ch)
}

fn vote(term: u64, node_id: u64, pre_vote: bool) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId { term, node_id }),
            committed: false,
        }),
        // A log that looks newer than anyone's.
        last_log_id: Some(pb::LogId {
            leader_id: Some(pb::LeaderId { term, node_id }),
            index: 1 << 40,
        }),
        leadership_transfer: false,
        pre_vote,
    }
}

fn append(term: u64, node_id: u64) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId { term, node_id }),
            committed: true,
        }),
        ..Default::default()
    }
}

/// The largest term any node reports.
async fn max_term(t: &TestCluster, ids: &[u64]) -> u64 {
    let mut max = 0;
    for id in ids {
        if let Some(s) = t.status(*id).await {
            max = max.max(s.term);
        }
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_forged_message_gets_its_status_and_changes_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let leader = t.wait_for_settled_leader(Duration::from_secs(30)).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let before = t.status(follower).await.unwrap();
    let mut raft = raft_client(&t.addr(follower)).await;

    for pre_vote in [false, true] {
        expect_code(
            "vote of term u64::MAX from a non-member",
            raft.vote(vote(u64::MAX, 99, pre_vote)).await,
            Code::InvalidArgument,
        )
        .await;
        expect_code(
            "vote of a plausible term from a non-member",
            raft.vote(vote(before.term + 1, 99, pre_vote)).await,
            Code::PermissionDenied,
        )
        .await;
        expect_code(
            "vote from a member, a term no honest peer reaches",
            raft.vote(vote(before.term + (1 << 33), leader, pre_vote))
                .await,
            Code::OutOfRange,
        )
        .await;
        expect_code(
            "vote claiming to come from the receiver itself",
            raft.vote(vote(before.term + 1, follower, pre_vote)).await,
            Code::PermissionDenied,
        )
        .await;
    }
    expect_code(
        "entries of term u64::MAX",
        raft.append_entries(append(u64::MAX, 99)).await,
        Code::InvalidArgument,
    )
    .await;
    expect_code(
        "entries of a term far ahead",
        raft.append_entries(append(before.term + (1 << 33), 99))
            .await,
        Code::OutOfRange,
    )
    .await;
    let mut forged_index = append(before.term, leader);
    forged_index.prev_log_id = Some(pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: before.term,
            node_id: leader,
        }),
        index: u64::MAX,
    });
    expect_code(
        "entries after log index u64::MAX",
        raft.append_entries(forged_index).await,
        Code::InvalidArgument,
    )
    .await;

    // Nothing moved: the same leader in the same term, and it still writes.
    let after = t.status(follower).await.unwrap();
    assert_eq!(
        (after.term, after.leader_id),
        (before.term, before.leader_id)
    );
    let client = t.client();
    client.create_job("j", 4).await.expect("create job");
    client.put("j", "s", "k", "v").await.expect("put");
}

/// The attack as it was found: forged votes sent over and over to every
/// node while the leader dies, so that they arrive when no leader lease
/// protects the followers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_votes_across_a_leader_kill_leave_the_cluster_electing_normally() {
    let mut t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("j", 4).await.expect("create job");
    client.put("j", "s", "before", "1").await.expect("put");
    let leader = t.wait_for_settled_leader(Duration::from_secs(30)).await;
    let term_before = max_term(&t, &[1, 2, 3]).await;

    let addrs: Vec<String> = [1, 2, 3].iter().map(|id| t.addr(*id)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for addr in &addrs {
                    let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
                        .unwrap()
                        .connect()
                        .await
                    else {
                        continue; // the killed node
                    };
                    let mut raft = RaftClient::new(ch);
                    for (term, from) in [(u64::MAX, 99), (1 << 57, 99), (1 << 40, 2), (1 << 40, 3)]
                    {
                        for pre_vote in [false, true] {
                            let r = raft.vote(vote(term, from, pre_vote)).await;
                            assert!(
                                !r.as_ref().is_ok_and(|v| v.get_ref().vote_granted),
                                "a forged vote was granted: {r:?}"
                            );
                            sent += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        }
    });

    t.cluster.kill(leader).expect("kill the leader");
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let new_leader = t
        .wait_for_leader_among(&survivors, Duration::from_secs(30))
        .await;
    // Let the attack run on past the election, then check its effect.
    client
        .put("j", "s", "after", "2")
        .await
        .expect("put after failover");
    t.cluster
        .start_node(leader)
        .expect("restart the old leader");
    t.wait_for_settled_leader(Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = attacker.await.expect("attacker");
    assert!(sent > 0);

    let term_after = max_term(&t, &[1, 2, 3]).await;
    assert!(
        term_after < term_before + 1_000,
        "the term went from {term_before} to {term_after}: a forged vote moved it"
    );
    assert!(survivors.contains(&new_leader));
    let kv = client
        .get(
            "j",
            "s",
            "before",
            streamshield_client::Consistency::Linearizable,
        )
        .await
        .expect("get")
        .expect("the write before the kill");
    assert_eq!(kv.value, b"1");
    client
        .put("j", "s", "end", "3")
        .await
        .expect("the cluster still writes");
}
