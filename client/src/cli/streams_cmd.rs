//! `streamshield streams ...`: create, describe, append to and follow
//! the partitioned logs of a job.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use streamshield_client::{pb, Producer, Retention};

use super::{emit, Args};

#[derive(Subcommand, Debug)]
pub enum StreamsCmd {
    /// Create a stream with a fixed number of partitions.
    Create {
        job: String,
        stream: String,
        #[arg(long)]
        partitions: u32,
        /// Keep at most this many bytes of records per partition, dropping
        /// the oldest (0: keep everything).
        #[arg(long, default_value_t = 0)]
        retention_bytes: u64,
        /// Drop records older than this many milliseconds, as Kafka's
        /// retention.ms (0: keep them).
        #[arg(long, default_value_t = 0)]
        retention_ms: u64,
    },
    /// Per partition: start and end offset, bytes held.
    Describe { job: String, stream: String },
    /// Every stream of a job.
    List { job: String },
    /// Delete a stream with its records (as `kafka-topics --delete`).
    Delete { job: String, stream: String },
    /// Append one record (sync: printed once committed).
    Append {
        job: String,
        stream: String,
        value: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// The record's key (`--key` is the TLS key's flag).
        #[arg(long = "record-key", default_value = "")]
        record_key: String,
        /// With --producer-seq: a retry with the same pair appends nothing twice.
        #[arg(long, requires = "producer_seq")]
        producer_id: Option<u64>,
        #[arg(long, requires = "producer_id")]
        producer_seq: Option<u64>,
    },
    /// Print each committed record of a partition from an offset, then
    /// follow new ones until Ctrl-C.
    Tail {
        job: String,
        stream: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
    },
}

pub async fn run(args: &Args, cmd: &StreamsCmd) -> anyhow::Result<ExitCode> {
    let c = args.client()?;
    match cmd {
        StreamsCmd::List { job } => {
            let streams = c.list_streams(job).await?;
            let rows: Vec<serde_json::Value> = streams
                .iter()
                .map(|s| {
                    json!({
                        "stream": s.name,
                        "partitions": s.partitions,
                        "retention_bytes": s.retention_bytes,
                        "retention_ms": s.retention_ms,
                        "created_index": s.created_index,
                    })
                })
                .collect();
            emit(args.json, json!({ "streams": rows }), || {
                let mut out = format!(
                    "{:<24} {:>10} {:>16}",
                    "STREAM", "PARTITIONS", "RETENTION BYTES"
                );
                for s in &streams {
                    out.push_str(&format!(
                        "\n{:<24} {:>10} {:>16}",
                        s.name, s.partitions, s.retention_bytes
                    ));
                }
                out
            });
        }
        StreamsCmd::Delete { job, stream } => {
            let index = c.delete_stream(job, stream).await?;
            emit(
                args.json,
                json!({ "job": job, "stream": stream, "index": index }),
                || format!("deleted stream {stream} of job {job} at index {index}"),
            );
        }
        StreamsCmd::Create {
            job,
            stream,
            partitions,
            retention_bytes,
            retention_ms,
        } => {
            let retention = Retention {
                bytes: *retention_bytes,
                ms: *retention_ms,
            };
            let s = c
                .create_stream_with_retention(job, stream, *partitions, retention)
                .await?;
            emit(args.json, stream_json(&s), || {
                format!(
                    "created stream {} with {} partitions",
                    s.stream, s.partitions
                )
            });
        }
        StreamsCmd::Describe { job, stream } => {
            let s = c.describe_stream(job, stream).await?;
            emit(args.json, stream_json(&s), || {
                let mut out = format!(
                    "stream {} ({} partitions, retention {})\n{:<10} {:<14} {:<14} {}",
                    s.stream,
                    s.partitions,
                    match s.retention_bytes {
                        0 => "unbounded".to_string(),
                        b => format!("{b} bytes"),
                    },
                    "PARTITION",
                    "START",
                    "END",
                    "BYTES"
                );
                for p in &s.partition_info {
                    out.push_str(&format!(
                        "\n{:<10} {:<14} {:<14} {}",
                        p.partition, p.start_offset, p.end_offset, p.bytes
                    ));
                }
                out
            });
        }
        StreamsCmd::Append {
            job,
            stream,
            value,
            partition,
            record_key,
            producer_id,
            producer_seq,
        } => {
            let producer = producer_id
                .zip(*producer_seq)
                .map(|(id, seq)| Producer { id, seq });
            let record = pb::Record {
                key: record_key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            };
            let r = c
                .append(job, stream, *partition, vec![record], producer)
                .await?;
            emit(
                args.json,
                json!({"offset": r.base_offset, "duplicate": r.duplicate, "index": r.index}),
                || match r.duplicate {
                    true => format!("offset {} (a retry: appended before)", r.base_offset),
                    false => format!("offset {}", r.base_offset),
                },
            );
        }
        StreamsCmd::Tail {
            job,
            stream,
            partition,
            from,
            max,
        } => {
            let mut next = *from;
            let mut printed = 0u64;
            'follow: loop {
                let mut sub = match c.subscribe(job, stream, *partition, next).await {
                    Ok(sub) => sub,
                    Err(e) => return Err(e.into()),
                };
                loop {
                    let page = match sub.message().await {
                        Ok(Some(page)) => page,
                        // The node went away or ended the stream: go on
                        // from the next offset, wherever the leader is.
                        Ok(None) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue 'follow;
                        }
                    };
                    for r in page.records {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        emit(
                            args.json,
                            json!({"offset": r.offset, "key": text(&r.key), "value": text(&r.value), "timestamp_ms": r.timestamp_ms}),
                            || match r.key.is_empty() {
                                true => format!("{}\t{}", r.offset, text(&r.value)),
                                false => {
                                    format!("{}\t{}\t{}", r.offset, text(&r.key), text(&r.value))
                                }
                            },
                        );
                        next = r.offset + 1;
                        printed += 1;
                        if max.is_some_and(|m| printed >= m) {
                            break 'follow;
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stream_json(s: &pb::StreamInfo) -> serde_json::Value {
    json!({
        "stream": s.stream,
        "partitions": s.partitions,
        "retention_bytes": s.retention_bytes,
        "retention_ms": s.retention_ms,
        "partition_info": s.partition_info.iter().map(|p| json!({
            "partition": p.partition,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
            "bytes": p.bytes,
        })).collect::<Vec<_>>(),
    })
}
