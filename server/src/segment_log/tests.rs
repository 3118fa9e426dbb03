//! What the segment log reads back after a restart, whatever state the
//! files were left in.

use openraft::EntryPayload;
use prost::Message;
use streamshield_proto::v1::{self as pb, command, sync_op};

use super::*;
use crate::codec;
use crate::command::SharedCommand;
use crate::types::{Entry, LeaderId};

/// Small segments: a few dozen records each, so tests cross many.
const SMALL: u64 = 4 << 10;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(LeaderId { term, node_id: 1 }, index)
}

/// Entry `index` of `term` carrying a value of `fill` bytes, encoded.
fn entry(term: u64, index: u64, fill: usize) -> (LogId, Vec<u8>) {
    let e = Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(SharedCommand::fixed(pb::Command {
            kind: Some(command::Kind::Write(pb::SyncWrite {
                job: "j".into(),
                ops: vec![pb::SyncOp {
                    state: "s".into(),
                    key: b"k".to_vec(),
                    kind: Some(sync_op::Kind::Put(pb::SyncPut {
                        value: vec![index as u8; fill],
                    })),
                }],
                ..Default::default()
            })),
        })),
    };
    (e.log_id, codec::entry_to_pb(&e).encode_to_vec())
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>, fill: usize) -> Vec<(LogId, Vec<u8>)> {
    range.map(|i| entry(term, i, fill)).collect()
}

fn reopen(dir: &Path) -> SegmentLog {
    SegmentLog::open(dir, SMALL).expect("open")
}

fn all(log: &SegmentLog) -> Vec<Vec<u8>> {
    log.read(0, u64::MAX, usize::MAX).expect("read")
}

fn segment_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("seg-")
        })
        .count()
}

#[test]
fn entries_read_back_after_a_restart_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=200, 60);
    {
        let log = reopen(dir.path());
        for chunk in written.chunks(7) {
            log.append(chunk).unwrap();
        }
        log.current_segment().sync().unwrap();
        assert!(segment_count(dir.path()) > 3, "the test crosses segments");
        assert_eq!(
            all(&log),
            written.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>()
        );
    }
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(1, 200)));
    assert_eq!(log.first_index(), Some(1));
    assert_eq!(
        all(&log),
        written.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>()
    );
    // Bounded reads stop early but never return nothing.
    assert_eq!(log.read(10, 20, 1).unwrap().len(), 1);
    assert_eq!(log.read(10, 20, usize::MAX).unwrap().len(), 10);
    log.append(&entries(1, 201..=201, 60)).unwrap();
}

#[test]
fn a_torn_record_ends_the_log_before_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=10, 40)).unwrap();
        log.current_segment().sync().unwrap();
    }
    // Damage the last record's payload, as a write cut short would.
    let seg = segment_path(dir.path(), 1);
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let log = reopen(dir.path());
    let last = log.lock().slots.back().copied().unwrap();
    drop(log);
    f.write_all_at(&[0xff; 3], last.offset + HEADER_BYTES as u64 + 5)
        .unwrap();
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(1, 9)));
    // The log goes on from there, and that sticks.
    log.append(&entries(2, 10..=12, 40)).unwrap();
    log.current_segment().sync().unwrap();
    drop(log);
    assert_eq!(reopen(dir.path()).last_log_id(), Some(log_id(2, 12)));
}

#[test]
fn truncated_entries_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=10, 40)).unwrap();
        log.truncate_from(6).unwrap();
        assert_eq!(log.last_log_id(), Some(log_id(1, 5)));
        log.current_segment().sync().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(1, 5)), "the cut is durable");
    // Records of the same size as the removed ones: old 9 and 10 now sit
    // exactly behind the new 8, and only the generation tells them apart.
    log.append(&entries(2, 6..=8, 40)).unwrap();
    log.current_segment().sync().unwrap();
    drop(log);
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(2, 8)));
    let got = all(&log);
    assert_eq!(got.len(), 8);
    assert_eq!(got[5], entry(2, 6, 40).1);
}

#[test]
fn a_truncation_into_an_earlier_segment_drops_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=150, 60)).unwrap();
        log.truncate_from(20).unwrap();
        log.append(&entries(3, 20..=25, 60)).unwrap();
        log.current_segment().sync().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(3, 25)));
    assert_eq!(all(&log).len(), 25);
}

#[test]
fn purged_segments_are_recycled_and_their_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = reopen(dir.path());
    log.append(&entries(1, 1..=300, 60)).unwrap();
    let before = segment_count(dir.path());
    log.purge(250).unwrap();
    assert!(segment_count(dir.path()) < before);
    assert!(log.first_index().is_some_and(|f| f == 251));
    // Enough new entries to use recycled files as new segments.
    log.append(&entries(1, 301..=600, 60)).unwrap();
    log.current_segment().sync().unwrap();
    drop(log);
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(1, 600)));
    let first = log.first_index().unwrap();
    assert!(first <= 251, "nothing after the purge point is lost");
    assert_eq!(all(&log).len() as u64, 600 - first + 1);
}

#[test]
fn after_a_purge_past_the_end_the_log_restarts_at_the_new_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=10, 40)).unwrap();
        log.purge(1000).unwrap();
        assert_eq!(log.last_log_id(), None);
        log.append(&entries(2, 1001..=1003, 40)).unwrap();
        log.current_segment().sync().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(log.first_index(), Some(1001));
    assert_eq!(log.last_log_id(), Some(log_id(2, 1003)));
}

#[test]
fn an_entry_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=3, 40)).unwrap();
        log.append(&entries(1, 4..=4, 3 * SMALL as usize)).unwrap();
        log.append(&entries(1, 5..=6, 40)).unwrap();
        log.current_segment().sync().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(log.last_log_id(), Some(log_id(1, 6)));
    assert_eq!(all(&log)[3], entry(1, 4, 3 * SMALL as usize).1);
}

#[test]
fn appends_must_follow_the_last_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = reopen(dir.path());
    log.append(&entries(1, 1..=3, 40)).unwrap();
    assert!(log.append(&entries(1, 5..=5, 40)).is_err());
    assert!(log.append(&entries(1, 3..=3, 40)).is_err());
    assert_eq!(log.last_log_id(), Some(log_id(1, 3)));
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=200, 60)).unwrap();
        log.current_segment().sync().unwrap();
    }
    assert!(segment_count(dir.path()) > 2);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 1))
        .unwrap();
    f.write_all_at(&[0xee; 8], 700).unwrap();
    let err = SegmentLog::open(dir.path(), SMALL)
        .err()
        .expect("a damaged segment is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("segment 1 is damaged"), "{err}");
}

/// Waits for the spare thread to have `spare.log` ready, then takes it
/// away, so the next segment a truncation drops becomes the spare.
fn take_the_spare(dir: &Path) {
    let spare = dir.join("spare.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spare.exists() {
        assert!(std::time::Instant::now() < deadline, "no spare was made");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fs::remove_file(spare).unwrap();
}

/// A truncated segment is recycled with its records intact, and when it
/// comes back under its own number its old records are told from new
/// ones only by their generation. So the generation must never go back
/// across a restart, even when the records that carried the highest one
/// were all cut off: here the surviving prefix holds only generation 1
/// while the recycled segment 2 holds generation 2.
#[test]
fn the_generation_never_goes_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = reopen(dir.path());
        log.append(&entries(1, 1..=100, 60)).unwrap();
        log.truncate_from(10).unwrap();
        log.append(&entries(2, 10..=100, 60)).unwrap();
        log.current_segment().sync().unwrap();
        assert!(segment_count(dir.path()) >= 3, "the test needs segment 3");
        take_the_spare(dir.path());
        // Segment 2, with generation-2 records, becomes the spare.
        log.truncate_from(5).unwrap();
        assert_eq!(segment_count(dir.path()), 1);
    }
    {
        let log = reopen(dir.path());
        assert_eq!(log.last_log_id(), Some(log_id(1, 4)));
        // Same sizes as before: the new records end exactly where an old
        // record of segment 2 begins.
        log.append(&entries(3, 5..=55, 60)).unwrap();
        assert_eq!(log.current_segment().seq, 2, "index 55 is in segment 2");
        log.current_segment().sync().unwrap();
    }
    let log = reopen(dir.path());
    assert_eq!(
        log.last_log_id(),
        Some(log_id(3, 55)),
        "no truncated record comes back"
    );
}

#[test]
fn the_log_counts_the_bytes_it_holds_after_an_index_and_where_to_purge_to_keep_some() {
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=20, 300);
    let record = |i: u64| (HEADER_BYTES + written[i as usize - 1].1.len()) as u64;
    let sum = |r: std::ops::RangeInclusive<u64>| r.map(record).sum::<u64>();
    {
        let log = reopen(dir.path());
        log.append(&written).unwrap();
        assert_eq!(log.bytes_after(0), sum(1..=20));
        assert_eq!(log.bytes_after(12), sum(13..=20));
        assert_eq!(log.bytes_after(20), 0);
    }
    // The same after a restart: the sizes come from the records on disk.
    let log = reopen(dir.path());
    assert_eq!(log.bytes_after(12), sum(13..=20));
    // Keeping 3 records' worth at or before 15 purges through 12.
    assert_eq!(log.purge_point(15, sum(13..=15)), Some(12));
    assert_eq!(log.purge_point(15, sum(13..=15) - 1), Some(13));
    // Everything at or before 15 fits: nothing to purge.
    assert_eq!(log.purge_point(15, sum(1..=15)), None);
    // A point past the end counts up to the last entry.
    assert_eq!(log.purge_point(99, sum(19..=20)), Some(18));
    log.purge(12).unwrap();
    assert_eq!(log.bytes_after(0), sum(13..=20));
    assert_eq!(log.purge_point(15, 0), Some(15));
    // Before the first entry nothing is purged.
    assert_eq!(log.purge_point(5, 0), None);
}
