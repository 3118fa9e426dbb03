//! The leader's side of dedupe session expiry: now and then it proposes an
//! `ExpireSessions` entry, which every replica applies alike at the
//! entry's leader time (`state_machine::sessions`).

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use streamshield_proto::v1::{self as pb, command_response};

use super::NodeContext;
use crate::state_machine::MAX_EXPIRED_PER_ENTRY;

/// Runs until the node stops: every `session_sweep_interval_ms`, if this
/// node leads, expires idle sessions until a sweep finds fewer than a full
/// entry's worth.
pub async fn run(ctx: Arc<NodeContext>) {
    let every = Duration::from_millis(ctx.limits.session_sweep_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = ctx.stopping();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if ctx.raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        loop {
            let cmd = pb::Command {
                kind: Some(pb::command::Kind::ExpireSessions(pb::ExpireSessions {
                    idle_ms: ctx.limits.dedupe_session_ttl_ms,
                })),
            };
            match ctx.propose(cmd).await {
                Ok(pb::CommandResponse {
                    kind: Some(command_response::Kind::SessionsExpired(n)),
                }) => {
                    if n > 0 {
                        tracing::info!(expired = n, "forgot idle dedupe sessions");
                    }
                    if n < MAX_EXPIRED_PER_ENTRY {
                        break;
                    }
                }
                Ok(other) => {
                    tracing::warn!(?other, "session expiry answered unexpectedly");
                    break;
                }
                // Leadership moved or no quorum: the next tick tries again.
                Err(e) => {
                    tracing::debug!(error = %e, "session expiry not proposed");
                    break;
                }
            }
        }
    }
}
