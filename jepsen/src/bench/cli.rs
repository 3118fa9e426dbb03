//! `streamshield-jepsen bench` and `streamshield-jepsen matrix`: flags and
//! what they run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use streamshield_client::Consistency;

use super::matrix::{self, MatrixOptions};
use super::runner::{Report, RunShape};
use super::target::TargetKind;
use super::task_session::{self, TaskBenchShape};
use super::workload::{KeySpace, WorkloadKind};
use super::{limits, median_report, table_header, table_row, ClusterSpec, Clusters};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadFlag {
    SyncPut,
    Get,
    Mixed,
    Limits,
    /// Tasks writing through `TaskSession`s, an epoch commit every
    /// `--checkpoint-interval`; with sync put at `--clients` on the same
    /// cluster as the baseline.
    TaskSession,
    /// One task committing epochs of `--epoch-bytes` of staged writes
    /// while `--tasks` others commit small ones: the large commit's
    /// latency and the others' meanwhile.
    EpochCommit,
    /// One producer appending to a stream, one subscriber following it:
    /// when each record reaches the subscriber.
    Subscribe,
    /// The operator runtime: `--kills` times `kill -9` of a task's worker,
    /// the time until its replacement handles a record.
    Reattach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BaselineFlag {
    /// The replacement reads all of its task's state before its first
    /// record, as a checkpoint-restore system does.
    Restore,
}

/// `10MB`, `1GB`, `512KB` or bytes (powers of ten).
fn parse_size(s: &str) -> Result<u64, String> {
    let upper = s.to_ascii_uppercase();
    let (n, mult) = [
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(u, m)| upper.strip_suffix(u).map(|n| (n.to_string(), *m)))
    .unwrap_or((upper.clone(), 1));
    n.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not like 10MB or 1GB"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyFlag {
    Linearizable,
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetFlag {
    Streamshield,
    Etcd,
    /// Both, alternating, from this one process.
    Both,
}

/// Where the clusters are, or how to start them.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Nodes of a running cluster of the target (comma-separated
    /// host:port); without it the driver starts a local 3-node cluster.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// With `--target both`: etcd's client endpoints.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Parent of the clusters' data directories (default: the system's
    /// temporary directory). Both targets' data lands on the same disk.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// An extra flag for the StreamShield servers this driver starts
    /// (repeatable), e.g. `--server-arg=--raft-heartbeat-ms=50`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Start the StreamShield cluster with mutual TLS (a throwaway CA)
    /// instead of `--insecure`.
    #[arg(long)]
    pub tls: bool,
}

/// What every closed-loop run shares.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Keys written and read, uniformly at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "sync-put")]
    pub workload: WorkloadFlag,
    /// For `--workload get`.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyFlag,
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    #[arg(long, value_enum, default_value = "streamshield")]
    pub target: TargetFlag,
    /// StreamShield's client sends every operation as its own call, as
    /// etcd's client does, instead of sending concurrent ones together.
    #[arg(long)]
    pub no_coalesce: bool,
    /// Runs per target; with `both` the targets alternate.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// For `--workload task-session`: tasks writing at once.
    #[arg(long, default_value_t = 8)]
    pub tasks: u32,
    /// For `--workload task-session`: how often each task commits, e.g.
    /// `100ms` or `1s`.
    #[arg(long, default_value = "100ms", value_parser = parse_interval)]
    pub checkpoint_interval: Duration,
    /// For `--workload task-session`: updates per second offered by all
    /// tasks together, spread evenly (0: each task as fast as `put`
    /// returns, which saturates the cluster). Commit latency below
    /// saturation is what a job running under its capacity sees.
    #[arg(long, default_value_t = 0)]
    pub task_rate: u64,
    /// For `--workload task-session`: the sessions' `linger`, e.g. `5ms`
    /// (default: the client's).
    #[arg(long, value_parser = parse_interval)]
    pub task_linger: Option<Duration>,
    /// For `--workload task-session`: the sessions' `window` of batches
    /// in flight (default: the client's).
    #[arg(long)]
    pub task_window: Option<usize>,
    /// For `--workload task-session`: the sessions' `batch_bytes`, e.g.
    /// `64KB` (default: the client's).
    #[arg(long, value_parser = parse_size)]
    pub task_batch_bytes: Option<u64>,
    /// For `--workload task-session`: the sessions' `commit_target`, e.g.
    /// `20ms`: batches sized so that what is in flight drains within it
    /// (default: none, batches of `batch_bytes`).
    #[arg(long, value_parser = parse_interval)]
    pub task_commit_target: Option<Duration>,
    /// For `--workload epoch-commit`: bytes of values staged per large
    /// epoch.
    #[arg(long, default_value_t = 1 << 20)]
    pub epoch_bytes: u64,
    /// For `--workload reattach`: the killed task's state, e.g. 10MB.
    #[arg(long, default_value = "10MB", value_parser = parse_size)]
    pub state_size: u64,
    /// For `--workload reattach`: worker kills.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// For `--workload reattach`: no warm standby; a worker starts after
    /// each death.
    #[arg(long)]
    pub no_standby: bool,
    /// For `--workload reattach`: measure the restore-from-checkpoint
    /// baseline instead.
    #[arg(long, value_enum)]
    pub baseline: Option<BaselineFlag>,
    /// For `--workload reattach`: state-cluster leader kills after the
    /// worker kills, for the tasks' commit stall.
    #[arg(long, default_value_t = 0)]
    pub leader_kills: u32,
    /// For `--workload reattach`: after the kills, stop the job and start
    /// it with this many tasks (it runs with 2); reports how long.
    #[arg(long)]
    pub rescale_to: Option<u32>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MatrixArgs {
    /// Rounds per row and target (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl LoadArgs {
    fn space(&self) -> KeySpace {
        KeySpace {
            keys: self.keys.max(1),
            value_size: self.value_size,
        }
    }
}

/// `100ms`, `2s` or a bare number of milliseconds.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not like 100ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?}: the unit is ms or s")),
    }
}

fn work_dir(c: &ClusterArgs) -> anyhow::Result<tempfile::TempDir> {
    let parent = c.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    Ok(tempfile::Builder::new()
        .prefix("streamshield-bench-")
        .tempdir_in(parent)?)
}

fn spec(c: &ClusterArgs, target: TargetFlag) -> anyhow::Result<ClusterSpec> {
    let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let mut s = ClusterSpec {
        server_bin: streamshield_client::local::find_server_binary(),
        server_args: c.server_args.clone(),
        tls: c.tls,
        ..Default::default()
    };
    match target {
        TargetFlag::Etcd => {
            if !c.etcd_endpoints.is_empty() {
                bail!("with --target etcd, give etcd's nodes as --endpoints");
            }
            s.etcd_endpoints = some(&c.endpoints);
        }
        TargetFlag::Streamshield | TargetFlag::Both => {
            s.streamshield_endpoints = some(&c.endpoints);
            s.etcd_endpoints = some(&c.etcd_endpoints);
        }
    }
    Ok(s)
}

fn targets(t: TargetFlag, no_coalesce: bool) -> Vec<TargetKind> {
    let ours = if no_coalesce {
        TargetKind::StreamshieldUncoalesced
    } else {
        TargetKind::Streamshield
    };
    match t {
        TargetFlag::Streamshield => vec![ours],
        TargetFlag::Etcd => vec![TargetKind::Etcd],
        TargetFlag::Both => vec![ours, TargetKind::Etcd],
    }
}

/// `bench`: one workload, one or both targets. Prints a table and, last,
/// one JSON object. Returns whether every operation succeeded.
pub async fn bench(a: BenchArgs) -> anyhow::Result<bool> {
    let dir = work_dir(&a.cluster)?;
    let time = Duration::from_secs(a.load.seconds.max(1));
    if a.workload == WorkloadFlag::Limits {
        let l = limits::measure(dir.path(), time).await?;
        println!(
            "fsync (4 KiB append + fdatasync) p50 {} µs p99 {} µs ({} writers at once: p50 {} µs); loopback gRPC round trip p50 {} µs p99 {} µs; floor of a durable Raft write (fsync + 2 round trips) {} µs",
            l.p50_us,
            l.p99_us,
            limits::SHARED_DISK_WRITERS,
            l.shared_disk_fsync_p50_us,
            l.grpc_rtt_p50_us,
            l.grpc_rtt_p99_us,
            l.sync_put_floor_us
        );
        println!("{}", serde_json::to_string(&l)?);
        return Ok(true);
    }
    if a.workload == WorkloadFlag::TaskSession {
        return task_session_bench(&a, dir.path(), time).await;
    }
    if a.workload == WorkloadFlag::Subscribe {
        let clusters = streamshield_only(&a.cluster, dir.path()).await?;
        let client = &clusters.streamshield.as_ref().expect("started").client;
        let r = super::subscribe::run(client, time).await?;
        println!(
            "{} records: append p50 {} µs p99 {} µs; at the subscriber {} µs p50, {} µs p99 after the append started, {} µs p50, {} µs p99 after its acknowledgement",
            r.records, r.append_p50_us, r.append_p99_us, r.delivered_p50_us, r.delivered_p99_us, r.after_ack_p50_us, r.after_ack_p99_us
        );
        println!("{}", serde_json::to_string(&r)?);
        return Ok(r.errors == 0);
    }
    if a.workload == WorkloadFlag::Reattach {
        let o = super::reattach::ReattachOptions {
            state_bytes: a.state_size,
            kills: a.kills,
            standby: !a.no_standby,
            restore: a.baseline == Some(BaselineFlag::Restore),
            leader_kills: a.leader_kills,
            rescale_to: a.rescale_to,
            server_bin: streamshield_client::local::find_server_binary()
                .ok_or_else(|| anyhow::anyhow!("streamshield-server not found"))?,
            server_args: a.cluster.server_args.clone(),
        };
        let r = super::reattach::run(dir.path(), &o).await?;
        println!(
            "reattach ({}, {} MB of task state, {} kills): first record min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; first commit p50 {:.1} ms, p99 {:.1} ms; exactly-once {}; {:.0} records/s end to end",
            r.mode, r.state_bytes / 1_000_000, r.kills, r.min_ms, r.p50_ms, r.p99_ms, r.max_ms, r.first_commit_p50_ms, r.first_commit_p99_ms, r.exactly_once, r.records_per_s
        );
        if let (Some(ms), Some(to)) = (r.rescale_ms, r.rescale_to) {
            println!("rescale from 2 to {to} tasks: {ms:.0} ms from the stop to every task committing new input");
        }
        if r.leader_kills > 0 {
            println!("{} leader kills: {}", r.leader_kills, r.stall_summary());
        }
        println!("{}", serde_json::to_string(&r)?);
        return Ok(r.exactly_once);
    }
    if a.workload == WorkloadFlag::EpochCommit {
        let clusters = streamshield_only(&a.cluster, dir.path()).await?;
        let client = &clusters.streamshield.as_ref().expect("started").client;
        let shape = task_shape(&a, Duration::ZERO, time);
        let r = task_session::large_epochs(client, a.epoch_bytes, a.rounds, a.tasks, shape).await?;
        println!(
            "epoch of {} bytes: commit p50 {} µs max {} µs, readable p50 {} µs max {} µs; {} other tasks meanwhile: commit p50 {} µs p99 {} µs max {} µs",
            r.epoch_bytes, r.commit_p50_us, r.commit_max_us, r.readable_p50_us, r.readable_max_us, r.others_tasks, r.others_commit_p50_us, r.others_commit_p99_us, r.others_commit_max_us
        );
        println!("{}", serde_json::to_string(&r)?);
        return Ok(r.errors == 0);
    }
    let kind = match a.workload {
        WorkloadFlag::TaskSession
        | WorkloadFlag::EpochCommit
        | WorkloadFlag::Subscribe
        | WorkloadFlag::Reattach => {
            unreachable!("handled above")
        }
        WorkloadFlag::SyncPut => WorkloadKind::SyncPut,
        WorkloadFlag::Mixed => WorkloadKind::Mixed,
        WorkloadFlag::Get => WorkloadKind::Get(match a.consistency {
            ConsistencyFlag::Linearizable => Consistency::Linearizable,
            ConsistencyFlag::Stale => Consistency::Stale,
        }),
        WorkloadFlag::Limits => unreachable!("handled above"),
    };
    let want = targets(a.target, a.no_coalesce);
    let clusters = Clusters::start(&want, &spec(&a.cluster, a.target)?, dir.path()).await?;
    println!("{}", table_header());
    let mut per_target: Vec<Vec<Report>> = vec![Vec::new(); want.len()];
    for round in 0..a.rounds.max(1) {
        let mut order: Vec<usize> = (0..want.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let shape = RunShape {
                clients: a.clients.max(1),
                warmup: Duration::from_secs(a.load.warmup),
                measure: time,
                seed: a.load.seed + round as u64,
            };
            let r = clusters
                .measure(want[i], kind, a.load.space(), shape)
                .await?;
            println!("{}", table_row(&r));
            if let Some(e) = &r.first_error {
                eprintln!("{}: first error: {e}", r.target);
            }
            per_target[i].push(r);
        }
    }
    let medians: Vec<Report> = per_target.iter().filter_map(|r| median_report(r)).collect();
    let clean = medians.iter().all(|r| r.errors == 0);
    let json = match medians.as_slice() {
        [only] => serde_json::to_value(only)?,
        [ours, etcd, ..] => {
            let mut v = serde_json::to_value(ours)?;
            v["baseline"] = serde_json::to_value(etcd)?;
            v["ratio_ops_per_s"] = (ours.ops_per_s / etcd.ops_per_s.max(f64::MIN_POSITIVE)).into();
            v
        }
        [] => bail!("no run finished"),
    };
    println!("{json}");
    Ok(clean)
}

/// A StreamShield cluster alone, for the task workloads.
async fn streamshield_only(c: &ClusterArgs, dir: &std::path::Path) -> anyhow::Result<Clusters> {
    let want = [TargetKind::Streamshield];
    Clusters::start(&want, &spec(c, TargetFlag::Streamshield)?, dir).await
}

fn task_shape(a: &BenchArgs, warmup: Duration, measure: Duration) -> TaskBenchShape {
    TaskBenchShape {
        tasks: a.tasks,
        checkpoint_interval: a.checkpoint_interval,
        rate: a.task_rate,
        linger: a.task_linger,
        window: a.task_window,
        batch_bytes: a.task_batch_bytes.map(|b| b as usize),
        commit_target: a.task_commit_target,
        value_size: a.load.value_size,
        warmup,
        measure,
        seed: a.load.seed,
    }
}

/// `bench --workload task-session`: the tasks' committed updates, then
/// sync put at `--clients` on the same cluster, and their ratio.
async fn task_session_bench(
    a: &BenchArgs,
    dir: &std::path::Path,
    time: Duration,
) -> anyhow::Result<bool> {
    let clusters = streamshield_only(&a.cluster, dir).await?;
    let client = &clusters.streamshield.as_ref().expect("started").client;
    let shape = task_shape(a, Duration::from_secs(a.load.warmup), time);
    let mut runs = Vec::new();
    for _ in 0..a.rounds.max(1) {
        let r = task_session::run(client, shape).await?;
        task_session::release_all(client).await;
        println!(
            "task-session: {} tasks, {:.0} committed updates/s, commit p50 {} µs p99 {} µs, of which waiting for staged batches p50 {} µs p99 {} µs ({} commits, {} errors)",
            r.tasks, r.ops_per_s, r.commit_p50_us, r.commit_p99_us, r.staged_wait_p50_us, r.staged_wait_p99_us, r.commits, r.errors
        );
        if let Some(e) = &r.first_error {
            eprintln!("task-session: first error: {e}");
        }
        runs.push(r);
    }
    runs.sort_by(|x, y| x.ops_per_s.total_cmp(&y.ops_per_s));
    let median = runs[(runs.len() - 1) / 2].clone();
    let sync_shape = RunShape {
        clients: a.clients.max(1),
        warmup: Duration::from_secs(a.load.warmup),
        measure: time,
        seed: a.load.seed,
    };
    let baseline = clusters
        .measure(
            TargetKind::Streamshield,
            WorkloadKind::SyncPut,
            a.load.space(),
            sync_shape,
        )
        .await?;
    println!("{}", table_header());
    println!("{}", table_row(&baseline));
    let mut v = serde_json::to_value(&median)?;
    v["ratio_ops_per_s"] = (median.ops_per_s / baseline.ops_per_s.max(f64::MIN_POSITIVE)).into();
    v["baseline"] = serde_json::to_value(&baseline)?;
    println!("{v}");
    Ok(median.errors == 0 && baseline.errors == 0)
}

/// `matrix` (what `make bench` runs): limits, then every row on both
/// targets; writes the Markdown report.
pub async fn run_matrix(a: MatrixArgs, command: String) -> anyhow::Result<bool> {
    let dir = work_dir(&a.cluster)?;
    let time = Duration::from_secs(a.load.seconds.max(1));
    let l = limits::measure(dir.path(), matrix::FLOOR_TIME).await?;
    println!("{}", l.summary());
    let spec = spec(&a.cluster, TargetFlag::Both)?;
    let mut clusters =
        Clusters::start(&targets(TargetFlag::Both, false), &spec, dir.path()).await?;
    let opts = MatrixOptions {
        warmup: Duration::from_secs(a.load.warmup),
        measure: time,
        rounds: a.rounds.max(1),
        space: a.load.space(),
        seed: a.load.seed,
        out: Some(a.out.clone()),
        command,
    };
    let m = matrix::run(&mut clusters, &spec, l, dir.path(), &opts).await?;
    println!("\n{}", matrix::summary_table(&m));
    println!("{}", matrix::goals_list(&m));
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if let Some(out) = &opts.out {
        std::fs::write(out, matrix::markdown(&m, &opts, &date, dir.path()))?;
        println!("wrote {}", out.display());
    }
    println!("{}", serde_json::to_string(&m)?);
    Ok(m.runs.iter().all(|r| r.errors == 0))
}
