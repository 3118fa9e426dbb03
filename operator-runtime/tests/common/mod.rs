//! A real 3-node state cluster and a supervised job for one test: free
//! loopback ports, a temp directory, every process killed and the directory
//! removed when the test ends, pass or fail.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use streamshield_client::local::{find_server_binary, LocalCluster};
use streamshield_client::{pb, Client, ClientConfig};
use streamshield_runtime::examples::{window_sum, wordcount};
use streamshield_runtime::source::{append_in_steps, Verdict};
use streamshield_runtime::{JobConfig, JobDef, StreamRef, Supervisor, SupervisorConfig};
use tempfile::TempDir;

pub const RUNTIME_BIN: &str = env!("CARGO_BIN_EXE_streamshield-runtime");

pub struct Cluster {
    // Dropped first: kills the processes before their directory goes.
    pub cluster: LocalCluster,
    pub client: Client,
    pub endpoints: Vec<String>,
    pub dir: TempDir,
}

impl Cluster {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("streamshield-runtime-test-")
            .tempdir()
            .expect("temp dir");
        let server = find_server_binary()
            .expect("build streamshield-server first (cargo test --workspace does)");
        // Elections fast enough for a test, slow enough for debug builds
        // sharing 2 cores with the job's workers.
        let args: Vec<String> = [
            "--heartbeat-ms=100",
            "--election-timeout-min-ms=600",
            "--election-timeout-max-ms=1200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cluster = LocalCluster::start(
            &dir.path().join("cluster"),
            3,
            Path::new(&server),
            &args,
            false,
        )
        .expect("start servers");
        let endpoints = cluster.endpoints();
        let client = Client::new(ClientConfig::new(endpoints.iter().cloned())).expect("client");
        let mut config = ClientConfig::new(endpoints.iter().cloned());
        config.deadline = Duration::from_secs(60);
        Client::new(config)
            .expect("client")
            .wait_for_leader()
            .await
            .expect("a leader");
        Self {
            cluster,
            client,
            endpoints,
            dir,
        }
    }

    pub async fn leader(&self) -> u64 {
        let mut config = ClientConfig::new(self.endpoints.iter().cloned());
        config.deadline = Duration::from_secs(60);
        Client::new(config)
            .expect("client")
            .wait_for_leader()
            .await
            .expect("a leader")
            .0
    }

    /// Appends `input` to the job's source in `steps` growing prefixes,
    /// `every_ms` apart, in the background, so that the job has work
    /// throughout a test.
    pub fn feeding(
        &self,
        job: &JobDef,
        cfg: &JobConfig,
        input: Vec<Vec<pb::Record>>,
        steps: usize,
        every_ms: u64,
    ) -> tokio::task::JoinHandle<()> {
        let (client, to) = (self.client.clone(), source(job, cfg));
        tokio::spawn(async move {
            append_in_steps(&client, &to, &input, steps, Duration::from_millis(every_ms))
                .await
                .expect("append input")
        })
    }

    pub async fn supervise(&self, job: &JobDef, cfg: JobConfig) -> Supervisor {
        Supervisor::start(
            job,
            SupervisorConfig {
                job: cfg,
                endpoints: self.endpoints.clone(),
                worker_command: vec![RUNTIME_BIN.to_string()],
                status_file: Some(self.dir.path().join("status.json")),
            },
        )
        .await
        .expect("start the job")
    }
}

/// A job configuration for tests: heartbeats with room for debug builds
/// on a loaded 2-core machine.
pub fn config(job: &str, name: &str, parallelism: &[(&str, u32)], standbys: u32) -> JobConfig {
    JobConfig {
        job: job.into(),
        name: name.into(),
        standbys,
        heartbeat_timeout_ms: 3000,
        parallelism: parallelism
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        ..JobConfig::default()
    }
}

/// The source stream of `job`.
pub fn source(job: &JobDef, cfg: &JobConfig) -> StreamRef {
    StreamRef {
        job: job.store_job(cfg, 0),
        stream: job.source.clone(),
    }
}

/// Polls `check` until the result holds as many records as the truth
/// implies (or more: then it is wrong at once), up to `within`.
pub async fn settled<F, Fut>(within: Duration, mut check: F) -> Verdict
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Verdict>,
{
    let deadline = Instant::now() + within;
    loop {
        let v = check().await;
        if v.found >= v.expected || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits until the windowed-sum result is complete (up to 180 s) and
/// returns how it compares with the truth.
pub async fn window_sums(
    c: &Cluster,
    job: &JobDef,
    cfg: &JobConfig,
    n: u64,
    users: u32,
    seed: u64,
) -> Verdict {
    settled(Duration::from_secs(180), || async {
        window_sum::verify(&c.client, job, cfg, n, users, seed)
            .await
            .expect("read the result")
    })
    .await
}

/// Waits until the word count's result is complete (up to 180 s) and
/// returns how it compares with the truth.
pub async fn word_counts(
    c: &Cluster,
    job: &JobDef,
    cfg: &JobConfig,
    lines: u64,
    seed: u64,
) -> Verdict {
    settled(Duration::from_secs(180), || async {
        wordcount::verify(&c.client, job, cfg, lines, seed)
            .await
            .expect("read the result")
    })
    .await
}
