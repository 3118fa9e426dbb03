//! The Raft log: entries in segment files ([`SegmentLog`]), the vote, the
//! purge point and the committed hint in RocksDB (`raft_meta`), with group
//! commit.
//!
//! `append` writes entries to the current segment without waiting for the
//! disk, so they are readable at once, and queues openraft's flush
//! callback. A dedicated thread fsyncs the segment once for everything
//! queued since its last fsync and then fires all those callbacks: many
//! proposals, one fsync. On a follower, an append that finds the disk idle
//! syncs inline instead (see [`LogStore::sync_followed_entries_inline`]).
//! The newest entries are also kept in memory ([`RecentEntries`]) for the
//! reads that follow each append. A log kept in RocksDB's `raft_log` column
//! family by an earlier version moves to segments when the store opens.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use prost::Message;
use rocksdb::{IteratorMode, WriteOptions, DB};
use streamshield_proto::v1 as pb;

use crate::codec;
use crate::log_cache::RecentEntries;
use crate::rocks::{self, corrupt, io_err};
use crate::segment_log::{SegmentLog, SEGMENT_BYTES};
use crate::storage_fault::StorageFault;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const CF_LOG: &str = "raft_log";
const CF_META: &str = "raft_meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Bytes of entries one AppendEntries carries at most (but at least one
/// entry). openraft bounds a message by entry count only; a thousand large
/// writes would exceed the gRPC message limit and replication would fail
/// over and over. With one entry at most `MAX_WRITE_BATCH_BYTES` plus the
/// batcher's 1 MiB, a message stays far below `MAX_RAFT_MESSAGE_BYTES`.
pub const MAX_APPEND_BYTES: usize = 32 << 20;

/// A log fsync at least this slow is logged.
const SLOW_FSYNC: Duration = Duration::from_millis(50);

/// Appends up to this size may be synced inline on a follower.
const MAX_INLINE_SYNC_BYTES: usize = 256 << 10;

type Flushed = IOFlushed<TypeConfig>;

/// Callbacks waiting for the next WAL fsync.
struct FlushQueue {
    pending: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    callbacks: Vec<Flushed>,
    /// An fsync (on the thread or inline) is under way.
    flushing: bool,
    closing: bool,
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    segments: Arc<SegmentLog>,
    queue: Arc<FlushQueue>,
    /// This node's id: entries another leader sent may be synced inline.
    own_id: Option<u64>,
    recent: RecentEntries,
    /// The newest committed log id openraft told us, not yet written: it
    /// is written after the next fsync (or on close) instead of costing a
    /// write of its own on every commit, or one in the commit's path. It
    /// is only a hint for a restart (apply up to it without waiting for a
    /// leader); losing it loses nothing because a restarted leader is not
    /// restored in place (see `enable_leader_restore` in `node.rs`) and
    /// learns the commit index from its new term's no-op.
    unsaved_committed: Arc<Mutex<Option<LogId>>>,
    /// The index of the last entry the last successful fsync covered. The
    /// committed hint is saved only up to it: a hint past the durable log
    /// would, after a power cut, name entries the log no longer has.
    durable_index: Arc<Mutex<Option<u64>>>,
    /// Set by the first failed write or fsync; no fsync runs after it.
    fault: StorageFault,
}

impl LogStore {
    /// Opens the store in `path`: RocksDB there, segments in `segments/`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with_segments_of(path, SEGMENT_BYTES)
    }

    /// [`Self::open`] with segments of `segment_bytes` (tests use small
    /// ones to cross segments often).
    pub fn open_with_segments_of(path: &Path, segment_bytes: u64) -> io::Result<Self> {
        let db = Arc::new(
            rocks::open(path, &[CF_LOG, CF_META], rocks::Durability::Wal).map_err(io_err)?,
        );
        let segments = Arc::new(SegmentLog::open(&path.join("segments"), segment_bytes)?);
        let queue = Arc::new(FlushQueue {
            pending: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
        });
        let store = Self {
            db,
            segments,
            queue,
            own_id: None,
            recent: RecentEntries::default(),
            unsaved_committed: Arc::new(Mutex::new(None)),
            durable_index: Arc::new(Mutex::new(None)),
            fault: StorageFault::default(),
        };
        store.move_rocksdb_log()?;
        // Records before the purge point may still be in the first
        // segment; the log starts after it.
        if let Some(purged) = store.read_log_id(KEY_PURGED)? {
            store.segments.purge(purged.index)?;
        }
        let worker = store.clone();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || fsync_loop(worker))?;
        Ok(store)
    }

    /// Moves entries an earlier version kept in the `raft_log` column
    /// family into segments, durably, and then deletes them there.
    fn move_rocksdb_log(&self) -> io::Result<()> {
        let cf = rocks::cf(&self.db, CF_LOG)?;
        let mut moved = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item.map_err(io_err)?;
            let e = decode_entry(&v)?;
            moved.push((e.log_id, v.to_vec()));
        }
        let Some(last) = moved.last().map(|(id, _)| id.index) else {
            return Ok(());
        };
        if self.segments.last_log_id().is_none() {
            for chunk in moved.chunks(1024) {
                self.segments.append(chunk)?;
            }
            self.segments.current_segment().sync()?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(cf, 0u64.to_be_bytes(), (last + 1).to_be_bytes());
        self.db.write_opt(batch, &wo).map_err(io_err)?;
        tracing::info!(
            entries = moved.len(),
            "moved the raft log from RocksDB to segments"
        );
        Ok(())
    }

    /// Lets small appends of entries from another leader sync inline when
    /// no other fsync is under way. On a follower nothing waits on `append`
    /// but the answer to that leader, so the two thread hand-offs of the
    /// fsync thread are pure latency there; a leader's own entries still
    /// sync on the thread, so replication starts before its disk is done.
    pub fn sync_followed_entries_inline(mut self, own_id: u64) -> Self {
        self.own_id = Some(own_id);
        self
    }

    /// Where this store's first storage failure is recorded.
    pub fn fault(&self) -> &StorageFault {
        &self.fault
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The log's entries, for what they hold in bytes ([`crate::log_bound`]).
    pub fn segments(&self) -> &Arc<SegmentLog> {
        &self.segments
    }

    fn get_meta<M: Message + Default>(&self, key: &[u8]) -> io::Result<Option<M>> {
        let cf = rocks::cf(&self.db, CF_META)?;
        match self.db.get_pinned_cf(cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(raw) => M::decode(raw.as_ref())
                .map(Some)
                .map_err(|e| corrupt(format!("raft_meta/{}: {e}", String::from_utf8_lossy(key)))),
        }
    }

    fn put_meta(&self, key: &[u8], value: Vec<u8>, sync: bool) -> io::Result<()> {
        let cf = rocks::cf(&self.db, CF_META)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.put_cf_opt(cf, key, value, &wo).map_err(io_err)
    }

    fn read_log_id(&self, key: &[u8]) -> io::Result<Option<LogId>> {
        match self.get_meta::<pb::LogId>(key)? {
            None => Ok(None),
            Some(l) => codec::log_id_from_pb(&l).map(Some).map_err(corrupt),
        }
    }

    /// Entries `[start, end)` in order, stopping before the one that would
    /// take their encoded size past `max_bytes` (the first always comes).
    fn read_entries(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        if let Some(entries) = self.recent.read(start, end, max_bytes) {
            return Ok(entries);
        }
        self.segments
            .read(start, end, max_bytes)?
            .iter()
            .map(|raw| decode_entry(raw))
            .collect()
    }

    /// Writes the committed log id held back, without waiting for the disk.
    fn save_unsaved_committed(&self) {
        if let Some(c) = self.take_unsaved_committed() {
            let r = self.put_meta(
                KEY_COMMITTED,
                codec::log_id_to_pb(&c).encode_to_vec(),
                false,
            );
            if let Err(e) = r {
                self.fault.report("saving the committed log id", &e);
            }
        }
    }

    /// Writes the committed log id held back, then stops the fsync thread
    /// once the queue drains; called on shutdown.
    pub fn close(&self) {
        self.save_unsaved_committed();
        let mut p = self.queue.pending.lock().expect("flush queue lock");
        p.closing = true;
        self.queue.wake.notify_all();
    }

    /// Closes the store and waits until its fsync thread has let go of
    /// RocksDB, so that the store is shut before its directory goes or
    /// another opens it (a restore hands it to the node).
    pub async fn close_and_wait(self) {
        let db = self.db().clone();
        self.close();
        drop(self);
        while Arc::strong_count(&db) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Claims the disk for an inline fsync if nothing is queued or being
    /// synced (callbacks must fire in append order).
    fn claim_inline_sync(&self) -> bool {
        let mut p = self.queue.pending.lock().expect("flush queue lock");
        if p.flushing || !p.callbacks.is_empty() {
            return false;
        }
        p.flushing = true;
        true
    }

    /// The committed log id held back, if the log is durable up to it.
    fn take_unsaved_committed(&self) -> Option<LogId> {
        let durable = *self.durable_index.lock().expect("durable lock");
        let mut unsaved = self.unsaved_committed.lock().expect("committed lock");
        match (*unsaved, durable) {
            (Some(c), Some(d)) if c.index <= d => unsaved.take(),
            _ => None,
        }
    }

    fn end_sync(&self) {
        let mut p = self.queue.pending.lock().expect("flush queue lock");
        p.flushing = false;
        if !p.callbacks.is_empty() {
            self.queue.wake.notify_one();
        }
    }
}

fn decode_entry(raw: &[u8]) -> io::Result<Entry> {
    let e = pb::Entry::decode(raw).map_err(|e| corrupt(format!("raft_log entry: {e}")))?;
    codec::entry_from_pb(e).map_err(corrupt)
}

fn fsync_loop(log: LogStore) {
    let q = log.queue.clone();
    loop {
        let batch = {
            let mut p = q.pending.lock().expect("flush queue lock");
            while (p.callbacks.is_empty() || p.flushing) && !p.closing {
                p = q.wake.wait(p).expect("flush queue lock");
            }
            if p.callbacks.is_empty() && p.closing {
                return;
            }
            if p.flushing {
                // Closing while an inline sync runs: wait for it to end.
                p = q.wake.wait(p).expect("flush queue lock");
                continue;
            }
            p.flushing = true;
            std::mem::take(&mut p.callbacks)
        };
        log.sync(batch);
        log.save_unsaved_committed();
        let mut p = q.pending.lock().expect("flush queue lock");
        p.flushing = false;
    }
}

impl LogStore {
    /// One fsync for everything appended so far, then the callbacks. Taken
    /// after the callbacks were: every entry they wait for is in the
    /// current segment or in one synced when it ended.
    fn sync(&self, callbacks: Vec<Flushed>) {
        let started = Instant::now();
        // Taken before the segment: an append in between that starts a new
        // segment syncs the old one as it ends it.
        let covered = self.segments.last_log_id().map(|l| l.index);
        // Never a second fsync after a failed one: it could report success
        // for pages the kernel dropped when the first failed.
        let result = match self.fault.as_error() {
            Some(e) => Err(e),
            None => self.segments.current_segment().sync(),
        };
        if result.is_ok() {
            *self.durable_index.lock().expect("durable lock") = covered;
        }
        if let Err(e) = &result {
            self.fault.report("log fsync", e);
        }
        let took = started.elapsed();
        metrics::histogram!("streamshield_log_fsync_seconds").record(took.as_secs_f64());
        if took >= SLOW_FSYNC {
            // Every write waiting on this fsync waited this long: worth a
            // line in the log, to line up with the disk's other work.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                appends = callbacks.len(),
                "slow log fsync"
            );
        }
        metrics::histogram!("streamshield_log_appends_per_fsync").record(callbacks.len() as f64);
        for cb in callbacks {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            cb.io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(start, end, usize::MAX)
    }

    /// The replication read: entries from `start`, fewer than asked for
    /// once they reach [`MAX_APPEND_BYTES`].
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_entries(start, end, MAX_APPEND_BYTES)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.get_meta::<pb::Vote>(KEY_VOTE)? {
            None => Ok(None),
            Some(v) => codec::vote_from_pb(Some(&v)).map(Some).map_err(corrupt),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.read_log_id(KEY_PURGED)?;
        let last_log_id = self.segments.last_log_id().max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(KEY_VOTE, codec::vote_to_pb(vote).encode_to_vec(), true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Held until the next append: losing it only means re-applying from
        // the state machine's own applied index, which is durable with the
        // data.
        if let Some(c) = committed {
            let mut unsaved = self.unsaved_committed.lock().expect("committed lock");
            if unsaved.is_none_or(|u| u < c) {
                *unsaved = Some(c);
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let unsaved = *self.unsaved_committed.lock().expect("committed lock");
        Ok(unsaved.max(self.read_log_id(KEY_COMMITTED)?))
    }

    async fn append<I>(&mut self, entries: I, callback: Flushed) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut from_other_leader = false;
        let mut raw = Vec::new();
        let mut written = Vec::new();
        let mut bytes = 0usize;
        for e in entries {
            from_other_leader = self
                .own_id
                .is_some_and(|me| e.log_id.leader_id.node_id != me);
            let encoded = codec::entry_to_pb(&e).encode_to_vec();
            let n = encoded.len();
            bytes += n;
            raw.push((e.log_id, encoded));
            written.push((e, n));
        }
        self.segments
            .append(&raw)
            .inspect_err(|e| self.fault.report("log append", e))?;
        metrics::counter!("streamshield_log_entries_appended_total")
            .increment(written.len() as u64);
        self.recent.appended(written);
        // A large append's fsync would hold up RaftCore (heartbeats, the
        // next appends) for long, and saving two hand-offs is nothing
        // beside it: only small ones sync inline.
        if from_other_leader && bytes <= MAX_INLINE_SYNC_BYTES && self.claim_inline_sync() {
            self.sync(vec![callback]);
            self.end_sync();
            return Ok(());
        }
        let mut p = self.queue.pending.lock().expect("flush queue lock");
        p.callbacks.push(callback);
        self.queue.wake.notify_one();
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.recent.truncated_from(from);
        self.segments.truncate_from(from)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash in between leaves entries
        // that are merely unneeded, never a hole in front of the log.
        self.put_meta(
            KEY_PURGED,
            codec::log_id_to_pb(&log_id).encode_to_vec(),
            true,
        )?;
        self.recent.purged_up_to(log_id.index);
        self.segments.purge(log_id.index)
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use streamshield_proto::v1::{command, sync_op};

    use super::*;
    use crate::command::SharedCommand;
    use crate::types::LeaderId;

    /// An entry carrying one put of `value_bytes` bytes.
    fn big_entry(index: u64, value_bytes: usize) -> Entry {
        let put = pb::SyncOp {
            state: "s".into(),
            key: b"k".to_vec(),
            kind: Some(sync_op::Kind::Put(pb::SyncPut {
                value: vec![7; value_bytes],
            })),
        };
        Entry {
            log_id: openraft::LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload: EntryPayload::Normal(SharedCommand::fixed(pb::Command {
                kind: Some(command::Kind::Write(pb::SyncWrite {
                    job: "j".into(),
                    ops: vec![put],
                    ..Default::default()
                })),
            })),
        }
    }

    async fn close_and_wait(log: LogStore) {
        log.close_and_wait().await
    }

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    #[tokio::test]
    async fn the_committed_log_id_is_written_after_the_next_fsync_or_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        // An older one (openraft never sends one, but it must not win).
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
        assert_eq!(log.read_log_id(KEY_COMMITTED).unwrap(), None, "held back");
        log.append((1..=3).map(|i| big_entry(i, 8)), IOFlushed::noop())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.read_log_id(KEY_COMMITTED).unwrap().is_none() {
            assert!(Instant::now() < deadline, "not written after the fsync");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(log.read_log_id(KEY_COMMITTED).unwrap(), Some(log_id(1, 3)));

        log.append([big_entry(4, 8)], IOFlushed::noop())
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        close_and_wait(log).await;
        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.read_committed().await.unwrap(),
            Some(log_id(1, 4)),
            "written on close"
        );
        close_and_wait(reopened).await;
    }

    /// A leader may learn that an entry is committed (a majority of the
    /// followers has it) before its own fsync of it is done. The hint
    /// must wait for that fsync: saved earlier, a power cut would leave a
    /// committed index past the log's end.
    #[tokio::test]
    async fn the_committed_hint_never_passes_the_synced_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_committed(Some(log_id(1, 5))).await.unwrap();
        log.append((1..=3).map(|i| big_entry(i, 8)), IOFlushed::noop())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.durable_index.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no fsync");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        log.save_unsaved_committed();
        close_and_wait(log).await;
        let mut reopened = LogStore::open(dir.path()).unwrap();
        let saved = reopened.read_log_id(KEY_COMMITTED).unwrap();
        assert_eq!(saved, None, "index 5 was never durable here");
        assert!(reopened.read_committed().await.unwrap().is_none());
        close_and_wait(reopened).await;
    }

    #[tokio::test]
    async fn a_log_kept_in_rocksdb_moves_to_segments_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<Entry> = (1..=5).map(|i| big_entry(i, 8)).collect();
        {
            let db = rocks::open(dir.path(), &[CF_LOG, CF_META], rocks::Durability::Wal).unwrap();
            let cf = rocks::cf(&db, CF_LOG).unwrap();
            for e in &written {
                let raw = codec::entry_to_pb(e).encode_to_vec();
                db.put_cf(cf, e.log_id.index.to_be_bytes(), raw).unwrap();
            }
        }
        for _ in 0..2 {
            let mut log = LogStore::open(dir.path()).unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, 5)));
            let read = log.try_get_log_entries(1..6).await.unwrap();
            assert_eq!(read, written);
            let cf = rocks::cf(log.db(), CF_LOG).unwrap();
            assert!(
                log.db()
                    .iterator_cf(cf, IteratorMode::Start)
                    .next()
                    .is_none(),
                "nothing left in raft_log"
            );
            close_and_wait(log).await;
        }
    }

    #[tokio::test]
    async fn after_a_restart_the_log_starts_after_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append((1..=6).map(|i| big_entry(i, 8)), IOFlushed::noop())
            .await
            .unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
        close_and_wait(log).await;
        let mut log = LogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 6)));
        assert_eq!(log.segments.first_index(), Some(5));
        let idx: Vec<u64> = log
            .try_get_log_entries(5..7)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(idx, vec![5, 6]);
        close_and_wait(log).await;
    }

    #[tokio::test]
    async fn reads_agree_with_the_store_across_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append((1..=6).map(|i| big_entry(i, 8)), IOFlushed::noop())
            .await
            .unwrap();
        log.truncate_after(Some(log_id(1, 4))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        let cached = log.try_get_log_entries(2..10).await.unwrap();
        let stored = LogStore {
            recent: RecentEntries::default(),
            ..log.clone()
        }
        .read_entries(2, 10, usize::MAX)
        .unwrap();
        let idx = |v: &[Entry]| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(&stored), vec![2, 3, 4]);
        assert_eq!(idx(&cached), idx(&stored));
        close_and_wait(log).await;
    }

    #[tokio::test]
    async fn replication_reads_stop_at_the_byte_bound_but_never_return_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let mb = 1 << 20;
        // 40 entries of 1 MiB: more than one message may carry.
        let entries: Vec<Entry> = (1..=40).map(|i| big_entry(i, mb)).collect();
        log.append(entries, IOFlushed::noop()).await.unwrap();
        log.append([big_entry(41, MAX_APPEND_BYTES + mb)], IOFlushed::noop())
            .await
            .unwrap();

        let limited = log.limited_get_log_entries(1, 42).await.unwrap();
        let n = limited.len() as u64;
        assert!((20..40).contains(&n), "{n} entries");
        let indexes: Vec<u64> = limited.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=n).collect::<Vec<_>>(), "a prefix, in order");
        let bytes: usize = limited
            .iter()
            .map(|e| codec::entry_to_pb(e).encoded_len())
            .sum();
        assert!(bytes <= MAX_APPEND_BYTES, "{bytes} bytes");

        // An entry larger than the bound still goes, alone.
        let alone = log.limited_get_log_entries(41, 42).await.unwrap();
        assert_eq!(alone.len(), 1);
        // The apply path's read is not bounded.
        assert_eq!(log.try_get_log_entries(1..42).await.unwrap().len(), 41);
        close_and_wait(log).await;
    }
}
