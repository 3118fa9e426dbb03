//! One task's life: take the lease, resume from the committed checkpoint,
//! then read, process and commit an epoch every checkpoint interval until
//! told to stop or fenced.
//!
//! Input arrives by subscription, one per partition, so a committed record
//! upstream reaches the task within a millisecond or two. Processing does
//! not wait for a commit's answer any longer than the commit takes: the
//! subscriptions keep reading ahead into a bounded queue meanwhile.
//!
//! A store outage pauses the task: every call waits and retries (the
//! worker's client has no deadline to speak of), and an epoch that cannot
//! commit yet is retried as it stands, never restarted. Only a newer lease
//! (`Fenced`) or bad data ends a task.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use streamshield_client::{pb, Client, ClientError, TaskSessionConfig, TaskSpec};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{resume, TaskMeta};
use crate::config::JobConfig;
use crate::context::{advance_watermark, Backing, Context, Output};
use crate::envelope::{self, Envelope};
use crate::error::RuntimeError;
use crate::job::{JobDef, StreamRef};
use crate::operator::Input;
use crate::time::{Timers, Watermarks, TIMERS_TABLE};

/// Microseconds since the Unix epoch: comparable across the processes of
/// one machine (a worker's events against the supervisor's kill time).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a task reports as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TaskEvent {
    Attached {
        generation: u64,
        at_us: u64,
    },
    /// The first input record handled since the task attached.
    FirstRecord {
        at_us: u64,
    },
    Committed {
        epoch: u64,
        /// Data records handled since the task attached.
        records: u64,
        /// Next offset per input partition. A list, not a map: serde's
        /// tagged enums lose a map's integer keys.
        offsets: Vec<(u32, u64)>,
        watermark: i64,
        at_us: u64,
        commit_us: u64,
    },
}

/// Reads one partition from `from` on, handing batches to the task; stops
/// when the task drops its end of the queue.
async fn read_partition(
    client: Client,
    input: StreamRef,
    partition: u32,
    mut from: u64,
    tx: mpsc::Sender<(u32, Vec<pb::RecordAt>)>,
) {
    loop {
        match client
            .subscribe(&input.job, &input.stream, partition, from)
            .await
        {
            Ok(mut s) => {
                while let Ok(Some(page)) = s.message().await {
                    let Some(last) = page.records.last() else {
                        continue;
                    };
                    from = last.offset + 1;
                    if tx.send((partition, page.records)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, partition, "subscribe failed; retrying"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Aborts the readers when the task ends, however it ends.
struct Readers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for r in &self.0 {
            r.abort();
        }
    }
}

/// Retries `f` while it fails in a way a store outage explains.
async fn patiently<T, F, Fut>(what: &str, mut f: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RuntimeError>>,
{
    loop {
        match f().await {
            Err(e) if e.is_transient() => {
                tracing::info!(error = %e, "{what}: the store is unavailable; waiting");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Every value of `table` in the key groups `own`, read by the store
/// itself group by group (a scan by key-group range).
async fn scan_own(
    client: &Client,
    store_job: &str,
    table: &str,
    own: &std::ops::Range<u32>,
) -> Result<Vec<pb::KeyValue>, ClientError> {
    client
        .scan_key_groups(
            store_job,
            table,
            b"",
            Some(own.clone()),
            streamshield_client::Consistency::Linearizable,
        )
        .await
}

/// Reads every value of `table` in the task's key groups, as a
/// replacement that restores its state from a checkpoint must before it
/// handles a record. Returns the bytes read.
async fn restore(
    client: &Client,
    store_job: &str,
    table: &str,
    own: &std::ops::Range<u32>,
) -> Result<u64, RuntimeError> {
    let kvs = patiently("restore", || async {
        scan_own(client, store_job, table, own)
            .await
            .map_err(RuntimeError::from)
    })
    .await?;
    Ok(kvs.iter().map(|kv| kv.value.len() as u64).sum())
}

/// The pending timers of the task's key groups, as the last commit of
/// each key's owner left them. A table never written holds none.
async fn load_timers(
    client: &Client,
    store_job: &str,
    own: &std::ops::Range<u32>,
) -> Result<Timers, RuntimeError> {
    let kvs = match scan_own(client, store_job, TIMERS_TABLE, own).await {
        Ok(kvs) => kvs,
        Err(ClientError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut timers = Timers::default();
    for kv in kvs {
        let times: Vec<i64> =
            serde_json::from_slice(&kv.value).map_err(|e| RuntimeError::BadState {
                state: TIMERS_TABLE.to_string(),
                why: e.to_string(),
            })?;
        timers.load(&kv.key, times);
    }
    Ok(timers)
}

/// The task's reading position and event-time progress between commits.
struct Progress {
    input: String,
    offsets: BTreeMap<u32, u64>,
    marks: Watermarks,
    emitted_watermark: i64,
    records: u64,
    dirty: bool,
    /// When this worker last committed; `None` until its first commit.
    committed_at: Option<std::time::Instant>,
}

pub struct TaskArgs<'a> {
    pub client: &'a Client,
    pub job: &'a JobDef,
    pub cfg: &'a JobConfig,
    pub stage: usize,
    pub task: u32,
    /// Commit what is open, release the lease and return.
    pub stop: oneshot::Receiver<()>,
    pub events: &'a (dyn Fn(TaskEvent) + Send + Sync),
}

/// Runs the task until stopped or fenced. A stale lease met anywhere (a
/// staged batch, a sync write, a commit) ends it as `Fenced`.
pub async fn run_task(args: TaskArgs<'_>) -> Result<(), RuntimeError> {
    let stage = args.job.stages[args.stage].name.clone();
    let task = args.task;
    run(args).await.map_err(|e| match e {
        RuntimeError::Store(ClientError::StaleLease { held, current }) => RuntimeError::Fenced {
            stage,
            task,
            held,
            current,
        },
        e => e,
    })
}

async fn run(args: TaskArgs<'_>) -> Result<(), RuntimeError> {
    let TaskArgs {
        client,
        job,
        cfg,
        stage,
        task,
        mut stop,
        events,
    } = args;
    let def = &job.stages[stage];
    let store_job = job.store_job(cfg, stage);
    let layout = cfg.layout();
    let tasks = cfg.parallelism_of(&def.name);
    let parts = layout.partitions_of_task(task, tasks);
    let input = job.input_of(cfg, stage);
    let label = input.label();
    let spec = TaskSpec {
        job: store_job.clone(),
        task,
        key_groups: layout.groups_of_task(task, tasks),
        input_partitions: parts.clone().map(|p| (label.clone(), p)).collect(),
    };
    let session_config = TaskSessionConfig {
        commit_target: (cfg.commit_target_ms > 0)
            .then(|| Duration::from_millis(cfg.commit_target_ms)),
        ..TaskSessionConfig::default()
    };
    let (session, _) = patiently("lease", || async {
        client
            .acquire(spec.clone(), session_config.clone())
            .await
            .map_err(RuntimeError::from)
    })
    .await?;
    let generation = session.generation();
    let mut resumed = patiently("resume", || {
        resume(client, &store_job, &label, parts.clone(), layout)
    })
    .await?;
    events(TaskEvent::Attached {
        generation,
        at_us: now_us(),
    });
    for table in &cfg.restore_tables {
        let bytes = restore(client, &store_job, table, &spec.key_groups).await?;
        tracing::info!(
            table,
            bytes,
            "downloaded the task's state (restore baseline)"
        );
    }
    tracing::info!(stage = %def.name, task, generation, "attached");

    let output = def.output.clone().map(|stream| Output { stream, layout });
    let mut ctx = Context::new(
        Backing::Session(Box::new(session)),
        cfg.cache_bytes as usize,
        output,
        task,
    );
    let upstream = job.upstream_tasks(cfg, stage);
    let legacy_timers = std::mem::take(&mut resumed.meta.timers);
    ctx.watermark = resumed.meta.watermarks.current(parts.clone(), upstream);
    let mut progress = Progress {
        input: label,
        offsets: resumed.offsets,
        marks: resumed.meta.watermarks,
        emitted_watermark: resumed.meta.emitted_watermark,
        records: 0,
        dirty: false,
        committed_at: None,
    };
    let mut op = def.operator();

    let (tx, mut rx) = mpsc::channel(256);
    let _readers = Readers(
        progress
            .offsets
            .iter()
            .map(|(&p, &from)| {
                tokio::spawn(read_partition(
                    client.clone(),
                    input.clone(),
                    p,
                    from,
                    tx.clone(),
                ))
            })
            .collect(),
    );
    drop(tx);
    // Loaded while the subscriptions open, before the first record: an
    // operator may set or delete a timer of any key, and what the commit
    // writes for a key must start from what is stored.
    let loading = std::time::Instant::now();
    let mut timers = patiently("timers", || {
        load_timers(client, &store_job, &spec.key_groups)
    })
    .await?;
    tracing::info!(
        timers = timers.len(),
        ms = loading.elapsed().as_secs_f64() * 1e3,
        "loaded the pending timers"
    );
    // Timers of metadata written before they were stored by key: stored
    // at the first commit.
    for (time, key) in legacy_timers.iter() {
        timers.register(*time, key);
    }
    ctx.timers = timers;

    let mut tick = tokio::time::interval(cfg.checkpoint_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first_record = true;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                if progress.dirty {
                    commit(&mut ctx, &mut progress, cfg, &def.name, events).await?;
                }
                if let Backing::Session(s) = ctx.backing {
                    patiently("release", || async {
                        match s.release().await {
                            Err(ClientError::StaleLease { .. }) => Ok(()),
                            other => other.map_err(RuntimeError::from),
                        }
                    })
                    .await?;
                }
                return Ok(());
            }
            _ = tick.tick() => {
                if progress.dirty {
                    commit(&mut ctx, &mut progress, cfg, &def.name, events).await?;
                }
            }
            Some((p, records)) = rx.recv() => {
                tracing::debug!(partition = p, records = records.len(), "input batch");
                for r in records {
                    let next = progress.offsets.entry(p).or_insert(0);
                    if r.offset < *next {
                        continue;
                    }
                    *next = r.offset + 1;
                    progress.dirty = true;
                    match envelope::decode(r.key, r.value) {
                        Ok(Envelope::Data { key, value, event_time }) => {
                            ctx.key.clone_from(&key);
                            op.process_dyn(&mut ctx, Input { key, value, event_time }).await?;
                            ctx.hand_over_emitted().await?;
                            progress.records += 1;
                            if first_record {
                                first_record = false;
                                events(TaskEvent::FirstRecord { at_us: now_us() });
                            }
                        }
                        Ok(Envelope::Watermark { source, time }) => {
                            progress.marks.observe(p, source, time);
                        }
                        Err(why) => {
                            return Err(RuntimeError::BadRecord {
                                stream: progress.input.clone(),
                                partition: p,
                                offset: r.offset,
                                why,
                            })
                        }
                    }
                }
                let wm = progress.marks.current(parts.clone(), upstream);
                advance_watermark(op.as_mut(), &mut ctx, wm).await?;
                // An epoch whose interval has already run out commits as
                // soon as it holds input, not at the next tick: the first
                // input of a task that just took over (its progress is safe
                // nowhere until then), and the first after a store outage
                // or an idle spell, when downstream has waited longest.
                let overdue = progress
                    .committed_at
                    .is_none_or(|at| at.elapsed() >= cfg.checkpoint_interval());
                if progress.dirty && overdue {
                    commit(&mut ctx, &mut progress, cfg, &def.name, events).await?;
                    tick.reset();
                }
            }
        }
    }
}

/// Commits the open epoch: state, input offsets, outputs and the task's
/// event-time position, with the watermark sent downstream if it moved.
async fn commit(
    ctx: &mut Context,
    progress: &mut Progress,
    cfg: &JobConfig,
    stage: &str,
    events: &(dyn Fn(TaskEvent) + Send + Sync),
) -> Result<(), RuntimeError> {
    let started = std::time::Instant::now();
    let task = ctx.task;
    let watermark = ctx.watermark;
    let stream = ctx.output.as_ref().map(|o| o.stream.clone());
    let timer_changes = ctx.timers.take_changes();
    ctx.hand_over_emitted().await?;
    let session = ctx.session_mut().expect("a task runs on its session");
    if let Some(stream) = &stream {
        if watermark > progress.emitted_watermark {
            for p in 0..cfg.partitions {
                let w = envelope::watermark(task, watermark);
                session.emit(stream, p, w.key, w.value).await?;
            }
            progress.emitted_watermark = watermark;
        }
    }
    for (key, times) in timer_changes {
        if times.is_empty() {
            session.delete(TIMERS_TABLE, key).await?;
        } else {
            let value = serde_json::to_vec(&times).expect("numbers serialize");
            session.put(TIMERS_TABLE, key, value).await?;
        }
    }
    let meta = TaskMeta {
        watermarks: progress.marks.clone(),
        timers: Timers::default(),
        emitted_watermark: progress.emitted_watermark,
    };
    let offsets: Vec<pb::InputOffset> = progress
        .offsets
        .iter()
        .map(|(&partition, &offset)| pb::InputOffset {
            stream: progress.input.clone(),
            partition,
            offset,
        })
        .collect();
    let metadata = meta.encode();
    tracing::debug!(records = progress.records, "commit");
    let committed = loop {
        match session.commit(offsets.clone(), metadata.clone()).await {
            Ok(c) => break c,
            Err(ClientError::StaleLease { held, current }) => {
                return Err(RuntimeError::Fenced {
                    stage: stage.to_string(),
                    task,
                    held,
                    current,
                })
            }
            Err(e) => {
                let e = RuntimeError::from(e);
                if !e.is_transient() {
                    return Err(e);
                }
                tracing::info!(error = %e, "commit: the store is unavailable; retrying the epoch");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    progress.dirty = false;
    progress.committed_at = Some(std::time::Instant::now());
    events(TaskEvent::Committed {
        epoch: committed.epoch,
        records: progress.records,
        offsets: progress.offsets.iter().map(|(p, o)| (*p, *o)).collect(),
        watermark,
        at_us: now_us(),
        commit_us: started.elapsed().as_micros() as u64,
    });
    Ok(())
}
