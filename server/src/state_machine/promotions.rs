//! What readers of this replica know of the promotions under way
//! (`apply/promotion.rs`): which key groups of which jobs to wait for, and
//! where in which stream partitions to stop.
//!
//! The set is read from the store whenever a chunk changed a job's
//! `JobPromotions` record (a promotion started or ended) and after a
//! snapshot install. A read checks it like a sequence lock: it notes the
//! sequence number, waits while a promotion covers its key groups, reads,
//! and reads again if the sequence moved meanwhile. The apply path moves
//! the number before such a chunk's write (and marks the set as changing
//! until it is read again) and after it, so a read that could have seen a
//! part of an epoch is always repeated.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use rocksdb::{Direction, IteratorMode, DB};
use streamshield_proto::v1 as pb;

use super::meta::CF_META;
use super::SmShared;
use crate::keys::meta as mk;
use crate::rocks::{self, corrupt, io_err};

/// One job's promotions, as the store holds them.
#[derive(Debug, Clone)]
pub struct JobPromoting {
    pub shard: u32,
    pub record: pb::JobPromotions,
}

/// Where readers of a partition stop while a promotion holds back the
/// records it appended there: the first of them.
pub fn held_from(
    promoting: &[JobPromoting],
    shard: u32,
    job_id: u32,
    stream_id: u32,
    partition: u32,
) -> Option<u64> {
    promoting
        .iter()
        .filter(|j| j.shard == shard && j.record.job_id == job_id)
        .flat_map(|j| j.record.tasks.iter().flat_map(|t| t.held.iter()))
        .filter(|h| h.stream_id == stream_id && h.partition == partition)
        .map(|h| h.from_offset)
        .min()
}

/// Every `JobPromotions` record of a store.
pub fn load(db: &DB) -> io::Result<Vec<JobPromoting>> {
    let cf = rocks::cf(db, CF_META)?;
    let mut out = Vec::new();
    let it = db.iterator_cf(
        cf,
        IteratorMode::From(mk::PROMOTIONS_PREFIX, Direction::Forward),
    );
    for item in it {
        let (k, v) = item.map_err(io_err)?;
        if !mk::is_promotions(&k) {
            break;
        }
        let shard = k
            .get(mk::PROMOTIONS_PREFIX.len()..mk::PROMOTIONS_PREFIX.len() + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("a promotions record's key holds no shard"))?;
        let record = pb::JobPromotions::decode(v.as_ref())
            .map_err(|e| corrupt(format!("promotions record: {e}")))?;
        out.push(JobPromoting { shard, record });
    }
    Ok(out)
}

impl SmShared {
    /// Runs `change` (a write that starts or ends promotions, or a store
    /// swap), then reads the set again from the live store; reads that
    /// overlap it are repeated or wait.
    pub(super) fn promotions_change<T>(
        &self,
        change: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.promotions_changing.store(true, Ordering::SeqCst);
        self.promotion_seq.send_modify(|s| *s += 1);
        let out = change();
        let reloaded = load(&self.db());
        if let Ok(set) = &reloaded {
            metrics::gauge!("streamshield_promotions_pending")
                .set(set.iter().map(|j| j.record.tasks.len()).sum::<usize>() as f64);
            *self.promoting.write().expect("promotions lock") = Arc::new(set.clone());
        }
        self.promotions_changing.store(false, Ordering::SeqCst);
        self.promotion_seq.send_modify(|s| *s += 1);
        let out = out?;
        reloaded?;
        Ok(out)
    }

    /// The promotions under way, as this replica has applied them.
    pub fn promotions(&self) -> Arc<Vec<JobPromoting>> {
        self.promoting.read().expect("promotions lock").clone()
    }

    /// Runs `read` with the promotions under way, again while a promotion
    /// started or ended as it ran (that chunk's records may have been
    /// appended, or let go, under it): a sequence lock, as for reads of
    /// state. While such a chunk is being written it waits, briefly: the
    /// set is read again right after the write.
    pub fn read_with_promotions<T, E>(
        &self,
        mut read: impl FnMut(&[JobPromoting]) -> Result<T, E>,
    ) -> Result<T, E> {
        loop {
            let seq = *self.promotion_seq.borrow();
            if self.promotions_changing.load(Ordering::SeqCst) {
                std::thread::yield_now();
                continue;
            }
            let out = read(&self.promotions())?;
            if self.promotions_unchanged(seq) {
                return Ok(out);
            }
        }
    }

    /// Changes whenever promotions start or end here.
    pub fn promotion_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.promotion_seq.subscribe()
    }

    fn covers(&self, shard: u32, job_id: u32, groups: (u32, u32)) -> bool {
        if self.promotions_changing.load(Ordering::SeqCst) {
            return true;
        }
        self.promotions().iter().any(|j| {
            j.shard == shard
                && j.record.job_id == job_id
                && j.record
                    .tasks
                    .iter()
                    .any(|t| t.key_group_start < groups.1 && groups.0 < t.key_group_end)
        })
    }

    /// Waits until no promotion covers key groups `[groups.0, groups.1)`
    /// of the job, and returns the sequence number to check with
    /// [`SmShared::promotions_unchanged`] after reading; `None` if that
    /// did not happen before `deadline`.
    pub async fn settled(
        &self,
        shard: u32,
        job_id: u32,
        groups: (u32, u32),
        deadline: Instant,
    ) -> Option<u64> {
        let seq = *self.promotion_seq.borrow();
        if !self.covers(shard, job_id, groups) {
            return Some(seq);
        }
        let mut changes = self.promotion_seq.subscribe();
        loop {
            let seq = *changes.borrow_and_update();
            if !self.covers(shard, job_id, groups) {
                return Some(seq);
            }
            match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Whether no promotion started or ended since [`SmShared::settled`]
    /// returned `seq`.
    pub fn promotions_unchanged(&self, seq: u64) -> bool {
        *self.promotion_seq.borrow() == seq
    }
}
