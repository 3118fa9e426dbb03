//! One file's unsynced writes, kept the way a kernel's page cache keeps
//! them: dirty pages over the durable file, plus the length the writer
//! sees. An fsync writes them through; a power cut forgets them (or lets
//! a chosen part of them reach the disk, as writeback might have).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// The writer's view of one file: durable bytes in `backing`, newer ones
/// in `dirty`.
pub struct DirtyFile {
    pub backing: File,
    /// Pages written since the last sync, by page number, each `PAGE`
    /// bytes; bytes past `size` in them are zero.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// The length the writer sees.
    size: u64,
    /// Durable bytes at or past this offset are gone for the writer (a
    /// truncation since the last sync); `u64::MAX` if none.
    cut_at: u64,
}

impl DirtyFile {
    pub fn new(backing: File) -> io::Result<Self> {
        let size = backing.metadata()?.len();
        Ok(Self {
            backing,
            dirty: BTreeMap::new(),
            size,
            cut_at: u64::MAX,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.cut_at == u64::MAX
    }

    /// Page `n` as the writer sees it.
    fn page(&self, n: u64) -> io::Result<Box<[u8]>> {
        if let Some(p) = self.dirty.get(&n) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = n * PAGE;
        let durable = self.backing.metadata()?.len().min(self.cut_at);
        let visible = durable.min(self.size);
        if start < visible {
            let want = (visible - start).min(PAGE) as usize;
            read_full_at(&self.backing, &mut buf[..want], start)?;
        }
        Ok(buf)
    }

    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let n = at / PAGE;
            let page = self.page(n)?;
            let from = (at - n * PAGE) as usize;
            let to = ((end - n * PAGE).min(PAGE)) as usize;
            out.extend_from_slice(&page[from..to]);
            at = n * PAGE + to as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut at = offset;
        while at < end {
            let n = at / PAGE;
            let mut page = self.page(n)?;
            let from = (at - n * PAGE) as usize;
            let to = ((end - n * PAGE).min(PAGE)) as usize;
            let src = (at - offset) as usize;
            page[from..to].copy_from_slice(&data[src..src + (to - from)]);
            self.dirty.insert(n, page);
            at = n * PAGE + to as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.size {
            let keep = len.div_ceil(PAGE);
            self.dirty.split_off(&keep);
            if !len.is_multiple_of(PAGE) {
                let n = len / PAGE;
                let mut page = self.page(n)?;
                page[(len % PAGE) as usize..].fill(0);
                self.dirty.insert(n, page);
            }
            self.cut_at = self.cut_at.min(len);
        }
        self.size = len;
        Ok(())
    }

    /// Makes the writer's view durable (fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.cut_at != u64::MAX {
            self.backing.set_len(self.cut_at)?;
        }
        for (n, page) in &self.dirty {
            let start = n * PAGE;
            let len = (self.size - start).min(PAGE) as usize;
            self.backing.write_all_at(&page[..len], start)?;
        }
        self.backing.set_len(self.size)?;
        self.backing.sync_all()?;
        self.dirty.clear();
        self.cut_at = u64::MAX;
        Ok(())
    }

    /// What a power cut leaves: each dirty page reaches the disk only if
    /// `keep(page_number)` says so, truncations never, and the durable
    /// file grows only as far as a kept page reaches.
    pub fn power_cut(self, mut keep: impl FnMut(u64) -> bool) -> io::Result<()> {
        for (n, page) in &self.dirty {
            if !keep(*n) {
                continue;
            }
            let start = n * PAGE;
            let len = (self.size - start).min(PAGE) as usize;
            self.backing.write_all_at(&page[..len], start)?;
        }
        self.backing.sync_all()
    }
}

fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, DirtyFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, DirtyFile::new(f).unwrap())
    }

    fn durable(d: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(d.path().join("f")).unwrap()
    }

    #[test]
    fn the_writer_sees_its_writes_and_the_disk_only_synced_ones() {
        let (dir, mut f) = file_with(b"hello world");
        f.write(6, b"there, all").unwrap();
        assert_eq!(f.read(0, 100).unwrap(), b"hello there, all");
        assert_eq!(durable(&dir), b"hello world");
        f.sync().unwrap();
        assert_eq!(durable(&dir), b"hello there, all");
        assert!(f.is_clean());
    }

    #[test]
    fn a_power_cut_drops_unsynced_writes() {
        let (dir, mut f) = file_with(b"abc");
        f.write(PAGE * 3 + 5, b"far").unwrap();
        assert_eq!(f.size(), PAGE * 3 + 8);
        f.power_cut(|_| false).unwrap();
        assert_eq!(durable(&dir), b"abc");
    }

    #[test]
    fn a_power_cut_can_keep_some_pages() {
        let (dir, mut f) = file_with(&[]);
        f.write(0, &vec![1u8; PAGE as usize * 2]).unwrap();
        f.power_cut(|n| n == 1).unwrap();
        let d = durable(&dir);
        assert_eq!(d.len(), PAGE as usize * 2);
        assert!(d[..PAGE as usize].iter().all(|b| *b == 0));
        assert!(d[PAGE as usize..].iter().all(|b| *b == 1));
    }

    #[test]
    fn a_truncation_hides_durable_bytes_until_synced() {
        let (dir, mut f) = file_with(&vec![7u8; 10_000]);
        f.set_len(100).unwrap();
        f.set_len(9_000).unwrap();
        let r = f.read(0, 10_000).unwrap();
        assert_eq!(r.len(), 9_000);
        assert!(r[..100].iter().all(|b| *b == 7));
        assert!(r[100..].iter().all(|b| *b == 0), "cut bytes read as zeros");
        assert_eq!(durable(&dir).len(), 10_000, "not durable yet");
        f.sync().unwrap();
        assert_eq!(durable(&dir), r);
    }
}
