//! Deleting a job on a real 3-node cluster: refused while a task holds a
//! lease unless forced; then nothing of the job is readable on any node,
//! its subscribers end, its running task can make nothing visible, and a
//! job made again under its name starts empty, its tasks' generations
//! above the deleted job's.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::{pb, ClientError, Consistency, TaskSessionConfig, TaskSpec};
use tonic::Code;

fn spec() -> TaskSpec {
    whole_job_task("orders", 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_job_is_gone_everywhere_and_its_zombie_task_changes_nothing() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    c.create_job("orders", 4).await.expect("job");
    c.create_job("other", 4).await.expect("job");
    c.put("other", "s", "k", "kept").await.expect("put");
    c.create_stream("orders", "out", 2, 0)
        .await
        .expect("stream");

    let (mut zombie, _) = c
        .acquire(spec(), TaskSessionConfig::default())
        .await
        .expect("lease");
    assert_eq!(zombie.generation(), 1);
    zombie.put("s", "k", "committed").await.unwrap();
    zombie.emit("out", 0, "k", "r0").await.unwrap();
    zombie.commit(Vec::new(), Vec::new()).await.expect("commit");
    zombie
        .put("s", "k", "staged, never committed")
        .await
        .unwrap();
    zombie.flush().await.unwrap();

    let mut sub = c.subscribe("orders", "out", 0, 0).await.expect("subscribe");
    let first = sub.message().await.unwrap().expect("a page");
    assert_eq!(first.records.len(), 1);

    let names = |jobs: Vec<pb::JobSummary>| jobs.into_iter().map(|j| j.job).collect::<Vec<_>>();
    assert_eq!(names(c.list_jobs().await.unwrap()), ["orders", "other"]);

    // A task holds a lease: refused, nothing changed.
    let refused = c.delete_job("orders", false).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    let kv = c
        .get("orders", "s", "k", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(kv.unwrap().value, b"committed");

    let deleted = c.delete_job("orders", true).await.expect("forced");
    assert_eq!(deleted.leased_tasks, [0]);
    assert_eq!(names(c.list_jobs().await.unwrap()), ["other"]);

    // The subscriber ends with the job.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sub.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription ends");
    assert_eq!(ended.unwrap_err().code(), Code::NotFound);

    // Every node has applied the deletion and reads nothing of the job.
    let leader = t.leader_status().await.expect("leader");
    for id in 1..=3 {
        t.wait_applied(id, leader.last_applied, Duration::from_secs(30))
            .await;
        let node = t.client_of(&[id]);
        let gone = node
            .get("orders", "s", "k", Consistency::Stale)
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "node {id}: {gone}");
        let kept = node
            .get("other", "s", "k", Consistency::Stale)
            .await
            .unwrap()
            .expect("the other job's key");
        assert_eq!(kept.value, b"kept", "node {id}");
    }
    let e = c.read_stream("orders", "out", 0, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The same name again: empty, and the old task is fenced in it.
    c.create_job("orders", 4).await.expect("again");
    c.create_stream("orders", "out", 2, 0)
        .await
        .expect("stream");
    zombie.put("s", "k", "zombie").await.unwrap();
    zombie.emit("out", 0, "k", "zombie").await.unwrap();
    let fenced = zombie.commit(Vec::new(), Vec::new()).await.unwrap_err();
    assert!(
        matches!(
            fenced,
            ClientError::StaleLease { .. } | ClientError::NotFound(_)
        ),
        "{fenced:?}"
    );
    let (mut task, checkpoint) = c
        .acquire(spec(), TaskSessionConfig::default())
        .await
        .expect("lease");
    assert!(checkpoint.is_none(), "nothing carried over");
    assert!(task.generation() > 1, "generation {}", task.generation());
    let fenced = zombie.commit(Vec::new(), Vec::new()).await.unwrap_err();
    assert!(
        matches!(fenced, ClientError::StaleLease { .. }),
        "{fenced:?}"
    );
    assert_eq!(task.get("s", b"k").await.unwrap(), None);
    let out = c.read_stream("orders", "out", 0, 0, 0).await.unwrap();
    assert!(out.records.is_empty(), "{:?}", out.records);

    task.put("s", "k", "new").await.unwrap();
    task.commit(Vec::new(), Vec::new()).await.expect("commit");
    let kv = c
        .get("orders", "s", "k", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.value, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_is_an_admin_call_with_precise_refusals() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let e = c.delete_job("nope", false).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c.delete_job("", true).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    for i in 0..5 {
        c.create_job(&format!("j{i}"), 4).await.expect("job");
    }
    // Pages of two, in name order, each after the last.
    let mut admin = pb::admin_client::AdminClient::new(
        plain_channel(&t.addr(t.wait_for_leader(Duration::from_secs(30)).await)).await,
    );
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin
            .list_jobs(pb::ListJobsRequest {
                start_after: after.clone(),
                limit: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.iter().map(|j| j.job.clone()));
        match (page.more, page.jobs.last()) {
            (true, Some(last)) => after = last.job.clone(),
            _ => break,
        }
    }
    assert_eq!(seen, ["j0", "j1", "j2", "j3", "j4"]);
    let too_many = admin
        .list_jobs(pb::ListJobsRequest {
            start_after: String::new(),
            limit: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
}
