//! Short `Display` forms for messages that Raft logs and traces print.

use std::fmt;

use crate::v1::{command, command_response, Command, CommandResponse, LeaseRef};

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(command::Kind::Write(w)) => write!(
                f,
                "write(job={}, ops={}, conditions={}, client={}, seq={})",
                w.job,
                w.ops.len(),
                w.conditions.len(),
                w.client_id,
                w.seq
            ),
            Some(command::Kind::CreateJob(c)) => {
                write!(f, "create_job({}, key_groups={})", c.job, c.key_groups)
            }
            Some(command::Kind::Batch(b)) => write!(f, "batch(writes={})", b.writes.len()),
            Some(command::Kind::OwnedWrites(b)) => {
                write!(f, "owned_writes(writes={})", b.writes.len())
            }
            // No secret is in a command, but principals need not be in logs.
            Some(command::Kind::Auth(_)) => write!(f, "auth_change"),
            Some(command::Kind::ExpireSessions(e)) => {
                write!(f, "expire_sessions(idle_ms={})", e.idle_ms)
            }
            Some(command::Kind::AcquireLease(a)) => write!(
                f,
                "acquire_lease(job={}, task={}, key_groups={}..{})",
                a.job, a.task, a.key_group_start, a.key_group_end
            ),
            Some(command::Kind::StageWrites(s)) => {
                let (job, task, gen) = lease_of(s.lease.as_ref());
                write!(
                    f,
                    "stage_writes(job={job}, task={task}, gen={gen}, epoch={}, seq_from={}, ops={})",
                    s.epoch,
                    s.seq_from,
                    s.ops.len()
                )
            }
            Some(command::Kind::CommitEpoch(c)) => {
                let (job, task, gen) = lease_of(c.lease.as_ref());
                write!(
                    f,
                    "commit_epoch(job={job}, task={task}, gen={gen}, epoch={}, last_seq={})",
                    c.epoch, c.last_seq
                )
            }
            Some(command::Kind::ReleaseLease(r)) => {
                let (job, task, gen) = lease_of(r.lease.as_ref());
                write!(f, "release_lease(job={job}, task={task}, gen={gen})")
            }
            Some(command::Kind::CreateStream(c)) => write!(
                f,
                "create_stream(job={}, stream={}, partitions={})",
                c.job, c.stream, c.partitions
            ),
            Some(command::Kind::Append(a)) => write!(
                f,
                "append(job={}, stream={}, partition={}, records={})",
                a.job,
                a.stream,
                a.partition,
                a.records.len()
            ),
            Some(command::Kind::TrimStream(t)) => write!(
                f,
                "trim_stream(job={}, stream={}, partition={}, before={})",
                t.job, t.stream, t.partition, t.before_offset
            ),
            Some(command::Kind::Commands(l)) => write!(f, "commands({})", l.commands.len()),
            Some(command::Kind::SetTableMode(t)) => write!(
                f,
                "set_table_mode(job={}, state={}, mode={}, placement={:?})",
                t.job, t.state, t.mode, t.placement
            ),
            Some(command::Kind::PromoteEpoch(p)) => write!(
                f,
                "promote_epoch(job={}, task={}, gen={}, epoch={})",
                p.job, p.task, p.generation, p.epoch
            ),
            Some(command::Kind::RegisterClient(_)) => write!(f, "register_client"),
            Some(command::Kind::DeleteStream(d)) => {
                write!(f, "delete_stream({}/{})", d.job, d.stream)
            }
            Some(command::Kind::DeleteJob(d)) => {
                write!(
                    f,
                    "delete_job({}{})",
                    d.job,
                    if d.force { ", force" } else { "" }
                )
            }
            None => write!(f, "empty"),
        }
    }
}

fn lease_of(l: Option<&LeaseRef>) -> (&str, u32, u64) {
    l.map_or(("?", 0, 0), |l| (l.job.as_str(), l.task, l.generation))
}

impl fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(command_response::Kind::Write(w)) => {
                write!(f, "write(succeeded={}, index={})", w.succeeded, w.index)
            }
            Some(command_response::Kind::JobCreated(j)) => write!(f, "job_created({})", j.job),
            Some(command_response::Kind::JobDeleted(d)) => write!(f, "job_deleted({})", d.job_id),
            Some(command_response::Kind::StreamDeleted(id)) => write!(f, "stream_deleted({id})"),
            Some(command_response::Kind::Error(e)) => write!(f, "error({}: {})", e.code, e.message),
            Some(command_response::Kind::Batch(b)) => {
                write!(f, "batch(answers={})", b.answers.len())
            }
            Some(command_response::Kind::AuthChanged(c)) => write!(f, "auth_changed({c})"),
            Some(command_response::Kind::SessionsExpired(n)) => {
                write!(f, "sessions_expired({n})")
            }
            Some(command_response::Kind::LeaseGranted(l)) => {
                write!(f, "lease_granted(gen={})", l.generation)
            }
            Some(command_response::Kind::StagedThrough(n)) => write!(f, "staged_through({n})"),
            Some(command_response::Kind::EpochCommitted(e)) => write!(
                f,
                "epoch_committed(epoch={}, already={}, promoting={})",
                e.epoch, e.already_committed, e.promoting
            ),
            Some(command_response::Kind::LeaseReleased(r)) => write!(f, "lease_released({r})"),
            Some(command_response::Kind::StreamCreated(s)) => {
                write!(f, "stream_created({})", s.name)
            }
            Some(command_response::Kind::Appended(a)) => write!(
                f,
                "appended(base={}, duplicate={})",
                a.base_offset, a.duplicate
            ),
            Some(command_response::Kind::TrimmedTo(o)) => write!(f, "trimmed_to({o})"),
            Some(command_response::Kind::TableModeSet(j)) => {
                write!(f, "table_mode_set({}, tables={})", j.job, j.states.len())
            }
            Some(command_response::Kind::PromotionStep(p)) => {
                write!(
                    f,
                    "promotion_step(promoted={}, done={})",
                    p.promoted, p.done
                )
            }
            Some(command_response::Kind::ClientRegistered(id)) => {
                write!(f, "client_registered({id})")
            }
            Some(command_response::Kind::None(_)) | None => write!(f, "none"),
        }
    }
}
