//! Effects of entries applied but not yet written to RocksDB.
//!
//! A whole chunk of committed entries is applied into one `WriteBatch`
//! (one RocksDB write instead of one per entry). Later entries of the chunk
//! must see what earlier ones did — a second put of a key in the same chunk
//! gets the next version — so every read goes through this overlay first.
//! It also remembers what it read, so the job record and a client's session
//! are fetched once per chunk, not once per write; with an [`ApplyMemo`] it
//! answers version and dedupe lookups without the store, and teaches the
//! memo what the chunk left behind once the chunk is written.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::memo::ApplyMemo;
use super::meta::{CF_DATA, CF_META};
use crate::keys::{meta, StoredValue};
use crate::rocks::{self, corrupt, io_err};

type Slot = (&'static str, Vec<u8>);

pub struct PendingWrites<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Latest known value per key: written in this chunk, or read from the
    /// store (`None` = absent or deleted).
    known: HashMap<Slot, Option<Vec<u8>>>,
    /// Range deletions staged in this chunk: `[from, to)` per column family.
    deleted_ranges: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    entries: usize,
    jobs_changed: bool,
    auth_changed: bool,
    streams_appended: bool,
    memo: Option<&'a Mutex<ApplyMemo>>,
    /// Per client seen in this chunk: no answer stored or staged has a
    /// `seq` above this.
    seq_bounds: HashMap<u64, u64>,
}

fn version_of(raw: Option<&[u8]>) -> io::Result<u64> {
    raw.map_or(Ok(0), |r| StoredValue::version_of(r).map_err(corrupt))
}

impl<'a> PendingWrites<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self {
            db,
            batch: WriteBatch::default(),
            known: HashMap::new(),
            deleted_ranges: Vec::new(),
            entries: 0,
            jobs_changed: false,
            auth_changed: false,
            streams_appended: false,
            memo: None,
            seq_bounds: HashMap::new(),
        }
    }

    /// Like [`PendingWrites::new`], answering from and teaching `memo`.
    pub fn with_memo(db: &'a DB, memo: &'a Mutex<ApplyMemo>) -> Self {
        Self {
            memo: Some(memo),
            ..Self::new(db)
        }
    }

    /// The store the writes are staged for, as it was before them.
    pub fn db(&self) -> &'a DB {
        self.db
    }

    fn memo(&self) -> Option<std::sync::MutexGuard<'a, ApplyMemo>> {
        self.memo.map(|m| m.lock().expect("apply memo lock"))
    }

    fn in_deleted_range(&self, cf: &'static str, key: &[u8]) -> bool {
        self.deleted_ranges
            .iter()
            .any(|(c, from, to)| *c == cf && key >= from.as_slice() && key < to.as_slice())
    }

    /// The version of data key `key` as the entries applied so far left it
    /// (0: absent).
    pub fn version(&mut self, key: &[u8]) -> io::Result<u64> {
        if let Some(v) = self.known.get(&(CF_DATA, key.to_vec())) {
            return version_of(v.as_deref());
        }
        if !self.in_deleted_range(CF_DATA, key) {
            if let Some(v) = self.memo().and_then(|m| m.version(key)) {
                return Ok(v);
            }
        }
        let raw = self.get(CF_DATA, key)?;
        version_of(raw.as_deref())
    }

    /// Whether an answer to `(client_id, seq)` may be stored or staged;
    /// `false` only when it certainly is not. Without a memo: always.
    pub fn may_have_answer(&mut self, client_id: u64, seq: u64) -> io::Result<bool> {
        let bound = match self.seq_bounds.get(&client_id) {
            Some(b) => *b,
            None => {
                let remembered = self.memo().and_then(|m| m.max_seq(client_id));
                let b = match remembered {
                    Some(b) => b,
                    None if self.memo.is_some() => self.stored_max_seq(client_id)?,
                    None => return Ok(true),
                };
                self.seq_bounds.insert(client_id, b);
                b
            }
        };
        Ok(seq <= bound)
    }

    /// The highest `seq` with a stored answer of this client (0: none).
    fn stored_max_seq(&self, client_id: u64) -> io::Result<u64> {
        let cf = rocks::cf(self.db, CF_META)?;
        let last = meta::dedupe(client_id, u64::MAX);
        let prefix = &last[..last.len() - 8];
        let mut it = self
            .db
            .iterator_cf(cf, IteratorMode::From(&last, Direction::Reverse));
        match it.next() {
            Some(item) => {
                let (k, _) = item.map_err(io_err)?;
                match k.strip_prefix(prefix) {
                    Some(seq) => {
                        Ok(u64::from_be_bytes(seq.try_into().map_err(|_| {
                            corrupt("dedupe record key is not a client and a seq")
                        })?))
                    }
                    None => Ok(0),
                }
            }
            None => Ok(0),
        }
    }

    /// An answer to `(client_id, seq)` is staged.
    pub fn answer_staged(&mut self, client_id: u64, seq: u64) {
        if let Some(b) = self.seq_bounds.get_mut(&client_id) {
            *b = (*b).max(seq);
        }
    }

    /// The value of `key` as the entries applied so far left it.
    pub fn get(&mut self, cf: &'static str, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let slot = (cf, key.to_vec());
        if let Some(v) = self.known.get(&slot) {
            return Ok(v.clone());
        }
        let v = if self.in_deleted_range(cf, key) {
            None
        } else {
            let handle = rocks::cf(self.db, cf)?;
            self.db
                .get_pinned_cf(handle, key)
                .map_err(io_err)?
                .map(|p| p.to_vec())
        };
        self.known.insert(slot, v.clone());
        Ok(v)
    }

    /// Every key starting with `prefix` and its value, in key order, as
    /// the entries applied so far left them. Reads the whole range: for
    /// the few records of one job (its tasks) and one epoch's staged
    /// writes, never for a column family's bulk.
    pub fn scan_prefix(
        &mut self,
        cf: &'static str,
        prefix: &[u8],
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let handle = rocks::cf(self.db, cf)?;
        let mut found = std::collections::BTreeMap::new();
        let it = self
            .db
            .iterator_cf(handle, IteratorMode::From(prefix, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            if !self.in_deleted_range(cf, &k) {
                found.insert(k.to_vec(), v.to_vec());
            }
        }
        for ((c, k), v) in &self.known {
            if *c == cf && k.starts_with(prefix) {
                match v {
                    Some(v) => found.insert(k.clone(), v.clone()),
                    None => found.remove(k),
                };
            }
        }
        Ok(found.into_iter().collect())
    }

    pub fn put(&mut self, cf: &'static str, key: &[u8], value: Vec<u8>) -> io::Result<()> {
        self.batch.put_cf(rocks::cf(self.db, cf)?, key, &value);
        self.jobs_changed |= cf == CF_META && meta::is_job(key);
        self.auth_changed |= cf == CF_META && meta::is_auth(key);
        self.known.insert((cf, key.to_vec()), Some(value));
        Ok(())
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) -> io::Result<()> {
        self.batch.delete_cf(rocks::cf(self.db, cf)?, key);
        self.jobs_changed |= cf == CF_META && meta::is_job(key);
        self.auth_changed |= cf == CF_META && meta::is_auth(key);
        self.known.insert((cf, key.to_vec()), None);
        Ok(())
    }

    pub fn delete_range(&mut self, cf: &'static str, from: &[u8], to: &[u8]) -> io::Result<()> {
        self.batch
            .delete_range_cf(rocks::cf(self.db, cf)?, from, to);
        self.jobs_changed |= cf == CF_META && meta::range_has_jobs(from, to);
        self.known
            .retain(|(c, k), _| !(*c == cf && k.as_slice() >= from && k.as_slice() < to));
        self.deleted_ranges.push((cf, from.to_vec(), to.to_vec()));
        Ok(())
    }

    /// Whether a job record is among the staged writes: readers' decoded
    /// copies must be dropped once they are written.
    pub fn jobs_changed(&self) -> bool {
        self.jobs_changed
    }

    /// Whether a grant or token is among the staged writes: the node's
    /// table of them must be read again once they are written.
    pub fn auth_changed(&self) -> bool {
        self.auth_changed
    }

    /// Records went into a stream partition: subscribers are woken once
    /// they are written.
    pub fn streams_appended(&mut self) {
        self.streams_appended = true;
    }

    pub fn streams_were_appended(&self) -> bool {
        self.streams_appended
    }

    /// Counts an applied entry; callers bound a chunk by it.
    pub fn entry_done(&mut self) {
        self.entries += 1;
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Writes the staged effects in one batch; then (only if that worked)
    /// the memo learns the versions of every data key this chunk touched
    /// and each client's bound.
    pub fn write(self, wo: &WriteOptions) -> io::Result<()> {
        self.db.write_opt(self.batch, wo).map_err(io_err)?;
        let Some(memo) = self.memo else {
            return Ok(());
        };
        let mut memo = memo.lock().expect("apply memo lock");
        if self.deleted_ranges.iter().any(|(cf, _, _)| *cf == CF_DATA) {
            memo.forget_versions();
        }
        let versions = self
            .known
            .into_iter()
            .filter(|((cf, _), _)| *cf == CF_DATA)
            .filter_map(|((_, k), v)| version_of(v.as_deref()).ok().map(|v| (k, v)));
        memo.learn(versions, self.seq_bounds);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_staged_writes_deletes_and_ranges_before_they_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let data = rocks::cf(&db, CF_DATA).unwrap();
        db.put_cf(data, b"a", b"stored").unwrap();
        db.put_cf(rocks::cf(&db, CF_META).unwrap(), b"r2", b"x")
            .unwrap();

        let mut p = PendingWrites::new(&db);
        assert_eq!(
            p.get(CF_DATA, b"a").unwrap().as_deref(),
            Some(&b"stored"[..])
        );
        p.put(CF_DATA, b"a", b"new".to_vec()).unwrap();
        p.put(CF_DATA, b"b", b"fresh".to_vec()).unwrap();
        assert_eq!(p.get(CF_DATA, b"a").unwrap().as_deref(), Some(&b"new"[..]));
        p.delete(CF_DATA, b"b").unwrap();
        assert_eq!(p.get(CF_DATA, b"b").unwrap(), None);
        p.put(CF_META, b"r1", b"y".to_vec()).unwrap();
        p.delete_range(CF_META, b"r0", b"r9").unwrap();
        assert_eq!(
            p.get(CF_META, b"r1").unwrap(),
            None,
            "staged, then range-deleted"
        );
        assert_eq!(
            p.get(CF_META, b"r2").unwrap(),
            None,
            "stored, then range-deleted"
        );
        // The same key in another column family is another key.
        assert_eq!(p.get(CF_DATA, b"r2").unwrap(), None);
        // Nothing reached the store yet.
        assert_eq!(
            db.get_cf(data, b"a").unwrap().as_deref(),
            Some(&b"stored"[..])
        );

        p.write(&WriteOptions::default()).unwrap();
        assert_eq!(db.get_cf(data, b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.get_cf(data, b"b").unwrap(), None);
        assert_eq!(
            db.get_cf(rocks::cf(&db, CF_META).unwrap(), b"r2").unwrap(),
            None
        );
    }
}
