//! The sending side of Raft RPCs: one lazily connected gRPC channel per
//! peer, protobuf on the wire, snapshots streamed file by file in chunks.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::RaftNetworkV2;
use prost::Message;
use streamshield_proto::v1::{self as pb, raft_client::RaftClient};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::state_machine::snapshot::{list_files, PinnedSnapshot};
use crate::state_machine::SnapshotFiles;
use crate::tls::NodeTls;
use crate::types::{Node, NodeId, TypeConfig, Vote};

/// Big enough for a full AppendEntries batch of maximum-size writes.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Clone)]
pub struct NetworkFactory {
    pub snapshot_chunk_bytes: usize,
    /// Addresses to dial instead of the membership's, per peer.
    pub overrides: std::collections::HashMap<NodeId, String>,
    /// Dial peers over TLS with this node's certificate; plaintext if none.
    pub tls: Option<Arc<NodeTls>>,
}

pub struct PeerConnection {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    addr: String,
    snapshot_chunk_bytes: usize,
    redial: Redial,
}

/// How long to wait before opening a replication stream to a peer whose
/// last ones could not be opened.
///
/// openraft paces its retries inside the request stream it hands to
/// `stream_append`, so its backoff only applies once the transport polls
/// that stream, after the connection is up. A peer that refuses
/// connections (its process dead, its address's proxy gone) fails the call
/// before that, and openraft opened the next stream at once: the leader
/// spun at a whole core and wrote two warnings per attempt, about 10 MB of
/// log a second for one dead follower (`server/tests/dead_peer.rs`).
#[derive(Debug, Default, Clone, Copy)]
struct Redial {
    /// Streams in a row that could not be opened.
    failures: u32,
}

impl Redial {
    const FIRST: Duration = Duration::from_millis(20);
    /// The default election timeout's lower bound (two heartbeats): a
    /// restarted follower hears from its leader before it would campaign.
    const MAX: Duration = Duration::from_millis(100);

    fn delay(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => Self::FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(Self::MAX),
        }
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    fn opened(&mut self) {
        self.failures = 0;
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        let addr = self.overrides.get(&target).unwrap_or(&node.addr).clone();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).and_then(|e| {
            // The certificates read last (SIGHUP reloads them): a
            // connection made after a rotation presents the new ones.
            match &self.tls {
                Some(tls) => e.tls_config(tls.client_config()),
                None => Ok(e),
            }
        });
        if let Err(e) = &endpoint {
            tracing::warn!(target, %addr, error = %e, "cannot dial this peer");
        }
        let client = endpoint.ok().map(|e| {
            let ch = e
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect_lazy();
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerConnection {
            target,
            client,
            addr,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            redial: Redial::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {addr}: {detail}")]
struct PeerError {
    target: NodeId,
    addr: String,
    detail: String,
}

impl PeerError {
    fn new(target: NodeId, addr: &str, detail: impl Into<String>) -> Self {
        Self {
            target,
            addr: addr.to_string(),
            detail: detail.into(),
        }
    }

    /// The same peer, another detail.
    fn with(&self, detail: impl Into<String>) -> Self {
        Self::new(self.target, &self.addr, detail)
    }

    fn status_error(&self, s: tonic::Status) -> RPCError<TypeConfig> {
        let e = self.with(format!("{}: {}", s.code(), s.message()));
        // Connection failures surface as UNAVAILABLE; openraft backs off
        // from unreachable peers instead of hammering them.
        if s.code() == tonic::Code::Unavailable {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

impl PeerConnection {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(
                &self.err(format!("bad address {:?}", self.addr)),
            ))
        })
    }

    fn err(&self, detail: impl Into<String>) -> PeerError {
        PeerError::new(self.target, &self.addr, detail)
    }

    fn status_error(&self, s: tonic::Status) -> RPCError<TypeConfig> {
        self.err("").status_error(s)
    }

    fn decode_error(&self, e: codec::DecodeError) -> RPCError<TypeConfig> {
        RPCError::Network(NetworkError::new(&self.err(e.to_string())))
    }

    async fn with_deadline<T>(
        &self,
        ttl: Duration,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RPCError<TypeConfig>> {
        match tokio::time::timeout(ttl, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status_error(s)),
            Err(_) => Err(RPCError::Unreachable(Unreachable::new(
                &self.err(format!("no answer within {ttl:?}")),
            ))),
        }
    }

    async fn send_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre_vote: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut c = self.client()?;
        let req = codec::vote_request_to_pb(&rpc, pre_vote);
        let resp = self.with_deadline(option.hard_ttl(), c.vote(req)).await?;
        codec::vote_response_from_pb(&resp).map_err(|e| self.decode_error(e))
    }
}

/// The answer stream of one pipelined AppendStream session, with the
/// answer deadline of every request not answered yet.
struct ReplyStream {
    replies: tonic::Streaming<pb::AppendStreamReply>,
    /// The answer deadline of each request handed to the transport and
    /// not answered yet, oldest first.
    unanswered: Arc<Mutex<VecDeque<Instant>>>,
    ttl: Duration,
    peer: PeerError,
    /// Dropped with the session, which ends its request stream.
    _session: tokio::sync::oneshot::Sender<()>,
}

/// A session's request stream, ended and dropped as soon as the session
/// ends.
///
/// openraft's request stream shares the replication state of its target
/// with every later session. HTTP/2 keeps polling the request body of a
/// call whose answers nobody reads any more, so after a session failed,
/// its request stream went on taking entries and moving the shared state
/// past them; the next session then waited for entries beyond the last
/// one, and a follower that had missed some got nothing until a new write
/// came (seen with openraft's debug log: a follower stuck at 219 of 302
/// entries for 180 s on an idle cluster).
struct EndsWithSession<S> {
    inner: Option<S>,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl<S: Stream + Unpin> Stream for EndsWithSession<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        // Nothing is ever sent: the news is the sender's drop.
        if std::pin::Pin::new(&mut this.ended).poll(cx).is_ready() {
            this.inner = None;
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(inner).poll_next(cx)
    }
}

/// How long a follower may take to answer one AppendEntries of `bytes`:
/// openraft's TTL (the heartbeat interval) suits an empty or small request,
/// not one of megabytes that the follower must decode, store and fsync. A
/// request that outlives its allowance ends the stream and openraft starts
/// over from what was acknowledged, which for a large backlog that can never
/// be answered in time would repeat forever.
fn answer_allowance(ttl: Duration, bytes: usize) -> Duration {
    /// A disk and a debug build slower than this are not expected.
    const BYTES_PER_SEC: u64 = 8 << 20;
    ttl + Duration::from_millis(bytes as u64 * 1000 / BYTES_PER_SEC)
}

/// One answer of a stream session, as openraft consumes it.
type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl ReplyStream {
    fn fail(&self, e: RPCError<TypeConfig>) -> Option<(StreamItem, Option<Self>)> {
        Some((Err(e), None))
    }

    /// The next answer; an error once the oldest unanswered request is past
    /// its answer deadline (a paused or partitioned follower).
    async fn next(mut self) -> Option<(StreamItem, Option<Self>)> {
        loop {
            match tokio::time::timeout(self.ttl / 4, self.replies.message()).await {
                Ok(Ok(Some(reply))) => {
                    self.unanswered.lock().expect("unanswered").pop_front();
                    return match codec::stream_reply_from_pb(&reply) {
                        Ok(r) => Some((Ok(r), Some(self))),
                        Err(e) => {
                            let e = RPCError::Network(NetworkError::new(
                                &self.peer.with(e.to_string()),
                            ));
                            self.fail(e)
                        }
                    };
                }
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => {
                    let e = self.peer.status_error(status);
                    return self.fail(e);
                }
                Err(_) => {
                    let oldest = self.unanswered.lock().expect("unanswered").front().copied();
                    if oldest.is_some_and(|deadline| Instant::now() > deadline) {
                        let e = RPCError::Unreachable(Unreachable::new(&self.peer.with(format!(
                            "no answer within {:?} plus the request's size allowance",
                            self.ttl
                        ))));
                        return self.fail(e);
                    }
                }
            }
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFiles;

    /// Pipelined replication over one gRPC stream: requests go out as
    /// openraft produces them, without waiting for earlier answers, so a
    /// follower's fsync of one batch overlaps the transfer of the next.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            let mut c = self.client()?;
            let ttl = option.hard_ttl();
            let unanswered = Arc::new(Mutex::new(VecDeque::new()));
            let sent = unanswered.clone();
            let requests = input.map(move |r| {
                let pb = codec::append_request_to_pb(&r);
                let mut q = sent.lock().expect("unanswered");
                // Answers come in order: one queued behind a large request
                // cannot come before that one's.
                let now = Instant::now();
                let start = q.back().map_or(now, |prev: &Instant| (*prev).max(now));
                q.push_back(start + answer_allowance(ttl, pb.encoded_len()));
                pb
            });
            let (session, ended) = tokio::sync::oneshot::channel();
            let requests = EndsWithSession {
                inner: Some(requests),
                ended,
            };
            let wait = self.redial.delay();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let replies = match self.with_deadline(ttl, c.append_stream(requests)).await {
                Ok(r) => {
                    self.redial.opened();
                    r
                }
                Err(e) => {
                    self.redial.failed();
                    metrics::counter!(
                        "streamshield_peer_stream_open_failures_total",
                        "peer" => self.target.to_string()
                    )
                    .increment(1);
                    return Err(e);
                }
            };
            let state = ReplyStream {
                replies,
                unanswered,
                ttl,
                peer: self.err(""),
                _session: session,
            };
            let out: BoxStream<'s, _> =
                Box::pin(futures::stream::unfold(Some(state), |s| async move {
                    s?.next().await
                }));
            Ok(out)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut c = self.client()?;
        let req = codec::append_request_to_pb(&rpc);
        let resp = self
            .with_deadline(option.hard_ttl(), c.append_entries(req))
            .await?;
        codec::append_response_from_pb(&resp).map_err(|e| self.decode_error(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<crate::types::LeaderId, NodeId, Node, SnapshotFiles>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut c = self.client()?;
        let pinned = PinnedSnapshot::pin(&snapshot.snapshot).map_err(|e| {
            StreamingError::Network(NetworkError::new(&self.err(format!("pin snapshot: {e}"))))
        })?;
        let header = pb::SnapshotHeader {
            vote: Some(codec::vote_to_pb(&vote)),
            meta: Some(codec::snapshot_meta_to_pb(&snapshot.meta)),
        };
        let (tx, rx) = mpsc::channel(4);
        let chunk = self.snapshot_chunk_bytes;
        let target = self.target;
        tokio::spawn(async move {
            if let Err(e) = stream_files(pinned, header, chunk, tx).await {
                tracing::warn!(target, error = %e, "reading snapshot to send failed");
            }
        });
        let started = std::time::Instant::now();
        let send = c.install_snapshot(ReceiverStream::new(rx));
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(option.hard_ttl().max(Duration::from_secs(60)), send) => r,
        };
        let reply = match resp {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(self.status_error(s).into()),
            Err(_) => {
                return Err(StreamingError::Unreachable(Unreachable::new(
                    &self.err("snapshot transfer timed out"),
                )))
            }
        };
        metrics::histogram!("streamshield_snapshot_send_seconds")
            .record(started.elapsed().as_secs_f64());
        let vote = codec::vote_from_pb(reply.vote.as_ref())
            .map_err(|e| StreamingError::Network(NetworkError::new(&self.err(e.to_string()))))?;
        Ok(SnapshotResponse::new(vote))
    }
}

/// Feeds the header, then every file in chunks, then the end marker. If a
/// read fails the stream just ends without `done`, and the receiver
/// rejects the partial snapshot.
pub(crate) async fn stream_files(
    pinned: PinnedSnapshot,
    header: pb::SnapshotHeader,
    chunk_bytes: usize,
    tx: mpsc::Sender<pb::SnapshotChunk>,
) -> std::io::Result<()> {
    let closed = || std::io::Error::other("receiver went away");
    tx.send(pb::SnapshotChunk {
        header: Some(header),
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    for path in list_files(&pinned.dir)? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("non-UTF-8 file name"))?
            .to_string();
        let mut f = tokio::fs::File::open(&path).await?;
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; chunk_bytes];
            let n = f.read(&mut buf).await?;
            // An empty file still gets one (empty) chunk so it is created.
            if n == 0 && offset > 0 {
                break;
            }
            buf.truncate(n);
            tx.send(pb::SnapshotChunk {
                header: None,
                file: name.clone(),
                offset,
                data: buf,
                done: false,
            })
            .await
            .map_err(|_| closed())?;
            offset += n as u64;
            if n == 0 {
                break;
            }
        }
    }
    tx.send(pb::SnapshotChunk {
        done: true,
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redials_wait_longer_after_each_failure_and_not_after_success() {
        let mut r = Redial::default();
        assert_eq!(r.delay(), Duration::ZERO, "the first attempt goes at once");
        let mut waits = Vec::new();
        for _ in 0..8 {
            r.failed();
            waits.push(r.delay().as_millis());
        }
        assert_eq!(waits, [20, 40, 80, 100, 100, 100, 100, 100]);
        for _ in 0..100 {
            r.failed();
        }
        assert_eq!(r.delay(), Redial::MAX, "no overflow after many failures");
        r.opened();
        assert_eq!(r.delay(), Duration::ZERO);
    }

    #[test]
    fn a_large_request_gets_time_for_its_size() {
        let ttl = Duration::from_millis(100);
        assert_eq!(answer_allowance(ttl, 0), ttl);
        assert_eq!(answer_allowance(ttl, 300), ttl, "a heartbeat-sized request");
        assert_eq!(
            answer_allowance(ttl, 32 << 20),
            ttl + Duration::from_secs(4),
            "a full 32 MiB message at 8 MiB/s"
        );
    }
}
