//! openraft's storage conformance suite against the log store (segments
//! and RocksDB) and the state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use streamshield_server::log_store::LogStore;
use streamshield_server::state_machine::StateMachineStore;
use streamshield_server::types::TypeConfig;
use tempfile::TempDir;

/// `inline_as`: the node id for which entries of other leaders are synced
/// inline (a follower's appends), or `None` for the fsync thread only.
struct RocksBuilder {
    inline_as: Option<u64>,
    /// Log segment size; small ones make the suite cross segments.
    segment_bytes: u64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = LogStore::open_with_segments_of(&dir.path().join("raft"), self.segment_bytes)
            .expect("open log");
        if let Some(id) = self.inline_as {
            log = log.sync_followed_entries_inline(id);
        }
        let sm = StateMachineStore::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_stores_pass_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder {
        inline_as: None,
        segment_bytes: streamshield_server::segment_log::SEGMENT_BYTES,
    })
    .await?;
    Ok(())
}

/// The suite's entries come from leaders other than node 99, so every
/// append that finds the disk idle takes the inline fsync path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_stores_pass_openraft_suite_with_inline_follower_sync(
) -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder {
        inline_as: Some(99),
        segment_bytes: streamshield_server::segment_log::SEGMENT_BYTES,
    })
    .await?;
    Ok(())
}

/// Segments of 1 KiB: a few entries each, so appends, truncations and
/// purges cross segment boundaries all the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_stores_pass_openraft_suite_with_tiny_log_segments(
) -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder {
        inline_as: None,
        segment_bytes: 1 << 10,
    })
    .await?;
    Ok(())
}
