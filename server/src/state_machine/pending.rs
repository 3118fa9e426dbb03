//! Effects of entries applied but not yet written to RocksDB.
//!
//! A whole chunk of committed entries is applied into one `WriteBatch`
//! (one RocksDB write instead of one per entry). Later entries of the chunk
//! must see what earlier ones did — a second put of a key in the same chunk
//! gets the next version — so every read goes through this overlay first.
//! It also remembers what it read, so the job record and a client's session
//! are fetched once per chunk, not once per write.

use std::collections::HashMap;
use std::io;

use rocksdb::{WriteBatch, DB};

use super::meta::CF_META;
use crate::keys::meta;
use crate::rocks::{self, io_err};

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
        }
    }

    /// The value of `key` as the entries applied so far left it.
    pub fn get(&mut self, cf: &'static str, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let slot = (cf, key.to_vec());
        if let Some(v) = self.known.get(&slot) {
            return Ok(v.clone());
        }
        let in_deleted_range = self
            .deleted_ranges
            .iter()
            .any(|(c, from, to)| *c == cf && key >= from.as_slice() && key < to.as_slice());
        let v = if in_deleted_range {
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

    pub fn put(&mut self, cf: &'static str, key: &[u8], value: Vec<u8>) -> io::Result<()> {
        self.batch.put_cf(rocks::cf(self.db, cf)?, key, &value);
        self.jobs_changed |= cf == CF_META && meta::is_job(key);
        self.known.insert((cf, key.to_vec()), Some(value));
        Ok(())
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) -> io::Result<()> {
        self.batch.delete_cf(rocks::cf(self.db, cf)?, key);
        self.jobs_changed |= cf == CF_META && meta::is_job(key);
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

    /// Counts an applied entry; callers bound a chunk by it.
    pub fn entry_done(&mut self) {
        self.entries += 1;
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::meta::{ALL_CFS, CF_DATA, CF_META};

    #[test]
    fn reads_see_staged_writes_deletes_and_ranges_before_they_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = rocks::open(dir.path(), ALL_CFS).unwrap();
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

        db.write(p.into_batch()).unwrap();
        assert_eq!(db.get_cf(data, b"a").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.get_cf(data, b"b").unwrap(), None);
        assert_eq!(
            db.get_cf(rocks::cf(&db, CF_META).unwrap(), b"r2").unwrap(),
            None
        );
    }
}
