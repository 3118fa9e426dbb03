//! The Raft log's entries in segment files that are allocated before use.
//!
//! An fsync that only overwrites blocks a file already has is cheaper than
//! one that also grows the file: on this VM's ext4 (no journal) an append
//! plus `fdatasync` also writes the inode back, a second synchronous
//! write. With 3 writers at once, as a local cluster's replicas fsync, a
//! 400 B overwrite + `fdatasync` took 153 µs against 201-205 µs for an
//! append (PERFORMANCE.md, "The 1-client write: where its time goes"). RocksDB's WAL appends, so the
//! log's entries live here instead: each segment gets its full size and
//! blocks (`fallocate`, or it is a recycled old segment) before it is used,
//! records are written over it in order, and a sync is one `fdatasync` of
//! the segment being written.
//!
//! Records ([`record`]) carry their segment's number, a generation and a
//! checksum; [`recovery`] reads the log back as the longest run of good
//! records, so a torn tail, a recycled file's old records and what a
//! truncation cut off all end it. A truncation zeroes the header of the
//! first record it removes and raises the generation, so records written
//! after it and older ones behind them are told apart; the generation
//! never goes back across a restart ([`generation`]). A segment that is
//! full ends with a [`record::Kind::SegmentEnd`] record, written only
//! after the next segment exists under its name, and synced at once.
//! Purged segments are recycled as the next spare or deleted.

mod generation;
pub mod record;
mod recovery;
mod spare;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::types::LogId;
use record::{Kind, HEADER_BYTES};
use spare::Spares;

/// Size of a segment; an entry larger than that gets a segment of its own
/// size.
pub const SEGMENT_BYTES: u64 = 16 << 20;

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:020}.log"))
}

/// One segment file, open for reads and writes.
pub struct Segment {
    seq: u64,
    file: File,
    size: u64,
}

impl Segment {
    fn open(dir: &Path, seq: u64) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, seq))?;
        let size = file.metadata()?.len();
        Ok(Self { seq, file, size })
    }

    /// Makes what was written to this segment durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Where an entry's record is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    log_id: LogId,
    segment: u64,
    /// Of the record's header; the payload follows it.
    offset: u64,
    len: u32,
}

struct State {
    segments: BTreeMap<u64, Arc<Segment>>,
    /// The entries, oldest first, consecutive indexes.
    slots: VecDeque<Slot>,
    current: u64,
    write_at: u64,
    generation: u64,
}

pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    spares: Spares,
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing) and reads it back.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let spares = Spares::start(dir, segment_bytes)?;
        let found = recovery::recover(dir)?;
        let mut segments = BTreeMap::new();
        for seq in &found.segments {
            segments.insert(*seq, Arc::new(Segment::open(dir, *seq)?));
        }
        let (current, write_at) = match found.end {
            Some(end) => (end.segment, end.offset),
            None => {
                let seq = found.segments.last().map_or(1, |s| s + 1);
                spares.install(&segment_path(dir, seq), segment_bytes)?;
                segments.insert(seq, Arc::new(Segment::open(dir, seq)?));
                (seq, 0)
            }
        };
        let slots = found
            .entries
            .into_iter()
            .map(|e| Slot {
                log_id: e.log_id,
                segment: e.segment,
                offset: e.offset,
                len: e.len,
            })
            .collect();
        metrics::gauge!("streamshield_log_segments").set(segments.len() as f64);
        let generation = found.generation.max(generation::load(dir)?) + 1;
        generation::save(dir, generation)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(State {
                segments,
                slots,
                current,
                write_at,
                generation,
            }),
            spares,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("segment log lock")
    }

    pub fn first_index(&self) -> Option<u64> {
        self.lock().slots.front().map(|s| s.log_id.index)
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.lock().slots.back().map(|s| s.log_id)
    }

    /// Bytes of the records of the entries after `index` (all of them if
    /// `index` is before the first).
    pub fn bytes_after(&self, index: u64) -> u64 {
        let st = self.lock();
        st.slots
            .iter()
            .rev()
            .take_while(|s| s.log_id.index > index)
            .map(|s| record_bytes(s.len))
            .sum()
    }

    /// The index to purge through so that the entries left at or before
    /// `through` hold at most `keep` bytes; `None` if they already do.
    pub fn purge_point(&self, through: u64, keep: u64) -> Option<u64> {
        let st = self.lock();
        let first = st.slots.front()?.log_id.index;
        let end = usize::try_from(through.checked_sub(first)?.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(st.slots.len());
        let mut kept = 0u64;
        for s in st.slots.range(..end).rev() {
            kept += record_bytes(s.len);
            if kept > keep {
                return Some(s.log_id.index);
            }
        }
        None
    }

    /// The segment a sync must cover now: every earlier one was synced
    /// when it was ended.
    pub fn current_segment(&self) -> Arc<Segment> {
        let st = self.lock();
        st.segments[&st.current].clone()
    }

    /// Writes `entries` (log id and encoded `pb::Entry`, consecutive
    /// indexes following the last entry) after the last record. They are
    /// readable at once and durable after the next [`Segment::sync`] of
    /// [`Self::current_segment`].
    pub fn append(&self, entries: &[(LogId, Vec<u8>)]) -> io::Result<()> {
        let mut st = self.lock();
        let mut buf = Vec::new();
        let mut start = st.write_at;
        for (log_id, payload) in entries {
            if let Some(last) = st.slots.back() {
                if log_id.index != last.log_id.index + 1 {
                    return Err(io::Error::other(format!(
                        "append of index {} after {}",
                        log_id.index, last.log_id.index
                    )));
                }
            }
            let rec_len = (HEADER_BYTES + payload.len()) as u64;
            let size = st.segments[&st.current].size;
            let end = start + buf.len() as u64 + rec_len;
            if end + HEADER_BYTES as u64 > size {
                self.flush_buffer(&mut st, start, &mut buf)?;
                self.next_segment(&mut st, rec_len)?;
                start = st.write_at;
            }
            // Encoded for the segment it goes to.
            let rec = record::encode(st.current, st.generation, Kind::Entry, payload);
            let offset = start + buf.len() as u64;
            buf.extend_from_slice(&rec);
            let segment = st.current;
            st.slots.push_back(Slot {
                log_id: *log_id,
                segment,
                offset,
                len: payload.len() as u32,
            });
        }
        self.flush_buffer(&mut st, start, &mut buf)
    }

    fn flush_buffer(&self, st: &mut State, at: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        st.segments[&st.current].file.write_all_at(buf, at)?;
        st.write_at = at + buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Ends the current segment and goes on in a new one with room for a
    /// record of `need` bytes. The new segment is in place under its name
    /// before the end record that points to it is written, and the old
    /// segment is synced before anything is written to the new one.
    fn next_segment(&self, st: &mut State, need: u64) -> io::Result<()> {
        let seq = st.current + 1;
        let size = self.segment_bytes.max(need + HEADER_BYTES as u64);
        self.spares.install(&segment_path(&self.dir, seq), size)?;
        let seg = Arc::new(Segment::open(&self.dir, seq)?);
        let old = st.segments[&st.current].clone();
        let end = record::encode(old.seq, st.generation, Kind::SegmentEnd, &[]);
        old.file.write_all_at(&end, st.write_at)?;
        old.sync()?;
        st.segments.insert(seq, seg);
        st.current = seq;
        st.write_at = 0;
        metrics::counter!("streamshield_log_segments_started_total").increment(1);
        metrics::gauge!("streamshield_log_segments").set(st.segments.len() as f64);
        Ok(())
    }

    /// Encoded entries `[start, end)`, oldest first, stopping before the
    /// one that would take their size past `max_bytes` (the first always
    /// comes).
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Vec<u8>>> {
        let wanted: Vec<(Slot, Arc<Segment>)> = {
            let st = self.lock();
            let Some(first) = st.slots.front().map(|s| s.log_id.index) else {
                return Ok(Vec::new());
            };
            let from = start.saturating_sub(first) as usize;
            let mut bytes = 0usize;
            let mut out = Vec::new();
            for s in st.slots.iter().skip(from) {
                if s.log_id.index >= end
                    || (!out.is_empty() && bytes.saturating_add(s.len as usize) > max_bytes)
                {
                    break;
                }
                bytes = bytes.saturating_add(s.len as usize);
                out.push((*s, st.segments[&s.segment].clone()));
            }
            out
        };
        wanted
            .into_iter()
            .map(|(s, seg)| read_payload(&seg, &s))
            .collect()
    }

    /// Removes every entry from index `from` on. The first removed record's
    /// header is zeroed, so the log ends there after a restart unless new
    /// records follow; those are written at a higher generation, which
    /// tells them from the removed records behind them.
    pub fn truncate_from(&self, from: u64) -> io::Result<()> {
        let mut st = self.lock();
        let Some(first) = st.slots.front().map(|s| s.log_id.index) else {
            return Ok(());
        };
        let keep = from.saturating_sub(first) as usize;
        let Some(cut) = st.slots.get(keep).copied() else {
            return Ok(());
        };
        let seg = st.segments[&cut.segment].clone();
        seg.file.write_all_at(&[0; HEADER_BYTES], cut.offset)?;
        st.slots.truncate(keep);
        let later: Vec<u64> = st
            .segments
            .range(cut.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        let dropped_any = !later.is_empty();
        for seq in later {
            if let Some(seg) = st.segments.remove(&seq) {
                // A reader may still hold it: then it is deleted, not reused.
                let still_read = Arc::strong_count(&seg) > 1;
                self.spares
                    .recycle(&segment_path(&self.dir, seq), still_read);
            }
        }
        if dropped_any {
            // Durably gone before this returns: a segment left behind a
            // cut one would read as damage after a restart.
            spare::sync_dir(&self.dir)?;
        }
        st.current = cut.segment;
        st.write_at = cut.offset;
        st.generation += 1;
        generation::save(&self.dir, st.generation)?;
        metrics::gauge!("streamshield_log_segments").set(st.segments.len() as f64);
        Ok(())
    }

    /// Forgets entries up to `up_to` and recycles every segment that holds
    /// nothing newer.
    pub fn purge(&self, up_to: u64) -> io::Result<()> {
        let mut st = self.lock();
        while st.slots.front().is_some_and(|s| s.log_id.index <= up_to) {
            st.slots.pop_front();
        }
        let keep_from = st.slots.front().map_or(st.current, |s| s.segment);
        let old: Vec<u64> = st.segments.range(..keep_from).map(|(k, _)| *k).collect();
        for seq in old {
            if let Some(seg) = st.segments.remove(&seq) {
                let still_read = Arc::strong_count(&seg) > 1;
                self.spares
                    .recycle(&segment_path(&self.dir, seq), still_read);
            }
        }
        metrics::gauge!("streamshield_log_segments").set(st.segments.len() as f64);
        Ok(())
    }
}

/// A record's bytes in its segment: header and payload.
fn record_bytes(payload: u32) -> u64 {
    HEADER_BYTES as u64 + u64::from(payload)
}

fn read_payload(seg: &Segment, s: &Slot) -> io::Result<Vec<u8>> {
    let mut raw = vec![0u8; HEADER_BYTES + s.len as usize];
    seg.file.read_exact_at(&mut raw, s.offset)?;
    let (h, payload) = raw.split_at(HEADER_BYTES);
    let h: &[u8; HEADER_BYTES] = h.try_into().expect("header size");
    if !record::verify(h, payload) {
        return Err(crate::rocks::corrupt(format!(
            "log entry {} in segment {}: checksum mismatch",
            s.log_id.index, seg.seq
        )));
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests;
