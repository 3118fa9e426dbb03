//! A connection that sends more requests at once than a node takes gets
//! RESOURCE_EXHAUSTED for the excess at once, not a growing queue, and
//! what was refused changed nothing.

mod common;

use common::*;
use streamshield_proto::v1::{self as pb, state_client::StateClient};
use tonic::Code;

/// A put of `k{i}` into job `j`.
fn put_k(i: u32) -> pb::WriteRequest {
    pb::WriteRequest {
        job: "j".into(),
        ops: vec![pb::Op {
            state: "s".into(),
            key: format!("k{i}").into_bytes(),
            kind: Some(pb::op::Kind::Put(pb::Put { value: vec![1] })),
        }],
        ..Default::default()
    }
}

/// The store holds exactly the keys of the writes in `ok`.
async fn assert_only_served_are_written(client: &streamshield_client::Client, mut ok: Vec<u32>) {
    let all = client
        .scan_all(
            "j",
            "s",
            b"",
            streamshield_client::Consistency::Linearizable,
        )
        .await
        .expect("scan");
    let mut written: Vec<u32> = all
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key)[1..].parse().unwrap())
        .collect();
    written.sort_unstable();
    ok.sort_unstable();
    assert_eq!(written, ok, "exactly the served writes are there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_past_its_limit_is_shed_and_nothing_refused_is_applied() {
    let t = TestCluster::start(3, &["--max-requests-per-connection=2"]).await;
    let client = t.client();
    client.create_job("j", 4).await.expect("create job");
    let leader = t.wait_for_leader(std::time::Duration::from_secs(10)).await;
    let ch = plain_channel(&t.addr(leader)).await;
    let mut calls = Vec::new();
    for i in 0..64u32 {
        let mut state = StateClient::new(ch.clone());
        calls.push(tokio::spawn(async move {
            (i, state.write(put_k(i)).await.map(|_| ()))
        }));
    }
    let (mut ok, mut shed) = (Vec::new(), Vec::new());
    for c in calls {
        match c.await.unwrap() {
            (i, Ok(())) => ok.push(i),
            (i, Err(s)) if s.code() == Code::ResourceExhausted => shed.push(i),
            (i, Err(s)) => panic!("write {i}: unexpected {s:?}"),
        }
    }
    assert!(
        !shed.is_empty(),
        "64 writes at once on one connection, none shed"
    );
    assert!(!ok.is_empty(), "none served");
    assert_only_served_are_written(&client, ok).await;
}

/// Many connections, each under its own limit, together past the node's:
/// the excess gets RESOURCE_EXHAUSTED with a retry hint at once, and
/// exactly the served writes are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_past_the_node_limit_are_shed_with_a_retry_hint() {
    use prost::Message;
    let t = TestCluster::start(3, &["--max-requests-in-flight=2"]).await;
    let client = t.client();
    client.create_job("j", 4).await.expect("create job");
    let leader = t.wait_for_leader(std::time::Duration::from_secs(10)).await;
    let mut channels = Vec::new();
    for _ in 0..64 {
        channels.push(plain_channel(&t.addr(leader)).await);
    }
    let mut calls = Vec::new();
    for (i, ch) in channels.into_iter().enumerate() {
        calls.push(tokio::spawn(async move {
            let i = i as u32;
            (i, StateClient::new(ch).write(put_k(i)).await.map(|_| ()))
        }));
    }
    let (mut ok, mut shed) = (Vec::new(), Vec::new());
    for c in calls {
        match c.await.unwrap() {
            (i, Ok(())) => ok.push(i),
            (i, Err(s)) if s.code() == Code::ResourceExhausted => {
                let detail = pb::ErrorDetail::decode(s.details()).expect("a typed detail");
                match detail.kind {
                    Some(pb::error_detail::Kind::Overloaded(o)) => {
                        assert!(o.retry_after_ms > 0, "a retry hint")
                    }
                    other => panic!("write {i}: detail {other:?}"),
                }
                shed.push(i);
            }
            (i, Err(s)) => panic!("write {i}: unexpected {s:?}"),
        }
    }
    assert!(!shed.is_empty(), "64 connections at once, none shed");
    assert!(!ok.is_empty(), "none served");
    assert_only_served_are_written(&client, ok).await;
}
