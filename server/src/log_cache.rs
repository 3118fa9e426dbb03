//! The newest Raft log entries in memory, so that the reads that follow
//! every append do not go back to the segment files.
//!
//! On a leader each entry is read three times right after it is written
//! (once per follower's replication stream, once by the apply) and on a
//! follower once (the apply). From a segment each of those reads is a
//! positioned read, a checksum and a protobuf decode; from here it is a
//! clone. The cache holds a contiguous run of the newest entries;
//! anything older, and anything after a restart, is read from the
//! segments.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::types::Entry;

/// Entries kept, at most: enough for replication and apply to find every
/// entry they read in the common case, where they trail the append by a
/// few batches.
pub const MAX_ENTRIES: usize = 4096;
/// Encoded bytes kept, at most.
pub const MAX_BYTES: usize = 64 << 20;

struct Cached {
    entry: Entry,
    bytes: usize,
}

#[derive(Default)]
struct Run {
    /// Consecutive indexes, oldest first.
    entries: VecDeque<Cached>,
    bytes: usize,
}

impl Run {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|c| c.entry.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some(c) = self.entries.pop_front() {
            self.bytes -= c.bytes;
        }
    }

    fn pop_back(&mut self) {
        if let Some(c) = self.entries.pop_back() {
            self.bytes -= c.bytes;
        }
    }
}

#[derive(Clone, Default)]
pub struct RecentEntries {
    run: Arc<Mutex<Run>>,
}

impl RecentEntries {
    /// Takes entries just written to the log, with their encoded sizes.
    /// An entry that does not follow the cached run replaces what it
    /// overwrites (a new leader's entries) or starts a new run.
    pub fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut run = self.run.lock().expect("log cache lock");
        for (entry, bytes) in entries {
            let index = entry.log_id.index;
            while run
                .entries
                .back()
                .is_some_and(|c| c.entry.log_id.index >= index)
            {
                run.pop_back();
            }
            if run
                .entries
                .back()
                .is_some_and(|c| c.entry.log_id.index + 1 != index)
            {
                *run = Run::default();
            }
            run.bytes += bytes;
            run.entries.push_back(Cached { entry, bytes });
            while run.entries.len() > MAX_ENTRIES || run.bytes > MAX_BYTES {
                run.pop_front();
            }
        }
    }

    /// Entries `[start, end)` if all of them are cached, stopping before
    /// the one that would take their size past `max_bytes` (the first
    /// always comes). `None` sends the caller to RocksDB.
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let run = self.run.lock().expect("log cache lock");
        let first = run.first_index()?;
        let last = first + run.entries.len() as u64 - 1;
        if start < first || start > last || end <= start {
            return None;
        }
        // Past the newest entry there is nothing, cached or not: what the
        // caller gets is what RocksDB would give.
        let end = end.min(last + 1);
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut bytes = 0usize;
        for c in run
            .entries
            .range((start - first) as usize..(end - first) as usize)
        {
            if !out.is_empty() && bytes.saturating_add(c.bytes) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(c.bytes);
            out.push(c.entry.clone());
        }
        Some(out)
    }

    /// The log lost every entry from `index` on.
    pub fn truncated_from(&self, index: u64) {
        let mut run = self.run.lock().expect("log cache lock");
        while run
            .entries
            .back()
            .is_some_and(|c| c.entry.log_id.index >= index)
        {
            run.pop_back();
        }
    }

    /// The log lost every entry up to and including `index`.
    pub fn purged_up_to(&self, index: u64) {
        let mut run = self.run.lock().expect("log cache lock");
        while run
            .entries
            .front()
            .is_some_and(|c| c.entry.log_id.index <= index)
        {
            run.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::types::LeaderId;

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let e = Entry {
            log_id: openraft::LogId::new(LeaderId { term, node_id: 1 }, index),
            payload: EntryPayload::Blank,
        };
        (e, 100)
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn reads_what_was_appended_and_sends_the_rest_to_the_store() {
        let c = RecentEntries::default();
        assert!(c.read(1, 2, usize::MAX).is_none(), "empty");
        c.appended((5..=9).map(|i| entry(1, i)));
        assert_eq!(
            indexes(c.read(6, 9, usize::MAX)),
            Some(vec![(1, 6), (1, 7), (1, 8)])
        );
        assert!(c.read(4, 7, usize::MAX).is_none(), "starts before the run");
        assert_eq!(
            indexes(c.read(9, u64::MAX, usize::MAX)),
            Some(vec![(1, 9)]),
            "nothing exists past the newest entry"
        );
        assert!(c.read(10, 12, usize::MAX).is_none());
        assert_eq!(indexes(c.read(6, 9, 250)), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(indexes(c.read(6, 9, 1)), Some(vec![(1, 6)]), "first always");
    }

    #[test]
    fn a_new_leaders_entries_replace_the_ones_they_overwrite() {
        let c = RecentEntries::default();
        c.appended((1..=5).map(|i| entry(1, i)));
        c.truncated_from(4);
        assert!(c.read(4, 5, usize::MAX).is_none());
        c.appended([entry(2, 4)]);
        assert_eq!(
            indexes(c.read(3, 6, usize::MAX)),
            Some(vec![(1, 3), (2, 4)])
        );
        // Overwriting without a truncation first behaves the same.
        c.appended([entry(3, 3)]);
        assert_eq!(
            indexes(c.read(1, 6, usize::MAX)),
            Some(vec![(1, 1), (1, 2), (3, 3)])
        );
        // A gap starts a new run.
        c.appended([entry(3, 10)]);
        assert!(c.read(3, 4, usize::MAX).is_none());
        assert_eq!(indexes(c.read(10, 11, usize::MAX)), Some(vec![(3, 10)]));
    }

    #[test]
    fn purged_entries_are_gone_and_the_run_stays_bounded() {
        let c = RecentEntries::default();
        c.appended((1..=10).map(|i| entry(1, i)));
        c.purged_up_to(6);
        assert!(c.read(6, 8, usize::MAX).is_none());
        assert_eq!(indexes(c.read(7, 8, usize::MAX)), Some(vec![(1, 7)]));

        let n = MAX_ENTRIES as u64 + 10;
        c.appended((11..=n).map(|i| entry(1, i)));
        assert!(c.read(n - MAX_ENTRIES as u64, n, usize::MAX).is_none());
        let from = n - MAX_ENTRIES as u64 + 1;
        assert_eq!(
            c.read(from, n + 1, usize::MAX).map(|v| v.len()),
            Some(MAX_ENTRIES)
        );
    }
}
