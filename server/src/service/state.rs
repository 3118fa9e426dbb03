//! The client API: Get, Scan and Write.

use std::sync::Arc;

use streamshield_proto::v1::{self as pb, state_server::State};
use tonic::{Request, Response, Status};

use super::NodeContext;
use crate::error::ServiceError;
use crate::state_machine::read;
use crate::validate;

pub struct StateService {
    ctx: Arc<NodeContext>,
}

impl StateService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// Linearizable reads wait for read-index on the leader; stale reads
    /// answer from whatever this replica has applied.
    async fn prepare_read(&self, raw: i32) -> Result<(), ServiceError> {
        match validate::consistency(raw)? {
            pb::Consistency::Linearizable => self.ctx.linearize().await,
            pb::Consistency::Stale => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl State for StateService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let r = request.into_inner();
        let l = &self.ctx.limits;
        self.ctx.check_shard(r.shard)?;
        validate::name("job", &r.job, l)?;
        validate::name("state", &r.state, l)?;
        validate::key("key", &r.key, l)?;
        self.prepare_read(r.consistency).await?;
        // Taken before the value: the value then reflects at least it.
        let applied_index = self.ctx.sm.applied_index();
        let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
        let kv = read::get(&db, info.as_deref(), r.shard, &r.job, &r.state, &r.key)?;
        metrics::counter!("streamshield_reads_total", "kind" => "get").increment(1);
        Ok(Response::new(pb::GetResponse {
            kv,
            applied_index,
            answered_by: self.ctx.id,
        }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = request.into_inner();
        let l = &self.ctx.limits;
        self.ctx.check_shard(r.shard)?;
        validate::name("job", &r.job, l)?;
        validate::name("state", &r.state, l)?;
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
        self.prepare_read(r.consistency).await?;
        let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
        let page = read::Page {
            prefix: &r.prefix,
            start_after: &r.start_after,
            limit,
        };
        let (kvs, more, applied_index) =
            read::scan(&db, info.as_deref(), r.shard, &r.job, &r.state, page)?;
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
        let w = request.into_inner();
        self.ctx.check_shard(w.shard)?;
        validate::write(&w, &self.ctx.limits)?;
        Ok(Response::new(self.ctx.write(w).await?))
    }
}
