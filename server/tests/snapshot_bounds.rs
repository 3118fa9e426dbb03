//! An incoming snapshot cannot fill the disk: past `max_snapshot_bytes`,
//! or once the data disk is down to `min_free_disk_bytes`, it is refused
//! with RESOURCE_EXHAUSTED, what it wrote is removed, and the node serves on.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use streamshield_proto::v1::{self as pb, raft_client::RaftClient};
use tonic::Code;

/// A snapshot stream from member `from` with `chunks` chunks of 256 KiB.
fn snapshot(from: u64, chunks: usize) -> Vec<pb::SnapshotChunk> {
    let mut out = vec![pb::SnapshotChunk {
        header: Some(pb::SnapshotHeader {
            vote: Some(pb::Vote {
                leader_id: Some(pb::LeaderId {
                    term: 1,
                    node_id: from,
                }),
                committed: true,
            }),
            meta: Some(pb::SnapshotMeta::default()),
        }),
        ..Default::default()
    }];
    for i in 0..chunks {
        out.push(pb::SnapshotChunk {
            file: "000001.sst".into(),
            offset: (i * (256 << 10)) as u64,
            data: vec![0xab; 256 << 10],
            ..Default::default()
        });
    }
    out.push(pb::SnapshotChunk {
        done: true,
        ..Default::default()
    });
    out
}

/// Entries under the node's snapshot folder that are half-received ones.
fn incoming(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("incoming"))
                .collect()
        })
        .unwrap_or_default()
}

async fn send(addr: &str, chunks: Vec<pb::SnapshotChunk>) -> Result<(), tonic::Status> {
    let ch = plain_channel(addr).await;
    RaftClient::new(ch)
        .max_encoding_message_size(8 << 20)
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_past_its_size_limit_is_refused_and_removed() {
    let t = TestCluster::start(3, &["--max-snapshot-bytes=1048576"]).await;
    let (victim, _) = t.pick_follower().await;
    let before = t.status(victim).await.unwrap();
    let from = if victim == 1 { 2 } else { 1 };
    let err = send(&t.addr(victim), snapshot(from, 8))
        .await
        .expect_err("2 MiB against a 1 MiB limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("1048576"), "{}", err.message());
    assert_eq!(incoming(&t.cluster.data_dir(victim)), Vec::<String>::new());

    let after = t.status(victim).await.unwrap();
    assert_eq!(after.snapshot_index, before.snapshot_index);
    assert_eq!(after.snapshots_installed, before.snapshots_installed);
    let client = t.client();
    client
        .create_job("j", 4)
        .await
        .expect("the cluster still writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_that_would_leave_too_little_free_disk_is_refused() {
    // No disk has an exabyte free: every snapshot would break the reserve.
    let t = TestCluster::start(3, &["--min-free-disk-bytes=1152921504606846976"]).await;
    let (victim, _) = t.pick_follower().await;
    let from = if victim == 1 { 2 } else { 1 };
    let err = send(&t.addr(victim), snapshot(from, 1))
        .await
        .expect_err("refused for the reserve");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("free"), "{}", err.message());
    assert_eq!(incoming(&t.cluster.data_dir(victim)), Vec::<String>::new());
    t.wait_for_settled_leader(Duration::from_secs(10)).await;
}
