//! Short `Display` forms for messages that Raft logs and traces print.

use std::fmt;

use crate::v1::{command, command_response, Command, CommandResponse};

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
            None => write!(f, "empty"),
        }
    }
}

impl fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(command_response::Kind::Write(w)) => {
                write!(f, "write(succeeded={}, index={})", w.succeeded, w.index)
            }
            Some(command_response::Kind::JobCreated(j)) => write!(f, "job_created({})", j.job),
            Some(command_response::Kind::Error(e)) => write!(f, "error({}: {})", e.code, e.message),
            Some(command_response::Kind::Batch(b)) => {
                write!(f, "batch(answers={})", b.answers.len())
            }
            Some(command_response::Kind::AuthChanged(c)) => write!(f, "auth_changed({c})"),
            Some(command_response::Kind::SessionsExpired(n)) => {
                write!(f, "sessions_expired({n})")
            }
            Some(command_response::Kind::None(_)) | None => write!(f, "none"),
        }
    }
}
