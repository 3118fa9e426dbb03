//! What can go wrong serving a request, and the one place where that
//! becomes a gRPC status.

use prost::Message;
use streamshield_proto::v1 as pb;
use tonic::{Code, Status};

use crate::service::peer_guard::PeerRefusal;

/// Why the cluster refused a membership change (openraft's
/// `ChangeMembershipError`, in terms of node ids and log indexes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipRefusal {
    #[error("the change at log index {} is not committed yet; retry once it is", pending.map_or("?".to_string(), |i| i.to_string()))]
    InProgress { pending: Option<u64> },
    #[error("the change would leave the cluster without a voter")]
    NoVoters,
    #[error("node {node} is not a learner yet: add it as a learner first")]
    NotALearner { node: u64 },
    #[error("voters {from:?} cannot become {to:?} in one step")]
    UnsupportedTransition {
        from: Vec<Vec<u64>>,
        to: Vec<Vec<u64>>,
    },
    /// A new leader's first entry (index `leader_entry`) is not committed
    /// yet; a change waits for it (Raft's single-server change rule).
    #[error(
        "the leader's first entry of its term (index {leader_entry}) is not committed yet; retry"
    )]
    LeaderNotSettled { leader_entry: u64 },
    #[error("node {node} is already a member at another address; remove it first")]
    AddressChanged { node: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Writes and linearizable reads go to the leader; the detail carries
    /// where it is so clients can go there directly.
    #[error("node {this} is not the leader (leader: {})", leader_id.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotLeader {
        this: u64,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("job {job:?} does not exist")]
    JobNotFound { job: String },
    #[error("state table {state:?} does not exist in job {job:?}")]
    StateNotFound { job: String, state: String },
    #[error("stream {stream:?} does not exist in job {job:?}")]
    StreamNotFound { job: String, stream: String },
    #[error("task {task} of job {job:?} holds no lease; acquire it first")]
    TaskNotFound { job: String, task: u32 },
    #[error("shard {shard} is not served by this cluster (it serves shard 0)")]
    UnknownShard { shard: u32 },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} is {size} bytes, above the limit of {limit}")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// No quorum, or the node is shutting down: retry elsewhere or later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("membership change refused: {0}")]
    Membership(MembershipRefusal),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The state machine refused the command; code and message come from it.
    #[error("{message}")]
    Rejected { code: Code, message: String },
    /// The local store failed; the node is unhealthy.
    #[error("storage failure: {0}")]
    Storage(#[from] std::io::Error),
    /// The node is saturated; the request was not taken.
    #[error("overloaded: {what}; retry in {retry_after_ms} ms")]
    Overloaded {
        what: &'static str,
        retry_after_ms: u32,
    },
    /// The state machine refused the command for now (key groups being
    /// promoted): nothing was applied; the same call succeeds later.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_ms: u32,
    },
    #[error("snapshot refused: {received} bytes received, above the limit of {limit}")]
    SnapshotTooLarge { received: u64, limit: u64 },
    #[error("refused: {free} bytes free on the data disk, below the reserve of {reserve}")]
    DiskNearlyFull { free: u64, reserve: u64 },
    /// The caller could not be identified: no certificate, or a bearer
    /// token the cluster does not know.
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: &'static str },
    /// The caller is known but holds no grant for what it asked.
    #[error("permission denied: {principal:?} may not {needs}; a cluster admin can grant it (`streamshield auth grant`)")]
    PermissionDenied { principal: String, needs: String },
    /// A task's write or commit under a generation a newer lease fenced.
    #[error("{message}")]
    StaleLease {
        held: u64,
        current: u64,
        message: String,
    },
    /// A commit found seqs of its epoch not staged.
    #[error("{message}")]
    MissingSeqs {
        epoch: u64,
        missing: Vec<pb::SeqRange>,
        message: String,
    },
    /// A Raft message this node will not hand to openraft.
    #[error("peer message refused: {0}")]
    PeerRefused(#[from] crate::service::peer_guard::PeerRefusal),
}

impl ServiceError {
    /// Apply answered a command with an answer of another kind: a bug,
    /// reported as UNAVAILABLE rather than a panic.
    pub fn unexpected_answer(what: &str, got: &pb::command_response::Kind) -> Self {
        Self::Unavailable(format!("apply answered a {what} with {got:?}"))
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same failure for another write of a shared proposal. A storage failure carries an `io::Error`, which cannot be
    /// cloned; its waiters hear UNAVAILABLE with its text.
    pub fn duplicate(&self) -> ServiceError {
        match self {
            Self::NotLeader {
                this,
                leader_id,
                leader_addr,
            } => Self::NotLeader {
                this: *this,
                leader_id: *leader_id,
                leader_addr: leader_addr.clone(),
            },
            Self::Timeout(d) => Self::Timeout(*d),
            Self::Membership(m) => Self::Membership(m.clone()),
            Self::Rejected { code, message } => Self::Rejected {
                code: *code,
                message: message.clone(),
            },
            Self::PermissionDenied { principal, needs } => Self::PermissionDenied {
                principal: principal.clone(),
                needs: needs.clone(),
            },
            Self::Unauthenticated { reason } => Self::Unauthenticated { reason },
            Self::StaleLease {
                held,
                current,
                message,
            } => Self::StaleLease {
                held: *held,
                current: *current,
                message: message.clone(),
            },
            Self::MissingSeqs {
                epoch,
                missing,
                message,
            } => Self::MissingSeqs {
                epoch: *epoch,
                missing: missing.clone(),
                message: message.clone(),
            },
            other => other
                .not_found()
                .and_then(Self::from_not_found)
                .unwrap_or_else(|| Self::Unavailable(other.to_string())),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::NotLeader { .. } | Self::Unavailable(_) => Code::Unavailable,
            Self::JobNotFound { .. }
            | Self::StateNotFound { .. }
            | Self::StreamNotFound { .. }
            | Self::TaskNotFound { .. }
            | Self::UnknownShard { .. } => Code::NotFound,
            Self::InvalidArgument { .. } | Self::TooLarge { .. } => Code::InvalidArgument,
            Self::Membership(_) | Self::StaleLease { .. } | Self::MissingSeqs { .. } => {
                Code::FailedPrecondition
            }
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Busy { .. } => Code::Unavailable,
            Self::Rejected { code, .. } => *code,
            Self::Storage(_) => Code::Internal,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::SnapshotTooLarge { .. }
            | Self::DiskNearlyFull { .. }
            | Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::PeerRefused(r) => match r {
                PeerRefusal::TermTooFarAhead { .. } => Code::OutOfRange,
                PeerRefusal::NotAVoter { .. }
                | PeerRefusal::FromItself { .. }
                | PeerRefusal::NotTheSender { .. } => Code::PermissionDenied,
            },
        }
    }
}

impl ServiceError {
    /// The typed detail of a NOT_FOUND: what was not found.
    pub fn not_found(&self) -> Option<pb::NotFound> {
        use pb::not_found::Kind;
        let d = |kind: Kind, job: &str| pb::NotFound {
            kind: kind as i32,
            job: job.to_string(),
            ..Default::default()
        };
        Some(match self {
            Self::JobNotFound { job } => d(Kind::Job, job),
            Self::StateNotFound { job, state } => pb::NotFound {
                name: state.clone(),
                ..d(Kind::State, job)
            },
            Self::StreamNotFound { job, stream } => pb::NotFound {
                name: stream.clone(),
                ..d(Kind::Stream, job)
            },
            Self::TaskNotFound { job, task } => pb::NotFound {
                task: *task,
                ..d(Kind::Task, job)
            },
            Self::UnknownShard { shard } => pb::NotFound {
                shard: *shard,
                ..d(Kind::Shard, "")
            },
            _ => return None,
        })
    }

    /// The error a NOT_FOUND detail stands for (`None` for a kind this
    /// build does not know).
    fn from_not_found(d: pb::NotFound) -> Option<Self> {
        use pb::not_found::Kind;
        Some(match Kind::try_from(d.kind).ok()? {
            Kind::Job => Self::JobNotFound { job: d.job },
            Kind::State => Self::StateNotFound {
                job: d.job,
                state: d.name,
            },
            Kind::Stream => Self::StreamNotFound {
                job: d.job,
                stream: d.name,
            },
            Kind::Task => Self::TaskNotFound {
                job: d.job,
                task: d.task,
            },
            Kind::Shard => Self::UnknownShard { shard: d.shard },
            Kind::Unspecified => return None,
        })
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = e.code();
        let message = e.to_string();
        let with = |kind| {
            let detail = pb::ErrorDetail { kind: Some(kind) };
            Status::with_details(code, message.clone(), detail.encode_to_vec().into())
        };
        match e {
            ServiceError::StaleLease { held, current, .. } => {
                with(pb::error_detail::Kind::StaleLease(pb::StaleLease {
                    held,
                    current,
                }))
            }
            ServiceError::MissingSeqs { epoch, missing, .. } => {
                with(pb::error_detail::Kind::MissingSeqs(pb::MissingSeqs {
                    epoch,
                    missing,
                }))
            }
            ServiceError::NotLeader {
                leader_id,
                leader_addr,
                ..
            } => with(pb::error_detail::Kind::NotLeader(pb::NotLeader {
                leader_id: leader_id.unwrap_or(0),
                leader_addr: leader_addr.unwrap_or_default(),
            })),
            ServiceError::Overloaded { retry_after_ms, .. }
            | ServiceError::Busy { retry_after_ms, .. } => {
                with(pb::error_detail::Kind::Overloaded(pb::Overloaded {
                    retry_after_ms,
                }))
            }
            e => match e.not_found() {
                Some(d) => with(pb::error_detail::Kind::NotFound(d)),
                None => Status::new(code, message),
            },
        }
    }
}

/// One failed item of a WriteMany or GetMany: what a unary call with that
/// item alone would have failed with.
pub fn item_error(e: ServiceError) -> pb::ItemError {
    status_item(&Status::from(e))
}

/// A status carried inside a message (an item of a many-call, an answer
/// on a session), with its code, message and details intact.
pub fn status_item(s: &Status) -> pb::ItemError {
    pb::ItemError {
        code: s.code() as i32,
        message: s.message().to_string(),
        details: s.details().to_vec(),
    }
}

/// A command answer from the state machine that is an error, with its
/// typed detail when it has one.
pub fn rejected(e: &pb::CommandError) -> ServiceError {
    let message = e.message.clone();
    let detail = (!e.details.is_empty())
        .then(|| pb::ErrorDetail::decode(e.details.as_slice()).ok())
        .flatten()
        .and_then(|d| d.kind);
    match detail {
        Some(pb::error_detail::Kind::StaleLease(s)) => ServiceError::StaleLease {
            held: s.held,
            current: s.current,
            message,
        },
        Some(pb::error_detail::Kind::MissingSeqs(m)) => ServiceError::MissingSeqs {
            epoch: m.epoch,
            missing: m.missing,
            message,
        },
        Some(pb::error_detail::Kind::Overloaded(o)) => ServiceError::Busy {
            message,
            retry_after_ms: o.retry_after_ms,
        },
        Some(pb::error_detail::Kind::NotFound(d)) => {
            ServiceError::from_not_found(d).unwrap_or(ServiceError::Rejected {
                code: Code::from_i32(e.code),
                message,
            })
        }
        _ => ServiceError::Rejected {
            code: Code::from_i32(e.code),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_hint() {
        let s: Status = ServiceError::NotLeader {
            this: 2,
            leader_id: Some(3),
            leader_addr: Some("127.0.0.1:9".into()),
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        let d = pb::ErrorDetail::decode(s.details()).unwrap();
        match d.kind {
            Some(pb::error_detail::Kind::NotLeader(n)) => {
                assert_eq!(n.leader_id, 3);
                assert_eq!(n.leader_addr, "127.0.0.1:9");
            }
            other => panic!("unexpected detail {other:?}"),
        }
    }

    #[test]
    fn codes_are_precise() {
        assert_eq!(
            Status::from(ServiceError::JobNotFound { job: "x".into() }).code(),
            Code::NotFound
        );
        assert_eq!(
            Status::from(ServiceError::TooLarge {
                what: "key".into(),
                size: 5,
                limit: 4
            })
            .code(),
            Code::InvalidArgument
        );
    }
}
