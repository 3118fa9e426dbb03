//! The receiving side of Raft RPCs.

use std::fs;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;

use openraft::storage::Snapshot;
use streamshield_proto::v1::{self as pb, raft_server::Raft as RaftRpc};
use tonic::{Request, Response, Status, Streaming};

use super::peer_guard::{check_sender, PeerRefusal, PeerView};
use super::NodeContext;
use crate::codec;
use crate::error::ServiceError;
use crate::state_machine::snapshot::safe_file_name;
use crate::state_machine::SnapshotFiles;
use crate::tls::PeerNode;
use crate::types::Vote;

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

/// This node's view of its cluster, for [`PeerView`]'s checks. The voter
/// set is collected only for a vote: entries come on every heartbeat.
fn peer_view(ctx: &NodeContext, with_voters: bool) -> PeerView {
    let m = ctx.raft.metrics();
    let m = m.borrow_watched();
    let membership = m.membership_config.membership();
    let view = PeerView {
        this: ctx.id,
        current_term: m.current_term,
        voters: match with_voters {
            true => membership.voter_ids().collect(),
            false => Default::default(),
        },
        initialized: membership.voter_ids().next().is_some(),
    };
    view
}

/// The node the connection of `request` is certified for, on a TLS node.
fn certified<T>(request: &Request<T>) -> Option<u64> {
    request.extensions().get::<PeerNode>().map(|p| p.0)
}

/// Entries or a snapshot from the leader named in `vote`.
fn check_message(ctx: &NodeContext, vote: &Vote, certified: Option<u64>) -> Result<(), Status> {
    check_sender(vote.leader_id.node_id, certified).map_err(refused)?;
    peer_view(ctx, false)
        .check_message(vote.leader_id.node_id, vote.leader_id.term)
        .map_err(refused)?;
    ctx.leader_contact.heard();
    Ok(())
}

fn refused(r: PeerRefusal) -> Status {
    tracing::warn!(reason = %r, "peer message refused");
    metrics::counter!("streamshield_peer_messages_refused_total").increment(1);
    ServiceError::from(r).into()
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

/// Bounds what one incoming snapshot may write: its own size, and the
/// free space it must leave on the data disk.
struct SnapshotBudget {
    received: u64,
    limit: u64,
    reserve: u64,
    /// Bytes received when free space was last looked at.
    checked_at: Option<u64>,
}

/// Free space is looked at again after this much more data.
const FREE_SPACE_CHECK_BYTES: u64 = 64 << 20;

impl SnapshotBudget {
    fn new(limits: &crate::config::Limits) -> Self {
        Self {
            received: 0,
            limit: limits.max_snapshot_bytes,
            reserve: limits.min_free_disk_bytes,
            checked_at: None,
        }
    }

    fn take(&mut self, bytes: usize, dir: &std::path::Path) -> Result<(), Status> {
        self.received = self.received.saturating_add(bytes as u64);
        if self.received > self.limit {
            return Err(ServiceError::SnapshotTooLarge {
                received: self.received,
                limit: self.limit,
            }
            .into());
        }
        let due = self
            .checked_at
            .is_none_or(|at| self.received - at >= FREE_SPACE_CHECK_BYTES);
        if due {
            self.checked_at = Some(self.received);
            let free = free_bytes(dir).map_err(|e| Status::internal(e.to_string()))?;
            // What this chunk and the next ones until the next look may
            // write must fit above the reserve.
            if free < self.reserve.saturating_add(FREE_SPACE_CHECK_BYTES) {
                return Err(ServiceError::DiskNearlyFull {
                    free,
                    reserve: self.reserve,
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
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
        let ctx = self.ctx.clone();
        let certified = certified(&request);
        let input = request
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| async move { r.ok() })
            .map(codec::append_request_from_pb)
            .take_while(move |r| {
                let ok = match r {
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed AppendEntries in a stream; ending it");
                        false
                    }
                    Ok(req) => check_message(&ctx, &req.vote, certified).is_ok(),
                };
                std::future::ready(ok)
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
        let certified = certified(&request);
        let r = request.into_inner();
        let req = codec::vote_request_from_pb(&r).map_err(bad)?;
        check_sender(req.vote.leader_id.node_id, certified).map_err(refused)?;
        peer_view(&self.ctx, true)
            .check_vote(req.vote.leader_id.node_id, req.vote.leader_id.term)
            .map_err(refused)?;
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
        let certified = certified(&request);
        let req = codec::append_request_from_pb(request.into_inner()).map_err(bad)?;
        check_message(&self.ctx, &req.vote, certified)?;
        let resp = self.ctx.raft.append_entries(req).await.map_err(fatal)?;
        Ok(Response::new(codec::append_response_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let certified = certified(&request);
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| bad("empty snapshot stream"))?;
        let header = first
            .header
            .ok_or_else(|| bad("first snapshot chunk has no header"))?;
        let vote = codec::vote_from_pb(header.vote.as_ref()).map_err(bad)?;
        check_message(&self.ctx, &vote, certified)?;
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
        let mut budget = SnapshotBudget::new(&self.ctx.limits);
        while let Some(chunk) = stream.message().await? {
            if chunk.done {
                done = true;
                break;
            }
            budget.take(chunk.data.len(), &dir)?;
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
