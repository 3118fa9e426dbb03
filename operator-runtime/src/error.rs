//! What can stop a task or a job, by what the caller does about it.

use streamshield_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The task's lease went to a newer generation: this copy is a zombie
    /// and must stop without writing anything more.
    #[error(
        "task {task} of stage {stage:?} was taken over (held generation {held}, current {current})"
    )]
    Fenced {
        stage: String,
        task: u32,
        held: u64,
        current: u64,
    },
    /// The state cluster refused or failed a call in a way a retry does
    /// not fix (bad input, a missing job or stream, no permission).
    #[error("state cluster: {0}")]
    Store(#[from] ClientError),
    /// A record of a runtime stream that does not decode: written by
    /// something other than the runtime.
    #[error("record at offset {offset} of {stream}/{partition} is not a runtime record: {why}")]
    BadRecord {
        stream: String,
        partition: u32,
        offset: u64,
        why: &'static str,
    },
    /// A state value that its codec cannot read (a changed type).
    #[error("state {state:?}: value does not decode: {why}")]
    BadState { state: String, why: String },
    /// A checkpoint's metadata that this runtime cannot read.
    #[error("checkpoint of task {task}: {why}")]
    BadCheckpoint { task: u32, why: String },
    #[error("job configuration: {0}")]
    Config(String),
    #[error("stage {0:?} is not part of the job")]
    UnknownStage(String),
    #[error("worker protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An operator's own failure.
    #[error("operator: {0}")]
    Operator(String),
}

impl RuntimeError {
    /// A store error the task waits out (leader change, lost quorum,
    /// overload) rather than fails on: an outage pauses tasks, it never
    /// restarts them.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RuntimeError::Store(
                ClientError::Unavailable { .. }
                    | ClientError::DeadlineExceeded(_)
                    | ClientError::MissingSeqs { .. }
                    | ClientError::Server { .. }
            )
        )
    }
}
