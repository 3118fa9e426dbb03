//! Jobs and key/value commands.

use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use streamshield_client::{pb, ClientError, Consistency, ScanOptions, WriteBatch};

use super::{emit, Args};

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Create a job with a fixed number of key groups.
    Create {
        job: String,
        /// Fixed for the job's lifetime (like Flink's max parallelism).
        #[arg(long, default_value_t = 128)]
        key_groups: u32,
        /// A state table whose task-session writes are sync by default
        /// (acknowledged once committed, visible at once); repeatable.
        #[arg(long = "sync-table", value_name = "TABLE")]
        sync_tables: Vec<String>,
        /// A state table whose task-session writes are staged in the
        /// task's epoch (the default for tables not declared); repeatable.
        #[arg(long = "async-table", value_name = "TABLE")]
        async_tables: Vec<String>,
    },
    /// A job's key groups and state tables with their default write modes.
    Describe { job: String },
    /// Every job, in name order (only those this caller may read).
    List,
    /// Delete a job with its state, staged writes, tasks and streams.
    Delete {
        job: String,
        /// Even while tasks hold leases: they find their job gone at their
        /// next write or commit.
        #[arg(long)]
        force: bool,
    },
    /// Declare a state table of a job with its default write mode, or
    /// change it: leases acquired afterwards follow it.
    SetMode {
        job: String,
        table: String,
        #[arg(value_enum)]
        mode: ModeArg,
        /// For a new table: how it places keys in key groups. `prefix`:
        /// every key starts with a placement key, length first (a u16,
        /// big-endian), and only that places it. Fixed once the table exists.
        #[arg(long, value_enum)]
        placement: Option<PlacementArg>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PlacementArg {
    WholeKey,
    Prefix,
}

impl PlacementArg {
    fn to_pb(self) -> pb::KeyPlacement {
        match self {
            Self::WholeKey => pb::KeyPlacement::WholeKey,
            Self::Prefix => pb::KeyPlacement::Prefix,
        }
    }
}

fn placement_name(p: i32) -> &'static str {
    match pb::KeyPlacement::try_from(p) {
        Ok(pb::KeyPlacement::WholeKey) => "whole-key",
        Ok(pb::KeyPlacement::Prefix) => "prefix",
        Err(_) => "unknown",
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    Sync,
    Async,
}

impl ModeArg {
    fn to_pb(self) -> pb::WriteMode {
        match self {
            Self::Sync => pb::WriteMode::Sync,
            Self::Async => pb::WriteMode::Async,
        }
    }
}

fn mode_name(m: Option<i32>) -> &'static str {
    match m.map(pb::WriteMode::try_from) {
        Some(Ok(pb::WriteMode::Sync)) => "sync",
        Some(Ok(pb::WriteMode::Async)) => "async",
        Some(Err(_)) => "unknown",
        None => "async (not declared)",
    }
}

#[derive(ClapArgs, Debug)]
pub struct KeyArgs {
    pub job: String,
    pub state: String,
    pub key: String,
}

#[derive(ClapArgs, Debug)]
pub struct PutArgs {
    pub job: String,
    pub state: String,
    pub key: String,
    pub value: String,
    /// Only if the key does not exist yet.
    #[arg(long, conflicts_with_all = ["if_value", "if_version"])]
    pub if_absent: bool,
    /// Only if the key currently holds this value.
    #[arg(long)]
    pub if_value: Option<String>,
    /// Only if the key's version is this (0 = absent).
    #[arg(long)]
    pub if_version: Option<u64>,
}

#[derive(ClapArgs, Debug)]
pub struct GetArgs {
    pub job: String,
    pub state: String,
    pub key: String,
    /// Read from any replica, possibly behind the leader.
    #[arg(long)]
    pub stale: bool,
}

#[derive(ClapArgs, Debug)]
pub struct ScanArgs {
    pub job: String,
    pub state: String,
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Start after this key (for paging).
    #[arg(long, default_value = "")]
    pub start_after: String,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[arg(long)]
    pub stale: bool,
}

/// Bytes as a JSON string when they are UTF-8, else as `{"hex": ...}`.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

fn kv_json(kv: &pb::KeyValue) -> Value {
    json!({
        "key": bytes_json(&kv.key),
        "value": bytes_json(&kv.value),
        "version": kv.version,
        "mod_index": kv.mod_index,
        "key_group": kv.key_group,
    })
}

fn job_json(j: &pb::JobInfo) -> Value {
    json!({
        "job": j.job,
        "job_id": j.job_id,
        "key_groups": j.key_groups,
        "created_index": j.created_index,
        "states": j.states.iter().map(|s| json!({
            "name": s.name,
            "state_id": s.state_id,
            "default_mode": s.default_mode.map(|m| mode_name(Some(m))),
            "placement": placement_name(s.placement),
        })).collect::<Vec<_>>(),
    })
}

pub async fn jobs(args: &Args, cmd: &JobsCmd) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let info = match cmd {
        JobsCmd::List => {
            let jobs = client.list_jobs().await?;
            let rows: Vec<Value> = jobs
                .iter()
                .map(|j| {
                    json!({
                        "job": j.job,
                        "job_id": j.job_id,
                        "key_groups": j.key_groups,
                        "tables": j.tables,
                        "created_index": j.created_index,
                    })
                })
                .collect();
            emit(args.json, json!({ "jobs": rows }), || {
                let mut out = format!(
                    "{:<24} {:>8} {:>10} {:>7}",
                    "JOB", "ID", "KEY GROUPS", "TABLES"
                );
                for j in &jobs {
                    out.push_str(&format!(
                        "\n{:<24} {:>8} {:>10} {:>7}",
                        j.job, j.job_id, j.key_groups, j.tables
                    ));
                }
                out
            });
            return Ok(ExitCode::SUCCESS);
        }
        JobsCmd::Delete { job, force } => {
            let d = client.delete_job(job, *force).await?;
            emit(
                args.json,
                json!({
                    "job": job,
                    "job_id": d.job_id,
                    "index": d.index,
                    "leased_tasks": d.leased_tasks,
                }),
                || {
                    let mut out =
                        format!("deleted job {job} (id {}) at index {}", d.job_id, d.index);
                    if !d.leased_tasks.is_empty() {
                        out.push_str(&format!("; tasks {:?} held leases", d.leased_tasks));
                    }
                    out
                },
            );
            return Ok(ExitCode::SUCCESS);
        }
        JobsCmd::Create {
            job,
            key_groups,
            sync_tables,
            async_tables,
        } => {
            let tables: Vec<(&str, pb::WriteMode)> = sync_tables
                .iter()
                .map(|t| (t.as_str(), pb::WriteMode::Sync))
                .chain(
                    async_tables
                        .iter()
                        .map(|t| (t.as_str(), pb::WriteMode::Async)),
                )
                .collect();
            client
                .create_job_with_tables(job, *key_groups, &tables)
                .await?
        }
        JobsCmd::Describe { job } => client.describe_job(job).await?,
        JobsCmd::SetMode {
            job,
            table,
            mode,
            placement,
        } => {
            client
                .declare_table(job, table, mode.to_pb(), placement.map(PlacementArg::to_pb))
                .await?
        }
    };
    emit(args.json, job_json(&info), || {
        let states: Vec<String> = info
            .states
            .iter()
            .map(|s| match pb::KeyPlacement::try_from(s.placement) {
                Ok(pb::KeyPlacement::WholeKey) => {
                    format!("{} ({})", s.name, mode_name(s.default_mode))
                }
                _ => format!(
                    "{} ({}, {}-placed)",
                    s.name,
                    mode_name(s.default_mode),
                    placement_name(s.placement)
                ),
            })
            .collect();
        format!(
            "job {} (id {}): {} key groups, state tables: [{}]",
            info.job,
            info.job_id,
            info.key_groups,
            states.join(", ")
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn put(args: &Args, p: &PutArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let mut b = WriteBatch::new(&p.job);
    if p.if_absent {
        b = b.if_absent(&p.state, p.key.as_bytes());
    }
    if let Some(v) = &p.if_value {
        b = b.if_value(&p.state, p.key.as_bytes(), v.as_bytes());
    }
    if let Some(v) = p.if_version {
        b = b.if_version(&p.state, p.key.as_bytes(), v);
    }
    b = b.put(&p.state, p.key.as_bytes(), p.value.as_bytes());
    match client.write(b).await {
        Ok(r) => {
            let version = r.versions.first().copied().unwrap_or(0);
            emit(
                args.json,
                json!({"ok": true, "index": r.index, "version": version}),
                || format!("OK (version {version}, index {})", r.index),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::ConditionFailed { current, .. }) => {
            emit(
                args.json,
                json!({"ok": false, "condition_failed": true, "current": current.as_ref().map(kv_json)}),
                || match &current {
                    None => "condition failed: key is absent".to_string(),
                    Some(kv) => format!(
                        "condition failed: key holds {:?} (version {})",
                        String::from_utf8_lossy(&kv.value),
                        kv.version
                    ),
                },
            );
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn get(args: &Args, g: &GetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let consistency = if g.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let kv = client
        .get(&g.job, &g.state, g.key.as_bytes(), consistency)
        .await?;
    match kv {
        Some(kv) => {
            emit(
                args.json,
                json!({"found": true, "kv": kv_json(&kv)}),
                || String::from_utf8_lossy(&kv.value).into_owned(),
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            emit(args.json, json!({"found": false}), || {
                "(not found)".to_string()
            });
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn delete(args: &Args, k: &KeyArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let r = client.delete(&k.job, &k.state, k.key.as_bytes()).await?;
    emit(args.json, json!({"ok": true, "index": r.index}), || {
        format!("OK (index {})", r.index)
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn scan(args: &Args, s: &ScanArgs) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let opts = ScanOptions {
        prefix: s.prefix.as_bytes().to_vec(),
        start_after: s.start_after.as_bytes().to_vec(),
        limit: s.limit,
        consistency: if s.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        },
        key_groups: None,
    };
    let page = client.scan(&s.job, &s.state, opts).await?;
    emit(
        args.json,
        json!({
            "kvs": page.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            "more": page.more,
            "applied_index": page.applied_index,
        }),
        || {
            let mut out: Vec<String> = page
                .kvs
                .iter()
                .map(|kv| {
                    format!(
                        "{}\t{}",
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value)
                    )
                })
                .collect();
            if page.more {
                out.push("(more; continue with --start-after the last key)".into());
            }
            out.join("\n")
        },
    );
    Ok(ExitCode::SUCCESS)
}
