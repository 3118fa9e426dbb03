//! `streamshield tasks JOB`: each task's lease and last checkpoint, as
//! `kafka-consumer-groups --describe` shows a group's members and offsets.

use std::process::ExitCode;

use serde_json::json;
use streamshield_client::{pb, Consistency};

use super::{emit, Args};

fn offsets(c: &pb::Checkpoint) -> String {
    c.input_offsets
        .iter()
        .map(|o| format!("{}/{}@{}", o.stream, o.partition, o.offset))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn run(args: &Args, job: &str) -> anyhow::Result<ExitCode> {
    let r = args
        .client()?
        .list_tasks(job, Consistency::Linearizable)
        .await?;
    let rows: Vec<_> = r
        .tasks
        .iter()
        .map(|t| {
            let cp = t.checkpoint.as_ref();
            json!({
                "task": t.task,
                "generation": t.generation,
                "key_groups": [t.key_group_start, t.key_group_end],
                "input_partitions": t.input_partitions.iter()
                    .map(|p| json!({"stream": p.stream, "partition": p.partition}))
                    .collect::<Vec<_>>(),
                "owner": t.owner,
                "released": t.released,
                "open_epochs": t.open_epochs,
                "promoting_epoch": (t.promoting_epoch > 0).then_some(t.promoting_epoch),
                "promoting_bytes_left": t.promoting_bytes_left,
                "committed_epoch": cp.map(|c| c.epoch),
                "input_offsets": cp.map(|c| c.input_offsets.iter()
                    .map(|o| json!({"stream": o.stream, "partition": o.partition, "offset": o.offset}))
                    .collect::<Vec<_>>()),
                "committed_at_ms": cp.map(|c| c.committed_at_ms),
            })
        })
        .collect();
    emit(args.json, json!({ "job": job, "tasks": rows }), || {
        let mut out = format!(
            "{:<6} {:<5} {:<13} {:<10} {:<10} {:<26} {}",
            "TASK", "GEN", "KEY GROUPS", "STATE", "EPOCH", "COMMITTED AT (ms)", "INPUT OFFSETS"
        );
        for t in &r.tasks {
            let cp = t.checkpoint.as_ref();
            out.push_str(&format!(
                "\n{:<6} {:<5} {:<13} {:<10} {:<10} {:<26} {}",
                t.task,
                t.generation,
                format!("[{}, {})", t.key_group_start, t.key_group_end),
                match (t.released, t.promoting_epoch) {
                    // Its last epoch is committed; reads of its key
                    // groups wait until it is in `data`.
                    (_, e) if e > 0 => "promoting",
                    (true, _) => "released",
                    (false, _) => "live",
                },
                cp.map_or("-".to_string(), |c| c.epoch.to_string()),
                cp.map_or("-".to_string(), |c| c.committed_at_ms.to_string()),
                cp.map_or("-".to_string(), offsets),
            ));
        }
        out
    });
    Ok(ExitCode::SUCCESS)
}
