//! The replicated state machine in RocksDB (`data`, `staged` and `meta`
//! column families), its snapshots and its queries.
//!
//! A chunk of applied entries (up to 256) commits its effects, the applied
//! log id of its last entry and (for membership entries) the membership in
//! one `WriteBatch`, so the store never describes an index it does not
//! contain; proposers hear back after that write. The live store is
//! `sm/gen-<n>`; installing a snapshot opens a new generation beside it
//! and switches the `sm/CURRENT` pointer atomically.

mod apply;
pub mod auth;
pub mod format;
mod job_cache;
mod memo;
pub mod meta;
mod pending;
pub mod promotions;
pub mod read;
mod sessions;
pub mod snapshot;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::storage::{
    ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot,
};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use rocksdb::{WriteOptions, DB};
use streamshield_proto::v1 as pb;

pub use self::apply::SESSION_EXPIRED;
use self::auth::AuthTable;
use self::job_cache::JobCache;
use self::memo::ApplyMemo;
use self::meta::{ALL_CFS, CF_META};
use self::pending::PendingWrites;
pub use self::sessions::MAX_EXPIRED_PER_ENTRY;
pub use self::snapshot::SnapshotFiles;
use crate::codec;
use crate::keys::meta as mk;
use crate::rocks::{self, corrupt, io_err};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

type SnapshotOf = Snapshot<crate::types::LeaderId, u64, crate::types::Node, SnapshotFiles>;

/// State shared by the state machine, its snapshot builders and the
/// services that read it.
pub struct SmShared {
    sm_root: PathBuf,
    snap_root: PathBuf,
    db: RwLock<Arc<DB>>,
    gen: AtomicU64,
    /// Serializes snapshot builds and installs: both rewrite `snap_root`.
    snap_lock: Mutex<()>,
    snapshots_installed: AtomicU64,
    /// Index of the last entry whose effects are in the store; kept here
    /// so that reads need not fetch it from RocksDB.
    applied: AtomicU64,
    /// The newest entry format the live store holds (`format.rs`).
    format: AtomicU32,
    jobs: JobCache,
    /// Grants and tokens of the live store.
    auth: RwLock<Arc<AuthTable>>,
    /// Of the live store; only the apply path and installs touch it.
    memo: Mutex<ApplyMemo>,
    /// The applied index of the last chunk that appended stream records
    /// (or installed a snapshot): subscribers wake on it.
    appended: tokio::sync::watch::Sender<u64>,
    /// Promotions under way in the live store, what readers wait for
    /// (`promotions.rs`), and the sequence lock around their changes.
    promoting: RwLock<Arc<Vec<promotions::JobPromoting>>>,
    promotions_changing: std::sync::atomic::AtomicBool,
    promotion_seq: tokio::sync::watch::Sender<u64>,
}

/// The `RaftStateMachine` openraft drives; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

/// Reads the applied log id and membership recorded in a store.
pub fn read_applied_state(db: &DB) -> io::Result<(Option<LogId>, StoredMembership)> {
    let cf = rocks::cf(db, CF_META)?;
    let applied = match db.get_pinned_cf(cf, mk::APPLIED).map_err(io_err)? {
        None => None,
        Some(raw) => {
            let l =
                pb::LogId::decode(raw.as_ref()).map_err(|e| corrupt(format!("applied: {e}")))?;
            Some(codec::log_id_from_pb(&l).map_err(corrupt)?)
        }
    };
    let membership = match db.get_pinned_cf(cf, mk::MEMBERSHIP).map_err(io_err)? {
        None => StoredMembership::default(),
        Some(raw) => {
            let m = pb::StoredMembership::decode(raw.as_ref())
                .map_err(|e| corrupt(format!("membership: {e}")))?;
            codec::stored_membership_from_pb(&m).map_err(corrupt)?
        }
    };
    Ok((applied, membership))
}

/// One generation's store. Applied writes skip RocksDB's WAL
/// ([`apply_write_options`]): the fsynced Raft log holds them already, and
/// a crash costs the re-apply of the entries since the last flush. That
/// is safe because openraft purges the log only up to a snapshot, and a
/// snapshot is a checkpoint taken after a flush of every column family
/// (`build_snapshot`), so the store on disk never lags the log's start;
/// and because a restarted leader is not restored in place (`node.rs`:
/// it learns the commit index anew before it serves a read).
pub(crate) fn open_store(dir: &Path) -> io::Result<DB> {
    rocks::open(dir, ALL_CFS, rocks::Durability::FlushedOnly).map_err(io_err)
}

/// How applied entries are written: no WAL, no fsync (see [`open_store`]).
/// The WAL was each update's third copy on every node in a task-session
/// run (the Raft log, the staged run, the promoted value each went
/// through it): 10 % of the machine in `write(2)` alone (PERFORMANCE.md,
/// "The state machine without its WAL").
pub(crate) fn apply_write_options() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(false);
    wo.disable_wal(true);
    wo
}

fn gen_dir(sm_root: &Path, gen: u64) -> PathBuf {
    sm_root.join(format!("gen-{gen}"))
}

impl StateMachineStore {
    /// Opens (or creates) the state machine under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let sm_root = data_dir.join("sm");
        let snap_root = data_dir.join("snapshots");
        fs::create_dir_all(&sm_root)?;
        fs::create_dir_all(&snap_root)?;
        let pointer = sm_root.join("CURRENT");
        let gen = match fs::read_to_string(&pointer) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                corrupt(format!(
                    "{} holds {s:?}, not a generation",
                    pointer.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        for e in fs::read_dir(&sm_root)? {
            let p = e?.path();
            if p.is_dir() && p != gen_dir(&sm_root, gen) {
                fs::remove_dir_all(&p)?;
            }
        }
        snapshot::clean_scratch(&snap_root)?;
        let live = gen_dir(&sm_root, gen);
        let db = open_store(&live)?;
        let format = format::readable(&db, &format!("the store {}", live.display()))?;
        let applied = read_applied_state(&db)?.0.map_or(0, |l| l.index);
        let auth = AuthTable::load(&db)?;
        let promoting = promotions::load(&db)?;
        Ok(Self {
            shared: Arc::new(SmShared {
                sm_root,
                snap_root,
                db: RwLock::new(Arc::new(db)),
                gen: AtomicU64::new(gen),
                snap_lock: Mutex::new(()),
                snapshots_installed: AtomicU64::new(0),
                applied: AtomicU64::new(applied),
                format: AtomicU32::new(format),
                jobs: JobCache::default(),
                auth: RwLock::new(Arc::new(auth)),
                memo: Mutex::new(ApplyMemo::default()),
                appended: tokio::sync::watch::Sender::new(applied),
                promoting: RwLock::new(Arc::new(promoting)),
                promotions_changing: Default::default(),
                promotion_seq: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl SmShared {
    /// The live store. Hold the `Arc` only for one request: a snapshot
    /// install retires the store it replaces once nobody holds it.
    pub fn db(&self) -> Arc<DB> {
        self.db.read().expect("sm lock").clone()
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    /// A fresh directory to receive a snapshot into.
    pub fn incoming_dir(&self) -> io::Result<PathBuf> {
        let d = snapshot::scratch_dir(&self.snap_root, "incoming");
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Changes after every applied chunk that appended stream records.
    pub fn stream_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Everything up to this index is visible to reads that start now.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Every grant and token, as of what this replica has applied.
    pub fn auth(&self) -> Arc<AuthTable> {
        self.auth.read().expect("auth lock").clone()
    }

    fn reload_auth(&self, db: &DB) -> io::Result<()> {
        let table = Arc::new(AuthTable::load(db)?);
        *self.auth.write().expect("auth lock") = table;
        Ok(())
    }

    /// The live store and the record of job `name` in it.
    pub fn job(&self, shard: u32, name: &str) -> io::Result<(Arc<DB>, Option<Arc<pb::JobInfo>>)> {
        // Under the store lock, so the record and the store are of the same
        // generation (an install swaps both under its write lock).
        let (db, (hit, epoch)) = {
            let g = self.db.read().expect("sm lock");
            (g.clone(), self.jobs.lookup(shard, name))
        };
        if hit.is_some() {
            return Ok((db, hit));
        }
        let loaded = meta::load_job(&db, shard, name)?.map(Arc::new);
        if let Some(info) = &loaded {
            self.jobs.insert(epoch, shard, name, info.clone());
        }
        Ok((db, loaded))
    }

    /// The node's current snapshot, pinned so that a newer one cannot
    /// delete its files while they are read; `None` before the first.
    pub fn pin_current_snapshot(
        &self,
    ) -> io::Result<Option<(SnapshotMeta, snapshot::PinnedSnapshot)>> {
        let _g = self.snap_lock.lock().expect("snapshot lock");
        match snapshot::current(&self.snap_root)? {
            None => Ok(None),
            Some((meta, files)) => Ok(Some((meta, snapshot::PinnedSnapshot::pin(&files)?))),
        }
    }

    fn build_snapshot(&self) -> io::Result<SnapshotOf> {
        let _g = self.snap_lock.lock().expect("snapshot lock");
        let started = Instant::now();
        let db = self.db();
        let tmp = snapshot::scratch_dir(&self.snap_root, "tmp");
        // `create_checkpoint` flushes every memtable first (atomically, see
        // `open_store`): the log may be purged up to this snapshot only
        // because the live store is then durable up to it as well.
        rocksdb::checkpoint::Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(&tmp))
            .map_err(io_err)?;
        drop(db);
        let meta = snapshot::meta_of_checkpoint(&tmp)?;
        let files = snapshot::keep_as_current(&self.snap_root, &tmp, &meta)?;
        metrics::counter!("streamshield_snapshots_built_total").increment(1);
        metrics::histogram!("streamshield_snapshot_build_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(last_log_id = ?meta.last_log_id, dir = %files.dir.display(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: files,
        })
    }

    fn install_snapshot(&self, meta: &SnapshotMeta, files: SnapshotFiles) -> io::Result<()> {
        let _g = self.snap_lock.lock().expect("snapshot lock");
        let new_gen = self.gen.load(Ordering::SeqCst) + 1;
        let new_dir = gen_dir(&self.sm_root, new_gen);
        if new_dir.exists() {
            fs::remove_dir_all(&new_dir)?;
        }
        snapshot::link_copy(&files.dir, &new_dir)?;
        let db = open_store(&new_dir)?;
        let checked = (|| {
            let what = format!("the snapshot {}", codec::snapshot_id(meta));
            let format = format::readable(&db, &what)?;
            let (applied, _) = read_applied_state(&db)?;
            if applied != meta.last_log_id {
                return Err(corrupt(format!(
                    "snapshot claims {:?} but its store has applied {:?}",
                    meta.last_log_id, applied
                )));
            }
            Ok((format, applied, AuthTable::load(&db)?))
        })();
        let (format, applied, auth) = match checked {
            Ok(c) => c,
            Err(e) => {
                drop(db);
                let _ = fs::remove_dir_all(&new_dir);
                return Err(e);
            }
        };
        snapshot::write_atomic(
            &self.sm_root.join("CURRENT"),
            new_gen.to_string().as_bytes(),
        )?;
        let old = self.promotions_change(|| {
            let mut g = self.db.write().expect("sm lock");
            self.jobs.invalidate();
            *self.auth.write().expect("auth lock") = Arc::new(auth);
            self.memo.lock().expect("apply memo lock").clear();
            self.format.store(format, Ordering::Relaxed);
            self.applied
                .store(applied.map_or(0, |l| l.index), Ordering::Release);
            Ok(std::mem::replace(&mut *g, Arc::new(db)))
        })?;
        let old_gen = self.gen.swap(new_gen, Ordering::SeqCst);
        retire(old, gen_dir(&self.sm_root, old_gen));
        snapshot::keep_as_current(&self.snap_root, &files.dir, meta)?;
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        self.appended.send_replace(self.applied_index());
        metrics::counter!("streamshield_snapshots_installed_total").increment(1);
        tracing::info!(last_log_id = ?meta.last_log_id, gen = new_gen, "installed snapshot");
        Ok(())
    }
}

/// Closes a replaced store once the last reader lets go, then deletes it.
fn retire(db: Arc<DB>, dir: PathBuf) {
    std::thread::spawn(move || {
        let mut db = db;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Arc::try_unwrap(db) {
                Ok(inner) => {
                    drop(inner);
                    break;
                }
                Err(still_shared) if Instant::now() < deadline => {
                    db = still_shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
                // A reader hung on to it: leave the directory for the next start.
                Err(_) => return,
            }
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a retired store");
        }
    });
}

/// Applies `cmds` as entries `first_index..` in one chunk, the way the
/// apply path does (with the store's memo), straight on the live store (for
/// benchmarks and tests; no Raft).
pub fn apply_chunk(
    shared: &SmShared,
    first_index: u64,
    cmds: &[pb::Command],
) -> io::Result<Vec<pb::CommandResponse>> {
    let db = shared.db();
    let mut pending = PendingWrites::with_memo(&db, &shared.memo);
    let mut out = Vec::with_capacity(cmds.len());
    for (i, cmd) in cmds.iter().enumerate() {
        if needs_store_in_step(cmd) {
            let full = std::mem::replace(&mut pending, PendingWrites::with_memo(&db, &shared.memo));
            full.write(&apply_write_options())?;
        }
        out.push(apply::apply_command(
            &mut pending,
            first_index + i as u64,
            cmd,
        )?);
        pending.entry_done();
    }
    let auth_changed = pending.auth_changed();
    if pending.promotions_changed() {
        shared.promotions_change(|| pending.write(&apply_write_options()))?;
    } else {
        pending.write(&apply_write_options())?;
    }
    if auth_changed {
        shared.reload_auth(&db)?;
    }
    Ok(out)
}

/// Whether `cmd` reads the store itself, not only through the pending
/// writes, so everything before it must be written first: chunks end at
/// different entries on different replicas.
fn needs_store_in_step(cmd: &pb::Command) -> bool {
    matches!(cmd.kind, Some(pb::command::Kind::ExpireSessions(_)))
}

/// Entries applied into one RocksDB write at most; their answers wait
/// for that write.
const MAX_ENTRIES_PER_WRITE: usize = 256;

/// Writes the effects of a chunk of entries and the log id of its last
/// entry in one batch (one applied-index record per chunk, not per entry),
/// then answers the proposers.
fn commit_applied(
    shared: &SmShared,
    mut pending: PendingWrites,
    wo: &WriteOptions,
    answers: &mut Vec<(Option<ApplyResponder<TypeConfig>>, pb::CommandResponse)>,
    last: Option<LogId>,
) -> io::Result<()> {
    let Some(last) = last.filter(|_| pending.entries() > 0) else {
        return Ok(());
    };
    pending.put(
        CF_META,
        mk::APPLIED,
        codec::log_id_to_pb(&last).encode_to_vec(),
    )?;
    let jobs_changed = pending.jobs_changed();
    let auth_changed = pending.auth_changed();
    let streams_changed = pending.streams_did_change();
    let promotions_changed = pending.promotions_changed();
    let db = pending.db();
    let started = Instant::now();
    if promotions_changed {
        shared.promotions_change(|| pending.write(wo))?;
    } else {
        pending.write(wo)?;
    }
    metrics::histogram!("streamshield_apply_write_seconds").record(started.elapsed().as_secs_f64());
    // Before anyone hears of the write, so no read after it sees less.
    if jobs_changed {
        shared.jobs.invalidate();
    }
    if auth_changed {
        shared.reload_auth(db)?;
    }
    shared.applied.store(last.index, Ordering::Release);
    metrics::gauge!("streamshield_applied_index").set(last.index as f64);
    if streams_changed {
        shared.appended.send_replace(last.index);
    }
    for (responder, response) in answers.drain(..) {
        if let Some(r) = responder {
            r.send(response);
        }
    }
    Ok(())
}

/// Runs blocking RocksDB work (checkpoints, file copies) off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Builds a snapshot of the state machine as it is when the build runs.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFiles;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        let shared = self.shared.clone();
        blocking(move || shared.build_snapshot()).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFiles;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        read_applied_state(&self.shared.db())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.shared.db();
        let wo = apply_write_options();
        let memo = &self.shared.memo;
        let mut pending = PendingWrites::with_memo(&db, memo);
        let mut answers = Vec::new();
        let mut last = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let started = Instant::now();
            let index = entry.log_id.index;
            let response = match &entry.payload {
                EntryPayload::Blank => none_response(),
                EntryPayload::Normal(cmd) => {
                    // Stop here rather than skip it: the replicas that
                    // know it apply it, and skipping would diverge.
                    cmd.check_known()
                        .map_err(|e| io::Error::other(format!("entry {index}: {e}")))?;
                    if needs_store_in_step(cmd) {
                        let full =
                            std::mem::replace(&mut pending, PendingWrites::with_memo(&db, memo));
                        commit_applied(&self.shared, full, &wo, &mut answers, last)?;
                    }
                    let at = apply::At {
                        index,
                        time_ms: cmd.header().leader_time_ms,
                        format: cmd.header().format,
                    };
                    if at.format > self.shared.format.load(Ordering::Relaxed) {
                        // With the chunk: a crash before its write
                        // re-applies the entry and records it again.
                        pending.put(CF_META, mk::FORMAT, format::record(at.format))?;
                        self.shared.format.store(at.format, Ordering::Relaxed);
                    }
                    apply::apply_at(&mut pending, at, cmd)?
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    pending.put(
                        CF_META,
                        mk::MEMBERSHIP,
                        codec::stored_membership_to_pb(&stored).encode_to_vec(),
                    )?;
                    none_response()
                }
            };
            pending.entry_done();
            metrics::histogram!("streamshield_apply_entry_seconds")
                .record(started.elapsed().as_secs_f64());
            last = Some(entry.log_id);
            answers.push((responder, response));
            if pending.entries() >= MAX_ENTRIES_PER_WRITE {
                let full = std::mem::replace(&mut pending, PendingWrites::with_memo(&db, memo));
                commit_applied(&self.shared, full, &wo, &mut answers, last)?;
            }
        }
        commit_applied(&self.shared, pending, &wo, &mut answers, last)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFiles,
    ) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        blocking(move || shared.install_snapshot(&meta, snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, io::Error> {
        let root = self.shared.snap_root.clone();
        let found = blocking(move || snapshot::current(&root)).await?;
        Ok(found.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

fn none_response() -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(pb::command_response::Kind::None(true)),
    }
}
