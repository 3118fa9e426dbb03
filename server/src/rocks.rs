//! Small helpers shared by the two RocksDB instances of a node (the Raft
//! log and the state machine).

use std::io;
use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

pub fn open(path: &Path, cfs: &[&str]) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Refuse to run on a damaged store rather than serve from it.
    opts.set_paranoid_checks(true);
    let descriptors = cfs
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
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
