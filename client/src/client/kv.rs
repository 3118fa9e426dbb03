//! The key-value calls: writes (exactly once across retries), gets and
//! scans.

use std::sync::atomic::Ordering;

use streamshield_proto::v1 as pb;

use super::{state_client, Client, InFlight, Route};
use crate::batch::WriteBatch;
use crate::error::ClientError;

/// Read freshness, see `Consistency` in state.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl Consistency {
    pub(crate) fn to_pb(self) -> i32 {
        match self {
            Self::Linearizable => pb::Consistency::Linearizable as i32,
            Self::Stale => pb::Consistency::Stale as i32,
        }
    }
}

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// Raft log index that carried the write.
    pub index: u64,
    /// Per op, the key's version after it (0 for deletes).
    pub versions: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub prefix: Vec<u8>,
    pub start_after: Vec<u8>,
    pub limit: u32,
    pub consistency: Consistency,
    /// Only these key groups (a task's own); `None` for all.
    pub key_groups: Option<std::ops::Range<u32>>,
}

#[derive(Debug, Clone)]
pub struct ScanPage {
    pub kvs: Vec<pb::KeyValue>,
    pub more: bool,
    pub applied_index: u64,
}

impl Client {
    /// The client id of this client's dedupe session: registered with the
    /// cluster by the first sync write, and again when the session of
    /// `expired` was forgotten (unless another write registered already).
    async fn client_id(&self, expired: Option<u64>) -> Result<u64, ClientError> {
        let usable = |id: u64| id != 0 && Some(id) != expired;
        let id = self.inner.client_id.load(Ordering::Acquire);
        if usable(id) {
            return Ok(id);
        }
        let _one = self.inner.registering.lock().await;
        let id = self.inner.client_id.load(Ordering::Acquire);
        if usable(id) {
            return Ok(id);
        }
        // A registration whose answer was lost leaves a session nobody
        // writes under; it expires after the session TTL.
        let r = self
            .with_retries(Route::Leader, |conn| async move {
                state_client(conn.channel.clone())
                    .register_client(pb::RegisterClientRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        self.inner.client_id.store(r.client_id, Ordering::Release);
        Ok(r.client_id)
    }

    /// Applies `batch` atomically. A condition that does not hold is
    /// [`ClientError::ConditionFailed`]. Retries after an unknown outcome
    /// carry the same sequence number, so the write applies at most once.
    pub async fn write(&self, batch: WriteBatch) -> Result<WriteResult, ClientError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::enter(&self.inner.in_flight, seq);
        let leased = batch.lease.is_some();
        let mut client_id = if leased {
            self.inner.lease_writer_id
        } else {
            self.client_id(None).await?
        };
        // A session the cluster forgot (idle past its TTL) refuses the
        // write, which so was not applied. If no earlier attempt of this
        // seq went out, none can have been applied either: the client
        // registers again and the write goes under the new id. After an
        // unknown outcome the refusal is the caller's to see.
        let mut registered_again = false;
        let result = loop {
            let mut sent = 0u32;
            let r = self
                .with_retries(Route::Leader, |conn| {
                    sent += 1;
                    // Every seq below the oldest in flight is answered,
                    // whichever session it went under: seqs only grow.
                    let acked_below = *self
                        .inner
                        .in_flight
                        .lock()
                        .expect("in flight")
                        .first()
                        .unwrap_or(&seq);
                    let req = pb::WriteRequest {
                        shard: 0,
                        job: batch.job.clone(),
                        ops: batch.ops.clone(),
                        conditions: batch.conditions.clone(),
                        client_id,
                        seq,
                        acked_below,
                        mode: pb::WriteMode::Sync as i32,
                        lease: batch.lease,
                    };
                    let coalesce = self.inner.config.coalesce;
                    async move { conn.call(&conn.writes, req, coalesce).await }
                })
                .await;
            match r {
                Err(ClientError::SessionExpired(_))
                    if sent == 1 && !registered_again && !leased =>
                {
                    client_id = self.client_id(Some(client_id)).await?;
                    registered_again = true;
                }
                other => break other,
            }
        };
        drop(in_flight);
        let w = result?;
        if !w.succeeded {
            return Err(ClientError::ConditionFailed {
                failed_condition: w.failed_condition.unwrap_or(0),
                current: w.current,
            });
        }
        Ok(WriteResult {
            index: w.index,
            versions: w.versions,
        })
    }

    pub async fn put(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        self.write(WriteBatch::new(job).put(state, key, value))
            .await
    }

    pub async fn delete(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        self.write(WriteBatch::new(job).delete(state, key)).await
    }

    /// Sets `key` to `new` only if it currently holds `expected` (`None` =
    /// absent).
    pub async fn compare_and_swap(
        &self,
        job: &str,
        state: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: impl Into<Vec<u8>>,
    ) -> Result<WriteResult, ClientError> {
        let b = WriteBatch::new(job);
        let b = match expected {
            None => b.if_absent(state, key),
            Some(v) => b.if_value(state, key, v),
        };
        self.write(b.put(state, key, new)).await
    }

    pub async fn get(
        &self,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Option<pb::KeyValue>, ClientError> {
        let req = pb::GetRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            key: key.into(),
            consistency: consistency.to_pb(),
        };
        let route = if consistency == Consistency::Stale {
            Route::Any
        } else {
            Route::Leader
        };
        let r = self
            .with_retries(route, |conn| {
                let req = req.clone();
                let coalesce = self.inner.config.coalesce;
                async move { conn.call(&conn.gets, req, coalesce).await }
            })
            .await?;
        Ok(r.kv)
    }

    /// A stale read from one particular node, with the index it had applied.
    pub async fn get_from(
        &self,
        addr: &str,
        job: &str,
        state: &str,
        key: impl Into<Vec<u8>>,
    ) -> Result<pb::GetResponse, ClientError> {
        let req = pb::GetRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            key: key.into(),
            consistency: pb::Consistency::Stale as i32,
        };
        state_client(self.channel(addr)?)
            .get(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| ClientError::from_status(&s))
    }

    pub async fn scan(
        &self,
        job: &str,
        state: &str,
        opts: ScanOptions,
    ) -> Result<ScanPage, ClientError> {
        let req = pb::ScanRequest {
            shard: 0,
            job: job.into(),
            state: state.into(),
            prefix: opts.prefix,
            start_after: opts.start_after,
            limit: opts.limit,
            consistency: opts.consistency.to_pb(),
            key_group_start: opts.key_groups.as_ref().map_or(0, |r| r.start),
            key_group_end: opts.key_groups.as_ref().map_or(0, |r| r.end),
        };
        let route = if opts.consistency == Consistency::Stale {
            Route::Any
        } else {
            Route::Leader
        };
        let r = self
            .with_retries(route, |conn| {
                let req = req.clone();
                async move {
                    state_client(conn.channel.clone())
                        .scan(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(ScanPage {
            kvs: r.kvs,
            more: r.more,
            applied_index: r.applied_index,
        })
    }

    /// Every key of a state table with `prefix`, page by page.
    pub async fn scan_all(
        &self,
        job: &str,
        state: &str,
        prefix: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<pb::KeyValue>, ClientError> {
        self.scan_key_groups(job, state, prefix, None, consistency)
            .await
    }

    /// [`Self::scan_all`] over key groups `key_groups` only (all: `None`).
    pub async fn scan_key_groups(
        &self,
        job: &str,
        state: &str,
        prefix: &[u8],
        key_groups: Option<std::ops::Range<u32>>,
        consistency: Consistency,
    ) -> Result<Vec<pb::KeyValue>, ClientError> {
        let mut out: Vec<pb::KeyValue> = Vec::new();
        loop {
            let opts = ScanOptions {
                prefix: prefix.to_vec(),
                start_after: out.last().map(|kv| kv.key.clone()).unwrap_or_default(),
                limit: 1000,
                consistency,
                key_groups: key_groups.clone(),
            };
            let page = self.scan(job, state, opts).await?;
            out.extend(page.kvs);
            if !page.more {
                return Ok(out);
            }
        }
    }
}
