//! What a supervisor and its workers say to each other: one JSON object
//! per line, on the worker's stdin and stdout.
//!
//! A worker that loses its stdin (its supervisor died) stops: a job's
//! workers never outlive the process that can replace them.

use serde::{Deserialize, Serialize};

use crate::task::TaskEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToWorker {
    /// Run task `task` of `stage` (taking its lease, fencing any holder).
    Assign { stage: String, task: u32 },
    /// Commit what is open, release the lease and exit.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Started, connected to the cluster, the job loaded: ready to take a
    /// task at once.
    Ready {
        pid: u32,
    },
    Heartbeat,
    Task {
        stage: String,
        task: u32,
        event: TaskEvent,
    },
    /// The task stopped as asked, its lease released.
    Stopped,
    /// The task ended with an error; the worker exits.
    Failed {
        error: String,
        fenced: bool,
    },
}

impl FromWorker {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("messages serialize");
        s.push('\n');
        s
    }
}

impl ToWorker {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("messages serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() {
        let m = FromWorker::Task {
            stage: "count".into(),
            task: 3,
            event: TaskEvent::Committed {
                epoch: 9,
                records: 10,
                offsets: vec![(1, 5)],
                watermark: i64::MIN,
                at_us: 1,
                commit_us: 2,
            },
        };
        let line = m.line();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(serde_json::from_str::<FromWorker>(&line).unwrap(), m);
        let a = ToWorker::Assign {
            stage: "s".into(),
            task: 0,
        };
        assert_eq!(serde_json::from_str::<ToWorker>(&a.line()).unwrap(), a);
    }
}
