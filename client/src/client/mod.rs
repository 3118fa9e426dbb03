//! The typed async client: leader routing, retries with backoff under a
//! deadline, and exactly-once write retries.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use rand::Rng;
use streamshield_proto::v1::{self as pb, state_client::StateClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::coalesce::{CallKind, Coalescer, Gets, Link, Writes};
use crate::error::ClientError;
use crate::session::SessionSlot;
use crate::transport::{Bearer, Transport};

const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The longest pause between two attempts of one call (plus up to half
/// again of jitter). Short, as etcd's client keeps it (25 ms): a failed
/// attempt on loopback or a LAN costs a node little, and after a leader
/// dies every task waits out the election in these pauses, so a long one
/// adds straight to the stall (`bench --workload reattach --leader-kills`).
const MAX_BACKOFF: Duration = Duration::from_millis(25);

mod admin;
mod config;
mod kv;
mod snapshot_save;
mod streams;
mod tasks;

pub use config::{ClientConfig, ClientTls};
pub use kv::{Consistency, ScanOptions, ScanPage, WriteResult};
pub use snapshot_save::{SaveSnapshotError, SavedSnapshot};
pub use streams::{Producer, Retention};

/// One node: its channel and, once used, the tasks that coalesce calls
/// to it.
struct Conn {
    channel: Transport,
    /// Where `channel` goes, to open connections of their own for
    /// subscriptions ([`Conn::dedicated`]).
    endpoint: Endpoint,
    bearer: Bearer,
    writes: Mutex<Option<Coalescer<Writes>>>,
    gets: Mutex<Option<Coalescer<Gets>>>,
    /// Shared by both coalescers: one stream to the node.
    session: Arc<SessionSlot>,
    attempt_timeout: Duration,
}

impl Conn {
    /// A new connection to the same node, for a long-lived server stream
    /// whose reader sets its pace. HTTP/2 flow control has a window per
    /// connection as well as per stream: a subscription whose consumer
    /// stops reading (its task is busy with what it already has) fills the
    /// connection's window, and the answers of every other call on that
    /// connection, the task's own reads among them, can no longer arrive.
    fn dedicated(&self) -> Transport {
        InterceptedService::new(self.endpoint.connect_lazy(), self.bearer.clone())
    }

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
    /// The client id the cluster handed out for this client's sync writes
    /// (`RegisterClient`), 0 until the first; registered again when its
    /// session expired, by one write at a time (`registering`).
    client_id: AtomicU64,
    registering: tokio::sync::Mutex<()>,
    /// The id under which writes that carry a task's lease are
    /// deduplicated: they are scoped to the lease, so any id that tells
    /// this client's writes apart from the holder's other clients' does.
    lease_writer_id: u64,
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
pub(crate) enum Route {
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
        _ => None,
    }
}

/// How long a node asked to be left alone, if it refused the call for
/// that (an `Overloaded` detail: RESOURCE_EXHAUSTED from a saturated node,
/// UNAVAILABLE from key groups being promoted): nothing of the call was
/// applied, so it is retried after the pause, on the same node.
fn overloaded_hint(s: &Status) -> Option<Duration> {
    if !matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) || s.details().is_empty() {
        return None;
    }
    match pb::ErrorDetail::decode(s.details()).ok()?.kind? {
        pb::error_detail::Kind::Overloaded(o) => Some(Duration::from_millis(
            o.retry_after_ms.clamp(1, 5_000).into(),
        )),
        _ => None,
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
        let lease_writer_id = loop {
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
                client_id: AtomicU64::new(0),
                registering: tokio::sync::Mutex::new(()),
                lease_writer_id,
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
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.inner.config.attempt_timeout)
            .tcp_nodelay(true);
        let bearer = Bearer::new(self.inner.config.token.as_deref()).map_err(bad)?;
        let conn = Arc::new(Conn {
            channel: InterceptedService::new(endpoint.connect_lazy(), bearer.clone()),
            endpoint,
            bearer,
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
            tracing::debug!(node = %addr, code = ?status.code(), message = status.message(), attempts, "retrying");
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            let pause = (backoff + Duration::from_millis(jitter))
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One call of a generated gRPC client (made by `client` on a node's
    /// transport) on `route`, retried as every call is.
    pub(crate) async fn call<C, Req, Resp, F, Fut>(
        &self,
        route: Route,
        client: fn(Transport) -> C,
        req: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(C, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call_over(route, |c| c.channel.clone(), client, req, call)
            .await
    }

    /// [`Self::call`] on the connection `transport` picks: a call that
    /// opens a server stream passes [`Conn::dedicated`].
    async fn call_over<C, Req, Resp, F, Fut>(
        &self,
        route: Route,
        transport: fn(&Conn) -> Transport,
        client: fn(Transport) -> C,
        req: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(C, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.with_retries(route, |conn| {
            let fut = call(client(transport(&conn)), req.clone());
            async move { fut.await.map(|r| r.into_inner()) }
        })
        .await
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
