//! The leader's side of large-epoch promotion: it proposes `EpochPromote`
//! steps, one at a time, for every promotion the state machine has under
//! way (`state_machine/apply/promotion.rs`), until each is done. A new
//! leader picks up where the last one stopped: the progress is in the
//! replicated task record, not here.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use streamshield_proto::v1::{self as pb, command_response};

use super::NodeContext;

/// How often a leader looks for promotions it was not woken for (one it
/// inherited, or one whose step failed).
const RECHECK: Duration = Duration::from_millis(200);

/// Runs until the node stops.
pub async fn run(ctx: Arc<NodeContext>) {
    let mut changes = ctx.sm.promotion_changes();
    let mut stopping = ctx.stopping();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if ctx.raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        for job in ctx.sm.promotions().iter() {
            for t in &job.record.tasks {
                let step = pb::EpochPromote {
                    job: job.record.job.clone(),
                    task: t.task,
                    generation: t.generation,
                    epoch: t.epoch,
                };
                if !promote(&ctx, step).await {
                    break;
                }
            }
        }
    }
}

/// Proposes steps until the promotion is done; `false` if a step could not
/// be proposed (leadership moved, no quorum): the next round tries again.
async fn promote(ctx: &NodeContext, step: pb::EpochPromote) -> bool {
    loop {
        let cmd = pb::Command {
            kind: Some(pb::command::Kind::PromoteEpoch(step.clone())),
        };
        match ctx.propose(cmd).await {
            Ok(pb::CommandResponse {
                kind: Some(command_response::Kind::PromotionStep(s)),
            }) => {
                if s.done {
                    tracing::info!(job = %step.job, task = step.task, epoch = step.epoch, "promoted a large epoch");
                    return true;
                }
            }
            Ok(other) => {
                tracing::warn!(?other, "a promotion step answered unexpectedly");
                return false;
            }
            Err(e) => {
                tracing::debug!(error = %e, "promotion step not proposed");
                return false;
            }
        }
    }
}
