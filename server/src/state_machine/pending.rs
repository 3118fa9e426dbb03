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
//!
//! Writes of data keys wait in the overlay and join the batch when it is
//! written, sorted by key and once per key: RocksDB's memtable inserts a
//! run of ascending keys from where the previous insert went, and an epoch
//! commit writes thousands of data keys at once.

use foldhash::{HashMap, HashMapExt};
use hashbrown::hash_map::EntryRef;
use std::io;
use std::sync::Mutex;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::memo::{ApplyMemo, MAX_BATCH_HINT};
use super::meta::{CF_DATA, CF_META, CF_STAGED};
use crate::keys::{meta, StoredValue};
use crate::rocks::{self, corrupt, io_err};

/// What a chunk knows of one column family.
#[derive(Default)]
struct Known {
    /// Latest known value per key: written in this chunk, or read from the
    /// store (`None` = absent or deleted). hashbrown's map: a promotion
    /// finds or adds each key with one hash and no copy of a key it has
    /// ([`PendingWrites::write_versions`]).
    values: hashbrown::HashMap<Vec<u8>, Cached, foldhash::fast::RandomState>,
    /// Range deletions staged in this chunk: `[from, to)`.
    deleted_ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Cached {
    value: Option<Vec<u8>>,
    /// Written in this chunk, not only read. In `data` such writes join the
    /// batch when it is written, once per key and in key order
    /// ([`PendingWrites::write`]).
    written: bool,
}

impl Cached {
    fn read(value: Option<Vec<u8>>) -> Self {
        Self {
            value,
            written: false,
        }
    }

    fn written(value: Option<Vec<u8>>) -> Self {
        Self {
            value,
            written: true,
        }
    }
}

impl Known {
    fn in_deleted_range(&self, key: &[u8]) -> bool {
        known_deleted(&self.deleted_ranges, key)
    }
}

fn known_deleted(ranges: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    ranges
        .iter()
        .any(|(from, to)| key >= from.as_slice() && key < to.as_slice())
}

/// The slot of a column family in [`PendingWrites::known`]. Kept per
/// family so that a range deletion or a prefix scan of one (every epoch
/// commit does both in `staged`) walks only that family's keys, not every
/// value the chunk touched.
fn slot(cf: &str) -> usize {
    match cf {
        CF_DATA => 0,
        CF_STAGED => 1,
        CF_META => 2,
        _ => 3,
    }
}

/// Keys and values in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

pub struct PendingWrites<'a> {
    db: &'a DB,
    batch: WriteBatch,
    known: [Known; 4],
    entries: usize,
    jobs_changed: bool,
    auth_changed: bool,
    promotions_changed: bool,
    streams_changed: bool,
    memo: Option<&'a Mutex<ApplyMemo>>,
    /// Per client seen in this chunk: no answer stored or staged has a
    /// `seq` above this.
    seq_bounds: HashMap<u64, u64>,
}

fn version_of(raw: Option<&[u8]>) -> io::Result<u64> {
    raw.map_or(Ok(0), |r| StoredValue::version_of(r).map_err(corrupt))
}

/// The version of a data key the chunk has not written or read: 0 in a
/// range the chunk deleted, else what the memo remembers, else what the
/// store holds.
fn untouched_version(
    db: &DB,
    deleted_ranges: &[(Vec<u8>, Vec<u8>)],
    memo: Option<&ApplyMemo>,
    key: &[u8],
) -> io::Result<u64> {
    if known_deleted(deleted_ranges, key) {
        return Ok(0);
    }
    if let Some(v) = memo.and_then(|m| m.version(key)) {
        return Ok(v);
    }
    let raw = db
        .get_pinned_cf(rocks::cf(db, CF_DATA)?, key)
        .map_err(io_err)?;
    version_of(raw.as_deref())
}

impl<'a> PendingWrites<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self {
            db,
            batch: WriteBatch::default(),
            known: Default::default(),
            entries: 0,
            jobs_changed: false,
            auth_changed: false,
            promotions_changed: false,
            streams_changed: false,
            memo: None,
            seq_bounds: HashMap::new(),
        }
    }

    /// Like [`PendingWrites::new`], answering from and teaching `memo`;
    /// the batch starts as large as the last chunk's.
    pub fn with_memo(db: &'a DB, memo: &'a Mutex<ApplyMemo>) -> Self {
        let capacity = memo.lock().expect("apply memo lock").batch_bytes;
        Self {
            memo: Some(memo),
            batch: WriteBatch::with_capacity_bytes(capacity),
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

    /// The version of data key `key` as the entries applied so far left it
    /// (0: absent).
    pub fn version(&mut self, key: &[u8]) -> io::Result<u64> {
        let data = &self.known[slot(CF_DATA)];
        match data.values.get(key) {
            Some(v) => version_of(v.value.as_deref()),
            None => untouched_version(self.db, &data.deleted_ranges, self.memo().as_deref(), key),
        }
    }

    /// Writes the next version of each data key (its version as the
    /// entries applied so far left it, plus one), stamped `mod_index`, or
    /// deletes it: an epoch's promotion. Same as [`PendingWrites::version`]
    /// then [`PendingWrites::put`] per key, with one lookup of the chunk's
    /// map and one lock of the memo for all of them.
    pub fn write_versions<'k>(
        &mut self,
        writes: impl IntoIterator<Item = (&'k [u8], Option<&'k [u8]>)>,
        mod_index: u64,
    ) -> io::Result<()> {
        let memo = self.memo();
        let db = self.db;
        let data = &mut self.known[slot(CF_DATA)];
        let writes = writes.into_iter();
        data.values.reserve(writes.size_hint().0);
        for (key, value) in writes {
            let Some(value) = value else {
                data.values.entry_ref(key).insert(Cached::written(None));
                continue;
            };
            match data.values.entry_ref(key) {
                EntryRef::Occupied(mut o) => {
                    let version = version_of(o.get().value.as_deref())? + 1;
                    o.insert(Cached::written(Some(StoredValue::encode_parts(
                        version, mod_index, value,
                    ))));
                }
                EntryRef::Vacant(v) => {
                    let version =
                        untouched_version(db, &data.deleted_ranges, memo.as_deref(), key)? + 1;
                    v.insert(Cached::written(Some(StoredValue::encode_parts(
                        version, mod_index, value,
                    ))));
                }
            }
        }
        Ok(())
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
        let known = &self.known[slot(cf)];
        if let Some(v) = known.values.get(key) {
            return Ok(v.value.clone());
        }
        let v = if known.in_deleted_range(key) {
            None
        } else {
            let handle = rocks::cf(self.db, cf)?;
            self.db
                .get_pinned_cf(handle, key)
                .map_err(io_err)?
                .map(|p| p.to_vec())
        };
        self.known[slot(cf)]
            .values
            .insert(key.to_vec(), Cached::read(v.clone()));
        Ok(v)
    }

    /// Every key starting with `prefix` and its value, in key order, as
    /// the entries applied so far left them ([`PendingWrites::scan_range`]
    /// without a byte bound). Reads the whole range: for the few records
    /// of one job (its tasks) and one epoch's staged writes, never for a
    /// column family's bulk.
    pub fn scan_prefix(&mut self, cf: &'static str, prefix: &[u8]) -> io::Result<KeyValues> {
        let end = crate::keys::prefix_end(prefix)
            .ok_or_else(|| corrupt("a scan prefix of 0xff bytes only"))?;
        Ok(self.scan_range(cf, prefix, &end, usize::MAX)?.0)
    }

    /// Keys and values of `[from, to)` in key order, as the entries applied
    /// so far left them, until their bytes reach `max_bytes` (at least
    /// one); `true` when more were left.
    pub fn scan_range(
        &mut self,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
        max_bytes: usize,
    ) -> io::Result<(KeyValues, bool)> {
        let handle = rocks::cf(self.db, cf)?;
        let known = &self.known[slot(cf)];
        let mut found = std::collections::BTreeMap::new();
        let mut bytes = 0usize;
        // Where the store's part stopped: written values past it wait for
        // the next call, so nothing is skipped.
        let mut stopped_at: Option<Vec<u8>> = None;
        let it = self.db.iterator_cf_opt(
            handle,
            rocks::until(to),
            IteratorMode::From(from, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            if k.as_ref() >= to {
                break;
            }
            if bytes >= max_bytes {
                stopped_at = Some(k.to_vec());
                break;
            }
            if !known.in_deleted_range(&k) {
                bytes += k.len() + v.len();
                found.insert(k.to_vec(), v.to_vec());
            }
        }
        for (k, v) in &known.values {
            let within = k.as_slice() >= from
                && k.as_slice() < to
                && stopped_at.as_ref().is_none_or(|s| k < s);
            if within && v.written {
                match &v.value {
                    Some(v) => found.insert(k.clone(), v.clone()),
                    None => found.remove(k),
                };
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut more = stopped_at.is_some();
        for (k, v) in found {
            if bytes >= max_bytes {
                more = true;
                break;
            }
            bytes += k.len() + v.len();
            out.push((k, v));
        }
        Ok((out, more))
    }

    pub fn put(&mut self, cf: &'static str, key: &[u8], value: Vec<u8>) -> io::Result<()> {
        if cf == CF_DATA {
            return self.write_data(key, Some(value));
        }
        self.batch.put_cf(rocks::cf(self.db, cf)?, key, &value);
        self.note_meta(cf, key);
        self.known[slot(cf)]
            .values
            .insert(key.to_vec(), Cached::written(Some(value)));
        Ok(())
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) -> io::Result<()> {
        if cf == CF_DATA {
            return self.write_data(key, None);
        }
        self.batch.delete_cf(rocks::cf(self.db, cf)?, key);
        self.note_meta(cf, key);
        self.known[slot(cf)]
            .values
            .insert(key.to_vec(), Cached::written(None));
        Ok(())
    }

    /// A write of a data key, held until the chunk is written. A chunk of
    /// epoch commits writes thousands of data keys; RocksDB's memtable
    /// inserts ascending keys from where the previous insert went, and a
    /// key written twice in the chunk is inserted once
    /// (`cargo bench -p streamshield-server --bench hot_paths -- "epoch apply"`).
    fn write_data(&mut self, key: &[u8], value: Option<Vec<u8>>) -> io::Result<()> {
        let values = &mut self.known[slot(CF_DATA)].values;
        match values.get_mut(key) {
            Some(v) => *v = Cached::written(value),
            None => {
                values.insert(key.to_vec(), Cached::written(value));
            }
        }
        Ok(())
    }

    pub fn delete_range(&mut self, cf: &'static str, from: &[u8], to: &[u8]) -> io::Result<()> {
        self.batch
            .delete_range_cf(rocks::cf(self.db, cf)?, from, to);
        self.jobs_changed |= cf == CF_META && meta::range_has_jobs(from, to);
        self.promotions_changed |= cf == CF_META && meta::range_has_promotions(from, to);
        let known = &mut self.known[slot(cf)];
        known
            .values
            .retain(|k, _| !(k.as_slice() >= from && k.as_slice() < to));
        known.deleted_ranges.push((from.to_vec(), to.to_vec()));
        Ok(())
    }

    fn note_meta(&mut self, cf: &str, key: &[u8]) {
        if cf == CF_META {
            self.jobs_changed |= meta::is_job(key);
            self.auth_changed |= meta::is_auth(key);
            self.promotions_changed |= meta::is_promotions(key);
        }
    }

    /// Whether a job's promotions changed: readers of its key groups must
    /// look again (`SmShared::settled`).
    pub fn promotions_changed(&self) -> bool {
        self.promotions_changed
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

    /// Records went into a stream partition, or a stream or job went:
    /// subscribers are woken once the chunk is written, to read on or end.
    pub fn streams_changed(&mut self) {
        self.streams_changed = true;
    }

    pub fn streams_did_change(&self) -> bool {
        self.streams_changed
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
    pub fn write(mut self, wo: &WriteOptions) -> io::Result<()> {
        let data_cf = rocks::cf(self.db, CF_DATA)?;
        let mut written: Vec<_> = self.known[slot(CF_DATA)]
            .values
            .iter()
            .filter(|(_, v)| v.written)
            .collect();
        written.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in written {
            match &v.value {
                Some(value) => self.batch.put_cf(data_cf, k, value),
                None => self.batch.delete_cf(data_cf, k),
            }
        }
        let batch_bytes = self.batch.size_in_bytes();
        self.db.write_opt(self.batch, wo).map_err(io_err)?;
        let Some(memo) = self.memo else {
            return Ok(());
        };
        let mut memo = memo.lock().expect("apply memo lock");
        memo.batch_bytes = batch_bytes.min(MAX_BATCH_HINT);
        let [data, ..] = self.known;
        if !data.deleted_ranges.is_empty() {
            memo.forget_versions();
        }
        let versions = data
            .values
            .into_iter()
            .filter_map(|(k, v)| version_of(v.value.as_deref()).ok().map(|v| (k, v)));
        memo.learn(versions, self.seq_bounds);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_stops_at_its_end_instead_of_walking_range_deleted_keys_past_it() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let staged = rocks::cf(&db, CF_STAGED).unwrap();
        db.put_cf(staged, b"a1", b"live").unwrap();
        // What committed epochs leave in the memtable after their scan's
        // range: runs a range deletion covers.
        for i in 0..10_000u32 {
            db.put_cf(staged, [&b"b"[..], &i.to_be_bytes()].concat(), b"run")
                .unwrap();
        }
        db.delete_range_cf(staged, b"b", b"c").unwrap();
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        let mut p = PendingWrites::new(&db);
        let (kvs, more) = p.scan_range(CF_STAGED, b"a", b"b", usize::MAX).unwrap();
        let compared = perf.metric(PerfMetric::UserKeyComparisonCount);
        set_perf_stats(PerfStatsLevel::Disable);
        assert_eq!(
            (kvs, more),
            (vec![(b"a1".to_vec(), b"live".to_vec())], false)
        );
        assert!(compared < 1_000, "{compared} key comparisons");
    }

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

    #[test]
    fn write_versions_numbers_each_key_from_what_came_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let data = rocks::cf(&db, CF_DATA).unwrap();
        let stored = |v| StoredValue::encode_parts(v, 1, b"old");
        db.put_cf(data, b"stored", stored(4)).unwrap();
        db.put_cf(data, b"ranged", stored(9)).unwrap();
        db.put_cf(data, b"gone", stored(2)).unwrap();
        let memo = Mutex::new(ApplyMemo::default());
        // The memo knows better than the store (a chunk it saw).
        memo.lock().unwrap().learn([(b"known".to_vec(), 6)], []);
        db.put_cf(data, b"known", stored(1)).unwrap();

        let mut p = PendingWrites::with_memo(&db, &memo);
        p.put(CF_DATA, b"earlier", StoredValue::encode_parts(3, 2, b"x"))
            .unwrap();
        p.delete_range(CF_DATA, b"r", b"s").unwrap();
        let writes: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"stored", Some(b"a")),
            (b"known", Some(b"b")),
            (b"earlier", Some(b"c")),
            (b"ranged", Some(b"d")),
            (b"fresh", Some(b"e")),
            (b"gone", None),
        ];
        p.write_versions(writes, 77).unwrap();
        for (key, version) in [
            (&b"stored"[..], 5),
            (b"known", 7),
            (b"earlier", 4),
            (b"ranged", 1),
            (b"fresh", 1),
        ] {
            assert_eq!(p.version(key).unwrap(), version, "{key:?} before the write");
        }
        p.write(&WriteOptions::default()).unwrap();
        let read = |k: &[u8]| {
            db.get_cf(data, k)
                .unwrap()
                .map(|r| StoredValue::decode(&r).unwrap())
        };
        let v = read(b"stored").unwrap();
        assert_eq!(
            (v.version, v.mod_index, v.value.as_slice()),
            (5, 77, &b"a"[..])
        );
        assert_eq!(read(b"known").unwrap().version, 7);
        assert_eq!(read(b"earlier").unwrap().version, 4);
        assert_eq!(read(b"ranged").unwrap().version, 1);
        assert_eq!(read(b"fresh").unwrap().value, b"e");
        assert!(read(b"gone").is_none());
        assert_eq!(memo.lock().unwrap().version(b"stored"), Some(5));
    }

    #[test]
    fn data_writes_held_to_the_end_of_the_chunk_keep_their_order_against_range_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let data = rocks::cf(&db, CF_DATA).unwrap();
        db.put_cf(data, b"k3", b"stored").unwrap();

        let mut p = PendingWrites::new(&db);
        p.put(CF_DATA, b"k1", b"before".to_vec()).unwrap();
        p.put(CF_DATA, b"k2", b"first".to_vec()).unwrap();
        // Read only: stays as stored.
        assert_eq!(
            p.get(CF_DATA, b"k3").unwrap().as_deref(),
            Some(&b"stored"[..])
        );
        p.delete_range(CF_DATA, b"k1", b"k3").unwrap();
        p.put(CF_DATA, b"k2", b"after".to_vec()).unwrap();
        p.put(CF_DATA, b"k0", b"x".to_vec()).unwrap();
        p.delete(CF_DATA, b"k0").unwrap();
        p.write(&WriteOptions::default()).unwrap();

        assert_eq!(
            db.get_cf(data, b"k1").unwrap(),
            None,
            "written, then range-deleted"
        );
        assert_eq!(
            db.get_cf(data, b"k2").unwrap().as_deref(),
            Some(&b"after"[..]),
            "range-deleted, then written again"
        );
        assert_eq!(
            db.get_cf(data, b"k0").unwrap(),
            None,
            "written, then deleted"
        );
        assert_eq!(
            db.get_cf(data, b"k3").unwrap().as_deref(),
            Some(&b"stored"[..])
        );
    }
}
