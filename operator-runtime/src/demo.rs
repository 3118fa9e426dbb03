//! `streamshield-runtime demo` (what `make demo` runs): the product's
//! story on this machine. A local 3-node state cluster, the windowed-sum
//! job with 4 tasks and a warm standby, input arriving for about 20 s; a
//! `kill -9` of one task's worker and, later, of the state cluster's
//! leader; each recovery printed with its timings and whether the other
//! tasks kept committing meanwhile; the result checked against the ground
//! truth (exit 1 unless exact); a timeline picture of it all.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use streamshield_client::local::{find_server_binary, LocalCluster};
use streamshield_client::{Client, ClientConfig};
use streamshield_runtime::examples::window_sum;
use streamshield_runtime::source::append_in_steps;
use streamshield_runtime::task::now_us;
use streamshield_runtime::{JobConfig, Supervisor, SupervisorConfig, SupervisorEvent};

const TASKS: u32 = 4;
const EVENTS: u64 = 60_000;
const USERS: u32 = 500;
const SEED: u64 = 7;
const FEED_STEPS: usize = 200;
const FEED_EVERY: Duration = Duration::from_millis(100);
const BUCKET_S: f64 = 0.5;

/// `(task, at_us, records since its worker attached)` of every commit.
type Commits = Arc<Mutex<Vec<(u32, u64, u64)>>>;

fn secs(t0: u64, t: u64) -> f64 {
    t.saturating_sub(t0) as f64 / 1e6
}

/// Each task's first commit after `t_us`, if it has made one.
fn first_commits_after(commits: &Commits, t_us: u64) -> Vec<Option<u64>> {
    let c = commits.lock().expect("commits");
    (0..TASKS)
        .map(|t| {
            c.iter()
                .filter(|(task, at, _)| *task == t && *at > t_us)
                .map(|(_, at, _)| *at)
                .min()
        })
        .collect()
}

/// Commits per task after `from_us`, until `to_us`.
fn commits_between(commits: &Commits, from_us: u64, to_us: u64) -> Vec<usize> {
    let c = commits.lock().expect("commits");
    (0..TASKS)
        .map(|t| {
            c.iter()
                .filter(|(task, at, _)| *task == t && *at > from_us && *at <= to_us)
                .count()
        })
        .collect()
}

pub async fn run(picture: &Path) -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("streamshield-demo-")
        .tempdir()?;
    let server =
        find_server_binary().context("streamshield-server not found next to this program")?;
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 3, &server, &[], false)?;
    let endpoints = cluster.endpoints();
    let mut cc = ClientConfig::new(endpoints.clone());
    cc.deadline = Duration::from_secs(60);
    let client = Client::new(cc)?;
    let (leader, _) = client.wait_for_leader().await?;
    println!(
        "state cluster: 3 nodes on {}, leader node {leader}",
        endpoints.join(", ")
    );

    let job = window_sum::job();
    let cfg = JobConfig {
        job: window_sum::NAME.into(),
        name: "demo".into(),
        standbys: 1,
        parallelism: [("window".to_string(), TASKS)].into_iter().collect(),
        ..JobConfig::default()
    };
    job.setup(&client, &cfg).await?;
    let sup = Supervisor::start(
        &job,
        SupervisorConfig {
            job: cfg.clone(),
            endpoints: endpoints.clone(),
            worker_command: vec![std::env::current_exe()?.display().to_string()],
            status_file: Some(dir.path().join("status.json")),
        },
    )
    .await?;
    println!(
        "job windowed-sum: {TASKS} tasks and 1 warm standby; a per-user sum over 10 s event-time windows of {EVENTS} events from {USERS} users, arriving over {:.0} s",
        FEED_STEPS as f64 * FEED_EVERY.as_secs_f64()
    );

    let commits: Commits = Arc::default();
    let recoveries = Arc::new(Mutex::new(Vec::new()));
    let mut events = sup.subscribe();
    {
        let (commits, recoveries) = (commits.clone(), recoveries.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SupervisorEvent::Committed {
                        task,
                        at_us,
                        records,
                        ..
                    }) => commits
                        .lock()
                        .expect("commits")
                        .push((task, at_us, records)),
                    Ok(SupervisorEvent::Recovered(r)) => {
                        recoveries.lock().expect("recoveries").push(r)
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        });
    }

    let t0 = now_us();
    let input = window_sum::input(&cfg, EVENTS, USERS, SEED);
    let to = job.input_of(&cfg, 0);
    let feeder = {
        let client = client.clone();
        tokio::spawn(
            async move { append_in_steps(&client, &to, &input, FEED_STEPS, FEED_EVERY).await },
        )
    };

    let mut marks = Vec::new();
    let started = Instant::now();
    let progress = |label: &str| {
        let c = commits.lock().expect("commits");
        let per_task: Vec<String> = (0..TASKS)
            .map(|t| {
                let n = c.iter().filter(|(task, ..)| *task == t).count();
                format!("task {t}: {n:>3} epochs")
            })
            .collect();
        println!(
            "{:>5.1} s  {}  {label}",
            started.elapsed().as_secs_f64(),
            per_task.join("  ")
        );
    };
    let mut worker_killed = false;
    let mut leader_killed = false;
    while !feeder.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress("");
        let at = started.elapsed();
        if !worker_killed && at >= Duration::from_secs(6) {
            worker_killed = true;
            let status = sup.status().await.context("status")?;
            let pid = status
                .tasks
                .iter()
                .find(|t| t.task == 1)
                .and_then(|t| t.pid)
                .context("task 1 runs")?;
            let killed = now_us();
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            marks.push((secs(t0, killed), "worker of task 1 killed".to_string()));
            println!("        kill -9 of task 1's worker (pid {pid})");
            let deadline = Instant::now() + Duration::from_secs(60);
            let r = loop {
                let found = recoveries
                    .lock()
                    .expect("recoveries")
                    .iter()
                    .find(|r| r.old_pid == pid)
                    .cloned();
                if let Some(r) = found {
                    break r;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "task 1 did not recover within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let ms = |t: Option<u64>| t.map_or(f64::NAN, |t| t.saturating_sub(killed) as f64 / 1e3);
            // The second after the kill: the other tasks go on as before.
            tokio::time::sleep(
                Duration::from_secs(1).saturating_sub(Duration::from_micros(now_us() - killed)),
            )
            .await;
            let others = commits_between(&commits, killed, killed + 1_000_000);
            println!(
                "        task 1 recovered on the standby (pid {}): death seen after {:.1} ms, lease taken {:.1} ms, first new record {:.1} ms, first commit {:.1} ms after the kill; in the second after it, tasks 0-3 committed {}, {}, {}, {} epochs",
                r.new_pid, ms(Some(r.detected_us)), ms(r.attached_us), ms(r.first_record_us), ms(r.first_commit_us),
                others[0], others[1], others[2], others[3]
            );
        }
        if !leader_killed && at >= Duration::from_secs(12) {
            leader_killed = true;
            let (leader, _) = client.wait_for_leader().await?;
            let killed = now_us();
            cluster.kill(leader)?;
            marks.push((
                secs(t0, killed),
                format!("state leader (node {leader}) killed"),
            ));
            println!("        kill -9 of the state cluster's leader, node {leader}");
            let (new_leader, _) = client.wait_for_leader().await?;
            let elected = now_us();
            let resumed = loop {
                let firsts = first_commits_after(&commits, killed);
                if firsts.iter().all(Option::is_some) {
                    break firsts.into_iter().flatten().max().unwrap_or(killed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let restarts: u32 = sup
                .status()
                .await
                .context("status")?
                .tasks
                .iter()
                .map(|t| t.restarts)
                .sum();
            println!(
                "        node {new_leader} elected leader {:.0} ms after the kill; every task committing again after {:.0} ms; task restarts so far: {restarts} (the worker kill only)",
                (elected - killed) as f64 / 1e3,
                (resumed - killed) as f64 / 1e3
            );
            cluster.start_node(leader)?;
        }
    }
    feeder.await??;
    progress("all input written");

    let deadline = Instant::now() + Duration::from_secs(120);
    let verdict = loop {
        let v = window_sum::verify(&client, &job, &cfg, EVENTS, USERS, SEED).await?;
        if v.found >= v.expected || Instant::now() >= deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    progress("result complete");
    let exact = verdict.exact();
    if exact {
        println!(
            "exactly-once: the {} window sums equal the ground truth computed from the generator alone",
            verdict.found
        );
    } else {
        println!(
            "NOT EXACT: {} of {} window sums; first differences: {:?}",
            verdict.found, verdict.expected, verdict.problems
        );
    }

    let c = commits.lock().expect("commits").clone();
    let end = c.iter().map(|(_, at, _)| *at).max().unwrap_or(t0);
    let buckets = (secs(t0, end) / BUCKET_S).ceil() as usize + 1;
    let mut series = vec![vec![0.0; buckets]; TASKS as usize];
    let mut last = vec![0u64; TASKS as usize];
    for (task, at, records) in c {
        let t = task as usize;
        // `records` counts from the worker's attach: a drop is a takeover.
        let delta = if records >= last[t] {
            records - last[t]
        } else {
            records
        };
        last[t] = records;
        let b = ((secs(t0, at) / BUCKET_S) as usize).min(buckets - 1);
        series[t][b] += delta as f64 / BUCKET_S;
    }
    match crate::timeline::draw(picture, &series, BUCKET_S, &marks) {
        Ok(()) => println!("timeline: {}", picture.display()),
        Err(e) => println!("no timeline picture: {e}"),
    }
    sup.stop().await;
    cluster.stop_all(Duration::from_secs(5))?;
    Ok(exact)
}
