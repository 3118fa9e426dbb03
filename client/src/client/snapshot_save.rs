//! Saving a node's snapshot to a local directory (`streamshield snapshot
//! --save DIR`), as `etcdctl snapshot save` does: a node started on an
//! empty data directory with `--restore-from DIR` begins from it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use streamshield_proto::v1::{self as pb, admin_client::AdminClient};

use super::Client;
use crate::error::ClientError;

/// What a saved snapshot holds: the log position it is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// The index of the last entry it contains.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path} already exists; save into a new directory")]
    Exists { path: String },
    #[error("writing {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the node sent {0}")]
    Protocol(String),
}

/// A file name the node may send: one path component, nothing more.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

impl Client {
    /// Builds a snapshot on the node at `addr` and writes its files into
    /// `dir`, which must not exist yet. The files go to a sibling
    /// directory first and are renamed into place once all came, so `dir`
    /// is either a whole snapshot or absent.
    pub async fn save_snapshot(
        &self,
        addr: &str,
        dir: &Path,
    ) -> Result<SavedSnapshot, SaveSnapshotError> {
        if dir.exists() {
            return Err(SaveSnapshotError::Exists {
                path: dir.display().to_string(),
            });
        }
        let mut stream = AdminClient::new(self.channel(addr)?)
            .save_snapshot(pb::SaveSnapshotRequest {})
            .await
            .map_err(|s| ClientError::from_status(&s))?
            .into_inner();
        let partial = partial_dir(dir);
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| SaveSnapshotError::Io { path, source }
        };
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(io_err(&partial))?;
        let mut cleanup = RemoveOnDrop(Some(partial.clone()));
        let mut saved = SavedSnapshot {
            index: 0,
            term: 0,
            files: 0,
            bytes: 0,
        };
        let mut header = false;
        let mut current: Option<(String, fs::File, u64)> = None;
        loop {
            let chunk = stream
                .message()
                .await
                .map_err(|s| ClientError::from_status(&s))?
                .ok_or_else(|| SaveSnapshotError::Protocol("no end to the snapshot".into()))?;
            if let Some(h) = chunk.header {
                let last = h
                    .meta
                    .and_then(|m| m.last_log_id)
                    .ok_or_else(|| SaveSnapshotError::Protocol("a snapshot of nothing".into()))?;
                saved.index = last.index;
                saved.term = last.leader_id.map_or(0, |l| l.term);
                header = true;
                continue;
            }
            if !header {
                return Err(SaveSnapshotError::Protocol(
                    "files before the header".into(),
                ));
            }
            if chunk.done {
                break;
            }
            if !plain_file_name(&chunk.file) {
                return Err(SaveSnapshotError::Protocol(format!(
                    "a file named {:?}",
                    chunk.file
                )));
            }
            if current
                .as_ref()
                .is_none_or(|(name, _, _)| *name != chunk.file)
            {
                if let Some((_, f, _)) = current.take() {
                    f.sync_all().map_err(io_err(&partial))?;
                }
                let path = partial.join(&chunk.file);
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                saved.files += 1;
                current = Some((chunk.file.clone(), f, 0));
            }
            let (_, f, written) = current.as_mut().expect("a file is open");
            if chunk.offset != *written {
                return Err(SaveSnapshotError::Protocol(format!(
                    "{} at offset {} after {written} bytes",
                    chunk.file, chunk.offset
                )));
            }
            f.write_all(&chunk.data).map_err(io_err(&partial))?;
            *written += chunk.data.len() as u64;
            saved.bytes += chunk.data.len() as u64;
        }
        if let Some((_, f, _)) = current.take() {
            f.sync_all().map_err(io_err(&partial))?;
        }
        fs::rename(&partial, dir).map_err(io_err(dir))?;
        cleanup.0 = None;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(saved)
    }
}

fn partial_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Removes a partly written snapshot when saving it fails.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_written() {
        assert!(plain_file_name("000012.sst") && plain_file_name("MANIFEST-000005"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }
}
