//! The task API: leases, staged epoch writes, epoch commits.
//!
//! Each call is checked (`validate`), authorized as a write (or read) of
//! its job, translated into the log's own command (`command.proto`) with
//! the caller's principal, and proposed; the state machine's apply decides
//! (`state_machine/apply/leases.rs`, `epochs.rs`), identically on every
//! replica.

use std::sync::Arc;
use std::time::Instant;

use streamshield_proto::v1::{self as pb, command, command_response, op, tasks_server::Tasks};
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::NodeContext;
use crate::error::ServiceError;
use crate::state_machine::read;
use crate::validate;

#[derive(Clone)]
pub struct TasksService {
    ctx: Arc<NodeContext>,
}

impl TasksService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

fn lease_ref(principal: String, job: String, task: u32, generation: u64) -> Option<pb::LeaseRef> {
    Some(pb::LeaseRef {
        principal,
        job,
        task,
        generation,
    })
}

/// A client op as the log stages it.
fn staged_op(o: pb::Op) -> pb::StagedOp {
    pb::StagedOp {
        state: o.state,
        key: o.key,
        kind: o.kind.map(|k| match k {
            op::Kind::Put(put) => pb::staged_op::Kind::Put(put.value),
            op::Kind::Delete(_) => pb::staged_op::Kind::Delete(true),
            op::Kind::Emit(e) => pb::staged_op::Kind::Emit(pb::StagedEmit {
                stream: e.stream,
                partition: e.partition,
                value: e.value,
            }),
        }),
    }
}

fn checkpoint(c: pb::CheckpointRecord) -> pb::Checkpoint {
    pb::Checkpoint {
        epoch: c.epoch,
        input_offsets: c
            .input_offsets
            .into_iter()
            .map(|o| pb::InputOffset {
                stream: o.stream,
                partition: o.partition,
                offset: o.offset,
            })
            .collect(),
        metadata: c.metadata,
        committed_index: c.committed_index,
        committed_at_ms: c.committed_at_ms,
    }
}

fn task_info(t: pb::TaskRecord) -> pb::TaskInfo {
    pb::TaskInfo {
        task: t.task,
        generation: t.generation,
        key_group_start: t.key_group_start,
        key_group_end: t.key_group_end,
        input_partitions: t
            .input_partitions
            .into_iter()
            .map(|p| pb::StreamPartition {
                stream: p.stream,
                partition: p.partition,
            })
            .collect(),
        owner: t.principal,
        released: t.released,
        checkpoint: t.checkpoint.map(checkpoint),
        open_epochs: t.staging.len() as u32,
        promoting_epoch: t.promoting.map_or(0, |m| m.epoch),
        promoting_bytes_left: t.promoting.map_or(0, |m| m.bytes_left),
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn acquire_lease(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::AcquireLeaseResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::acquire(&r, &self.ctx.limits)?;
        let who = self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let cmd = command::Kind::AcquireLease(pb::LeaseAcquire {
            principal: who.principal,
            job: r.job,
            task: r.task,
            key_group_start: r.key_group_start,
            key_group_end: r.key_group_end,
            input_partitions: r
                .input_partitions
                .into_iter()
                .map(|p| pb::PartitionRef {
                    stream: p.stream,
                    partition: p.partition,
                })
                .collect(),
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::LeaseGranted(g)) => {
                Ok(Response::new(pb::AcquireLeaseResponse {
                    generation: g.generation,
                    checkpoint: g.checkpoint.map(checkpoint),
                    key_groups: g.key_groups,
                    index,
                    sync_tables: g.sync_tables,
                }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("lease", &other).into()),
        }
    }

    async fn stage_writes(
        &self,
        request: Request<pb::StageWritesRequest>,
    ) -> Result<Response<pb::StageWritesResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::stage(&r, &self.ctx.limits)?;
        let who = self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let cmd = command::Kind::StageWrites(pb::StageOps {
            lease: lease_ref(who.principal, r.job, r.task, r.generation),
            epoch: r.epoch,
            seq_from: r.seq_from,
            ops: r.ops.into_iter().map(staged_op).collect(),
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::StagedThrough(staged_through)) => {
                Ok(Response::new(pb::StageWritesResponse {
                    staged_through,
                    index,
                }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("stage", &other).into()),
        }
    }

    async fn commit_epoch(
        &self,
        request: Request<pb::CommitEpochRequest>,
    ) -> Result<Response<pb::CommitEpochResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::commit(&r, &self.ctx.limits)?;
        let who = self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let started = Instant::now();
        let lease = lease_ref(who.principal, r.job, r.task, r.generation);
        // The tail is staged by the same entry, just before the commit.
        let tail = (!r.ops.is_empty()).then(|| {
            command::Kind::StageWrites(pb::StageOps {
                lease: lease.clone(),
                epoch: r.epoch,
                seq_from: r.last_seq - (r.ops.len() as u64 - 1),
                ops: r.ops.into_iter().map(staged_op).collect(),
            })
        });
        let cmd = command::Kind::CommitEpoch(pb::EpochCommit {
            lease,
            epoch: r.epoch,
            last_seq: r.last_seq,
            input_offsets: r
                .input_offsets
                .into_iter()
                .map(|o| pb::PartitionOffset {
                    stream: o.stream,
                    partition: o.partition,
                    offset: o.offset,
                })
                .collect(),
            metadata: r.metadata,
            outputs: super::streams::partition_entries(r.outputs),
        });
        let answer = match tail {
            None => self.ctx.propose_kind(cmd).await?,
            Some(tail) => self.ctx.propose_kinds_last(vec![tail, cmd]).await?,
        };
        match answer {
            (index, command_response::Kind::EpochCommitted(c)) => {
                metrics::histogram!("streamshield_epoch_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(Response::new(pb::CommitEpochResponse {
                    index,
                    already_committed: c.already_committed,
                    promoting: c.promoting,
                }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("commit", &other).into()),
        }
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::release(&r, &self.ctx.limits)?;
        let who = self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let cmd = command::Kind::ReleaseLease(pb::LeaseRelease {
            lease: lease_ref(who.principal, r.job, r.task, r.generation),
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::LeaseReleased(_)) => {
                Ok(Response::new(pb::ReleaseLeaseResponse { index }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("release", &other).into()),
        }
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx
            .check_job_read(&ext, r.shard, &r.job, r.consistency)
            .await?;
        let applied_index = self.ctx.sm.applied_index();
        let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
        let (tasks, more) = read::tasks(
            &db,
            info.as_deref(),
            r.shard,
            &r.job,
            r.start_after,
            self.ctx.limits.max_scan_bytes,
        )?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(task_info).collect(),
            applied_index,
            answered_by: self.ctx.id,
            more,
        }))
    }
}
