//! etcd as the comparison target: its gRPC stubs, a local 3-member
//! cluster of Debian's `etcd` binary, and finding its leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use streamshield_client::local::{free_port, release_port};
use tonic::transport::{Channel, Endpoint};

/// Generated from `proto/etcd_kv.proto` (a subset of etcd's v3 API).
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// Where the `etcd` binary is: `$ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// A local etcd cluster on loopback whose members die with it.
pub struct EtcdCluster {
    children: Vec<Child>,
    pub client_urls: Vec<String>,
    /// Given back to `free_port` when the members are gone.
    ports: Vec<u16>,
}

impl EtcdCluster {
    /// Starts `members` etcd members with data and logs under `dir`, with
    /// etcd's default tuning except a backend quota large enough that a
    /// long benchmark never hits it (no compaction runs during the runs).
    pub fn start(dir: &Path, members: usize) -> anyhow::Result<Self> {
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut c = Self {
            children: Vec::new(),
            client_urls: Vec::new(),
            ports: ports.iter().flat_map(|(c, p)| [*c, *p]).collect(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.join(format!("etcd-{i}"));
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(dir.join(format!("etcd-{i}.log")))?;
            let curl = format!("http://127.0.0.1:{client}");
            let purl = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new(etcd_bin());
            cmd.arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={curl}"))
                .arg(format!("--advertise-client-urls={curl}"))
                .arg(format!("--listen-peer-urls={purl}"))
                .arg(format!("--initial-advertise-peer-urls={purl}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=streamshield-bench")
                .arg("--quota-backend-bytes=8589934592")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // Gone with the bench, even when it is killed.
            let child = streamshield_client::tied_child::spawn(cmd).with_context(|| {
                format!(
                    "cannot start {} (Debian: apt-get install etcd-server, or set ETCD_BIN)",
                    etcd_bin().display()
                )
            })?;
            c.children.push(child);
            c.client_urls.push(format!("127.0.0.1:{client}"));
        }
        Ok(c)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for port in &self.ports {
            release_port(*port);
        }
    }
}

fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{endpoint}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// Waits until the cluster has a leader that answers a linearizable read,
/// then returns a KV client on the leader's connection. Followers would
/// forward each request to the leader, one extra hop; going to the leader
/// directly gives etcd its best case.
pub async fn connect_leader(
    endpoints: &[String],
    within: Duration,
) -> anyhow::Result<pb::kv_client::KvClient<Channel>> {
    let deadline = Instant::now() + within;
    let mut last_error = String::from("no endpoint answered");
    while Instant::now() < deadline {
        for e in endpoints {
            let ch = channel(e)?;
            let status = pb::maintenance_client::MaintenanceClient::new(ch.clone())
                .status(pb::StatusRequest {})
                .await;
            match status {
                Ok(s) => {
                    let s = s.into_inner();
                    let me = s.header.map(|h| h.member_id).unwrap_or(0);
                    if s.leader == 0 || s.leader != me {
                        continue;
                    }
                    let mut kv = pb::kv_client::KvClient::new(ch);
                    match kv
                        .range(pb::RangeRequest {
                            key: b"bench/ready".to_vec(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => return Ok(kv),
                        Err(st) => last_error = st.to_string(),
                    }
                }
                Err(st) => last_error = format!("{e}: {st}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!(
        "etcd at {endpoints:?} has no leader after {within:?}: {last_error}"
    ))
}
