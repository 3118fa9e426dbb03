//! The Raft log is bounded in bytes as well as in entries: with large
//! entries, every node builds a snapshot once the log after its last one
//! holds `snapshot_log_bytes`, long before `snapshot_every` entries, and
//! purges what lies behind it down to `log_bytes_kept_after_snapshot`.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

const VALUE_BYTES: usize = 32 << 10;
const SNAPSHOT_LOG_BYTES: u64 = 2 << 20;
const KEPT_BYTES: u64 = 512 << 10;
const WRITES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_entries_trigger_snapshots_and_purges_by_bytes() {
    let t = TestCluster::start(
        3,
        &[
            // Never reached by this test's 200 entries.
            "--snapshot-every=1000000",
            &format!("--snapshot-log-bytes={SNAPSHOT_LOG_BYTES}"),
            &format!("--log-bytes-kept-after-snapshot={KEPT_BYTES}"),
        ],
    )
    .await;
    let client = t.client();
    client.create_job("big", 64).await.expect("create job");
    // One writer: each write is an entry of its own, over 32 KiB.
    for i in 0..WRITES {
        client
            .put("big", "s", key(i), vec![i as u8; VALUE_BYTES])
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    // 6.4 MB of entries: several snapshots' worth on every node, and no
    // snapshot without the byte bound (`snapshot_every` is never reached). Every
    // entry holds over 32 KiB, so at most KEPT_BYTES / 32 KiB of them may
    // stay behind a snapshot once it is purged (a tick after it is built).
    let max_kept = KEPT_BYTES / VALUE_BYTES as u64;
    for id in 1..=3 {
        t.wait_status(
            id,
            Duration::from_secs(30),
            "snapshot, and purge down to the kept bytes",
            |s| {
                s.snapshot_index > 0
                    && s.purged_index > 0
                    && s.snapshot_index - s.purged_index <= max_kept
            },
        )
        .await;
    }
    // Nothing written was lost to the purges.
    for i in 0..WRITES {
        let kv = client
            .get("big", "s", key(i), Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("get {i}: {e}"))
            .unwrap_or_else(|| panic!("key {i} is gone"));
        assert_eq!(kv.value, vec![i as u8; VALUE_BYTES], "key {i}");
    }
}
