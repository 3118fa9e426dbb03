//! `bench --workload task-session`: stream tasks writing through
//! `TaskSession`s and committing an epoch every checkpoint interval.
//!
//! Each of `tasks` tasks owns an equal share of the job's 128 key groups
//! and writes random keys of its share as fast as `put` returns (buffered,
//! shipped in the background), committing every interval. What counts is
//! committed state updates: the puts of epochs whose commit was
//! acknowledged inside the measured window. Commit latency is from
//! `commit` called to acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cpu;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use streamshield_client::{key_group, pb, Client, Consistency, TaskSessionConfig, TaskSpec};
use tokio::sync::{mpsc, watch};

/// Key groups of the benchmark's job.
const KEY_GROUPS: u32 = 128;
/// Distinct keys each task writes.
const KEYS_PER_TASK: usize = 10_000;
const JOB: &str = "bench-tasks";

#[derive(Debug, Clone, Copy)]
pub struct TaskBenchShape {
    pub tasks: u32,
    pub checkpoint_interval: Duration,
    /// Updates per second of all tasks together; 0: unpaced.
    pub rate: u64,
    /// The sessions' batching, where not the client's defaults.
    pub linger: Option<Duration>,
    pub window: Option<usize>,
    pub batch_bytes: Option<usize>,
    pub commit_target: Option<Duration>,
    pub value_size: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub seed: u64,
}

/// What one run measured; the last line of a run, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TaskBenchReport {
    pub workload: String,
    pub target: String,
    pub tasks: u32,
    pub checkpoint_interval_ms: u64,
    /// The offered rate (`--task-rate`); 0: unpaced.
    pub offered_per_s: u64,
    pub value_size: usize,
    pub seconds: f64,
    /// Committed state updates.
    pub ops: u64,
    pub ops_per_s: f64,
    pub commits: u64,
    pub commit_p50_us: u64,
    pub commit_p99_us: u64,
    pub commit_max_us: u64,
    /// The part of a commit spent waiting for the epoch's batches in
    /// flight to be answered, before the commit (with the still-buffered
    /// tail) was sent.
    pub staged_wait_p50_us: u64,
    pub staged_wait_p99_us: u64,
    /// The whole machine's busy CPU time (servers, tasks, kernel) per
    /// committed update over the measured seconds: steadier than
    /// throughput on a shared VM. `None` without `/proc/stat`.
    pub cpu_us_per_update: Option<f64>,
    pub steal_pct: Option<f64>,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

struct TaskOutcome {
    committed: u64,
    hist: Histogram<u64>,
    staged_wait: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// `KEYS_PER_TASK` keys whose groups are in `groups`.
fn keys_in(groups: std::ops::Range<u32>, task: u32) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("t{task}/{i:010}").into_bytes())
        .filter(|k| groups.contains(&u32::from(key_group(k, KEY_GROUPS))))
        .take(KEYS_PER_TASK)
        .collect()
}

/// A task of the benchmark's job, its keys and its random source.
struct BenchTask {
    session: streamshield_client::TaskSession,
    keys: Vec<Vec<u8>>,
    rng: SmallRng,
}

async fn take_task(
    client: &Client,
    task: u32,
    groups: std::ops::Range<u32>,
    seed: u64,
    config: TaskSessionConfig,
) -> anyhow::Result<BenchTask> {
    let keys = keys_in(groups.clone(), task);
    let spec = TaskSpec {
        job: JOB.into(),
        task,
        key_groups: groups,
        input_partitions: Vec::new(),
    };
    let (session, _) = client.acquire(spec, config).await?;
    Ok(BenchTask {
        session,
        keys,
        rng: SmallRng::seed_from_u64(seed.wrapping_add(u64::from(task))),
    })
}

fn session_config(shape: &TaskBenchShape) -> TaskSessionConfig {
    let mut c = TaskSessionConfig::default();
    if let Some(l) = shape.linger {
        c.linger = l;
    }
    if let Some(w) = shape.window {
        c.window = w;
    }
    if let Some(b) = shape.batch_bytes {
        c.batch_bytes = b;
    }
    c.commit_target = shape.commit_target;
    c
}

fn new_outcome() -> TaskOutcome {
    TaskOutcome {
        committed: 0,
        hist: Histogram::new_with_bounds(1, 100_000_000, 3).expect("static bounds"),
        staged_wait: Histogram::new_with_bounds(1, 100_000_000, 3).expect("static bounds"),
        errors: 0,
        first_error: None,
    }
}

async fn one_task(
    client: Client,
    task: u32,
    groups: std::ops::Range<u32>,
    shape: TaskBenchShape,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<Option<Instant>>,
) -> anyhow::Result<TaskOutcome> {
    let taken = take_task(&client, task, groups, shape.seed, session_config(&shape)).await;
    // Said even when it failed: the others do not wait for it.
    let _ = ready.send(()).await;
    let BenchTask {
        session: mut s,
        keys,
        mut rng,
    } = taken?;
    let start_at = (*go.wait_for(Option::is_some).await?).unwrap_or_else(Instant::now);
    let mut value = vec![0u8; shape.value_size];
    let measure_from = start_at + shape.warmup;
    let end = measure_from + shape.measure;
    let mut out = new_outcome();
    let mut in_epoch = 0u64;
    let mut tick = CheckpointTick::new(Instant::now(), shape.checkpoint_interval);
    // Paced: put `n` is due `n / per_task` seconds after the first; a task
    // that fell behind (during a commit) catches up at full speed.
    let per_task = shape.rate as f64 / f64::from(shape.tasks.max(1));
    let paced_from = Instant::now();
    let mut puts = 0u64;
    loop {
        let now = Instant::now();
        if now >= tick.due() || now >= end {
            if in_epoch == 0 {
                // As the operator runtime's tasks: an epoch that holds
                // nothing is not committed.
                if now >= end {
                    return Ok(out);
                }
                tick.skip(now);
                continue;
            }
            let started = Instant::now();
            // `commit` waits for the batches in flight first; done here,
            // the two parts of its latency are told apart.
            let committed = async {
                s.wait_staged().await;
                let waited = started.elapsed();
                s.commit(Vec::new(), Vec::new()).await?;
                Ok::<_, streamshield_client::ClientError>(waited)
            }
            .await;
            match committed {
                Ok(waited) => {
                    let done = Instant::now();
                    if started >= measure_from && done <= end {
                        out.committed += in_epoch;
                        out.hist
                            .record(started.elapsed().as_micros().max(1) as u64)
                            .ok();
                        out.staged_wait
                            .record(waited.as_micros().max(1) as u64)
                            .ok();
                    }
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e.to_string());
                }
            }
            in_epoch = 0;
            tick.committed(started, Instant::now());
            if Instant::now() >= end {
                return Ok(out);
            }
            continue;
        }
        if per_task > 0.0 {
            let due = paced_from + Duration::from_secs_f64(puts as f64 / per_task);
            if due > now {
                tokio::time::sleep_until(due.min(tick.due()).min(end).into()).await;
                continue;
            }
        }
        let key = &keys[rng.random_range(0..keys.len())];
        rng.fill(&mut value[..]);
        s.put("state", key.clone(), value.clone()).await?;
        in_epoch += 1;
        puts += 1;
        // Let the pipeline's sends and the other tasks run between puts.
        if in_epoch.is_multiple_of(256) {
            tokio::task::yield_now().await;
        }
    }
}

/// When a benchmark task commits next: as the operator runtime's
/// checkpoint tick (`tokio::time::interval` with
/// `MissedTickBehavior::Delay`), which commits only an epoch that holds
/// something. A commit that outlasted the interval moves the next one an
/// interval past its end; committing at once would commit an epoch of the
/// few writes made since, or none.
#[derive(Debug, Clone, Copy)]
struct CheckpointTick {
    due: Instant,
    interval: Duration,
}

impl CheckpointTick {
    fn new(now: Instant, interval: Duration) -> Self {
        Self {
            due: now + interval,
            interval,
        }
    }

    fn due(&self) -> Instant {
        self.due
    }

    /// The tick came with nothing to commit.
    fn skip(&mut self, now: Instant) {
        self.due = now + self.interval;
    }

    /// A commit that started at `started` (on the tick) ended at `ended`.
    fn committed(&mut self, started: Instant, ended: Instant) {
        self.due = started + self.interval;
        if self.due <= ended {
            self.due = ended + self.interval;
        }
    }
}

/// Runs the benchmark against the cluster behind `client`.
pub async fn run(client: &Client, shape: TaskBenchShape) -> anyhow::Result<TaskBenchReport> {
    match client.create_job(JOB, KEY_GROUPS).await {
        Ok(_) | Err(streamshield_client::ClientError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let tasks = shape.tasks.clamp(1, KEY_GROUPS);
    let per = KEY_GROUPS / tasks;
    // The clock starts once every task holds its lease and its keys
    // (finding a task's keys costs more the fewer groups it owns: at 128
    // tasks, seconds of the bench's CPU).
    let (ready_tx, mut ready) = mpsc::channel(tasks as usize);
    let (go_tx, go) = watch::channel(None);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let end = if t + 1 == tasks {
                KEY_GROUPS
            } else {
                (t + 1) * per
            };
            let (ready, go) = (ready_tx.clone(), go.clone());
            tokio::spawn(one_task(client.clone(), t, t * per..end, shape, ready, go))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..tasks {
        if ready.recv().await.is_none() {
            break;
        }
    }
    let start_at = Instant::now();
    go_tx.send_replace(Some(start_at));
    let cpu_window = tokio::spawn(async move {
        tokio::time::sleep_until((start_at + shape.warmup).into()).await;
        let from = cpu::sample();
        tokio::time::sleep(shape.measure).await;
        Some(cpu::sample()?.since(&from?))
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("static bounds");
    let mut staged_wait = hist.clone();
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    for h in handles {
        let o = h.await??;
        ops += o.committed;
        errors += o.errors;
        hist.add(&o.hist).expect("same bounds");
        staged_wait.add(&o.staged_wait).expect("same bounds");
        if first_error.is_none() {
            first_error = o.first_error;
        }
    }
    let secs = shape.measure.as_secs_f64();
    let cpu = cpu_window.await.ok().flatten();
    let q = |p: f64| quantile(&hist, p);
    Ok(TaskBenchReport {
        workload: "task-session".into(),
        target: "streamshield".into(),
        tasks,
        checkpoint_interval_ms: shape.checkpoint_interval.as_millis() as u64,
        offered_per_s: shape.rate,
        value_size: shape.value_size,
        seconds: secs,
        ops,
        ops_per_s: ops as f64 / secs,
        commits: hist.len(),
        commit_p50_us: q(0.5),
        commit_p99_us: q(0.99),
        commit_max_us: if hist.is_empty() { 0 } else { hist.max() },
        staged_wait_p50_us: quantile(&staged_wait, 0.5),
        staged_wait_p99_us: quantile(&staged_wait, 0.99),
        cpu_us_per_update: cpu.filter(|_| ops > 0).map(|c| c.busy_s * 1e6 / ops as f64),
        steal_pct: cpu.map(|c| c.steal_share * 100.0),
        errors,
        first_error,
    })
}

fn quantile(h: &Histogram<u64>, p: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(p)
    }
}

/// A job's lease on every task is released so the next run can take them.
pub async fn release_all(client: &Client) {
    if let Ok(list) = client.list_tasks(JOB, Consistency::Linearizable).await {
        for t in list.tasks.iter().filter(|t| !t.released) {
            let _ = client
                .release_lease(pb::ReleaseLeaseRequest {
                    shard: 0,
                    job: JOB.into(),
                    task: t.task,
                    generation: t.generation,
                })
                .await;
        }
    }
}

/// What `bench --workload epoch-commit` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LargeEpochReport {
    pub workload: String,
    pub epoch_bytes: u64,
    pub value_size: usize,
    pub rounds: u32,
    /// From `commit` called (every write already staged) to acknowledged.
    pub commit_p50_us: u64,
    pub commit_max_us: u64,
    /// From `commit` called to a read of the epoch's last key answered: an
    /// epoch promoted in steps after its commit is readable only then.
    pub readable_p50_us: u64,
    pub readable_max_us: u64,
    /// The small tasks' commits while the large ones ran.
    pub others_tasks: u32,
    pub others_commit_p50_us: u64,
    pub others_commit_p99_us: u64,
    pub others_commit_max_us: u64,
    pub errors: u64,
}

/// One task stages `epoch_bytes` of writes and commits them, `rounds`
/// times, while `others` tasks commit small epochs every interval: how
/// long a large commit takes, and what it does to everyone else's.
pub async fn large_epochs(
    client: &Client,
    epoch_bytes: u64,
    rounds: u32,
    others: u32,
    shape: TaskBenchShape,
) -> anyhow::Result<LargeEpochReport> {
    match client.create_job(JOB, KEY_GROUPS).await {
        Ok(_) | Err(streamshield_client::ClientError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let others = others.clamp(1, KEY_GROUPS - 1);
    // Task 0 (the large one) gets half the groups, the others share the rest.
    let half = KEY_GROUPS / 2;
    let per = (KEY_GROUPS - half) / others;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut small = Vec::new();
    for t in 0..others {
        let start = half + t * per;
        let end = if t + 1 == others {
            KEY_GROUPS
        } else {
            start + per
        };
        let (client, stop) = (client.clone(), stop.clone());
        small.push(tokio::spawn(async move {
            let mut shape = shape;
            shape.warmup = Duration::ZERO;
            shape.measure = Duration::from_secs(3600);
            small_until_stopped(client, t + 1, start..end, shape, stop).await
        }));
    }
    let spec = TaskSpec {
        job: JOB.into(),
        task: 0,
        key_groups: 0..half,
        input_partitions: Vec::new(),
    };
    let config = TaskSessionConfig {
        batch_bytes: 1 << 20,
        ..Default::default()
    };
    let (mut s, _) = client.acquire(spec, config).await?;
    let mut rng = SmallRng::seed_from_u64(shape.seed);
    let mut value = vec![0u8; shape.value_size.max(1)];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("static bounds");
    let mut readable = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("static bounds");
    let mut errors = 0;
    let per_epoch = epoch_bytes / value.len() as u64;
    for _ in 0..rounds.max(1) {
        // Distinct keys of the task's groups: the commit's work is per key.
        let mut keys = (0u64..)
            .map(|j| format!("big/{j:012}").into_bytes())
            .filter(|k| u32::from(key_group(k, KEY_GROUPS)) < half);
        let mut last = Vec::new();
        for _ in 0..per_epoch {
            let key = keys.next().expect("endless");
            rng.fill(&mut value[..]);
            last.clone_from(&key);
            s.put("state", key, value.clone()).await?;
        }
        s.flush().await?;
        // Staged first, so the commit alone is timed.
        s.wait_staged().await;
        let started = Instant::now();
        match s.commit(Vec::new(), Vec::new()).await {
            Ok(_) => {
                hist.record(started.elapsed().as_micros().max(1) as u64)
                    .ok();
                match client
                    .get(JOB, "state", last, Consistency::Linearizable)
                    .await
                {
                    Ok(Some(_)) => {
                        readable
                            .record(started.elapsed().as_micros().max(1) as u64)
                            .ok();
                    }
                    _ => errors += 1,
                }
            }
            Err(_) => errors += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut others_hist =
        Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("static bounds");
    for h in small {
        let o = h.await??;
        errors += o.errors;
        others_hist.add(&o.hist).expect("same bounds");
    }
    let q = quantile;
    Ok(LargeEpochReport {
        workload: "epoch-commit".into(),
        epoch_bytes,
        value_size: value.len(),
        rounds: rounds.max(1),
        commit_p50_us: q(&hist, 0.5),
        commit_max_us: if hist.is_empty() { 0 } else { hist.max() },
        readable_p50_us: q(&readable, 0.5),
        readable_max_us: if readable.is_empty() {
            0
        } else {
            readable.max()
        },
        others_tasks: others,
        others_commit_p50_us: q(&others_hist, 0.5),
        others_commit_p99_us: q(&others_hist, 0.99),
        others_commit_max_us: if others_hist.is_empty() {
            0
        } else {
            others_hist.max()
        },
        errors,
    })
}

/// A small task's loop ([`one_task`]'s) until `stop`.
async fn small_until_stopped(
    client: Client,
    task: u32,
    groups: std::ops::Range<u32>,
    shape: TaskBenchShape,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<TaskOutcome> {
    let BenchTask {
        session: mut s,
        keys,
        mut rng,
    } = take_task(
        &client,
        task,
        groups,
        shape.seed,
        TaskSessionConfig::default(),
    )
    .await?;
    let mut out = new_outcome();
    let mut value = vec![0u8; shape.value_size.max(1)];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // A modest epoch: 100 updates, then the commit.
        for _ in 0..100 {
            rng.fill(&mut value[..]);
            let key = keys[rng.random_range(0..keys.len())].clone();
            s.put("state", key, value.clone()).await?;
        }
        let started = Instant::now();
        match s.commit(Vec::new(), Vec::new()).await {
            Ok(_) => {
                out.hist
                    .record(started.elapsed().as_micros().max(1) as u64)
                    .ok();
            }
            Err(_) => out.errors += 1,
        }
        tokio::time::sleep(shape.checkpoint_interval).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::CheckpointTick;
    use std::time::{Duration, Instant};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_commit_within_the_interval_keeps_the_cadence() {
        let t0 = Instant::now();
        let mut tick = CheckpointTick::new(t0, 100 * MS);
        assert_eq!(tick.due(), t0 + 100 * MS);
        tick.committed(t0 + 100 * MS, t0 + 130 * MS);
        assert_eq!(tick.due(), t0 + 200 * MS);
    }

    #[test]
    fn a_commit_longer_than_the_interval_leaves_a_whole_interval_after_it() {
        let t0 = Instant::now();
        let mut tick = CheckpointTick::new(t0, 100 * MS);
        tick.committed(t0 + 100 * MS, t0 + 340 * MS);
        assert_eq!(
            tick.due(),
            t0 + 440 * MS,
            "not due at once: the next epoch gets an interval of writes"
        );
    }

    #[test]
    fn an_empty_tick_waits_a_whole_interval() {
        let t0 = Instant::now();
        let mut tick = CheckpointTick::new(t0, 100 * MS);
        tick.skip(t0 + 150 * MS);
        assert_eq!(tick.due(), t0 + 250 * MS);
    }
}
