//! The owner's cache of state values, bounded by bytes.
//!
//! A task is the only writer of its key groups (the lease fences every
//! other), so what it last wrote or read stays true until it writes again:
//! the cache never needs invalidating, and a miss costs one read of the
//! store. Absent keys are cached too (a new key costs one read, not one
//! per record). Least recently used values go first when the budget is
//! spent, so a task's state can be far larger than its memory.

use std::collections::{BTreeMap, HashMap};

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
}

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
        }
    }

    /// `Some(value)` when cached (`Some(None)`: known absent).
    pub fn get(&mut self, table: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let k = (table.to_string(), key.to_vec());
        self.tick += 1;
        let e = self.entries.get_mut(&k)?;
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
    fn a_value_larger_than_the_budget_is_not_kept() {
        let mut c = StateCache::new(100);
        c.insert("t", b"k", Some(vec![0; 1000]));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
