//! Small helpers shared by the two RocksDB instances of a node (the Raft
//! log and the state machine).

use std::io;
use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, DB};

/// Block cache shared by the column families of one RocksDB instance.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Every write looks up keys that mostly do not exist (its dedupe record,
/// fresh keys): bloom filters in the SSTs and in the memtable answer those
/// without reading blocks.
fn cf_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_memtable_whole_key_filtering(true);
    o.set_memtable_prefix_bloom_ratio(0.05);
    o
}

pub fn open(path: &Path, cfs: &[&str]) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Refuse to run on a damaged store rather than serve from it.
    opts.set_paranoid_checks(true);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let descriptors = cfs
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(&cache)));
    DB::open_cf_descriptors(&opts, path, descriptors)
}

pub fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io::Error::other(format!("column family {name} is missing")))
}

pub fn io_err(e: rocksdb::Error) -> io::Error {
    io::Error::other(e)
}

pub fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
