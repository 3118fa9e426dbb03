//! A node's state machine is not fsynced (the Raft log is): after a power
//! loss it can come back older than entries it had applied, and the commit
//! index the log store keeps on disk lags the real one. A leader that
//! restarts like that must not answer a linearizable read before it knows
//! the real commit index, which in Raft it learns only by committing an
//! entry of a new term (§8 of the Raft paper). Otherwise a read after the
//! restart misses a write acknowledged before it.
//!
//! The condition is staged, not raced for. The old leader comes back with
//! its store rolled back to its newest snapshot (an older state the store
//! really was in), and with one other node only: one that was down while
//! the last write was acknowledged and cannot catch up, because the
//! leader's log is purged behind its snapshot and this node refuses every
//! snapshot (`--max-snapshot-bytes=1`). While those two are up no entry
//! can commit, so a correct leader answers no linearizable read. A leader
//! restored in place (openraft's `enable_leader_restore`, which `node.rs`
//! turns off) answers at the first heartbeat reply, from the commit index
//! it had on disk. Once the third node is back, the read must see the
//! write.

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

/// How long the read is given while no entry can commit. A leader that
/// answers from its stale commit index does so within a heartbeat round
/// (milliseconds); this is slack for a loaded machine, not a race window.
const NO_ANSWER_FOR: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_leader_with_an_older_state_machine_reads_every_acknowledged_write() {
    let mut t = TestCluster::start(
        3,
        &["--snapshot-every=100", "--logs-kept-after-snapshot=10"],
    )
    .await;
    let client = t.client();
    client.create_job("tail", 4).await.expect("create job");
    let leader = t.wait_for_settled_leader(Duration::from_secs(60)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (behind, caught_up) = (others[0], others[1]);

    // `behind` misses everything from here on, and may never catch up.
    let behind_end = t
        .status(behind)
        .await
        .expect("status of the node to stop")
        .last_log_index;
    t.cluster.kill(behind).expect("kill");
    t.cluster
        .set_node_args(behind, vec!["--max-snapshot-bytes=1".into()]);

    // One writer: one log entry per write, so snapshots come soon.
    write_keys(&client, "tail", "s", 0..150, 1).await;
    let snap = t
        .wait_status(
            leader,
            Duration::from_secs(30),
            "purge the log behind a snapshot",
            |s| s.snapshot_index > 0 && s.purged_index > behind_end,
        )
        .await
        .snapshot_index;
    let value = "acknowledged before the power loss";
    client
        .put("tail", "s", "last", value)
        .await
        .expect("put after the snapshot");
    let applied = t.status(leader).await.expect("leader status").last_applied;
    assert!(applied > snap, "the write is newer than the snapshot");

    t.cluster.kill(leader).expect("kill the leader");
    t.cluster.kill(caught_up).expect("kill the other follower");
    roll_back_state_machine(&t.cluster.data_dir(leader));
    t.cluster
        .start_node(leader)
        .expect("restart the old leader");
    t.cluster
        .start_node(behind)
        .expect("restart the node behind");
    for id in [leader, behind] {
        t.wait_status(id, Duration::from_secs(30), "serve again", |_| true)
            .await;
    }

    let reader = t.client_of(&[leader, behind]);
    let mut read = tokio::spawn(async move {
        reader
            .get("tail", "s", "last", Consistency::Linearizable)
            .await
    });
    if let Ok(early) = tokio::time::timeout(NO_ANSWER_FOR, &mut read).await {
        panic!(
            "the restarted leader answered a linearizable read while no entry could commit: {:?} \
             (the write acknowledged before the restart was {value:?})",
            early.expect("reader task")
        );
    }

    t.cluster
        .start_node(caught_up)
        .expect("restart the other follower");
    let got = read
        .await
        .expect("reader task")
        .expect("linearizable read once a quorum can commit");
    assert_eq!(
        got.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        Some(value.to_string()),
        "a read after the restart saw less than a write acknowledged before it"
    );
    let all = client
        .scan_all("tail", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..150);
}
