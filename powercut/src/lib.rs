//! A FUSE file system that can lose power.
//!
//! `kill -9` of a server leaves the kernel's page cache intact, so a test
//! built on it never sees what a real power cut does to a log: every write
//! since the file's last fsync gone, or only some of it. [`PowerCutMount`]
//! mounts a pass-through of a backing directory ([`fs`]) whose files keep
//! their unsynced writes in memory ([`pages`]) until an fsync writes them
//! through, as LazyFS does. [`PowerCutMount::cut_power`] is the cut: from
//! that instant every change fails with `EIO`, and each unsynced page
//! reaches the disk only as the [`Writeback`] decides (none of them, or a
//! seeded random share, as the kernel's writeback might have managed).
//! Then the mount goes, and a fresh one over the same backing directory
//! is the machine after the reboot.
//!
//! Namespace changes are durable at once (see [`fs`]); the cut is about
//! data.

pub mod fs;
pub mod pages;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, MountOption};

/// Which unsynced pages reach the disk at a power cut.
#[derive(Debug, Clone)]
pub enum Writeback {
    /// None: the disk holds exactly what was synced.
    Nothing,
    /// Each page with probability `percent` / 100, from a seeded
    /// generator, so a failing run can be repeated.
    Random { seed: u64, percent: u8 },
}

impl Writeback {
    fn keeps_page(&mut self) -> bool {
        match self {
            Writeback::Nothing => false,
            Writeback::Random { seed, percent } => {
                // splitmix64: a fixed sequence per seed.
                *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = *seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                z % 100 < u64::from(*percent)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("/dev/fuse is missing: this machine cannot mount FUSE file systems")]
    NoFuse,
    #[error(
        "mounting {mountpoint}: {source} (FUSE needs root, or fusermount3 from Debian's fuse3)"
    )]
    Mount {
        mountpoint: PathBuf,
        source: io::Error,
    },
}

/// A mounted power-cut file system.
pub struct PowerCutMount {
    session: Option<BackgroundSession>,
    shared: Arc<fs::Shared>,
    mountpoint: PathBuf,
}

impl PowerCutMount {
    /// Mounts a pass-through of `backing` at `mountpoint` (an empty
    /// directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, MountError> {
        if !Path::new("/dev/fuse").exists() {
            return Err(MountError::NoFuse);
        }
        let shared = Arc::new(fs::Shared::default());
        let fs = fs::PowerCutFs::new(backing, shared.clone());
        let options = [MountOption::FSName("streamshield-powercut".into())];
        let session =
            fuser::spawn_mount2(fs, mountpoint, &options).map_err(|source| MountError::Mount {
                mountpoint: mountpoint.to_path_buf(),
                source,
            })?;
        Ok(Self {
            session: Some(session),
            shared,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes, for everything on this mount at the same instant.
    /// Kill the processes using it before [`Self::unmount`].
    pub fn cut_power(&self, mut writeback: Writeback) {
        self.shared.cut_power(&mut writeback);
    }

    /// Unmounts. Without a cut, unsynced data is written back first, as a
    /// clean unmount does.
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // A lazy unmount cannot fail on a busy mount, as a plain one (what
        // the session would do) can, and leave `join` waiting for ever.
        if let Err(e) = detach(&self.mountpoint) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting");
        }
        if std::thread::panicking() {
            drop(session);
        } else {
            session.join();
        }
    }
}

impl Drop for PowerCutMount {
    fn drop(&mut self) {
        self.stop();
    }
}

fn detach(mountpoint: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid C string for the call's duration.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    // Not root: the setuid helper unmounts for us.
    let out = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}
