//! Prometheus metrics on `/metrics` and the gauges sampled from Raft and
//! RocksDB. Counters and histograms are recorded where things happen; all
//! names start with `streamshield_`.

use openraft::async_runtime::WatchReceiver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use openraft::ServerState;

use crate::service::NodeContext;

/// Serves `/metrics` at `addr` from this process's global recorder.
pub fn install_exporter(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full("streamshield_log_appends_per_fsync".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())
}

/// Samples gauges once a second until the process ends; counts leader
/// changes as it sees them.
pub fn spawn_sampler(
    ctx: Arc<NodeContext>,
    log_db: Arc<rocksdb::DB>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_leader = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let m = ctx.raft.metrics().borrow_watched().clone();
            if m.current_leader != last_leader {
                metrics::counter!("streamshield_leader_changes_total").increment(1);
                last_leader = m.current_leader;
            }
            metrics::gauge!("streamshield_raft_term").set(m.current_term as f64);
            metrics::gauge!("streamshield_is_leader").set(if m.state == ServerState::Leader {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("streamshield_last_log_index")
                .set(m.last_log_index.unwrap_or(0) as f64);
            metrics::gauge!("streamshield_committed_index")
                .set(m.local_committed.as_ref().map_or(0, |l| l.index) as f64);
            metrics::gauge!("streamshield_snapshot_index")
                .set(m.snapshot.as_ref().map_or(0, |l| l.index) as f64);
            // Where a node's memory goes, so that growth (the soak's
            // verdict) can be told apart: the block caches and table
            // readers of both stores against the process's resident size.
            if let Some(rss) = resident_bytes() {
                metrics::gauge!("streamshield_process_resident_bytes").set(rss as f64);
            }
            let sm = ctx.sm.db();
            for (store, db) in [("state_machine", &*sm), ("raft_log", &*log_db)] {
                if let Ok(Some(v)) = db.property_int_value("rocksdb.block-cache-usage") {
                    metrics::gauge!("streamshield_rocksdb_block_cache_bytes", "store" => store)
                        .set(v as f64);
                }
            }
            for (db, cfs) in [
                (&*sm, crate::state_machine::meta::ALL_CFS),
                (&*log_db, &["raft_meta"][..]),
            ] {
                for cf_name in cfs {
                    let Some(cf) = db.cf_handle(cf_name) else {
                        continue;
                    };
                    if let Ok(Some(v)) =
                        db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    {
                        metrics::gauge!("streamshield_rocksdb_sst_bytes", "cf" => cf_name.to_string()).set(v as f64);
                    }
                    if let Ok(Some(v)) =
                        db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    {
                        metrics::gauge!("streamshield_rocksdb_memtable_bytes", "cf" => cf_name.to_string()).set(v as f64);
                    }
                    if let Ok(Some(v)) =
                        db.property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem")
                    {
                        metrics::gauge!("streamshield_rocksdb_table_readers_bytes", "cf" => cf_name.to_string()).set(v as f64);
                    }
                }
            }
        }
    })
}

/// This process's resident memory (`VmRSS`), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
