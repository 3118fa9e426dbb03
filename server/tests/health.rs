//! The gRPC health service says whether a node can serve: `SERVING` while
//! it knows a live leader, `NOT_SERVING` once it has lost its quorum, and
//! `SERVING` again when it comes back. Reflection answers both its
//! versions (grpcio's client and older grpcurl speak only v1alpha).

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

async fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let mut c = HealthClient::new(channel(addr).await);
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn wait_health(addr: &str, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = health(addr, "").await;
        if last == Some(want) && health(addr, "streamshield.v1.State").await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} did not report {want:?} within {within:?}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_the_quorum() {
    let mut t = TestCluster::start(3, &[]).await;
    for id in [1, 2, 3] {
        wait_health(&t.addr(id), ServingStatus::Serving, Duration::from_secs(10)).await;
    }
    // The one left of three has no quorum, whether it led or followed.
    let (survivor, others) = t.pick_follower().await;
    for id in &others {
        t.cluster.kill(*id).expect("kill");
    }
    wait_health(
        &t.addr(survivor),
        ServingStatus::NotServing,
        Duration::from_secs(20),
    )
    .await;
    t.cluster.start_node(others[0]).expect("restart one");
    wait_health(
        &t.addr(survivor),
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_answers_v1_and_v1alpha() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient as V1,
        server_reflection_request::MessageRequest as V1Request,
        server_reflection_response::MessageResponse as V1Response,
        ServerReflectionRequest as V1ServerReflectionRequest,
    };
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient as V1alpha,
        server_reflection_request::MessageRequest as AlphaRequest,
        server_reflection_response::MessageResponse as AlphaResponse, ServerReflectionRequest,
    };
    let t = TestCluster::start(1, &[]).await;
    let ch = channel(&t.addr(1)).await;

    let mut alpha = V1alpha::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let Some(AlphaResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "streamshield.v1.State"),
        "{names:?}"
    );

    let mut v1 = V1::new(ch);
    let req = V1ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let mut answers = v1
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let Some(V1Response::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "streamshield.v1.Admin"));
}
