//! The receiving side of Raft RPCs.

use std::fs;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use openraft::storage::Snapshot;
use streamshield_proto::v1::{self as pb, raft_server::Raft as RaftRpc};
use tonic::{Request, Response, Status, Streaming};

use super::NodeContext;
use crate::codec;
use crate::state_machine::snapshot::safe_file_name;
use crate::state_machine::SnapshotFiles;

pub struct RaftService {
    ctx: Arc<NodeContext>,
}

impl RaftService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

/// Removes a half-received snapshot unless it was handed over.
struct IncomingDir {
    dir: Option<std::path::PathBuf>,
}

impl Drop for IncomingDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::AppendStreamReply, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendStreamStream = ReplyStream;

    /// Hands the leader's requests to openraft's pipelined append as they
    /// arrive. A request that does not decode ends the input, so the leader
    /// sees the stream end after the answers to what came before it.
    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let input = request
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| async move { r.ok() })
            .map(codec::append_request_from_pb)
            .take_while(|r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "malformed AppendEntries in a stream; ending it");
                }
                std::future::ready(r.is_ok())
            })
            .filter_map(|r| async move { r.ok() });
        let output = self.ctx.raft.stream_append(input).map(|r| match r {
            Ok(result) => Ok(codec::stream_reply_to_pb(&result)),
            Err(f) => Err(fatal(f)),
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let r = request.into_inner();
        let req = codec::vote_request_from_pb(&r).map_err(bad)?;
        let resp = if r.pre_vote {
            self.ctx.raft.pre_vote(req).await
        } else {
            self.ctx.raft.vote(req).await
        }
        .map_err(fatal)?;
        Ok(Response::new(codec::vote_response_to_pb(&resp)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let req = codec::append_request_from_pb(request.into_inner()).map_err(bad)?;
        let resp = self.ctx.raft.append_entries(req).await.map_err(fatal)?;
        Ok(Response::new(codec::append_response_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| bad("empty snapshot stream"))?;
        let header = first
            .header
            .ok_or_else(|| bad("first snapshot chunk has no header"))?;
        let vote = codec::vote_from_pb(header.vote.as_ref()).map_err(bad)?;
        let meta = codec::snapshot_meta_from_pb(
            header
                .meta
                .as_ref()
                .ok_or_else(|| bad("no snapshot meta"))?,
        )
        .map_err(bad)?;
        let dir = self
            .ctx
            .sm
            .incoming_dir()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut guard = IncomingDir {
            dir: Some(dir.clone()),
        };
        let mut current: Option<(String, fs::File, u64)> = None;
        let mut done = false;
        while let Some(chunk) = stream.message().await? {
            if chunk.done {
                done = true;
                break;
            }
            if !safe_file_name(&chunk.file) {
                return Err(bad(format!(
                    "snapshot file name {:?} is not allowed",
                    chunk.file
                )));
            }
            let switch = current
                .as_ref()
                .is_none_or(|(name, _, _)| *name != chunk.file);
            if switch {
                if let Some((_, f, _)) = current.take() {
                    f.sync_all().map_err(|e| Status::internal(e.to_string()))?;
                }
                let path = dir.join(&chunk.file);
                if path.exists() {
                    return Err(bad(format!("snapshot file {:?} sent twice", chunk.file)));
                }
                let f = fs::File::create(&path).map_err(|e| Status::internal(e.to_string()))?;
                current = Some((chunk.file.clone(), f, 0));
            }
            let (_, f, written) = current.as_mut().expect("set above");
            if chunk.offset != *written {
                return Err(bad(format!(
                    "snapshot file {:?}: chunk at offset {} but {} bytes written",
                    chunk.file, chunk.offset, written
                )));
            }
            f.write_all(&chunk.data)
                .map_err(|e| Status::internal(e.to_string()))?;
            *written += chunk.data.len() as u64;
        }
        if !done {
            return Err(Status::aborted(
                "snapshot stream ended before its last chunk",
            ));
        }
        if let Some((_, f, _)) = current.take() {
            f.sync_all().map_err(|e| Status::internal(e.to_string()))?;
        }
        guard.dir = None;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFiles { dir: dir.clone() },
        };
        // The state machine moves the directory into place when it installs
        // it; one openraft declines (stale vote) is removed at next start.
        let resp = self
            .ctx
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        Ok(Response::new(pb::SnapshotReply {
            vote: Some(codec::vote_to_pb(&resp.vote)),
        }))
    }
}
