//! Errors a client call ends with, by what the caller should do about them.

use streamshield_proto::v1 as pb;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could serve the call before the deadline (no leader, no
    /// quorum, nodes down). For a write the outcome is unknown: it may
    /// still have been applied.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// The call's own deadline passed; for a write the outcome is unknown.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("not found: {0}")]
    NotFound(Missing),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A condition of a conditional write did not hold; nothing was written.
    #[error("condition {failed_condition} failed (current: {})", describe(current))]
    ConditionFailed {
        failed_condition: u32,
        current: Option<pb::KeyValue>,
    },
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The task's lease was taken over: generation `held` was fenced by
    /// `current`. Nothing of the call was applied; the task must stop.
    #[error("stale lease: generation {held} was fenced by generation {current}")]
    StaleLease { held: u64, current: u64 },
    /// A commit found seqs of its epoch not staged; nothing was committed.
    #[error("epoch {epoch} is missing staged seqs {missing:?}")]
    MissingSeqs {
        epoch: u64,
        /// `(first, last)`, inclusive.
        missing: Vec<(u64, u64)>,
    },
    /// The cluster forgot this client's deduplication session (it was idle
    /// past the session TTL) while a write's outcome was unknown: whether
    /// that write applied cannot be known any more.
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// No certificate of the cluster's CA and no known bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller holds no grant for the call; nothing was done.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("server error ({code:?}): {message}")]
    Server { code: Code, message: String },
}

/// What a NOT_FOUND could not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("job {job:?} does not exist")]
    Job { job: String },
    #[error("state table {state:?} does not exist in job {job:?}")]
    State { job: String, state: String },
    #[error("stream {stream:?} does not exist in job {job:?}")]
    Stream { job: String, stream: String },
    #[error("task {task} of job {job:?} holds no lease")]
    Task { job: String, task: u32 },
    #[error("shard {shard} is not served by this cluster")]
    Shard { shard: u32 },
    /// A NOT_FOUND without a detail this client knows (a node of another
    /// version, or something between client and node): its message.
    #[error("{0}")]
    Unspecified(String),
}

impl Missing {
    fn from_detail(d: pb::NotFound, message: String) -> Self {
        use pb::not_found::Kind;
        match Kind::try_from(d.kind) {
            Ok(Kind::Job) => Self::Job { job: d.job },
            Ok(Kind::State) => Self::State {
                job: d.job,
                state: d.name,
            },
            Ok(Kind::Stream) => Self::Stream {
                job: d.job,
                stream: d.name,
            },
            Ok(Kind::Task) => Self::Task {
                job: d.job,
                task: d.task,
            },
            Ok(Kind::Shard) => Self::Shard { shard: d.shard },
            Ok(Kind::Unspecified) | Err(_) => Self::Unspecified(message),
        }
    }
}

fn describe(kv: &Option<pb::KeyValue>) -> String {
    match kv {
        None => "absent".to_string(),
        Some(kv) => format!("version {}", kv.version),
    }
}

impl ClientError {
    /// Maps a final (not retried) status.
    pub fn from_status(s: &Status) -> Self {
        let m = s.message().to_string();
        if !s.details().is_empty() {
            use prost::Message;
            match pb::ErrorDetail::decode(s.details())
                .ok()
                .and_then(|d| d.kind)
            {
                Some(pb::error_detail::Kind::StaleLease(l)) => {
                    return Self::StaleLease {
                        held: l.held,
                        current: l.current,
                    }
                }
                Some(pb::error_detail::Kind::MissingSeqs(g)) => {
                    return Self::MissingSeqs {
                        epoch: g.epoch,
                        missing: g.missing.iter().map(|r| (r.first, r.last)).collect(),
                    }
                }
                Some(pb::error_detail::Kind::NotFound(d)) if s.code() == Code::NotFound => {
                    return Self::NotFound(Missing::from_detail(d, m))
                }
                _ => {}
            }
        }
        match s.code() {
            Code::NotFound => Self::NotFound(Missing::Unspecified(m)),
            Code::AlreadyExists => Self::AlreadyExists(m),
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(m),
            // The server's message starts so (`SESSION_EXPIRED` in the
            // state machine).
            Code::FailedPrecondition if m.starts_with("dedupe session expired") => {
                Self::SessionExpired(m)
            }
            Code::FailedPrecondition => Self::FailedPrecondition(m),
            Code::Unauthenticated => Self::Unauthenticated(m),
            Code::PermissionDenied => Self::PermissionDenied(m),
            Code::DeadlineExceeded => Self::DeadlineExceeded(m),
            Code::Unavailable => Self::Unavailable {
                attempts: 1,
                last: m,
            },
            code => Self::Server { code, message: m },
        }
    }

    /// The gRPC code this error stands for, for callers that report codes.
    pub fn code(&self) -> Code {
        match self {
            Self::Unavailable { .. } => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::InvalidArgument(_) | Self::BadEndpoint { .. } => Code::InvalidArgument,
            Self::ConditionFailed { .. }
            | Self::FailedPrecondition(_)
            | Self::SessionExpired(_)
            | Self::StaleLease { .. }
            | Self::MissingSeqs { .. } => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Server { code, .. } => *code,
        }
    }
}
