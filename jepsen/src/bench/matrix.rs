//! The comparison matrix behind `make bench`: every row runs on both
//! targets, alternating which goes first, several rounds; the medians are
//! judged against the goals and written to `BENCHMARKS.md`.

use crate::progress::Progress;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use streamshield_client::Consistency;

use super::limits::Limits;
use super::reattach::{self, ReattachOptions, ReattachReport};
use super::runner::{Report, RunShape};
use super::target::TargetKind;
use super::task_session::{self, TaskBenchReport, TaskBenchShape};
use super::workload::{KeySpace, WorkloadKind};
use super::ClusterSpec;
use super::{lower_middle_by, median_report, table_header, table_row, Clusters};

#[derive(Debug, Clone)]
pub struct MatrixOptions {
    pub warmup: Duration,
    pub measure: Duration,
    pub rounds: u32,
    pub space: KeySpace,
    pub seed: u64,
    /// Where to write the Markdown report (`None`: nowhere).
    pub out: Option<PathBuf>,
    /// The command line, recorded in the report.
    pub command: String,
}

/// The rows: (workload, clients, StreamShield's client), at the matrix's
/// value size. The last three repeat goal rows with a client that sends
/// one call per operation, as etcd's does, to show what coalescing buys;
/// the goals are judged on the client as shipped. [`row_specs`] adds the
/// task-session goal's baseline at its own value size.
pub const ROWS: &[(WorkloadKind, u64, TargetKind)] = &[
    (WorkloadKind::SyncPut, 1, TargetKind::Streamshield),
    (WorkloadKind::SyncPut, 16, TargetKind::Streamshield),
    (WorkloadKind::SyncPut, 64, TargetKind::Streamshield),
    (WorkloadKind::SyncPut, 256, TargetKind::Streamshield),
    (
        WorkloadKind::Get(Consistency::Linearizable),
        64,
        TargetKind::Streamshield,
    ),
    (
        WorkloadKind::Get(Consistency::Stale),
        64,
        TargetKind::Streamshield,
    ),
    (WorkloadKind::Mixed, 64, TargetKind::Streamshield),
    (
        WorkloadKind::SyncPut,
        64,
        TargetKind::StreamshieldUncoalesced,
    ),
    (
        WorkloadKind::Get(Consistency::Linearizable),
        64,
        TargetKind::StreamshieldUncoalesced,
    ),
    (WorkloadKind::Mixed, 64, TargetKind::StreamshieldUncoalesced),
    // The same goal row on a cluster over mutual TLS: what TLS costs.
    (WorkloadKind::SyncPut, 64, TargetKind::StreamshieldTls),
];

/// One row to run: a workload at a number of clients and a value size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSpec {
    pub kind: WorkloadKind,
    pub clients: u64,
    pub target: TargetKind,
    pub value_size: usize,
}

/// [`ROWS`] at `value_size`, then sync put at 64 clients with the task
/// sessions' values ([`TASK_SESSION_VALUE_SIZE`]), unless those are the
/// same: the task-session goal compares committed updates with sync puts
/// of the same values (the task layer's issue states it at 64 B), and the
/// etcd figure comes from the same run. The TLS row stays last: it
/// replaces the plaintext cluster.
pub fn row_specs(value_size: usize) -> Vec<RowSpec> {
    let spec = |&(kind, clients, target): &(WorkloadKind, u64, TargetKind)| RowSpec {
        kind,
        clients,
        target,
        value_size,
    };
    let (tls, plain): (Vec<_>, Vec<_>) = ROWS
        .iter()
        .map(spec)
        .partition(|r| r.target == TargetKind::StreamshieldTls);
    let mut all = plain;
    if value_size != TASK_SESSION_VALUE_SIZE {
        all.push(RowSpec {
            kind: WorkloadKind::SyncPut,
            clients: 64,
            target: TargetKind::Streamshield,
            value_size: TASK_SESSION_VALUE_SIZE,
        });
    }
    all.extend(tls);
    all
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub streamshield: Report,
    pub etcd: Report,
    /// StreamShield's ops/s over etcd's (medians).
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub text: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixResult {
    pub workload: &'static str,
    /// The floor the 1-client goal is judged against: the median of those
    /// measured between 1-client rounds (the first one if there are none).
    pub limits: Limits,
    /// The floor measured before the matrix and again before each round of
    /// the 1-client row, in that order.
    pub floors: Vec<Limits>,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    pub runs: Vec<Report>,
    /// Stream tasks through `TaskSession`s ([`TASK_SESSION_TASKS`] tasks,
    /// a commit every [`TASK_SESSION_INTERVAL`]): the median run.
    pub task_session: Option<TaskBenchReport>,
    /// The same tasks offered half of that run's throughput
    /// ([`paced_rate`]): the run with the median commit p99.
    pub task_session_paced: Option<TaskBenchReport>,
    /// Every task-session run, unpaced then paced, in the order run.
    pub task_session_runs: Vec<TaskBenchReport>,
    /// The operator runtime's takeovers ([`REATTACH_KILLS`] kills of a
    /// task holding [`REATTACH_STATE_BYTES`]): a warm standby, then the
    /// restore-from-checkpoint baseline; the standby run then kills the
    /// state cluster's leader [`REATTACH_LEADER_KILLS`] times.
    pub reattach: Vec<ReattachReport>,
}

pub const REATTACH_KILLS: u32 = 20;
pub const REATTACH_LEADER_KILLS: u32 = 10;
pub const REATTACH_STATE_BYTES: u64 = 10_000_000;

/// The task-session row's shape.
pub const TASK_SESSION_TASKS: u32 = 8;
pub const TASK_SESSION_INTERVAL: Duration = Duration::from_millis(100);
/// The task layer's issue states its throughput goals at 64 B values.
pub const TASK_SESSION_VALUE_SIZE: usize = 64;

/// The paced task-session row's offered rate: half of what the unpaced
/// tasks committed, in thousands. A closed loop keeps the cluster's queues
/// full, so its commits wait behind the other tasks' batches; half the load
/// shows what a commit costs with headroom left.
pub fn paced_rate(saturated: &TaskBenchReport) -> u64 {
    ((saturated.ops_per_s / 2.0 / 1000.0).round() as u64).max(1) * 1000
}

fn find(rows: &[Row], w: WorkloadKind, clients: u64, value_size: usize) -> Option<&Row> {
    find_on(rows, TargetKind::Streamshield, w, clients, value_size)
}

fn find_on(
    rows: &[Row],
    target: TargetKind,
    w: WorkloadKind,
    clients: u64,
    value_size: usize,
) -> Option<&Row> {
    rows.iter().find(|r| {
        r.streamshield.target == target.name()
            && r.streamshield.workload == w.name()
            && r.streamshield.clients == clients
            && r.streamshield.value_size == value_size
    })
}

/// The task-session goals: committed updates against sync put at 64
/// clients of the same values, ours and etcd's, from the same run; commit
/// p99.
fn judge_tasks(rows: &[Row], t: &TaskBenchReport) -> Vec<Goal> {
    let Some(r) = find(rows, WorkloadKind::SyncPut, 64, t.value_size) else {
        return Vec::new();
    };
    let ours = t.ops_per_s / r.streamshield.ops_per_s.max(1.0);
    let etcd = t.ops_per_s / r.etcd.ops_per_s.max(1.0);
    vec![
        Goal {
            text: format!(
                "task sessions ({} tasks, {} B values, commit every {} ms): committed updates/s ≥ 10× our sync put at 64 clients and ≥ 20× etcd's, same values",
                t.tasks, t.value_size, t.checkpoint_interval_ms
            ),
            measured: format!(
                "{:.0} updates/s: {ours:.1}× ours ({:.0}), {etcd:.1}× etcd ({:.0})",
                t.ops_per_s, r.streamshield.ops_per_s, r.etcd.ops_per_s
            ),
            met: ours >= 10.0 && etcd >= 20.0,
        },
        Goal {
            text: "task sessions: epoch commit p99 < 50 ms".into(),
            measured: format!("p50 {} µs, p99 {} µs", t.commit_p50_us, t.commit_p99_us),
            met: t.commit_p99_us < 50_000,
        },
    ]
}

/// A task-session run's offered rate, as the report prints it.
fn offered(t: &TaskBenchReport) -> String {
    match t.offered_per_s {
        0 => "all they can".to_string(),
        r => r.to_string(),
    }
}

/// The commit goal again, with the cluster's queues not full.
fn judge_paced_tasks(t: &TaskBenchReport) -> Goal {
    Goal {
        text: format!(
            "task sessions offered half their throughput ({} updates/s): epoch commit p99 < 50 ms",
            t.offered_per_s
        ),
        measured: format!(
            "{:.0} updates/s committed, commit p50 {} µs, p99 {} µs",
            t.ops_per_s, t.commit_p50_us, t.commit_p99_us
        ),
        met: t.commit_p99_us < 50_000,
    }
}

fn judge_reattach(runs: &[ReattachReport]) -> Vec<Goal> {
    runs.iter()
        .filter(|r| r.mode == "standby")
        .map(|r| Goal {
            text: format!(
                "reattach with a warm standby ({} MB of task state): p99 < 20 ms, exactly-once",
                r.state_bytes / 1_000_000
            ),
            measured: format!(
                "p50 {:.1} ms, p99 {:.1} ms, exactly-once {}",
                r.p50_ms, r.p99_ms, r.exactly_once
            ),
            met: r.p99_ms < 20.0 && r.exactly_once,
        })
        .chain(runs.iter().filter(|r| r.leader_kills > 0).map(|r| Goal {
            text: format!(
                "a state-cluster leader kill stalls the tasks' commits < 500 ms at p99 ({} kills)",
                r.leader_kills
            ),
            measured: format!(
                "p50 {:.0} ms, p99 {:.0} ms (a new leader after p50 {:.0} ms, p99 {:.0} ms)",
                r.stall_p50_ms, r.stall_p99_ms, r.election_p50_ms, r.election_p99_ms
            ),
            met: r.stall_p99_ms < 500.0,
        }))
        .collect()
}

/// The issue's goals, judged on the medians of the rows at the matrix's
/// `value_size`.
pub fn judge(rows: &[Row], limits: &Limits, value_size: usize) -> Vec<Goal> {
    let mut goals = Vec::new();
    if let Some(r) = find(rows, WorkloadKind::SyncPut, 64, value_size) {
        goals.push(Goal {
            text: "sync put, 64 clients: ≥ 2× etcd's ops/s at no worse p99".into(),
            measured: format!(
                "{:.2}×, p99 {} µs vs etcd {} µs",
                r.ratio, r.streamshield.p99_us, r.etcd.p99_us
            ),
            met: r.ratio >= 2.0 && r.streamshield.p99_us <= r.etcd.p99_us,
        });
    }
    if let Some(r) = find(rows, WorkloadKind::SyncPut, 1, value_size) {
        let floor = limits.sync_put_floor_us as f64;
        let p50 = r.streamshield.p50_us as f64;
        goals.push(Goal {
            text: "sync put, 1 client: p50 ≤ 1.5× the machine's floor and below etcd's p50".into(),
            measured: format!(
                "p50 {} µs = {:.2}× floor {} µs; etcd p50 {} µs",
                r.streamshield.p50_us,
                p50 / floor.max(1.0),
                limits.sync_put_floor_us,
                r.etcd.p50_us
            ),
            met: p50 <= 1.5 * floor && r.streamshield.p50_us < r.etcd.p50_us,
        });
    }
    for (w, text) in [
        (
            WorkloadKind::Get(Consistency::Linearizable),
            "linearizable get, 64 clients: ≥ 2× etcd",
        ),
        (
            WorkloadKind::Mixed,
            "mixed 50/50 put/get, 64 clients: ≥ 2× etcd",
        ),
    ] {
        if let Some(r) = find(rows, w, 64, value_size) {
            goals.push(Goal {
                text: text.into(),
                measured: format!("{:.2}×", r.ratio),
                met: r.ratio >= 2.0,
            });
        }
    }
    let plain = find(rows, WorkloadKind::SyncPut, 64, value_size);
    let tls = find_on(
        rows,
        TargetKind::StreamshieldTls,
        WorkloadKind::SyncPut,
        64,
        value_size,
    );
    if let (Some(plain), Some(tls)) = (plain, tls) {
        let cost = 1.0 - tls.streamshield.ops_per_s / plain.streamshield.ops_per_s.max(1.0);
        goals.push(Goal {
            text: "sync put, 64 clients, over mutual TLS: < 15 % fewer ops/s than plaintext".into(),
            measured: format!(
                "{:.0} vs {:.0} ops/s: {:+.1} %",
                tls.streamshield.ops_per_s,
                plain.streamshield.ops_per_s,
                -100.0 * cost
            ),
            met: cost < 0.15,
        });
    }
    goals
}

/// How long each floor measurement (before the matrix and between 1-client
/// rounds) takes.
pub const FLOOR_TIME: Duration = Duration::from_secs(3);

/// The floor with the median `sync_put_floor_us` (the lower of the two
/// middle ones for an even count).
fn median_floor(floors: &[Limits]) -> Option<Limits> {
    lower_middle_by(floors, |a, b| a.sync_put_floor_us.cmp(&b.sync_put_floor_us))
}

/// Runs every row. `first_floor` was measured before the clusters started;
/// the floor is measured again in `floor_dir` before each round of the
/// 1-client row: on this shared VM it moves by half between matrices
/// (431-689 µs), so a floor taken minutes away from the runs it judges
/// makes that ratio a draw.
pub async fn run(
    clusters: &mut Clusters,
    spec: &ClusterSpec,
    first_floor: Limits,
    floor_dir: &Path,
    opts: &MatrixOptions,
) -> anyhow::Result<MatrixResult> {
    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut floors = vec![first_floor];
    let specs = row_specs(opts.space.value_size);
    let mut progress = Progress::new(specs.len() as u64 * u64::from(opts.rounds) * 2 + 4);
    progress.step("task sessions");
    let mut task_session_runs = Vec::new();
    let (task_session, task_session_paced) = match &clusters.streamshield {
        Some(t) => {
            let mut shape = TaskBenchShape {
                tasks: TASK_SESSION_TASKS,
                checkpoint_interval: TASK_SESSION_INTERVAL,
                rate: 0,
                linger: None,
                window: None,
                batch_bytes: None,
                commit_target: None,
                value_size: TASK_SESSION_VALUE_SIZE,
                warmup: opts.warmup,
                measure: opts.measure,
                seed: opts.seed,
            };
            let mut runs = Vec::new();
            for _ in 0..opts.rounds {
                runs.push(task_session::run(&t.client, shape).await?);
                task_session::release_all(&t.client).await;
            }
            task_session_runs.extend(runs.iter().cloned());
            let saturated = lower_middle_by(&runs, |a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
            progress.done();
            progress.step("task sessions, paced");
            let mut paced = Vec::new();
            if let Some(sat) = &saturated {
                shape.rate = paced_rate(sat);
                for _ in 0..opts.rounds {
                    paced.push(task_session::run(&t.client, shape).await?);
                    task_session::release_all(&t.client).await;
                }
            }
            let paced_median =
                lower_middle_by(&paced, |a, b| a.commit_p99_us.cmp(&b.commit_p99_us));
            task_session_runs.extend(paced);
            (saturated, paced_median)
        }
        None => (None, None),
    };
    progress.done();
    for t in task_session.iter().chain(&task_session_paced) {
        progress.println(format!(
            "task-session: {} tasks, updates/s offered: {}, {:.0} committed updates/s, commit p50 {} µs p99 {} µs",
            t.tasks,
            offered(t),
            t.ops_per_s,
            t.commit_p50_us,
            t.commit_p99_us
        ));
    }
    let mut reattach_runs = Vec::new();
    if let Some(server_bin) = &spec.server_bin {
        for restore in [false, true] {
            progress.step(if restore {
                "reattach, restore baseline"
            } else {
                "reattach, warm standby"
            });
            let o = ReattachOptions {
                state_bytes: REATTACH_STATE_BYTES,
                kills: REATTACH_KILLS,
                standby: true,
                restore,
                leader_kills: if restore { 0 } else { REATTACH_LEADER_KILLS },
                rescale_to: None,
                server_bin: server_bin.clone(),
                server_args: spec.server_args.clone(),
            };
            let dir = tempfile::Builder::new()
                .prefix("reattach-")
                .tempdir_in(floor_dir)?;
            let r = reattach::run(dir.path(), &o).await?;
            progress.done();
            progress.println(format!(
                "reattach ({}): first record p50 {:.1} ms, p99 {:.1} ms; exactly-once {}",
                r.mode, r.p50_ms, r.p99_ms, r.exactly_once
            ));
            reattach_runs.push(r);
        }
    }
    progress.println(table_header());
    for (i, row) in specs.iter().enumerate() {
        let (kind, clients, ours) = (row.kind, row.clients, row.target);
        let space = KeySpace {
            value_size: row.value_size,
            ..opts.space
        };
        // The TLS rows come last: the plaintext cluster is gone by then.
        if ours == TargetKind::StreamshieldTls {
            clusters.switch_to_tls(spec, floor_dir).await?;
        }
        let mut ss = Vec::new();
        let mut et = Vec::new();
        for round in 0..opts.rounds {
            if kind == WorkloadKind::SyncPut && clients == 1 {
                let l = super::limits::measure(floor_dir, FLOOR_TIME).await?;
                progress.println(l.summary());
                floors.push(l);
            }
            let order = if round % 2 == 0 {
                [ours, TargetKind::Etcd]
            } else {
                [TargetKind::Etcd, ours]
            };
            for t in order {
                let shape = RunShape {
                    clients,
                    warmup: opts.warmup,
                    measure: opts.measure,
                    seed: opts.seed + (i as u64) * 1000 + round as u64,
                };
                progress.step(&format!(
                    "{} on {}, {clients} clients, round {} of {}",
                    kind.name(),
                    t.name(),
                    round + 1,
                    opts.rounds
                ));
                let r = clusters.measure(t, kind, space, shape).await?;
                progress.done();
                progress.println(table_row(&r));
                match t {
                    TargetKind::Etcd => et.push(r.clone()),
                    _ => ss.push(r.clone()),
                }
                all.push(r);
            }
        }
        let (Some(s), Some(e)) = (median_report(&ss), median_report(&et)) else {
            continue;
        };
        rows.push(Row {
            ratio: s.ops_per_s / e.ops_per_s.max(f64::MIN_POSITIVE),
            streamshield: s,
            etcd: e,
        });
    }
    progress.finish();
    let limits = median_floor(&floors[1..]).unwrap_or_else(|| floors[0].clone());
    let mut goals = judge(&rows, &limits, opts.space.value_size);
    if let Some(t) = &task_session {
        goals.extend(judge_tasks(&rows, t));
    }
    goals.extend(task_session_paced.as_ref().map(judge_paced_tasks));
    goals.extend(judge_reattach(&reattach_runs));
    Ok(MatrixResult {
        workload: "matrix",
        limits,
        floors,
        rows,
        goals,
        runs: all,
        task_session,
        task_session_paced,
        task_session_runs,
        reattach: reattach_runs,
    })
}

/// The table of medians, as printed and as written into the report.
pub fn summary_table(m: &MatrixResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | clients | value B | StreamShield client | StreamShield ops/s | etcd ops/s | ratio | StreamShield p50 / p99 µs | etcd p50 / p99 µs | CPU µs/op (ours / etcd) | errors (ours / etcd) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let cpu = |r: &Report| r.cpu_us_per_op.map_or("-".into(), |c| format!("{c:.0}"));
    for r in &m.rows {
        let client = match r.streamshield.target.as_str() {
            t if t == TargetKind::Streamshield.name() => "coalescing",
            t if t == TargetKind::StreamshieldTls.name() => "coalescing, mutual TLS",
            _ => "one call per op",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2}× | {} / {} | {} / {} | {} / {} | {} / {} |",
            r.streamshield.workload,
            r.streamshield.clients,
            r.streamshield.value_size,
            client,
            r.streamshield.ops_per_s,
            r.etcd.ops_per_s,
            r.ratio,
            r.streamshield.p50_us,
            r.streamshield.p99_us,
            r.etcd.p50_us,
            r.etcd.p99_us,
            cpu(&r.streamshield),
            cpu(&r.etcd),
            r.streamshield.errors,
            r.etcd.errors
        );
    }
    s
}

pub fn goals_list(m: &MatrixResult) -> String {
    let mut s = String::new();
    for g in &m.goals {
        let _ = writeln!(
            s,
            "* {} — **{}**: {}",
            g.text,
            if g.met { "met" } else { "not met" },
            g.measured
        );
    }
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}")
}

fn etcd_version() -> String {
    std::process::Command::new(super::etcd::etcd_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd version unknown".into())
}

/// `BENCHMARKS.md`: machine, commands, date, limits, medians, goals, and
/// every single run.
pub fn markdown(m: &MatrixResult, opts: &MatrixOptions, date: &str, dir: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `make bench` on {date}. Do not edit by hand: run `make bench` again.\n"
    );
    let _ = writeln!(s, "* Machine: {}", machine());
    let _ = writeln!(
        s,
        "* Clusters: 3 StreamShield nodes (release build, default configuration except `--worker-threads {}`: a local cluster divides the cores among its nodes) and 3 etcd members ({}, default configuration, 8 GiB backend quota), all on 127.0.0.1, both in a temporary directory under `{}` (same disk). Both clusters run during every row; only one is loaded at a time.",
        streamshield_client::local::worker_threads_each(3),
        etcd_version(),
        dir.parent().unwrap_or(dir).display()
    );
    let _ = writeln!(
        s,
        "* Clients: closed loop, one process, one HTTP/2 connection per target (etcd: to its leader, StreamShield: the client follows the leader). StreamShield's client as shipped sends concurrent calls to a node together (`WriteMany`/`GetMany`, one call of each kind in flight per node); rows marked \"one call per op\" use it with that turned off, one call per operation as etcd's client makes. CPU µs/op: CPU time of the whole machine (all processes and the kernel, from `/proc/stat`) in the measured window per operation. {} keys, {} B random values (the task sessions' baseline row: {} B, theirs). Each row: {} rounds of {} s warm-up + {} s measured per target, alternating which target goes first; the table shows the run with the median throughput.",
        opts.space.keys,
        opts.space.value_size,
        TASK_SESSION_VALUE_SIZE,
        opts.rounds,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64()
    );
    let _ = writeln!(s, "* Command: `{}`\n", opts.command);
    let _ = writeln!(s, "## The machine's floor (`--workload limits`)\n");
    let _ = writeln!(
        s,
        "Measured before the clusters started, then again before each round of the 1-client row; the 1-client goal is judged against the median of the floors measured between its rounds (**{} µs**). The floor counts one fsync alone; the replicas of a local cluster fsync at the same moment on one disk, which the column of writers at once shows.\n",
        m.limits.sync_put_floor_us
    );
    let _ = writeln!(
        s,
        "| when | 4 KiB append + fdatasync p50 / p99 µs | the same, {} writers at once, p50 µs | loopback gRPC round trip p50 / p99 µs | floor = fsync + 2 round trips, µs |",
        super::limits::SHARED_DISK_WRITERS
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (i, l) in m.floors.iter().enumerate() {
        let when = if i == 0 {
            "before the clusters started".to_string()
        } else {
            format!("before 1-client round {i}")
        };
        let _ = writeln!(
            s,
            "| {when} | {} / {} | {} | {} / {} | {} |",
            l.p50_us,
            l.p99_us,
            l.shared_disk_fsync_p50_us,
            l.grpc_rtt_p50_us,
            l.grpc_rtt_p99_us,
            l.sync_put_floor_us
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "## Medians\n");
    s.push_str(&summary_table(m));
    if let Some(t) = &m.task_session {
        let _ = writeln!(
            s,
            "\n## Task sessions\n\n{} tasks write random keys of their own key groups through `TaskSession`s ({} B values) and commit an epoch every {} ms, on the StreamShield cluster above before its rows; committed updates are the writes of epochs whose commit was acknowledged in the window (`streamshield-jepsen bench --workload task-session`). Median of {} runs: **{:.0} committed updates/s**, commit p50 {} µs, p99 {} µs, max {} µs ({} commits, {} errors).",
            t.tasks, t.value_size, t.checkpoint_interval_ms, opts.rounds, t.ops_per_s, t.commit_p50_us, t.commit_p99_us, t.commit_max_us, t.commits, t.errors
        );
    }
    if let Some(t) = &m.task_session_paced {
        let _ = writeln!(
            s,
            "\nThe same tasks offered half that ({} updates/s in all, `--task-rate {}`), {} runs, the one with the median commit p99: {:.0} committed updates/s, commit p50 {} µs, p99 {} µs, max {} µs ({} commits, {} errors). Unpaced, each task writes all it can and the cluster's queues stay full: a commit waits behind the other tasks' batches.",
            t.offered_per_s, t.offered_per_s, opts.rounds, t.ops_per_s, t.commit_p50_us, t.commit_p99_us, t.commit_max_us, t.commits, t.errors
        );
    }
    if !m.task_session_runs.is_empty() {
        let _ = writeln!(
            s,
            "\nEvery task-session run (commit latencies in µs; the wait is for the epoch's batches in flight before the commit was sent):\n\n| offered updates/s | committed updates/s | commits | commit p50 / p99 / max | wait p50 / p99 | CPU µs per update | errors |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for t in &m.task_session_runs {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} / {} / {} | {} / {} | {} | {} |",
                offered(t),
                t.ops_per_s,
                t.commits,
                t.commit_p50_us,
                t.commit_p99_us,
                t.commit_max_us,
                t.staged_wait_p50_us,
                t.staged_wait_p99_us,
                t.cpu_us_per_update
                    .map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
                t.errors
            );
        }
    }
    if !m.reattach.is_empty() {
        let _ = writeln!(
            s,
            "\n## Reattach\n\n`kill -9` of the worker of a task holding {} MB of state, {} times, in the operator runtime's `keyed-count` job (`streamshield-jepsen bench --workload reattach --state-size 10MB --kills {} [--baseline restore]`): from the kill to the replacement's first handled record.\n\n| mode | min | p50 | p99 | max | first commit p50 | exactly-once |\n|---|---|---|---|---|---|---|",
            REATTACH_STATE_BYTES / 1_000_000, REATTACH_KILLS, REATTACH_KILLS
        );
        let stalled: Vec<&ReattachReport> =
            m.reattach.iter().filter(|r| r.leader_kills > 0).collect();
        for r in &m.reattach {
            let _ = writeln!(
                s,
                "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                r.mode,
                r.min_ms,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.first_commit_p50_ms,
                r.exactly_once
            );
        }
        for r in stalled {
            let _ = writeln!(
                s,
                "\nThen {} `kill -9`s of the state cluster's leader, each once every node had applied what was committed (`--leader-kills {}`), stalls from the kill until both tasks had committed again: {}.",
                r.leader_kills,
                r.leader_kills,
                r.stall_summary()
            );
        }
    }
    let _ = writeln!(s, "\n## Goals\n");
    s.push_str(&goals_list(m));
    let _ = writeln!(s, "\n## Every run\n\n```");
    let _ = writeln!(s, "{}", table_header());
    for r in &m.runs {
        let _ = writeln!(s, "{}", table_row(r));
    }
    let _ = writeln!(s, "```");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(workload: &str, clients: u64, ops_per_s: f64, p50: u64, p99: u64) -> Report {
        Report {
            workload: workload.into(),
            target: TargetKind::Streamshield.name().into(),
            clients,
            value_size: 256,
            seconds: 1.0,
            ops: ops_per_s as u64,
            ops_per_s,
            p50_us: p50,
            p99_us: p99,
            p999_us: p99,
            max_us: p99,
            errors: 0,
            first_error: None,
            cpu_us_per_op: None,
            steal_pct: None,
        }
    }

    fn limits(floor: u64) -> Limits {
        Limits {
            workload: "limits",
            target: "machine",
            clients: 1,
            ops: 1,
            ops_per_s: 1.0,
            p50_us: 1,
            p99_us: 1,
            errors: 0,
            grpc_rtt_p50_us: 1,
            grpc_rtt_p99_us: 1,
            sync_put_floor_us: floor,
            shared_disk_fsync_p50_us: 1,
        }
    }

    #[test]
    fn the_median_floor_is_the_lower_middle_one() {
        let floors: Vec<Limits> = [700, 430, 520, 610].into_iter().map(limits).collect();
        assert_eq!(median_floor(&floors).unwrap().sync_put_floor_us, 520);
        assert_eq!(median_floor(&floors[..3]).unwrap().sync_put_floor_us, 520);
        assert!(median_floor(&[]).is_none());
    }

    #[test]
    fn goals_need_both_throughput_and_tail() {
        let row = |ss: Report, et: Report| Row {
            ratio: ss.ops_per_s / et.ops_per_s,
            streamshield: ss,
            etcd: et,
        };
        let rows = vec![
            row(
                report("sync-put", 64, 2100.0, 10, 900),
                report("sync-put", 64, 1000.0, 10, 1000),
            ),
            row(
                report("sync-put", 1, 100.0, 1600, 2000),
                report("sync-put", 1, 100.0, 1500, 2000),
            ),
            row(
                report("get-linearizable", 64, 1000.0, 1, 1),
                report("get-linearizable", 64, 1000.0, 1, 1),
            ),
        ];
        let g = judge(&rows, &limits(1000), 256);
        assert_eq!(g.len(), 3);
        assert!(g[0].met, "{:?}", g[0]);
        // Within 1.5× of the floor but slower than etcd: not met.
        assert!(!g[1].met, "{:?}", g[1]);
        assert!(!g[2].met, "{:?}", g[2]);
        // Twice the throughput but a worse tail: not met.
        let worse_tail = vec![row(
            report("sync-put", 64, 3000.0, 10, 1100),
            report("sync-put", 64, 1000.0, 10, 1000),
        )];
        assert!(!judge(&worse_tail, &limits(1000), 256)[0].met);
        // Goals are judged on the client as shipped only.
        let mut uncoalesced = report("mixed", 64, 3000.0, 10, 10);
        uncoalesced.target = TargetKind::StreamshieldUncoalesced.name().into();
        let only_uncoalesced = vec![row(uncoalesced, report("mixed", 64, 1000.0, 10, 10))];
        assert!(judge(&only_uncoalesced, &limits(1000), 256).is_empty());
    }

    #[test]
    fn the_task_goal_is_judged_against_sync_puts_of_its_own_values() {
        let specs = row_specs(256);
        let baseline = specs
            .iter()
            .position(|r| r.value_size == TASK_SESSION_VALUE_SIZE)
            .expect("a baseline row at the task sessions' values");
        assert_eq!(specs[baseline].kind, WorkloadKind::SyncPut);
        assert_eq!(specs[baseline].clients, 64);
        // Before the TLS row, which replaces the plaintext cluster.
        assert_eq!(specs.last().unwrap().target, TargetKind::StreamshieldTls);
        assert!(baseline < specs.len() - 1);
        // At the task sessions' values already: no second row.
        assert_eq!(row_specs(TASK_SESSION_VALUE_SIZE).len(), ROWS.len());

        let row = |ss: Report, et: Report| Row {
            ratio: ss.ops_per_s / et.ops_per_s,
            streamshield: ss,
            etcd: et,
        };
        let mut small = report("sync-put", 64, 30_000.0, 10, 10);
        small.value_size = TASK_SESSION_VALUE_SIZE;
        let mut small_etcd = report("sync-put", 64, 10_000.0, 10, 10);
        small_etcd.value_size = TASK_SESSION_VALUE_SIZE;
        let rows = vec![
            row(
                report("sync-put", 64, 20_000.0, 10, 10),
                report("sync-put", 64, 5_000.0, 10, 10),
            ),
            row(small, small_etcd),
        ];
        let t = task_report(250_000.0, 1);
        let g = judge_tasks(&rows, &t);
        // 250,000 is 12.5× the 256 B row and 50× its etcd, but 8.3× the
        // 64 B row: judged on the latter.
        assert!(!g[0].met, "{:?}", g[0]);
        assert!(
            g[0].measured.contains("8.3× ours (30000)"),
            "{}",
            g[0].measured
        );
        assert!(
            g[0].measured.contains("25.0× etcd (10000)"),
            "{}",
            g[0].measured
        );
    }

    fn task_report(ops_per_s: f64, commit_p99_us: u64) -> TaskBenchReport {
        TaskBenchReport {
            workload: "task-session".into(),
            target: TargetKind::Streamshield.name().into(),
            tasks: TASK_SESSION_TASKS,
            checkpoint_interval_ms: 100,
            offered_per_s: 0,
            value_size: TASK_SESSION_VALUE_SIZE,
            seconds: 1.0,
            ops: ops_per_s as u64,
            ops_per_s,
            commits: 10,
            commit_p50_us: 1,
            commit_p99_us,
            commit_max_us: commit_p99_us,
            staged_wait_p50_us: 1,
            staged_wait_p99_us: 1,
            cpu_us_per_update: None,
            steal_pct: None,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn the_paced_row_offers_half_the_saturated_throughput_and_judges_its_commits() {
        assert_eq!(paced_rate(&task_report(301_234.0, 1)), 151_000);
        assert_eq!(
            paced_rate(&task_report(100.0, 1)),
            1_000,
            "never 0: unpaced"
        );
        let mut paced = task_report(150_000.0, 49_999);
        paced.offered_per_s = 151_000;
        let g = judge_paced_tasks(&paced);
        assert!(g.met, "{g:?}");
        assert!(g.text.contains("151000 updates/s"), "{}", g.text);
        paced.commit_p99_us = 50_000;
        assert!(!judge_paced_tasks(&paced).met);
    }
}
