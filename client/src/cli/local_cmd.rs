//! `streamshield local ...`: clusters of real server processes on this
//! machine, and the demo that runs on one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::json;
use streamshield_client::local::{self, LocalCluster};
use streamshield_client::{Client, ClientConfig, Consistency};

use super::{emit, Args};

#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// Start a cluster in the background; endpoints go to DIR/endpoints.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long)]
        dir: PathBuf,
        /// Extra flags for every server, e.g. --server-arg=--snapshot-every=1000.
        #[arg(long = "server-arg", allow_hyphen_values = true)]
        server_args: Vec<String>,
        /// Serve TLS with a throwaway CA: DIR/tls/ca.pem, a certificate per
        /// node, and an admin identity DIR/tls/admin.pem, admin-key.pem
        /// (for --cacert, --cert, --key). Without it the nodes run
        /// --insecure.
        #[arg(long)]
        tls: bool,
        /// Start the nodes from a snapshot saved with `snapshot --save`
        /// (a new cluster with the old one's data; ignored by nodes that
        /// already hold data).
        #[arg(long, value_name = "SAVED_DIR")]
        restore_from: Option<PathBuf>,
    },
    /// Stop every node of the cluster in DIR (SIGTERM, then SIGKILL).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start one more (empty) node, ready for `members add`.
    AddNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// kill -9 one node.
    Kill {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Start a stopped node again from its data.
    Start {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Start a 3-node cluster, write, kill the leader, read everything
    /// back, restart the node, stop.
    Demo {
        /// Keys to write before the leader is killed.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Keep the cluster's directory (default: a temp dir, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The server binary, building it first when this CLI runs from a
/// checkout and the binary is not there yet.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = local::find_server_binary() {
        return Ok(p);
    }
    let manifest = option_env!("CARGO_MANIFEST_DIR").ok_or_else(|| {
        anyhow!(
            "streamshield-server not found; set {}",
            local::SERVER_BIN_ENV
        )
    })?;
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("no target directory"))?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    eprintln!("building streamshield-server ...");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "-p",
        "streamshield-server",
        "--bin",
        "streamshield-server",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(Path::new(manifest).join(".."));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building streamshield-server failed");
    }
    local::find_server_binary()
        .ok_or_else(|| anyhow!("streamshield-server still not found after building it"))
}

/// A client of `endpoints` of cluster `c`, with its admin identity when
/// it serves TLS.
fn quick_client(c: &LocalCluster, endpoints: Vec<String>, secs: u64) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.deadline = Duration::from_secs(secs);
    cfg.tls = c.client_tls()?;
    Ok(Client::new(cfg)?)
}

pub async fn run(args: &Args, cmd: &LocalCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LocalCmd::Up {
            nodes,
            dir,
            server_args,
            tls,
            restore_from,
        } => {
            let bin = server_binary()?;
            let mut server_args = server_args.clone();
            if let Some(saved) = restore_from {
                let saved = saved
                    .canonicalize()
                    .with_context(|| format!("no saved snapshot at {}", saved.display()))?;
                server_args.push(format!("--restore-from={}", saved.display()));
            }
            let mut c = LocalCluster::layout(dir, *nodes, &bin, &server_args, true)?;
            if *tls {
                c.enable_tls()?;
            }
            c.start_founders()?;
            c.detach();
            let client = quick_client(&c, c.endpoints(), 30)?;
            let (leader, _) = client
                .wait_for_leader()
                .await
                .with_context(|| format!("no leader elected; see {}/node-*.log", dir.display()))?;
            let eps = c.endpoints().join(",");
            emit(
                args.json,
                json!({"endpoints": eps, "leader_id": leader, "dir": dir}),
                || {
                    format!("cluster up, leader is node {leader}\nendpoints: {eps}\n(also in {}/endpoints)", dir.display())
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::Down { dir } => {
            let mut c = LocalCluster::open(dir, Path::new("streamshield-server"))?;
            c.stop_all(Duration::from_secs(10))?;
            emit(args.json, json!({"stopped": true}), || {
                "cluster stopped".into()
            });
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::AddNode { dir, id } => {
            let mut c = LocalCluster::open(dir, &server_binary()?)?;
            let spec = c.add_node(*id)?;
            emit(args.json, json!({"id": id, "addr": spec.addr}), || {
                format!(
                    "node {id} started at {}; add it with: streamshield members add {id} {}",
                    spec.addr, spec.addr
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::Kill { dir, id } => {
            let mut c = LocalCluster::open(dir, Path::new("streamshield-server"))?;
            c.kill(*id)?;
            emit(args.json, json!({"killed": id}), || {
                format!("node {id} killed")
            });
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::Start { dir, id } => {
            let mut c = LocalCluster::open(dir, &server_binary()?)?;
            c.start_node(*id)?;
            emit(args.json, json!({"started": id}), || {
                format!("node {id} started")
            });
            Ok(ExitCode::SUCCESS)
        }
        LocalCmd::Demo { keys, dir } => demo(*keys, dir.clone()).await,
    }
}

fn step(name: &str, started: Instant) {
    println!(
        "  {:<58} {:>9.1} ms",
        name,
        started.elapsed().as_secs_f64() * 1000.0
    );
}

async fn demo(keys: u64, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("streamshield-demo-{}", std::process::id())),
            true,
        ),
    };
    if temporary && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let bin = server_binary()?;
    println!(
        "StreamShield demo: 3 state nodes on loopback over mutual TLS, data in {}",
        dir.display()
    );
    let t = Instant::now();
    let mut cluster = LocalCluster::layout(&dir, 3, &bin, &[], false)?;
    cluster.enable_tls()?;
    cluster.start_founders()?;
    let client = quick_client(&cluster, cluster.endpoints(), 30)?;
    let (leader, leader_addr) = client.wait_for_leader().await?;
    step(&format!("3 nodes started, node {leader} elected leader"), t);

    let t = Instant::now();
    client.create_job("demo", 128).await?;
    step("job `demo` created with 128 key groups", t);

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < keys {
                c.put(
                    "demo",
                    "counts",
                    format!("user{i:05}"),
                    format!("{}", i * 7),
                )
                .await?;
                i += 16;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    step(&format!("{keys} sync writes acknowledged (16 writers)"), t);

    let t = Instant::now();
    cluster.kill(leader)?;
    step(
        &format!("kill -9 of the leader, node {leader} ({leader_addr})"),
        t,
    );

    let t = Instant::now();
    let survivors: Vec<String> = cluster
        .specs()
        .filter(|s| s.id != leader)
        .map(|s| s.addr.clone())
        .collect();
    let after = quick_client(&cluster, survivors, 30)?;
    let (new_leader, _) = after.wait_for_leader().await?;
    step(&format!("node {new_leader} elected leader"), t);

    let t = Instant::now();
    let all = after
        .scan_all("demo", "counts", b"user", Consistency::Linearizable)
        .await?;
    let mut wrong = 0u64;
    for (i, kv) in all.iter().enumerate() {
        let expect_key = format!("user{i:05}");
        let expect_val = format!("{}", i as u64 * 7);
        if kv.key != expect_key.as_bytes() || kv.value != expect_val.as_bytes() {
            wrong += 1;
        }
    }
    step(
        &format!(
            "linearizable scan read back {} keys, {wrong} wrong",
            all.len()
        ),
        t,
    );
    if all.len() as u64 != keys || wrong != 0 {
        cluster.stop_all(Duration::from_secs(5))?;
        bail!(
            "lost or wrong data: read {} of {keys} keys, {wrong} wrong",
            all.len()
        );
    }

    let t = Instant::now();
    after.put("demo", "counts", "after-failover", "yes").await?;
    step("a write after the failover acknowledged", t);

    let t = Instant::now();
    cluster.start_node(leader)?;
    let restarted = cluster
        .spec(leader)
        .map(|s| s.addr.clone())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = after
            .get_from(&restarted, "demo", "counts", "after-failover")
            .await
        {
            if r.kv.is_some() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("node {leader} did not catch up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    step(
        &format!("node {leader} restarted and caught up (stale read on it)"),
        t,
    );

    let t = Instant::now();
    cluster.stop_all(Duration::from_secs(10))?;
    drop(cluster);
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    step("cluster stopped (SIGTERM)", t);
    println!("demo OK: no acknowledged write lost across a leader kill");
    Ok(ExitCode::SUCCESS)
}
