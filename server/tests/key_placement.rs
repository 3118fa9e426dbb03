//! Prefix-placed tables on a real 3-node cluster: every entry of one
//! placement key lands in that key's group, so a task owning the group
//! writes them all through its session, reads them back with its own
//! uncommitted writes over the committed ones, and anyone reads them with
//! one scan of the group; keys without a placement key are refused, and a
//! table's placement never changes.

mod common;

use common::*;
use streamshield_client::{
    key_group, pb, prefixed_key, Client, ClientError, Consistency, TaskSessionConfig, TaskSpec,
    WriteBatch,
};

const GROUPS: u32 = 8;

fn spec(groups: std::ops::Range<u32>) -> TaskSpec {
    TaskSpec {
        job: "placed".into(),
        task: 0,
        key_groups: groups,
        input_partitions: Vec::new(),
    }
}

/// Job `placed` with its prefix-placed table `entries`.
async fn placed_job(c: &Client, mode: pb::WriteMode) -> pb::JobInfo {
    c.create_job("placed", GROUPS).await.expect("create job");
    c.declare_table("placed", "entries", mode, Some(pb::KeyPlacement::Prefix))
        .await
        .expect("declare")
}

fn entry(user: &[u8], i: usize) -> Vec<u8> {
    prefixed_key(user, format!("entry-{i:03}").as_bytes())
}

async fn scan_group(c: &Client, prefix: &[u8], group: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    c.scan_key_groups(
        "placed",
        "entries",
        prefix,
        Some(group..group + 1),
        Consistency::Linearizable,
    )
    .await
    .expect("scan")
    .into_iter()
    .map(|kv| (kv.key, kv.value))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_keys_entries_are_written_and_read_in_its_key_group() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let job = placed_job(&c, pb::WriteMode::Async).await;
    let table = job.states.iter().find(|s| s.name == "entries").unwrap();
    assert_eq!(table.placement, pb::KeyPlacement::Prefix as i32);

    let user = b"user-42".to_vec();
    let g = u32::from(key_group(&user, GROUPS));
    let keys: Vec<Vec<u8>> = (0..50).map(|i| entry(&user, i)).collect();
    assert!(
        keys.iter().any(|k| u32::from(key_group(k, GROUPS)) != g),
        "placed by their whole key, some entries would be in other groups"
    );
    let (mut s, _) = c
        .acquire(spec(g..g + 1), TaskSessionConfig::default())
        .await
        .expect("acquire");
    for (i, k) in keys.iter().enumerate() {
        s.put("entries", k.clone(), format!("v{i}")).await.unwrap();
    }
    s.commit(Vec::new(), Vec::new()).await.expect("commit");

    // The next epoch: one entry deleted, one changed, uncommitted.
    s.delete("entries", keys[0].clone()).await.unwrap();
    s.put("entries", keys[1].clone(), "changed").await.unwrap();
    let prefix = prefixed_key(&user, b"");
    let own = s
        .scan_prefix("entries", &prefix, g)
        .await
        .expect("own scan");
    assert_eq!(own.len(), 49);
    assert_eq!(own[0], (keys[1].clone(), b"changed".to_vec()));
    // Bounded: the same view while the committed entries fit the limit,
    // none once they do not (50 committed, whatever this epoch deletes).
    for (limit, fits) in [(50, true), (1000, true), (49, false), (1, false)] {
        let within = s
            .scan_prefix_within("entries", &prefix, g, limit)
            .await
            .expect("bounded scan");
        assert_eq!(within.as_ref(), fits.then_some(&own), "limit {limit}");
    }
    let nothing = s
        .scan_prefix_within("entries", &prefixed_key(b"nobody", b""), g, 0)
        .await
        .expect("empty bounded scan");
    assert_eq!(nothing, Some(Vec::new()));
    let committed = scan_group(&c, &prefix, g).await;
    assert_eq!(committed.len(), 50, "others see the committed entries only");
    assert_eq!(
        committed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        keys.iter().collect::<Vec<_>>()
    );
    assert_eq!(committed[1].1, b"v1");
    let kv = c
        .get(
            "placed",
            "entries",
            keys[7].clone(),
            Consistency::Linearizable,
        )
        .await
        .expect("get")
        .expect("committed");
    assert_eq!((kv.value.as_slice(), kv.key_group), (&b"v7"[..], g));
    s.commit(Vec::new(), Vec::new())
        .await
        .expect("second commit");
    assert_eq!(scan_group(&c, &prefix, g).await, own);

    // Another placement key's entries are another group's: the task may
    // not write them, whatever the rest of the key hashes to.
    let other = (0..)
        .map(|i| format!("user-{i}").into_bytes())
        .find(|u| u32::from(key_group(u, GROUPS)) != g)
        .unwrap();
    s.put("entries", entry(&other, 0), "x").await.unwrap();
    let refused = s.commit(Vec::new(), Vec::new()).await;
    assert!(
        matches!(refused, Err(ClientError::InvalidArgument(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_without_a_placement_key_are_refused_and_a_placement_is_fixed() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    placed_job(&c, pb::WriteMode::Sync).await;
    for bad in [&b""[..], b"\x00", b"\x00\x10too short"] {
        let w = WriteBatch::new("placed".to_string()).put("entries", bad.to_vec(), b"v".to_vec());
        let r = c.write(w).await;
        assert!(
            matches!(r, Err(ClientError::InvalidArgument(_))),
            "write {bad:?}: {r:?}"
        );
    }
    // A good key makes the table readable; a bad one read is refused.
    let w = WriteBatch::new("placed".to_string()).put(
        "entries",
        prefixed_key(b"u", b"1"),
        b"v".to_vec(),
    );
    c.write(w).await.expect("a placed write");
    let r = c
        .get(
            "placed",
            "entries",
            b"\x00".to_vec(),
            Consistency::Linearizable,
        )
        .await;
    assert!(
        matches!(r, Err(ClientError::InvalidArgument(_))),
        "get: {r:?}"
    );
    let r = c
        .declare_table(
            "placed",
            "entries",
            pb::WriteMode::Sync,
            Some(pb::KeyPlacement::WholeKey),
        )
        .await;
    assert!(
        matches!(r, Err(ClientError::FailedPrecondition(_))),
        "{r:?}"
    );
    // Its mode may still change, placement unnamed.
    let job = c
        .set_table_mode("placed", "entries", pb::WriteMode::Async)
        .await
        .expect("mode");
    let table = job.states.iter().find(|s| s.name == "entries").unwrap();
    assert_eq!(table.placement, pb::KeyPlacement::Prefix as i32);
}
