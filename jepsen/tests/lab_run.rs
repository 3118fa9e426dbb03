//! A short lab run against real servers must come out valid, and the same
//! history with one fact broken must not: the checkers can fail.

use std::time::Duration;

use serde_json::json;
use streamshield_client::local;
use streamshield_jepsen::history::{Op, OpType};
use streamshield_jepsen::nemesis::Fault;
use streamshield_jepsen::run::{run_test, TestOptions};
use streamshield_jepsen::workload::{Judgement, Workload};

fn options(
    workload: Workload,
    nemesis: Vec<Fault>,
    secs: u64,
    store: &std::path::Path,
) -> TestOptions {
    TestOptions {
        workload,
        nemesis,
        nodes: 3,
        time_limit: Duration::from_secs(secs),
        concurrency: 6,
        workers_per_client: 3,
        seed: 7,
        store: store.to_path_buf(),
        server_bin: local::find_server_binary()
            .expect("build streamshield-server first (cargo test --workspace does)"),
        command: "lab_run test".into(),
    }
}

fn history_of(dir: &std::path::Path) -> Vec<Op> {
    let f = std::fs::File::open(dir.join("history.jsonl")).expect("history");
    streamshield_jepsen::history::read_jsonl(std::io::BufReader::new(f)).expect("parse history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_under_partitions_and_kills_is_linearizable() {
    let store = tempfile::tempdir().unwrap();
    let o = run_test(&options(
        Workload::Register,
        vec![Fault::Partition, Fault::Kill],
        15,
        store.path(),
    ))
    .await
    .expect("run");
    assert_eq!(o.verdict, Judgement::Valid, "{}", o.checker);
    assert!(
        o.counts.ok > 100,
        "the workload made progress: {:?}",
        o.counts
    );
    for f in [
        "history.jsonl",
        "results.json",
        "index.html",
        "nemesis.json",
    ] {
        assert!(o.dir.join(f).exists(), "{f} written");
    }

    // Break one fact: a successful read now returns a value nobody wrote.
    let mut h = history_of(&o.dir);
    assert_eq!(
        Workload::Register.check(&h).0,
        Judgement::Valid,
        "the stored history re-checks valid"
    );
    let read = h
        .iter()
        .position(|op| op.f == "read" && op.kind == OpType::Ok)
        .expect("an ok read");
    h[read].value = json!(999);
    let (judgement, verdict) = Workload::Register.check(&h);
    assert_eq!(
        judgement,
        Judgement::Invalid,
        "a read of a value never written must be flagged"
    );
    assert!(verdict.to_string().contains("stuck_at"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_under_kills_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let o = run_test(&options(Workload::Set, vec![Fault::Kill], 10, store.path()))
        .await
        .expect("run");
    assert_eq!(o.verdict, Judgement::Valid, "{}", o.checker);

    // Drop one acknowledged element from the final read: a lost write.
    let mut h = history_of(&o.dir);
    let acked = h
        .iter()
        .find(|op| op.f == "add" && op.kind == OpType::Ok)
        .map(|op| op.value.clone())
        .expect("an acknowledged add");
    let read = h
        .iter()
        .rposition(|op| op.f == "read" && op.kind == OpType::Ok)
        .expect("final read");
    let items = h[read].value.as_array_mut().expect("list");
    items.retain(|v| *v != acked);
    let (judgement, verdict) = Workload::Set.check(&h);
    assert_eq!(judgement, Judgement::Invalid);
    assert!(verdict["set"]["lost"].as_array().unwrap().contains(&acked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_job_with_zombies_under_kills_and_partitions_is_exactly_once() {
    let store = tempfile::tempdir().unwrap();
    let o = run_test(&options(
        Workload::Stream,
        vec![Fault::Kill, Fault::Partition],
        15,
        store.path(),
    ))
    .await
    .expect("run");
    assert_eq!(o.verdict, Judgement::Valid, "{}", o.checker);
    let h = history_of(&o.dir);
    assert!(
        h.iter()
            .any(|op| op.f == "commit" && op.kind == OpType::Fail),
        "zombies tried and were refused"
    );

    // Break one fact: an output appears twice in the final read.
    let mut h = h;
    let read = h
        .iter()
        .rposition(|op| op.f == "read" && op.kind == OpType::Ok)
        .expect("final read");
    let outputs = h[read].value["0"]["outputs"]
        .as_array_mut()
        .expect("task 0's outputs");
    let first = outputs
        .first()
        .cloned()
        .expect("task 0 committed something");
    outputs.insert(0, first);
    let (judgement, verdict) = Workload::Stream.check(&h);
    assert_eq!(judgement, Judgement::Invalid, "{verdict}");
    assert!(verdict.to_string().contains("outputs for"), "{verdict}");
}
