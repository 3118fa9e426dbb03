//! The next segment, made ready before the log needs it.
//!
//! A new segment has its full size and its blocks before use, so that no
//! sync of it grows the file: reserved by `fallocate` (its unwritten blocks
//! read as zeros), or a recycled old segment, whose records name another
//! segment and so are no records of the new one. A thread keeps one such
//! file, `spare.log`, ready, so a segment change is a rename; a purged
//! segment becomes the spare if there is none.
//!
//! Not zero-filled: writing zeros first puts every byte of the log through
//! the page cache twice, 8 % of the machine in a task-session run, for no
//! measurable gain in a write's latency (PERFORMANCE.md, "Task sessions:
//! the client and the commit's tail").

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

const SPARE: &str = "spare.log";
const PREPARING: &str = "spare.tmp";

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    /// Held while `spare.log` is renamed, replaced or checked.
    files: Mutex<()>,
    wake: Condvar,
    signal: Mutex<Signal>,
}

#[derive(Default)]
struct Signal {
    wanted: bool,
    closing: bool,
}

pub struct Spares {
    inner: Arc<Inner>,
}

impl Spares {
    pub fn start(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        match fs::remove_file(dir.join(PREPARING)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            segment_bytes,
            files: Mutex::new(()),
            wake: Condvar::new(),
            signal: Mutex::new(Signal {
                wanted: true,
                closing: false,
            }),
        });
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || prepare_loop(&worker))?;
        Ok(Self { inner })
    }

    /// Puts a segment of at least `size` bytes at `target`: the spare if it
    /// is big enough, else one written now. On return the name is durable.
    pub fn install(&self, target: &Path, size: u64) -> io::Result<()> {
        let d = &self.inner.dir;
        {
            let _files = self.inner.files.lock().expect("spare lock");
            let spare = d.join(SPARE);
            let ready = fs::metadata(&spare).is_ok_and(|m| m.len() >= size);
            if ready {
                fs::rename(&spare, target)?;
            } else {
                let tmp = target.with_extension("tmp");
                reserve(&tmp, size)?;
                fs::rename(&tmp, target)?;
            }
            sync_dir(d)?;
        }
        self.want();
        Ok(())
    }

    /// A segment no longer part of the log: the next spare if there is
    /// none and nobody reads it any more, else deleted. Failures only cost
    /// disk space, and are logged.
    pub fn recycle(&self, path: &Path, still_read: bool) {
        let _files = self.inner.files.lock().expect("spare lock");
        let spare = self.inner.dir.join(SPARE);
        let r = if !still_read && !spare.exists() {
            fs::rename(path, &spare)
        } else {
            fs::remove_file(path)
        };
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "recycling a log segment");
        }
    }

    fn want(&self) {
        let mut s = self.inner.signal.lock().expect("spare signal");
        s.wanted = true;
        self.inner.wake.notify_one();
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let mut s = self.inner.signal.lock().expect("spare signal");
        s.closing = true;
        self.inner.wake.notify_one();
    }
}

fn prepare_loop(inner: &Inner) {
    loop {
        {
            let mut s = inner.signal.lock().expect("spare signal");
            while !s.wanted && !s.closing {
                s = inner.wake.wait(s).expect("spare signal");
            }
            if s.closing {
                return;
            }
            s.wanted = false;
        }
        if inner.dir.join(SPARE).exists() {
            continue;
        }
        // Written without the lock: a segment change meanwhile writes its
        // own segment rather than wait for this one.
        let tmp = inner.dir.join(PREPARING);
        let made = reserve(&tmp, inner.segment_bytes).and_then(|()| {
            let _files = inner.files.lock().expect("spare lock");
            if inner.dir.join(SPARE).exists() {
                fs::remove_file(&tmp)
            } else {
                fs::rename(&tmp, inner.dir.join(SPARE))
            }
        });
        if let Err(e) = made {
            tracing::warn!(error = %e, "preparing the next log segment");
        }
    }
}

/// A file of `size` bytes that reads as zeros, its blocks allocated,
/// durable with its length.
fn reserve(path: &Path, size: u64) -> io::Result<()> {
    let f = File::create(path)?;
    let len = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment size past off_t"))?;
    // SAFETY: `f` is an open file for the whole call; posix_fallocate only
    // allocates its blocks (glibc writes zeros where the file system
    // cannot reserve them).
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    f.sync_all()
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
