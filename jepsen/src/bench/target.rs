//! The stores a benchmark drives: StreamShield through its client, etcd
//! through its v3 gRPC API. Both answer the same two operations.

use std::future::Future;
use std::time::{Duration, Instant};

use streamshield_client::pb;
use streamshield_client::{Client, Consistency};
use tonic::transport::Channel;

use super::etcd::pb as etcd_pb;

/// One operation of a closed-loop client.
#[derive(Debug, Clone)]
pub enum Op {
    /// A durable write: acknowledged only once committed by a majority.
    Put { key: Vec<u8>, value: Vec<u8> },
    Get {
        key: Vec<u8>,
        consistency: Consistency,
    },
}

/// Which store a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// StreamShield through its client as shipped: concurrent calls to a
    /// node go together (`WriteMany`/`GetMany`).
    Streamshield,
    /// The same cluster through a client that sends every operation as its
    /// own call, as etcd's client does.
    StreamshieldUncoalesced,
    /// A cluster of its own over mutual TLS, with the coalescing client.
    StreamshieldTls,
    Etcd,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Streamshield => "streamshield",
            Self::StreamshieldUncoalesced => "ss-uncoalesced",
            Self::StreamshieldTls => "ss-tls",
            Self::Etcd => "etcd",
        }
    }

    /// The cluster it measures: both StreamShield clients share one.
    pub fn cluster(self) -> TargetKind {
        match self {
            Self::StreamshieldUncoalesced => Self::Streamshield,
            other => other,
        }
    }
}

/// A store under test. Cheap to clone: every client task holds one.
pub trait Target: Clone + Send + Sync + 'static {
    /// Runs `op`; the error is only counted, so a description suffices.
    fn execute(&self, op: Op) -> impl Future<Output = Result<(), String>> + Send;

    /// Waits until the replicas that serve reads have what was written so
    /// far, so that a read run after a preload finds its keys wherever it
    /// goes. Nothing to wait for where reads go to the node that wrote.
    fn settle(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// How long replicas get to apply a preload before a read run.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// The job and state table every StreamShield benchmark writes to.
pub const JOB: &str = "bench";
pub const STATE: &str = "kv";

#[derive(Clone)]
pub struct StreamShieldTarget {
    pub client: Client,
}

impl StreamShieldTarget {
    /// Creates the benchmark job if it is not there yet.
    pub async fn prepare(client: Client) -> anyhow::Result<Self> {
        match client.create_job(JOB, 0).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("create job {JOB}: {e}")),
        }
        Ok(Self { client })
    }
}

impl Target for StreamShieldTarget {
    /// Stale reads may go to a follower, which answers from what it has
    /// applied: right after a preload on a fresh cluster, a follower still
    /// applying could answer that the job does not exist. Waits until every
    /// node that answers has applied the highest commit index any of them
    /// reported at the start.
    async fn settle(&self) -> anyhow::Result<()> {
        let answering = |all: Vec<(String, Result<pb::StatusResponse, _>)>| {
            all.into_iter()
                .filter_map(|(addr, r)| r.ok().map(|s| (addr, s)))
                .collect::<Vec<_>>()
        };
        let committed = answering(self.client.cluster_status().await)
            .iter()
            .map(|(_, s)| s.committed_index)
            .max()
            .unwrap_or(0);
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let behind: Vec<String> = answering(self.client.cluster_status().await)
                .into_iter()
                .filter(|(_, s)| s.last_applied < committed)
                .map(|(addr, s)| format!("{addr} at {}", s.last_applied))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "after {SETTLE_WITHIN:?}, nodes still behind index {committed}: {}",
                    behind.join(", ")
                );
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    async fn execute(&self, op: Op) -> Result<(), String> {
        match op {
            Op::Put { key, value } => self
                .client
                .put(JOB, STATE, key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Op::Get { key, consistency } => self
                .client
                .get(JOB, STATE, key, consistency)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

/// etcd's KV service on one member, as its own clients use it: one HTTP/2
/// connection shared by every client task.
#[derive(Clone)]
pub struct EtcdTarget {
    pub kv: etcd_pb::kv_client::KvClient<Channel>,
}

impl Target for EtcdTarget {
    async fn execute(&self, op: Op) -> Result<(), String> {
        let mut kv = self.kv.clone();
        match op {
            Op::Put { key, value } => kv
                .put(etcd_pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Op::Get { key, consistency } => kv
                .range(etcd_pb::RangeRequest {
                    key,
                    serializable: consistency == Consistency::Stale,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    }
}
