//! Small helpers shared by the two RocksDB instances of a node (the Raft
//! log and the state machine).

use std::io;
use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, DB};

/// Block cache shared by the column families of one RocksDB instance.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Dirty file data RocksDB lets accumulate before it starts writing it back.
const SYNC_EVERY_BYTES: u64 = 1 << 20;

/// The column family of stream records (`state_machine::meta::CF_STREAMS`).
pub const STREAMS_CF: &str = "streams";

/// Column families whose memtable keeps a bloom filter as well: the state
/// machine's `meta`, where every write looks up its dedupe record, which
/// almost never exists. `data` does without it: an epoch commit inserts
/// one key per promoted write, and hashing each into the filter took 10 %
/// of an epoch's apply (`cargo bench -p streamshield-server --bench
/// hot_paths -- "epoch apply"`, 2 pairs: 19.4 and 20.2 ms without, 22.5
/// and 21.6 with), while the apply path asks its memo for a data key's
/// version before it asks RocksDB.
const MEMTABLE_BLOOM_CFS: &[&str] = &["meta"];

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    if name == STREAMS_CF {
        // An append-only log: records are read in offset order and never
        // looked up by a key that may be absent, so no bloom filter, and
        // larger blocks suit the sequential reads. Each partition's keys
        // arrive in ascending order, so flushed files seldom overlap and
        // level compaction moves most of them down without rewriting, and
        // retention's range deletions drop whole files.
        table.set_block_size(64 << 10);
        table.set_block_cache(cache);
        let mut o = Options::default();
        o.set_block_based_table_factory(&table);
        return o;
    }
    // Every write looks up keys that mostly do not exist (its dedupe
    // record, fresh keys): bloom filters in the SSTs answer those without
    // reading blocks.
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    if MEMTABLE_BLOOM_CFS.contains(&name) {
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.05);
    }
    o
}

/// How a store survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Writes go through RocksDB's WAL (the Raft log's metadata: vote,
    /// purge point, committed hint).
    Wal,
    /// Writes skip the WAL and become durable when memtables are flushed;
    /// every column family flushes at once (atomic flush), so a crash
    /// leaves the store as some earlier write left it, never part of one.
    /// For the state machine, whose entries the fsynced Raft log holds
    /// and re-applies after a restart.
    FlushedOnly,
}

pub fn open(path: &Path, cfs: &[&str], durability: Durability) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.set_atomic_flush(durability == Durability::FlushedOnly);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Refuse to run on a damaged store rather than serve from it.
    opts.set_paranoid_checks(true);
    // Write dirty pages back as they accumulate instead of all at once. The
    // state machine's writes never fsync its WAL, but before a flush
    // RocksDB syncs the closed WALs (it does whenever a DB has more than one
    // column family): 64 MiB in one go, on all three replicas at the same
    // instant (they apply the same log), and the Raft log's fsyncs queued
    // behind it for 50-300 ms. The same goes for the SST files a flush
    // writes.
    opts.set_wal_bytes_per_sync(SYNC_EVERY_BYTES);
    opts.set_bytes_per_sync(SYNC_EVERY_BYTES);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let descriptors = cfs
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
    DB::open_cf_descriptors(&opts, path, descriptors)
}

pub fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io::Error::other(format!("column family {name} is missing")))
}

/// Read options for an iterator that stops before `end`. Without the
/// bound an iterator that runs out of live keys in its range walks on
/// through every key a range deletion covers beyond it (they stay in the
/// memtable and in SST files until compacted) looking for the next live
/// one: the staged runs of every epoch committed since the last flush, in
/// a task commit's scan of its own epoch (PERFORMANCE.md, "Range
/// deletions and iterator bounds").
pub fn until(end: &[u8]) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(end.to_vec());
    opts
}

/// [`until`] the end of the keys that start with `prefix` (no bound for a
/// prefix of 0xff bytes only, which has no end).
pub fn within(prefix: &[u8]) -> rocksdb::ReadOptions {
    match crate::keys::prefix_end(prefix) {
        Some(end) => until(&end),
        None => rocksdb::ReadOptions::default(),
    }
}

pub fn io_err(e: rocksdb::Error) -> io::Error {
    io::Error::other(e)
}

pub fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options RocksDB recorded for a store it opened, as `key=value`
    /// lines of its newest OPTIONS file.
    fn recorded_options(dir: &Path) -> String {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
            })
            .collect();
        files.sort();
        std::fs::read_to_string(files.last().expect("an OPTIONS file")).unwrap()
    }

    #[test]
    fn wal_and_table_files_are_written_back_incrementally() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &["a", "b"], Durability::Wal).unwrap();
        drop(db);
        let options = recorded_options(dir.path());
        for key in ["wal_bytes_per_sync", "bytes_per_sync"] {
            let line = format!("{key}={SYNC_EVERY_BYTES}");
            assert!(
                options.lines().any(|l| l.trim() == line),
                "{line} not in the OPTIONS file"
            );
        }
    }
}
