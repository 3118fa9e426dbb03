//! Applying one committed command to the state machine.
//!
//! Runs identically on every replica: it reads only replicated state and
//! the entry, and stages its effects in [`PendingWrites`] that the caller
//! commits together with the applied index. A command that cannot apply
//! (unknown job, failed condition, stale lease) changes nothing but its
//! answer, which is recorded for deduplication like any other.
//!
//! This module dispatches; each concern has its own file: `kv` (client
//! writes and their deduplication), `jobs` (jobs and state tables),
//! `leases` (task leases and the generation fence), `epochs` (staged
//! writes and epoch commits), `promotion` (large epochs moved into `data`
//! in steps after their commit), `streams` (partitioned logs and their
//! offsets) and `job_removal` (a job deleted with all it holds).

mod epochs;
#[cfg(test)]
mod fixture;
mod job_removal;
#[cfg(test)]
mod job_removal_tests;
mod jobs;
mod kv;
mod leased_writes;
mod leases;
#[cfg(test)]
mod output_tests;
#[cfg(test)]
mod placement_tests;
pub mod promotion;
#[cfg(test)]
mod promotion_tests;
#[cfg(test)]
mod retention_tests;
mod run_encoder;
#[cfg(test)]
mod stream_removal_tests;
mod streams;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod tests;

use std::io;

use streamshield_proto::v1::{self as pb, command, command_response};
use tonic::Code;

use super::pending::PendingWrites;
use super::sessions;

pub use self::kv::SESSION_EXPIRED;

pub fn error_response(code: Code, message: impl Into<String>) -> pb::CommandResponse {
    refusal(code, message, None)
}

/// A NOT_FOUND refusal whose detail says what was not found.
pub fn not_found(what: crate::error::ServiceError) -> pb::CommandResponse {
    refusal(
        Code::NotFound,
        what.to_string(),
        what.not_found().map(pb::error_detail::Kind::NotFound),
    )
}

/// A refusal with a typed detail the client acts on.
pub fn refusal(
    code: Code,
    message: impl Into<String>,
    detail: Option<pb::error_detail::Kind>,
) -> pb::CommandResponse {
    use prost::Message;
    pb::CommandResponse {
        kind: Some(command_response::Kind::Error(pb::CommandError {
            code: code as i32,
            message: message.into(),
            details: detail
                .map(|kind| pb::ErrorDetail { kind: Some(kind) }.encode_to_vec())
                .unwrap_or_default(),
        })),
    }
}

/// Applies `cmd` carried by the entry at `index`, staging its effects.
/// An `Err` is a storage failure (the node must stop), never a bad command.
pub fn apply_command(
    p: &mut PendingWrites,
    index: u64,
    cmd: &pb::Command,
) -> io::Result<pb::CommandResponse> {
    apply_at(
        p,
        At {
            index,
            time_ms: 0,
            format: crate::command::FORMAT,
        },
        cmd,
    )
}

/// Like [`apply_command`], at the leader time of the entry. An
/// `ExpireSessions` needs the store itself in step with every earlier
/// entry (see [`sessions::expire`]); the caller sees to that.
pub fn apply_at(
    p: &mut PendingWrites,
    at: At,
    cmd: &pb::Command,
) -> io::Result<pb::CommandResponse> {
    let batch = |answers| pb::CommandResponse {
        kind: Some(command_response::Kind::Batch(pb::BatchAnswers { answers })),
    };
    match &cmd.kind {
        Some(command::Kind::Write(w)) => kv::apply_write(p, at, None, w),
        Some(command::Kind::CreateJob(c)) => jobs::create_job(p, at, c),
        Some(command::Kind::Batch(b)) => {
            let mut answers = Vec::with_capacity(b.writes.len());
            for w in &b.writes {
                answers.push(kv::apply_write(p, at, None, w)?);
            }
            Ok(batch(answers))
        }
        Some(command::Kind::OwnedWrites(b)) => {
            let mut answers = Vec::with_capacity(b.writes.len());
            for o in &b.writes {
                answers.push(match &o.write {
                    Some(w) => kv::apply_write(p, at, Some(&o.principal), w)?,
                    None => error_response(Code::InvalidArgument, "an owned write without a write"),
                });
            }
            Ok(batch(answers))
        }
        Some(command::Kind::Auth(change)) => super::auth::apply(p, at.index, change),
        Some(command::Kind::ExpireSessions(e)) => {
            let db = p.db();
            let n = sessions::expire(p, db, at.time_ms, e.idle_ms)?;
            Ok(pb::CommandResponse {
                kind: Some(command_response::Kind::SessionsExpired(n)),
            })
        }
        Some(command::Kind::AcquireLease(a)) => leases::acquire(p, at, a),
        Some(command::Kind::ReleaseLease(r)) => leases::release(p, r),
        Some(command::Kind::StageWrites(s)) => epochs::stage(p, at, s),
        Some(command::Kind::CommitEpoch(c)) => epochs::commit(p, at, c),
        Some(command::Kind::CreateStream(c)) => streams::create(p, at, c),
        Some(command::Kind::Append(a)) => streams::append(p, at, a),
        Some(command::Kind::TrimStream(t)) => streams::trim(p, t),
        Some(command::Kind::DeleteStream(d)) => streams::delete(p, d),
        Some(command::Kind::PromoteEpoch(s)) => promotion::step(p, at, s),
        Some(command::Kind::SetTableMode(s)) => jobs::set_table_mode(p, at, s),
        Some(command::Kind::DeleteJob(d)) => job_removal::delete_job(p, d),
        Some(command::Kind::RegisterClient(r)) => {
            Ok(match sessions::register(p, at.time_ms, &r.principal)? {
                Some(id) => pb::CommandResponse {
                    kind: Some(command_response::Kind::ClientRegistered(id)),
                },
                None => error_response(Code::ResourceExhausted, "no client id is left to hand out"),
            })
        }
        Some(command::Kind::Commands(list)) => {
            let mut answers = Vec::with_capacity(list.commands.len());
            for c in &list.commands {
                answers.push(match c.kind {
                    // An expiry reads the store itself and must start a
                    // chunk (`needs_store_in_step`), which it cannot
                    // inside a list.
                    Some(command::Kind::Commands(_) | command::Kind::ExpireSessions(_)) => {
                        error_response(Code::InvalidArgument, "not a command for a command list")
                    }
                    _ => apply_at(p, at, c)?,
                });
            }
            Ok(batch(answers))
        }
        None => Ok(error_response(Code::InvalidArgument, "empty command")),
    }
}

/// Where in the log a command is applied: its entry's index, the
/// proposing leader's clock (0 in entries from before the header) and the
/// entry's state-machine format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub index: u64,
    pub time_ms: u64,
    pub format: u32,
}
