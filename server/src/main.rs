//! `streamshield-server`: parses configuration (TOML file, then
//! environment, then flags) and runs one state node until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use streamshield_server::ServerConfig;

// Every update is decoded, staged and promoted on each replica, with small
// allocations at each step; glibc's malloc took 12 % of the node threads'
// CPU in a saturated task-session profile (PERFORMANCE.md, "The
// allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "streamshield-server",
    version,
    about = "StreamShield state node"
)]
struct Flags {
    /// TOML file with any ServerConfig fields; flags and env override it.
    #[arg(long, env = "STREAMSHIELD_CONFIG")]
    config: Option<PathBuf>,
    /// This node's Raft id (never 0).
    #[arg(long, env = "STREAMSHIELD_ID")]
    id: Option<u64>,
    /// Address to listen on, e.g. 127.0.0.1:7070.
    #[arg(long, env = "STREAMSHIELD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address peers and clients use for this node (default: the bound one).
    #[arg(long, env = "STREAMSHIELD_ADVERTISE")]
    advertise: Option<String>,
    #[arg(long, env = "STREAMSHIELD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Founding voters, `1=host:port,2=host:port,...`; empty for a node
    /// that will be added later.
    #[arg(long, env = "STREAMSHIELD_INITIAL_CLUSTER", value_delimiter = ',')]
    initial_cluster: Option<Vec<String>>,
    /// Dial these peers at these addresses instead of the membership's,
    /// `2=host:port,3=host:port` (a proxy per link, in the lab).
    #[arg(long, env = "STREAMSHIELD_PEER_ADDRS", value_delimiter = ',')]
    peer_addrs: Option<Vec<String>>,
    /// Start an empty data directory from a snapshot saved with
    /// `streamshield snapshot --save DIR`, as a member of --initial-cluster.
    #[arg(long, env = "STREAMSHIELD_RESTORE_FROM")]
    restore_from: Option<PathBuf>,
    /// Threads for the node's async work; 0 = one per core.
    #[arg(long, env = "STREAMSHIELD_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// glibc malloc arenas; 0 keeps glibc's limit (8 per core).
    #[arg(long, env = "STREAMSHIELD_MALLOC_ARENAS")]
    malloc_arenas: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "STREAMSHIELD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "STREAMSHIELD_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_ELECTION_TIMEOUT_MIN_MS")]
    election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_ELECTION_TIMEOUT_MAX_MS")]
    election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many applied entries.
    #[arg(long, env = "STREAMSHIELD_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long, env = "STREAMSHIELD_LOGS_KEPT_AFTER_SNAPSHOT")]
    logs_kept_after_snapshot: Option<u64>,
    /// Also build a snapshot once the log after the last one holds this
    /// many bytes.
    #[arg(long, env = "STREAMSHIELD_SNAPSHOT_LOG_BYTES")]
    snapshot_log_bytes: Option<u64>,
    /// Log bytes kept behind a snapshot at most.
    #[arg(long, env = "STREAMSHIELD_LOG_BYTES_KEPT_AFTER_SNAPSHOT")]
    log_bytes_kept_after_snapshot: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    #[arg(long, env = "STREAMSHIELD_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    #[arg(long, env = "STREAMSHIELD_MAX_BATCH_BYTES")]
    max_batch_bytes: Option<usize>,
    #[arg(long, env = "STREAMSHIELD_MAX_REQUESTS_PER_CONNECTION")]
    max_requests_per_connection: Option<usize>,
    #[arg(long, env = "STREAMSHIELD_MAX_REQUESTS_IN_FLIGHT")]
    max_requests_in_flight: Option<usize>,
    #[arg(long, env = "STREAMSHIELD_MAX_SNAPSHOT_BYTES")]
    max_snapshot_bytes: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_DEDUPE_SESSION_TTL_MS")]
    dedupe_session_ttl_ms: Option<u64>,
    #[arg(long, env = "STREAMSHIELD_SESSION_SWEEP_INTERVAL_MS")]
    session_sweep_interval_ms: Option<u64>,
    /// The cluster CA's certificate (PEM).
    #[arg(long, env = "STREAMSHIELD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM): OU=streamshield-node, CN=node-<id>.
    #[arg(long, env = "STREAMSHIELD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "STREAMSHIELD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve and dial in plaintext, without certificates (development on
    /// one machine only).
    #[arg(long, env = "STREAMSHIELD_INSECURE")]
    insecure: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(flags: Flags) -> anyhow::Result<(ServerConfig, bool)> {
    let mut c = match &flags.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            ServerConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    macro_rules! set {
        ($($flag:ident => $($field:ident).+),* $(,)?) => {
            $(if let Some(v) = flags.$flag { c.$($field).+ = v; })*
        };
    }
    set!(
        id => id,
        listen => listen,
        data_dir => data_dir,
        initial_cluster => initial_cluster,
        peer_addrs => peer_addrs,
        worker_threads => worker_threads,
        malloc_arenas => malloc_arenas,
        heartbeat_ms => raft.heartbeat_ms,
        election_timeout_min_ms => raft.election_timeout_min_ms,
        election_timeout_max_ms => raft.election_timeout_max_ms,
        snapshot_every => raft.snapshot_every,
        logs_kept_after_snapshot => raft.logs_kept_after_snapshot,
        snapshot_log_bytes => raft.snapshot_log_bytes,
        log_bytes_kept_after_snapshot => raft.log_bytes_kept_after_snapshot,
        max_key_bytes => limits.max_key_bytes,
        max_value_bytes => limits.max_value_bytes,
        max_batch_bytes => limits.max_batch_bytes,
        max_requests_per_connection => limits.max_requests_per_connection,
        max_requests_in_flight => limits.max_requests_in_flight,
        max_snapshot_bytes => limits.max_snapshot_bytes,
        min_free_disk_bytes => limits.min_free_disk_bytes,
        dedupe_session_ttl_ms => limits.dedupe_session_ttl_ms,
        session_sweep_interval_ms => limits.session_sweep_interval_ms,
    );
    if let Some(dir) = flags.restore_from {
        c.restore_from = Some(dir);
    }
    if flags.tls_ca.is_some() {
        c.tls.ca_file = flags.tls_ca;
    }
    if flags.tls_cert.is_some() {
        c.tls.cert_file = flags.tls_cert;
    }
    if flags.tls_key.is_some() {
        c.tls.key_file = flags.tls_key;
    }
    c.insecure |= flags.insecure;
    if flags.advertise.is_some() {
        c.advertise = flags.advertise;
    }
    if flags.metrics_listen.is_some() {
        c.metrics_listen = flags.metrics_listen;
    }
    c.validate()?;
    Ok((c, flags.print_config))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("signal received, stopping");
}

/// Caps glibc's malloc arenas before any thread exists, so every thread
/// the runtime and RocksDB start shares the capped set. An explicit
/// `MALLOC_ARENA_MAX` (read by glibc itself) wins.
fn limit_malloc_arenas(arenas: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if arenas > 0 && std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable of the allocator; it is
        // called before any other thread of this process exists.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            tracing::warn!(
                arenas,
                "mallopt(M_ARENA_MAX) refused; glibc's default stays"
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_ansi(false)
        .init();
    let (config, print) = match load(Flags::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("streamshield-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    if print {
        println!("{}", toml::to_string_pretty(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    limit_malloc_arenas(config.malloc_arenas);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamshield-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        streamshield_server::run(config, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // A task still blocked on a disk that failed must not keep the
    // process from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("streamshield-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
