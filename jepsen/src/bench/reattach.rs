//! `bench --workload reattach`: how soon a killed task is working again.
//!
//! A 3-node cluster runs the runtime's `keyed-count` job with two tasks
//! while a producer appends input at a steady rate. Task 0's key groups
//! also hold `--state-size` bytes of other state (table `ballast`, loaded
//! through a task session first). Then, `--kills` times, its worker gets
//! `kill -9`; reattach latency is from the kill to the replacement's first
//! handled record, and to its first commit holding new input. Modes: a
//! warm standby takes over (default), a worker started after the death
//! (`--no-standby`), or a replacement that first reads all of its task's
//! state, as a checkpoint-restore system does (`--baseline restore`).
//! `--leader-kills` then kills the state cluster's leader that many times
//! and reports how long commits stall. Last, the input is checked against
//! the result (exactly-once) and a burst measures the job's throughput.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use streamshield_client::local::LocalCluster;
use streamshield_client::{
    key_group, pb, Client, ClientConfig, Producer, TaskSessionConfig, TaskSpec,
};
use streamshield_runtime::examples::keyed_count;
use streamshield_runtime::task::now_us;
use streamshield_runtime::{JobConfig, Supervisor, SupervisorConfig, SupervisorEvent};
use tokio::sync::broadcast;

/// The bench's input rate, records per second.
const INPUT_RATE: u64 = 2_000;
/// Distinct keys of the input.
const KEYS: u64 = 1_000;
const BALLAST_VALUE: usize = 64 << 10;
const BURST: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct ReattachOptions {
    pub state_bytes: u64,
    pub kills: u32,
    pub standby: bool,
    pub restore: bool,
    pub leader_kills: u32,
    /// After the kills: stop the job at a committed epoch and start it with
    /// this many tasks.
    pub rescale_to: Option<u32>,
    pub server_bin: PathBuf,
    pub server_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReattachReport {
    pub workload: String,
    pub state_bytes: u64,
    pub mode: String,
    pub kills: u32,
    /// Kill to the replacement's first handled record.
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Kill to the replacement's first commit holding new input.
    pub first_commit_p50_ms: f64,
    pub first_commit_p99_ms: f64,
    pub exactly_once: bool,
    /// End to end, a burst of input through the job.
    pub records_per_s: f64,
    pub leader_kills: u32,
    /// Leader kill to every task having committed again.
    pub stall_p50_ms: f64,
    pub stall_p99_ms: f64,
    pub stall_max_ms: f64,
    /// Leader kill to a node reporting itself leader of a newer term: the
    /// store's share of the stall.
    pub election_p50_ms: f64,
    pub election_p99_ms: f64,
    /// From the stop of the job to every task of the new parallelism
    /// having committed new input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_to: Option<u32>,
}

/// Nearest-rank percentile of `xs` (sorted here).
fn pct(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i]
}

/// Where the runtime's binary is: `$STREAMSHIELD_RUNTIME_BIN`, else next
/// to this program.
fn runtime_binary() -> anyhow::Result<PathBuf> {
    streamshield_client::local::find_binary("streamshield-runtime", "STREAMSHIELD_RUNTIME_BIN")
        .context(
            "streamshield-runtime not found next to this program (cargo build --workspace --bins)",
        )
}

/// Writes `bytes` of values into table `ballast` of task 0's key groups,
/// committed in epochs of 16 MiB.
async fn load_ballast(client: &Client, cfg: &JobConfig, bytes: u64) -> anyhow::Result<()> {
    let store_job = keyed_count::job().store_job(cfg, 0);
    let groups = cfg.layout().groups_of_task(0, 2);
    let spec = TaskSpec {
        job: store_job,
        task: 0,
        key_groups: groups.clone(),
        input_partitions: Vec::new(),
    };
    let (mut s, _) = client.acquire(spec, TaskSessionConfig::default()).await?;
    let value = vec![0x5a; BALLAST_VALUE.min(bytes.max(1) as usize)];
    let (mut written, mut epoch_bytes, mut i) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while written < bytes {
        let key = format!("b{i}");
        i += 1;
        if !groups.contains(&u32::from(key_group(key.as_bytes(), cfg.key_groups))) {
            continue;
        }
        s.put("ballast", key, value.clone()).await?;
        written += value.len() as u64;
        epoch_bytes += value.len() as u64;
        if epoch_bytes >= 16 << 20 {
            s.commit(Vec::new(), Vec::new()).await?;
            epoch_bytes = 0;
        }
    }
    s.commit(Vec::new(), Vec::new()).await?;
    s.release().await?;
    eprintln!(
        "loaded {} MB of task state in {:.1} s",
        written / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Appends the input, `rate` records a second, each partition's batches
/// deduplicated by producer sequence so that a retry across a leader
/// change appends nothing twice. Returns how many were appended.
async fn produce(
    client: Client,
    cfg: JobConfig,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let to = keyed_count::job().input_of(&cfg, 0);
    let mut seqs = vec![0u64; cfg.partitions as usize];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let n = (rate.load(Ordering::Relaxed) / 50).max(1);
        let from = next.load(Ordering::Relaxed);
        let mut parts: Vec<Vec<pb::Record>> = vec![Vec::new(); cfg.partitions as usize];
        for i in from..from + n {
            let (p, r) = keyed_count::record(&cfg, i, KEYS);
            parts[p as usize].push(r);
        }
        for (p, records) in parts.into_iter().enumerate() {
            for chunk in records.chunks(5_000) {
                seqs[p] += 1;
                let producer = Producer {
                    id: p as u64 + 1,
                    seq: seqs[p],
                };
                loop {
                    match client
                        .append(
                            &to.job,
                            &to.stream,
                            p as u32,
                            chunk.to_vec(),
                            Some(producer),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => {
                            eprintln!("append: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
        next.store(from + n, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits until every node has applied what was committed when it was
/// called; how long that took, in ms. A follower still applying a backlog
/// (the ballast of a large state) must finish it before it can serve as
/// leader, which would count as stall of the election's making.
async fn applied_everywhere(client: &Client) -> f64 {
    let started = Instant::now();
    let statuses = client.cluster_status().await;
    let committed = statuses
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.committed_index)
        .max()
        .unwrap_or(0);
    loop {
        let lagging = client
            .cluster_status()
            .await
            .into_iter()
            .any(|(_, r)| r.map_or(true, |s| s.last_applied < committed));
        if !lagging || started.elapsed() > Duration::from_secs(60) {
            return started.elapsed().as_secs_f64() * 1e3;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl ReattachReport {
    /// The leader kills' figures, in words.
    pub fn stall_summary(&self) -> String {
        format!(
            "commits stalled p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; a new leader after p50 {:.0} ms, p99 {:.0} ms",
            self.stall_p50_ms,
            self.stall_p99_ms,
            self.stall_max_ms,
            self.election_p50_ms,
            self.election_p99_ms
        )
    }
}

/// Polls the surviving nodes until one of them is leader in place of
/// `old`; the time (µs, as `now_us`) it was first seen.
async fn new_leader_at(client: Client, old: u64) -> u64 {
    loop {
        for (_, r) in client.cluster_status().await {
            if let Ok(s) = r {
                if s.role == pb::Role::Leader as i32 && s.id != old {
                    return now_us();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits for `want`, skipping other events.
async fn wait_for<T>(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    within: Duration,
    mut want: impl FnMut(&SupervisorEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let found = tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = want(&e) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("supervisor events ended: {e}")),
            }
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => bail!("nothing within {within:?}"),
    }
}

pub async fn run(dir: &Path, o: &ReattachOptions) -> anyhow::Result<ReattachReport> {
    let mut cluster = LocalCluster::start(
        &dir.join("cluster"),
        3,
        &o.server_bin,
        &o.server_args,
        false,
    )?;
    let endpoints = cluster.endpoints();
    let mut cc = ClientConfig::new(endpoints.clone());
    cc.deadline = Duration::from_secs(60);
    let client = Client::new(cc)?;
    client.wait_for_leader().await?;
    let job = keyed_count::job();
    let cfg = JobConfig {
        job: keyed_count::NAME.into(),
        name: "reattach".into(),
        standbys: u32::from(o.standby),
        restore_tables: if o.restore {
            vec!["ballast".into()]
        } else {
            Vec::new()
        },
        parallelism: [("count".to_string(), 2)].into_iter().collect(),
        ..JobConfig::default()
    };
    job.setup(&client, &cfg).await?;
    load_ballast(&client, &cfg, o.state_bytes).await?;

    let sup = Supervisor::start(
        &job,
        SupervisorConfig {
            job: cfg.clone(),
            endpoints: endpoints.clone(),
            worker_command: vec![runtime_binary()?.display().to_string()],
            status_file: None,
        },
    )
    .await?;
    let mut events = sup.subscribe();
    let rate = Arc::new(AtomicU64::new(INPUT_RATE));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        client.clone(),
        cfg.clone(),
        rate.clone(),
        stop.clone(),
        next.clone(),
    ));
    for task in 0..2 {
        wait_for(&mut events, Duration::from_secs(60), |e| match e {
            SupervisorEvent::Committed {
                task: t, records, ..
            } if *t == task && *records > 0 => Some(()),
            _ => None,
        })
        .await
        .with_context(|| format!("task {task} never committed"))?;
    }

    let (mut first_record, mut first_commit) = (Vec::new(), Vec::new());
    for k in 0..o.kills {
        // The victim is running, and with standbys one is warm.
        let pid = loop {
            let s = sup.status().await.context("status")?;
            let t0 = s.tasks.iter().find(|t| t.task == 0).context("task 0")?;
            if let Some(pid) = t0.pid {
                if !o.standby || s.standbys >= 1 {
                    break pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let killed_at = now_us();
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let r = wait_for(&mut events, Duration::from_secs(120), |e| match e {
            SupervisorEvent::Recovered(r) if r.task == 0 && r.old_pid == pid => Some(r.clone()),
            _ => None,
        })
        .await
        .with_context(|| format!("kill {k}: task 0 did not recover"))?;
        let ms = |t: Option<u64>| t.map_or(f64::NAN, |t| t.saturating_sub(killed_at) as f64 / 1e3);
        first_record.push(ms(r.first_record_us));
        first_commit.push(ms(r.first_commit_us));
        eprintln!(
            "kill {}: death seen {:.1} ms, assigned {:.1} ms, lease held {:.1} ms, first record {:.1} ms, first commit {:.1} ms ({})",
            k + 1,
            ms(Some(r.detected_us)),
            ms(Some(r.assigned_us)),
            ms(r.attached_us),
            ms(r.first_record_us),
            ms(r.first_commit_us),
            if r.cold { "new worker" } else { "standby" }
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut stalls = Vec::new();
    let mut elections = Vec::new();
    for k in 0..o.leader_kills {
        let (leader, _) = client.wait_for_leader().await?;
        let behind = applied_everywhere(&client).await;
        // Both tasks commit steadily before the kill.
        let settled = now_us();
        for task in 0..2 {
            wait_for(&mut events, Duration::from_secs(60), |e| match e {
                SupervisorEvent::Committed { task: t, at_us, .. }
                    if *t == task && *at_us > settled =>
                {
                    Some(())
                }
                _ => None,
            })
            .await?;
        }
        let killed_at = now_us();
        cluster.kill(leader)?;
        let elected = tokio::spawn(new_leader_at(client.clone(), leader));
        let mut resumed = [None, None];
        while resumed.iter().any(Option::is_none) {
            let (task, at) = wait_for(&mut events, Duration::from_secs(60), |e| match e {
                SupervisorEvent::Committed { task, at_us, .. } if *at_us > killed_at => {
                    Some((*task, *at_us))
                }
                _ => None,
            })
            .await?;
            resumed[task as usize].get_or_insert(at);
        }
        let stall = resumed.iter().flatten().max().copied().unwrap_or(killed_at) - killed_at;
        stalls.push(stall as f64 / 1e3);
        let election = elected.await?.saturating_sub(killed_at) as f64 / 1e3;
        elections.push(election);
        eprintln!(
            "leader kill {}: a new leader after {election:.1} ms, commits resumed after {:.1} ms (the followers were {behind:.0} ms behind in applying)",
            k + 1,
            stall as f64 / 1e3
        );
        cluster.start_node(leader)?;
        client.wait_for_leader().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut rescale_ms = None;
    let sup = match o.rescale_to {
        None => sup,
        Some(to) => {
            let stopped_at = Instant::now();
            sup.stop().await;
            let mut cfg = cfg.clone();
            cfg.parallelism = [("count".to_string(), to)].into_iter().collect();
            let sup = Supervisor::start(
                &job,
                SupervisorConfig {
                    job: cfg,
                    endpoints: endpoints.clone(),
                    worker_command: vec![runtime_binary()?.display().to_string()],
                    status_file: None,
                },
            )
            .await?;
            let mut events = sup.subscribe();
            let mut working = std::collections::BTreeSet::new();
            while working.len() < to as usize {
                let task = wait_for(&mut events, Duration::from_secs(120), |e| match e {
                    SupervisorEvent::Committed { task, records, .. } if *records > 0 => Some(*task),
                    _ => None,
                })
                .await
                .context("the rescaled job did not commit")?;
                working.insert(task);
            }
            let ms = stopped_at.elapsed().as_secs_f64() * 1e3;
            eprintln!("rescaled from 2 to {to} tasks: every task committing new input {ms:.0} ms after the stop began");
            rescale_ms = Some(ms);
            sup
        }
    };

    // A burst: the job's end-to-end throughput.
    stop.store(true, Ordering::Relaxed);
    producer.await??;
    let sent = next.load(Ordering::Relaxed);
    let settle = |n: u64| {
        let (client, cfg) = (&client, &cfg);
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let v = keyed_count::verify(client, cfg, n, KEYS).await?;
                if v.found >= v.expected || Instant::now() >= deadline {
                    return anyhow::Ok(v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let before = settle(sent).await?;
    let to = job.input_of(&cfg, 0);
    let mut parts: Vec<Vec<pb::Record>> = vec![Vec::new(); cfg.partitions as usize];
    for i in sent..sent + BURST {
        let (p, r) = keyed_count::record(&cfg, i, KEYS);
        parts[p as usize].push(r);
    }
    let started = Instant::now();
    for (p, records) in parts.into_iter().enumerate() {
        for chunk in records.chunks(5_000) {
            client
                .append(&to.job, &to.stream, p as u32, chunk.to_vec(), None)
                .await?;
        }
    }
    let after = settle(sent + BURST).await?;
    let records_per_s = BURST as f64 / started.elapsed().as_secs_f64();
    if !before.exact() {
        eprintln!("before the burst: {before:?}");
    }
    if !after.exact() {
        eprintln!("after the burst: {after:?}");
    }
    sup.stop().await;
    drop(cluster);

    Ok(ReattachReport {
        workload: "reattach".into(),
        state_bytes: o.state_bytes,
        mode: match (o.restore, o.standby) {
            (true, true) => "restore".into(),
            (true, false) => "restore-cold".into(),
            (false, true) => "standby".into(),
            (false, false) => "cold".into(),
        },
        kills: o.kills,
        min_ms: pct(&mut first_record, 0.0),
        p50_ms: pct(&mut first_record, 0.5),
        p99_ms: pct(&mut first_record, 0.99),
        max_ms: pct(&mut first_record, 1.0),
        first_commit_p50_ms: pct(&mut first_commit, 0.5),
        first_commit_p99_ms: pct(&mut first_commit, 0.99),
        exactly_once: before.exact() && after.exact(),
        records_per_s,
        leader_kills: o.leader_kills,
        stall_p50_ms: pct(&mut stalls, 0.5),
        stall_p99_ms: pct(&mut stalls, 0.99),
        stall_max_ms: pct(&mut stalls, 1.0),
        election_p50_ms: pct(&mut elections, 0.5),
        election_p99_ms: pct(&mut elections, 0.99),
        rescale_ms,
        rescale_to: o.rescale_to,
    })
}
