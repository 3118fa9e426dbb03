//! Running a state node: open the stores, start Raft, serve gRPC until
//! told to stop, then shut down cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use streamshield_proto::v1::{
    admin_server::AdminServer, raft_server::RaftServer, state_server::StateServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::{ConfigError, ServerConfig};
use crate::log_store::LogStore;
use crate::network::{NetworkFactory, MAX_RAFT_MESSAGE_BYTES};
use crate::service::{admin::AdminService, raft::RaftService, state::StateService, NodeContext};
use crate::state_machine::StateMachineStore;
use crate::telemetry;
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
}

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
    let network = NetworkFactory {
        snapshot_chunk_bytes: config.raft.snapshot_chunk_bytes,
        overrides: config.peer_overrides()?.into_iter().collect(),
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

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StateServer<StateService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streamshield_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    // Room for twice the largest batch, so an oversized batch still
    // reaches validation and gets INVALID_ARGUMENT naming the limit, and at
    // least for a coalescing client's WriteMany (it packs up to 4 MiB of
    // requests, more only for a single one); far larger messages are
    // refused by the transport with OUT_OF_RANGE.
    let client_limit = (2 * config.limits.max_batch_bytes).max(MANY_CALL_BYTES) + (1 << 20);

    tracing::info!(id = config.id, listen = %local, advertise = %advertise, data_dir = %data_dir.display(), "serving");
    // The builder's own `tcp_nodelay` only applies to listeners tonic binds
    // itself; on ours Nagle stayed on and delayed-ACK interplay added 40 ms
    // to about 1% of requests (measured with `streamshield-jepsen bench`).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(
            RaftServer::new(RaftService::new(ctx.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        .add_service(
            StateServer::new(StateService::new(ctx.clone()))
                .max_decoding_message_size(client_limit)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(AdminService::new(ctx.clone())))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, {
            let ctx = ctx.clone();
            async move {
                shutdown.await;
                ctx.begin_shutdown();
            }
        })
        .await;

    tracing::info!("shutting down");
    sampler.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    log_store.close();
    served?;
    Ok(())
}
