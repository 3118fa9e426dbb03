//! The stream calls: create, list, describe, append, read, subscribe,
//! trim, delete.

use std::future::Future;

use streamshield_proto::v1::{self as pb, streams_client::StreamsClient};
use tonic::Status;

use super::{Client, Conn, Route, MAX_MESSAGE_BYTES};
use crate::error::ClientError;
use crate::transport::Transport;
use crate::Consistency;

fn streams_client(t: Transport) -> StreamsClient<Transport> {
    StreamsClient::new(t)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An append's idempotence: a retry with the same `seq` of the same
/// producer is answered with the first attempt's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    pub id: u64,
    pub seq: u64,
}

/// How much of its past a stream partition keeps; 0 for no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Age in milliseconds, by the time each record's entry was proposed
    /// (Kafka's `retention.ms`).
    pub ms: u64,
}

impl Client {
    /// One `Streams` call routed as `route` asks, retried as every call is.
    async fn streams<Req, Resp, F, Fut>(
        &self,
        route: Route,
        req: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(StreamsClient<Transport>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(route, streams_client, req, call).await
    }

    pub async fn create_stream(
        &self,
        job: &str,
        stream: &str,
        partitions: u32,
        retention_bytes: u64,
    ) -> Result<pb::StreamInfo, ClientError> {
        let retention = Retention {
            bytes: retention_bytes,
            ms: 0,
        };
        self.create_stream_with_retention(job, stream, partitions, retention)
            .await
    }

    /// Creates a stream whose partitions drop their oldest records past
    /// `retention` (by bytes, by age, or both).
    pub async fn create_stream_with_retention(
        &self,
        job: &str,
        stream: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<pb::StreamInfo, ClientError> {
        let req = pb::CreateStreamRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            partitions,
            retention_bytes: retention.bytes,
            retention_ms: retention.ms,
        };
        let r = self
            .streams(Route::Leader, req, |mut c, r| async move {
                c.create_stream(r).await
            })
            .await?;
        r.stream.ok_or_else(|| {
            ClientError::InvalidArgument("the node answered without a stream".into())
        })
    }

    pub async fn describe_stream(
        &self,
        job: &str,
        stream: &str,
    ) -> Result<pb::StreamInfo, ClientError> {
        let req = pb::DescribeStreamRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            consistency: Consistency::Linearizable.to_pb(),
        };
        let r = self
            .streams(Route::Leader, req, |mut c, r| async move {
                c.describe_stream(r).await
            })
            .await?;
        r.stream.ok_or_else(|| {
            ClientError::InvalidArgument("the node answered without a stream".into())
        })
    }

    /// Every stream of `job`, in name order.
    pub async fn list_streams(&self, job: &str) -> Result<Vec<pb::StreamSummary>, ClientError> {
        let req = pb::ListStreamsRequest {
            shard: 0,
            job: job.into(),
            consistency: Consistency::Linearizable.to_pb(),
        };
        let r = self
            .streams(Route::Leader, req, |mut c, r| async move {
                c.list_streams(r).await
            })
            .await?;
        Ok(r.streams)
    }

    /// Deletes a stream with its records; returns the deletion's log
    /// index. A retry whose first attempt was applied finds the stream
    /// gone (`NotFound`).
    pub async fn delete_stream(&self, job: &str, stream: &str) -> Result<u64, ClientError> {
        let req = pb::DeleteStreamRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
        };
        let r = self
            .streams(Route::Leader, req, |mut c, r| async move {
                c.delete_stream(r).await
            })
            .await?;
        Ok(r.index)
    }

    /// Appends `records` to one partition; with a `producer`, a retry
    /// after an unknown outcome appends nothing twice.
    pub async fn append(
        &self,
        job: &str,
        stream: &str,
        partition: u32,
        records: Vec<pb::Record>,
        producer: Option<Producer>,
    ) -> Result<pb::AppendResponse, ClientError> {
        let req = pb::AppendRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            partition,
            records,
            producer_id: producer.map_or(0, |p| p.id),
            producer_seq: producer.map_or(0, |p| p.seq),
        };
        self.streams(
            Route::Leader,
            req,
            |mut c, r| async move { c.append(r).await },
        )
        .await
    }

    /// Committed records of one partition from `from_offset`.
    pub async fn read_stream(
        &self,
        job: &str,
        stream: &str,
        partition: u32,
        from_offset: u64,
        max_records: u32,
    ) -> Result<pb::ReadResponse, ClientError> {
        let req = pb::ReadRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            partition,
            from_offset,
            max_records,
            max_bytes: 0,
            consistency: Consistency::Linearizable.to_pb(),
        };
        self.streams(
            Route::Leader,
            req,
            |mut c, r| async move { c.read(r).await },
        )
        .await
    }

    /// Follows one partition from `from_offset`: every committed record
    /// once, in order, in batches as they are applied. The stream ends with
    /// an error when its node goes away; resume from the next offset.
    pub async fn subscribe(
        &self,
        job: &str,
        stream: &str,
        partition: u32,
        from_offset: u64,
    ) -> Result<tonic::Streaming<pb::ReadResponse>, ClientError> {
        let req = pb::SubscribeRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            partition,
            from_offset,
        };
        // A connection of its own: see `Conn::dedicated`.
        self.call_over(
            Route::Leader,
            Conn::dedicated,
            streams_client,
            req,
            |mut c, r| async move { c.subscribe(r).await },
        )
        .await
    }

    /// Drops a partition's records below `before_offset`.
    pub async fn trim_stream(
        &self,
        job: &str,
        stream: &str,
        partition: u32,
        before_offset: u64,
    ) -> Result<pb::TrimStreamResponse, ClientError> {
        let req = pb::TrimStreamRequest {
            shard: 0,
            job: job.into(),
            stream: stream.into(),
            partition,
            before_offset,
        };
        self.streams(Route::Leader, req, |mut c, r| async move {
            c.trim_stream(r).await
        })
        .await
    }
}
