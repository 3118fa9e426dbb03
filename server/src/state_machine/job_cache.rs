//! Decoded job records for the read path.
//!
//! Every read names a job; fetching and decoding its record from RocksDB
//! cost about as much as reading the value itself. Job records change only
//! when a job or a state table is created, so readers keep them here.
//!
//! Staleness is ruled out by an epoch: the apply path bumps it (and drops
//! every entry) after it writes a chunk that changed a job record and
//! before it answers anyone, and a reader only inserts what it loaded if
//! the epoch it saw before loading is still current. A snapshot install
//! bumps it in the same critical section that swaps the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use streamshield_proto::v1 as pb;

#[derive(Default)]
pub struct JobCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    epoch: u64,
    /// By shard, then name: looked up by `&str`, without a key to build.
    jobs: HashMap<u32, HashMap<String, Arc<pb::JobInfo>>>,
}

impl JobCache {
    /// A cached record, and the epoch to insert under on a miss.
    pub fn lookup(&self, shard: u32, name: &str) -> (Option<Arc<pb::JobInfo>>, u64) {
        let g = self.inner.read().expect("job cache lock");
        let hit = g.jobs.get(&shard).and_then(|j| j.get(name)).cloned();
        (hit, g.epoch)
    }

    /// Keeps `info` unless a job record changed since `epoch` was read.
    pub fn insert(&self, epoch: u64, shard: u32, name: &str, info: Arc<pb::JobInfo>) {
        let mut g = self.inner.write().expect("job cache lock");
        if g.epoch == epoch {
            g.jobs
                .entry(shard)
                .or_default()
                .insert(name.to_string(), info);
        }
    }

    pub fn invalidate(&self) {
        let mut g = self.inner.write().expect("job cache lock");
        g.epoch += 1;
        g.jobs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u32) -> Arc<pb::JobInfo> {
        Arc::new(pb::JobInfo {
            job: "j".into(),
            job_id: id,
            ..Default::default()
        })
    }

    #[test]
    fn a_load_that_raced_a_change_is_not_kept() {
        let c = JobCache::default();
        let (hit, epoch) = c.lookup(0, "j");
        assert!(hit.is_none());
        // The apply path changes the record while this reader loads it.
        c.invalidate();
        c.insert(epoch, 0, "j", job(1));
        assert!(c.lookup(0, "j").0.is_none(), "stale load must be dropped");

        let (_, epoch) = c.lookup(0, "j");
        c.insert(epoch, 0, "j", job(2));
        assert_eq!(c.lookup(0, "j").0.unwrap().job_id, 2);
        // Another shard's job of the same name is another job.
        assert!(c.lookup(1, "j").0.is_none());
        c.invalidate();
        assert!(c.lookup(0, "j").0.is_none());
    }
}
