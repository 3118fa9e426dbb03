//! The supervisor: starts the job's workers, assigns tasks, keeps warm
//! standbys, and replaces a dead or hung worker's task at once.
//!
//! A worker's death is seen the moment its process exits (the supervisor
//! is its parent and waits on it); a hung worker is one whose heartbeats
//! stop for `heartbeat_timeout_ms`, and is killed. Either way the task goes
//! to a ready standby if there is one (its lease fences the old holder),
//! else to a freshly started worker, and a new standby is started behind
//! it. No other task is touched. A store outage is not a death: workers
//! keep beating while their calls wait.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use streamshield_client::{pb, Client, ClientConfig, ClientError, Consistency};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::JobConfig;
use crate::error::RuntimeError;
use crate::job::JobDef;
use crate::protocol::{FromWorker, ToWorker};
use crate::task::{now_us, TaskEvent};

/// A task whose worker ended with an error is reassigned after this.
const FAILED_TASK_DELAY: Duration = Duration::from_secs(1);

/// A worker that has not said it is ready within this is killed.
const STARTUP_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub job: JobConfig,
    pub endpoints: Vec<String>,
    /// The program (and its first arguments) that runs a worker; the
    /// supervisor appends `worker --job-json ... --endpoints ...`.
    pub worker_command: Vec<String>,
    /// Where the job's status is written (JSON) a few times a second, for
    /// `status`.
    pub status_file: Option<PathBuf>,
}

/// One task failover, in microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub stage: String,
    pub task: u32,
    pub old_pid: u32,
    pub new_pid: u32,
    /// Whether no standby was ready, so a new worker had to start first.
    pub cold: bool,
    /// The old worker's exit was seen (or its missed heartbeats).
    pub detected_us: u64,
    pub assigned_us: u64,
    pub attached_us: Option<u64>,
    pub first_record_us: Option<u64>,
    /// The first commit after the takeover that holds new input.
    pub first_commit_us: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SupervisorEvent {
    Assigned {
        stage: String,
        task: u32,
        pid: u32,
        at_us: u64,
    },
    Committed {
        stage: String,
        task: u32,
        epoch: u64,
        records: u64,
        at_us: u64,
        commit_us: u64,
    },
    WorkerExited {
        pid: u32,
        task: Option<(String, u32)>,
        code: Option<i32>,
        at_us: u64,
    },
    /// A takeover finished: the new worker committed new input.
    Recovered(Recovery),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub stage: String,
    pub task: u32,
    pub pid: Option<u32>,
    pub generation: u64,
    pub epoch: u64,
    /// Records handled by the current worker.
    pub records: u64,
    /// Next offset per input partition, as last committed.
    pub offsets: BTreeMap<u32, u64>,
    pub watermark: Option<i64>,
    pub last_commit_us: u64,
    pub restarts: u32,
    pub last_recovery: Option<Recovery>,
    /// Input records committed upstream that the task has not committed
    /// yet (sampled every second; `None` before the first sample).
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: String,
    pub supervisor_pid: u32,
    pub tasks: Vec<TaskStatus>,
    pub standbys: usize,
    pub workers: usize,
    pub at_us: u64,
}

type TaskId = (String, u32);

enum WorkerMsg {
    Line(FromWorker),
    Exited(Option<i32>),
}

struct Worker {
    pid: u32,
    stdin: Option<ChildStdin>,
    ready: bool,
    started: Instant,
    last_heard: Instant,
    task: Option<TaskId>,
}

struct Failover {
    old_pid: u32,
    detected: Instant,
    detected_us: u64,
    assigned: Option<(u32, u64, bool)>,
    attached_us: Option<u64>,
    first_record_us: Option<u64>,
}

enum Request {
    Status(oneshot::Sender<JobStatus>),
    Stop(oneshot::Sender<()>),
}

/// A running supervisor; dropping it kills its workers.
pub struct Supervisor {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<SupervisorEvent>,
    run: Option<tokio::task::JoinHandle<()>>,
}

struct State {
    cfg: SupervisorConfig,
    workers: HashMap<u64, Worker>,
    next_worker: u64,
    tasks: BTreeMap<TaskId, TaskStatus>,
    failovers: HashMap<TaskId, Failover>,
    /// Tasks waiting for a worker, each not before its instant (a task
    /// whose worker failed with an error waits, so a failing task does not
    /// spin through workers).
    pending: VecDeque<(TaskId, Instant)>,
    stopping: Option<oneshot::Sender<()>>,
    msgs: mpsc::UnboundedSender<(u64, WorkerMsg)>,
    events: broadcast::Sender<SupervisorEvent>,
}

impl Supervisor {
    /// Prepares the job in the store (jobs, streams, leases of another
    /// layout released) and starts its workers and standbys.
    pub async fn start(job: &JobDef, cfg: SupervisorConfig) -> Result<Self, RuntimeError> {
        cfg.job.validate()?;
        job.validate(&cfg.job)?;
        if cfg.worker_command.is_empty() {
            return Err(RuntimeError::Config("no worker command".into()));
        }
        let client = Client::new(ClientConfig::new(cfg.endpoints.iter().cloned()))?;
        job.setup(&client, &cfg.job).await?;
        release_other_layouts(&client, job, &cfg.job).await?;

        let (msgs, msg_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let mut state = State {
            cfg,
            workers: HashMap::new(),
            next_worker: 0,
            tasks: BTreeMap::new(),
            failovers: HashMap::new(),
            pending: VecDeque::new(),
            stopping: None,
            msgs,
            events: events.clone(),
        };
        for stage in &job.stages {
            for task in 0..state.cfg.job.parallelism_of(&stage.name) {
                let id = (stage.name.clone(), task);
                state.tasks.insert(
                    id.clone(),
                    TaskStatus {
                        stage: stage.name.clone(),
                        task,
                        ..TaskStatus::default()
                    },
                );
                state.pending.push_back((id, Instant::now()));
            }
        }
        for _ in 0..state.pending.len() + state.cfg.job.standbys as usize {
            state.spawn_worker()?;
        }
        let (requests, req_rx) = mpsc::channel(16);
        let (ends_tx, ends_rx) = mpsc::channel(16);
        let inputs: Vec<(String, crate::job::StreamRef)> = job
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), job.input_of(&state.cfg.job, i)))
            .collect();
        let poller = tokio::spawn(poll_input_ends(client, inputs, ends_tx));
        let run = tokio::spawn(async move {
            state.run(msg_rx, req_rx, ends_rx).await;
            poller.abort();
        });
        Ok(Self {
            requests,
            events,
            run: Some(run),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    pub async fn status(&self) -> Option<JobStatus> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops every task at a committed epoch (releasing its lease), then
    /// the standbys.
    pub async fn stop(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(run) = self.run.take() {
            let _ = run.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(run) = &self.run {
            run.abort();
        }
    }
}

/// End offset per partition of each stage's input, every second: what a
/// task's lag is measured against.
async fn poll_input_ends(
    client: Client,
    inputs: Vec<(String, crate::job::StreamRef)>,
    tx: mpsc::Sender<(String, Vec<u64>)>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (stage, input) in &inputs {
            if let Ok(info) = client.describe_stream(&input.job, &input.stream).await {
                let ends = info.partition_info.iter().map(|p| p.end_offset).collect();
                if tx.send((stage.clone(), ends)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Releases every live lease that the configured layout does not hold as
/// it stands (a task index beyond the parallelism, or other key groups),
/// so that the new layout's tasks do not collide with the old: the job is
/// being started with another parallelism.
async fn release_other_layouts(
    client: &Client,
    job: &JobDef,
    cfg: &JobConfig,
) -> Result<(), RuntimeError> {
    let layout = cfg.layout();
    for (i, stage) in job.stages.iter().enumerate() {
        let store_job = job.store_job(cfg, i);
        let n = cfg.parallelism_of(&stage.name);
        let live: Vec<pb::TaskInfo> = client
            .list_tasks(&store_job, Consistency::Linearizable)
            .await?
            .tasks
            .into_iter()
            .filter(|t| !t.released)
            .collect();
        let fits = |t: &pb::TaskInfo| {
            let g = layout.groups_of_task(t.task, n);
            t.task < n && t.key_group_start == g.start && t.key_group_end == g.end
        };
        if live.iter().all(fits) {
            continue;
        }
        for t in live {
            let req = pb::ReleaseLeaseRequest {
                shard: 0,
                job: store_job.clone(),
                task: t.task,
                generation: t.generation,
            };
            match client.release_lease(req).await {
                Ok(_) | Err(ClientError::StaleLease { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(stage = %stage.name, tasks = n, "released the leases of another layout");
    }
    Ok(())
}

impl State {
    fn spawn_worker(&mut self) -> Result<(), RuntimeError> {
        let json = serde_json::to_string(&self.cfg.job).expect("config serializes");
        let mut cmd = Command::new(&self.cfg.worker_command[0]);
        cmd.args(&self.cfg.worker_command[1..])
            .arg("worker")
            .arg("--job-json")
            .arg(json)
            .arg("--endpoints")
            .arg(self.cfg.endpoints.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let id = self.next_worker;
        self.next_worker += 1;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let tx = self.msgs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(m) => {
                        if tx.send((id, WorkerMsg::Line(m))).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(pid, line, error = %e, "worker said something else"),
                }
            }
            let status = child.wait().await.ok();
            let _ = tx.send((id, WorkerMsg::Exited(status.and_then(|s| s.code()))));
        });
        let now = Instant::now();
        self.workers.insert(
            id,
            Worker {
                pid,
                stdin,
                ready: false,
                started: now,
                last_heard: now,
                task: None,
            },
        );
        Ok(())
    }

    async fn send(&mut self, worker: u64, m: ToWorker) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if let Some(stdin) = &mut w.stdin {
                if stdin.write_all(m.line().as_bytes()).await.is_err() {
                    w.stdin = None;
                }
            }
        }
    }

    /// Gives pending tasks to ready, idle workers.
    async fn assign(&mut self) {
        let now = Instant::now();
        while self.stopping.is_none() {
            let Some(i) = self.pending.iter().position(|(_, at)| *at <= now) else {
                return;
            };
            let Some((&wid, _)) = self
                .workers
                .iter()
                .filter(|(_, w)| w.ready && w.task.is_none() && w.stdin.is_some())
                .min_by_key(|(_, w)| w.started)
            else {
                return;
            };
            let (id, _) = self.pending.remove(i).expect("listed");
            let at = now_us();
            // Cold: the worker was started after the failure was seen.
            let detected = self.failovers.get(&id).map(|f| f.detected);
            let (pid, cold) = {
                let w = self.workers.get_mut(&wid).expect("listed");
                w.task = Some(id.clone());
                (w.pid, detected.is_some_and(|d| w.started >= d))
            };
            if let Some(f) = self.failovers.get_mut(&id) {
                f.assigned = Some((pid, at, cold));
            }
            if let Some(t) = self.tasks.get_mut(&id) {
                t.pid = Some(pid);
                t.records = 0;
            }
            self.send(
                wid,
                ToWorker::Assign {
                    stage: id.0.clone(),
                    task: id.1,
                },
            )
            .await;
            let _ = self.events.send(SupervisorEvent::Assigned {
                stage: id.0.clone(),
                task: id.1,
                pid,
                at_us: at,
            });
        }
    }

    async fn on_msg(&mut self, wid: u64, msg: WorkerMsg) -> Result<(), RuntimeError> {
        match msg {
            WorkerMsg::Exited(code) => {
                let Some(w) = self.workers.remove(&wid) else {
                    return Ok(());
                };
                let _ = self.events.send(SupervisorEvent::WorkerExited {
                    pid: w.pid,
                    task: w.task.clone(),
                    code,
                    at_us: now_us(),
                });
                if self.stopping.is_some() {
                    return Ok(());
                }
                if let Some(id) = w.task {
                    tracing::warn!(stage = %id.0, task = id.1, pid = w.pid, ?code, "worker died; failing over");
                    metrics::counter!("streamshield_runtime_restarts_total").increment(1);
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.restarts += 1;
                        t.pid = None;
                    }
                    self.failovers.insert(
                        id.clone(),
                        Failover {
                            old_pid: w.pid,
                            detected: Instant::now(),
                            detected_us: now_us(),
                            assigned: None,
                            attached_us: None,
                            first_record_us: None,
                        },
                    );
                    // Killed (or hung): over at once. Failed with an error:
                    // after a pause, as Flink's fixed-delay restarts.
                    let at = if code == Some(1) {
                        Instant::now() + FAILED_TASK_DELAY
                    } else {
                        Instant::now()
                    };
                    self.pending.push_front((id, at));
                    self.assign().await;
                }
                self.spawn_worker()?;
            }
            WorkerMsg::Line(line) => {
                if let Some(w) = self.workers.get_mut(&wid) {
                    w.last_heard = Instant::now();
                }
                match line {
                    FromWorker::Ready { .. } => {
                        if let Some(w) = self.workers.get_mut(&wid) {
                            w.ready = true;
                        }
                        self.assign().await;
                    }
                    FromWorker::Heartbeat | FromWorker::Stopped => {}
                    FromWorker::Failed { error, fenced } => {
                        tracing::warn!(wid, error, fenced, "worker's task failed");
                    }
                    FromWorker::Task { stage, task, event } => {
                        self.on_task_event((stage, task), event);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_task_event(&mut self, id: TaskId, event: TaskEvent) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        match event {
            TaskEvent::Attached { generation, at_us } => {
                t.generation = generation;
                if let Some(f) = self.failovers.get_mut(&id) {
                    f.attached_us = Some(at_us);
                }
            }
            TaskEvent::FirstRecord { at_us } => {
                if let Some(f) = self.failovers.get_mut(&id) {
                    f.first_record_us = Some(at_us);
                }
            }
            TaskEvent::Committed {
                epoch,
                records,
                offsets,
                watermark,
                at_us,
                commit_us,
            } => {
                t.epoch = epoch;
                // `records` counts from the worker's attach.
                let new = records.saturating_sub(if records >= t.records { t.records } else { 0 });
                metrics::counter!("streamshield_runtime_records_total", "stage" => id.0.clone())
                    .increment(new);
                t.records = records;
                t.offsets = offsets.into_iter().collect();
                t.watermark = Some(watermark);
                t.last_commit_us = at_us;
                metrics::histogram!("streamshield_runtime_commit_seconds")
                    .record(commit_us as f64 / 1e6);
                let _ = self.events.send(SupervisorEvent::Committed {
                    stage: id.0.clone(),
                    task: id.1,
                    epoch,
                    records,
                    at_us,
                    commit_us,
                });
                if records > 0 {
                    if let Some(f) = self.failovers.remove(&id) {
                        let r = recovery(&id, f, at_us);
                        log_recovery(&r);
                        t.last_recovery = Some(r.clone());
                        let _ = self.events.send(SupervisorEvent::Recovered(r));
                    }
                }
            }
        }
    }

    /// Kills workers that stopped beating: their tasks fail over when the
    /// exit is seen.
    fn check_heartbeats(&mut self) {
        let timeout = self.cfg.job.heartbeat_timeout();
        for w in self.workers.values() {
            let silent = w.last_heard.elapsed();
            let hung = if w.ready {
                silent > timeout
            } else {
                w.started.elapsed() > STARTUP_GRACE
            };
            if hung && self.stopping.is_none() {
                tracing::warn!(pid = w.pid, silent_ms = silent.as_millis() as u64, task = ?w.task, "worker hung; killing it");
                // SAFETY: kill(2) has no memory effects; the pid is our
                // child's, not yet reaped (its exit removes it from here).
                unsafe {
                    libc::kill(w.pid as i32, libc::SIGKILL);
                }
            }
        }
    }

    fn status(&self) -> JobStatus {
        JobStatus {
            job: self.cfg.job.namespace().to_string(),
            supervisor_pid: std::process::id(),
            tasks: self.tasks.values().cloned().collect(),
            standbys: self
                .workers
                .values()
                .filter(|w| w.ready && w.task.is_none())
                .count(),
            workers: self.workers.len(),
            at_us: now_us(),
        }
    }

    fn write_status(&self) {
        if let Some(path) = &self.cfg.status_file {
            let tmp = path.with_extension("tmp");
            let json = serde_json::to_vec_pretty(&self.status()).expect("status serializes");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }

    /// Each task's lag against its stage's input ends, as a gauge too.
    fn on_input_ends(&mut self, stage: &str, ends: &[u64]) {
        let layout = self.cfg.job.layout();
        let n = self.cfg.job.parallelism_of(stage);
        for t in self.tasks.values_mut().filter(|t| t.stage == stage) {
            let lag: u64 = layout
                .partitions_of_task(t.task, n)
                .map(|p| {
                    let end = ends.get(p as usize).copied().unwrap_or(0);
                    end.saturating_sub(t.offsets.get(&p).copied().unwrap_or(0))
                })
                .sum();
            t.lag = Some(lag);
            metrics::gauge!("streamshield_runtime_lag_records", "stage" => stage.to_string(), "task" => t.task.to_string())
                .set(lag as f64);
        }
    }

    async fn run(
        mut self,
        mut msgs: mpsc::UnboundedReceiver<(u64, WorkerMsg)>,
        mut requests: mpsc::Receiver<Request>,
        mut ends: mpsc::Receiver<(String, Vec<u64>)>,
    ) {
        let mut beat = tokio::time::interval(self.cfg.job.heartbeat_interval());
        let mut status = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                Some((wid, msg)) = msgs.recv() => {
                    if let Err(e) = self.on_msg(wid, msg).await {
                        tracing::error!(error = %e, "cannot start a worker");
                    }
                    if self.stopping.is_some() && self.workers.is_empty() {
                        break;
                    }
                }
                req = requests.recv() => match req {
                    Some(Request::Status(tx)) => {
                        let _ = tx.send(self.status());
                    }
                    Some(Request::Stop(tx)) => {
                        self.stopping = Some(tx);
                        let ids: Vec<u64> = self.workers.keys().copied().collect();
                        for wid in ids {
                            self.send(wid, ToWorker::Stop).await;
                            if let Some(w) = self.workers.get_mut(&wid) {
                                w.stdin = None;
                            }
                        }
                        if self.workers.is_empty() {
                            break;
                        }
                    }
                    None => break,
                },
                Some((stage, e)) = ends.recv() => self.on_input_ends(&stage, &e),
                _ = beat.tick() => {
                    self.check_heartbeats();
                    self.assign().await;
                }
                _ = status.tick() => self.write_status(),
            }
        }
        self.write_status();
        for w in self.workers.values() {
            // SAFETY: as in `check_heartbeats`.
            unsafe {
                libc::kill(w.pid as i32, libc::SIGKILL);
            }
        }
        if let Some(tx) = self.stopping.take() {
            let _ = tx.send(());
        }
    }
}

fn recovery(id: &TaskId, f: Failover, first_commit_us: u64) -> Recovery {
    let (new_pid, assigned_us, cold) = f.assigned.unwrap_or((0, 0, true));
    Recovery {
        stage: id.0.clone(),
        task: id.1,
        old_pid: f.old_pid,
        new_pid,
        cold,
        detected_us: f.detected_us,
        assigned_us,
        attached_us: f.attached_us,
        first_record_us: f.first_record_us,
        first_commit_us: Some(first_commit_us),
    }
}

fn log_recovery(r: &Recovery) {
    let ms = |t: Option<u64>| t.map(|t| t.saturating_sub(r.detected_us) as f64 / 1000.0);
    let to_first = ms(r.first_record_us);
    if let Some(s) = to_first {
        metrics::histogram!("streamshield_runtime_recovery_seconds").record(s / 1000.0);
    }
    tracing::info!(
        stage = %r.stage,
        task = r.task,
        old_pid = r.old_pid,
        new_pid = r.new_pid,
        standby = !r.cold,
        attached_ms = ms(r.attached_us),
        first_record_ms = to_first,
        first_commit_ms = ms(r.first_commit_us),
        "task recovered"
    );
}
