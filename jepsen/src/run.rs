//! One lab test: start a cluster, run a workload under a nemesis, heal,
//! check, write the report.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::history::{Op, OpType};
use crate::lab::Lab;
use crate::nemesis::{self, Event, Fault};
use crate::recorder::Recorder;
use crate::report;
use crate::workload::{Judgement, Slot, Workload};

#[derive(Debug, Clone)]
pub struct TestOptions {
    pub workload: Workload,
    pub nemesis: Vec<Fault>,
    pub nodes: u64,
    pub time_limit: Duration,
    pub concurrency: u64,
    /// Workers that share one `Client` (and so one client id, and calls
    /// coalesced into `WriteMany`/`GetMany` when they overlap).
    pub workers_per_client: u64,
    pub seed: u64,
    pub store: PathBuf,
    pub server_bin: PathBuf,
    /// The command line, recorded in the report.
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub workload: &'static str,
    pub nemesis: String,
    pub verdict: Judgement,
    pub seed: u64,
    pub nodes: u64,
    pub time_limit_s: f64,
    pub operations: usize,
    pub counts: Counts,
    pub nemesis_events: usize,
    /// Terms begun during the run (the highest term any node reports at
    /// the end, less the one after setup): each is an election, won or
    /// not. Under `latency` alone every one of them is spurious.
    pub elections: u64,
    /// The longest pause between completed operations after a fault
    /// healed, within 3 s of it and before the next fault
    /// (`recovery::longest_pause_after_heal`), in ms; `None` when the run
    /// outlived no heal's window.
    pub heal_pause_ms: Option<u64>,
    pub checker: Value,
    pub command: String,
    pub dir: PathBuf,
}

pub fn counts(history: &[Op]) -> Counts {
    let n = |k: OpType| history.iter().filter(|o| o.kind == k).count();
    Counts {
        ok: n(OpType::Ok),
        fail: n(OpType::Fail),
        info: n(OpType::Info),
    }
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{secs}")
}

/// Runs one test and writes its report; the outcome says whether the
/// history was valid.
pub async fn run_test(o: &TestOptions) -> anyhow::Result<Outcome> {
    let name = format!("{}-{}", o.workload.name(), nemesis::name_of(&o.nemesis));
    let dir = o.store.join(&name).join(timestamp());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let cluster_dir = dir.join("cluster");
    // Raft timing stays at the defaults: the sweep is what shows they
    // elect no leader spuriously (the `elections` of a latency run).
    let args: Vec<String> = ["--snapshot-every=2000", "--logs-kept-after-snapshot=500"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lab = Lab::start(&cluster_dir, o.nodes, &o.server_bin, &args).await?;
    let setup_client = lab.client(Duration::from_secs(30))?;
    setup_client
        .wait_for_leader()
        .await
        .context("no leader at start")?;
    o.workload
        .setup(&setup_client)
        .await
        .context("workload setup")?;
    let first_term = highest_term(&setup_client).await;

    let lab = Arc::new(Mutex::new(lab));
    let started = Instant::now();
    let until = started + o.time_limit;
    let rec = Recorder::new(started);
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    let mut shared = None;
    for index in 0..o.concurrency {
        if index % o.workers_per_client.max(1) == 0 {
            // Short deadlines: an operation that cannot finish soon is `info`.
            shared = Some(lab.lock().await.client(Duration::from_secs(2))?);
        }
        let client = shared.clone().expect("made for the first worker");
        let slot = Slot {
            index,
            of: o.concurrency,
            seed: o.seed,
            until,
        };
        workers.push(tokio::spawn(o.workload.worker(
            client,
            rec.clone(),
            slot,
            counter.clone(),
        )));
    }
    let nemesis_task = tokio::spawn(nemesis::run(
        lab.clone(),
        o.nemesis.clone(),
        o.seed,
        started,
        until,
    ));
    for w in workers {
        w.await.context("worker")?;
    }
    let events: Vec<Event> = nemesis_task.await.context("nemesis")?;

    // Heal, let the cluster recover, then take the final reads.
    lab.lock().await.heal_all()?;
    let final_client = lab.lock().await.client(Duration::from_secs(60))?;
    final_client
        .wait_for_leader()
        .await
        .context("no leader after healing")?;
    let elections = highest_term(&final_client).await.saturating_sub(first_term);
    o.workload.finish(&final_client, &rec, u64::MAX / 2).await;
    lab.lock().await.stop();

    let history = rec.history();
    let (verdict, checker) = o.workload.check(&history);
    let outcome = Outcome {
        workload: o.workload.name(),
        nemesis: nemesis::name_of(&o.nemesis),
        verdict,
        seed: o.seed,
        nodes: o.nodes,
        time_limit_s: o.time_limit.as_secs_f64(),
        operations: history
            .iter()
            .filter(|op| op.kind == OpType::Invoke)
            .count(),
        counts: counts(&history),
        nemesis_events: events.len(),
        elections,
        heal_pause_ms: crate::recovery::longest_pause_after_heal(&history, &events)
            .map(|d| d.as_millis() as u64),
        checker,
        command: o.command.clone(),
        dir: dir.clone(),
    };
    report::write(&dir, &history, &events, &outcome)?;
    // Node logs stay for diagnosis; the data directories go.
    for id in 1..=o.nodes {
        let _ = std::fs::remove_dir_all(cluster_dir.join(format!("node-{id}")));
    }
    Ok(outcome)
}

/// The highest term any reachable node reports.
async fn highest_term(client: &streamshield_client::Client) -> u64 {
    client
        .cluster_status()
        .await
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|s| s.term)
        .max()
        .unwrap_or(0)
}

pub fn summary_line(o: &Outcome) -> Value {
    json!({
        "workload": o.workload, "nemesis": o.nemesis, "verdict": o.verdict,
        "operations": o.operations, "nemesis_events": o.nemesis_events,
        "elections": o.elections, "heal_pause_ms": o.heal_pause_ms, "seed": o.seed,
    })
}
