//! Local clusters of real `streamshield-server` processes on loopback, for
//! the CLI's `local` commands, the demo and integration tests.
//!
//! A cluster lives in one directory: `node-<id>/` (data), `node-<id>.log`,
//! `node-<id>.pid`, `endpoints` (comma-separated `host:port`) and
//! `nodes` (one `id addr metrics_addr` line per node, so a restart reuses
//! the addresses that the Raft membership recorded).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs;
use crate::ClientTls;

/// Environment variable naming the server binary to run.
pub const SERVER_BIN_ENV: &str = "STREAMSHIELD_SERVER_BIN";

/// One node's fixed identity in a local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: u64,
    pub addr: String,
    pub metrics_addr: String,
}

/// A running (or stopped) local cluster.
pub struct LocalCluster {
    dir: PathBuf,
    server_bin: PathBuf,
    specs: BTreeMap<u64, NodeSpec>,
    /// Processes this handle started; killed when it is dropped unless
    /// detached.
    children: BTreeMap<u64, Child>,
    founders: Vec<u64>,
    extra_args: Vec<String>,
    node_args: BTreeMap<u64, Vec<String>>,
    /// A program (and its flags) that runs the server binary of one node,
    /// as `fiu-run -x` does to inject faults into its system calls.
    node_wrappers: BTreeMap<u64, Vec<String>>,
    detached: bool,
}

/// A free loopback port, picked at random below the kernel's ephemeral
/// range and checked by binding it. Port 0 would hand out an ephemeral
/// port, the range every outgoing connection takes its own port from: a
/// client or peer connecting between the pick and the server's bind could
/// take it ("Address already in use"), which happened to tests running
/// side by side. Below the range only another pick can collide.
pub fn free_port() -> io::Result<u16> {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_from.saturating_sub(1000));
    if ephemeral_from > low + 100 {
        for _ in 0..200 {
            let port = rand::random_range(low..ephemeral_from);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() && ports::reserve(port) {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Gives back a port [`free_port`] handed out to this process, once what
/// used it has stopped (a [`LocalCluster`] gives back its own).
pub fn release_port(port: u16) {
    ports::release(port);
}

/// Ports [`free_port`] handed out, reserved across the processes of the
/// machine for as long as the process that took them lives. A port is
/// free between its pick and its node's bind, and again while its node is
/// down between a kill and a restart; another test's pick in that window
/// took it once, and its node then failed to start ("Address already in
/// use" for `/metrics`). A reservation is a file named after the port
/// holding the taker's pid; one whose taker is gone is taken over.
mod ports {
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        std::env::temp_dir().join("streamshield-ports")
    }

    /// Takes `port` for this process; false if a live process holds it.
    /// Without a usable reservation folder the bind check stands alone.
    pub fn reserve(port: u16) -> bool {
        let dir = dir();
        if fs::create_dir_all(&dir).is_err() {
            return true;
        }
        let path = dir.join(port.to_string());
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                    let just_made = || {
                        fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_none_or(|age| age < std::time::Duration::from_secs(1))
                    };
                    match holder {
                        Some(pid) if super::pid_alive(pid) => return false,
                        // Its taker has not written its pid yet.
                        None if just_made() => return false,
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(_) => return true,
            }
        }
        false
    }

    /// Gives `port` back if this process holds it.
    pub fn release(port: u16) {
        let path = dir().join(port.to_string());
        let ours = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = fs::remove_file(&path);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{dir, release, reserve};

        // Ports below 10,000: `free_port` never picks them.
        #[test]
        fn a_port_is_held_while_its_taker_lives_and_a_dead_takers_is_taken_over() {
            assert!(reserve(9));
            assert!(!reserve(9), "held by this live process");
            release(9);
            assert!(reserve(9), "given back");
            release(9);

            std::fs::write(dir().join("7"), i32::MAX.to_string()).unwrap();
            assert!(reserve(7), "no process has pid i32::MAX");
            release(7);
            assert!(!dir().join("7").exists());
        }
    }
}

/// Where the server binary is: `$STREAMSHIELD_SERVER_BIN`, else next to
/// the running executable (or its parent, for test binaries in `deps/`).
pub fn find_server_binary() -> Option<PathBuf> {
    find_binary("streamshield-server", SERVER_BIN_ENV)
}

/// Where one of the workspace's binaries is: `$env`, else next to the
/// running executable (or its parent, for test binaries in `deps/`).
pub fn find_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Whether `pid` is a running process. A zombie (exited, not yet reaped
/// by whoever inherited it) counts as gone.
pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks for existence without touching the process.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

fn signal(pid: i32, sig: i32) {
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The nodes of a local cluster share this machine: each gets an equal
/// share of its cores, at least one thread (`worker_threads` in the server
/// configuration says why).
pub fn worker_threads_each(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

impl LocalCluster {
    /// Lays out a new cluster of `n` founding voters in `dir`, or loads the
    /// layout already there, and starts every node.
    pub fn start(
        dir: &Path,
        n: u64,
        server_bin: &Path,
        extra_args: &[String],
        detached: bool,
    ) -> io::Result<Self> {
        let mut c = Self::layout(dir, n, server_bin, extra_args, detached)?;
        c.start_founders()?;
        Ok(c)
    }

    /// Like [`start`](Self::start) but starts nothing, so that callers can
    /// read the addresses first and give nodes flags of their own.
    pub fn layout(
        dir: &Path,
        n: u64,
        server_bin: &Path,
        extra_args: &[String],
        detached: bool,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut c = Self {
            dir: dir.to_path_buf(),
            server_bin: server_bin.to_path_buf(),
            specs: BTreeMap::new(),
            children: BTreeMap::new(),
            founders: Vec::new(),
            extra_args: extra_args.to_vec(),
            node_args: BTreeMap::new(),
            node_wrappers: BTreeMap::new(),
            detached,
        };
        let layout = dir.join("nodes");
        if layout.exists() {
            c.load_layout()?;
        } else {
            for id in 1..=n {
                c.specs.insert(id, c.new_spec(id)?);
            }
            c.founders = (1..=n).collect();
            c.save_layout()?;
        }
        Ok(c)
    }

    /// Starts every founding node.
    pub fn start_founders(&mut self) -> io::Result<()> {
        for id in self.founders.clone() {
            self.start_node(id)?;
        }
        Ok(())
    }

    /// Starts `id` from now on as a node that joins an existing cluster
    /// (no `--initial-cluster`), e.g. after its data was wiped.
    pub fn make_joiner(&mut self, id: u64) -> io::Result<()> {
        self.founders.retain(|f| *f != id);
        self.save_layout()
    }

    /// Flags for one node only, used from its next start on.
    pub fn set_node_args(&mut self, id: u64, args: Vec<String>) {
        self.node_args.insert(id, args);
    }

    /// Runs node `id` from its next start on as `wrapper... server-binary
    /// flags...`; the wrapper must exec the binary (so the pid is the node's).
    pub fn set_node_wrapper(&mut self, id: u64, wrapper: Vec<String>) {
        self.node_wrappers.insert(id, wrapper);
    }

    /// How node `id` ended, if this handle started it and it has exited.
    pub fn exit_status(&mut self, id: u64) -> io::Result<Option<std::process::ExitStatus>> {
        match self.children.get_mut(&id) {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Makes this a TLS cluster: a throwaway CA in `DIR/tls` (kept if
    /// there), a certificate per node, and an admin client identity
    /// (`DIR/tls/admin.pem`, `admin-key.pem`). Nodes started from now on
    /// serve TLS; without it they run `--insecure`.
    pub fn enable_tls(&mut self) -> io::Result<()> {
        let dir = self.tls_dir();
        let ca = if dir.join("ca-key.pem").exists() {
            certs::LocalCa::load(&dir)?
        } else {
            let ca = certs::LocalCa::generate()?;
            ca.write(&dir)?;
            ca
        };
        for id in self.specs.keys() {
            ca.issue_node(*id, certs::LOCAL_HOSTS)?
                .write(&dir, &format!("node-{id}"))?;
        }
        ca.issue_admin("admin")?.write(&dir, "admin")?;
        Ok(())
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Whether the cluster in this folder serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls_dir().join("ca.pem").exists()
    }

    /// The admin identity of a TLS cluster, for clients.
    pub fn client_tls(&self) -> io::Result<Option<ClientTls>> {
        if !self.is_tls() {
            return Ok(None);
        }
        let dir = self.tls_dir();
        ClientTls::from_files(
            &dir.join("ca.pem"),
            Some((&dir.join("admin.pem"), &dir.join("admin-key.pem"))),
        )
        .map(Some)
    }

    /// Flags that give node `id` its certificates, or `--insecure`.
    fn security_args(&self, id: u64) -> Vec<String> {
        if !self.is_tls() {
            return vec!["--insecure".into()];
        }
        let dir = self.tls_dir();
        let path = |name: String| dir.join(name).display().to_string();
        vec![
            format!("--tls-ca={}", path("ca.pem".into())),
            format!("--tls-cert={}", path(format!("node-{id}.pem"))),
            format!("--tls-key={}", path(format!("node-{id}-key.pem"))),
        ]
    }

    /// Attaches to a cluster that `local up` started earlier.
    pub fn open(dir: &Path, server_bin: &Path) -> io::Result<Self> {
        let mut c = Self {
            dir: dir.to_path_buf(),
            server_bin: server_bin.to_path_buf(),
            specs: BTreeMap::new(),
            children: BTreeMap::new(),
            founders: Vec::new(),
            extra_args: Vec::new(),
            node_args: BTreeMap::new(),
            node_wrappers: BTreeMap::new(),
            detached: true,
        };
        c.load_layout()?;
        Ok(c)
    }

    fn new_spec(&self, id: u64) -> io::Result<NodeSpec> {
        Ok(NodeSpec {
            id,
            addr: format!("127.0.0.1:{}", free_port()?),
            metrics_addr: format!("127.0.0.1:{}", free_port()?),
        })
    }

    fn load_layout(&mut self) -> io::Result<()> {
        let text = fs::read_to_string(self.dir.join("nodes"))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad line in nodes file: {line:?}"),
                )
            };
            if parts.len() != 4 {
                return Err(bad());
            }
            let id: u64 = parts[0].parse().map_err(|_| bad())?;
            self.specs.insert(
                id,
                NodeSpec {
                    id,
                    addr: parts[1].to_string(),
                    metrics_addr: parts[2].to_string(),
                },
            );
            if parts[3] == "founder" {
                self.founders.push(id);
            }
        }
        Ok(())
    }

    fn save_layout(&self) -> io::Result<()> {
        let mut text = String::new();
        for s in self.specs.values() {
            let role = if self.founders.contains(&s.id) {
                "founder"
            } else {
                "joined"
            };
            text.push_str(&format!("{} {} {} {role}\n", s.id, s.addr, s.metrics_addr));
        }
        fs::write(self.dir.join("nodes"), text)?;
        let eps: Vec<&str> = self.specs.values().map(|s| s.addr.as_str()).collect();
        fs::write(self.dir.join("endpoints"), eps.join(",") + "\n")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn specs(&self) -> impl Iterator<Item = &NodeSpec> {
        self.specs.values()
    }

    pub fn spec(&self, id: u64) -> Option<&NodeSpec> {
        self.specs.get(&id)
    }

    /// Every port the layout gave its nodes (listen and metrics). They are
    /// free but unbound until each node starts, so anything else binding
    /// loopback ports meanwhile must keep off them.
    pub fn planned_ports(&self) -> Vec<u16> {
        self.specs
            .values()
            .flat_map(|s| [s.addr.as_str(), s.metrics_addr.as_str()])
            .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.specs.values().map(|s| s.addr.clone()).collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn pid_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pid"))
    }

    /// The pid recorded for a node, if that process is alive.
    pub fn pid(&self, id: u64) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_path(id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// Starts node `id` (already laid out) from its data directory.
    pub fn start_node(&mut self, id: u64) -> io::Result<()> {
        let spec = self
            .specs
            .get(&id)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no node {id}")))?;
        if let Some(pid) = self.pid(id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node {id} is already running as pid {pid}"),
            ));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut cmd = match self.node_wrappers.get(&id).and_then(|w| w.split_first()) {
            Some((program, flags)) => {
                let mut cmd = Command::new(program);
                cmd.args(flags).arg(&self.server_bin);
                cmd
            }
            None => Command::new(&self.server_bin),
        };
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&spec.addr)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--metrics-listen")
            .arg(&spec.metrics_addr);
        let own_threads = self
            .extra_args
            .iter()
            .chain(self.node_args.get(&id).into_iter().flatten())
            .any(|a| a.starts_with("--worker-threads"));
        if !own_threads {
            cmd.arg("--worker-threads")
                .arg(worker_threads_each(self.specs.len()).to_string());
        }
        let chosen = self
            .extra_args
            .iter()
            .chain(self.node_args.get(&id).into_iter().flatten())
            .any(|a| a.starts_with("--tls-") || a == "--insecure");
        if !chosen {
            cmd.args(self.security_args(id));
        }
        cmd.args(&self.extra_args)
            .args(self.node_args.get(&id).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.founders.contains(&id) {
            let founders: Vec<String> = self
                .founders
                .iter()
                .filter_map(|f| self.specs.get(f))
                .map(|s| format!("{}={}", s.id, s.addr))
                .collect();
            cmd.arg("--initial-cluster").arg(founders.join(","));
        }
        if self.detached {
            use std::os::unix::process::CommandExt;
            // Its own session: the node outlives the CLI that started it
            // and is not hit by the terminal's Ctrl-C.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        if let Some(mut exited) = self.children.remove(&id) {
            let _ = exited.kill();
            let _ = exited.wait();
        }
        // A cluster of a test, bench or lab run dies with that process,
        // even when it is killed before its `Drop` runs.
        let spawned = if self.detached {
            cmd.spawn()
        } else {
            crate::tied_child::spawn(cmd)
        };
        let child = spawned.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", self.server_bin.display()),
            )
        })?;
        fs::write(self.pid_path(id), format!("{}\n", child.id()))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Adds a node that joins later (not a founding voter), and starts it.
    pub fn add_node(&mut self, id: u64) -> io::Result<NodeSpec> {
        if self.specs.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node {id} exists"),
            ));
        }
        let spec = self.new_spec(id)?;
        self.specs.insert(id, spec.clone());
        self.save_layout()?;
        if self.is_tls() {
            certs::LocalCa::load(&self.tls_dir())?
                .issue_node(id, certs::LOCAL_HOSTS)?
                .write(&self.tls_dir(), &format!("node-{id}"))?;
        }
        self.start_node(id)?;
        Ok(spec)
    }

    /// `kill -9` of one node; returns once the process is gone.
    pub fn kill(&mut self, id: u64) -> io::Result<()> {
        self.stop_node(id, libc::SIGKILL, Duration::from_secs(10))
    }

    /// SIGTERM, then SIGKILL if the node has not exited within `grace`.
    pub fn terminate(&mut self, id: u64, grace: Duration) -> io::Result<()> {
        self.stop_node(id, libc::SIGTERM, grace)
    }

    /// SIGSTOP / SIGCONT of one node.
    pub fn pause(&self, id: u64, paused: bool) {
        if let Some(pid) = self.pid(id) {
            signal(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    fn stop_node(&mut self, id: u64, sig: i32, grace: Duration) -> io::Result<()> {
        let Some(pid) = self.pid(id) else {
            // Already exited: reap it if it is ours, so no zombie lingers.
            if let Some(mut child) = self.children.remove(&id) {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Ok(());
        };
        signal(pid, sig);
        let deadline = Instant::now() + grace;
        loop {
            // Our own child must be reaped to stop being "alive".
            if let Some(child) = self.children.get_mut(&id) {
                if child.try_wait()?.is_some() {
                    break;
                }
            } else if !pid_alive(pid) {
                break;
            }
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
                if let Some(child) = self.children.get_mut(&id) {
                    child.wait()?;
                    break;
                }
                if Instant::now() >= deadline + Duration::from_secs(5) {
                    return Err(io::Error::other(format!(
                        "node {id} (pid {pid}) survives SIGKILL"
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.children.remove(&id);
        let _ = fs::remove_file(self.pid_path(id));
        Ok(())
    }

    /// Stops every node: SIGTERM, and SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) -> io::Result<()> {
        let ids: Vec<u64> = self.specs.keys().copied().collect();
        for id in &ids {
            if let Some(pid) = self.pid(*id) {
                signal(pid, libc::SIGTERM);
            }
        }
        for id in ids {
            self.terminate(id, grace)?;
        }
        Ok(())
    }

    /// Leaves the processes running when this handle is dropped. Nodes
    /// are started to outlive this process only if the cluster was laid
    /// out detached: the others still die with it.
    pub fn detach(&mut self) {
        self.detached = true;
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.detached {
            for (id, child) in self.children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_file(self.dir.join(format!("node-{id}.pid")));
            }
        }
        // A detached cluster's running nodes hold their ports themselves,
        // and no process would be left to give them back later.
        for port in self.planned_ports() {
            ports::release(port);
        }
    }
}
