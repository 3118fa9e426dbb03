//! The operator calls: jobs, status, membership, snapshots.

use std::future::Future;
use std::time::{Duration, Instant};

use streamshield_proto::v1::{self as pb, admin_client::AdminClient};
use tonic::{Code, Status};

use super::{Client, Route};
use crate::error::ClientError;
use crate::transport::Transport;

impl Client {
    /// One `Admin` call on the leader, retried as every admin call is.
    async fn admin<Req, Resp, F, Fut>(&self, req: Req, call: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(AdminClient<Transport>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(Route::Leader, AdminClient::new, req, call).await
    }

    /// One `Admin` call on the node at `addr`, without retries.
    async fn admin_at<Resp, Fut>(
        &self,
        addr: &str,
        call: impl FnOnce(AdminClient<Transport>) -> Fut,
    ) -> Result<Resp, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        call(AdminClient::new(self.channel(addr)?))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| ClientError::from_status(&s))
    }

    pub async fn create_job(&self, job: &str, key_groups: u32) -> Result<pb::JobInfo, ClientError> {
        self.create_job_with_tables(job, key_groups, &[]).await
    }

    /// Creates a job with state tables declared and their default write
    /// modes (a task session writes SYNC tables at once, ASYNC ones in its
    /// epoch).
    pub async fn create_job_with_tables(
        &self,
        job: &str,
        key_groups: u32,
        tables: &[(&str, pb::WriteMode)],
    ) -> Result<pb::JobInfo, ClientError> {
        let req = pb::CreateJobRequest {
            job: job.into(),
            key_groups,
            tables: tables
                .iter()
                .map(|(state, mode)| pb::TableMode {
                    state: state.to_string(),
                    mode: *mode as i32,
                    placement: None,
                })
                .collect(),
        };
        let r = self
            .admin(req, |mut c, r| async move { c.create_job(r).await })
            .await?;
        r.job.ok_or_else(|| answered_without_a_job("create_job"))
    }

    /// Declares a table of `job` with its default write mode, or changes
    /// it; leases acquired afterwards follow it.
    pub async fn set_table_mode(
        &self,
        job: &str,
        state: &str,
        mode: pb::WriteMode,
    ) -> Result<pb::JobInfo, ClientError> {
        self.declare_table(job, state, mode, None).await
    }

    /// [`Client::set_table_mode`], and for a new table how it places its
    /// keys in key groups: with [`pb::KeyPlacement::Prefix`], keys made by
    /// [`crate::prefixed_key`] go to their placement key's
    /// group. Naming another placement than an existing table's is
    /// refused (`FailedPrecondition`); the same one, or none, is not.
    pub async fn declare_table(
        &self,
        job: &str,
        state: &str,
        mode: pb::WriteMode,
        placement: Option<pb::KeyPlacement>,
    ) -> Result<pb::JobInfo, ClientError> {
        let req = pb::SetTableModeRequest {
            job: job.into(),
            state: state.into(),
            mode: mode as i32,
            placement: placement.map(|p| p as i32),
        };
        let r = self
            .admin(req, |mut c, r| async move { c.set_table_mode(r).await })
            .await?;
        r.job
            .ok_or_else(|| answered_without_a_job("set_table_mode"))
    }

    pub async fn describe_job(&self, job: &str) -> Result<pb::JobInfo, ClientError> {
        let req = pb::DescribeJobRequest { job: job.into() };
        let r = self
            .admin(req, |mut c, r| async move { c.describe_job(r).await })
            .await?;
        r.job.ok_or_else(|| answered_without_a_job("describe_job"))
    }

    /// Deletes `job` with everything it holds. Refused (`FailedPrecondition`)
    /// while a task holds a lease it has not released, unless `force`.
    /// A retry whose first attempt was applied finds the job gone
    /// (`NotFound`).
    pub async fn delete_job(
        &self,
        job: &str,
        force: bool,
    ) -> Result<pb::DeleteJobResponse, ClientError> {
        let req = pb::DeleteJobRequest {
            job: job.into(),
            force,
        };
        self.admin(req, |mut c, r| async move { c.delete_job(r).await })
            .await
    }

    /// Every job the caller may read, in name order, fetched a page at a
    /// time.
    pub async fn list_jobs(&self) -> Result<Vec<pb::JobSummary>, ClientError> {
        let mut out: Vec<pb::JobSummary> = Vec::new();
        loop {
            let req = pb::ListJobsRequest {
                start_after: out.last().map(|j| j.job.clone()).unwrap_or_default(),
                limit: 0,
            };
            let page = self
                .admin(req, |mut c, r| async move { c.list_jobs(r).await })
                .await?;
            out.extend(page.jobs);
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// One node's own view of the cluster, without retries.
    pub async fn node_status(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        self.admin_at(
            addr,
            |mut c| async move { c.status(pb::StatusRequest {}).await },
        )
        .await
    }

    /// Every known node's status: the given endpoints plus every member any
    /// of them reports. Unreachable nodes come back as errors.
    pub async fn cluster_status(&self) -> Vec<(String, Result<pb::StatusResponse, ClientError>)> {
        let mut addrs: Vec<String> = self.endpoints().to_vec();
        let mut out = Vec::new();
        let mut i = 0;
        while i < addrs.len() {
            let addr = addrs[i].clone();
            let r = self.node_status(&addr).await;
            if let Ok(s) = &r {
                for m in &s.members {
                    if !addrs.contains(&m.addr) {
                        addrs.push(m.addr.clone());
                    }
                }
            }
            out.push((addr, r));
            i += 1;
        }
        out
    }

    pub async fn add_learner(
        &self,
        id: u64,
        addr: &str,
        blocking: bool,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let req = pb::AddLearnerRequest {
            id,
            addr: addr.into(),
            blocking,
        };
        self.admin(req, |mut c, r| async move { c.add_learner(r).await })
            .await
    }

    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
        retain: bool,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let req = pb::ChangeMembershipRequest { voters, retain };
        self.admin(req, |mut c, r| async move { c.change_membership(r).await })
            .await
    }

    /// Asks one node to build a snapshot now; returns its snapshot index.
    pub async fn trigger_snapshot(&self, addr: &str) -> Result<u64, ClientError> {
        let r = self
            .admin_at(addr, |mut c| async move {
                c.trigger_snapshot(pb::TriggerSnapshotRequest {}).await
            })
            .await?;
        Ok(r.snapshot_index)
    }

    /// The leader's address as the cluster reports it, waiting up to the
    /// client deadline for one to be elected.
    pub async fn wait_for_leader(&self) -> Result<(u64, String), ClientError> {
        let deadline = Instant::now() + self.inner.config.deadline;
        loop {
            for (_, r) in self.cluster_status().await {
                if let Ok(s) = r {
                    if s.role == pb::Role::Leader as i32 {
                        return Ok((s.id, s.addr));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    attempts: 0,
                    last: "no node reports itself leader".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn answered_without_a_job(call: &str) -> ClientError {
    ClientError::Server {
        code: Code::Internal,
        message: format!("{call} answered without a job"),
    }
}
