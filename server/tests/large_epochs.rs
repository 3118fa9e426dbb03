//! Large epochs on a real 3-node cluster: an epoch of 12 MiB commits
//! at once and is promoted in steps after its commit
//! (`state_machine/apply/promotion.rs`). Once its commit returns, every
//! read sees all of it; another task commits meanwhile; a write to its
//! key groups and the task's next commit go through once it is promoted;
//! and a leader killed during the promotion leaves it to the next one.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{
    pb, Client, Consistency, ScanOptions, TaskSession, TaskSessionConfig, TaskSpec,
};
use streamshield_proto::key_group;

const KEY_GROUPS: u32 = 8;
/// 3,000 values of 4 KiB: about 12 MiB staged, six steps of ~500 writes.
const KEYS: usize = 3_000;

fn spec(task: u32, groups: std::ops::Range<u32>) -> TaskSpec {
    TaskSpec {
        job: "big".into(),
        task,
        key_groups: groups,
        input_partitions: vec![("in".into(), task)],
    }
}

fn offsets(task: u32, o: u64) -> Vec<pb::InputOffset> {
    vec![pb::InputOffset {
        stream: "in".into(),
        partition: task,
        offset: o,
    }]
}

/// Keys of task 0's key groups, 0..4.
fn keys() -> Vec<String> {
    (0..)
        .map(|i| format!("k{i:05}"))
        .filter(|k| key_group(k.as_bytes(), KEY_GROUPS) < 4)
        .take(KEYS)
        .collect()
}

fn big_value(tag: &str) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    v.resize(4096, b'.');
    v
}

/// A cluster with job `big`, task 0's keys and its session.
async fn start() -> (TestCluster, Client, Vec<String>, TaskSession) {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("big", KEY_GROUPS).await.expect("create job");
    let (a, _) = c
        .acquire(spec(0, 0..4), TaskSessionConfig::default())
        .await
        .expect("acquire task 0");
    (t, c, keys(), a)
}

/// Commits epoch 1: every key "old", small values.
async fn commit_small_epoch(s: &mut TaskSession, keys: &[String]) {
    for k in keys {
        s.put("s", k.as_bytes(), b"old".to_vec()).await.unwrap();
    }
    let first = s.commit(offsets(0, 1), Vec::new()).await.expect("commit 1");
    assert!(!first.promoting, "3,000 values of 3 bytes promote inline");
}

/// Commits epoch 2: every key a 4 KiB value tagged "new".
async fn commit_large_epoch(
    s: &mut TaskSession,
    keys: &[String],
) -> streamshield_client::Committed {
    for k in keys {
        s.put("s", k.as_bytes(), big_value("new")).await.unwrap();
    }
    s.commit(offsets(0, 2), Vec::new()).await.expect("commit 2")
}

/// Reads pages of key group 0 (one snapshot each, its first 300 keys:
/// their writes span the first three steps) until one shows epoch 2; every
/// page must be all of epoch 1 or all of epoch 2. How many pages it read.
async fn watch_pages(c: Client) -> usize {
    let new = big_value("new");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pages = 0;
    loop {
        let page = c
            .scan(
                "big",
                "s",
                ScanOptions {
                    prefix: b"k".to_vec(),
                    start_after: Vec::new(),
                    limit: 300,
                    consistency: Consistency::Linearizable,
                    key_groups: Some(0..1),
                },
            )
            .await
            .expect("scan a page");
        pages += 1;
        let fresh = page.kvs.iter().filter(|kv| kv.value == new).count();
        assert!(
            fresh == 0 || fresh == page.kvs.len(),
            "page {pages}: {fresh} of {} keys of epoch 2",
            page.kvs.len()
        );
        if fresh > 0 {
            return pages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "epoch 2 never showed"
        );
    }
}

/// Every key of task 0 read in one scan: all of epoch 2, or a failure.
async fn assert_all_new(c: &Client, keys: &[String], when: &str) {
    let all = c
        .scan_all("big", "s", b"k", Consistency::Linearizable)
        .await
        .expect("scan");
    let new = big_value("new");
    let old = all.iter().filter(|kv| kv.value != new).count();
    assert_eq!(
        (all.len(), old),
        (keys.len(), 0),
        "{when}: every key, none of them from before the commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_epoch_reads_whole_once_committed_and_holds_up_only_its_own_key_groups() {
    let (t, c, keys, mut a) = start().await;
    let (mut b, _) = c
        .acquire(spec(1, 4..8), TaskSessionConfig::default())
        .await
        .expect("acquire task 1");

    commit_small_epoch(&mut a, &keys).await;
    let watcher = tokio::spawn(watch_pages(t.client()));
    let committed = commit_large_epoch(&mut a, &keys).await;
    assert!(committed.promoting, "~12 MiB is promoted in steps");
    // Task 1 commits while task 0's epoch is promoted.
    let theirs = (0..)
        .map(|i| format!("t{i}"))
        .find(|k| key_group(k.as_bytes(), KEY_GROUPS) >= 4)
        .unwrap();
    let other = tokio::spawn(async move {
        b.put("s", theirs.as_bytes(), b"b1".to_vec()).await.unwrap();
        b.commit(offsets(1, 1), Vec::new()).await
    });
    assert_all_new(&c, &keys, "right after the commit").await;
    let other = other.await.unwrap().expect("task 1 commits");
    let pages = watcher.await.unwrap();
    assert!(pages > 1, "the watcher read before the commit too");
    assert!(!other.promoting);

    // A sync write to task 0's key groups and task 0's next commit wait
    // for the promotion (the client retries them) and then apply after it.
    c.put("big", "s", keys[0].as_bytes(), b"sync".to_vec())
        .await
        .expect("sync write");
    a.put("s", keys[1].as_bytes(), b"e3".to_vec())
        .await
        .unwrap();
    let third = a.commit(offsets(0, 3), Vec::new()).await.expect("commit 3");
    assert!(!third.promoting);
    for (k, v) in [(&keys[0], &b"sync"[..]), (&keys[1], &b"e3"[..])] {
        let kv = c
            .get("big", "s", k.as_bytes(), Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.value, v, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_under_way_when_the_leader_dies_is_finished_by_the_next() {
    let (mut t, _, keys, mut a) = start().await;
    commit_small_epoch(&mut a, &keys).await;
    let committed = commit_large_epoch(&mut a, &keys).await;
    assert!(committed.promoting);
    let leader = t.wait_for_leader(Duration::from_secs(60)).await;
    t.cluster.kill(leader).expect("kill the leader");
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    t.wait_for_leader_among(&survivors, Duration::from_secs(60))
        .await;
    let c = t.client_of(&survivors);
    assert_all_new(&c, &keys, "after the leader died").await;
    let list = c
        .list_tasks("big", Consistency::Linearizable)
        .await
        .unwrap();
    let cp = list.tasks[0].checkpoint.as_ref().expect("a checkpoint");
    assert_eq!(cp.epoch, 2);
}
