//! Reading a segment log back after a restart: the longest run of good
//! records from the first segment on.

use std::fs;
use std::io;
use std::path::Path;

use prost::Message;
use streamshield_proto::v1 as pb;

use super::record::{self, Kind, HEADER_BYTES};
use super::segment_path;
use crate::codec;
use crate::rocks::corrupt;
use crate::types::LogId;

pub struct FoundEntry {
    pub log_id: LogId,
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Where the next record goes.
pub struct End {
    pub segment: u64,
    pub offset: u64,
}

pub struct Found {
    /// The segments the log runs through, in order.
    pub segments: Vec<u64>,
    /// The entries of the newest run of consecutive indexes.
    pub entries: Vec<FoundEntry>,
    /// `None` if there is no segment, or the last one ended with an end
    /// record and the next one is missing: the log goes on in a new one.
    pub end: Option<End>,
    /// The highest generation read.
    pub generation: u64,
}

fn segment_files(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads the log in `dir` back and deletes segments it does not reach.
pub fn recover(dir: &Path) -> io::Result<Found> {
    let files = segment_files(dir)?;
    let mut found = Found {
        segments: Vec::new(),
        entries: Vec::new(),
        end: None,
        generation: 0,
    };
    let mut next = files.first().copied();
    while let Some(seq) = next.take() {
        found.segments.push(seq);
        // One read per segment; records are parsed from memory.
        let data = fs::read(segment_path(dir, seq))?;
        let mut off = 0u64;
        let ended = loop {
            let Some((h, payload)) = record_at(&data, off, seq) else {
                break true;
            };
            if h.generation < found.generation {
                break true;
            }
            found.generation = h.generation;
            match h.kind {
                Kind::SegmentEnd => break false,
                Kind::Entry => {
                    let log_id = entry_log_id(payload, seq, off)?;
                    if let Some(last) = found.entries.last() {
                        if log_id.index <= last.log_id.index {
                            return Err(corrupt(format!(
                                "log segment {seq} at {off}: index {} after {}",
                                log_id.index, last.log_id.index
                            )));
                        }
                        if log_id.index > last.log_id.index + 1 {
                            // Everything before was purged (a snapshot
                            // past the log's end); only the newest run counts.
                            found.entries.clear();
                        }
                    }
                    found.entries.push(FoundEntry {
                        log_id,
                        segment: seq,
                        offset: off,
                        len: h.len,
                    });
                    off += HEADER_BYTES as u64 + u64::from(h.len);
                }
            }
        };
        if ended {
            // Only the last segment written can end in a torn write: an
            // earlier one was synced with its end record before the next
            // one got any. One that ends early while the next holds records
            // is damaged, and reading on would skip or lose entries.
            if files.contains(&(seq + 1)) && starts_with_a_record(dir, seq + 1)? {
                return Err(corrupt(format!(
                    "log segment {seq} is damaged at offset {off}: it ends there, \
                     but segment {} after it holds records",
                    seq + 1
                )));
            }
            found.end = Some(End {
                segment: seq,
                offset: off,
            });
        } else if files.contains(&(seq + 1)) {
            next = Some(seq + 1);
        }
    }
    let last = found.segments.last().copied().unwrap_or(0);
    for seq in files.iter().filter(|s| **s > last) {
        fs::remove_file(segment_path(dir, *seq))?;
    }
    Ok(found)
}

/// The record of segment `seq` at `off` in `data`, if a whole, good one
/// is there.
fn record_at(data: &[u8], off: u64, seq: u64) -> Option<(record::Header, &[u8])> {
    let start = usize::try_from(off).ok()?;
    let body = start.checked_add(HEADER_BYTES)?;
    let raw: &[u8; HEADER_BYTES] = data.get(start..body)?.try_into().ok()?;
    let h = record::header(raw, seq, (data.len() - body) as u64)?;
    let payload = data.get(body..body + h.len as usize)?;
    record::verify(raw, payload).then_some((h, payload))
}

/// Whether segment `seq` begins with one of its own records.
fn starts_with_a_record(dir: &Path, seq: u64) -> io::Result<bool> {
    let data = fs::read(segment_path(dir, seq))?;
    Ok(record_at(&data, 0, seq).is_some())
}

fn entry_log_id(payload: &[u8], seq: u64, off: u64) -> io::Result<LogId> {
    let bad = |e: String| corrupt(format!("log segment {seq} at {off}: {e}"));
    let e = pb::Entry::decode(payload).map_err(|e| bad(e.to_string()))?;
    let log_id = e
        .log_id
        .ok_or_else(|| bad("an entry without a log id".into()))?;
    codec::log_id_from_pb(&log_id).map_err(|e| bad(e.to_string()))
}
