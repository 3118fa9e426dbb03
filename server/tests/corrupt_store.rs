//! A node whose files are damaged refuses to start with a clear error,
//! rather than serving wrong data; the rest of the cluster keeps serving.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use streamshield_client::Consistency;

/// Starts a server on `data`, which must exit with an error; its stderr.
fn refused_start(data: &Path) -> String {
    let out = Command::new(SERVER_BIN)
        .args([
            "--insecure",
            "--id",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .expect("run server");
    assert!(!out.status.success(), "must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_node_refuses_to_start_and_cluster_serves_on() {
    let (mut t, _) = TestCluster::with_keys(3, "disk", 8, 0..50, 4).await;

    let victim = 3;
    t.cluster.kill(victim).expect("kill");
    let data = t.cluster.data_dir(victim);

    // 1. The state machine's generation pointer holds garbage.
    let pointer = data.join("sm").join("CURRENT");
    fs::write(&pointer, "not-a-number").expect("corrupt pointer");
    let err = refused_start(&data);
    assert!(
        err.contains("state machine") && err.contains("not a generation"),
        "{err}"
    );
    fs::write(&pointer, "0").expect("restore pointer");

    // 2. The Raft log's RocksDB manifest is truncated.
    let log_dir = data.join("raft");
    let manifest = fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .expect("a manifest");
    fs::write(&manifest, b"").expect("truncate manifest");
    let err = refused_start(&data);
    assert!(err.contains("cannot open the raft log"), "{err}");

    // The other two keep serving reads and writes.
    let rest = t.client_of(&[1, 2]);
    t.wait_for_leader_among(&[1, 2], Duration::from_secs(20))
        .await;
    write_keys(&rest, "disk", "s", 50..80, 4).await;
    let all = rest
        .scan_all("disk", "s", b"user", Consistency::Linearizable)
        .await
        .expect("scan");
    assert_exact(&all, 0..80);
}
