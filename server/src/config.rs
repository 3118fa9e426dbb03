//! Server configuration: one struct with documented defaults, read from a
//! TOML file and then overridden by flags and environment variables (the
//! binary's job), checked by [`ServerConfig::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::tls::TlsFiles;

/// Everything a state node needs to run. Defaults are documented on each
/// field and are the ones a local 3-node cluster on loopback wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's Raft id; unique in the cluster, never 0. Default 1.
    pub id: u64,
    /// Address to listen on for every gRPC service. Default `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this one. Default: the
    /// address actually bound.
    pub advertise: Option<String>,
    /// Where the Raft log, the state machine and snapshots live. Default `./data`.
    pub data_dir: PathBuf,
    /// `id=host:port` of every founding voter. A pristine node with this set
    /// initializes the cluster; a node joining later leaves it empty and is
    /// added with `members add`. Default empty.
    pub initial_cluster: Vec<String>,
    /// `id=host:port` addresses to dial for some peers instead of the one
    /// in the Raft membership, e.g. a fault-injecting proxy per link in the
    /// lab. Default empty.
    pub peer_addrs: Vec<String>,
    /// A snapshot saved with `streamshield snapshot --save DIR`: a node
    /// whose data directory is empty starts from it, as a member of
    /// `initial_cluster` (which it requires), as etcd's `etcdutl snapshot
    /// restore` does (`restore.rs`). Ignored once the data directory holds
    /// a store. Default none.
    pub restore_from: Option<PathBuf>,
    /// Where `/metrics` (Prometheus text format) is served; none if unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Threads that run the node's async work (gRPC, Raft, apply); 0 means
    /// one per core. Nodes sharing a machine do better dividing its cores
    /// among them: every hand-off between two threads wakes a parked
    /// thread, and on a VM that costs a hypervisor round trip (see
    /// PERFORMANCE.md). Default 0.
    pub worker_threads: usize,
    /// glibc malloc arenas the process may use; 0 keeps glibc's own limit
    /// (8 per core). Each thread that meets a locked arena makes a new one,
    /// and memory freed into one arena is not reused by another, so with
    /// many tokio and RocksDB threads the resident size creeps up for an
    /// hour before it levels off (`streamshield-jepsen soak`; README,
    /// "Soak"). Setting `MALLOC_ARENA_MAX` in the environment overrides
    /// this, as glibc documents. Default 2.
    pub malloc_arenas: usize,
    pub raft: RaftTuning,
    pub limits: Limits,
    pub keepalive: Keepalive,
    /// TLS for every connection (see `tls.rs`). Required unless `insecure`.
    pub tls: TlsFiles,
    /// Serve and dial in plaintext, with no certificates and no
    /// authentication: for a cluster on one machine during development
    /// only. Default false.
    pub insecure: bool,
}

/// HTTP/2 keepalive on every connection the node accepts: a peer or
/// client that vanished without closing its TCP connection (a host that
/// lost power, a dropped NAT entry) is noticed and its streams dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Keepalive {
    /// A ping after this long without traffic. Default 10 s.
    pub interval_ms: u64,
    /// The connection is closed if the ping is not answered in this long.
    /// Default 20 s.
    pub timeout_ms: u64,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            timeout_ms: 20_000,
        }
    }
}

impl Keepalive {
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Leader heartbeat period. Default 50 ms.
    pub heartbeat_ms: u64,
    /// A follower campaigns after a random timeout in [min, max], counted
    /// from the end of its leader's lease, which openraft sets to `max`
    /// after each heartbeat: a follower tolerates a silence of `max + min`
    /// and campaigns at most `2 × max` after the last heartbeat. Default
    /// 100..150 ms: a leader kill stalls writes about 300 ms, and the lab's
    /// `latency` nemesis (20-150 ms a link) starts no election (README,
    /// "Raft timing").
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries. Default 20,000.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up by log instead of by snapshot. Default 1,000.
    pub logs_kept_after_snapshot: u64,
    /// Also build a snapshot once the entries after the last one hold
    /// this many bytes: task sessions write entries of hundreds of KiB,
    /// and 20,000 of them would be gigabytes of log. Default 256 MiB.
    pub snapshot_log_bytes: u64,
    /// And keep at most this many bytes of log behind a snapshot (fewer
    /// than `logs_kept_after_snapshot` entries when they are large): a
    /// follower that fell further behind is sent a snapshot. Default
    /// 512 MiB, about 20 s of a saturated task-session run.
    pub log_bytes_kept_after_snapshot: u64,
    /// Bytes per snapshot chunk on the wire. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Entries per AppendEntries RPC. Default 1,000.
    pub max_entries_per_append: u64,
    /// Pre-Vote (Raft thesis §9.6): a node asks whether it could win
    /// before it bumps its term, so a node rejoining after a partition
    /// does not depose a healthy leader. Default true, as in etcd.
    pub pre_vote: bool,
}

/// The largest `max_batch_bytes` allowed: a write is one Raft entry, and
/// an AppendEntries of [`MAX_APPEND_BYTES`] plus one such entry must stay
/// below [`MAX_RAFT_MESSAGE_BYTES`].
///
/// [`MAX_APPEND_BYTES`]: crate::log_store::MAX_APPEND_BYTES
/// [`MAX_RAFT_MESSAGE_BYTES`]: crate::network::MAX_RAFT_MESSAGE_BYTES
pub const MAX_WRITE_BATCH_BYTES: usize = 64 << 20;

const _: () = assert!(
    crate::log_store::MAX_APPEND_BYTES + 2 * MAX_WRITE_BATCH_BYTES
        < crate::network::MAX_RAFT_MESSAGE_BYTES
);

/// Input limits: larger requests are refused with INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Default 4 KiB.
    pub max_key_bytes: usize,
    /// Default 1 MiB.
    pub max_value_bytes: usize,
    /// Sum of keys and values of one write request. Default 4 MiB; at
    /// most 64 MiB, so one Raft entry always fits a Raft message.
    pub max_batch_bytes: usize,
    /// Ops plus conditions of one write request. Default 10,000.
    pub max_ops_per_batch: usize,
    /// Job and state table names. Default 128 bytes.
    pub max_name_bytes: usize,
    /// Page size a scan may ask for; larger asks are cut to it. Default 10,000.
    pub max_scan_limit: u32,
    /// Keys and values one scan page carries at most; a page stops before
    /// the item that would pass it (the first always comes) and says where
    /// to go on. Default 16 MiB.
    pub max_scan_bytes: usize,
    /// Requests in flight on one connection; past it a request gets
    /// RESOURCE_EXHAUSTED at once. Default 1,024.
    pub max_requests_per_connection: usize,
    /// Client requests in flight on this node, over all connections; past
    /// it a request gets RESOURCE_EXHAUSTED with a retry hint at once.
    /// Peer (Raft) and health traffic is not counted, so an overload of
    /// clients never starves replication. Default 4,096.
    pub max_requests_in_flight: usize,
    /// A snapshot a leader sends this node may be at most this large; a
    /// larger one is refused with RESOURCE_EXHAUSTED and its files are
    /// removed. Default 1 TiB.
    pub max_snapshot_bytes: u64,
    /// A snapshot being received is refused once the file system it is
    /// written to has less than this free, so that it cannot fill the disk
    /// the Raft log needs. Default 1 GiB.
    pub min_free_disk_bytes: u64,
    /// A client's deduplication session (its recorded answers and the
    /// principal owning its id) is forgotten after this long without a
    /// write; writes under its id are then refused, and the client
    /// registers again. Default 24 h.
    pub dedupe_session_ttl_ms: u64,
    /// How often the leader looks for such sessions. Default 60 s.
    pub session_sweep_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            id: 1,
            listen: "127.0.0.1:7070".parse().expect("valid literal"),
            advertise: None,
            data_dir: PathBuf::from("data"),
            initial_cluster: Vec::new(),
            peer_addrs: Vec::new(),
            restore_from: None,
            metrics_listen: None,
            worker_threads: 0,
            malloc_arenas: 2,
            raft: RaftTuning::default(),
            limits: Limits::default(),
            keepalive: Keepalive::default(),
            tls: TlsFiles::default(),
            insecure: false,
        }
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 150,
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 1_000,
            snapshot_log_bytes: 256 << 20,
            log_bytes_kept_after_snapshot: 512 << 20,
            snapshot_chunk_bytes: 1 << 20,
            max_entries_per_append: 1_000,
            pre_vote: true,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_batch_bytes: 4 << 20,
            max_ops_per_batch: 10_000,
            max_name_bytes: 128,
            max_scan_limit: 10_000,
            max_scan_bytes: 16 << 20,
            max_requests_per_connection: 1024,
            max_requests_in_flight: 4096,
            max_snapshot_bytes: 1 << 40,
            min_free_disk_bytes: 1 << 30,
            dedupe_session_ttl_ms: 24 * 3600 * 1000,
            session_sweep_interval_ms: 60_000,
        }
    }
}

/// A configuration that cannot run, and why.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("node id must not be 0")]
    ZeroId,
    #[error("peer entry {entry:?} is not `id=host:port`")]
    BadPeer { entry: String },
    #[error("initial_cluster does not contain this node's id {id}")]
    SelfNotInCluster { id: u64 },
    #[error("restore_from needs initial_cluster: the members the restored cluster starts with")]
    RestoreWithoutCluster,
    #[error("initial_cluster names node {id} twice")]
    DuplicatePeer { id: u64 },
    #[error("election timeout must satisfy heartbeat < min <= max, got heartbeat {heartbeat} min {min} max {max}")]
    Timing { heartbeat: u64, min: u64, max: u64 },
    #[error("limit {name} must be greater than 0")]
    ZeroLimit { name: &'static str },
    #[error(
        "max_batch_bytes ({batch}) must be at least max_key_bytes + max_value_bytes ({needed})"
    )]
    BatchTooSmall { batch: usize, needed: usize },
    #[error("max_batch_bytes ({batch}) is above the maximum of {max}")]
    BatchTooLarge { batch: usize, max: usize },
    #[error("snapshot_every must be greater than 0")]
    ZeroSnapshotEvery,
    #[error("snapshot_log_bytes must be greater than 0")]
    ZeroSnapshotLogBytes,
    #[error("no TLS configured: set tls.ca_file, tls.cert_file and tls.key_file (--tls-ca, --tls-cert, --tls-key), or serve plaintext with --insecure")]
    NoTls,
    #[error("tls.ca_file, tls.cert_file and tls.key_file go together; set all three")]
    PartialTls,
    #[error("--insecure and TLS files are both set; choose one")]
    InsecureWithTls,
}

impl ServerConfig {
    /// Reads a TOML file; fields it does not name keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        self.peer_overrides()?;
        let peers = self.initial_peers()?;
        if !peers.is_empty() && !peers.iter().any(|(id, _)| *id == self.id) {
            return Err(ConfigError::SelfNotInCluster { id: self.id });
        }
        if self.restore_from.is_some() && peers.is_empty() {
            return Err(ConfigError::RestoreWithoutCluster);
        }
        let r = &self.raft;
        if !(r.heartbeat_ms > 0
            && r.heartbeat_ms < r.election_timeout_min_ms
            && r.election_timeout_min_ms <= r.election_timeout_max_ms)
        {
            return Err(ConfigError::Timing {
                heartbeat: r.heartbeat_ms,
                min: r.election_timeout_min_ms,
                max: r.election_timeout_max_ms,
            });
        }
        match (self.insecure, self.tls.is_set(), self.tls.paths().is_some()) {
            (true, true, _) => return Err(ConfigError::InsecureWithTls),
            (false, false, _) => return Err(ConfigError::NoTls),
            (false, true, false) => return Err(ConfigError::PartialTls),
            _ => {}
        }
        if r.snapshot_every == 0 {
            return Err(ConfigError::ZeroSnapshotEvery);
        }
        if r.snapshot_log_bytes == 0 {
            return Err(ConfigError::ZeroSnapshotLogBytes);
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_key_bytes", l.max_key_bytes),
            ("max_value_bytes", l.max_value_bytes),
            ("max_batch_bytes", l.max_batch_bytes),
            ("max_ops_per_batch", l.max_ops_per_batch),
            ("max_name_bytes", l.max_name_bytes),
            ("max_scan_limit", l.max_scan_limit as usize),
            ("max_scan_bytes", l.max_scan_bytes),
            ("max_requests_per_connection", l.max_requests_per_connection),
            ("max_requests_in_flight", l.max_requests_in_flight),
            ("max_snapshot_bytes", l.max_snapshot_bytes as usize),
            ("keepalive.interval_ms", self.keepalive.interval_ms as usize),
            ("keepalive.timeout_ms", self.keepalive.timeout_ms as usize),
            ("snapshot_chunk_bytes", r.snapshot_chunk_bytes),
            ("dedupe_session_ttl_ms", l.dedupe_session_ttl_ms as usize),
            (
                "session_sweep_interval_ms",
                l.session_sweep_interval_ms as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        if l.max_batch_bytes > MAX_WRITE_BATCH_BYTES {
            return Err(ConfigError::BatchTooLarge {
                batch: l.max_batch_bytes,
                max: MAX_WRITE_BATCH_BYTES,
            });
        }
        if l.max_batch_bytes < l.max_key_bytes + l.max_value_bytes {
            return Err(ConfigError::BatchTooSmall {
                batch: l.max_batch_bytes,
                needed: l.max_key_bytes + l.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The founding voters as `(id, address)`.
    pub fn initial_peers(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        parse_peers(&self.initial_cluster)
    }

    /// Dial overrides as `(id, address)`.
    pub fn peer_overrides(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        parse_peers(&self.peer_addrs)
    }
}

/// Parses `id=host:port` entries; ids are unique and never 0.
fn parse_peers(entries: &[String]) -> Result<Vec<(u64, String)>, ConfigError> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for entry in entries {
        let bad = || ConfigError::BadPeer {
            entry: entry.clone(),
        };
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if id == 0 || addr.is_empty() || !addr.contains(':') {
            return Err(bad());
        }
        if out.iter().any(|(i, _)| *i == id) {
            return Err(ConfigError::DuplicatePeer { id });
        }
        out.push((id, addr.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_tls_or_plaintext_is_chosen() {
        assert_eq!(ServerConfig::default().validate(), Err(ConfigError::NoTls));
        let plain = ServerConfig {
            insecure: true,
            ..Default::default()
        };
        plain.validate().unwrap();
        let mut tls = ServerConfig::default();
        tls.tls.ca_file = Some("ca.pem".into());
        assert_eq!(tls.validate(), Err(ConfigError::PartialTls));
        tls.tls.cert_file = Some("node.pem".into());
        tls.tls.key_file = Some("node-key.pem".into());
        tls.validate().unwrap();
        tls.insecure = true;
        assert_eq!(tls.validate(), Err(ConfigError::InsecureWithTls));
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let c = ServerConfig::from_toml(
            "id = 3\ninsecure = true\ninitial_cluster = [\"1=a:1\", \"3=c:3\"]\n[limits]\nmax_key_bytes = 100\n",
        )
        .unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.limits.max_key_bytes, 100);
        assert_eq!(c.limits.max_value_bytes, Limits::default().max_value_bytes);
        c.validate().unwrap();
        assert!(ServerConfig::from_toml("no_such_field = 1").is_err());
    }

    #[test]
    fn invalid_configs_are_named() {
        let mut c = ServerConfig {
            id: 0,
            insecure: true,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::ZeroId));
        c.id = 2;
        c.initial_cluster = vec!["1=a:1".into()];
        assert_eq!(c.validate(), Err(ConfigError::SelfNotInCluster { id: 2 }));
        c.initial_cluster = vec!["2=a:1".into(), "2=b:2".into()];
        assert_eq!(c.validate(), Err(ConfigError::DuplicatePeer { id: 2 }));
        c.initial_cluster = vec!["two=a:1".into()];
        assert!(matches!(c.validate(), Err(ConfigError::BadPeer { .. })));
        c.initial_cluster.clear();
        c.peer_addrs = vec!["3=127.0.0.1:9".into(), "3=127.0.0.1:8".into()];
        assert_eq!(c.validate(), Err(ConfigError::DuplicatePeer { id: 3 }));
        c.peer_addrs = vec!["3=127.0.0.1:9".into()];
        assert_eq!(
            c.peer_overrides().unwrap(),
            vec![(3, "127.0.0.1:9".to_string())]
        );
        c.initial_cluster.clear();
        c.raft.election_timeout_min_ms = 50;
        assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
        c.raft = RaftTuning::default();
        c.limits.max_batch_bytes = MAX_WRITE_BATCH_BYTES + 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BatchTooLarge { .. })
        ));
        c.limits.max_batch_bytes = MAX_WRITE_BATCH_BYTES;
        assert_eq!(c.validate(), Ok(()));
    }
}
