//! Building one atomic write: ops applied all-or-nothing under conditions.

use streamshield_proto::v1::{self as pb, condition, op};

/// Ops and conditions on one job, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub(crate) job: String,
    pub(crate) ops: Vec<pb::Op>,
    pub(crate) conditions: Vec<pb::Condition>,
    pub(crate) lease: Option<pb::TaskLease>,
}

impl WriteBatch {
    pub fn new(job: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            ..Default::default()
        }
    }

    /// Fenced by a task's lease: refused with `StaleLease` once a newer
    /// generation took the task, and every key must be in its key groups.
    pub fn with_lease(mut self, task: u32, generation: u64) -> Self {
        self.lease = Some(pb::TaskLease { task, generation });
        self
    }

    pub fn put(mut self, state: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(pb::Op {
            state: state.into(),
            key: key.into(),
            kind: Some(op::Kind::Put(pb::Put {
                value: value.into(),
            })),
        });
        self
    }

    pub fn delete(mut self, state: &str, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(pb::Op {
            state: state.into(),
            key: key.into(),
            kind: Some(op::Kind::Delete(pb::Delete {})),
        });
        self
    }

    fn require(mut self, state: &str, key: impl Into<Vec<u8>>, test: condition::Test) -> Self {
        self.conditions.push(pb::Condition {
            state: state.into(),
            key: key.into(),
            test: Some(test),
        });
        self
    }

    /// Only if the key does not exist.
    pub fn if_absent(self, state: &str, key: impl Into<Vec<u8>>) -> Self {
        self.require(state, key, condition::Test::Absent(true))
    }

    /// Only if the key holds exactly `value`.
    pub fn if_value(self, state: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.require(state, key, condition::Test::ValueEquals(value.into()))
    }

    /// Only if the key's version is `version` (0 = absent).
    pub fn if_version(self, state: &str, key: impl Into<Vec<u8>>, version: u64) -> Self {
        self.require(state, key, condition::Test::VersionEquals(version))
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.conditions.is_empty()
    }
}
