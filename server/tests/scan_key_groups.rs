//! A scan can be limited to a range of key groups, a task's own: it then
//! returns exactly the keys of those groups, in key order across pages,
//! and a range outside the job's key groups is refused.

mod common;

use common::*;
use streamshield_client::{key_group, ClientError, Consistency, ScanOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_of_a_key_group_range_returns_exactly_its_keys() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("groups", 8).await.expect("job");
    write_keys(&c, "groups", "s", 0..200, 4).await;
    let keys = |kvs: Vec<streamshield_client::pb::KeyValue>| -> Vec<Vec<u8>> {
        kvs.into_iter().map(|kv| kv.key).collect()
    };

    let mut want: Vec<Vec<u8>> = (0..200)
        .map(key)
        .filter(|k| (2..5).contains(&u32::from(key_group(k, 8))))
        .collect();
    want.sort();
    assert!(!want.is_empty() && want.len() < 200);

    // Small pages, so that paging goes through the merge of the groups.
    let mut got = Vec::new();
    loop {
        let page = c
            .scan(
                "groups",
                "s",
                ScanOptions {
                    start_after: got.last().cloned().unwrap_or_default(),
                    limit: 7,
                    consistency: Consistency::Linearizable,
                    key_groups: Some(2..5),
                    ..Default::default()
                },
            )
            .await
            .expect("scan");
        got.extend(keys(page.kvs));
        if !page.more {
            break;
        }
    }
    assert_eq!(got, want);

    let all = c
        .scan_key_groups("groups", "s", b"", None, Consistency::Linearizable)
        .await
        .expect("scan all");
    assert_eq!(all.len(), 200);

    // Empty, past the job's 8 groups, backwards.
    for (start, end) in [(5, 5), (6, 9), (4, 2)] {
        let bad = std::ops::Range { start, end };
        let r = c
            .scan_key_groups(
                "groups",
                "s",
                b"",
                Some(bad.clone()),
                Consistency::Linearizable,
            )
            .await;
        assert!(
            matches!(r, Err(ClientError::InvalidArgument(_))),
            "{bad:?}: {r:?}"
        );
    }
}
