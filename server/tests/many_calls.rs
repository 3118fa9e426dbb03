//! WriteMany and GetMany: each item is answered exactly as its unary call
//! would have been, a bad item fails alone, and the client really sends
//! concurrent calls together.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{Client, ClientConfig, Consistency};
use streamshield_proto::v1::{self as pb, get_outcome, state_client::StateClient, write_outcome};
use tonic::transport::Channel;
use tonic::Code;

fn put(key: &[u8], value: &[u8]) -> pb::Op {
    pb::Op {
        state: "s".into(),
        key: key.to_vec(),
        kind: Some(pb::op::Kind::Put(pb::Put {
            value: value.to_vec(),
        })),
    }
}

fn write(ops: Vec<pb::Op>, client_id: u64, seq: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        job: "j".into(),
        ops,
        client_id,
        seq,
        ..Default::default()
    }
}

fn get(key: &[u8], consistency: pb::Consistency) -> pb::GetRequest {
    pb::GetRequest {
        job: "j".into(),
        state: "s".into(),
        key: key.to_vec(),
        consistency: consistency as i32,
        ..Default::default()
    }
}

async fn state_client(addr: &str) -> StateClient<Channel> {
    let ch = plain_channel(addr).await;
    StateClient::new(ch)
}

fn ok_write(o: &pb::WriteOutcome) -> &pb::WriteResponse {
    match &o.result {
        Some(write_outcome::Result::Ok(w)) => w,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn write_error(o: &pb::WriteOutcome) -> &pb::ItemError {
    match &o.result {
        Some(write_outcome::Result::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn get_error(o: &pb::GetOutcome) -> &pb::ItemError {
    match &o.result {
        Some(get_outcome::Result::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn ok_get(o: &pb::GetOutcome) -> &pb::GetResponse {
    match &o.result {
        Some(get_outcome::Result::Ok(g)) => g,
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_item_is_answered_as_its_own_call() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    client.put("j", "s", "taken", "x").await.expect("put");
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let mut state = state_client(&t.addr(leader)).await;
    let id = register_client(&t.addr(leader)).await;

    let cas_on_taken = pb::WriteRequest {
        conditions: vec![pb::Condition {
            state: "s".into(),
            key: b"taken".to_vec(),
            test: Some(pb::condition::Test::Absent(true)),
        }],
        ..write(vec![put(b"taken", b"y")], id, 3)
    };
    let r = state
        .write_many(pb::WriteManyRequest {
            writes: vec![
                write(vec![put(b"a", b"1")], id, 1),
                // An empty key: INVALID_ARGUMENT for this item only.
                write(vec![put(b"", b"1")], id, 2),
                cas_on_taken,
                // The same (client_id, seq) as the first: applied once,
                // answered with the first one's answer.
                write(vec![put(b"a", b"1")], id, 1),
                write(vec![put(b"b", b"2")], id, 4),
            ],
        })
        .await
        .expect("write many")
        .into_inner();
    assert_eq!(r.outcomes.len(), 5);
    let first = ok_write(&r.outcomes[0]);
    assert!(first.succeeded);
    assert_eq!(first.versions, vec![1]);
    let bad = write_error(&r.outcomes[1]);
    assert_eq!(bad.code, Code::InvalidArgument as i32, "{}", bad.message);
    assert!(bad.message.contains("key"), "{}", bad.message);
    let cas = ok_write(&r.outcomes[2]);
    assert!(!cas.succeeded);
    assert_eq!(cas.failed_condition, Some(0));
    assert_eq!(
        ok_write(&r.outcomes[3]),
        first,
        "a retry gets the recorded answer"
    );
    assert_eq!(ok_write(&r.outcomes[4]).versions, vec![1]);

    for (key, value) in [("a", "1"), ("b", "2")] {
        let kv = client
            .get("j", "s", key, Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((kv.value.as_slice(), kv.version), (value.as_bytes(), 1));
    }
    let taken = client
        .get("j", "s", "taken", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.value.as_slice(), taken.version), (&b"x"[..], 1));

    let r = state
        .get_many(pb::GetManyRequest {
            gets: vec![
                get(b"a", pb::Consistency::Linearizable),
                get(b"missing", pb::Consistency::Stale),
                pb::GetRequest {
                    job: "nope".into(),
                    ..get(b"a", pb::Consistency::Linearizable)
                },
                get(b"taken", pb::Consistency::Stale),
            ],
        })
        .await
        .expect("get many")
        .into_inner();
    assert_eq!(r.outcomes.len(), 4);
    assert_eq!(ok_get(&r.outcomes[0]).kv.as_ref().unwrap().value, b"1");
    assert!(ok_get(&r.outcomes[0]).applied_index >= first.index);
    assert_eq!(ok_get(&r.outcomes[1]).kv, None);
    assert_eq!(get_error(&r.outcomes[2]).code, Code::NotFound as i32);
    assert_eq!(ok_get(&r.outcomes[3]).kv.as_ref().unwrap().value, b"x");

    // Empty and oversized calls are refused whole.
    for (what, n) in [("empty", 0), ("oversized", 1025)] {
        let writes = (0..n).map(|i| write(vec![put(b"z", b"1")], 0, i)).collect();
        let s = state
            .write_many(pb::WriteManyRequest { writes })
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
        let gets = (0..n).map(|_| get(b"z", pb::Consistency::Stale)).collect();
        let s = state
            .get_many(pb::GetManyRequest { gets })
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
    }
    let z = client.get("j", "s", "z", Consistency::Linearizable).await;
    assert_eq!(z.unwrap(), None, "a refused call wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_answers_stale_items_and_points_the_rest_to_the_leader() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let w = client.put("j", "s", "k", "v").await.expect("put");
    let (follower, _) = t.pick_follower().await;
    t.wait_applied(follower, w.index, Duration::from_secs(30))
        .await;
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let mut state = state_client(&t.addr(follower)).await;

    let r = state
        .get_many(pb::GetManyRequest {
            gets: vec![
                get(b"k", pb::Consistency::Stale),
                get(b"k", pb::Consistency::Linearizable),
            ],
        })
        .await
        .expect("get many")
        .into_inner();
    assert_eq!(ok_get(&r.outcomes[0]).kv.as_ref().unwrap().value, b"v");
    assert_eq!(ok_get(&r.outcomes[0]).answered_by, follower);
    let e = get_error(&r.outcomes[1]);
    assert_eq!(e.code, Code::Unavailable as i32);
    assert_eq!(hinted_leader(&e.details), t.addr(leader));

    let r = state
        .write_many(pb::WriteManyRequest {
            writes: vec![write(vec![put(b"k", b"w")], 0, 0)],
        })
        .await
        .expect("write many")
        .into_inner();
    let e = write_error(&r.outcomes[0]);
    assert_eq!(e.code, Code::Unavailable as i32);
    assert_eq!(hinted_leader(&e.details), t.addr(leader));
}

fn hinted_leader(details: &[u8]) -> String {
    use prost::Message;
    match pb::ErrorDetail::decode(details).expect("error detail").kind {
        Some(pb::error_detail::Kind::NotLeader(n)) => n.leader_addr,
        other => panic!("no leader hint: {other:?}"),
    }
}

/// `streamshield_items_per_call{kind}`: (calls, items) from a node's
/// `/metrics`.
fn items_per_call(metrics_addr: &str, kind: &str) -> (u64, u64) {
    let series = |name: &str| format!("{name}{{kind=\"{kind}\"}}");
    (
        metric_value(metrics_addr, &series("streamshield_items_per_call_count")),
        metric_value(metrics_addr, &series("streamshield_items_per_call_sum")),
    )
}

async fn concurrent_increments(client: &Client, key: &str, n: u64) -> Vec<u64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = client.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                c.put("j", "s", key, format!("v{i}"))
                    .await
                    .expect("put")
                    .versions[0]
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_sends_concurrent_calls_together_unless_told_not_to() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let metrics = t.leader_metrics_addr().await;
    let before = items_per_call(&metrics, "write");

    // 200 puts of one key at once: every one is applied exactly once, so
    // the versions are exactly 1..=200, and they went out in fewer calls.
    let versions = concurrent_increments(&client, "hot", 200).await;
    assert_eq!(versions, (1..=200).collect::<Vec<_>>());
    let after = items_per_call(&metrics, "write");
    let (calls, items) = (after.0 - before.0, after.1 - before.1);
    assert!(calls > 0, "no WriteMany call reached the leader");
    assert!(items > calls, "{items} writes in {calls} WriteMany calls");

    let before_gets = items_per_call(&metrics, "get");
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get("j", "s", "hot", Consistency::Linearizable).await })
        })
        .collect();
    for r in reads {
        let kv = r.await.unwrap().expect("get").expect("present");
        assert_eq!(kv.version, 200);
    }
    let after_gets = items_per_call(&metrics, "get");
    assert!(after_gets.1 - before_gets.1 > after_gets.0 - before_gets.0);

    let mut cfg = ClientConfig::new(t.cluster.endpoints());
    cfg.coalesce = false;
    let alone = Client::new(cfg).unwrap();
    let before = items_per_call(&metrics, "write");
    let versions = concurrent_increments(&alone, "cold", 50).await;
    assert_eq!(versions, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        items_per_call(&metrics, "write"),
        before,
        "no WriteMany without coalescing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_calls_fit_a_server_with_small_batches() {
    // A node that takes writes of at most 64 KiB must still take a client's
    // WriteMany of many such writes (up to 4 MiB of them in one call).
    let t = TestCluster::start(3, &["--max-value-bytes=61440", "--max-batch-bytes=65536"]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let tasks: Vec<_> = (0..100u32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.put("j", "s", format!("k{i}"), vec![i as u8; 40 << 10])
                    .await
            })
        })
        .collect();
    for task in tasks {
        let w = task.await.unwrap().expect("a 40 KiB put");
        assert_eq!(w.versions, vec![1]);
    }
}
