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
///
/// They live in the store like the rest of the task's state, one value per
/// key in [`TIMERS_TABLE`] (the key's pending times), written with the
/// epoch that changed them: a commit carries only the keys whose timers
/// changed, however many are pending (`dirty`), and a task that takes over
/// loads the timers of its key groups from the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    set: BTreeSet<(i64, Vec<u8>)>,
    #[serde(skip)]
    by_key: BTreeMap<Vec<u8>, BTreeSet<i64>>,
    #[serde(skip)]
    dirty: BTreeSet<Vec<u8>>,
}

/// The state table that holds every task's pending timers.
pub const TIMERS_TABLE: &str = "__timers";

impl Timers {
    pub fn register(&mut self, time: i64, key: &[u8]) {
        if self.set.insert((time, key.to_vec())) {
            self.by_key.entry(key.to_vec()).or_default().insert(time);
            self.dirty.insert(key.to_vec());
        }
    }

    pub fn delete(&mut self, time: i64, key: &[u8]) {
        if self.set.remove(&(time, key.to_vec())) {
            self.forget(time, key);
        }
    }

    fn forget(&mut self, time: i64, key: &[u8]) {
        if let Some(times) = self.by_key.get_mut(key) {
            times.remove(&time);
            if times.is_empty() {
                self.by_key.remove(key);
            }
        }
        self.dirty.insert(key.to_vec());
    }

    /// The earliest timer at or before `watermark`, removed.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, Vec<u8>)> {
        match self.set.first() {
            Some((t, _)) if *t <= watermark => {
                let (time, key) = self.set.pop_first()?;
                self.forget(time, &key);
                Some((time, key))
            }
            _ => None,
        }
    }

    /// Timers read back from the store: pending, and already stored.
    pub fn load(&mut self, key: &[u8], times: impl IntoIterator<Item = i64>) {
        for time in times {
            self.set.insert((time, key.to_vec()));
            self.by_key.entry(key.to_vec()).or_default().insert(time);
        }
    }

    /// Each key whose timers changed since the last call, with its pending
    /// times now (none: the stored value goes).
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Vec<i64>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| {
                let times = self
                    .by_key
                    .get(&key)
                    .map(|t| t.iter().copied().collect())
                    .unwrap_or_default();
                (key, times)
            })
            .collect()
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

    #[test]
    fn changes_name_each_touched_key_once_with_what_is_pending() {
        let mut t = Timers::default();
        t.load(b"old", [5, 6]);
        assert!(
            t.take_changes().is_empty(),
            "loaded timers are stored already"
        );
        t.register(10, b"a");
        t.register(20, b"a");
        t.register(30, b"b");
        t.delete(30, b"b");
        assert_eq!(t.pop_due(5), Some((5, b"old".to_vec())));
        assert_eq!(
            t.take_changes(),
            vec![
                (b"a".to_vec(), vec![10, 20]),
                (b"b".to_vec(), vec![]),
                (b"old".to_vec(), vec![6]),
            ]
        );
        assert!(t.take_changes().is_empty());
        assert_eq!(t.len(), 3);
    }
}
