//! The operator API: status, membership, jobs (create, list, describe,
//! delete) and snapshots.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::{BasicNode, ServerState};
use streamshield_proto::v1::{self as pb, admin_server::Admin};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::{NodeContext, PROPOSAL_TIMEOUT};
use crate::codec;
use crate::error::ServiceError;
use crate::keys::{DEFAULT_SHARD, MAX_KEY_GROUPS, MAX_TABLES};
use crate::network::stream_files;
use crate::state_machine::meta;
use crate::types::Membership;
use crate::validate;

/// Chunks of a saved snapshot: small enough for any client's default
/// message limit (4 MiB).
const SAVE_CHUNK_BYTES: usize = 1 << 20;

type SnapshotChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// `ListJobs` pages: the default size and the largest (a job's summary
/// is tens of bytes; 1,000 of them stay far below gRPC's 4 MiB message).
const DEFAULT_JOBS_PER_PAGE: u32 = 100;
const MAX_JOBS_PER_PAGE: u32 = 1000;

pub struct AdminService {
    ctx: Arc<NodeContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// Builds a snapshot of at least everything applied now; its index.
    async fn snapshot_now(&self) -> Result<u64, ServiceError> {
        let applied = self
            .ctx
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index);
        self.ctx
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let mut rx = self.ctx.raft.metrics();
        let done = tokio::time::timeout(PROPOSAL_TIMEOUT, async {
            loop {
                let idx = rx.borrow_watched().snapshot.as_ref().map_or(0, |l| l.index);
                if idx >= applied {
                    return idx;
                }
                if rx.changed().await.is_err() {
                    return idx;
                }
            }
        })
        .await
        .map_err(|_| ServiceError::Timeout(PROPOSAL_TIMEOUT))?;
        Ok(done)
    }
}

fn members_of(m: &Membership) -> Vec<pb::Member> {
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, n)| pb::Member {
            id: *id,
            addr: n.addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

fn role_of(s: ServerState) -> pb::Role {
    match s {
        ServerState::Leader => pb::Role::Leader,
        ServerState::Follower => pb::Role::Follower,
        ServerState::Learner => pb::Role::Learner,
        ServerState::Candidate => pb::Role::Candidate,
        ServerState::Shutdown => pb::Role::Shutdown,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.ctx
            .authorize(request.extensions(), Action::Authenticated)?;
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let addr_of = |id: u64| {
            membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        Ok(Response::new(pb::StatusResponse {
            id: self.ctx.id,
            addr: addr_of(self.ctx.id),
            role: role_of(m.state) as i32,
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr: m.current_leader.map(addr_of).unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            last_applied: m.last_applied.as_ref().map_or(0, |l| l.index),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
            purged_index: m.purged.as_ref().map_or(0, |l| l.index),
            members: members_of(membership),
            snapshots_installed: self.ctx.sm.snapshots_installed(),
            shard: DEFAULT_SHARD,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let r = request.into_inner();
        if r.id == 0 {
            return Err(ServiceError::invalid("id", "node ids start at 1").into());
        }
        if r.addr.is_empty() || !r.addr.contains(':') {
            return Err(
                ServiceError::invalid("addr", format!("{:?} is not host:port", r.addr)).into(),
            );
        }
        let resp = self
            .ctx
            .raft
            .add_learner(r.id, BasicNode::new(&r.addr), r.blocking)
            .await
            .map_err(|e| self.ctx.write_error(e))?;
        let members = resp.membership.as_ref().map(members_of).unwrap_or_default();
        Ok(Response::new(pb::MembershipResponse {
            index: resp.log_id.index,
            members,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let r = request.into_inner();
        let voters: BTreeSet<u64> = r.voters.iter().copied().collect();
        if voters.is_empty() {
            return Err(
                ServiceError::invalid("voters", "the cluster needs at least one voter").into(),
            );
        }
        let resp = self
            .ctx
            .raft
            .change_membership(voters, r.retain)
            .await
            .map_err(|e| self.ctx.write_error(e))?;
        let members = resp.membership.as_ref().map(members_of).unwrap_or_default();
        Ok(Response::new(pb::MembershipResponse {
            index: resp.log_id.index,
            members,
        }))
    }

    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let r = request.into_inner();
        validate::name("job", &r.job, &self.ctx.limits)?;
        if r.key_groups > MAX_KEY_GROUPS {
            return Err(ServiceError::invalid(
                "key_groups",
                format!("{} is above the maximum {MAX_KEY_GROUPS}", r.key_groups),
            )
            .into());
        }
        if r.tables.len() > MAX_TABLES {
            return Err(ServiceError::invalid(
                "tables",
                format!(
                    "{} tables, above the {MAX_TABLES} a job may have",
                    r.tables.len()
                ),
            )
            .into());
        }
        let mut tables = Vec::with_capacity(r.tables.len());
        let mut names = std::collections::HashSet::with_capacity(r.tables.len());
        for t in &r.tables {
            if !names.insert(t.state.as_str()) {
                return Err(ServiceError::invalid(
                    "tables",
                    format!("table {:?} is declared twice", t.state),
                )
                .into());
            }
            tables.push(table_mode(
                &r.job,
                &t.state,
                t.mode,
                t.placement,
                &self.ctx.limits,
            )?);
        }
        let resp = self
            .ctx
            .propose(pb::Command {
                kind: Some(pb::command::Kind::CreateJob(pb::CreateJob {
                    job: r.job,
                    key_groups: r.key_groups,
                    tables,
                })),
            })
            .await?;
        match resp.kind {
            Some(pb::command_response::Kind::JobCreated(j)) => {
                // Applied here before the answer came: the record has the
                // declared tables' ids.
                let stored = meta::load_job(&self.ctx.sm.db(), DEFAULT_SHARD, &j.job)
                    .map_err(ServiceError::from)?;
                Ok(Response::new(pb::CreateJobResponse {
                    job: Some(stored.unwrap_or(pb::JobInfo {
                        job: j.job,
                        job_id: j.job_id,
                        key_groups: j.key_groups,
                        states: Vec::new(),
                        created_index: j.created_index,
                    })),
                }))
            }
            other => Err(Status::internal(format!(
                "create_job answered with {other:?}"
            ))),
        }
    }

    async fn set_table_mode(
        &self,
        request: Request<pb::SetTableModeRequest>,
    ) -> Result<Response<pb::SetTableModeResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let r = request.into_inner();
        let cmd = table_mode(&r.job, &r.state, r.mode, r.placement, &self.ctx.limits)?;
        let resp = self
            .ctx
            .propose(pb::Command {
                kind: Some(pb::command::Kind::SetTableMode(cmd)),
            })
            .await?;
        match resp.kind {
            Some(pb::command_response::Kind::TableModeSet(job)) => {
                Ok(Response::new(pb::SetTableModeResponse { job: Some(job) }))
            }
            Some(other) => Err(ServiceError::unexpected_answer("set_table_mode", &other).into()),
            None => Err(Status::internal("set_table_mode answered with nothing")),
        }
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let r = request.into_inner();
        validate::name("job", &r.job, &self.ctx.limits)?;
        let (index, resp) = self
            .ctx
            .propose_indexed(pb::Command {
                kind: Some(pb::command::Kind::DeleteJob(pb::JobDelete {
                    job: r.job.clone(),
                    force: r.force,
                })),
            })
            .await?;
        match resp.kind {
            Some(pb::command_response::Kind::JobDeleted(d)) => {
                tracing::info!(job = %r.job, job_id = d.job_id, index, leased_tasks = ?d.leased_tasks, "deleted a job");
                Ok(Response::new(pb::DeleteJobResponse {
                    job_id: d.job_id,
                    index,
                    leased_tasks: d.leased_tasks,
                }))
            }
            Some(other) => Err(ServiceError::unexpected_answer("delete_job", &other).into()),
            None => Err(Status::internal("delete_job answered with nothing")),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.authorize(&ext, Action::Authenticated)?;
        if !r.start_after.is_empty() {
            validate::name("start_after", &r.start_after, &self.ctx.limits)?;
        }
        let limit = match r.limit {
            0 => DEFAULT_JOBS_PER_PAGE,
            n if n > MAX_JOBS_PER_PAGE => {
                return Err(ServiceError::invalid(
                    "limit",
                    format!("{n} is above the {MAX_JOBS_PER_PAGE} jobs a page may hold"),
                )
                .into())
            }
            n => n,
        };
        self.ctx.linearize().await?;
        let db = self.ctx.sm.db();
        let readable = |j: &pb::JobInfo| {
            self.ctx
                .authorize(&ext, Action::Read { job: &j.job })
                .is_ok()
        };
        let (jobs, more) =
            meta::list_jobs(&db, DEFAULT_SHARD, &r.start_after, limit as usize, readable)
                .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs
                .into_iter()
                .map(|j| pb::JobSummary {
                    tables: j.states.len() as u32,
                    job: j.job,
                    job_id: j.job_id,
                    key_groups: j.key_groups,
                    created_index: j.created_index,
                })
                .collect(),
            more,
        }))
    }

    async fn describe_job(
        &self,
        request: Request<pb::DescribeJobRequest>,
    ) -> Result<Response<pb::DescribeJobResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        validate::name("job", &r.job, &self.ctx.limits)?;
        self.ctx.authorize(&ext, Action::Read { job: &r.job })?;
        self.ctx.linearize().await?;
        let db = self.ctx.sm.db();
        let job = meta::load_job(&db, DEFAULT_SHARD, &r.job)
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::JobNotFound { job: r.job })?;
        Ok(Response::new(pb::DescribeJobResponse { job: Some(job) }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let snapshot_index = self.snapshot_now().await?;
        Ok(Response::new(pb::TriggerSnapshotResponse {
            snapshot_index,
        }))
    }

    type SaveSnapshotStream = SnapshotChunks;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        self.snapshot_now().await?;
        let sm = self.ctx.sm.clone();
        let (meta, pinned) = tokio::task::spawn_blocking(move || sm.pin_current_snapshot())
            .await
            .map_err(|e| ServiceError::Unavailable(format!("snapshot task: {e}")))?
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::Unavailable("the node has no snapshot yet".into()))?;
        tracing::info!(last_log_id = ?meta.last_log_id, "sending a snapshot to save");
        let header = pb::SnapshotHeader {
            vote: None,
            meta: Some(codec::snapshot_meta_to_pb(&meta)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(e) = stream_files(pinned, header, SAVE_CHUNK_BYTES, tx).await {
                tracing::warn!(error = %e, "sending a snapshot to save failed");
            }
        });
        let chunks = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(chunks)))
    }
}

/// A table's declared mode and placement as the log carries them, once its
/// names, mode and placement are valid.
fn table_mode(
    job: &str,
    state: &str,
    mode: i32,
    placement: Option<i32>,
    limits: &crate::config::Limits,
) -> Result<pb::TableModeSet, ServiceError> {
    validate::name("job", job, limits)?;
    validate::name("state", state, limits)?;
    if pb::WriteMode::try_from(mode).is_err() {
        return Err(ServiceError::invalid(
            "mode",
            format!("{mode} is not a write mode (0 SYNC, 1 ASYNC)"),
        ));
    }
    if let Some(p) = placement.filter(|p| pb::KeyPlacement::try_from(*p).is_err()) {
        return Err(ServiceError::invalid(
            "placement",
            format!("{p} is not a key placement (0 WHOLE_KEY, 1 PREFIX)"),
        ));
    }
    Ok(pb::TableModeSet {
        job: job.to_string(),
        state: state.to_string(),
        mode,
        placement,
    })
}
