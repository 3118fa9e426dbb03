//! Status, membership and snapshot commands.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use streamshield_client::pb;

use super::{emit, Args};

#[derive(Subcommand, Debug)]
pub enum MembersCmd {
    /// Members as the leader sees them.
    List,
    /// Add a running node: first as a learner until it has caught up, then
    /// as a voter (unless --learner).
    Add {
        id: u64,
        addr: String,
        /// Leave it a learner (no vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the voters (and from the cluster).
    Remove { id: u64 },
}

pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role).unwrap_or(pb::Role::Unknown) {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Learner => "learner",
        pb::Role::Candidate => "candidate",
        pb::Role::Shutdown => "shutdown",
        pb::Role::Unknown => "unknown",
    }
}

pub async fn status(args: &Args) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let all = client.cluster_status().await;
    let mut rows = Vec::new();
    let mut table = vec![format!(
        "{:<4} {:<22} {:<11} {:>5} {:>6} {:>10} {:>10} {:>10}",
        "ID", "ADDR", "ROLE", "TERM", "LEADER", "LAST_LOG", "COMMITTED", "APPLIED"
    )];
    let mut any_ok = false;
    for (addr, r) in &all {
        match r {
            Ok(s) => {
                any_ok = true;
                rows.push(json!({
                    "id": s.id, "addr": s.addr, "role": role_name(s.role), "term": s.term,
                    "leader_id": s.leader_id, "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index, "last_applied": s.last_applied,
                    "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                    "snapshots_installed": s.snapshots_installed,
                }));
                table.push(format!(
                    "{:<4} {:<22} {:<11} {:>5} {:>6} {:>10} {:>10} {:>10}",
                    s.id,
                    s.addr,
                    role_name(s.role),
                    s.term,
                    s.leader_id,
                    s.last_log_index,
                    s.committed_index,
                    s.last_applied
                ));
            }
            Err(e) => {
                rows.push(json!({"addr": addr, "role": "unreachable", "error": e.to_string()}));
                table.push(format!("{:<4} {:<22} {:<11} {e}", "-", addr, "unreachable"));
            }
        }
    }
    emit(args.json, json!({"nodes": rows}), || table.join("\n"));
    Ok(if any_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn members_json(m: &[pb::Member]) -> serde_json::Value {
    json!(m
        .iter()
        .map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
        .collect::<Vec<_>>())
}

fn members_text(m: &[pb::Member]) -> String {
    m.iter()
        .map(|m| {
            format!(
                "{} {} {}",
                m.id,
                m.addr,
                if m.voter { "voter" } else { "learner" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn members(args: &Args, cmd: &MembersCmd) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let resp = match cmd {
        MembersCmd::List => {
            let (_, leader) = client.wait_for_leader().await?;
            let s = client.node_status(&leader).await?;
            pb::MembershipResponse {
                index: s.committed_index,
                members: s.members,
            }
        }
        MembersCmd::Add { id, addr, learner } => {
            let r = client.add_learner(*id, addr, true).await?;
            if *learner {
                r
            } else {
                let mut voters: Vec<u64> =
                    r.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
                voters.push(*id);
                client.change_membership(voters, false).await?
            }
        }
        MembersCmd::Remove { id } => {
            let (_, leader) = client.wait_for_leader().await?;
            let s = client.node_status(&leader).await?;
            let voters: Vec<u64> = s
                .members
                .iter()
                .filter(|m| m.voter && m.id != *id)
                .map(|m| m.id)
                .collect();
            client.change_membership(voters, false).await?
        }
    };
    emit(
        args.json,
        json!({"index": resp.index, "members": members_json(&resp.members)}),
        || members_text(&resp.members),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshot(args: &Args, node: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let targets: Vec<String> = match node {
        Some(n) => vec![n.to_string()],
        None => client.endpoints().to_vec(),
    };
    let mut rows = Vec::new();
    let mut text = Vec::new();
    for t in targets {
        let idx = client.trigger_snapshot(&t).await?;
        rows.push(json!({"addr": t, "snapshot_index": idx}));
        text.push(format!("{t}: snapshot at index {idx}"));
    }
    emit(args.json, json!({"snapshots": rows}), || text.join("\n"));
    Ok(ExitCode::SUCCESS)
}

pub async fn save_snapshot(
    args: &Args,
    node: Option<&str>,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    let addr = match node {
        Some(n) => n.to_string(),
        None => client.wait_for_leader().await?.1,
    };
    let s = client.save_snapshot(&addr, dir).await?;
    emit(
        args.json,
        json!({
            "addr": addr,
            "dir": dir.display().to_string(),
            "index": s.index,
            "term": s.term,
            "files": s.files,
            "bytes": s.bytes,
        }),
        || {
            format!(
                "saved the snapshot of {addr} at index {} (term {}) to {}: {} files, {} bytes",
                s.index,
                s.term,
                dir.display(),
                s.files,
                s.bytes
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}
