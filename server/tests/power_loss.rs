//! Durability under power loss: every node's data directory is on a
//! [`PowerCutMount`], which keeps writes since each file's last fsync in
//! memory. Mid-load the power goes for all three nodes at the same
//! instant; what was not synced is lost (all of it, or a seeded random
//! share of its pages, as writeback might have saved), the nodes restart
//! from what the disk holds, and every acknowledged write must be there.
//! `kill -9` alone cannot show this: the page cache survives it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use streamshield_client::Consistency;
use streamshield_powercut::{PowerCutMount, Writeback};

const JOB: &str = "powercut";

/// What the cluster acknowledged: key to value.
type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// Puts unique keys from `writers` tasks until aborted; returns what was
/// acknowledged.
fn start_writers(
    client: &streamshield_client::Client,
    round: u64,
    writers: u64,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks = (0..writers)
        .map(|w| {
            let (c, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0u64.. {
                    let k = format!("r{round}-w{w}-{i:06}").into_bytes();
                    let v = format!("value {round}/{w}/{i}").into_bytes();
                    if c.put(JOB, "s", k.clone(), v.clone()).await.is_ok() {
                        acked.lock().unwrap().insert(k, v);
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

async fn wait_for_acks(acked: &Acked, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster acknowledged only {} writes",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mount(disk: &Path, mnt: &Path) -> PowerCutMount {
    PowerCutMount::mount(disk, mnt).unwrap_or_else(|e| {
        panic!("this test needs FUSE (/dev/fuse, and root or Debian's fuse3): {e}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_of_every_node_loses_no_acknowledged_write() {
    // Dropped last: the mount must go before its directories.
    let root = tempfile::Builder::new()
        .prefix("streamshield-powercut-")
        .tempdir()
        .unwrap();
    let (disk, mnt) = (root.path().join("disk"), root.path().join("mnt"));
    std::fs::create_dir(&disk).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut fs = Some(mount(&disk, &mnt));

    // Frequent snapshots and purges: the log behind a snapshot is gone, so
    // the snapshot and the state machine must be as durable as the log.
    let mut t = TestCluster::start_with(
        3,
        &["--snapshot-every=300", "--logs-kept-after-snapshot=50"],
        |c| {
            for id in 1..=3 {
                let on_mount = mnt.join(format!("node-{id}"));
                std::fs::create_dir(&on_mount).unwrap();
                std::os::unix::fs::symlink(&on_mount, c.data_dir(id)).unwrap();
            }
        },
    )
    .await;
    t.client().create_job(JOB, 16).await.expect("create job");

    let mut all_acked = BTreeMap::new();
    let seed = 0x5eed_u64;
    for (round, writeback) in [Writeback::Nothing, Writeback::Random { seed, percent: 50 }]
        .into_iter()
        .enumerate()
    {
        let client = t.client();
        let (acked, writers) = start_writers(&client, round as u64, 8);
        // Enough for several snapshots and purges on every node.
        wait_for_acks(&acked, 1_500).await;

        fs.as_ref().unwrap().cut_power(writeback.clone());
        for w in &writers {
            w.abort();
        }
        for id in 1..=3 {
            t.cluster.kill(id).expect("kill");
        }
        fs.take().unwrap().unmount();
        fs = Some(mount(&disk, &mnt));
        for id in 1..=3 {
            t.cluster.start_node(id).expect("restart");
        }
        t.wait_for_leader(Duration::from_secs(90)).await;

        all_acked.extend(std::mem::take(&mut *acked.lock().unwrap()));
        let after = t.client();
        let stored: BTreeMap<Vec<u8>, Vec<u8>> = after
            .scan_all(JOB, "s", b"", Consistency::Linearizable)
            .await
            .expect("scan after the restart")
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let lost: Vec<String> = all_acked
            .iter()
            .filter(|(k, v)| stored.get(*k) != Some(*v))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .take(10)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} ({writeback:?}): {} acknowledged writes, lost or changed: {lost:?}",
            all_acked.len()
        );
        eprintln!(
            "round {round} ({writeback:?}): {} acknowledged writes all read back",
            all_acked.len()
        );
    }
    // The processes go before the mount under them.
    drop(t);
}
