//! A job's settings: one struct with its defaults, read from TOML.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;
use crate::layout::Layout;

/// What a job's TOML file sets. Every field has a default; a file names
/// only what it changes:
///
/// ```toml
/// job = "wordcount"          # which job of the program runs
/// name = "wc-prod"           # its namespace in the store (default: job)
/// key_groups = 128
/// partitions = 12
/// checkpoint_interval_ms = 100
/// standbys = 1
/// [parallelism]
/// split = 2
/// count = 4
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// The job (as its program defines it) to run. Default `wordcount`.
    pub job: String,
    /// Prefix of the job's store jobs (`<name>.<stage>`) and so of its
    /// state tables, streams and tasks. Default: `job`.
    pub name: String,
    /// Key groups of every stage: the unit state is owned and moved by.
    /// Default 128; at least `partitions`, at most 65,536.
    pub key_groups: u32,
    /// Partitions of every stream of the job, and so the largest
    /// parallelism of a stage. Default 12 (divisible by 1, 2, 3, 4 and 6).
    pub partitions: u32,
    /// How often a task commits its epoch (state, input offsets and
    /// outputs at once). Default 100 ms.
    pub checkpoint_interval_ms: u64,
    /// Warm workers kept ready to take over a failed task. Default 1.
    pub standbys: u32,
    /// How often a worker tells the supervisor it is alive. Default 50 ms.
    pub heartbeat_interval_ms: u64,
    /// A worker silent this long is hung: killed and replaced. Default
    /// 300 ms.
    pub heartbeat_timeout_ms: u64,
    /// Bytes of state values a task keeps in memory. Default 64 MiB.
    pub cache_bytes: u64,
    /// A task's writes in flight are sized to drain within this many
    /// milliseconds at the rate the store answers them, so that a commit
    /// waits about this long for them even when the store is saturated,
    /// at some cost in throughput there (`TaskSessionConfig::commit_target`).
    /// Default 0: off, batches of the client's default size.
    pub commit_target_ms: u64,
    /// Tasks per stage; a stage not named has 1.
    pub parallelism: BTreeMap<String, u32>,
    /// State tables a task reads in full (its key groups' part) before it
    /// handles its first record: what a checkpoint-restore system does on
    /// every recovery. Only for measuring that baseline; default none.
    pub restore_tables: Vec<String>,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            job: "wordcount".into(),
            name: String::new(),
            key_groups: 128,
            partitions: 12,
            checkpoint_interval_ms: 100,
            standbys: 1,
            heartbeat_interval_ms: 50,
            heartbeat_timeout_ms: 300,
            cache_bytes: 64 << 20,
            commit_target_ms: 0,
            parallelism: BTreeMap::new(),
            restore_tables: Vec::new(),
        }
    }
}

impl JobConfig {
    pub fn from_file(path: &Path) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RuntimeError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, RuntimeError> {
        let c: Self = toml::from_str(text).map_err(|e| RuntimeError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The namespace: `name`, or the job's own name.
    pub fn namespace(&self) -> &str {
        if self.name.is_empty() {
            &self.job
        } else {
            &self.name
        }
    }

    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |s: String| Err(RuntimeError::Config(s));
        if self.partitions == 0 || self.key_groups < self.partitions || self.key_groups > 1 << 16 {
            return bad(format!(
                "need 1 <= partitions ({}) <= key_groups ({}) <= 65536",
                self.partitions, self.key_groups
            ));
        }
        for (stage, n) in &self.parallelism {
            if *n == 0 || *n > self.partitions {
                return bad(format!(
                    "stage {stage:?}: parallelism {n} is not within 1..={}",
                    self.partitions
                ));
            }
        }
        if self.checkpoint_interval_ms == 0 || self.heartbeat_interval_ms == 0 {
            return bad("intervals must be positive".into());
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return bad(format!(
                "heartbeat_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.namespace().is_empty() || self.namespace().contains('/') {
            return bad("the job's name must be non-empty and contain no '/'".into());
        }
        Ok(())
    }

    pub fn parallelism_of(&self, stage: &str) -> u32 {
        self.parallelism.get(stage).copied().unwrap_or(1)
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.key_groups, self.partitions)
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_only_what_it_changes() {
        let c = JobConfig::from_toml("job = \"windowed-sum\"\n[parallelism]\nwindow = 4\n")
            .expect("valid");
        assert_eq!(c.namespace(), "windowed-sum");
        assert_eq!(c.parallelism_of("window"), 4);
        assert_eq!(c.parallelism_of("other"), 1);
        assert_eq!(c.checkpoint_interval_ms, 100);
    }

    #[test]
    fn impossible_settings_are_refused() {
        for text in [
            "partitions = 0",
            "key_groups = 4\npartitions = 8",
            "[parallelism]\ncount = 13",
            "heartbeat_timeout_ms = 10",
            "name = \"a/b\"",
            "unknown_field = 1",
        ] {
            assert!(JobConfig::from_toml(text).is_err(), "{text}");
        }
    }
}
