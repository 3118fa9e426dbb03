//! Snapshots as RocksDB checkpoints.
//!
//! A snapshot is a directory of RocksDB files (SST files hard-linked from
//! the live store, plus manifest and options) and a `<id>.meta` file beside
//! it; the meta file is written last, so a snapshot without one is
//! incomplete and ignored. A node keeps only its newest snapshot.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use rocksdb::{Options, DB};
use streamshield_proto::v1 as pb;

use super::meta::ALL_CFS;
use super::read_applied_state;
use crate::codec;
use crate::rocks::{corrupt, io_err};
use crate::types::SnapshotMeta;

/// The data of a snapshot: where its files are.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh, unused path under `parent` named `<kind>-<nanos>-<n>`: the
/// wall clock in ns and a per-process counter.
pub fn scratch_dir(parent: &Path, kind: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    parent.join(format!("{kind}-{nanos}-{n}"))
}

/// Only plain file names may come off the wire: no separators, no `..`.
pub fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Files of a snapshot directory, sorted by name.
pub fn list_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Copies a RocksDB directory cheaply: SST files are immutable, so they are
/// hard-linked; everything else is copied.
pub fn link_copy(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for f in list_files(src)? {
        let name = f
            .file_name()
            .ok_or_else(|| corrupt("file without a name"))?;
        let to = dst.join(name);
        let is_sst = f.extension().is_some_and(|e| e == "sst");
        if !(is_sst && fs::hard_link(&f, &to).is_ok()) {
            fs::copy(&f, &to)?;
        }
    }
    sync_dir(dst)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new
/// content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Reads the applied log id and membership out of a checkpoint.
pub fn meta_of_checkpoint(dir: &Path) -> io::Result<SnapshotMeta> {
    let db = DB::open_cf_for_read_only(&Options::default(), dir, ALL_CFS.iter(), false)
        .map_err(io_err)?;
    let (last_log_id, last_membership) = read_applied_state(&db)?;
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
    })
}

fn meta_path(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{id}.meta"))
}

/// Makes `dir` (already inside `root`, or movable there) the node's one
/// snapshot, described by `meta`, and deletes every other snapshot.
pub fn keep_as_current(root: &Path, dir: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotFiles> {
    let id = codec::snapshot_id(meta);
    let target = root.join(&id);
    if dir != target {
        if target.exists() {
            fs::remove_dir_all(&target)?;
        }
        fs::rename(dir, &target)?;
    }
    sync_dir(&target)?;
    write_atomic(
        &meta_path(root, &id),
        &codec::snapshot_meta_to_pb(meta).encode_to_vec(),
    )?;
    for e in fs::read_dir(root)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stem = name.strip_suffix(".meta").unwrap_or(name);
        let scratch = name.starts_with("incoming-")
            || name.starts_with("pinned-")
            || name.starts_with("tmp-");
        if stem != id && !scratch {
            if p.is_dir() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
    }
    Ok(SnapshotFiles { dir: target })
}

/// The newest complete snapshot under `root`, if any.
pub fn current(root: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotFiles)>> {
    let mut best: Option<(SnapshotMeta, SnapshotFiles)> = None;
    for e in fs::read_dir(root)? {
        let p = e?.path();
        let Some(id) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".meta"))
        else {
            continue;
        };
        let dir = root.join(id);
        if !dir.is_dir() {
            continue;
        }
        let raw = fs::read(&p)?;
        let m = pb::SnapshotMeta::decode(raw.as_slice())
            .map_err(|e| corrupt(format!("{}: {e}", p.display())))?;
        let meta = codec::snapshot_meta_from_pb(&m).map_err(corrupt)?;
        let newer = best
            .as_ref()
            .is_none_or(|(b, _)| meta.last_log_id > b.last_log_id);
        if newer {
            best = Some((meta, SnapshotFiles { dir }));
        }
    }
    Ok(best)
}

/// Removes leftovers of interrupted builds, transfers and sends.
pub fn clean_scratch(root: &Path) -> io::Result<()> {
    for e in fs::read_dir(root)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("incoming-") || name.starts_with("pinned-") || name.starts_with("tmp-")
        {
            fs::remove_dir_all(&p)?;
        }
    }
    Ok(())
}

/// A private hard-linked copy of a snapshot that stays readable while it is
/// sent, even if a newer snapshot replaces the original; removed on drop.
pub struct PinnedSnapshot {
    pub dir: PathBuf,
}

impl PinnedSnapshot {
    pub fn pin(snapshot: &SnapshotFiles) -> io::Result<Self> {
        let parent = snapshot
            .dir
            .parent()
            .ok_or_else(|| corrupt("snapshot directory has no parent"))?;
        let dir = scratch_dir(parent, "pinned");
        fs::create_dir_all(&dir)?;
        let pinned = Self { dir };
        for f in list_files(&snapshot.dir)? {
            let name = f
                .file_name()
                .ok_or_else(|| corrupt("file without a name"))?;
            fs::hard_link(&f, pinned.dir.join(name))?;
        }
        Ok(pinned)
    }
}

impl Drop for PinnedSnapshot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_cannot_escape_the_directory() {
        assert!(safe_file_name("000012.sst"));
        assert!(safe_file_name("MANIFEST-000005"));
        assert!(!safe_file_name("../etc/passwd"));
        assert!(!safe_file_name("a/b"));
        assert!(!safe_file_name(".."));
        assert!(!safe_file_name(""));
    }
}
