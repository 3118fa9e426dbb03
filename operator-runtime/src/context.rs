//! What an operator sees while it handles a record or a timer: the current
//! key, its state, event time, and where its output goes.

use std::collections::BTreeMap;

use streamshield_client::{pb, TaskSession};

use crate::cache::StateCache;
use crate::envelope;
use crate::error::RuntimeError;
use crate::layout::Layout;
use crate::operator::DynOperator;
use crate::time::{Timers, NO_WATERMARK};

/// Where state values live: the task's session (the real thing), or a map
/// for an operator's unit tests ([`crate::testing::Harness`]).
pub(crate) enum Backing {
    Session(Box<TaskSession>),
    Memory {
        tables: BTreeMap<(String, Vec<u8>), Vec<u8>>,
        emitted: Vec<(u32, pb::Record)>,
        /// The store's work for reads: one per request, plus one per key a
        /// scan returns (what the cache saves shows in a unit test).
        store_reads: u64,
    },
}

/// Keys of one prefix that [`Context::load_prefix`] loads at most (one
/// page of the node's scan). A larger map is read an entry at a time, as
/// a store without the load would: a task's first read of a map with
/// millions of entries must not fetch them all.
pub(crate) const LOAD_LIMIT: u32 = 1000;

/// A stage's output: its stream and how keys pick partitions.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub stream: String,
    pub layout: Layout,
}

pub struct Context {
    pub(crate) backing: Backing,
    cache: StateCache,
    pub(crate) key: Vec<u8>,
    pub(crate) timers: Timers,
    pub(crate) watermark: i64,
    pub(crate) output: Option<Output>,
    pub(crate) task: u32,
    /// Records emitted since the task started.
    pub(crate) emitted: u64,
    /// Records emitted into the session and not yet handed to it
    /// ([`Context::hand_over_emitted`]): `emit` is not async, the
    /// session's `emit` is (a full window waits).
    unsent: Vec<(u32, pb::Record)>,
}

impl Context {
    pub(crate) fn new(
        backing: Backing,
        cache_bytes: usize,
        output: Option<Output>,
        task: u32,
    ) -> Self {
        Self {
            backing,
            cache: StateCache::new(cache_bytes),
            key: Vec::new(),
            timers: Timers::default(),
            watermark: NO_WATERMARK,
            output,
            task,
            emitted: 0,
            unsent: Vec::new(),
        }
    }

    /// The key of the record or timer being handled.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The task's event-time watermark: no input older than this is
    /// expected any more. `i64::MIN` before the first.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// This task's index within its stage.
    pub fn task(&self) -> u32 {
        self.task
    }

    /// Produces a record into the stage's output, in the partition of its
    /// key. It becomes visible downstream when the task's epoch commits,
    /// and never if it does not (read-committed). A stage without an
    /// output drops it.
    pub fn emit(&mut self, key: impl Into<Vec<u8>>, value: &[u8], event_time: i64) {
        let Some(out) = &self.output else {
            return;
        };
        let key = key.into();
        let partition = out.layout.partition_of_key(&key);
        let record = envelope::data(key, value, event_time);
        self.emitted += 1;
        match &mut self.backing {
            Backing::Session(_) => self.unsent.push((partition, record)),
            Backing::Memory { emitted, .. } => emitted.push((partition, record)),
        }
    }

    /// Hands what the operator emitted to the session, in order: staged
    /// with the epoch's writes, so an epoch's outputs are not bounded by
    /// one request. Called after each record and each timer, and before a
    /// commit.
    pub(crate) async fn hand_over_emitted(&mut self) -> Result<(), RuntimeError> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        let (Backing::Session(s), Some(out)) = (&mut self.backing, &self.output) else {
            return Ok(());
        };
        for (partition, r) in std::mem::take(&mut self.unsent) {
            s.emit(&out.stream, partition, r.key, r.value).await?;
        }
        Ok(())
    }

    /// Calls `on_timer` for the current key once the watermark reaches
    /// `time`. Registering the same time twice fires once.
    pub fn register_timer(&mut self, time: i64) {
        self.timers.register(time, &self.key.clone());
    }

    pub fn delete_timer(&mut self, time: i64) {
        self.timers.delete(time, &self.key.clone());
    }

    /// The current key's value in `table`: the task's own latest write,
    /// else the committed value.
    pub(crate) async fn get_raw(&mut self, table: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let key = self.key.clone();
        self.get_at(table, &key).await
    }

    /// Writes (or with `None` deletes) the current key's value in `table`,
    /// as part of the open epoch.
    pub(crate) async fn put_raw(
        &mut self,
        table: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), RuntimeError> {
        let key = self.key.clone();
        self.put_at(table, key, value).await
    }

    /// `key`'s value in `table` (a key of the current key's key group, as
    /// the entries of a prefix-placed table are): the task's own latest
    /// write, else the committed value.
    pub(crate) async fn get_at(
        &mut self,
        table: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        if let Some(v) = self.cache.get(table, key) {
            return Ok(v);
        }
        let v = match &mut self.backing {
            Backing::Session(s) => s.get(table, key).await?,
            Backing::Memory {
                tables,
                store_reads,
                ..
            } => {
                *store_reads += 1;
                tables.get(&(table.to_string(), key.to_vec())).cloned()
            }
        };
        self.cache.insert(table, key, v.clone());
        Ok(v)
    }

    /// Writes (or with `None` deletes) `key` in `table`, as part of the
    /// open epoch.
    pub(crate) async fn put_at(
        &mut self,
        table: &str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), RuntimeError> {
        match &mut self.backing {
            Backing::Session(s) => match &value {
                Some(v) => s.put(table, key.clone(), v.clone()).await?,
                None => s.delete(table, key.clone()).await?,
            },
            Backing::Memory { tables, .. } => {
                let k = (table.to_string(), key.clone());
                match &value {
                    Some(v) => tables.insert(k, v.clone()),
                    None => tables.remove(&k),
                };
            }
        }
        self.cache.insert(table, &key, value);
        Ok(())
    }

    /// Reads every key of `table` under `prefix` into the cache, marked
    /// complete ([`StateCache::mark_complete`]), unless `key` (under it)
    /// is cached or known absent already, or there is no cache: later
    /// reads of keys under the prefix, present or absent, then read
    /// nothing from the store. A prefix with more than [`LOAD_LIMIT`]
    /// committed keys, or more than stay cached, is marked large and
    /// never loaded again: its keys are read one at a time.
    pub(crate) async fn load_prefix(
        &mut self,
        table: &str,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<(), RuntimeError> {
        if !self.cache.keeps_anything()
            || self.cache.knows(table, key)
            || self.cache.is_large(table, prefix)
        {
            return Ok(());
        }
        let Some(all) = self.scan_within_at(table, prefix, Some(LOAD_LIMIT)).await? else {
            self.cache.mark_large(table, prefix);
            return Ok(());
        };
        self.cache.mark_complete(table, prefix);
        for (k, v) in all {
            self.cache.insert(table, &k, Some(v));
        }
        if !self.cache.is_complete(table, prefix) {
            // Its own keys evicted each other.
            self.cache.mark_large(table, prefix);
        }
        Ok(())
    }

    /// After every key of `table` under `prefix` was deleted: all its
    /// keys are known absent, however many it had.
    pub(crate) fn cleared_prefix(&mut self, table: &str, prefix: &[u8]) {
        self.cache.unmark_large(table, prefix);
        self.cache.mark_complete(table, prefix);
    }

    /// Every key of `table` that starts with `prefix`, with its value, in
    /// key order, as the task sees them (its own writes over the committed
    /// state). Only the current key's key group is read: `prefix` must
    /// start with the current key as a prefix-placed table's placement key
    /// (`streamshield_client::prefixed_key`).
    pub(crate) async fn scan_at(
        &mut self,
        table: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, RuntimeError> {
        Ok(self
            .scan_within_at(table, prefix, None)
            .await?
            .unwrap_or_default())
    }

    /// [`Self::scan_at`], or with a `limit`, `None` if more than `limit`
    /// committed keys are under `prefix` (having read at most `limit`).
    async fn scan_within_at(
        &mut self,
        table: &str,
        prefix: &[u8],
        limit: Option<u32>,
    ) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, RuntimeError> {
        match &mut self.backing {
            Backing::Session(s) => {
                let group = u32::from(streamshield_client::key_group(
                    &self.key,
                    s.job_key_groups(),
                ));
                Ok(match limit {
                    Some(l) => s.scan_prefix_within(table, prefix, group, l).await?,
                    None => Some(s.scan_prefix(table, prefix, group).await?),
                })
            }
            Backing::Memory {
                tables,
                store_reads,
                ..
            } => {
                let cap = limit.map_or(usize::MAX, |l| l as usize);
                let found: Vec<_> = tables
                    .range((table.to_string(), prefix.to_vec())..)
                    .take_while(|((t, k), _)| t == table && k.starts_with(prefix))
                    .take(cap.saturating_add(1))
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                *store_reads += 1 + found.len().min(cap) as u64;
                Ok((found.len() <= cap).then_some(found))
            }
        }
    }

    pub(crate) fn session_mut(&mut self) -> Option<&mut TaskSession> {
        match &mut self.backing {
            Backing::Session(s) => Some(s),
            Backing::Memory { .. } => None,
        }
    }
}

/// Moves the watermark to `to` (never back) and fires every timer due by
/// then, in time order, each with its key current.
pub(crate) async fn advance_watermark(
    op: &mut dyn DynOperator,
    ctx: &mut Context,
    to: i64,
) -> Result<u64, RuntimeError> {
    if to <= ctx.watermark {
        return Ok(0);
    }
    ctx.watermark = to;
    let mut fired = 0;
    while let Some((time, key)) = ctx.timers.pop_due(to) {
        ctx.key = key;
        op.on_timer_dyn(ctx, time).await?;
        ctx.hand_over_emitted().await?;
        fired += 1;
    }
    Ok(fired)
}
