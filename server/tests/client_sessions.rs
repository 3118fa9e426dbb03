//! Deduplication sessions handed out by the cluster (`RegisterClient`), as
//! in the Raft dissertation's client sessions (§6.3): a write under a
//! client id the cluster did not hand out is refused and changes nothing,
//! a registered id deduplicates retries, and once a session expires the
//! client library registers again by itself.

mod common;

use std::time::{Duration, Instant};

use common::*;
use streamshield_client::{ClientError, Consistency};
use streamshield_proto::v1::{self as pb, state_client::StateClient};
use tonic::Code;

fn put(client_id: u64, seq: u64, key: &str, value: &str) -> pb::WriteRequest {
    pb::WriteRequest {
        job: "j".into(),
        ops: vec![pb::Op {
            state: "s".into(),
            key: key.as_bytes().to_vec(),
            kind: Some(pb::op::Kind::Put(pb::Put {
                value: value.as_bytes().to_vec(),
            })),
        }],
        client_id,
        seq,
        acked_below: seq,
        ..Default::default()
    }
}

fn is_expired(s: &tonic::Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message().starts_with("dedupe session expired")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_ids_the_cluster_handed_out_deduplicate_and_the_client_registers_again() {
    // Sessions idle for 2 s are expired by a sweep every 200 ms.
    let t = TestCluster::start(
        3,
        &[
            "--dedupe-session-ttl-ms",
            "2000",
            "--session-sweep-interval-ms",
            "200",
        ],
    )
    .await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let mut state = StateClient::new(plain_channel(&t.addr(leader)).await);

    // A made-up id: refused before anything is applied.
    let made_up = state.write(put(424_242, 1, "made-up", "x")).await;
    let status = made_up.expect_err("a made-up client id");
    assert!(is_expired(&status), "{status:?}");
    // Nothing written: not the key, not even its table.
    let absent = client
        .get("j", "s", "made-up", Consistency::Linearizable)
        .await;
    assert!(
        matches!(absent, Err(ClientError::NotFound(_))),
        "the refused write changed nothing: {absent:?}"
    );

    // Two registrations, two ids; a retry under one is answered from its
    // record and applies once.
    let registered = state
        .register_client(pb::RegisterClientRequest {})
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registered.idle_ttl_ms, 2000);
    let other = register_client(&t.addr(leader)).await;
    assert_ne!(registered.client_id, other);
    let id = registered.client_id;
    let first = state.write(put(id, 1, "k", "v")).await.expect("write");
    let again = state.write(put(id, 1, "k", "v")).await.expect("retry");
    assert_eq!(first.get_ref(), again.get_ref());
    let kv = client
        .get("j", "s", "k", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("k");
    assert_eq!(kv.version, 1, "the retry did not apply again");

    // The library client registers on its first write.
    client.put("j", "s", "lib", "1").await.expect("first put");

    // Wait until the sweep expired a session registered after the
    // library's: then the library's and `id`'s have expired too.
    let probe = register_client(&t.addr(leader)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 1;
    loop {
        match state.write(put(probe, seq, "probe", "p")).await {
            Err(s) if is_expired(&s) => break,
            Err(s) => panic!("{s:?}"),
            Ok(_) => {
                assert!(Instant::now() < deadline, "the session never expired");
                seq += 1;
                // A write touches its session at most once a minute, so
                // the probes do not keep it alive; the pause only spaces
                // them.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // A retry under the expired id is refused, not applied again.
    let refused = state.write(put(id, 1, "k", "v")).await;
    assert!(is_expired(&refused.expect_err("expired")));
    let kv = client
        .get("j", "s", "k", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("k");
    assert_eq!(kv.version, 1);

    // The library's session expired with it: its next write is refused
    // once, registers a new id and goes through.
    client
        .put("j", "s", "lib", "2")
        .await
        .expect("put after expiry");
    let lib = client
        .get("j", "s", "lib", Consistency::Linearizable)
        .await
        .expect("get")
        .expect("lib");
    assert_eq!((lib.value.as_slice(), lib.version), (&b"2"[..], 2));
}
