//! Rescale without moving state: the windowed job runs with 4 tasks, is
//! stopped at a committed epoch, runs on with 2, then with 6, while input
//! keeps arriving; windows that span the rescales come out exact, because
//! state and timers are found by key group wherever they were committed.

mod common;

use std::time::Duration;

use streamshield_runtime::examples::window_sum;
use streamshield_runtime::{JobDef, Supervisor, SupervisorEvent};

use common::{config, window_sums, Cluster};

/// Waits until the job's tasks together commit `records` new input.
async fn run_for(sup: &Supervisor, records: u64) {
    let mut events = sup.subscribe();
    let mut seen = std::collections::BTreeMap::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok(SupervisorEvent::Committed {
                task, records: r, ..
            }) = events.recv().await
            {
                seen.insert(task, r);
                if seen.values().sum::<u64>() >= records {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the job committed {records} records within 120 s: {seen:?}"
    );
}

async fn phase(c: &Cluster, job: &JobDef, tasks: u32, records: u64) {
    let cfg = config(window_sum::NAME, "ws-rescale", &[("window", tasks)], 0);
    let started = std::time::Instant::now();
    let sup = c.supervise(job, cfg).await;
    run_for(&sup, records).await;
    let status = sup.status().await.expect("status");
    assert_eq!(status.tasks.len(), tasks as usize);
    sup.stop().await;
    eprintln!(
        "{tasks} tasks: {:?} from start to stopped",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescale_from_4_to_2_to_6_tasks_keeps_the_result_exact() {
    let c = Cluster::start().await;
    let job = window_sum::job();
    let cfg = config(window_sum::NAME, "ws-rescale", &[("window", 6)], 0);
    let (n, users, seed) = (30_000, 300, 53);
    job.setup(&c.client, &cfg).await.expect("setup");
    // Map entries and list elements are placed by the key they belong to:
    // their tables are declared so before any task writes.
    let store = c
        .client
        .describe_job(&job.store_job(&cfg, 0))
        .await
        .expect("describe");
    for table in [
        streamshield_runtime::MAP_TABLE,
        streamshield_runtime::LIST_TABLE,
    ] {
        let t = store.states.iter().find(|t| t.name == table);
        assert_eq!(
            t.map(|t| t.placement),
            Some(streamshield_client::pb::KeyPlacement::Prefix as i32),
            "{table}"
        );
    }
    let feeder = c.feeding(&job, &cfg, window_sum::input(&cfg, n, users, seed), 30, 300);

    phase(&c, &job, 4, 3_000).await;
    phase(&c, &job, 2, 3_000).await;
    let sup = c.supervise(&job, cfg.clone()).await;
    feeder.await.expect("feeder");
    let v = window_sums(&c, &job, &cfg, n, users, seed).await;
    assert!(v.exact(), "{v:?}");
    let tasks = c
        .client
        .list_tasks(
            "ws-rescale.window",
            streamshield_client::Consistency::Linearizable,
        )
        .await
        .expect("tasks");
    let live: Vec<u32> = tasks
        .tasks
        .iter()
        .filter(|t| !t.released)
        .map(|t| t.task)
        .collect();
    assert_eq!(live, vec![0, 1, 2, 3, 4, 5], "six tasks hold the job now");
    sup.stop().await;
}
