//! The `stream` workload: a small exactly-once stream job run by the lab's
//! clients, with zombie copies.
//!
//! The job has [`TASKS`] tasks; task `t` reads input partition `t` of
//! stream `in` (filled before the run, and extended whenever a task finds
//! it exhausted) and, per record, adds one to its
//! count and emits `gen:offset:value` to partition `t` of stream `out`,
//! committing count, input offset and outputs as one epoch every
//! [`RECORDS_PER_EPOCH`] records. Every client process runs one task, so a
//! task has several processes: each takes the lease in turn and fences the
//! others, and a fenced process keeps committing with its stale lease a
//! few more times (a zombie) before it takes the lease again. Each commit
//! is an operation of the history; the final read collects, per task, the
//! committed offset, the count, the input and the output, which
//! `checker::stream` judges.

use std::ops::Range;

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};
use streamshield_client::{
    key_group, pb, Client, ClientError, Consistency, Producer, TaskSession, TaskSessionConfig,
    TaskSpec,
};

use crate::history::OpType;
use crate::recorder::Recorder;
use crate::workload::JOB;

/// Tasks of the job (and partitions of each stream).
pub const TASKS: u64 = 3;
/// Input records per partition before the run.
const INPUT_PER_PARTITION: u64 = 3_000;
const RECORDS_PER_EPOCH: u32 = 20;
/// Commits a fenced process still tries before it takes the lease again.
const ZOMBIE_TRIES: u32 = 2;
/// The lab job's key groups (`Workload::setup`).
const KEY_GROUPS: u32 = 64;

fn groups(task: u64) -> Range<u32> {
    let per = KEY_GROUPS / TASKS as u32;
    let start = task as u32 * per;
    let end = if task + 1 == TASKS {
        KEY_GROUPS
    } else {
        start + per
    };
    start..end
}

/// The key of task `task`'s count: the first of a fixed sequence that
/// falls in its key groups.
fn count_key(task: u64) -> Vec<u8> {
    let g = groups(task);
    (0u64..)
        .map(|i| format!("count-{task}-{i}").into_bytes())
        .find(|k| g.contains(&u32::from(key_group(k, KEY_GROUPS))))
        .expect("some key falls in every range")
}

fn spec(task: u64) -> TaskSpec {
    TaskSpec {
        job: JOB.into(),
        task: task as u32,
        key_groups: groups(task),
        input_partitions: vec![("in".into(), task as u32)],
    }
}

/// Creates the streams and writes the first input, once.
pub async fn setup(client: &Client) -> Result<(), ClientError> {
    for stream in ["in", "out"] {
        match client.create_stream(JOB, stream, TASKS as u32, 0).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    for p in 0..TASKS {
        while input_end(client, p).await? < INPUT_PER_PARTITION {
            extend_input(client, p).await?;
        }
    }
    Ok(())
}

async fn input_end(client: &Client, partition: u64) -> Result<u64, ClientError> {
    let info = client.describe_stream(JOB, "in").await?;
    Ok(info.partition_info[partition as usize].end_offset)
}

/// Appends the next 500 input records of `partition`: record `i` is
/// `partition:i`, under producer `partition + 1` at seq `i + 1` of its
/// first record, so the processes of a task that all find the input
/// exhausted append each record once, whoever comes first.
async fn extend_input(client: &Client, partition: u64) -> Result<(), ClientError> {
    let next = input_end(client, partition).await?;
    let records = (next..next + 500)
        .map(|i| pb::Record {
            key: Vec::new(),
            value: format!("{partition}:{i}").into_bytes(),
        })
        .collect();
    let producer = Producer {
        id: partition + 1,
        seq: next + 1,
    };
    client
        .append(JOB, "in", partition as u32, records, Some(producer))
        .await
        .map(|_| ())
}

/// `fail` when a commit certainly did not apply, `info` when it may have.
fn outcome(e: &ClientError) -> OpType {
    match e {
        ClientError::StaleLease { .. }
        | ClientError::FailedPrecondition(_)
        | ClientError::MissingSeqs { .. }
        | ClientError::InvalidArgument(_)
        | ClientError::NotFound(_)
        | ClientError::PermissionDenied(_) => OpType::Fail,
        _ => OpType::Info,
    }
}

/// A task's place in its input: where it resumes and its count.
struct Resume {
    offset: u64,
    count: u64,
}

async fn resume(
    s: &TaskSession,
    cp: Option<pb::Checkpoint>,
    task: u64,
) -> Result<Resume, ClientError> {
    let offset = cp
        .and_then(|c| c.input_offsets.into_iter().find(|o| o.stream == "in"))
        .map_or(0, |o| o.offset);
    let count = s
        .get("count", &count_key(task))
        .await?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    Ok(Resume { offset, count })
}

/// One client process, running task `task` until `until`.
pub async fn worker(
    client: Client,
    rec: Recorder,
    task: u64,
    mut process: u64,
    step: u64,
    until: std::time::Instant,
    rng: &mut StdRng,
) {
    while std::time::Instant::now() < until {
        let Ok((mut s, cp)) = client
            .acquire(spec(task), TaskSessionConfig::default())
            .await
        else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(mut at) = resume(&s, cp, task).await else {
            continue;
        };
        let mut zombie_tries = 0;
        'epochs: while std::time::Instant::now() < until {
            let page = match client
                .read_stream(JOB, "in", task as u32, at.offset, RECORDS_PER_EPOCH)
                .await
            {
                Ok(p) => p,
                Err(_) => break,
            };
            if page.records.is_empty() {
                // Input exhausted: more of it, so that the job works under
                // every fault of the run rather than idling after the
                // first few seconds (3,000 records a partition lasted
                // about 7 s of a 30 s run).
                if extend_input(&client, task).await.is_err() {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                continue;
            }
            let gen = s.generation();
            let mut count = at.count;
            let mut next = at.offset;
            for r in &page.records {
                count += 1;
                next = r.offset + 1;
                let emitted = format!("{gen}:{}:{}", r.offset, String::from_utf8_lossy(&r.value));
                if s.emit("out", task as u32, Vec::new(), emitted)
                    .await
                    .is_err()
                {
                    break 'epochs;
                }
            }
            if s.put("count", count_key(task), count.to_string())
                .await
                .is_err()
            {
                break;
            }
            let value = json!({"task": task, "gen": gen, "from": at.offset, "to": next});
            let op = rec.invoke(process, "commit", None, value.clone());
            let offsets = vec![pb::InputOffset {
                stream: "in".into(),
                partition: task as u32,
                offset: next,
            }];
            match s.commit(offsets, Vec::new()).await {
                Ok(_) => {
                    rec.complete(&op, OpType::Ok, value);
                    at = Resume {
                        offset: next,
                        count,
                    };
                }
                Err(e) => {
                    let kind = outcome(&e);
                    rec.complete(&op, kind, value);
                    if kind == OpType::Info {
                        // Crashed, as Jepsen sees it: a new process
                        // takes over with a fresh lease.
                        process += step;
                        break;
                    }
                    if matches!(e, ClientError::StaleLease { .. }) {
                        zombie_tries += 1;
                        if zombie_tries > ZOMBIE_TRIES {
                            break;
                        }
                        // A zombie goes on as if nothing happened: the
                        // next epoch from where it thought it was.
                        at = Resume {
                            offset: next,
                            count,
                        };
                        continue;
                    }
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..5))).await;
        }
    }
}

async fn read_all(
    client: &Client,
    stream: &str,
    partition: u32,
) -> Result<Vec<Value>, ClientError> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = client
            .read_stream(JOB, stream, partition, from, 10_000)
            .await?;
        if page.records.is_empty() {
            return Ok(out);
        }
        from = page.next_offset;
        out.extend(
            page.records
                .into_iter()
                .map(|r| Value::String(String::from_utf8_lossy(&r.value).into_owned())),
        );
    }
}

/// The final read: per task, its committed offset, count, input and output.
pub async fn finish(client: &Client, rec: &Recorder, process: u64) {
    let op = rec.invoke(process, "read", None, Value::Null);
    let read = async {
        let list = client.list_tasks(JOB, Consistency::Linearizable).await?;
        let mut m = Map::new();
        for task in 0..TASKS {
            let offset = list
                .tasks
                .iter()
                .find(|t| u64::from(t.task) == task)
                .and_then(|t| t.checkpoint.as_ref())
                .and_then(|c| c.input_offsets.iter().find(|o| o.stream == "in"))
                .map_or(0, |o| o.offset);
            let count = client
                .get(JOB, "count", count_key(task), Consistency::Linearizable)
                .await
                .or_else(|e| match e {
                    ClientError::NotFound(_) => Ok(None),
                    e => Err(e),
                })?
                .and_then(|kv| String::from_utf8(kv.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            m.insert(
                task.to_string(),
                json!({
                    "offset": offset,
                    "count": count,
                    "inputs": read_all(client, "in", task as u32).await?,
                    "outputs": read_all(client, "out", task as u32).await?,
                }),
            );
        }
        Ok::<_, ClientError>(Value::Object(m))
    };
    match read.await {
        Ok(v) => rec.complete(&op, OpType::Ok, v),
        Err(e) => rec.complete(&op, OpType::Fail, json!(e.to_string())),
    }
}
