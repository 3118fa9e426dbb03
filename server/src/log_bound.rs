//! Bounds the Raft log in bytes, beside openraft's bound in entries.
//!
//! openraft builds a snapshot every `snapshot_every` entries and keeps
//! `logs_kept_after_snapshot` entries behind it. Entries of task sessions
//! carry hundreds of KiB each (every task's staged batches of a Raft
//! round), so 20,000 of them were gigabytes of log on every node before
//! the first snapshot: a 30 s saturated task-session run left 859 MB of
//! log per node. This task also asks for a snapshot once the entries after
//! the last one hold [`RaftTuning::snapshot_log_bytes`], and purges the
//! entries behind a snapshot down to
//! [`RaftTuning::log_bytes_kept_after_snapshot`] (openraft never purges
//! what a replication to a follower still reads, and a follower that
//! needed purged entries gets the snapshot).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::config::RaftTuning;
use crate::segment_log::SegmentLog;
use crate::types::Raft;

/// How often the log's size is looked at: at 25 MB/s of entries a
/// quarter second overshoots the bound by a few MB.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A snapshot asked for but not reported built by then is asked for
/// again (the request may have come while another was being built).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Runs until the Raft core stops.
pub async fn run(raft: Raft, log: Arc<SegmentLog>, tuning: RaftTuning) {
    let metrics = raft.metrics();
    let mut asked: Option<(u64, Instant)> = None;
    let mut purge_asked = 0;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (snapshot, applied) = {
            let m = metrics.borrow_watched();
            (
                m.snapshot.map_or(0, |l| l.index),
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        let after = log.bytes_after(snapshot);
        metrics::gauge!("streamshield_log_bytes_after_snapshot").set(after as f64);
        let waiting =
            asked.is_some_and(|(at, when)| snapshot < at && when.elapsed() < ASK_AGAIN_AFTER);
        if after >= tuning.snapshot_log_bytes && applied > snapshot && !waiting {
            tracing::info!(
                bytes = after,
                snapshot,
                applied,
                "the log after the last snapshot is over its bound: building a snapshot"
            );
            metrics::counter!("streamshield_snapshots_asked_for_log_bytes_total").increment(1);
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            asked = Some((applied, Instant::now()));
        }
        if let Some(upto) = log.purge_point(snapshot, tuning.log_bytes_kept_after_snapshot) {
            if upto > purge_asked {
                if raft.trigger().purge_log(upto).await.is_err() {
                    return;
                }
                purge_asked = upto;
            }
        }
    }
}
