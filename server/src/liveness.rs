//! Whether a node serves: what its gRPC health service reports, and the
//! failures that end the node.
//!
//! A node reports `SERVING` only while its Raft core runs, it knows a
//! leader, and it is not shutting down: an orchestrator or a load balancer
//! that asks `grpc.health.v1.Health/Check` then sends clients to nodes that
//! can answer them. A node whose Raft core stopped (openraft stops on any
//! storage error) or whose disk failed ([`StorageFault`]) reports
//! `NOT_SERVING` and ends: [`node_failure`] completes, and
//! [`crate::node::run`] returns the failure so that the process exits
//! non-zero and its supervisor restarts it on a disk it can trust.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, RaftMetrics, ServerState};
use tokio::time::Instant;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::service::NodeContext;
use crate::storage_fault::StorageFault;
use crate::types::{Raft, TypeConfig};

/// The services whose health follows the node's (besides the whole
/// server's, the empty name).
pub const SERVICES: &[&str] = &["", "streamshield.v1.State", "streamshield.v1.Admin"];

/// When this node last accepted a message from a leader: a follower
/// whose leader died keeps naming it (with pre-vote, a failed election
/// changes neither its term nor its vote), so the name alone does not say
/// that a leader is there.
pub struct LeaderContact {
    base: Instant,
    /// Milliseconds after `base`; `u64::MAX` before the first contact.
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl LeaderContact {
    pub fn heard(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last contact was, if there was one.
    pub fn since(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// What a node should report. `lease` is how long a leader's last quorum
/// acknowledgement, or a follower's last message from its leader, may be
/// in the past (the longest election timeout: past it, an election is due).
pub fn serving(
    m: &RaftMetrics<TypeConfig>,
    stopping: bool,
    since_leader_contact: Option<Duration>,
    lease: Duration,
) -> bool {
    if stopping || m.running_state.is_err() || m.current_leader.is_none() {
        return false;
    }
    match m.state {
        ServerState::Leader => {
            m.membership_config.membership().voter_ids().count() == 1
                || m.last_quorum_acked
                    .as_ref()
                    .is_some_and(|acked| acked.elapsed() <= lease)
        }
        ServerState::Follower | ServerState::Learner => {
            since_leader_contact.is_some_and(|since| since <= lease)
        }
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// Keeps the health service's status in step with the node until the
/// task is aborted.
pub async fn report_health(
    ctx: Arc<NodeContext>,
    health: HealthReporter,
    fault: StorageFault,
    lease: Duration,
) {
    let mut metrics = ctx.raft.metrics();
    let mut stopping = ctx.stopping();
    // Leases run out without any metric changing: look again each tick.
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        let now = serving(
            &metrics.borrow_and_update(),
            *stopping.borrow_and_update(),
            ctx.leader_contact.since(),
            lease,
        ) && fault.failed().is_none();
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in SERVICES {
                health.set_service_status(*name, status).await;
            }
            tracing::info!(serving = now, "health");
            last = Some(now);
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { break },
            r = stopping.changed() => if r.is_err() { break },
            _ = tick.tick() => {},
        }
    }
    for name in SERVICES {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
}

const TICK: Duration = Duration::from_millis(100);

/// Completes with the reason when the node can no longer serve: its Raft
/// core stopped, or its disk failed.
pub async fn node_failure(raft: Raft, fault: StorageFault) -> String {
    let mut metrics = raft.metrics();
    let raft_stopped = async {
        loop {
            if let Err(f) = &metrics.borrow_and_update().running_state {
                return format!("raft stopped: {f}");
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    };
    tokio::select! {
        r = raft_stopped => r,
        f = fault.wait() => format!("storage failure: {f}"),
    }
}
