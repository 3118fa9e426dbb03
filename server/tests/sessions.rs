//! `State/Session`: calls pipelined on one stream are each answered under
//! their id exactly as their unary calls would have been; a bad request
//! fails alone, a message too large ends the session with its status after
//! the answers before it, a node shutting down ends its sessions instead of
//! waiting on them, and the client sends its coalesced calls there.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use streamshield_client::{Client, ClientConfig};
use streamshield_proto::v1::{
    self as pb, session_reply, session_request, state_client::StateClient, write_outcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

fn put(key: &[u8], value: &[u8]) -> pb::Op {
    pb::Op {
        state: "s".into(),
        key: key.to_vec(),
        kind: Some(pb::op::Kind::Put(pb::Put {
            value: value.to_vec(),
        })),
    }
}

fn write(client_id: u64, key: &[u8], value: &[u8], seq: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        job: "j".into(),
        ops: vec![put(key, value)],
        client_id,
        seq,
        ..Default::default()
    }
}

fn get(key: &[u8]) -> pb::GetRequest {
    pb::GetRequest {
        job: "j".into(),
        state: "s".into(),
        key: key.to_vec(),
        consistency: pb::Consistency::Linearizable as i32,
        ..Default::default()
    }
}

struct RawSession {
    requests: mpsc::UnboundedSender<pb::SessionRequest>,
    replies: Streaming<pb::SessionReply>,
}

impl RawSession {
    async fn open(addr: &str) -> Self {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = StateClient::new(ch).max_encoding_message_size(64 << 20);
        let (requests, rx) = mpsc::unbounded_channel();
        let replies = client
            .session(UnboundedReceiverStream::new(rx))
            .await
            .expect("open a session")
            .into_inner();
        Self { requests, replies }
    }

    fn send(&self, id: u64, call: Option<session_request::Call>) {
        self.requests
            .send(pb::SessionRequest { id, call })
            .expect("session open");
    }

    /// The next `n` answers, by id.
    async fn answers(&mut self, n: usize) -> HashMap<u64, session_reply::Result> {
        let mut got = HashMap::new();
        while got.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(30), self.replies.message())
                .await
                .expect("an answer within 30 s")
                .expect("the session goes on")
                .expect("an answer, not the end");
            let result = r.result.expect("an answer carries a result");
            assert!(
                got.insert(r.id, result).is_none(),
                "id {} answered twice",
                r.id
            );
        }
        got
    }
}

fn written(a: &session_reply::Result) -> &pb::WriteResponse {
    match a {
        session_reply::Result::Write(w) => w,
        other => panic!("expected a write's answer, got {other:?}"),
    }
}

fn error(a: &session_reply::Result) -> &pb::ItemError {
    match a {
        session_reply::Result::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_calls_are_each_answered_as_their_unary_call() {
    let t = TestCluster::start(3, &[]).await;
    t.client().create_job("j", 16).await.expect("create job");
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let id = register_client(&t.addr(leader)).await;
    let mut s = RawSession::open(&t.addr(leader)).await;

    // 40 writes of one key sent before any answer: each is applied once,
    // so their versions are exactly 1..=40.
    for seq in 1..=40u64 {
        s.send(
            seq,
            Some(session_request::Call::Write(write(id, b"hot", b"v", seq))),
        );
    }
    let first = s.answers(40).await;
    let mut versions: Vec<u64> = (1..=40u64)
        .map(|id| {
            let w = written(&first[&id]);
            assert!(w.succeeded);
            w.versions[0]
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());

    // A request without a call, and a write with an empty key, fail alone;
    // a retry of seq 1 gets seq 1's first answer; a WriteMany and a Get
    // get theirs; the session goes on.
    s.send(100, None);
    s.send(
        101,
        Some(session_request::Call::Write(write(id, b"", b"v", 41))),
    );
    s.send(
        102,
        Some(session_request::Call::Write(write(id, b"hot", b"v", 1))),
    );
    s.send(
        103,
        Some(session_request::Call::WriteMany(pb::WriteManyRequest {
            writes: vec![write(id, b"a", b"1", 42), write(id, b"b", b"2", 43)],
        })),
    );
    let answers = s.answers(4).await;
    let missing_call = error(&answers[&100]);
    assert_eq!(missing_call.code, Code::InvalidArgument as i32);
    assert!(
        missing_call.message.contains("needs a call"),
        "{missing_call:?}"
    );
    assert_eq!(error(&answers[&101]).code, Code::InvalidArgument as i32);
    assert_eq!(written(&answers[&102]), written(&first[&1]));
    match &answers[&103] {
        session_reply::Result::WriteMany(m) => {
            assert_eq!(m.outcomes.len(), 2);
            for o in &m.outcomes {
                assert!(
                    matches!(o.result, Some(write_outcome::Result::Ok(_))),
                    "{o:?}"
                );
            }
        }
        other => panic!("expected a WriteMany's answer, got {other:?}"),
    }
    s.send(104, Some(session_request::Call::Get(get(b"hot"))));
    match &s.answers(1).await[&104] {
        session_reply::Result::Get(g) => {
            assert_eq!(g.kv.as_ref().expect("present").version, 40);
        }
        other => panic!("expected a get's answer, got {other:?}"),
    }

    // A follower's session answers a write with NOT_LEADER naming the
    // leader, as its unary call would.
    let (follower, _) = t.pick_follower().await;
    let mut f = RawSession::open(&t.addr(follower)).await;
    f.send(
        7,
        Some(session_request::Call::Write(write(id, b"c", b"3", 44))),
    );
    let e = error(&f.answers(1).await[&7]).clone();
    assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
    assert!(!e.details.is_empty(), "a NotLeader hint: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_too_large_ends_the_session_after_the_answers_before_it() {
    let t = TestCluster::start(1, &[]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let id = register_client(&t.addr(1)).await;
    let mut s = RawSession::open(&t.addr(1)).await;
    s.send(
        1,
        Some(session_request::Call::Write(write(id, b"k", b"small", 1))),
    );
    // Far above any message the node takes from a client.
    s.send(
        2,
        Some(session_request::Call::Write(write(
            id,
            b"k",
            &vec![7; 40 << 20],
            2,
        ))),
    );
    let first = s.answers(1).await;
    assert!(written(&first[&1]).succeeded);
    let end = tokio::time::timeout(Duration::from_secs(30), s.replies.message())
        .await
        .expect("the session ends within 30 s");
    let status = end.expect_err("the session ends with a status");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The large write changed nothing.
    let kv = client
        .get(
            "j",
            "s",
            "k",
            streamshield_client::Consistency::Linearizable,
        )
        .await
        .expect("get")
        .expect("present");
    assert_eq!(kv.value, b"small");
    assert_eq!(kv.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shutting_down_ends_its_sessions() {
    let mut t = TestCluster::start(1, &[]).await;
    t.client().create_job("j", 16).await.expect("create job");
    let id = register_client(&t.addr(1)).await;
    let mut s = RawSession::open(&t.addr(1)).await;
    s.send(
        1,
        Some(session_request::Call::Write(write(id, b"k", b"v", 1))),
    );
    assert!(written(&s.answers(1).await[&1]).succeeded);

    // The client keeps its side open; the node must not wait for it.
    t.cluster
        .terminate(1, Duration::from_secs(60))
        .expect("stop the node");
    let log = std::fs::read_to_string(t.cluster.log_path(1)).expect("node log");
    assert!(
        log.contains("shutting down"),
        "the node did not finish serving on SIGTERM:\n{log}"
    );
    let end = tokio::time::timeout(Duration::from_secs(30), s.replies.message())
        .await
        .expect("the session ends within 30 s");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no answer was left to give: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_sends_its_calls_on_one_session_unless_told_not_to() {
    let t = TestCluster::start(3, &[]).await;
    let client = t.client();
    client.create_job("j", 16).await.expect("create job");
    let metrics = t.leader_metrics_addr().await;
    let before = metric_value(&metrics, "streamshield_session_requests_total");
    for i in 0..20u32 {
        client
            .put("j", "s", format!("k{i}"), "v")
            .await
            .expect("put");
        let kv = client
            .get(
                "j",
                "s",
                format!("k{i}"),
                streamshield_client::Consistency::Linearizable,
            )
            .await
            .expect("get");
        assert!(kv.is_some());
    }
    let used = metric_value(&metrics, "streamshield_session_requests_total") - before;
    assert_eq!(used, 40, "every put and get went on the session");
    assert_eq!(
        metric_value(&metrics, "streamshield_sessions_open"),
        1,
        "one session for writes and reads alike"
    );

    let mut cfg = ClientConfig::new(t.cluster.endpoints());
    cfg.coalesce = false;
    let unary = Client::new(cfg).unwrap();
    let before = metric_value(&metrics, "streamshield_session_requests_total");
    unary.put("j", "s", "u", "v").await.expect("put");
    assert_eq!(
        metric_value(&metrics, "streamshield_session_requests_total"),
        before,
        "one unary call per operation without coalescing"
    );
}
