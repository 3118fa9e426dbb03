//! Starting a node from a saved snapshot, as etcd's `etcdutl snapshot
//! restore` does.
//!
//! `streamshield snapshot --save DIR` (`Admin.SaveSnapshot`) writes a
//! node's snapshot: the files of a RocksDB checkpoint of its state
//! machine, which holds its own applied log id and membership. A node
//! started with `restore_from` on an empty data directory makes that
//! directory a copy of the snapshot before Raft starts:
//!
//! * the state machine is the checkpoint's files, copied, with the
//!   membership replaced by `initial_cluster` (the old cluster's members
//!   and addresses mean nothing to the new one);
//! * its own snapshot is a checkpoint of that store, so a member added
//!   later can be sent one;
//! * the Raft log is empty and purged up to the snapshot's log id, and the
//!   node has voted for itself in the snapshot's term: its first election
//!   is for the term after, so its entries follow the snapshot's in log
//!   order.
//!
//! Every founding member restored from the same snapshot holds the same
//! log up to it, so they elect a leader among themselves and go on from
//! there. Nothing after the snapshot's index is in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use prost::Message;

use crate::codec;
use crate::keys::meta as mk;
use crate::log_store::LogStore;
use crate::rocks::{self, corrupt, io_err};
use crate::state_machine::meta::{ALL_CFS, CF_META};
use crate::state_machine::{format, open_store, read_applied_state, snapshot};
use crate::types::{LogId, Membership, Node, StoredMembership, Vote};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot restore into {path}: it already holds a store")]
    NotEmpty { path: String },
    #[error("{path} is not a saved snapshot: {source}")]
    NotASnapshot { path: String, source: io::Error },
    #[error("the snapshot in {path} has no applied log id: it is of an empty store")]
    Empty { path: String },
    #[error("the members to restore as are not a valid membership: {0}")]
    Members(String),
    #[error("restoring into {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Whether `data_dir` holds no store yet (a restore's precondition).
pub fn pristine(data_dir: &Path) -> bool {
    !data_dir.join("raft").exists() && !data_dir.join("sm").exists()
}

/// Makes the empty `data_dir` of node `id` a copy of the snapshot saved in
/// `from`, as a member of `members`; returns the snapshot's log id.
pub async fn restore(
    from: &Path,
    data_dir: &Path,
    id: u64,
    members: &[(u64, String)],
) -> Result<LogId, RestoreError> {
    if !pristine(data_dir) {
        return Err(RestoreError::NotEmpty {
            path: data_dir.display().to_string(),
        });
    }
    let not_a_snapshot = |source| RestoreError::NotASnapshot {
        path: from.display().to_string(),
        source,
    };
    let saved = snapshot::meta_of_checkpoint(from).map_err(not_a_snapshot)?;
    let last = saved.last_log_id.ok_or_else(|| RestoreError::Empty {
        path: from.display().to_string(),
    })?;
    let voters: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
    let nodes: BTreeMap<u64, Node> = members
        .iter()
        .map(|(id, addr)| (*id, Node::new(addr)))
        .collect();
    let membership =
        Membership::new(vec![voters], nodes).map_err(|e| RestoreError::Members(e.to_string()))?;
    let write = |path: &Path| {
        let path = path.display().to_string();
        move |source| RestoreError::Write { path, source }
    };
    let live = data_dir.join("sm").join("gen-0");
    restore_store(from, &live, last, membership).map_err(write(&live))?;
    let log_path = data_dir.join("raft");
    let mut log = LogStore::open(&log_path).map_err(write(&log_path))?;
    log.purge(last).await.map_err(write(&log_path))?;
    log.save_vote(&Vote::new(last.leader_id.term, id))
        .await
        .map_err(write(&log_path))?;
    log.close_and_wait().await;
    tracing::info!(from = %from.display(), last_log_id = ?last, "restored a saved snapshot");
    Ok(last)
}

/// The state machine and its snapshot: the saved files copied to `live`,
/// the membership rewritten, and a checkpoint of that as the snapshot.
fn restore_store(from: &Path, live: &Path, last: LogId, membership: Membership) -> io::Result<()> {
    fs::create_dir_all(live)?;
    for file in snapshot::list_files(from)? {
        let name = file
            .file_name()
            .ok_or_else(|| corrupt(format!("{} has no file name", file.display())))?;
        fs::copy(&file, live.join(name))?;
    }
    let db = open_store(live)?;
    format::readable(&db, &format!("the snapshot {}", from.display()))?;
    let (applied, _) = read_applied_state(&db)?;
    if applied != Some(last) {
        return Err(corrupt(format!(
            "the copy applied {applied:?}, the snapshot {last:?}"
        )));
    }
    let stored = StoredMembership::new(Some(last), membership);
    db.put_cf(
        rocks::cf(&db, CF_META)?,
        mk::MEMBERSHIP,
        codec::stored_membership_to_pb(&stored).encode_to_vec(),
    )
    .map_err(io_err)?;
    for cf in ALL_CFS {
        db.flush_cf(rocks::cf(&db, cf)?).map_err(io_err)?;
    }
    let snap_root: PathBuf = live
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("snapshots"))
        .ok_or_else(|| corrupt("a state machine directory outside a data directory"))?;
    fs::create_dir_all(&snap_root)?;
    let tmp = snapshot::scratch_dir(&snap_root, "tmp");
    rocksdb::checkpoint::Checkpoint::new(&db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(io_err)?;
    drop(db);
    let meta = snapshot::meta_of_checkpoint(&tmp)?;
    snapshot::keep_as_current(&snap_root, &tmp, &meta)?;
    snapshot::sync_dir(live)?;
    Ok(())
}
