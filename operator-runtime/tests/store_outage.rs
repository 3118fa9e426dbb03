//! An outage of the state cluster pauses tasks; it never restarts them.
//! A leader kill and then a loss of quorum, while the windowed job runs:
//! no worker exits, no task restarts, and the result equals the ground
//! truth.

mod common;

use std::time::Duration;

use streamshield_runtime::examples::window_sum;
use streamshield_runtime::SupervisorEvent;

use common::{config, window_sums, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_and_a_lost_quorum_restart_no_task() {
    let mut c = Cluster::start().await;
    let job = window_sum::job();
    let cfg = config(window_sum::NAME, "ws-outage", &[("window", 4)], 1);
    let (n, users, seed) = (30_000, 200, 31);
    let sup = c.supervise(&job, cfg.clone()).await;
    let mut events = sup.subscribe();
    let feeder = c.feeding(&job, &cfg, window_sum::input(&cfg, n, users, seed), 40, 250);

    // Every task commits before the faults begin.
    let mut committed = std::collections::BTreeSet::new();
    while committed.len() < 4 {
        if let Ok(SupervisorEvent::Committed { task, records, .. }) = events.recv().await {
            if records > 0 {
                committed.insert(task);
            }
        }
    }

    let leader = c.leader().await;
    c.cluster.kill(leader).expect("kill the leader");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.cluster.start_node(leader).expect("restart it");

    // No quorum: two of three nodes down at once.
    let down: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &down {
        c.cluster.kill(*id).expect("kill");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &down {
        c.cluster.start_node(*id).expect("restart");
    }

    feeder
        .await
        .expect("the input is written once a quorum is back");
    let v = window_sums(&c, &job, &cfg, n, users, seed).await;
    assert!(v.exact(), "{v:?}");
    let status = sup.status().await.expect("status");
    assert!(
        status
            .tasks
            .iter()
            .all(|t| t.restarts == 0 && t.generation == 1),
        "no task restarted: {status:?}"
    );
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, SupervisorEvent::WorkerExited { .. }),
            "no worker exited: {e:?}"
        );
    }
    sup.stop().await;
}
