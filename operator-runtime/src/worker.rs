//! A worker process: loads the job, connects, says it is ready, then runs
//! the one task its supervisor assigns until it is stopped, fenced or its
//! supervisor goes away.
//!
//! A ready worker is a warm standby: taking over a task costs it one lease
//! entry and one checkpoint read, not a process start, a connection and a
//! job load.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use streamshield_client::{Client, ClientConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

use crate::config::JobConfig;
use crate::error::RuntimeError;
use crate::job::JobDef;
use crate::protocol::{FromWorker, ToWorker};
use crate::task::{run_task, TaskArgs};

/// How long a worker's calls keep retrying through a store outage: long
/// enough that an outage pauses a task rather than failing it.
const PATIENCE: Duration = Duration::from_secs(24 * 3600);

static OUT: Mutex<()> = Mutex::new(());

fn say(m: &FromWorker) {
    let _guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::io::stdout().lock();
    // A closed stdout means the supervisor is gone; stdin's end says so too.
    let _ = out.write_all(m.line().as_bytes());
    let _ = out.flush();
}

/// A client that waits out outages.
pub fn patient_client(endpoints: &[String]) -> Result<Client, RuntimeError> {
    let mut config = ClientConfig::new(endpoints.iter().cloned());
    config.deadline = PATIENCE;
    Ok(Client::new(config)?)
}

/// Runs the worker and ends the process: 0 stopped, 1 failed, 3 fenced.
/// It exits rather than returns because the runtime's shutdown would wait
/// for the blocking read of stdin, which only ends when the supervisor
/// closes it.
pub async fn run_worker(job: JobDef, cfg: JobConfig, endpoints: Vec<String>) -> ! {
    let code = match serve(job, cfg, endpoints).await {
        Ok(code) => code,
        Err(e) => {
            say(&FromWorker::Failed {
                error: e.to_string(),
                fenced: false,
            });
            1
        }
    };
    std::process::exit(code)
}

async fn serve(job: JobDef, cfg: JobConfig, endpoints: Vec<String>) -> Result<i32, RuntimeError> {
    job.validate(&cfg)?;
    let client = patient_client(&endpoints)?;
    // Connected means the leader is known: a takeover's first call goes
    // straight to it.
    client.describe_job(&job.store_job(&cfg, 0)).await?;
    say(&FromWorker::Ready {
        pid: std::process::id(),
    });
    let beat = cfg.heartbeat_interval();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(beat);
        loop {
            t.tick().await;
            say(&FromWorker::Heartbeat);
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(0);
    };
    let (stage, task) = match serde_json::from_str::<ToWorker>(&line) {
        Ok(ToWorker::Assign { stage, task }) => (stage, task),
        Ok(ToWorker::Stop) => return Ok(0),
        Err(e) => return Err(RuntimeError::Protocol(format!("{line:?}: {e}"))),
    };
    let stage_index = job.stage_index(&stage)?;
    let (stop_tx, stop) = oneshot::channel();
    // Stop on `Stop`, and when the supervisor is gone (stdin closed).
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ToWorker>(&line) {
                Ok(ToWorker::Stop) => break,
                // A second assignment is ignored: a worker runs one task.
                Ok(ToWorker::Assign { .. }) => {}
                Err(e) => tracing::warn!(line, error = %e, "not a supervisor message"),
            }
        }
        let _ = stop_tx.send(());
    });
    let events = {
        let stage = stage.clone();
        move |event| {
            say(&FromWorker::Task {
                stage: stage.clone(),
                task,
                event,
            })
        }
    };
    let result = run_task(TaskArgs {
        client: &client,
        job: &job,
        cfg: &cfg,
        stage: stage_index,
        task,
        stop,
        events: &events,
    })
    .await;
    match result {
        Ok(()) => {
            say(&FromWorker::Stopped);
            Ok(0)
        }
        Err(e) => {
            let fenced = matches!(e, RuntimeError::Fenced { .. });
            tracing::warn!(error = %e, stage, task, "task ended");
            say(&FromWorker::Failed {
                error: e.to_string(),
                fenced,
            });
            Ok(if fenced { 3 } else { 1 })
        }
    }
}
