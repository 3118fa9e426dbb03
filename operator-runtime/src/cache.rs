//! The owner's cache of state values, bounded by bytes.
//!
//! A task is the only writer of its key groups (the lease fences every
//! other), so what it last wrote or read stays true until it writes again:
//! the cache never needs invalidating, and a miss costs one read of the
//! store. Absent keys are cached too (a new key costs one read, not one
//! per record). Least recently used values go first when the budget is
//! spent, so a task's state can be far larger than its memory.
//!
//! A prefix can be marked complete: every key under it is cached, so a
//! key under it that is not cached is absent, without a read. A map
//! state loads one key's entries with one scan and marks them so; each new
//! entry (a new window) then costs no read. Evicting or dropping any
//! key under a complete prefix unmarks it.
//!
//! A prefix with more keys than one load takes, or more than stay cached,
//! is remembered as large instead: its keys are then read one at a time,
//! never by another scan that would only be evicted again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

type Key = (String, Vec<u8>);

struct Entry {
    value: Option<Vec<u8>>,
    used: u64,
}

pub struct StateCache {
    budget: usize,
    bytes: usize,
    tick: u64,
    entries: HashMap<Key, Entry>,
    by_use: BTreeMap<u64, Key>,
    /// `(table, prefix)`s whose keys are all cached. None is a prefix of
    /// another (callers mark length-prefixed keys' prefixes).
    complete: BTreeSet<Key>,
    /// `(table, prefix)`s not worth loading whole. Forgotten all at once
    /// at [`MAX_LARGE`]: forgetting costs one bounded load per prefix.
    large: HashSet<Key>,
}

/// Large prefixes remembered at most.
const MAX_LARGE: usize = 65_536;

fn cost(k: &Key, v: &Option<Vec<u8>>) -> usize {
    // The fixed part approximates the maps' own overhead per entry.
    64 + k.0.len() + k.1.len() + v.as_ref().map_or(0, Vec::len)
}

impl StateCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            tick: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            complete: BTreeSet::new(),
            large: HashSet::new(),
        }
    }

    /// Whether it has a budget at all (a cache of 0 bytes keeps nothing).
    pub fn keeps_anything(&self) -> bool {
        self.budget > 0
    }

    /// Marks every key of `table` under `prefix` as cached; the caller
    /// inserts them next (an eviction among them unmarks it). Nothing is
    /// marked without a budget: nothing would stay cached.
    pub fn mark_complete(&mut self, table: &str, prefix: &[u8]) {
        if self.keeps_anything() {
            self.complete.insert((table.to_string(), prefix.to_vec()));
        }
    }

    /// Whether every key of `table` under `prefix` is (still) cached.
    pub fn is_complete(&self, table: &str, prefix: &[u8]) -> bool {
        self.complete
            .contains(&(table.to_string(), prefix.to_vec()))
    }

    /// Remembers that `prefix` of `table` holds too many keys to load.
    pub fn mark_large(&mut self, table: &str, prefix: &[u8]) {
        if self.large.len() >= MAX_LARGE {
            self.large.clear();
        }
        self.large.insert((table.to_string(), prefix.to_vec()));
    }

    /// Forgets that `prefix` of `table` was large (its keys are gone).
    pub fn unmark_large(&mut self, table: &str, prefix: &[u8]) {
        self.large.remove(&(table.to_string(), prefix.to_vec()));
    }

    pub fn is_large(&self, table: &str, prefix: &[u8]) -> bool {
        self.large.contains(&(table.to_string(), prefix.to_vec()))
    }

    /// The complete prefix `key` of `table` is under, if any.
    fn covering(&self, table: &str, key: &[u8]) -> Option<&Key> {
        let probe = (table.to_string(), key.to_vec());
        self.complete
            .range(..=probe)
            .next_back()
            .filter(|(t, p)| t == table && key.starts_with(p))
    }

    /// Whether `key` is cached or known absent under a complete prefix.
    pub fn knows(&self, table: &str, key: &[u8]) -> bool {
        self.entries
            .contains_key(&(table.to_string(), key.to_vec()))
            || self.covering(table, key).is_some()
    }

    fn uncover(&mut self, table: &str, key: &[u8]) {
        if let Some(k) = self.covering(table, key).cloned() {
            self.complete.remove(&k);
        }
    }

    /// `Some(value)` when cached (`Some(None)`: known absent).
    pub fn get(&mut self, table: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let k = (table.to_string(), key.to_vec());
        self.tick += 1;
        let Some(e) = self.entries.get_mut(&k) else {
            return self.covering(table, key).map(|_| None);
        };
        let old = std::mem::replace(&mut e.used, self.tick);
        let value = e.value.clone();
        self.by_use.remove(&old);
        self.by_use.insert(self.tick, k);
        Some(value)
    }

    pub fn insert(&mut self, table: &str, key: &[u8], value: Option<Vec<u8>>) {
        let k = (table.to_string(), key.to_vec());
        self.tick += 1;
        let c = cost(&k, &value);
        if let Some(old) = self.entries.remove(&k) {
            self.bytes -= cost(&k, &old.value);
            self.by_use.remove(&old.used);
        }
        if c > self.budget {
            self.uncover(table, key);
            return;
        }
        self.bytes += c;
        self.by_use.insert(self.tick, k.clone());
        self.entries.insert(
            k,
            Entry {
                value,
                used: self.tick,
            },
        );
        while self.bytes > self.budget {
            let Some((_, victim)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.bytes -= cost(&victim, &e.value);
            }
            self.uncover(&victim.0, &victim.1);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let mut c = StateCache::new(3 * (64 + 1 + 1 + 10));
        for k in [b"a", b"b", b"c"] {
            c.insert("t", k, Some(vec![0; 10]));
        }
        assert!(c.get("t", b"a").is_some(), "touch a: b is now the oldest");
        c.insert("t", b"d", Some(vec![0; 10]));
        assert_eq!(c.get("t", b"b"), None, "b was evicted");
        assert!(c.get("t", b"a").is_some());
        assert!(c.get("t", b"d").is_some());
        assert!(c.bytes() <= 3 * 76);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn absent_keys_are_remembered_and_overwrites_are_counted_once() {
        let mut c = StateCache::new(1 << 20);
        c.insert("t", b"k", None);
        assert_eq!(c.get("t", b"k"), Some(None));
        c.insert("t", b"k", Some(vec![1; 100]));
        c.insert("t", b"k", Some(vec![1; 10]));
        assert_eq!(c.bytes(), 64 + 1 + 1 + 10);
        assert_eq!(c.get("t", b"k"), Some(Some(vec![1; 10])));
    }

    #[test]
    fn a_key_under_a_complete_prefix_is_known_absent_until_one_of_its_keys_goes() {
        let mut c = StateCache::new(4 * (64 + 1 + 3 + 1));
        c.mark_complete("t", b"a");
        c.insert("t", b"a:1", Some(vec![1]));
        assert_eq!(c.get("t", b"a:2"), Some(None), "absent without a read");
        assert_eq!(c.get("t", b"b:1"), None, "another prefix is unknown");
        assert_eq!(c.get("u", b"a:2"), None, "another table too");
        assert!(c.knows("t", b"a:9") && !c.knows("t", b"b"));
        // Three more keys overflow the budget and evict a:1, the oldest.
        for k in [b"b:1", b"b:2", b"b:3", b"b:4"] {
            c.insert("t", k, Some(vec![1]));
        }
        assert_eq!(c.get("t", b"a:1"), None);
        assert_eq!(c.get("t", b"a:2"), None, "no longer known absent");
        // A value too large to keep unmarks its prefix too.
        c.mark_complete("t", b"b");
        c.insert("t", b"b:5", Some(vec![0; 1000]));
        assert!(!c.knows("t", b"b:6"));
        // Without a budget nothing is marked.
        let mut none = StateCache::new(0);
        none.mark_complete("t", b"a");
        assert_eq!(none.get("t", b"a:1"), None);
    }

    #[test]
    fn large_prefixes_are_remembered_until_unmarked_or_too_many() {
        let mut c = StateCache::new(1 << 20);
        c.mark_large("t", b"a");
        assert!(c.is_large("t", b"a"));
        assert!(!c.is_large("t", b"b") && !c.is_large("u", b"a"));
        c.unmark_large("t", b"a");
        assert!(!c.is_large("t", b"a"));
        for i in 0..MAX_LARGE as u32 {
            c.mark_large("t", &i.to_be_bytes());
        }
        assert!(c.is_large("t", &0u32.to_be_bytes()));
        c.mark_large("t", b"one more");
        assert!(c.is_large("t", b"one more"));
        assert!(!c.is_large("t", &0u32.to_be_bytes()), "the rest forgotten");
    }

    #[test]
    fn a_value_larger_than_the_budget_is_not_kept() {
        let mut c = StateCache::new(100);
        c.insert("t", b"k", Some(vec![0; 1000]));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
