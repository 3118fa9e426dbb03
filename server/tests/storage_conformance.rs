//! openraft's storage conformance suite against the RocksDB log store and
//! state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use streamshield_server::log_store::LogStore;
use streamshield_server::state_machine::StateMachineStore;
use streamshield_server::types::TypeConfig;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft")).expect("open log");
        let sm = StateMachineStore::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_stores_pass_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await?;
    Ok(())
}
