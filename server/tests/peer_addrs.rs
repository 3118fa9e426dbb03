//! Per-peer dial addresses put a proxy on every node-to-node link, so the
//! lab can cut them: isolating the leader's links makes the other two
//! elect a new leader (Raft §5.2) and keep committing; healing them brings
//! the old leader back as a follower with every write.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use streamshield_client::local::LocalCluster;
use streamshield_client::Consistency;
use streamshield_jepsen::proxy::{LinkFaults, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolating_the_leader_through_link_proxies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster =
        LocalCluster::layout(dir.path(), 3, Path::new(SERVER_BIN), &base_args(), false)
            .expect("layout");
    let addr =
        |c: &LocalCluster, id: u64| -> SocketAddr { c.spec(id).unwrap().addr.parse().unwrap() };
    let planned = cluster.planned_ports();
    let mut links: BTreeMap<(u64, u64), Proxy> = BTreeMap::new();
    for i in 1..=3 {
        let mut dial = Vec::new();
        for j in (1..=3).filter(|j| *j != i) {
            let p = Proxy::start_avoiding(addr(&cluster, j), &planned)
                .await
                .expect("proxy");
            dial.push(format!("{j}={}", p.addr()));
            links.insert((i, j), p);
        }
        cluster.set_node_args(i, vec![format!("--peer-addrs={}", dial.join(","))]);
    }
    for id in 1..=3 {
        cluster.start_node(id).expect("start");
    }
    let t = TestCluster { cluster, dir };
    let client = t.client();
    client.create_job("links", 8).await.expect("create job");
    write_keys(&client, "links", "s", 0..50, 4).await;

    let old = t.wait_for_leader(Duration::from_secs(10)).await;
    let cut = LinkFaults {
        blocked: true,
        ..Default::default()
    };
    for ((i, j), p) in &links {
        if *i == old || *j == old {
            p.set(cut);
        }
    }
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = t
        .wait_for_leader_among(&others, Duration::from_secs(30))
        .await;
    assert_ne!(new, old);
    let majority = t.client_of(&others);
    write_keys(&majority, "links", "s", 50..100, 4).await;

    for p in links.values() {
        p.set(LinkFaults::default());
    }
    let commit = t.status(new).await.expect("leader status").committed_index;
    t.wait_applied(old, commit, Duration::from_secs(30)).await;
    let on_old = t
        .client_of(&[old])
        .scan_all("links", "s", b"user", Consistency::Stale)
        .await
        .expect("stale scan on the old leader");
    assert_exact(&on_old, 0..100);
}
