//! What a task commits besides its state, and how a task finds where to
//! resume.
//!
//! A commit carries the task's input offsets (one per partition it reads)
//! and, as the checkpoint's metadata, its event-time position: the
//! watermarks its partitions declared. A task resumes each partition from
//! the newest checkpoint (by commit index) that names it, whichever task
//! committed it: after a rescale, a partition's last reader had another
//! index. Pending timers are keyed state of their own (`time.rs`,
//! [`crate::time::TIMERS_TABLE`]); metadata written before they were
//! carried them, and those still count, by the keys of each partition.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use streamshield_client::{pb, Client, Consistency};

use crate::error::RuntimeError;
use crate::layout::Layout;
use crate::time::{Timers, Watermarks, NO_WATERMARK};

/// A checkpoint's metadata, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub watermarks: Watermarks,
    /// Only in metadata written before timers were stored by key: read,
    /// never written.
    #[serde(default, skip_serializing)]
    pub timers: Timers,
    /// The watermark this task last sent downstream.
    #[serde(default = "no_watermark")]
    pub emitted_watermark: i64,
}

fn no_watermark() -> i64 {
    NO_WATERMARK
}

impl TaskMeta {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata always serializes")
    }

    pub fn decode(task: u32, raw: &[u8]) -> Result<Self, RuntimeError> {
        if raw.is_empty() {
            return Ok(Self {
                emitted_watermark: NO_WATERMARK,
                ..Self::default()
            });
        }
        serde_json::from_slice(raw).map_err(|e| RuntimeError::BadCheckpoint {
            task,
            why: e.to_string(),
        })
    }
}

/// Where a task starts: per partition the next offset, and its event-time
/// position.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub offsets: BTreeMap<u32, u64>,
    pub meta: TaskMeta,
}

/// Gathers the resume point of partitions `partitions` of `input` from the
/// checkpoints of every task of `store_job`.
pub async fn resume(
    client: &Client,
    store_job: &str,
    input: &str,
    partitions: Range<u32>,
    layout: Layout,
) -> Result<Resume, RuntimeError> {
    let tasks = client
        .list_tasks(store_job, Consistency::Linearizable)
        .await?
        .tasks;
    resume_from(&tasks, input, partitions, layout)
}

pub fn resume_from(
    tasks: &[pb::TaskInfo],
    input: &str,
    partitions: Range<u32>,
    layout: Layout,
) -> Result<Resume, RuntimeError> {
    let mut metas: HashMap<u32, TaskMeta> = HashMap::new();
    let mut out = Resume {
        offsets: BTreeMap::new(),
        meta: TaskMeta {
            emitted_watermark: NO_WATERMARK,
            ..TaskMeta::default()
        },
    };
    for p in partitions {
        let newest = tasks
            .iter()
            .filter_map(|t| {
                let cp = t.checkpoint.as_ref()?;
                let o = cp
                    .input_offsets
                    .iter()
                    .find(|o| o.stream == input && o.partition == p)?;
                Some((cp.committed_index, t, cp, o.offset))
            })
            .max_by_key(|(index, ..)| *index);
        let Some((_, t, cp, offset)) = newest else {
            out.offsets.insert(p, 0);
            continue;
        };
        out.offsets.insert(p, offset);
        let meta = match metas.entry(t.task) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(TaskMeta::decode(t.task, &cp.metadata)?)
            }
        };
        if let Some(w) = meta.watermarks.by_partition.get(&p) {
            out.meta.watermarks.by_partition.insert(p, w.clone());
        }
        for (time, key) in meta.timers.iter() {
            if layout.partition_of_key(key) == p {
                out.meta.timers.register(*time, key);
            }
        }
        out.meta.emitted_watermark = out.meta.emitted_watermark.max(meta.emitted_watermark);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(task: u32, index: u64, offsets: &[(u32, u64)], meta: &TaskMeta) -> pb::TaskInfo {
        pb::TaskInfo {
            task,
            checkpoint: Some(pb::Checkpoint {
                epoch: 1,
                input_offsets: offsets
                    .iter()
                    .map(|(p, o)| pb::InputOffset {
                        stream: "in".into(),
                        partition: *p,
                        offset: *o,
                    })
                    .collect(),
                // With its timers, as metadata was written before timers
                // were stored by key.
                metadata: serde_json::to_vec(&serde_json::json!({
                    "watermarks": meta.watermarks,
                    "timers": meta.timers,
                    "emitted_watermark": meta.emitted_watermark,
                }))
                .unwrap(),
                committed_index: index,
                committed_at_ms: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn after_a_rescale_each_partition_resumes_from_its_newest_reader() {
        let layout = Layout::new(128, 4);
        let key_in = |p: u32| {
            (0..)
                .map(|i| format!("k{i}").into_bytes())
                .find(|k| layout.partition_of_key(k) == p)
                .unwrap()
        };
        // Four tasks read one partition each (old), then task 0 alone read
        // partitions 0 and 1 (newer).
        let mut old = TaskMeta::default();
        old.timers.register(5, &key_in(1));
        old.watermarks.observe(1, 0, 10);
        let mut newer = TaskMeta::default();
        newer.timers.register(7, &key_in(1));
        newer.timers.register(8, &key_in(0));
        newer.watermarks.observe(1, 0, 20);
        let tasks = vec![
            task(0, 50, &[(0, 100), (1, 200)], &newer),
            task(1, 10, &[(1, 150)], &old),
            task(2, 11, &[(2, 30)], &TaskMeta::default()),
        ];
        let r = resume_from(&tasks, "in", 1..4, layout).unwrap();
        assert_eq!(r.offsets, BTreeMap::from([(1, 200), (2, 30), (3, 0)]));
        let timers: Vec<_> = r.meta.timers.iter().cloned().collect();
        assert_eq!(
            timers,
            vec![(7, key_in(1))],
            "partition 1's timers (of metadata that carried them) from the newest reader only"
        );
        assert_eq!(r.meta.watermarks.current([1], 1), 20);
    }

    #[test]
    fn metadata_no_longer_carries_timers() {
        let mut meta = TaskMeta::default();
        meta.timers.register(7, b"k");
        let decoded = TaskMeta::decode(0, &meta.encode()).unwrap();
        assert!(decoded.timers.is_empty());
    }

    #[test]
    fn damaged_metadata_is_an_error() {
        let mut t = task(0, 1, &[(0, 1)], &TaskMeta::default());
        t.checkpoint.as_mut().unwrap().metadata = b"{not json".to_vec();
        let err = resume_from(&[t], "in", 0..1, Layout::new(8, 1)).unwrap_err();
        assert!(
            matches!(err, RuntimeError::BadCheckpoint { task: 0, .. }),
            "{err}"
        );
    }
}
