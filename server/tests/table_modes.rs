//! Default write modes per state table on a real 3-node cluster: a table
//! the job declares SYNC is written by a task session at once (visible
//! before any commit), an ASYNC or undeclared one only with its epoch's
//! commit, and a mode changed later holds for the next lease.

mod common;

use common::*;
use streamshield_client::{pb, Client, Consistency, TaskSessionConfig, TaskSpec};

fn spec() -> TaskSpec {
    TaskSpec {
        job: "modes".into(),
        task: 0,
        key_groups: 0..4,
        input_partitions: vec![("in".into(), 0)],
    }
}

async fn value(c: &Client, state: &str, key: &str) -> Option<String> {
    c.get("modes", state, key, Consistency::Linearizable)
        .await
        .expect("read")
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_declared_sync_is_written_at_once_and_the_others_with_their_epoch() {
    let t = TestCluster::start(3, &[]).await;
    let c = t.client();
    let job = c
        .create_job_with_tables(
            "modes",
            4,
            &[
                ("counts", pb::WriteMode::Sync),
                ("windows", pb::WriteMode::Async),
            ],
        )
        .await
        .expect("create job");
    let declared: Vec<_> = job
        .states
        .iter()
        .map(|s| (s.name.as_str(), s.default_mode))
        .collect();
    assert_eq!(
        declared,
        vec![
            ("counts", Some(pb::WriteMode::Sync as i32)),
            ("windows", Some(pb::WriteMode::Async as i32))
        ]
    );

    let (mut s, _) = c
        .acquire(spec(), TaskSessionConfig::default())
        .await
        .expect("acquire");
    s.put("counts", "a", "1").await.unwrap();
    s.put("windows", "a", "w1").await.unwrap();
    s.put("other", "a", "o1").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        value(&c, "counts", "a").await.as_deref(),
        Some("1"),
        "sync: visible before the commit"
    );
    assert_eq!(value(&c, "windows", "a").await, None, "async: staged");
    assert_eq!(value(&c, "other", "a").await, None, "undeclared: staged");
    s.commit(Vec::new(), Vec::new()).await.expect("commit");
    assert_eq!(value(&c, "windows", "a").await.as_deref(), Some("w1"));
    assert_eq!(value(&c, "other", "a").await.as_deref(), Some("o1"));

    // `windows` becomes SYNC: the next lease writes it at once.
    let job = c
        .set_table_mode("modes", "windows", pb::WriteMode::Sync)
        .await
        .expect("set mode");
    let windows = job.states.iter().find(|s| s.name == "windows").unwrap();
    assert_eq!(windows.default_mode, Some(pb::WriteMode::Sync as i32));
    drop(s);
    let (mut s, _) = c
        .acquire(spec(), TaskSessionConfig::default())
        .await
        .expect("acquire again");
    s.put("windows", "b", "w2").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(value(&c, "windows", "b").await.as_deref(), Some("w2"));
}
