//! Saving a snapshot and starting a new cluster from it, as `etcdctl
//! snapshot save` and `etcdutl snapshot restore` do: three new nodes on
//! new ports and empty data directories, each started with
//! `--restore-from`, elect a leader and serve exactly what the snapshot
//! held (state with its versions, a job's tasks and their checkpoints,
//! stream records, grants of nothing more), and take new writes.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{pb, Consistency, SaveSnapshotError, TaskSessionConfig, TaskSpec};

fn spec() -> TaskSpec {
    TaskSpec {
        job: "orders".into(),
        task: 0,
        key_groups: 0..4,
        input_partitions: vec![("in".into(), 0)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_restored_from_a_saved_snapshot_serves_what_it_held() {
    let backups = tempfile::tempdir().unwrap();
    let saved_dir = backups.path().join("orders-backup");
    let (index, version) = {
        let old = TestCluster::start(3, &[]).await;
        let c = old.client();
        c.create_job("orders", 4).await.expect("job");
        c.create_stream("orders", "in", 1, 0).await.expect("stream");
        c.create_stream("orders", "out", 1, 0)
            .await
            .expect("stream");
        for i in 0..50u64 {
            c.put("orders", "s", key(i), value(i)).await.expect("put");
        }
        let version = c.put("orders", "s", key(7), "again").await.expect("put");
        let (mut task, _) = c
            .acquire(spec(), TaskSessionConfig::default())
            .await
            .expect("lease");
        task.put("t", "k", "epoch 1").await.unwrap();
        task.emit("out", 0, "", "output of epoch 1").await.unwrap();
        task.commit(
            vec![pb::InputOffset {
                stream: "in".into(),
                partition: 0,
                offset: 41,
            }],
            b"meta".to_vec(),
        )
        .await
        .expect("commit");

        let (_, leader) = c.wait_for_leader().await.unwrap();
        let saved = c.save_snapshot(&leader, &saved_dir).await.expect("saved");
        assert!(saved.index > 50 && saved.files > 0, "{saved:?}");
        let again = c.save_snapshot(&leader, &saved_dir).await.unwrap_err();
        assert!(matches!(again, SaveSnapshotError::Exists { .. }), "{again}");
        // After the save: not in the snapshot.
        c.put("orders", "s", "after", "the save")
            .await
            .expect("put");
        (saved.index, version.versions[0])
    };

    // A new cluster on other ports, each node from the saved files.
    let dir = saved_dir.to_str().unwrap();
    let mut new = TestCluster::start(3, &["--restore-from", dir]).await;
    let c = new.client();
    let kv = c
        .get("orders", "s", key(7), Consistency::Linearizable)
        .await
        .unwrap()
        .expect("key 7");
    assert_eq!(
        (kv.value.as_slice(), kv.version),
        (b"again".as_slice(), version)
    );
    assert!(kv.mod_index <= index);
    for i in (0..50u64).filter(|i| *i != 7) {
        let kv = c
            .get("orders", "s", key(i), Consistency::Linearizable)
            .await
            .unwrap()
            .expect("every key");
        assert_eq!(kv.value, value(i));
    }
    let after = c
        .get("orders", "s", "after", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(after.is_none(), "a write after the save: {after:?}");
    let out = c.read_stream("orders", "out", 0, 0, 0).await.unwrap();
    assert_eq!(out.records.len(), 1);

    // The task resumes from its checkpoint, fencing its old generation.
    let (mut task, checkpoint) = c
        .acquire(spec(), TaskSessionConfig::default())
        .await
        .expect("lease");
    let cp = checkpoint.expect("the checkpoint");
    assert_eq!((cp.epoch, cp.metadata.as_slice()), (1, b"meta".as_slice()));
    assert_eq!(cp.input_offsets[0].offset, 41);
    assert_eq!(task.generation(), 2);
    task.put("t", "k", "epoch 2").await.unwrap();
    task.commit(Vec::new(), Vec::new()).await.expect("commit");

    // Members are the new nodes; every one applied past the snapshot.
    let status = new.leader_status().await.expect("a leader");
    assert!(status.last_applied > index);
    let members = new.cluster.endpoints();
    for id in 1..=3 {
        let s = new
            .wait_applied(id, status.last_applied, Duration::from_secs(30))
            .await;
        assert!(members.contains(&s.addr), "node {id} at {}", s.addr);
        let node = new.client_of(&[id]);
        let kv = node
            .get("orders", "t", "k", Consistency::Stale)
            .await
            .unwrap()
            .expect("the new epoch");
        assert_eq!(kv.value, b"epoch 2", "node {id}");
    }

    // A data directory that already holds a store ignores the flag: a
    // restart keeps what came after the restore.
    c.put("orders", "s", "later", "kept").await.expect("put");
    let leader = new.wait_for_leader(Duration::from_secs(30)).await;
    new.cluster.kill(leader).expect("kill");
    new.cluster.start_node(leader).expect("restart");
    new.wait_for_settled_leader(Duration::from_secs(60)).await;
    let later = c
        .get("orders", "s", "later", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(later.expect("kept across a restart").value, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saving_a_snapshot_is_an_admin_call_and_a_bad_backup_is_refused() {
    let t = TestCluster::start(1, &[]).await;
    let c = t.client();
    let tmp = tempfile::tempdir().unwrap();
    // No snapshot files: a node started from it exits saying so.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(SERVER_BIN)
        .args([
            "--insecure",
            "--id=1",
            "--listen=127.0.0.1:0",
            "--initial-cluster=1=127.0.0.1:1",
        ])
        .arg(format!("--data-dir={}", tmp.path().join("data").display()))
        .arg(format!("--restore-from={}", empty.display()))
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a saved snapshot"), "{stderr}");
    // Without --initial-cluster there is nothing to restore as.
    let out = std::process::Command::new(SERVER_BIN)
        .args(["--insecure", "--listen=127.0.0.1:0"])
        .arg(format!("--restore-from={}", empty.display()))
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs initial_cluster"));
    // A caller that is not an admin cannot take the cluster's data away:
    // over plaintext every caller is the admin, so this is checked in
    // `authorization.rs`; here the node answers an admin at all.
    let saved = c
        .save_snapshot(&t.cluster.endpoints()[0], &tmp.path().join("one"))
        .await
        .expect("saved");
    assert!(saved.files > 0);
    let e = c
        .save_snapshot("127.0.0.1:1", &tmp.path().join("nowhere"))
        .await
        .unwrap_err();
    assert!(!tmp.path().join("nowhere").exists(), "{e}");
}
