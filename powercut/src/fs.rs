//! The FUSE file system: every call passes through to a backing
//! directory, except that file data stays in [`DirtyFile`]s until an
//! fsync, and that nothing changes once the power is cut.
//!
//! Namespace changes (create, rename, link, unlink, mkdir) reach the
//! backing directory at once, as on a file system that journals its
//! metadata in order; only file data is at risk. That is the risk the
//! servers' logs must handle: records written and not yet synced.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::pages::DirtyFile;
use crate::Writeback;

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// What the mount and its controller share.
#[derive(Default)]
pub struct Shared {
    /// Set at the power cut: from then on every change fails with `EIO`.
    pub cut: AtomicBool,
    /// Held (shared) by every call that changes something, so that the
    /// cut, which takes it exclusively, falls between two calls.
    pub gate: RwLock<()>,
    /// Regular files with a handle open (or unsynced data), by inode.
    pub files: Mutex<HashMap<u64, DirtyFile>>,
}

impl Shared {
    pub fn files(&self) -> MutexGuard<'_, HashMap<u64, DirtyFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the power on for one call; `None` once it is cut.
    fn powered(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        (!self.cut.load(Ordering::SeqCst)).then_some(g)
    }

    /// Cuts the power: changes from now on fail, and each file's unsynced
    /// pages reach the disk only as `writeback` decides.
    pub fn cut_power(&self, writeback: &mut Writeback) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.cut.store(true, Ordering::SeqCst);
        let mut files: Vec<(u64, DirtyFile)> = self.files().drain().collect();
        files.sort_by_key(|(ino, _)| *ino);
        for (_, f) in files {
            if let Err(e) = f.power_cut(|_| writeback.keeps_page()) {
                tracing::warn!(error = %e, "writing back at the power cut");
            }
        }
    }
}

struct Inode {
    /// Paths relative to the backing root (several after `link`).
    paths: Vec<PathBuf>,
    /// Open handles.
    open: u32,
}

pub struct PowerCutFs {
    root: PathBuf,
    shared: Arc<Shared>,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind_of(m: &fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

impl PowerCutFs {
    pub fn new(root: &Path, shared: Arc<Shared>) -> Self {
        let mut fs = Self {
            root: root.to_path_buf(),
            shared,
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: ROOT + 1,
        };
        fs.inodes.insert(
            ROOT,
            Inode {
                paths: vec![PathBuf::new()],
                open: 0,
            },
        );
        fs.by_path.insert(PathBuf::new(), ROOT);
        fs
    }

    fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    fn rel(&self, ino: u64) -> Option<&Path> {
        self.inodes
            .get(&ino)
            .and_then(|i| i.paths.first())
            .map(PathBuf::as_path)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.rel(parent).map(|p| p.join(name))
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.by_path.get(rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                paths: vec![rel.to_path_buf()],
                open: 0,
            },
        );
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    fn attr(&self, ino: u64) -> io::Result<FileAttr> {
        let files = self.shared.files();
        let m = match (files.get(&ino), self.rel(ino)) {
            (Some(f), _) => f.backing.metadata()?,
            (None, Some(rel)) => fs::symlink_metadata(self.root.join(rel))?,
            (None, None) => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let size = files.get(&ino).map_or(m.len(), DirtyFile::size);
        Ok(FileAttr {
            ino,
            size,
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(&m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entry_of(&mut self, rel: &Path, reply: ReplyEntry) {
        let ino = self.ino_for(rel);
        match self.attr(ino) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Opens `ino`'s data for a new handle.
    fn open_file(&mut self, ino: u64, truncate: bool) -> io::Result<()> {
        let mut files = self.shared.files();
        let file = match files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let rel = self
                    .inodes
                    .get(&ino)
                    .and_then(|i| i.paths.first())
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(self.root.join(rel))?;
                e.insert(DirtyFile::new(f)?)
            }
        };
        if truncate {
            file.set_len(0)?;
        }
        drop(files);
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open += 1;
        }
        Ok(())
    }

    /// Forgets `ino` once nothing names or holds it.
    fn drop_if_unused(&mut self, ino: u64) {
        let unused = self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.paths.is_empty() && i.open == 0);
        if unused {
            self.inodes.remove(&ino);
            self.shared.files().remove(&ino);
        } else if self.inodes.get(&ino).is_some_and(|i| i.open == 0) {
            // Closed: clean data needs no handle; unsynced data stays.
            let mut files = self.shared.files();
            if files.get(&ino).is_some_and(DirtyFile::is_clean) {
                files.remove(&ino);
            }
        }
    }

    fn remove_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(i) = self.inodes.get_mut(&ino) {
                i.paths.retain(|p| p != rel);
            }
            self.drop_if_unused(ino);
        }
    }

    fn rename_paths(&mut self, from: &Path, to: &Path) {
        self.remove_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            // `join("")` would add a trailing slash: "not a directory".
            let rest = old.strip_prefix(from).expect("prefix");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            if let Some(i) = self.inodes.get_mut(&ino) {
                for p in &mut i.paths {
                    if *p == old {
                        p.clone_from(&new);
                    }
                }
            }
        }
    }
    /// Unlink and rmdir: `remover` on the backing path, then forget it.
    fn remove(
        &mut self,
        parent: u64,
        name: &OsStr,
        remover: fn(PathBuf) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match remover(self.root.join(&rel)) {
            Ok(()) => {
                self.remove_path(&rel);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_attr(&self, ino: u64, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Filesystem for PowerCutFs {
    fn destroy(&mut self) {
        if !self.is_cut() {
            // A clean unmount writes everything back, as a real one does.
            for f in self.shared.files().values_mut() {
                if let Err(e) = f.sync() {
                    tracing::warn!(error = %e, "writing back at unmount");
                }
            }
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        if fs::symlink_metadata(self.root.join(&rel)).is_err() {
            return reply.error(libc::ENOENT);
        }
        self.entry_of(&rel, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.reply_attr(ino, reply)
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let Some(rel) = self.rel(ino).map(Path::to_path_buf) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(mode) = mode {
            let p = fs::Permissions::from_mode(mode & 0o7777);
            if let Err(e) = fs::set_permissions(self.root.join(&rel), p) {
                return reply.error(errno(&e));
            }
        }
        if let Some(size) = size {
            let r = self.open_file(ino, false).and_then(|()| {
                let r = self
                    .shared
                    .files()
                    .get_mut(&ino)
                    .expect("opened")
                    .set_len(size);
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.open -= 1;
                }
                r
            });
            if let Err(e) = r {
                return reply.error(errno(&e));
            }
        }
        self.reply_attr(ino, reply)
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        let made = fs::create_dir(self.root.join(&rel)).and_then(|()| {
            fs::set_permissions(
                self.root.join(&rel),
                fs::Permissions::from_mode(mode & 0o7777),
            )
        });
        match made {
            Ok(()) => self.entry_of(&rel, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, fs::remove_file, reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, fs::remove_dir, reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        if flags != 0 {
            return reply.error(libc::EINVAL);
        }
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(libc::ENOENT);
        };
        match fs::rename(self.root.join(&from), self.root.join(&to)) {
            Ok(()) => {
                self.rename_paths(&from, &to);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let (Some(from), Some(to)) = (
            self.rel(ino).map(Path::to_path_buf),
            self.child(newparent, newname),
        ) else {
            return reply.error(libc::ENOENT);
        };
        if let Err(e) = fs::hard_link(self.root.join(&from), self.root.join(&to)) {
            return reply.error(errno(&e));
        }
        self.by_path.insert(to.clone(), ino);
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.paths.push(to);
        }
        match self.attr(ino) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let truncate = flags & libc::O_TRUNC != 0;
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        match self.open_file(ino, truncate) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let Some(rel) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        let mut o = OpenOptions::new();
        o.write(true).create(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        }
        if let Err(e) = o.open(self.root.join(&rel)) {
            return reply.error(errno(&e));
        }
        let ino = self.ino_for(&rel);
        let opened = self
            .open_file(ino, flags & libc::O_TRUNC != 0)
            .and_then(|()| self.attr(ino));
        match opened {
            Ok(a) => reply.created(&TTL, &a, 0, 0, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let files = self.shared.files();
        let Some(f) = files.get(&ino) else {
            return reply.error(libc::EBADF);
        };
        match f.read(offset.max(0) as u64, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let mut files = self.shared.files();
        let Some(f) = files.get_mut(&ino) else {
            return reply.error(libc::EBADF);
        };
        match f.write(offset.max(0) as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open = i.open.saturating_sub(1);
        }
        self.drop_if_unused(ino);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        match self.shared.files().get_mut(&ino).map(DirtyFile::sync) {
            Some(Err(e)) => reply.error(errno(&e)),
            _ => reply.ok(),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.rel(ino).map(Path::to_path_buf) else {
            return reply.error(libc::ENOENT);
        };
        let listed = match fs::read_dir(self.root.join(&rel)) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in listed.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let child = rel.join(e.file_name());
            let child_ino = self.ino_for(&child);
            entries.push((child_ino, kind_of(&m), e.file_name()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let shared = self.shared.clone();
        let Some(_power) = shared.powered() else {
            return reply.error(libc::EIO);
        };
        let mut files = self.shared.files();
        let Some(f) = files.get_mut(&ino) else {
            return reply.error(libc::EBADF);
        };
        if mode == libc::FALLOC_FL_KEEP_SIZE {
            return reply.ok();
        }
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let end = (offset.max(0) as u64).saturating_add(length.max(0) as u64);
        let r = if end > f.size() {
            f.set_len(end)
        } else {
            Ok(())
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `s` is written by the call.
    let r = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    Ok(unsafe { s.assume_init() })
}
