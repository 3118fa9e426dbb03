//! The gRPC services of a node and what they share.
//!
//! `state` is the client API, `tasks` the task leases and epoch commits,
//! `streams` the partitioned logs of jobs,
//! `admin` the operator API, `auth` the grants and tokens, `raft` the receiving side of node-to-node Raft RPCs;
//! `authz` is where every client request's caller is checked. Each handler turns its request
//! into a Raft proposal or a read of the state machine and its failures
//! into [`ServiceError`], which maps to a
//! status in one place.

pub mod admin;
pub mod auth;
pub mod authz;
pub mod node_limit;
pub mod peer_guard;
pub mod promotion;
pub mod raft;
mod session;
pub mod session_expiry;
pub mod state;
pub mod streams;
pub mod tasks;
mod write_batcher;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::linearizable_read::LinearizerOption;
use openraft::ReadPolicy;
use streamshield_proto::v1 as pb;

use self::authz::Action;
use crate::command::SharedCommand;
use crate::config::Limits;
use crate::error::{rejected, MembershipRefusal, ServiceError};
use crate::keys::DEFAULT_SHARD;
use crate::state_machine::SmShared;
use crate::types::{Raft, TypeConfig};
use crate::validate;

fn membership_refusal(
    e: openraft::errors::ChangeMembershipError<
        openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>,
        u64,
    >,
) -> MembershipRefusal {
    use openraft::errors::ChangeMembershipError as E;
    let sets = |v: Vec<std::collections::BTreeSet<u64>>| -> Vec<Vec<u64>> {
        v.into_iter().map(|s| s.into_iter().collect()).collect()
    };
    match e {
        E::InProgress(p) => MembershipRefusal::InProgress {
            pending: p.membership_log_id.map(|l| l.index),
        },
        E::EmptyMembership(_) => MembershipRefusal::NoVoters,
        E::LearnerNotFound(l) => MembershipRefusal::NotALearner { node: l.node_id },
        E::UnsupportedMembershipTransition(u) => MembershipRefusal::UnsupportedTransition {
            from: sets(u.previous),
            to: sets(u.proposed),
        },
        E::UncommittedLeaderLog(u) => MembershipRefusal::LeaderNotSettled {
            leader_entry: u.leader_log_id.index,
        },
        E::NodeMetadataChanged(n) => MembershipRefusal::AddressChanged { node: n.node_id },
    }
}

/// How long a proposal may wait for commit before the caller hears
/// DEADLINE_EXCEEDED (outcome unknown; retries are deduplicated).
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a linearizable read waits for the replication of a write
/// already under way to confirm leadership before it starts a heartbeat
/// round of its own.
const RIDE_ON_WRITES: Duration = Duration::from_millis(50);

/// What every service of a node holds.
pub struct NodeContext {
    pub id: u64,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub limits: Limits,
    proposer: Proposer,
    writes: write_batcher::WriteBatcher,
    /// Turns true when the node starts shutting down: long-lived streams
    /// end then, or the server's graceful shutdown would wait on them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// When a leader's message last came in (for the health service).
    pub leader_contact: crate::liveness::LeaderContact,
}

/// Proposes commands to Raft on behalf of node `id`.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    id: u64,
}

impl Proposer {
    pub fn write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ServiceError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f))
            | RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
                ServiceError::NotLeader {
                    this: self.id,
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ServiceError::Membership(membership_refusal(c))
            }
            // No proposal of ours carries a precondition.
            RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
                ServiceError::Rejected {
                    code: tonic::Code::FailedPrecondition,
                    message: p.to_string(),
                }
            }
            RaftError::Fatal(f) => ServiceError::Unavailable(format!("raft stopped: {f}")),
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied here.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResponse, ServiceError> {
        self.propose_indexed(cmd).await.map(|(_, r)| r)
    }

    /// Like [`Proposer::propose`], with the index of the entry.
    pub async fn propose_indexed(
        &self,
        cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResponse), ServiceError> {
        let (index, resp) = self.propose_answers(cmd).await?;
        if let Some(pb::command_response::Kind::Error(e)) = &resp.kind {
            return Err(rejected(e));
        }
        Ok((index, resp))
    }

    /// Like [`Proposer::propose_indexed`], with a refusal left in the
    /// answer (a batch's items are refused one by one).
    pub async fn propose_answers(
        &self,
        cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResponse), ServiceError> {
        let started = Instant::now();
        let r = tokio::time::timeout(
            PROPOSAL_TIMEOUT,
            self.raft.client_write(SharedCommand::new(cmd)),
        )
        .await
        .map_err(|_| ServiceError::Timeout(PROPOSAL_TIMEOUT))?
        .map_err(|e| self.write_error(e))?;
        metrics::counter!("streamshield_proposals_total").increment(1);
        metrics::histogram!("streamshield_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok((r.log_id.index, r.data))
    }
}

impl NodeContext {
    /// Must be called inside a tokio runtime: it starts the write batcher.
    pub fn new(id: u64, raft: Raft, sm: Arc<SmShared>, limits: Limits) -> Self {
        let proposer = Proposer {
            raft: raft.clone(),
            id,
        };
        Self {
            id,
            raft,
            sm,
            limits,
            writes: write_batcher::WriteBatcher::start(proposer.clone()),
            proposer,
            stopping: tokio::sync::watch::Sender::new(false),
            leader_contact: Default::default(),
        }
    }

    /// Tells the node's long-lived streams to finish what they took and end.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ServiceError {
        self.proposer.write_error(e)
    }

    /// Proposes `cmd` on its own and waits until it is committed and
    /// applied here.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResponse, ServiceError> {
        self.proposer.propose(cmd).await
    }

    /// Like [`NodeContext::propose`], with the index of the entry.
    pub async fn propose_indexed(
        &self,
        cmd: pb::Command,
    ) -> Result<(u64, pb::CommandResponse), ServiceError> {
        self.proposer.propose_indexed(cmd).await
    }

    /// Proposes one command of a client service, with whatever else is
    /// waiting (the write batcher), and returns the entry's index and what
    /// apply answered (a refusal is already an `Err`).
    pub async fn propose_kind(
        &self,
        kind: pb::command::Kind,
    ) -> Result<(u64, pb::command_response::Kind), ServiceError> {
        self.propose_kinds_last(vec![kind]).await
    }

    /// Proposes `kinds` next to each other in one entry and answers as
    /// the last one did. The others' refusals are not reported: a commit
    /// whose tail was refused misses those seqs and says so, and the
    /// client re-sends them as a batch of their own, which reports why.
    pub async fn propose_kinds_last(
        &self,
        kinds: Vec<pb::command::Kind>,
    ) -> Result<(u64, pb::command_response::Kind), ServiceError> {
        let (index, mut answers) = self.writes.submit_commands(kinds).await?;
        match answers.pop().and_then(|a| a.kind) {
            Some(pb::command_response::Kind::Error(e)) => Err(rejected(&e)),
            Some(kind) => Ok((index, kind)),
            None => Err(ServiceError::Unavailable("apply answered nothing".into())),
        }
    }

    /// Proposes a client write of `principal`, together with writes that
    /// arrive while earlier proposals are in flight, and returns its own
    /// answer.
    pub async fn write(
        &self,
        principal: String,
        w: pb::SyncWrite,
    ) -> Result<pb::WriteResponse, ServiceError> {
        self.writes.submit(principal, w).await
    }

    /// Waits until this node, as leader, may serve a linearizable read
    /// (read-index: a quorum confirmed leadership after the read started,
    /// and the state machine applied everything committed before it).
    ///
    /// The confirmation is any message sent to the followers after the
    /// read began and acknowledged by a quorum. While a write is being
    /// proposed such messages come anyway (its entries, then the news of
    /// its commit), so the read waits for them instead of sending a
    /// heartbeat round of its own: in a mixed workload that round was a
    /// gRPC call to each follower for every batch of reads. With no write
    /// under way, or if the writes do not confirm in time, it is the
    /// heartbeat round of openraft's read-index.
    pub async fn linearize(&self) -> Result<(), ServiceError> {
        if self.writes.in_flight() {
            let ride = LinearizerOption::new(Some(Duration::ZERO), false)
                .with_wait_timeout(RIDE_ON_WRITES);
            match self.ensure_linearizable(ride).await {
                Err(ServiceError::Unavailable(_)) => {}
                done => return done,
            }
        }
        self.ensure_linearizable(ReadPolicy::ReadIndex.into()).await
    }

    async fn ensure_linearizable(&self, option: LinearizerOption) -> Result<(), ServiceError> {
        let r = tokio::time::timeout(PROPOSAL_TIMEOUT, self.raft.ensure_linearizable(option))
            .await
            .map_err(|_| ServiceError::Timeout(PROPOSAL_TIMEOUT))?;
        match r {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ServiceError::NotLeader {
                    this: self.id,
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(ServiceError::Unavailable(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => {
                Err(ServiceError::Unavailable(format!("raft stopped: {f}")))
            }
        }
    }

    /// The checks of a read of a whole job's records (its tasks, its
    /// streams): shard, name, the caller's right to read the job, then
    /// read-index when the read asks to be linearizable.
    pub async fn check_job_read(
        &self,
        ext: &tonic::Extensions,
        shard: u32,
        job: &str,
        consistency: i32,
    ) -> Result<(), ServiceError> {
        self.check_shard(shard)?;
        validate::name("job", job, &self.limits)?;
        self.authorize(ext, Action::Read { job })?;
        if validate::consistency(consistency)? == pb::Consistency::Linearizable {
            self.linearize().await?;
        }
        Ok(())
    }

    pub fn check_shard(&self, shard: u32) -> Result<(), ServiceError> {
        if shard != DEFAULT_SHARD {
            return Err(ServiceError::UnknownShard { shard });
        }
        Ok(())
    }
}
