//! The commands a job program gets: `run` (the supervisor), `worker` (what
//! the supervisor starts) and `status`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::JobConfig;
use crate::error::RuntimeError;
use crate::job::JobDef;
use crate::supervisor::{JobStatus, Supervisor, SupervisorConfig, SupervisorEvent};
use crate::worker::run_worker;

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Runs a job: its workers, standbys and failovers, until Ctrl-C (which
    /// stops every task at a committed epoch).
    Run {
        /// The job's TOML file.
        config: PathBuf,
        /// State cluster nodes, `host:port,...`.
        #[arg(long, env = "STREAMSHIELD_ENDPOINTS", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Where the status is kept (default `<name>.status.json`).
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Serve Prometheus metrics (recovery time, commit latency,
        /// restarts) on this address.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Runs one task as the supervisor assigns it (not for people).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        job_json: String,
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
    },
    /// Shows each task: worker pid, generation, epoch, records handled by
    /// its worker, lag (input records not committed yet), last commit,
    /// restarts and its last recovery (death to first record).
    Status {
        /// A running job's status file.
        #[arg(long)]
        status_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn job_named<'a>(jobs: &'a [JobDef], name: &str) -> Result<&'a JobDef, RuntimeError> {
    jobs.iter().find(|j| j.name == name).ok_or_else(|| {
        let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        RuntimeError::Config(format!("no job {name:?} here (known: {known:?})"))
    })
}

/// Runs `cmd` for a program that defines `jobs`; returns the exit code.
pub async fn run_command(jobs: &[JobDef], cmd: RuntimeCommand) -> Result<i32, RuntimeError> {
    match cmd {
        RuntimeCommand::Run {
            config,
            endpoints,
            status_file,
            metrics_addr,
        } => {
            let cfg = JobConfig::from_file(&config)?;
            let job = job_named(jobs, &cfg.job)?;
            if let Some(addr) = metrics_addr {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .install()
                    .map_err(|e| RuntimeError::Config(format!("metrics on {addr}: {e}")))?;
            }
            let status_file = status_file
                .unwrap_or_else(|| PathBuf::from(format!("{}.status.json", cfg.namespace())));
            let sup = Supervisor::start(
                job,
                SupervisorConfig {
                    job: cfg,
                    endpoints,
                    worker_command: vec![std::env::current_exe()?.display().to_string()],
                    status_file: Some(status_file),
                },
            )
            .await?;
            let mut events = sup.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    e = events.recv() => if let Ok(SupervisorEvent::Recovered(r)) = e {
                        let ms = |t: Option<u64>| t.map_or(f64::NAN, |t| t.saturating_sub(r.detected_us) as f64 / 1000.0);
                        println!(
                            "task {}/{} recovered on pid {} ({}): attached {:.1} ms, first record {:.1} ms, first commit {:.1} ms after its worker died",
                            r.stage, r.task, r.new_pid, if r.cold { "new worker" } else { "standby" },
                            ms(r.attached_us), ms(r.first_record_us), ms(r.first_commit_us)
                        );
                    },
                }
            }
            eprintln!("stopping: committing every task's open epoch");
            sup.stop().await;
            Ok(0)
        }
        RuntimeCommand::Worker {
            job_json,
            endpoints,
        } => {
            let cfg: JobConfig =
                serde_json::from_str(&job_json).map_err(|e| RuntimeError::Config(e.to_string()))?;
            let job = job_named(jobs, &cfg.job)?.clone();
            run_worker(job, cfg, endpoints).await
        }
        RuntimeCommand::Status { status_file, json } => {
            let raw = std::fs::read(&status_file)?;
            let s: JobStatus = serde_json::from_slice(&raw)
                .map_err(|e| RuntimeError::Config(format!("{}: {e}", status_file.display())))?;
            if json {
                println!("{}", serde_json::to_string(&s).expect("serializes"));
            } else {
                print!("{}", render_status(&s));
            }
            Ok(0)
        }
    }
}

/// The status as a table, one line per task.
pub fn render_status(s: &JobStatus) -> String {
    let mut out = format!(
        "job {}: {} workers, {} standby ready (supervisor pid {})\n",
        s.job, s.workers, s.standbys, s.supervisor_pid
    );
    out += &format!(
        "{:<10} {:>4} {:>8} {:>5} {:>8} {:>10} {:>8} {:>14} {:>8} {:>14}\n",
        "STAGE",
        "TASK",
        "PID",
        "GEN",
        "EPOCH",
        "RECORDS",
        "LAG",
        "LAST COMMIT",
        "RESTARTS",
        "LAST RECOVERY"
    );
    for t in &s.tasks {
        let ago = if t.last_commit_us == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1} s ago",
                s.at_us.saturating_sub(t.last_commit_us) as f64 / 1e6
            )
        };
        let rec = t.last_recovery.as_ref().and_then(|r| {
            r.first_record_us
                .map(|f| format!("{:.1} ms", f.saturating_sub(r.detected_us) as f64 / 1e3))
        });
        out += &format!(
            "{:<10} {:>4} {:>8} {:>5} {:>8} {:>10} {:>8} {:>14} {:>8} {:>14}\n",
            t.stage,
            t.task,
            t.pid.map_or("-".into(), |p| p.to_string()),
            t.generation,
            t.epoch,
            t.records,
            t.lag.map_or("-".into(), |l| l.to_string()),
            ago,
            t.restarts,
            rec.unwrap_or_else(|| "-".into())
        );
    }
    out
}
