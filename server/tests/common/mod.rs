//! A cluster of real `streamshield-server` processes for one test: free
//! loopback ports, its own temp directory, every process killed and the
//! directory removed when the test ends, pass or fail.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use streamshield_client::local::LocalCluster;
use streamshield_client::{pb, Client, ClientConfig, TaskSpec};
use tempfile::TempDir;

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_streamshield-server");

/// Test-friendly timing: fast elections, but with room for a loaded
/// 2-core machine running debug builds.
pub fn base_args() -> Vec<String> {
    [
        "--heartbeat-ms=100",
        "--election-timeout-min-ms=600",
        "--election-timeout-max-ms=1200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub struct TestCluster {
    // Dropped first: kills the processes before their directory goes.
    pub cluster: LocalCluster,
    pub dir: TempDir,
}

impl TestCluster {
    pub async fn start(nodes: u64, extra: &[&str]) -> Self {
        Self::start_with(nodes, extra, |_| {}).await
    }

    /// [`Self::start`] with `prepare` run on the laid-out cluster before
    /// any node starts (per-node flags or wrappers).
    pub async fn start_with(
        nodes: u64,
        extra: &[&str],
        prepare: impl FnOnce(&mut LocalCluster),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("streamshield-test-")
            .tempdir()
            .expect("temp dir");
        let mut args = base_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cluster =
            LocalCluster::layout(dir.path(), nodes, Path::new(SERVER_BIN), &args, false)
                .expect("lay out servers");
        prepare(&mut cluster);
        for id in 1..=nodes {
            cluster.start_node(id).expect("start server");
        }
        let c = Self { cluster, dir };
        c.wait_for_settled_leader(Duration::from_secs(60)).await;
        c
    }

    /// A cluster of `nodes` whose job `job` (of `key_groups`) holds keys
    /// `keys` of table `s` (`write_keys` with `writers` at once), and a
    /// client of it.
    pub async fn with_keys(
        nodes: u64,
        job: &str,
        key_groups: u32,
        keys: std::ops::Range<u64>,
        writers: u64,
    ) -> (Self, Client) {
        let t = Self::start(nodes, &[]).await;
        let client = t.client();
        client
            .create_job(job, key_groups)
            .await
            .expect("create job");
        write_keys(&client, job, "s", keys, writers).await;
        (t, client)
    }

    /// Waits until every node names the same leader in the same term and
    /// that node says it leads. Every founding node starts an election when
    /// it initializes, so a leader seen first can still be deposed by a
    /// later candidate; once all agree, only a timeout can change it.
    pub async fn wait_for_settled_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let ids: Vec<u64> = self.cluster.specs().map(|s| s.id).collect();
        loop {
            let mut seen = Vec::new();
            for id in &ids {
                seen.push(self.status(*id).await);
            }
            let first = seen.first().cloned().flatten();
            let settled = first.as_ref().is_some_and(|f| {
                f.leader_id != 0
                    && seen.iter().all(|s| {
                        s.as_ref()
                            .is_some_and(|s| s.leader_id == f.leader_id && s.term == f.term)
                    })
                    && seen
                        .iter()
                        .flatten()
                        .any(|s| s.id == f.leader_id && s.role == pb::Role::Leader as i32)
            });
            if settled {
                return first.expect("checked").leader_id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader all nodes agree on within {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The `/metrics` address of the node that leads now.
    pub async fn leader_metrics_addr(&self) -> String {
        let leader = self.wait_for_leader(Duration::from_secs(10)).await;
        self.cluster
            .spec(leader)
            .expect("node")
            .metrics_addr
            .clone()
    }

    /// A client of every node; on a TLS cluster with its admin identity.
    pub fn client(&self) -> Client {
        self.client_with(self.cluster.endpoints())
    }

    fn client_with(&self, endpoints: Vec<String>) -> Client {
        let mut cfg = client_config(endpoints);
        cfg.tls = self.cluster.client_tls().expect("client TLS files");
        Client::new(cfg).expect("client")
    }

    pub fn addr(&self, id: u64) -> String {
        self.cluster.spec(id).expect("node").addr.clone()
    }

    /// A client that only knows the given nodes.
    pub fn client_of(&self, ids: &[u64]) -> Client {
        self.client_with(ids.iter().map(|id| self.addr(*id)).collect())
    }

    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        self.client().node_status(&self.addr(id)).await.ok()
    }

    /// Waits until a node reports itself leader and returns its id.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        self.wait_for_leader_among(
            &self.cluster.specs().map(|s| s.id).collect::<Vec<_>>(),
            within,
        )
        .await
    }

    pub async fn wait_for_leader_among(&self, ids: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            for id in ids {
                if let Some(s) = self.status(*id).await {
                    if s.role == pb::Role::Leader as i32 {
                        return *id;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {ids:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A node that is not the leader now, and the ids of all the others
    /// (who is left to write to once it is stopped).
    pub async fn pick_follower(&self) -> (u64, Vec<u64>) {
        let leader = self.wait_for_leader(Duration::from_secs(10)).await;
        let ids: Vec<u64> = self.cluster.specs().map(|s| s.id).collect();
        let follower = *ids.iter().find(|i| **i != leader).expect("a follower");
        let rest = ids.into_iter().filter(|i| *i != follower).collect();
        (follower, rest)
    }

    /// The status of whichever node says it leads, if one does.
    pub async fn leader_status(&self) -> Option<pb::StatusResponse> {
        for id in self.cluster.specs().map(|s| s.id).collect::<Vec<_>>() {
            if let Some(s) = self.status(id).await {
                if s.role == pb::Role::Leader as i32 {
                    return Some(s);
                }
            }
        }
        None
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, within: Duration) -> pb::StatusResponse {
        self.wait_status(id, within, &format!("apply {index}"), |s| {
            s.last_applied >= index
        })
        .await
    }

    /// Waits until node `id` reports a status for which `done` holds;
    /// `what` names the wait in the failure.
    pub async fn wait_status(
        &self,
        id: u64,
        within: Duration,
        what: &str,
        done: impl Fn(&pb::StatusResponse) -> bool,
    ) -> pb::StatusResponse {
        let deadline = Instant::now() + within;
        let mut last_seen = None;
        loop {
            if let Some(s) = self.status(id).await {
                if done(&s) {
                    return s;
                }
                last_seen = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not {what} within {within:?}; its last status: {last_seen:?}; \
                 the leader's: {:?}",
                self.leader_status().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A failed test deletes its directory with the servers' logs in it, so
/// their tails go to the test's output first.
impl Drop for TestCluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for id in self.cluster.specs().map(|s| s.id).collect::<Vec<_>>() {
            let path = self.cluster.log_path(id);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("---- last {} lines of {} ----", tail.len(), path.display());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

const LOG_TAIL_LINES: usize = 80;

/// A plaintext client of `endpoints`.
pub fn client_for(endpoints: Vec<String>) -> Client {
    Client::new(client_config(endpoints)).expect("client")
}

pub fn client_config(endpoints: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.deadline = Duration::from_secs(30);
    cfg
}

/// Writes `user{i}` = `v{i}` for i in `range` with `writers` concurrent
/// writers; panics on any failure, so every key returned was acknowledged.
pub async fn write_keys(
    client: &Client,
    job: &str,
    state: &str,
    range: std::ops::Range<u64>,
    writers: u64,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = client.clone();
        let (job, state) = (job.to_string(), state.to_string());
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = range.start + w;
            while i < range.end {
                c.put(&job, &state, key(i), value(i))
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

pub fn key(i: u64) -> Vec<u8> {
    format!("user{i:06}").into_bytes()
}

pub fn value(i: u64) -> Vec<u8> {
    format!("v{i}").into_bytes()
}

/// Checks that `kvs` is exactly `user{i}` = `v{i}` for i in `range`.
pub fn assert_exact(kvs: &[pb::KeyValue], range: std::ops::Range<u64>) {
    let expected: Vec<(Vec<u8>, Vec<u8>)> = range.map(|i| (key(i), value(i))).collect();
    let got: Vec<(Vec<u8>, Vec<u8>)> = kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "number of keys");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "key/value pair");
    }
}

/// The value of the metric line `series` (name and labels, as Prometheus
/// prints them) in a node's `/metrics`; 0 when absent.
pub fn metric_value(metrics_addr: &str, series: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics_addr).expect("metrics port");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {metrics_addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a number") as u64)
}

/// A plaintext gRPC channel to `addr`, connected.
pub async fn plain_channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("an address")
        .connect()
        .await
        .expect("connect")
}

/// A client id the cluster hands out (`RegisterClient`) through the node
/// at `addr`, the leader, for raw writes that are deduplicated.
pub async fn register_client(addr: &str) -> u64 {
    streamshield_proto::v1::state_client::StateClient::new(plain_channel(addr).await)
        .register_client(streamshield_proto::v1::RegisterClientRequest {})
        .await
        .expect("register a client")
        .into_inner()
        .client_id
}

/// Panics unless `r` failed with `code`; `what` names the call.
pub async fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {}", s.message()),
    }
}

/// Task 0 of `job`, owning all of its `key_groups`, reading no input.
pub fn whole_job_task(job: &str, key_groups: u32) -> TaskSpec {
    TaskSpec {
        job: job.into(),
        task: 0,
        key_groups: 0..key_groups,
        input_partitions: Vec::new(),
    }
}
