//! Running a state node: open the stores, start Raft, serve gRPC until
//! told to stop, then shut down cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use streamshield_proto::v1::{
    admin_server::AdminServer, auth_server::AuthServer, raft_server::RaftServer,
    state_server::StateServer, streams_server::StreamsServer, tasks_server::TasksServer,
};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::config::{ConfigError, ServerConfig};
use crate::liveness;
use crate::log_store::LogStore;
use crate::network::{NetworkFactory, MAX_RAFT_MESSAGE_BYTES};
use crate::restore;
use crate::service::{
    admin::AdminService, auth::AuthService, node_limit::InFlight, raft::RaftService,
    state::StateService, streams::StreamsService, tasks::TasksService, NodeContext,
};
use crate::state_machine::StateMachineStore;
use crate::telemetry;
use crate::tls::{self, NodeTls, TlsError};
use crate::types::Raft;

/// Room a client's call needs whatever `max_batch_bytes` is: a coalescing
/// client packs up to 4 MiB of requests into one WriteMany or GetMany.
const MANY_CALL_BYTES: usize = 8 << 20;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid raft configuration: {0}")]
    RaftConfig(String),
    #[error("cannot open the raft log in {path}: {source}")]
    OpenLog {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the state machine in {path}: {source}")]
    OpenStateMachine {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot serve /metrics: {0}")]
    Metrics(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection descriptor: {0}")]
    Reflection(String),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// The node stopped because it can no longer trust its disk or its
    /// Raft core stopped (see [`crate::liveness`]).
    #[error("the node stopped: {0}")]
    Failed(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
}

/// How long a stopping node waits for its connections to close before it
/// stops anyway (a peer's open replication stream would hold it for ever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn raft_config(c: &ServerConfig) -> Result<openraft::Config, NodeError> {
    let r = &c.raft;
    openraft::Config {
        cluster_name: "streamshield".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        max_payload_entries: r.max_entries_per_append,
        snapshot_max_chunk_size: r.snapshot_chunk_bytes as u64,
        install_snapshot_timeout: 60_000,
        enable_pre_vote: Some(r.pre_vote),
        // A leader that restarts holds an election before it serves again.
        // Restored in place, it would answer read-index reads at the commit
        // index it knew on disk, which lags the real one (the log store
        // writes it lazily) while its state machine may have come back
        // older still (it is not fsynced): a read after the restart could
        // miss a write acknowledged before it. The new term's no-op entry
        // is what tells a leader the true commit index (Raft §8).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::RaftConfig(e.to_string()))
}

/// Reads the node's certificates and keys again on each SIGHUP.
async fn reload_on_sighup(tls: Arc<NodeTls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates are not reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: certificates and keys reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed; serving with the old ones")
            }
        }
    }
}

/// Runs one node on `listener` until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let local = listener.local_addr().map_err(NodeError::Listener)?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    if let Some(from) = &config.restore_from {
        if restore::pristine(&data_dir) {
            restore::restore(from, &data_dir, config.id, &config.initial_peers()?).await?;
        } else {
            tracing::info!(from = %from.display(), "the data directory holds a store: nothing restored");
        }
    }
    let log_path = data_dir.join("raft");
    let log_store = LogStore::open(&log_path)
        .map_err(|source| NodeError::OpenLog {
            path: log_path.display().to_string(),
            source,
        })?
        .sync_followed_entries_inline(config.id);
    let sm = StateMachineStore::open(&data_dir).map_err(|source| NodeError::OpenStateMachine {
        path: data_dir.display().to_string(),
        source,
    })?;
    let sm_shared = sm.shared();
    let tls = match config.insecure {
        true => None,
        false => Some(Arc::new(NodeTls::load(&config.tls)?)),
    };
    let network = NetworkFactory {
        snapshot_chunk_bytes: config.raft.snapshot_chunk_bytes,
        overrides: config.peer_overrides()?.into_iter().collect(),
        tls: tls.clone(),
    };
    let raft: Raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        network,
        log_store.clone(),
        sm,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let peers = config.initial_peers()?;
    if !peers.is_empty() {
        let pristine = !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if pristine {
            let members: BTreeMap<u64, BasicNode> = peers
                .into_iter()
                .map(|(id, addr)| (id, BasicNode::new(addr)))
                .collect();
            // Every founding node proposes the same membership; the ones
            // that find it already there are fine with that.
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("initialized a new cluster"),
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(reason = %e, "cluster already initialized")
                }
                Err(e) => return Err(NodeError::Raft(e.to_string())),
            }
        }
    }

    if let Some(addr) = config.metrics_listen {
        telemetry::install_exporter(addr).map_err(NodeError::Metrics)?;
    }
    let ctx = Arc::new(NodeContext::new(
        config.id,
        raft.clone(),
        sm_shared,
        config.limits.clone(),
    ));
    let sampler = telemetry::spawn_sampler(ctx.clone(), log_store.db().clone());
    let expiry = tokio::spawn(crate::service::session_expiry::run(ctx.clone()));
    let promoter = tokio::spawn(crate::service::promotion::run(ctx.clone()));
    let log_bound = tokio::spawn(crate::log_bound::run(
        raft.clone(),
        log_store.segments().clone(),
        config.raft.clone(),
    ));

    let fault = log_store.fault().clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(liveness::report_health(
        ctx.clone(),
        health,
        fault.clone(),
        Duration::from_millis(config.raft.election_timeout_max_ms),
    ));
    // Served as v1 and as v1alpha: grpcio's reflection client and older
    // grpcurl and GUI clients speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(streamshield_proto::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    // Room for twice the largest batch, so an oversized batch still
    // reaches validation and gets INVALID_ARGUMENT naming the limit, and at
    // least for a coalescing client's WriteMany (it packs up to 4 MiB of
    // requests, more only for a single one); far larger messages are
    // refused by the transport with OUT_OF_RANGE.
    let client_limit = (2 * config.limits.max_batch_bytes).max(MANY_CALL_BYTES) + (1 << 20);

    tracing::info!(id = config.id, listen = %local, advertise = %advertise, data_dir = %data_dir.display(), tls = !config.insecure, "serving");
    let failure: Arc<std::sync::OnceLock<String>> = Arc::default();
    let stop_now = Arc::new(tokio::sync::Notify::new());
    // Who a request comes from is settled before a handler runs: on a TLS
    // node the Raft service takes node certificates only, the client
    // services any certificate of the cluster's CA or a bearer token
    // (`tls.rs`); what that caller may do, each handler asks
    // `service::authz`.
    type Check = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
    let (peer_check, client_check): (Check, Check) = match tls {
        Some(_) => (tls::authenticate_peer, tls::authenticate_client),
        None => (Ok, tls::anyone),
    };
    let in_flight = InFlight::new(config.limits.max_requests_in_flight);
    let router = tonic::transport::Server::builder()
        // A client that vanished without closing its connection (a
        // half-open TCP connection) is noticed and its streams dropped.
        .http2_keepalive_interval(Some(config.keepalive.interval()))
        .http2_keepalive_timeout(Some(config.keepalive.timeout()))
        // One connection cannot queue work without bound: past this many
        // requests in flight on it, the next is refused at once with
        // RESOURCE_EXHAUSTED instead of waiting (tower's load shedding).
        .concurrency_limit_per_connection(config.limits.max_requests_per_connection)
        .load_shed(true)
        .add_service(InterceptedService::new(
            RaftServer::new(RaftService::new(ctx.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            peer_check,
        ))
        .add_service(InterceptedService::new(
            in_flight.wrap(
                StateServer::new(StateService::new(ctx.clone()))
                    .max_decoding_message_size(client_limit)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            ),
            client_check,
        ))
        .add_service(InterceptedService::new(
            in_flight.wrap(
                TasksServer::new(TasksService::new(ctx.clone()))
                    .max_decoding_message_size(client_limit)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            ),
            client_check,
        ))
        .add_service(InterceptedService::new(
            in_flight.wrap(
                StreamsServer::new(StreamsService::new(ctx.clone()))
                    .max_decoding_message_size(client_limit)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            ),
            client_check,
        ))
        .add_service(InterceptedService::new(
            in_flight.wrap(AdminServer::new(AdminService::new(ctx.clone()))),
            client_check,
        ))
        .add_service(InterceptedService::new(
            in_flight.wrap(AuthServer::new(AuthService::new(ctx.clone()))),
            client_check,
        ))
        // Health and reflection answer anyone who completed the handshake:
        // a probe of an orchestrator has no client certificate.
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let stop_signal = {
        let (ctx, failure, stop_now) = (ctx.clone(), failure.clone(), stop_now.clone());
        let watched = liveness::node_failure(raft.clone(), fault.clone());
        async move {
            tokio::select! {
                _ = shutdown => {}
                reason = watched => {
                    tracing::error!(%reason, "this node can no longer serve; stopping");
                    let _ = failure.set(reason);
                }
            }
            ctx.begin_shutdown();
            stop_now.notify_one();
        }
    };
    let grace = async {
        stop_now.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open; stopping without them");
    };
    let reloader = tls.clone().map(|t| tokio::spawn(reload_on_sighup(t)));
    let served = match tls {
        Some(t) => {
            tokio::select! {
                r = router.serve_with_incoming_shutdown(tls::incoming(listener, t), stop_signal) => r,
                _ = grace => Ok(()),
            }
        }
        None => {
            // The builder's own `tcp_nodelay` only applies to listeners
            // tonic binds itself; on ours Nagle stayed on and delayed-ACK
            // interplay added 40 ms to about 1% of requests (measured with
            // `streamshield-jepsen bench`).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::select! {
                r = router.serve_with_incoming_shutdown(incoming, stop_signal) => r,
                _ = grace => Ok(()),
            }
        }
    };
    if let Some(r) = reloader {
        r.abort();
    }

    tracing::info!("shutting down");
    sampler.abort();
    expiry.abort();
    promoter.abort();
    log_bound.abort();
    health_task.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    log_store.close();
    if let Some(reason) = failure.get() {
        return Err(NodeError::Failed(reason.clone()));
    }
    served?;
    Ok(())
}
