//! A task's write pipeline: writes buffered and shipped in the background
//! as staged batches, made visible together at each epoch commit.
//!
//! [`Client::acquire`] takes a task's lease (fencing any earlier holder)
//! and returns a [`TaskSession`] with the task's last checkpoint. `put`,
//! `delete` and `emit` (a record for a stream partition, appended when
//! the epoch commits) return at once: ops gather in a buffer that goes out as
//! one `StageWrites` when it reaches `batch_bytes` or `batch_ops` or has
//! waited `linger`, with at most `window` batches in flight (a full window
//! makes the next `put` wait: backpressure). Every op of the open epoch is
//! also held here, under its seq, until the epoch commits: the task reads
//! its own writes from them (`get`), and a commit that finds seqs missing
//! (a batch lost to a leader change) re-sends exactly those. `commit`
//! waits for the batches in flight and sends what is still buffered with
//! the commit itself, which the node stages in the commit's own entry.
//!
//! Tables the job declares SYNC (`Client::set_table_mode`, or with the
//! job) and tables named in `sync_tables` are written synchronously
//! instead: each write is acknowledged once committed, fenced by the same
//! lease (the hybrid mode, per table).
//!
//! Dropping a session commits nothing: its staged writes stay invisible,
//! and the next lease of the task drops them.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamshield_proto::v1::{self as pb, op};
use tokio::sync::Semaphore;

use crate::batch_sizer::BatchSizer;
use crate::epoch_ops::{EpochOps, Slice};
use crate::shared_stage::SharedStageWrites;
use crate::{Client, ClientError, Consistency};

/// How a session batches and pipelines.
#[derive(Debug, Clone)]
pub struct TaskSessionConfig {
    /// A batch goes out once its keys and values reach this. Default 128 KiB.
    pub batch_bytes: usize,
    /// ... or once it holds this many ops (a node refuses batches of more
    /// than its `max_ops_per_batch`, 10,000 by default). Default 4,096.
    pub batch_ops: usize,
    /// A batch goes out at the next write after it waited this long,
    /// whatever its size; what is still buffered at a commit goes with the
    /// commit, so this adds nothing to a commit's latency. Default 25 ms.
    pub linger: Duration,
    /// Batches in flight at once. Default 2.
    ///
    /// With `batch_bytes`, this bounds what a commit waits for: it is
    /// sent once every batch in flight is answered, and behind a saturated
    /// cluster each of them waits its turn in the Raft log. 2 × 128 KiB
    /// halves a saturated commit's latency against 4 × 256 KiB for about
    /// a tenth less throughput (PERFORMANCE.md, "The session's window").
    pub window: usize,
    /// Sizes batches (within 8 KiB and `batch_bytes`) so that what is in
    /// flight drains within about this long at the rate the cluster has
    /// been answering this session: a commit then waits about this long
    /// for its batches, however many tasks share a saturated cluster,
    /// until their batches reach the floor.
    /// Costs throughput at saturation, where it makes batches small
    /// (README, "Tasks"). Default none: batches of `batch_bytes`.
    pub commit_target: Option<Duration>,
    /// Rounds of re-sending missing seqs before a commit gives up. Default 5.
    pub resend_rounds: u32,
    /// State tables written synchronously: a `put` or `delete` of theirs
    /// returns once committed and is visible at once, fenced by the lease
    /// but not part of the epoch (for state that must survive every single
    /// update), besides those the job declares SYNC. Every other table is
    /// asynchronous. Default none.
    pub sync_tables: Vec<String>,
}

impl Default for TaskSessionConfig {
    fn default() -> Self {
        Self {
            batch_bytes: 128 << 10,
            batch_ops: 4096,
            linger: Duration::from_millis(25),
            window: 2,
            commit_target: None,
            resend_rounds: 5,
            sync_tables: Vec::new(),
        }
    }
}

/// What a task names when it takes its lease.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub job: String,
    pub task: u32,
    /// Key groups `[start, end)` the task owns.
    pub key_groups: Range<u32>,
    /// `(stream, partition)` the task reads.
    pub input_partitions: Vec<(String, u32)>,
}

/// The committed epoch, as `commit` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub epoch: u64,
    pub index: u64,
    /// The epoch staged more than one apply promotes at once: it is
    /// committed, and its state becomes readable (reads of the task's key
    /// groups wait for it) once the steps after the commit have promoted
    /// it. The next commit waits for them too.
    pub promoting: bool,
}

/// A task's lease and its open epoch. Not `Clone`: one owner writes.
pub struct TaskSession {
    client: Client,
    spec: TaskSpec,
    generation: u64,
    job_key_groups: u32,
    config: TaskSessionConfig,
    /// The epoch being written: the last committed one plus one.
    epoch: u64,
    /// Every op of the open epoch.
    held: EpochOps,
    first_unsent_at: Option<Instant>,
    window: Arc<Semaphore>,
    /// With a commit target: the batch size it allows now.
    sizer: Option<BatchSizer>,
    /// The first error of a background send that the commit must report
    /// (a fenced lease); transient failures show up as missing seqs.
    failed: Arc<Mutex<Option<ClientError>>>,
}

impl Client {
    /// Takes task `spec.task` of `spec.job`, fencing every earlier holder,
    /// and returns its session and its last committed checkpoint.
    pub async fn acquire(
        &self,
        spec: TaskSpec,
        config: TaskSessionConfig,
    ) -> Result<(TaskSession, Option<pb::Checkpoint>), ClientError> {
        let r = self
            .acquire_lease(pb::AcquireLeaseRequest {
                shard: 0,
                job: spec.job.clone(),
                task: spec.task,
                key_group_start: spec.key_groups.start,
                key_group_end: spec.key_groups.end,
                input_partitions: spec
                    .input_partitions
                    .iter()
                    .map(|(stream, partition)| pb::StreamPartition {
                        stream: stream.clone(),
                        partition: *partition,
                    })
                    .collect(),
            })
            .await?;
        let epoch = r.checkpoint.as_ref().map_or(0, |c| c.epoch) + 1;
        let mut config = config;
        // Tables the job declares SYNC join the ones the caller names.
        for t in r.sync_tables {
            if !config.sync_tables.contains(&t) {
                config.sync_tables.push(t);
            }
        }
        let session = TaskSession {
            client: self.clone(),
            spec,
            generation: r.generation,
            job_key_groups: r.key_groups,
            window: Arc::new(Semaphore::new(config.window.max(1))),
            sizer: config.commit_target.map(|target| {
                BatchSizer::new(target, config.window, config.batch_bytes, Instant::now())
            }),
            config,
            epoch,
            held: EpochOps::default(),
            first_unsent_at: None,
            failed: Arc::default(),
        };
        Ok((session, r.checkpoint))
    }
}

impl TaskSession {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The epoch the next writes belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The job's key-group count (to place keys in groups).
    pub fn job_key_groups(&self) -> u32 {
        self.job_key_groups
    }

    pub async fn put(
        &mut self,
        state: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let value = value.into();
        self.push(state, key.into(), Some(value)).await
    }

    pub async fn delete(
        &mut self,
        state: &str,
        key: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.push(state, key.into(), None).await
    }

    async fn push(
        &mut self,
        state: &str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.check_failed()?;
        if self.config.sync_tables.iter().any(|t| t == state) {
            let batch = crate::WriteBatch::new(self.spec.job.clone())
                .with_lease(self.spec.task, self.generation);
            let batch = match value {
                Some(v) => batch.put(state, key, v),
                None => batch.delete(state, key),
            };
            return self.client.write(batch).await.map(|_| ());
        }
        self.held.push(pb::Op {
            state: state.to_string(),
            key,
            kind: Some(match value {
                Some(value) => op::Kind::Put(pb::Put { value }),
                None => op::Kind::Delete(pb::Delete {}),
            }),
        });
        self.flush_if_due().await
    }

    /// Sends the buffer once it is full or has waited its linger.
    async fn flush_if_due(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        let since = *self.first_unsent_at.get_or_insert(now);
        if self.held.unsent_bytes() >= self.batch_bytes()
            || self.held.unsent_len() >= self.config.batch_ops
            || now.duration_since(since) >= self.config.linger
        {
            self.flush().await?;
        }
        Ok(())
    }

    /// Produces a record into `stream`'s `partition`: it becomes visible
    /// downstream when (and only if) the open epoch commits, after the
    /// records emitted before it. Records are staged with the epoch's
    /// writes (batched and pipelined alike, a full window makes this
    /// wait), so an epoch's outputs are bounded by the store's staging,
    /// not by one request.
    pub async fn emit(
        &mut self,
        stream: &str,
        partition: u32,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.check_failed()?;
        self.held.push(pb::Op {
            state: String::new(),
            key: key.into(),
            kind: Some(op::Kind::Emit(pb::Emit {
                stream: stream.to_string(),
                partition,
                value: value.into(),
            })),
        });
        self.flush_if_due().await
    }

    /// The task's view of a key: its own uncommitted write if it has one,
    /// else the committed value.
    pub async fn get(&self, state: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        if let Some(o) = self.held.newest(state, key) {
            return Ok(match &o.kind {
                Some(op::Kind::Put(p)) => Some(p.value.clone()),
                _ => None,
            });
        }
        match self
            .client
            .get(&self.spec.job, state, key, Consistency::Linearizable)
            .await
        {
            Ok(kv) => Ok(kv.map(|kv| kv.value)),
            // A table the job has not written yet holds nothing.
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The task's view of every key of `state` that starts with `prefix`
    /// in key group `key_group`, in key order: its own uncommitted writes
    /// over the committed values (a prefix-placed table's entries of one
    /// placement key all sit in its group, `crate::prefixed_key`). Costs a
    /// scan of the committed keys and a pass over the keys written this
    /// epoch.
    pub async fn scan_prefix(
        &self,
        state: &str,
        prefix: &[u8],
        key_group: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let committed = match self
            .client
            .scan_key_groups(
                &self.spec.job,
                state,
                prefix,
                Some(key_group..key_group + 1),
                Consistency::Linearizable,
            )
            .await
        {
            Ok(kvs) => kvs,
            // A table the job has not written yet holds nothing.
            Err(ClientError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(self.over_committed(committed, state, prefix))
    }

    /// [`Self::scan_prefix`] for a prefix that may hold more keys than a
    /// caller wants in memory at once: the view if at most `limit`
    /// committed keys start with `prefix` (one read of at most `limit`
    /// keys), `None` if more do.
    pub async fn scan_prefix_within(
        &self,
        state: &str,
        prefix: &[u8],
        key_group: u32,
        limit: u32,
    ) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, ClientError> {
        let opts = crate::ScanOptions {
            prefix: prefix.to_vec(),
            start_after: Vec::new(),
            // A limit of 0 asks the node for its default page.
            limit: limit.max(1),
            consistency: Consistency::Linearizable,
            key_groups: Some(key_group..key_group + 1),
        };
        let committed = match self.client.scan(&self.spec.job, state, opts).await {
            Ok(page) if page.more => return Ok(None),
            Ok(page) => page.kvs,
            Err(ClientError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        if limit == 0 && !committed.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.over_committed(committed, state, prefix)))
    }

    /// `committed` (the keys of `state` under `prefix`) with this epoch's
    /// own writes under `prefix` laid over them, in key order.
    fn over_committed(
        &self,
        committed: Vec<pb::KeyValue>,
        state: &str,
        prefix: &[u8],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut view: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
            committed.into_iter().map(|kv| (kv.key, kv.value)).collect();
        for o in self.held.newest_with_prefix(state, prefix) {
            match &o.kind {
                Some(op::Kind::Put(p)) => view.insert(o.key.clone(), p.value.clone()),
                _ => view.remove(&o.key),
            };
        }
        view.into_iter().collect()
    }

    /// The size at which a batch goes out: `batch_bytes`, or what the
    /// commit target allows now.
    pub fn batch_bytes(&self) -> usize {
        self.sizer
            .as_ref()
            .map_or(self.config.batch_bytes, BatchSizer::limit)
    }

    fn check_failed(&self) -> Result<(), ClientError> {
        match self.failed.lock().expect("failed").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends what is buffered as one batch, waiting for room in the window.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let bytes = self.held.unsent_bytes() as u64;
        let Some(batch) = self.held.seal() else {
            return Ok(());
        };
        self.first_unsent_at = None;
        let answered = self.sizer.as_mut().map(|s| {
            s.retune(Instant::now());
            s.answered()
        });
        let req = self.stage_request(batch);
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        let (client, failed) = (self.client.clone(), self.failed.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match client.stage_shared(req).await {
                Ok(_) => {
                    if let Some(a) = answered {
                        a.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                // Fenced or refused for good: the commit reports it.
                Err(
                    e @ (ClientError::StaleLease { .. }
                    | ClientError::PermissionDenied(_)
                    | ClientError::InvalidArgument(_)
                    | ClientError::NotFound(_)),
                ) => {
                    failed.lock().expect("failed").get_or_insert(e);
                }
                // Lost or timed out: the commit finds its seqs missing and
                // sends them again.
                Err(e) => tracing::debug!(error = %e, "a staged batch did not arrive"),
            }
        });
        Ok(())
    }

    /// A sealed batch, or part of one, as one request.
    fn stage_request(&self, batch: Slice) -> SharedStageWrites {
        SharedStageWrites {
            job: self.spec.job.clone(),
            task: self.spec.task,
            generation: self.generation,
            epoch: self.epoch,
            seq_from: batch.seq_from,
            ops: batch.ops,
            range: batch.range,
        }
    }

    /// Waits until every batch sent so far has been answered.
    pub async fn wait_staged(&self) {
        self.drain().await
    }

    /// Waits until no batch is in flight.
    async fn drain(&self) {
        let n = self.config.window.max(1) as u32;
        let all = self
            .window
            .acquire_many(n)
            .await
            .expect("the window is never closed");
        drop(all);
    }

    /// Commits the open epoch: its writes become visible to everyone and
    /// its emitted records are appended to their partitions, with
    /// `input_offsets` and `metadata` as the task's checkpoint, atomically.
    /// On `StaleLease` the task has been replaced and must stop.
    pub async fn commit(
        &mut self,
        input_offsets: Vec<pb::InputOffset>,
        metadata: Vec<u8>,
    ) -> Result<Committed, ClientError> {
        // What is not sent yet goes with the commit: the node stages it in
        // the commit's own entry, one replication round instead of two.
        let tail = self.held.seal();
        self.first_unsent_at = None;
        self.drain().await;
        self.check_failed()?;
        let req = pb::CommitEpochRequest {
            shard: 0,
            job: self.spec.job.clone(),
            task: self.spec.task,
            generation: self.generation,
            epoch: self.epoch,
            last_seq: self.held.len() as u64,
            input_offsets,
            metadata,
            outputs: Vec::new(),
            ops: tail.map_or_else(Vec::new, |t| t.ops[t.range].to_vec()),
        };
        let mut rounds = 0;
        let r = loop {
            match self.client.commit_epoch(req.clone()).await {
                Err(ClientError::MissingSeqs { missing, .. })
                    if rounds < self.config.resend_rounds =>
                {
                    rounds += 1;
                    for (first, last) in missing {
                        self.resend(first, last).await?;
                    }
                }
                other => break other?,
            }
        };
        let committed = Committed {
            epoch: self.epoch,
            index: r.index,
            promoting: r.promoting,
        };
        self.epoch += 1;
        self.held.clear();
        Ok(committed)
    }

    /// Sends seqs `first..=last` again and waits for them.
    async fn resend(&self, first: u64, last: u64) -> Result<(), ClientError> {
        let n = self.held.len() as u64;
        if first == 0 || last > n || first > last {
            return Err(ClientError::InvalidArgument(format!(
                "the cluster asks for seqs {first}..={last}, the epoch has 1..={n}"
            )));
        }
        // Every op is in a sealed batch by now (the commit sealed the
        // tail); each part is within the limits its batch was sent under.
        for part in self.held.sealed_range(first, last) {
            self.client.stage_shared(self.stage_request(part)).await?;
        }
        Ok(())
    }

    /// Gives the task up: its key groups and partitions become free for
    /// other tasks. Uncommitted writes are dropped. A release whose answer
    /// was lost may be retried.
    pub async fn release(&self) -> Result<(), ClientError> {
        self.client
            .release_lease(pb::ReleaseLeaseRequest {
                shard: 0,
                job: self.spec.job.clone(),
                task: self.spec.task,
                generation: self.generation,
            })
            .await
            .map(|_| ())
    }
}
