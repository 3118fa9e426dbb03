//! A cluster of real server processes with a fault-injecting proxy on
//! every link: node i → node j (each node dials its peers through its own
//! proxies) and client → node j. Nemeses act on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use streamshield_client::local::LocalCluster;
use streamshield_client::{pb, Client, ClientConfig};

use crate::proxy::{LinkFaults, Proxy};

/// The "from" side of client links.
pub const CLIENTS: u64 = 0;

pub struct Lab {
    pub cluster: LocalCluster,
    links: BTreeMap<(u64, u64), Proxy>,
    ids: Vec<u64>,
    /// Nodes currently SIGSTOPped.
    paused: BTreeSet<u64>,
}

impl Lab {
    /// Lays out `nodes` founders in `dir`, puts proxies on every link and
    /// starts the nodes.
    pub async fn start(
        dir: &Path,
        nodes: u64,
        server_bin: &Path,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        let mut cluster = LocalCluster::layout(dir, nodes, server_bin, extra_args, false)?;
        // The secure path is the one users run: every link, peers' and
        // clients', is mutual TLS through the proxies.
        cluster.enable_tls()?;
        let ids: Vec<u64> = (1..=nodes).collect();
        let mut links = BTreeMap::new();
        let planned = cluster.planned_ports();
        let addr = |c: &LocalCluster, id: u64| -> anyhow::Result<SocketAddr> {
            Ok(c.spec(id).context("node spec")?.addr.parse()?)
        };
        for &i in &ids {
            let mut dial = Vec::new();
            for &j in ids.iter().filter(|j| **j != i) {
                let p = Proxy::start_avoiding(addr(&cluster, j)?, &planned).await?;
                dial.push(format!("{j}={}", p.addr()));
                links.insert((i, j), p);
            }
            cluster.set_node_args(i, vec![format!("--peer-addrs={}", dial.join(","))]);
            links.insert(
                (CLIENTS, i),
                Proxy::start_avoiding(addr(&cluster, i)?, &planned).await?,
            );
        }
        for &id in &ids {
            cluster.start_node(id)?;
        }
        Ok(Self {
            cluster,
            links,
            ids,
            paused: BTreeSet::new(),
        })
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn addr(&self, id: u64) -> String {
        self.cluster
            .spec(id)
            .map(|s| s.addr.clone())
            .unwrap_or_default()
    }

    /// A client that reaches every node through the client-side proxies.
    pub fn client(&self, deadline: Duration) -> anyhow::Result<Client> {
        let mut cfg = ClientConfig::new(self.ids.iter().map(|i| self.addr(*i)));
        cfg.deadline = deadline;
        cfg.attempt_timeout = deadline.min(Duration::from_secs(1));
        cfg.tls = self.cluster.client_tls()?;
        for &i in &self.ids {
            if let Some(p) = self.links.get(&(CLIENTS, i)) {
                cfg.dial.insert(self.addr(i), p.addr().to_string());
            }
        }
        Ok(Client::new(cfg)?)
    }

    pub fn set_link(&self, from: u64, to: u64, faults: LinkFaults) {
        if let Some(p) = self.links.get(&(from, to)) {
            p.set(faults);
        }
    }

    /// Node-to-node links that exist (both directions listed).
    pub fn node_links(&self) -> Vec<(u64, u64)> {
        self.links
            .keys()
            .filter(|(f, _)| *f != CLIENTS)
            .copied()
            .collect()
    }

    /// Cuts every node link between different groups, both ways.
    pub fn partition(&self, groups: &[Vec<u64>]) {
        let group_of = |id: u64| groups.iter().position(|g| g.contains(&id));
        for (from, to) in self.node_links() {
            if group_of(from) != group_of(to) {
                self.set_link(
                    from,
                    to,
                    LinkFaults {
                        blocked: true,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Every link back to normal.
    pub fn heal_links(&self) {
        for p in self.links.values() {
            p.set(LinkFaults::default());
        }
    }

    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.paused.remove(&id);
        Ok(self.cluster.kill(id)?)
    }

    /// Starts a node that is not running (no-op for a running one).
    pub fn ensure_running(&mut self, id: u64) -> anyhow::Result<()> {
        if self.cluster.pid(id).is_none() {
            self.cluster.start_node(id)?;
        }
        Ok(())
    }

    /// kill -9, delete the node's data, start it empty as a joiner: a
    /// replaced machine with the same id and address.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        let data = self.cluster.data_dir(id);
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        self.cluster.make_joiner(id)?;
        self.cluster.start_node(id)?;
        Ok(())
    }

    pub fn pause(&mut self, id: u64, paused: bool) {
        self.cluster.pause(id, paused);
        if paused {
            self.paused.insert(id);
        } else {
            self.paused.remove(&id);
        }
    }

    /// Heals links, resumes paused nodes and starts stopped ones.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_links();
        for id in std::mem::take(&mut self.paused) {
            self.cluster.pause(id, false);
        }
        for id in self.ids.clone() {
            self.ensure_running(id)?;
        }
        Ok(())
    }

    /// The node that says it leads, asking each directly.
    pub async fn leader(&self, client: &Client) -> Option<u64> {
        for &id in &self.ids {
            if let Ok(s) = client.node_status(&self.addr(id)).await {
                if s.role == pb::Role::Leader as i32 {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Voter ids as the leader sees them.
    pub async fn voters(&self, client: &Client) -> Option<Vec<u64>> {
        let leader = self.leader(client).await?;
        let s = client.node_status(&self.addr(leader)).await.ok()?;
        Some(s.members.iter().filter(|m| m.voter).map(|m| m.id).collect())
    }

    pub fn stop(&mut self) {
        let _ = self.heal_all();
        let _ = self.cluster.stop_all(Duration::from_secs(5));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.paused) {
            self.cluster.pause(id, false);
        }
    }
}
