//! A node's state machine is not fsynced (the Raft log is): after a power
//! loss it can come back older than entries it had applied, and the commit
//! index the log store keeps on disk lags the real one. A leader that
//! restarts like that must not answer a linearizable read before it knows
//! the real commit index, which in Raft it learns only by committing an
//! entry of a new term (§8 of the Raft paper). Otherwise a read after the
//! restart misses a write acknowledged before it.
//!
//! The power loss is staged: every node is killed (kill -9) and the
//! leader's store is rolled back to its newest snapshot, an older state the
//! store really was in.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use streamshield_client::Consistency;
use streamshield_server::state_machine::snapshot;

/// Puts the store of the node with data directory `data` back to the
/// state of its newest snapshot, as a lost unsynced tail would (the way a
/// snapshot install lays a store out).
fn roll_back_state_machine(data: &Path) {
    let sm = data.join("sm");
    let gen = fs::read_to_string(sm.join("CURRENT")).unwrap_or_else(|_| "0".into());
    let live = sm.join(format!("gen-{}", gen.trim()));
    let (_, files) = snapshot::current(&data.join("snapshots"))
        .expect("read the snapshots dir")
        .expect("the leader kept a snapshot");
    fs::remove_dir_all(&live).expect("remove the live store");
    snapshot::link_copy(&files.dir, &live).expect("copy the snapshot in");
}

/// Each round is a chance for the stale read to show (it races the
/// followers' first replies to the restarted leader); three make a miss
/// without the safeguard unlikely.
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_leader_with_an_older_state_machine_reads_every_acknowledged_write() {
    let mut t = TestCluster::start(3, &["--snapshot-every=100"]).await;
    let client = t.client();
    client.create_job("tail", 4).await.expect("create job");
    // One writer: one log entry per write, so the snapshot comes soon.
    write_keys(&client, "tail", "s", 0..150, 1).await;

    for round in 0..ROUNDS {
        let leader = t.wait_for_settled_leader(Duration::from_secs(60)).await;
        let snap = t
            .wait_status(leader, Duration::from_secs(30), "keep a snapshot", |s| {
                s.snapshot_index > 0
            })
            .await
            .snapshot_index;
        let value = format!("acknowledged in round {round}");
        client
            .put("tail", "s", "last", value.as_str())
            .await
            .expect("put after the snapshot");
        let applied = t.status(leader).await.expect("leader status").last_applied;
        assert!(applied > snap, "the write is newer than the snapshot");

        for id in [1, 2, 3] {
            t.cluster.kill(id).expect("kill");
        }
        roll_back_state_machine(&t.cluster.data_dir(leader));

        // The old leader first and alone, so that the read reaches it
        // first; the read waits (the client retries) until a quorum is
        // back.
        t.cluster
            .start_node(leader)
            .expect("restart the old leader");
        t.wait_status(leader, Duration::from_secs(30), "serve again", |_| true)
            .await;
        let reader = t.client();
        let read = tokio::spawn(async move {
            reader
                .get("tail", "s", "last", Consistency::Linearizable)
                .await
        });
        for id in [1, 2, 3].into_iter().filter(|&id| id != leader) {
            t.cluster.start_node(id).expect("restart a follower");
        }
        let got = read
            .await
            .expect("reader task")
            .expect("linearizable read after the restart");
        assert_eq!(
            got.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            Some(value),
            "round {round}: a read after the restart saw less than a write acknowledged before it"
        );
    }
    let all = client
        .scan_all("tail", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..150);
}
