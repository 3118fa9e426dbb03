//! The stream API: create, describe, append, read, subscribe, trim.
//!
//! Appends and trims are Raft entries (`state_machine/apply/streams.rs`
//! assigns offsets); reads and subscriptions answer from what this node
//! has applied, which is committed by construction: records reach a
//! partition only when an append or an epoch commit applies.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use streamshield_proto::v1::{self as pb, command, command_response, streams_server::Streams};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::NodeContext;
use crate::error::ServiceError;
use crate::state_machine::read::{self, RecordRange};
use crate::validate;

/// Records one read returns when it asks for no limit, and at most.
const DEFAULT_READ_RECORDS: usize = 1_000;
const MAX_READ_RECORDS: usize = 10_000;
/// What a subscriber at a partition's end reads on the async worker at
/// most (a first record of any size always comes).
const TAIL_PAGE_RECORDS: u32 = 64;
const TAIL_PAGE_BYTES: u64 = 64 << 10;
/// Batches a subscription holds for a slow consumer before it waits.
const SUBSCRIPTION_BUFFER: usize = 4;

#[derive(Clone)]
pub struct StreamsService {
    ctx: Arc<NodeContext>,
}

impl StreamsService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// The checks every call on a stream starts with: shard, names, and
    /// that the caller may do `action` on the job.
    fn check(
        &self,
        ext: &tonic::Extensions,
        shard: u32,
        job: &str,
        stream: &str,
        action: Action,
    ) -> Result<super::authz::Identity, ServiceError> {
        self.ctx.check_shard(shard)?;
        validate::name("job", job, &self.ctx.limits)?;
        validate::name("stream", stream, &self.ctx.limits)?;
        self.ctx.authorize(ext, action)
    }

    /// The checks of a call that changes a stream of the job.
    fn check_write(
        &self,
        ext: &tonic::Extensions,
        shard: u32,
        job: &str,
        stream: &str,
    ) -> Result<super::authz::Identity, ServiceError> {
        self.check(ext, shard, job, stream, Action::Write { job })
    }

    /// A read's checks, then read-index when it asks to be linearizable.
    async fn check_read(
        &self,
        ext: &tonic::Extensions,
        shard: u32,
        job: &str,
        stream: &str,
        consistency: i32,
    ) -> Result<(), ServiceError> {
        self.check(ext, shard, job, stream, Action::Read { job })?;
        if validate::consistency(consistency)? == pb::Consistency::Linearizable {
            self.ctx.linearize().await?;
        }
        Ok(())
    }

    fn describe(&self, job: &str, stream: &str) -> Result<pb::StreamInfo, ServiceError> {
        let (db, info) = self.ctx.sm.job(0, job)?;
        self.ctx.sm.read_with_promotions(|promoting| {
            read::describe_stream(&db, info.as_deref(), 0, job, stream, promoting)
        })
    }

    /// A page of the stream with the job and stream ids `pinned`, when
    /// given (`RecordRange::pinned`).
    fn read_page(
        &self,
        r: &pb::ReadRequest,
        pinned: Option<(u32, u32)>,
    ) -> Result<pb::ReadResponse, ServiceError> {
        let applied_index = self.ctx.sm.applied_index();
        let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
        let max_records = match r.max_records as usize {
            0 => DEFAULT_READ_RECORDS,
            n => n.min(MAX_READ_RECORDS),
        };
        let max_bytes = match r.max_bytes {
            0 => self.ctx.limits.max_scan_bytes,
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(self.ctx.limits.max_scan_bytes),
        };
        let range = RecordRange {
            stream: &r.stream,
            partition: r.partition,
            from_offset: r.from_offset,
            max_records,
            max_bytes,
            pinned,
        };
        let (records, st) = self.ctx.sm.read_with_promotions(|promoting| {
            read::read_records(&db, info.as_deref(), r.shard, &r.job, range, promoting)
        })?;
        metrics::counter!("streamshield_stream_records_read_total").increment(records.len() as u64);
        let next_offset = records
            .last()
            .map_or(r.from_offset.max(st.start_offset), |rec| rec.offset + 1);
        Ok(pb::ReadResponse {
            records,
            next_offset,
            start_offset: st.start_offset,
            end_offset: st.end_offset,
            applied_index,
        })
    }

    /// A page off the async workers: it may hold many records, and a read
    /// waits out a chunk that starts or ends a promotion.
    async fn page_off_workers(
        &self,
        r: pb::ReadRequest,
        pinned: Option<(u32, u32)>,
    ) -> Result<pb::ReadResponse, ServiceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_page(&r, pinned))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("read task: {e}")))?
    }

    /// A subscription's next page. Once a page reached the partition's
    /// end, the next holds what was appended since: read on the async
    /// worker, bounded like a point read, so a record reaches its
    /// subscriber without a hand-off to the blocking pool (which cost
    /// about 90 µs of the append-to-subscriber p50, `bench --workload
    /// subscribe`). A subscriber behind the end reads off the workers.
    async fn subscription_page(
        &self,
        req: &pb::ReadRequest,
        pinned: (u32, u32),
        at_end: bool,
    ) -> Result<pb::ReadResponse, ServiceError> {
        if at_end {
            return self.read_page(
                &pb::ReadRequest {
                    max_records: TAIL_PAGE_RECORDS,
                    max_bytes: TAIL_PAGE_BYTES,
                    ..req.clone()
                },
                Some(pinned),
            );
        }
        self.page_off_workers(req.clone(), Some(pinned)).await
    }
}

fn entries(records: Vec<pb::Record>) -> Vec<pb::StreamEntry> {
    records
        .into_iter()
        .map(|r| pb::StreamEntry {
            key: r.key,
            value: r.value,
        })
        .collect()
}

/// A commit's outputs as the log carries them.
pub fn partition_entries(outputs: Vec<pb::PartitionOutput>) -> Vec<pb::PartitionEntries> {
    outputs
        .into_iter()
        .map(|o| pb::PartitionEntries {
            stream: o.stream,
            partition: o.partition,
            records: entries(o.records),
        })
        .collect()
}

type Subscription = Pin<Box<dyn Stream<Item = Result<pb::ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::CreateStreamResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::create_stream(&r, &self.ctx.limits)?;
        self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let cmd = command::Kind::CreateStream(pb::StreamCreate {
            job: r.job.clone(),
            stream: r.stream.clone(),
            partitions: r.partitions,
            retention_bytes: r.retention_bytes,
            retention_ms: r.retention_ms,
        });
        match self.ctx.propose_kind(cmd).await? {
            (_, command_response::Kind::StreamCreated(_)) => {
                Ok(Response::new(pb::CreateStreamResponse {
                    stream: Some(self.describe(&r.job, &r.stream)?),
                }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("stream creation", &other).into()),
        }
    }

    async fn describe_stream(
        &self,
        request: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::DescribeStreamResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.check_read(&ext, r.shard, &r.job, &r.stream, r.consistency)
            .await?;
        Ok(Response::new(pb::DescribeStreamResponse {
            stream: Some(self.describe(&r.job, &r.stream)?),
        }))
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx.check_shard(r.shard)?;
        validate::append(&r, &self.ctx.limits)?;
        let who = self.ctx.authorize(&ext, Action::Write { job: &r.job })?;
        let cmd = command::Kind::Append(pb::StreamAppend {
            principal: who.principal,
            job: r.job,
            stream: r.stream,
            partition: r.partition,
            records: entries(r.records),
            producer_id: r.producer_id,
            producer_seq: r.producer_seq,
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::Appended(a)) => Ok(Response::new(pb::AppendResponse {
                base_offset: a.base_offset,
                duplicate: a.duplicate,
                index,
            })),
            (_, other) => Err(ServiceError::unexpected_answer("append", &other).into()),
        }
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.check_read(&ext, r.shard, &r.job, &r.stream, r.consistency)
            .await?;
        Ok(Response::new(self.page_off_workers(r, None).await?))
    }

    type SubscribeStream = Subscription;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (_, ext, r) = request.into_parts();
        self.check(
            &ext,
            r.shard,
            &r.job,
            &r.stream,
            Action::Read { job: &r.job },
        )?;
        // The stream and partition must exist now: a typo is an error, not
        // a subscription that never yields.
        let first = pb::ReadRequest {
            shard: r.shard,
            job: r.job,
            stream: r.stream,
            partition: r.partition,
            from_offset: r.from_offset,
            ..Default::default()
        };
        let pinned = {
            let (db, info) = self.ctx.sm.job(first.shard, &first.job)?;
            let (job_id, stream) =
                read::stream_of(&db, info.as_deref(), first.shard, &first.job, &first.stream)?;
            (job_id, stream.stream_id)
        };
        self.read_page(
            &pb::ReadRequest {
                max_records: 1,
                ..first.clone()
            },
            Some(pinned),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIPTION_BUFFER);
        let this = self.clone();
        let mut appended = self.ctx.sm.stream_appends();
        let mut stopping = self.ctx.stopping();
        tokio::spawn(async move {
            let mut req = first;
            let mut at_end = false;
            loop {
                // Marked seen before the read: an append applied after
                // this point wakes the next wait.
                appended.borrow_and_update();
                let page = match this.subscription_page(&req, pinned, at_end).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                at_end = page.next_offset >= page.end_offset;
                if !page.records.is_empty() {
                    req.from_offset = page.next_offset;
                    if tx.send(Ok(page)).await.is_err() {
                        return;
                    }
                    continue;
                }
                req.from_offset = page.next_offset;
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    _ = stopping.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.check_write(&ext, r.shard, &r.job, &r.stream)?;
        let cmd = command::Kind::DeleteStream(pb::StreamDelete {
            job: r.job.clone(),
            stream: r.stream.clone(),
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::StreamDeleted(stream_id)) => {
                tracing::info!(job = %r.job, stream = %r.stream, stream_id, index, "deleted a stream");
                Ok(Response::new(pb::DeleteStreamResponse { index }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("stream deletion", &other).into()),
        }
    }

    async fn list_streams(
        &self,
        request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.ctx
            .check_job_read(&ext, r.shard, &r.job, r.consistency)
            .await?;
        let (db, info) = self.ctx.sm.job(r.shard, &r.job)?;
        let streams = read::list_streams(&db, info.as_deref(), r.shard, &r.job)?;
        Ok(Response::new(pb::ListStreamsResponse {
            streams: streams
                .into_iter()
                .map(|s| pb::StreamSummary {
                    name: s.name,
                    partitions: s.partitions,
                    retention_bytes: s.retention_bytes,
                    created_index: s.created_index,
                    retention_ms: s.retention_ms,
                })
                .collect(),
        }))
    }

    async fn trim_stream(
        &self,
        request: Request<pb::TrimStreamRequest>,
    ) -> Result<Response<pb::TrimStreamResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        self.check_write(&ext, r.shard, &r.job, &r.stream)?;
        let cmd = command::Kind::TrimStream(pb::StreamTrim {
            job: r.job,
            stream: r.stream,
            partition: r.partition,
            before_offset: r.before_offset,
        });
        match self.ctx.propose_kind(cmd).await? {
            (index, command_response::Kind::TrimmedTo(start_offset)) => {
                Ok(Response::new(pb::TrimStreamResponse {
                    start_offset,
                    index,
                }))
            }
            (_, other) => Err(ServiceError::unexpected_answer("trim", &other).into()),
        }
    }
}
