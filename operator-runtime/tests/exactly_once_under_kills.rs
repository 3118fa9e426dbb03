//! Exactly-once under repeated `kill -9` of task workers: the word count's
//! result (counts 1..=n per word, in order) equals the ground truth after
//! a dozen kills spread over both stages, with input arriving throughout.

mod common;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use streamshield_runtime::examples::wordcount;
use streamshield_runtime::SupervisorEvent;

use common::{config, signal, word_counts, Cluster};

const KILLS: u32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_counts_are_exact_after_a_dozen_worker_kills() {
    let c = Cluster::start().await;
    let job = wordcount::job();
    let cfg = config(
        wordcount::NAME,
        "wc-kills",
        &[("split", 2), ("count", 4)],
        1,
    );
    let (lines, seed) = (24_000, 17);
    let sup = c.supervise(&job, cfg.clone()).await;
    let mut events = sup.subscribe();
    let feeder = c.feeding(&job, &cfg, wordcount::input(&cfg, lines, seed), 60, 250);

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut killed = Vec::new();
    while killed.len() < KILLS as usize {
        let status = sup.status().await.expect("status");
        let running: Vec<_> = status.tasks.iter().filter(|t| t.pid.is_some()).collect();
        if running.len() < status.tasks.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let victim = running[rng.random_range(0..running.len())];
        let pid = victim.pid.expect("running");
        signal(pid, libc::SIGKILL);
        killed.push((victim.stage.clone(), victim.task));
        // The next kill waits until the task is on its new worker.
        let assigned = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match events.recv().await {
                    Ok(SupervisorEvent::Assigned {
                        stage,
                        task,
                        pid: new,
                        ..
                    }) if stage == victim.stage && task == victim.task && new != pid => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("supervisor events ended: {e}"),
                }
            }
        })
        .await;
        assert!(
            assigned.is_ok(),
            "task {victim:?} was not reassigned within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
    }
    feeder.await.expect("feeder");

    let v = word_counts(&c, &job, &cfg, lines, seed).await;
    assert!(v.exact(), "after kills of {killed:?}: {v:?}");
    assert!(v.expected > 50_000, "the job counted real input: {v:?}");
    let status = sup.status().await.expect("status");
    let restarts: u32 = status.tasks.iter().map(|t| t.restarts).sum();
    assert_eq!(
        restarts, KILLS,
        "every kill, and only kills, restarted a task: {status:?}"
    );
    for stage in ["split", "count"] {
        assert!(
            killed.iter().any(|(s, _)| s == stage),
            "kills reached stage {stage}: {killed:?}"
        );
    }
    sup.stop().await;
}
