//! The client API: Get, Scan, Write, and their many-item forms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamshield_proto::v1::{self as pb, get_outcome, state_server::State, write_outcome};
use tonic::{Extensions, Request, Response, Status, Streaming};

use super::authz::Action;
use super::{session, NodeContext};
use crate::error::{item_error, ServiceError};
use crate::state_machine::read;
use crate::validate;

/// Items one WriteMany or GetMany may carry.
pub const MAX_ITEMS_PER_CALL: usize = 1024;

#[derive(Clone)]
pub struct StateService {
    ctx: Arc<NodeContext>,
}

impl StateService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    fn check_get(
        &self,
        ext: &Extensions,
        r: &pb::GetRequest,
    ) -> Result<pb::Consistency, ServiceError> {
        let l = &self.ctx.limits;
        self.ctx.check_shard(r.shard)?;
        validate::name("job", &r.job, l)?;
        validate::name("state", &r.state, l)?;
        validate::key("key", &r.key, l)?;
        let c = validate::consistency(r.consistency)?;
        self.ctx.authorize(ext, Action::Read { job: &r.job })?;
        Ok(c)
    }

    /// Answers from what this replica has applied (a linearizable read
    /// must have passed read-index first), once no promotion covers the
    /// key's key group (`state_machine::promotions`): a read never sees
    /// part of an epoch.
    async fn read_settled(&self, r: &pb::GetRequest) -> Result<pb::GetResponse, ServiceError> {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
            let seq = match &info {
                Some(info) => {
                    let group = u32::from(read::placed(info, &r.state, &r.key)?);
                    let settled =
                        self.ctx
                            .sm
                            .settled(r.shard, info.job_id, (group, group + 1), deadline);
                    Some(settled.await.ok_or_else(still_promoting)?)
                }
                None => None,
            };
            // Taken before the value: the value then reflects at least it.
            let applied_index = self.ctx.sm.applied_index();
            let kv = read::get(&db, info.as_deref(), r.shard, &r.job, &r.state, &r.key)?;
            if seq.is_none_or(|s| self.ctx.sm.promotions_unchanged(s)) {
                metrics::counter!("streamshield_reads_total", "kind" => "get").increment(1);
                return Ok(pb::GetResponse {
                    kv,
                    applied_index,
                    answered_by: self.ctx.id,
                });
            }
        }
    }

    async fn write_one(
        &self,
        ext: &Extensions,
        w: pb::WriteRequest,
    ) -> Result<pb::WriteResponse, ServiceError> {
        self.ctx.check_shard(w.shard)?;
        validate::write(&w, &self.ctx.limits)?;
        let who = self.ctx.authorize(ext, Action::Write { job: &w.job })?;
        self.ctx
            .write(who.principal, crate::sync_write::from_request(w))
            .await
    }

    /// Linearizable reads wait for read-index on the leader; stale reads
    /// answer from whatever this replica has applied.
    async fn prepare_read(&self, c: pb::Consistency) -> Result<(), ServiceError> {
        match c {
            pb::Consistency::Linearizable => self.ctx.linearize().await,
            pb::Consistency::Stale => Ok(()),
        }
    }
}

/// How long a read waits for a promotion of its key groups to end
/// before it answers UNAVAILABLE (a 64 MiB epoch takes about a second).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

fn still_promoting() -> ServiceError {
    ServiceError::Busy {
        message: format!(
            "the key groups read are still being promoted after {SETTLE_WAIT:?}; retry"
        ),
        retry_after_ms: 100,
    }
}

fn check_item_count(field: &str, n: usize) -> Result<(), ServiceError> {
    if n == 0 {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if n > MAX_ITEMS_PER_CALL {
        return Err(ServiceError::invalid(
            field,
            format!("{n} items, above the limit of {MAX_ITEMS_PER_CALL}"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl State for StateService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        let c = self.check_get(&ext, &r)?;
        self.prepare_read(c).await?;
        Ok(Response::new(self.read_settled(&r).await?))
    }

    async fn get_many(
        &self,
        request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        let gets = r.gets;
        check_item_count("gets", gets.len())?;
        metrics::histogram!("streamshield_items_per_call", "kind" => "get")
            .record(gets.len() as f64);
        let checked: Vec<_> = gets.iter().map(|g| self.check_get(&ext, g)).collect();
        // One read-index round serves every linearizable item: it starts
        // after all of them arrived.
        let linearized = if checked
            .iter()
            .any(|c| matches!(c, Ok(pb::Consistency::Linearizable)))
        {
            Some(self.ctx.linearize().await)
        } else {
            None
        };
        let mut outcomes = Vec::with_capacity(gets.len());
        for (g, c) in gets.iter().zip(checked) {
            let r = match (c, &linearized) {
                (Err(e), _) => Err(e),
                (Ok(pb::Consistency::Linearizable), Some(Err(e))) => Err(e.duplicate()),
                (Ok(_), _) => self.read_settled(g).await,
            };
            outcomes.push(pb::GetOutcome {
                result: Some(match r {
                    Ok(ok) => get_outcome::Result::Ok(ok),
                    Err(e) => get_outcome::Result::Error(item_error(e)),
                }),
            });
        }
        Ok(Response::new(pb::GetManyResponse { outcomes }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        let l = &self.ctx.limits;
        self.ctx.check_shard(r.shard)?;
        validate::name("job", &r.job, l)?;
        validate::name("state", &r.state, l)?;
        self.ctx.authorize(&ext, Action::Read { job: &r.job })?;
        if r.prefix.len() > l.max_key_bytes || r.start_after.len() > l.max_key_bytes {
            return Err(ServiceError::TooLarge {
                what: "prefix or start_after".into(),
                size: r.prefix.len().max(r.start_after.len()),
                limit: l.max_key_bytes,
            }
            .into());
        }
        let limit = match r.limit {
            0 => 1000,
            n => n.min(l.max_scan_limit),
        } as usize;
        self.prepare_read(validate::consistency(r.consistency)?)
            .await?;
        let max_bytes = l.max_scan_bytes;
        let r = Arc::new(r);
        let deadline = Instant::now() + SETTLE_WAIT;
        let (kvs, more, applied_index) = loop {
            let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
            // No promotion may cover the groups read (a page of the whole
            // table reads every group).
            let seq = match &info {
                Some(info) => {
                    let groups = match (r.key_group_start, r.key_group_end) {
                        (0, 0) => (0, info.key_groups),
                        range => range,
                    };
                    let settled = self.ctx.sm.settled(r.shard, info.job_id, groups, deadline);
                    Some(settled.await.ok_or_else(still_promoting)?)
                }
                None => None,
            };
            let req = r.clone();
            // A page reads up to one seek per key group: off the async
            // workers, which also carry Raft's heartbeats.
            let page = tokio::task::spawn_blocking(move || {
                let page = read::Page {
                    prefix: &req.prefix,
                    start_after: &req.start_after,
                    limit,
                    max_bytes,
                    key_groups: (req.key_group_start, req.key_group_end),
                };
                read::scan(&db, info.as_deref(), req.shard, &req.job, &req.state, page)
            })
            .await
            .map_err(|e| ServiceError::Unavailable(format!("scan task: {e}")))??;
            if seq.is_none_or(|s| self.ctx.sm.promotions_unchanged(s)) {
                break page;
            }
        };
        metrics::counter!("streamshield_reads_total", "kind" => "scan").increment(1);
        Ok(Response::new(pb::ScanResponse {
            kvs,
            more,
            applied_index,
            answered_by: self.ctx.id,
        }))
    }

    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let (_, ext, w) = request.into_parts();
        Ok(Response::new(self.write_one(&ext, w).await?))
    }

    async fn write_many(
        &self,
        request: Request<pb::WriteManyRequest>,
    ) -> Result<Response<pb::WriteManyResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        let writes = r.writes;
        check_item_count("writes", writes.len())?;
        metrics::histogram!("streamshield_items_per_call", "kind" => "write")
            .record(writes.len() as f64);
        // All are handed to the write batcher before any is awaited, so
        // they travel in as few proposals as its bounds allow.
        let answers =
            futures::future::join_all(writes.into_iter().map(|w| self.write_one(&ext, w))).await;
        let outcomes = answers
            .into_iter()
            .map(|r| pb::WriteOutcome {
                result: Some(match r {
                    Ok(ok) => write_outcome::Result::Ok(ok),
                    Err(e) => write_outcome::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(pb::WriteManyResponse { outcomes }))
    }

    async fn register_client(
        &self,
        request: Request<pb::RegisterClientRequest>,
    ) -> Result<Response<pb::RegisterClientResponse>, Status> {
        // Any authenticated caller may write some job; a session is small
        // and expires when idle, as a made-up id's did.
        let who = self
            .ctx
            .authorize(request.extensions(), Action::Authenticated)?;
        let register = pb::command::Kind::RegisterClient(pb::ClientRegister {
            principal: who.principal,
        });
        let client_id = match self.ctx.propose_kind(register).await? {
            (_, pb::command_response::Kind::ClientRegistered(id)) => id,
            (_, other) => {
                return Err(ServiceError::unexpected_answer("client registration", &other).into())
            }
        };
        Ok(Response::new(pb::RegisterClientResponse {
            client_id,
            idle_ttl_ms: self.ctx.limits.dedupe_session_ttl_ms,
        }))
    }

    type SessionStream = session::ReplyStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let stopping = self.ctx.stopping();
        // Each item is authorized on its own, as its unary call would be,
        // under the caller the stream was opened by.
        let (_, ext, input) = request.into_parts();
        self.ctx.identify(&ext)?;
        Ok(Response::new(session::serve(
            self.clone(),
            ext,
            input,
            stopping,
        )))
    }
}
