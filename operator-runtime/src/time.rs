//! Event time: the watermark a task has reached, and its timers.
//!
//! A partition's watermark is the lowest of those its upstream tasks
//! declared (one source for a job's input stream); a task's watermark is
//! the lowest of its partitions'. Until every upstream task of a partition
//! has declared one, the partition holds the task back, as Flink's
//! watermark alignment does.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// No watermark yet.
pub const NO_WATERMARK: i64 = i64::MIN;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// partition -> upstream task -> the watermark it declared.
    pub by_partition: BTreeMap<u32, BTreeMap<u32, i64>>,
}

impl Watermarks {
    pub fn observe(&mut self, partition: u32, source: u32, time: i64) {
        let w = self
            .by_partition
            .entry(partition)
            .or_default()
            .entry(source)
            .or_insert(NO_WATERMARK);
        *w = (*w).max(time);
    }

    /// The watermark over `partitions`, each fed by `upstream` tasks.
    pub fn current(&self, partitions: impl IntoIterator<Item = u32>, upstream: u32) -> i64 {
        partitions
            .into_iter()
            .map(|p| {
                let Some(sources) = self.by_partition.get(&p) else {
                    return NO_WATERMARK;
                };
                (0..upstream.max(1))
                    .map(|s| sources.get(&s).copied().unwrap_or(NO_WATERMARK))
                    .min()
                    .unwrap_or(NO_WATERMARK)
            })
            .min()
            .unwrap_or(NO_WATERMARK)
    }
}

/// Event-time timers of one task, per key, fired in time order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    set: BTreeSet<(i64, Vec<u8>)>,
}

impl Timers {
    pub fn register(&mut self, time: i64, key: &[u8]) {
        self.set.insert((time, key.to_vec()));
    }

    pub fn delete(&mut self, time: i64, key: &[u8]) {
        self.set.remove(&(time, key.to_vec()));
    }

    /// The earliest timer at or before `watermark`, removed.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, Vec<u8>)> {
        match self.set.first() {
            Some((t, _)) if *t <= watermark => self.set.pop_first(),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(i64, Vec<u8>)> {
        self.set.iter()
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.set.retain(|(_, k)| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_waits_for_every_upstream_task() {
        let mut w = Watermarks::default();
        w.observe(0, 0, 100);
        assert_eq!(w.current([0], 2), NO_WATERMARK, "source 1 is silent");
        w.observe(0, 1, 50);
        assert_eq!(w.current([0], 2), 50);
        w.observe(0, 1, 40);
        assert_eq!(w.current([0], 2), 50, "watermarks never go back");
        w.observe(1, 0, 10);
        w.observe(1, 1, 10);
        assert_eq!(w.current([0, 1], 2), 10, "the slowest partition holds");
        assert_eq!(w.current([2], 1), NO_WATERMARK);
    }

    #[test]
    fn timers_fire_in_time_order_and_only_when_due() {
        let mut t = Timers::default();
        t.register(30, b"b");
        t.register(10, b"a");
        t.register(10, b"a");
        t.register(20, b"c");
        t.delete(20, b"c");
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(30), Some((10, b"a".to_vec())));
        assert_eq!(t.pop_due(29), None, "b is due at 30");
        assert_eq!(t.pop_due(30), Some((30, b"b".to_vec())));
        assert!(t.is_empty());
    }
}
