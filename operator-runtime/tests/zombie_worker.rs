//! A zombie worker (SIGSTOP, replaced, SIGCONT) makes nothing visible
//! after its replacement: its next commit is refused as stale, it exits
//! saying it was fenced, and the result equals the ground truth.

mod common;

use std::process::Stdio;
use std::time::Duration;

use streamshield_runtime::examples::window_sum;
use streamshield_runtime::protocol::{FromWorker, ToWorker};
use streamshield_runtime::task::TaskEvent;
use streamshield_runtime::JobConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use common::{config, signal, window_sums, Cluster, RUNTIME_BIN};

/// A worker started by hand, without a supervisor that could kill it.
/// Its output is read all the time (a worker whose stdout fills up
/// blocks, as it would under a supervisor that stopped reading).
struct Worker {
    child: Child,
    stdin: ChildStdin,
    said: mpsc::UnboundedReceiver<FromWorker>,
}

impl Worker {
    async fn start(cfg: &JobConfig, endpoints: &[String]) -> Self {
        let mut child = Command::new(RUNTIME_BIN)
            .arg("worker")
            .arg("--job-json")
            .arg(serde_json::to_string(cfg).unwrap())
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a worker");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, said) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let m: FromWorker = serde_json::from_str(&line).expect("a protocol line");
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let mut w = Self { child, stdin, said };
        w.until(|m| matches!(m, FromWorker::Ready { .. })).await;
        w
    }

    async fn assign(&mut self, stage: &str, task: u32) {
        let m = ToWorker::Assign {
            stage: stage.into(),
            task,
        };
        self.stdin.write_all(m.line().as_bytes()).await.unwrap();
    }

    /// Reads the worker's messages until one matches; returns it.
    async fn until(&mut self, want: impl Fn(&FromWorker) -> bool) -> FromWorker {
        let read = async {
            loop {
                let m = self
                    .said
                    .recv()
                    .await
                    .expect("the worker exited before saying what was expected");
                if want(&m) {
                    return m;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .expect("the worker said it within 120 s")
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

fn committed_with_records(m: &FromWorker) -> bool {
    matches!(
        m,
        FromWorker::Task {
            event: TaskEvent::Committed { records, .. },
            ..
        } if *records > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_zombie_is_fenced_and_changes_nothing() {
    let c = Cluster::start().await;
    let job = window_sum::job();
    let cfg = config(window_sum::NAME, "ws-zombie", &[("window", 1)], 0);
    job.setup(&c.client, &cfg).await.expect("set the job up");
    let (n, users, seed) = (20_000, 100, 23);
    let input = window_sum::input(&cfg, n, users, seed);

    let mut a = Worker::start(&cfg, &c.endpoints).await;
    a.assign("window", 0).await;
    let feeder = c.feeding(&job, &cfg, input, 20, 200);
    a.until(committed_with_records).await;
    // Frozen mid-stream: it holds an open epoch it has not committed.
    signal(a.pid(), libc::SIGSTOP);

    let mut b = Worker::start(&cfg, &c.endpoints).await;
    b.assign("window", 0).await;
    b.until(|m| {
        matches!(
            m,
            FromWorker::Task {
                event: TaskEvent::Attached { generation: 2, .. },
                ..
            }
        )
    })
    .await;
    b.until(committed_with_records).await;
    feeder.await.unwrap();
    let v = window_sums(&c, &job, &cfg, n, users, seed).await;
    assert!(v.exact(), "the replacement alone: {v:?}");

    signal(a.pid(), libc::SIGCONT);
    let said = a.until(|m| matches!(m, FromWorker::Failed { .. })).await;
    assert!(
        matches!(said, FromWorker::Failed { fenced: true, .. }),
        "the zombie learns it was replaced: {said:?}"
    );
    let status = a.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(3), "a fenced worker exits with 3");

    // Whatever the zombie held is not visible: still exactly the truth.
    let after = window_sum::verify(&c.client, &job, &cfg, n, users, seed)
        .await
        .unwrap();
    assert!(after.exact(), "after the zombie resumed: {after:?}");
    drop(b);
}
