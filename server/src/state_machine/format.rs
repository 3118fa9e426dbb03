//! The state-machine format a store was written in.
//!
//! An entry names the format it was proposed in, and a replica that meets
//! a newer one stops rather than apply around it (`command::check_known`).
//! A store needs the same guard: a snapshot built by a node that applied
//! newer entries holds records in their layout (staged output records,
//! promotions in steps), and so does a data directory that a newer binary
//! ran on before a downgrade. Each store records the newest format of any
//! entry applied into it (`m/format`, written with the entry's chunk), and
//! a node refuses to open or install a store whose format is newer than its
//! own, with the same "upgrade this node" as for an entry. Stores written
//! before the record existed have none: format 0, which every node reads.

use std::io;

use rocksdb::DB;

use super::meta::CF_META;
use crate::command::FORMAT;
use crate::keys::meta as mk;
use crate::rocks::{self, corrupt, io_err};

/// A store this node cannot read as the nodes that wrote it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} holds entries of state-machine format {found}, newer than this node's {FORMAT}: upgrade this node")]
pub struct NewerStore {
    pub what: String,
    pub found: u32,
}

/// The format recorded in `db` (0 when none is).
pub fn stored(db: &DB) -> io::Result<u32> {
    let cf = rocks::cf(db, CF_META)?;
    match db.get_pinned_cf(cf, mk::FORMAT).map_err(io_err)? {
        None => Ok(0),
        Some(raw) => {
            let b: [u8; 4] = raw
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("the store's format record is not 4 bytes"))?;
            Ok(u32::from_be_bytes(b))
        }
    }
}

/// `db`'s format, if this node can read it; `what` names the store in the
/// error.
pub fn readable(db: &DB, what: &str) -> io::Result<u32> {
    let found = stored(db)?;
    if found > FORMAT {
        return Err(io::Error::other(NewerStore {
            what: what.to_string(),
            found,
        }));
    }
    Ok(found)
}

/// The record of `format`, for the chunk that first applies an entry in it.
pub fn record(format: u32) -> Vec<u8> {
    format.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::StateMachineStore;

    fn stamp(db: &DB, format: u32) {
        db.put_cf(rocks::cf(db, CF_META).unwrap(), mk::FORMAT, record(format))
            .unwrap();
    }

    /// A store of `format`'s snapshot, built by the node itself.
    fn snapshot_of_format(dir: &std::path::Path, format: u32) -> super::super::SnapshotOf {
        let from = StateMachineStore::open(dir).unwrap().shared();
        stamp(&from.db(), format);
        from.build_snapshot().unwrap()
    }

    #[test]
    fn a_store_without_a_record_is_format_zero_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachineStore::open(dir.path()).unwrap().shared();
        assert_eq!(stored(&sm.db()).unwrap(), 0);
    }

    #[test]
    fn a_node_refuses_to_open_a_store_of_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = StateMachineStore::open(dir.path()).unwrap().shared();
            stamp(&sm.db(), FORMAT + 1);
        }
        let err = StateMachineStore::open(dir.path())
            .err()
            .expect("a newer store must not open");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("state-machine format {}", FORMAT + 1))
                && msg.contains("upgrade this node"),
            "{msg}"
        );

        let ok = tempfile::tempdir().unwrap();
        {
            let sm = StateMachineStore::open(ok.path()).unwrap().shared();
            stamp(&sm.db(), FORMAT);
        }
        let sm = StateMachineStore::open(ok.path()).unwrap().shared();
        assert_eq!(stored(&sm.db()).unwrap(), FORMAT);
    }

    #[test]
    fn a_snapshot_of_a_newer_format_is_refused_and_the_live_store_stays() {
        let newer = tempfile::tempdir().unwrap();
        let snap = snapshot_of_format(newer.path(), FORMAT + 1);
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachineStore::open(dir.path()).unwrap().shared();
        stamp(&sm.db(), 3);
        let gens = || std::fs::read_dir(dir.path().join("sm")).unwrap().count();
        let before = gens();

        let err = sm
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .expect_err("a newer snapshot must not install");
        assert!(err.to_string().contains("upgrade this node"), "{err}");
        assert_eq!(stored(&sm.db()).unwrap(), 3, "the live store stays");
        assert_eq!(sm.snapshots_installed(), 0);
        assert_eq!(gens(), before, "the refused copy is removed");

        // One of this node's own format installs, and its record with it.
        let same = tempfile::tempdir().unwrap();
        let snap = snapshot_of_format(same.path(), FORMAT);
        sm.install_snapshot(&snap.meta, snap.snapshot).unwrap();
        assert_eq!(sm.snapshots_installed(), 1);
        assert_eq!(stored(&sm.db()).unwrap(), FORMAT);
        assert_eq!(sm.format.load(std::sync::atomic::Ordering::Relaxed), FORMAT);
    }
}
