//! The open epoch's ops as a session holds them until the commit.
//!
//! Op `i` has seq `i + 1`: state writes and emitted records share the
//! epoch's seqs, so records reach their partitions in the order emitted. Ops already sent sit in sealed batches behind
//! an `Arc`, shared with the requests that carried them (a re-send reuses
//! them as they are); the rest wait in `unsent`. `newest` indexes the
//! newest write of each `(state, key)` by its position, hashed from the
//! op itself, so a `put` neither copies its key nor allocates for the
//! index (a `HashMap` keyed by owned `(String, Vec<u8>)` with SipHash
//! was 10 % of a task's CPU in `bench --workload task-session`).

use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use hashbrown::HashTable;
use streamshield_proto::v1::{self as pb, op};

#[derive(Default)]
pub(crate) struct EpochOps {
    /// Sealed batches, in seq order, and where each starts.
    batches: Vec<Arc<Vec<pb::Op>>>,
    starts: Vec<usize>,
    sealed: usize,
    unsent: Vec<pb::Op>,
    unsent_bytes: usize,
    newest: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
}

/// A sealed batch, or the part of one, as a request sends it.
pub(crate) struct Slice {
    pub seq_from: u64,
    pub ops: Arc<Vec<pb::Op>>,
    pub range: Range<usize>,
}

pub(crate) fn op_bytes(o: &pb::Op) -> usize {
    o.key.len()
        + match &o.kind {
            Some(op::Kind::Put(p)) => p.value.len(),
            Some(op::Kind::Emit(e)) => e.value.len(),
            _ => 0,
        }
}

fn hash_of(hasher: &foldhash::fast::RandomState, state: &str, key: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    state.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl EpochOps {
    /// Ops of the epoch: seqs `1..=len()`.
    pub fn len(&self) -> usize {
        self.sealed + self.unsent.len()
    }

    pub fn unsent_len(&self) -> usize {
        self.unsent.len()
    }

    /// Keys and values of the unsent ops.
    pub fn unsent_bytes(&self) -> usize {
        self.unsent_bytes
    }

    fn get(&self, i: usize) -> &pb::Op {
        get(&self.batches, &self.starts, self.sealed, &self.unsent, i)
    }

    pub fn push(&mut self, o: pb::Op) {
        let at = self.len();
        let hash = hash_of(&self.hasher, &o.state, &o.key);
        self.unsent_bytes += op_bytes(&o);
        // An emitted record is no write of a key: nothing reads it back.
        let emitted = matches!(o.kind, Some(op::Kind::Emit(_)));
        self.unsent.push(o);
        if emitted {
            return;
        }
        let (batches, starts, sealed, unsent) =
            (&self.batches, &self.starts, self.sealed, &self.unsent);
        let same = |&i: &usize| {
            let held = get(batches, starts, sealed, unsent, i);
            let new = &unsent[unsent.len() - 1];
            held.state == new.state && held.key == new.key
        };
        match self.newest.find_mut(hash, same) {
            Some(i) => *i = at,
            None => {
                let hasher = &self.hasher;
                self.newest.insert_unique(hash, at, |&i| {
                    let o = get(batches, starts, sealed, unsent, i);
                    hash_of(hasher, &o.state, &o.key)
                });
            }
        }
    }

    /// The newest write of `key` in `state` this epoch.
    pub fn newest(&self, state: &str, key: &[u8]) -> Option<&pb::Op> {
        let hash = hash_of(&self.hasher, state, key);
        let i = self.newest.find(hash, |&i| {
            let o = self.get(i);
            o.state == state && o.key == key
        })?;
        Some(self.get(*i))
    }

    /// The newest write of each key of `state` that starts with `prefix`
    /// this epoch, in no order: a pass over every key written this epoch.
    pub fn newest_with_prefix<'a>(
        &'a self,
        state: &'a str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = &'a pb::Op> + 'a {
        self.newest
            .iter()
            .map(|&i| self.get(i))
            .filter(move |o| o.state == state && o.key.starts_with(prefix))
    }

    /// The unsent ops as a batch of their own, if there are any.
    pub fn seal(&mut self) -> Option<Slice> {
        if self.unsent.is_empty() {
            return None;
        }
        let ops = Arc::new(std::mem::take(&mut self.unsent));
        let start = self.sealed;
        self.starts.push(start);
        self.batches.push(ops.clone());
        self.sealed += ops.len();
        self.unsent_bytes = 0;
        Some(Slice {
            seq_from: start as u64 + 1,
            range: 0..ops.len(),
            ops,
        })
    }

    /// Seqs `first..=last` as parts of their sealed batches (each within
    /// the limits its batch was sent under). Unsent ops are not included.
    pub fn sealed_range(&self, first: u64, last: u64) -> Vec<Slice> {
        let (from, to) = (
            first.saturating_sub(1) as usize,
            (last as usize).min(self.sealed),
        );
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let b = self.starts.partition_point(|&s| s <= at) - 1;
            let start = self.starts[b];
            let end = (start + self.batches[b].len()).min(to);
            out.push(Slice {
                seq_from: at as u64 + 1,
                ops: self.batches[b].clone(),
                range: at - start..end - start,
            });
            at = end;
        }
        out
    }

    /// Forgets the epoch (it committed).
    pub fn clear(&mut self) {
        self.batches.clear();
        self.starts.clear();
        self.sealed = 0;
        self.unsent.clear();
        self.unsent_bytes = 0;
        self.newest.clear();
    }
}

fn get<'a>(
    batches: &'a [Arc<Vec<pb::Op>>],
    starts: &[usize],
    sealed: usize,
    unsent: &'a [pb::Op],
    i: usize,
) -> &'a pb::Op {
    if i >= sealed {
        return &unsent[i - sealed];
    }
    let b = starts.partition_point(|&s| s <= i) - 1;
    &batches[b][i - starts[b]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &str, key: &str, value: &str) -> pb::Op {
        pb::Op {
            state: state.into(),
            key: key.as_bytes().to_vec(),
            kind: Some(op::Kind::Put(pb::Put {
                value: value.as_bytes().to_vec(),
            })),
        }
    }

    fn value(o: Option<&pb::Op>) -> Option<&[u8]> {
        match &o?.kind {
            Some(op::Kind::Put(p)) => Some(&p.value),
            _ => None,
        }
    }

    #[test]
    fn the_newest_write_wins_across_batches_and_tables() {
        let mut e = EpochOps::default();
        e.push(put("a", "k", "1"));
        e.push(put("b", "k", "other table"));
        let first = e.seal().unwrap();
        assert_eq!((first.seq_from, first.range), (1, 0..2));
        e.push(put("a", "k", "2"));
        assert_eq!(value(e.newest("a", b"k")), Some(&b"2"[..]), "unsent");
        e.seal().unwrap();
        assert_eq!(value(e.newest("a", b"k")), Some(&b"2"[..]), "sealed");
        assert_eq!(value(e.newest("b", b"k")), Some(&b"other table"[..]));
        assert!(e.newest("a", b"missing").is_none());
        // ("a", "bk") and ("ab", "k") are different writes.
        e.push(put("a", "bk", "x"));
        assert!(e.newest("ab", b"k").is_none());
        assert_eq!(e.len(), 4);
        e.clear();
        assert_eq!(e.len(), 0);
        assert!(e.newest("a", b"k").is_none());
    }

    #[test]
    fn emitted_records_take_seqs_and_bytes_but_are_no_writes() {
        let mut e = EpochOps::default();
        e.push(put("", "k", "state"));
        e.push(pb::Op {
            state: String::new(),
            key: b"k".to_vec(),
            kind: Some(op::Kind::Emit(pb::Emit {
                stream: "out".into(),
                partition: 0,
                value: b"record".to_vec(),
            })),
        });
        assert_eq!(e.len(), 2);
        assert_eq!(e.unsent_bytes(), 1 + 5 + 1 + 6);
        // Reading the task's own write of "k" finds the put, not the record.
        assert_eq!(value(e.newest("", b"k")), Some(&b"state"[..]));
    }

    #[test]
    fn a_sealed_range_is_cut_at_batch_edges() {
        let mut e = EpochOps::default();
        for batch in [3, 1, 4] {
            for i in 0..batch {
                e.push(put("s", &format!("{}-{i}", e.len()), "v"));
            }
            e.seal();
        }
        e.push(put("s", "unsent", "v"));
        let parts: Vec<_> = e
            .sealed_range(2, 9)
            .into_iter()
            .map(|s| (s.seq_from, s.range))
            .collect();
        // Seqs 1-3, 4, 5-8 are the batches; 9 is not sent.
        assert_eq!(parts, vec![(2, 1..3), (4, 0..1), (5, 0..4)]);
        let one = e.sealed_range(6, 6);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].ops[one[0].range.start].key, b"5-1".to_vec());
        assert!(e.sealed_range(9, 9).is_empty());
    }

    #[test]
    fn many_keys_are_all_found() {
        let mut e = EpochOps::default();
        for i in 0..10_000 {
            e.push(put("s", &format!("k{}", i % 3_000), &i.to_string()));
            if i % 512 == 511 {
                e.seal();
            }
        }
        for k in 0..3_000 {
            let last = (0..10_000).rev().find(|i| i % 3_000 == k).unwrap();
            assert_eq!(
                value(e.newest("s", format!("k{k}").as_bytes())),
                Some(last.to_string().as_bytes())
            );
        }
    }
}
