//! A hung worker (SIGSTOP) is found by its missing heartbeats, killed and
//! replaced; while its task is away, every other task keeps committing new
//! input; the result stays exact.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use streamshield_runtime::examples::window_sum;
use streamshield_runtime::SupervisorEvent;

use common::{config, signal, window_sums, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_keep_committing_while_a_hung_task_is_replaced() {
    let c = Cluster::start().await;
    let job = window_sum::job();
    let mut cfg = config(window_sum::NAME, "ws-hung", &[("window", 4)], 1);
    // Long enough that the other tasks commit many epochs meanwhile.
    cfg.heartbeat_timeout_ms = 1500;
    let (n, users, seed) = (30_000, 200, 41);
    let sup = c.supervise(&job, cfg.clone()).await;
    let mut events = sup.subscribe();
    let feeder = c.feeding(&job, &cfg, window_sum::input(&cfg, n, users, seed), 40, 250);

    let mut records: BTreeMap<u32, u64> = BTreeMap::new();
    while records.len() < 4 || records.values().any(|r| *r == 0) {
        if let Ok(SupervisorEvent::Committed {
            task, records: r, ..
        }) = events.recv().await
        {
            records.insert(task, r);
        }
    }
    let status = sup.status().await.expect("status");
    let victim = status.tasks.iter().find(|t| t.task == 0).expect("task 0");
    let pid = victim.pid.expect("running");
    signal(pid, libc::SIGSTOP);
    let before = records.clone();

    let mut advanced: BTreeMap<u32, u32> = BTreeMap::new();
    let recovered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(SupervisorEvent::Committed {
                    task, records: r, ..
                }) if task != 0 && r > before[&task] => {
                    *advanced.entry(task).or_default() += 1;
                }
                Ok(SupervisorEvent::Recovered(r)) if r.task == 0 => return r,
                _ => {}
            }
        }
    })
    .await
    .expect("the hung task recovered within 60 s");
    assert_eq!(recovered.old_pid, pid);
    assert_ne!(recovered.new_pid, pid);
    for task in 1..4 {
        assert!(
            advanced.get(&task).copied().unwrap_or(0) >= 2,
            "task {task} kept committing new input while task 0 was away: {advanced:?}"
        );
    }

    feeder.await.expect("feeder");
    let v = window_sums(&c, &job, &cfg, n, users, seed).await;
    assert!(v.exact(), "{v:?}");
    let status = sup.status().await.expect("status");
    let restarts: Vec<u32> = status.tasks.iter().map(|t| t.restarts).collect();
    assert_eq!(restarts, vec![1, 0, 0, 0], "only the hung task restarted");
    // The status's lag is sampled every second: once all input is
    // committed, every task's reaches 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = sup.status().await.expect("status");
        if status.tasks.iter().all(|t| t.lag == Some(0)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never reached 0: {:?}",
            status.tasks.iter().map(|t| t.lag).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sup.stop().await;
}
