//! The task calls, one each: leases, staged writes, commits, listing.
//! `TaskSession` (`task_session.rs`) builds the write pipeline on them.

use std::future::Future;

use streamshield_proto::v1::{self as pb, tasks_client::TasksClient};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

use super::{Client, Route, MAX_MESSAGE_BYTES};
use crate::error::ClientError;
use crate::shared_stage::SharedStageWrites;
use crate::transport::Transport;
use crate::Consistency;

fn tasks_client(t: Transport) -> TasksClient<Transport> {
    TasksClient::new(t)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl Client {
    /// One `Tasks` call on the leader, retried as every leader call is.
    async fn tasks<Req, Resp, F, Fut>(&self, req: Req, call: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(TasksClient<Transport>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(Route::Leader, tasks_client, req, call).await
    }

    pub async fn acquire_lease(
        &self,
        req: pb::AcquireLeaseRequest,
    ) -> Result<pb::AcquireLeaseResponse, ClientError> {
        self.tasks(req, |mut c, r| async move { c.acquire_lease(r).await })
            .await
    }

    pub async fn stage_writes(
        &self,
        req: pb::StageWritesRequest,
    ) -> Result<pb::StageWritesResponse, ClientError> {
        self.tasks(req, |mut c, r| async move { c.stage_writes(r).await })
            .await
    }

    /// `StageWrites` of ops shared with the session that holds them: no
    /// op is copied for the call or for its retries (`shared_stage.rs`).
    pub(crate) async fn stage_shared(
        &self,
        req: SharedStageWrites,
    ) -> Result<pb::StageWritesResponse, ClientError> {
        let grpc = |t: Transport| {
            tonic::client::Grpc::new(t)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        self.call(Route::Leader, grpc, req, |mut g, r| async move {
            g.ready()
                .await
                .map_err(|e| Status::unknown(format!("the channel is not ready: {e}")))?;
            let mut req = tonic::Request::new(r);
            req.extensions_mut().insert(tonic::GrpcMethod::new(
                "streamshield.v1.Tasks",
                "StageWrites",
            ));
            let codec: tonic_prost::ProstCodec<SharedStageWrites, pb::StageWritesResponse> =
                tonic_prost::ProstCodec::default();
            g.unary(
                req,
                PathAndQuery::from_static("/streamshield.v1.Tasks/StageWrites"),
                codec,
            )
            .await
        })
        .await
    }

    pub async fn commit_epoch(
        &self,
        req: pb::CommitEpochRequest,
    ) -> Result<pb::CommitEpochResponse, ClientError> {
        self.tasks(req, |mut c, r| async move { c.commit_epoch(r).await })
            .await
    }

    pub async fn release_lease(
        &self,
        req: pb::ReleaseLeaseRequest,
    ) -> Result<pb::ReleaseLeaseResponse, ClientError> {
        self.tasks(req, |mut c, r| async move { c.release_lease(r).await })
            .await
    }

    /// Every task of `job` with its lease and last checkpoint, fetched a
    /// page at a time (pages are bounded in bytes on the node); the
    /// answer's `applied_index` is that of the last page.
    pub async fn list_tasks(
        &self,
        job: &str,
        consistency: Consistency,
    ) -> Result<pb::ListTasksResponse, ClientError> {
        let mut all = pb::ListTasksResponse::default();
        loop {
            let req = pb::ListTasksRequest {
                shard: 0,
                job: job.into(),
                consistency: consistency.to_pb(),
                start_after: all.tasks.last().map(|t| t.task),
            };
            let page = self
                .tasks(req, |mut c, r| async move { c.list_tasks(r).await })
                .await?;
            all.tasks.extend(page.tasks);
            all.applied_index = page.applied_index;
            all.answered_by = page.answered_by;
            if !page.more {
                return Ok(all);
            }
        }
    }
}
