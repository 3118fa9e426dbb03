//! The typed async client: leader routing, retries with backoff under a
//! deadline, and exactly-once write retries.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use rand::Rng;
use streamshield_proto::v1::{self as pb, admin_client::AdminClient, state_client::StateClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::batch::WriteBatch;
use crate::coalesce::{CallKind, Coalescer, Gets, Link, Writes};
use crate::error::ClientError;
use crate::session::SessionSlot;
use crate::transport::{Bearer, Transport};

const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How a client reaches the cluster and how long it keeps trying.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of any nodes; the rest are discovered.
    pub endpoints: Vec<String>,
    /// A call (with all its retries) gives up after this. Default 10 s.
    pub deadline: Duration,
    /// One attempt on one node gives up after this. Default 3 s.
    pub attempt_timeout: Duration,
    /// Dial these addresses instead of the ones named (endpoints and
    /// leader hints alike), e.g. a fault-injecting proxy per node.
    pub dial: HashMap<String, String>,
    /// Send concurrent writes and gets to the same node together, in one
    /// `WriteMany`/`GetMany` call (see `coalesce.rs`). Default on.
    pub coalesce: bool,
    /// Talk TLS with these; plaintext if none. Default none.
    pub tls: Option<ClientTls>,
    /// Sent as `authorization: Bearer <token>` on every call: the identity
    /// of a client without a certificate (`streamshield auth token
    /// create`). Default none.
    pub token: Option<String>,
}

/// What a client talks TLS with: the cluster CA's certificate, and its own
/// certificate and key (PEM), which a node of a TLS cluster requires.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the PEM files, as etcdctl's `--cacert`, `--cert`, `--key`.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
            })
        };
        Ok(Self {
            ca: read(ca)?,
            identity: match identity {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => c.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            dial: HashMap::new(),
            coalesce: true,
            tls: None,
            token: None,
        }
    }
}

/// Read freshness, see `Consistency` in state.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl Consistency {
    fn to_pb(self) -> i32 {
        match self {
            Self::Linearizable => pb::Consistency::Linearizable as i32,
            Self::Stale => pb::Consistency::Stale as i32,
        }
    }
}

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// Raft log index that carried the write.
    pub index: u64,
    /// Per op, the key's version after it (0 for deletes).
    pub versions: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub prefix: Vec<u8>,
    pub start_after: Vec<u8>,
    pub limit: u32,
    pub consistency: Consistency,
}

#[derive(Debug, Clone)]
pub struct ScanPage {
    pub kvs: Vec<pb::KeyValue>,
    pub more: bool,
    pub applied_index: u64,
}

/// One node: its channel and, once used, the tasks that coalesce calls
/// to it.
struct Conn {
    channel: Transport,
    writes: Mutex<Option<Coalescer<Writes>>>,
    gets: Mutex<Option<Coalescer<Gets>>>,
    /// Shared by both coalescers: one stream to the node.
    session: Arc<SessionSlot>,
    attempt_timeout: Duration,
}

impl Conn {
    /// Starts the coalescer on first use, and again if the runtime that
    /// ran it has shut down.
    fn coalescer<K: CallKind>(&self, slot: &Mutex<Option<Coalescer<K>>>) -> Coalescer<K> {
        let mut c = slot.lock().expect("coalescer");
        match &*c {
            Some(running) if running.is_running() => running.clone(),
            _ => {
                let started = Coalescer::start(Link {
                    client: state_client(self.channel.clone()),
                    session: self.session.clone(),
                    attempt_timeout: self.attempt_timeout,
                });
                *c = Some(started.clone());
                started
            }
        }
    }

    /// `req` through this node's coalescer, or as its own unary call.
    async fn call<K: CallKind>(
        &self,
        slot: &Mutex<Option<Coalescer<K>>>,
        req: K::Req,
        coalesce: bool,
    ) -> Result<K::Resp, Status> {
        if coalesce {
            self.coalescer(slot).submit(req).await
        } else {
            K::one(state_client(self.channel.clone()), req).await
        }
    }
}

fn state_client(ch: Transport) -> StateClient<Transport> {
    StateClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

struct Inner {
    config: ClientConfig,
    channels: Mutex<HashMap<String, Arc<Conn>>>,
    leader: Mutex<Option<String>>,
    next_endpoint: AtomicUsize,
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

/// A write's seq, in the client's in-flight set for as long as the write
/// runs. Once it ends — answered, failed, or dropped by its caller — the
/// seq is never sent again, so the server may forget its answer; without
/// the guard a cancelled write would hold `acked_below` back for good and
/// the server would keep every later answer of this client.
struct InFlight<'a> {
    set: &'a Mutex<BTreeSet<u64>>,
    seq: u64,
}

impl<'a> InFlight<'a> {
    fn enter(set: &'a Mutex<BTreeSet<u64>>, seq: u64) -> Self {
        set.lock().expect("in flight").insert(seq);
        Self { set, seq }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.seq);
        }
    }
}

/// A handle to a cluster; cheap to clone and safe to share.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Where a retried call goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Leader,
    Any,
}

fn not_leader_hint(s: &Status) -> Option<Option<String>> {
    if s.details().is_empty() {
        return None;
    }
    match pb::ErrorDetail::decode(s.details()).ok()?.kind? {
        pb::error_detail::Kind::NotLeader(n) => {
            Some((!n.leader_addr.is_empty()).then_some(n.leader_addr))
        }
        pb::error_detail::Kind::Overloaded(_) => None,
    }
}

/// How long a saturated node asked to be left alone, if it refused the
/// call for that (RESOURCE_EXHAUSTED with an `Overloaded` detail): nothing
/// of the call was applied, so it is retried after the pause.
fn overloaded_hint(s: &Status) -> Option<Duration> {
    if s.code() != Code::ResourceExhausted || s.details().is_empty() {
        return None;
    }
    match pb::ErrorDetail::decode(s.details()).ok()?.kind? {
        pb::error_detail::Kind::Overloaded(o) => Some(Duration::from_millis(
            o.retry_after_ms.clamp(1, 5_000).into(),
        )),
        pb::error_detail::Kind::NotLeader(_) => None,
    }
}

/// Codes after which the same call may succeed on another try.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    )
}

impl Client {
    /// Prepares connections to `config.endpoints`; nothing is dialled until
    /// the first call.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::BadEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let client_id = loop {
            let id: u64 = rand::rng().random();
            if id != 0 {
                break id;
            }
        };
        let c = Self {
            inner: Arc::new(Inner {
                config,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                next_endpoint: AtomicUsize::new(0),
                client_id,
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
            }),
        };
        for e in c.inner.config.endpoints.clone() {
            c.channel(&e)?;
        }
        Ok(c)
    }

    /// Shorthand for `Client::new(ClientConfig::new(endpoints))`.
    pub fn connect(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, ClientError> {
        Self::new(ClientConfig::new(endpoints))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.config.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Transport, ClientError> {
        Ok(self.conn(addr)?.channel.clone())
    }

    fn conn(&self, addr: &str) -> Result<Arc<Conn>, ClientError> {
        let mut map = self.inner.channels.lock().expect("channel map");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let bad = |reason: String| ClientError::BadEndpoint {
            endpoint: addr.to_string(),
            reason,
        };
        let target = self
            .inner
            .config
            .dial
            .get(addr)
            .map_or(addr, String::as_str);
        let scheme = match self.inner.config.tls {
            Some(_) => "https",
            None => "http",
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))
            .map_err(|e| bad(e.to_string()))?;
        if let Some(tls) = &self.inner.config.tls {
            // A node is named by the address it was dialled at (its
            // certificate lists it), also behind a `dial` override.
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            endpoint = endpoint
                .tls_config(
                    tls.tonic_config()
                        .domain_name(host.trim_matches(['[', ']'])),
                )
                .map_err(|e| bad(e.to_string()))?;
        }
        let ch = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.inner.config.attempt_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let bearer = Bearer::new(self.inner.config.token.as_deref()).map_err(bad)?;
        let conn = Arc::new(Conn {
            channel: InterceptedService::new(ch, bearer),
            writes: Mutex::new(None),
            gets: Mutex::new(None),
            session: Arc::new(SessionSlot::default()),
            attempt_timeout: self.inner.config.attempt_timeout,
        });
        map.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    fn pick(&self, route: Route) -> String {
        if route == Route::Leader {
            if let Some(l) = self.inner.leader.lock().expect("leader").clone() {
                return l;
            }
        }
        let eps = &self.inner.config.endpoints;
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        eps[i % eps.len()].clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().expect("leader") = addr;
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline
    /// passes; follows NotLeader hints and backs off (with jitter) between
    /// attempts on unavailable nodes.
    async fn with_retries<T, F, Fut>(&self, route: Route, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut backoff = Duration::from_millis(10);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let addr = self.pick(route);
            let status = match call(self.conn(&addr)?).await {
                Ok(v) => {
                    if route == Route::Leader {
                        self.set_leader(Some(addr));
                    }
                    return Ok(v);
                }
                Err(s) => s,
            };
            if let Some(pause) = overloaded_hint(&status) {
                if Instant::now() + pause < deadline {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            let hint = not_leader_hint(&status);
            if hint.is_none() && !retryable(status.code()) {
                return Err(ClientError::from_status(&status));
            }
            if Instant::now() >= deadline {
                return Err(match status.code() {
                    Code::DeadlineExceeded => {
                        ClientError::DeadlineExceeded(status.message().to_string())
                    }
                    _ => ClientError::Unavailable {
                        attempts,
                        last: format!("{addr}: {}", status.message()),
                    },
                });
            }
            match hint {
                // Straight to the node named as leader, no pause.
                Some(Some(leader)) if leader != addr => {
                    self.set_leader(Some(leader));
                    continue;
                }
                _ => self.set_leader(None),
            }
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            let pause = (backoff + Duration::from_millis(jitter))
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Applies `batch` atomically. A condition that does not hold is
    /// [`ClientError::ConditionFailed`]. Retries after an unknown outcome
    /// carry the same sequence number, so the write applies at most once.
    pub async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ClientError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::enter(&self.inner.in_flight, seq);
        // A session the cluster forgot (idle past its TTL) refuses the
        // write, which so was not applied. If no earlier attempt of this
        // seq went out, none can have been applied either: the write starts
        // a new session (acked_below 0) and goes again. After an unknown
        // outcome the refusal is the caller's to see.
        let mut restart = false;
        let result = loop {
            let mut sent = 0u32;
            let r = self
                .with_retries(Route::Leader, |conn| {
                    sent += 1;
                    let acked_below = if restart {
                        0
                    } else {
                        *self
                            .inner
                            .in_flight
                            .lock()
                            .expect("in flight")
                            .first()
                            .unwrap_or(&seq)
                    };
                    let req = pb::WriteRequest {
                        shard: 0,
                        job: batch.job.clone(),
                        ops: batch.ops.clone(),
                        conditions: batch.conditions.clone(),
                        client_id: self.inner.client_id,
                        seq,
                        acked_below,
                        mode: pb::WriteMode::Sync as i32,
                    };
                    let coalesce = self.inner.config.coalesce;
                    async move { conn.call(&conn.writes, req, coalesce).await }
                })
                .await;
            match r {
                Err(ClientError::SessionExpired(_)) if sent == 1 && !restart => restart = true,
                other => break other,
            }
        };
        drop(in_flight);
        let w = result?;
        if !w.succeeded {
            return Err(ClientError::ConditionFailed {
                failed_condition: w.failed_condition.unwrap_or(0),
                current: w.current,
            });
        }
        Ok(WriteResult {
            index: w.index,
            versions: w.versions,
        })
    }

    pub async fn put(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        self.write(WriteBatch::new(job).put(state, key, value))
            .await
    }

    pub async fn delete(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        self.write(WriteBatch::new(job).delete(state, key)).await
    }

    /// Sets `key` to `new` only if it currently holds `expected` (`None` =
    /// absent).
    pub async fn compare_and_swap(
        &self,
        job: &str,
        state: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        let b = WriteBatch::new(job);
        let b = match expected {
            None => b.if_absent(state, key),
            Some(v) => b.if_value(state, key, v),
        };
        self.write(b.put(state, key, new)).await
    }

    pub async fn get(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Option<pb::KeyValue>, ClientError> {
        let req = pb::GetRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            key: key.into(),
            consistency: consistency.to_pb(),
        };
        let route = if consistency == Consistency::Stale {
            Route::Any
        } else {
            Route::Leader
        };
        let r = self
            .with_retries(route, |conn| {
                let req = req.clone();
                let coalesce = self.inner.config.coalesce;
                async move { conn.call(&conn.gets, req, coalesce).await }
            })
            .await?;
        Ok(r.kv)
    }

    /// A stale read from one particular node, with the index it had applied.
    pub async fn get_from(
        &self,
        addr: &str,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
    ) -> Result<pb::GetResponse, ClientError> {
        let req = pb::GetRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            key: key.into(),
            consistency: pb::Consistency::Stale as i32,
        };
        state_client(self.channel(addr)?)
            .get(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| ClientError::from_status(&s))
    }

    pub async fn scan(
        &self,
        job: &str,
        state: &str,
        opts: ScanOptions,
    ) -> Result<ScanPage, ClientError> {
        let req = pb::ScanRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            prefix: opts.prefix,
            start_after: opts.start_after,
            limit: opts.limit,
            consistency: opts.consistency.to_pb(),
        };
        let route = if opts.consistency == Consistency::Stale {
            Route::Any
        } else {
            Route::Leader
        };
        let r = self
            .with_retries(route, |conn| {
                let req = req.clone();
                async move {
                    state_client(conn.channel.clone())
                        .scan(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(ScanPage {
            kvs: r.kvs,
            more: r.more,
            applied_index: r.applied_index,
        })
    }

    /// Every key of a state table with `prefix`, page by page.
    pub async fn scan_all(
        &self,
        job: &str,
        state: &str,
        prefix: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<pb::KeyValue>, ClientError> {
        let mut out: Vec<pb::KeyValue> = Vec::new();
        loop {
            let opts = ScanOptions {
                prefix: prefix.to_vec(),
                start_after: out.last().map(|kv| kv.key.clone()).unwrap_or_default(),
                limit: 1000,
                consistency,
            };
            let page = self.scan(job, state, opts).await?;
            out.extend(page.kvs);
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// `call` on the leader's transport, retried as every admin call is.
    pub(crate) async fn on_leader<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.with_retries(Route::Leader, |conn| call(conn.channel.clone()))
            .await
    }

    fn admin(ch: Transport) -> AdminClient<Transport> {
        AdminClient::new(ch)
    }

    pub async fn create_job(&self, job: &str, key_groups: u32) -> Result<pb::JobInfo, ClientError> {
        let req = pb::CreateJobRequest {
            job: job.into(),
            key_groups,
        };
        let r = self
            .with_retries(Route::Leader, |conn| {
                let req = req.clone();
                async move {
                    Self::admin(conn.channel.clone())
                        .create_job(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        r.job.ok_or_else(|| ClientError::Server {
            code: Code::Internal,
            message: "create_job answered without a job".into(),
        })
    }

    pub async fn describe_job(&self, job: &str) -> Result<pb::JobInfo, ClientError> {
        let req = pb::DescribeJobRequest { job: job.into() };
        let r = self
            .with_retries(Route::Leader, |conn| {
                let req = req.clone();
                async move {
                    Self::admin(conn.channel.clone())
                        .describe_job(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        r.job.ok_or_else(|| ClientError::Server {
            code: Code::Internal,
            message: "describe_job answered without a job".into(),
        })
    }

    /// One node's own view of the cluster, without retries.
    pub async fn node_status(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        Self::admin(self.channel(addr)?)
            .status(pb::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| ClientError::from_status(&s))
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
        self.with_retries(Route::Leader, |conn| {
            let req = req.clone();
            async move {
                Self::admin(conn.channel.clone())
                    .add_learner(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
        retain: bool,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let req = pb::ChangeMembershipRequest { voters, retain };
        self.with_retries(Route::Leader, |conn| {
            let req = req.clone();
            async move {
                Self::admin(conn.channel.clone())
                    .change_membership(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Asks one node to build a snapshot now; returns its snapshot index.
    pub async fn trigger_snapshot(&self, addr: &str) -> Result<u64, ClientError> {
        Self::admin(self.channel(addr)?)
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .map(|r| r.into_inner().snapshot_index)
            .map_err(|s| ClientError::from_status(&s))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_detail_is_read() {
        let detail = pb::ErrorDetail {
            kind: Some(pb::error_detail::Kind::NotLeader(pb::NotLeader {
                leader_id: 2,
                leader_addr: "127.0.0.1:5".into(),
            })),
        };
        let s = Status::with_details(
            Code::Unavailable,
            "not leader",
            detail.encode_to_vec().into(),
        );
        assert_eq!(not_leader_hint(&s), Some(Some("127.0.0.1:5".to_string())));
        let unknown = pb::ErrorDetail {
            kind: Some(pb::error_detail::Kind::NotLeader(pb::NotLeader::default())),
        };
        let s = Status::with_details(
            Code::Unavailable,
            "no leader",
            unknown.encode_to_vec().into(),
        );
        assert_eq!(not_leader_hint(&s), Some(None));
        assert_eq!(
            not_leader_hint(&Status::unavailable("connection refused")),
            None
        );
    }

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(retryable(Code::DeadlineExceeded));
        for final_code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::OutOfRange,
        ] {
            assert!(!retryable(final_code), "{final_code:?}");
        }
    }

    #[tokio::test]
    async fn a_write_its_caller_gave_up_on_is_no_longer_in_flight() {
        // Nothing listens on port 1: the write keeps retrying until dropped.
        let c = Client::connect(["127.0.0.1:1"]).unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), c.put("j", "s", "k", "v")).await;
        assert!(gave_up.is_err(), "the write was still retrying");
        assert!(c.inner.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn needs_an_endpoint_and_rejects_bad_ones() {
        assert!(matches!(
            Client::connect(Vec::<String>::new()),
            Err(ClientError::BadEndpoint { .. })
        ));
        assert!(matches!(
            Client::connect(["not a host"]),
            Err(ClientError::BadEndpoint { .. })
        ));
    }
}
