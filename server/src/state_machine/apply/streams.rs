//! Streams: partitioned logs inside a job.
//!
//! A stream's record (`keys::meta::stream`) names its partitions and
//! retention; each partition keeps its bounds (`keys::meta::partition`),
//! and its records sit in the `streams` column family under
//! `[shard][job_id][stream_id][partition][offset]`, in offset order. Offsets
//! are assigned here, in apply, so every replica gives a record the same
//! one: by `Append` (producers outside jobs, deduplicated per producer id)
//! and by an epoch's commit and promotion (`epochs.rs`, `promotion.rs`)
//! for the records a task produced. A deleted stream's id is never used
//! again in its job.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response};
use tonic::Code;

use super::{error_response, jobs, not_found, At};
use crate::error::ServiceError;
use crate::keys::{self, meta, DEFAULT_SHARD, MAX_STREAMS};
use crate::rocks::corrupt;
use crate::state_machine::meta::{CF_META, CF_STREAMS};
use crate::state_machine::pending::PendingWrites;

/// Partitions one stream may have.
pub const MAX_PARTITIONS: u32 = 4096;
/// Records one apply drops for retention at most; the rest go with the
/// next append, so retention never makes one apply long.
const MAX_TRIMMED_PER_APPLY: u64 = 10_000;

/// Where records go and what a partition holds.
pub struct Target {
    pub stream: pb::StreamRecord,
    pub state: pb::PartitionState,
}

fn load<M: Message + Default>(
    p: &mut PendingWrites,
    key: &[u8],
    what: &str,
) -> io::Result<Option<M>> {
    match p.get(CF_META, key)? {
        None => Ok(None),
        Some(raw) => M::decode(raw.as_slice())
            .map(Some)
            .map_err(|e| corrupt(format!("{what}: {e}"))),
    }
}

pub fn create(
    p: &mut PendingWrites,
    at: At,
    c: &pb::StreamCreate,
) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &c.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: c.job.clone() }));
    };
    if c.partitions == 0 || c.partitions > MAX_PARTITIONS {
        return Ok(error_response(
            Code::InvalidArgument,
            format!(
                "partitions must be 1 to {MAX_PARTITIONS}, not {}",
                c.partitions
            ),
        ));
    }
    if load::<pb::StreamRecord>(
        p,
        &meta::stream(DEFAULT_SHARD, job.job_id, &c.stream),
        "stream",
    )?
    .is_some()
    {
        return Ok(error_response(
            Code::AlreadyExists,
            format!("stream {:?} of job {:?} already exists", c.stream, c.job),
        ));
    }
    let known = streams_by_id(p, &job)?;
    if at.format >= jobs::JOB_LIMITS_FORMAT && known.len() >= MAX_STREAMS {
        return Ok(error_response(
            Code::ResourceExhausted,
            format!(
                "job {:?} has {MAX_STREAMS} streams, the most a job may have",
                c.job
            ),
        ));
    }
    // Above every live stream's id and every deleted one's.
    let after_live = known.last().map_or(Some(1), |s| s.stream_id.checked_add(1));
    let after_deleted = next_stream_id(p, job.job_id)?;
    let Some(stream_id) = after_live.map(|n| n.max(after_deleted)) else {
        return Ok(error_response(
            Code::ResourceExhausted,
            format!("job {:?} has used up its stream ids", c.job),
        ));
    };
    let record = pb::StreamRecord {
        name: c.stream.clone(),
        stream_id,
        partitions: c.partitions,
        retention_bytes: c.retention_bytes,
        created_index: at.index,
        retention_ms: c.retention_ms,
    };
    p.put(
        CF_META,
        &meta::stream(DEFAULT_SHARD, job.job_id, &c.stream),
        record.encode_to_vec(),
    )?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::StreamCreated(record)),
    })
}

/// The lowest stream id no deleted stream of the job had (1 if none was
/// deleted).
fn next_stream_id(p: &mut PendingWrites, job_id: u32) -> io::Result<u32> {
    match p.get(CF_META, &meta::next_stream_id(DEFAULT_SHARD, job_id))? {
        None => Ok(1),
        Some(raw) => crate::state_machine::meta::decode_u32(&raw),
    }
}

/// Removes a stream: its record, its records, its partitions' bounds and
/// its producers, each one range deletion. Its id stays taken
/// ([`next_stream_id`]), and a tombstone tells promotion that outputs
/// staged for it before are to be dropped, not damage.
pub fn delete(p: &mut PendingWrites, d: &pb::StreamDelete) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &d.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: d.job.clone() }));
    };
    let stream = match stream_record(p, &job, &d.stream)? {
        Ok(s) => s,
        Err(refused) => return Ok(refused),
    };
    let (job_id, sid) = (job.job_id, stream.stream_id);
    p.delete(CF_META, &meta::stream(DEFAULT_SHARD, job_id, &d.stream))?;
    let records = keys::stream_records_prefix(DEFAULT_SHARD, job_id, sid);
    let mut ranges = vec![(CF_STREAMS, records)];
    ranges.extend(
        meta::stream_record_prefixes(DEFAULT_SHARD, job_id, sid)
            .into_iter()
            .map(|prefix| (CF_META, prefix)),
    );
    for (cf, prefix) in ranges {
        let end = keys::prefix_end(&prefix)
            .ok_or_else(|| corrupt("a stream prefix of 0xff bytes only"))?;
        p.delete_range(cf, &prefix, &end)?;
    }
    p.put(
        CF_META,
        &meta::deleted_stream(DEFAULT_SHARD, job_id, sid),
        Vec::new(),
    )?;
    // Only a damaged store holds a stream id of u32::MAX: creation refuses
    // to hand it out.
    let next = sid.saturating_add(1).max(next_stream_id(p, job_id)?);
    p.put(
        CF_META,
        &meta::next_stream_id(DEFAULT_SHARD, job_id),
        next.to_be_bytes().to_vec(),
    )?;
    p.streams_changed();
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::StreamDeleted(sid)),
    })
}

/// Whether the job's stream `stream_id` was deleted.
pub fn was_deleted(p: &mut PendingWrites, job_id: u32, stream_id: u32) -> io::Result<bool> {
    Ok(p.get(
        CF_META,
        &meta::deleted_stream(DEFAULT_SHARD, job_id, stream_id),
    )?
    .is_some())
}

/// The record of `stream` in `job`, or the refusal.
pub fn stream_record(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
    stream: &str,
) -> io::Result<Result<pb::StreamRecord, pb::CommandResponse>> {
    Ok(load::<pb::StreamRecord>(
        p,
        &meta::stream(DEFAULT_SHARD, job.job_id, stream),
        "stream",
    )?
    .ok_or_else(|| {
        not_found(ServiceError::StreamNotFound {
            job: job.job.clone(),
            stream: stream.to_string(),
        })
    }))
}

/// The refusal of a partition `stream` does not have.
pub fn missing_partition(stream: &pb::StreamRecord, partition: u32) -> Option<pb::CommandResponse> {
    if partition >= stream.partitions {
        return Some(error_response(
            Code::InvalidArgument,
            format!(
                "stream {:?} has partitions 0 to {}, not {partition}",
                stream.name,
                stream.partitions - 1
            ),
        ));
    }
    None
}

/// `partition` of a stream known to have it, with its state.
pub fn partition_target(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
    stream: pb::StreamRecord,
    partition: u32,
) -> io::Result<Target> {
    let state = load(
        p,
        &meta::partition(DEFAULT_SHARD, job.job_id, stream.stream_id, partition),
        "partition",
    )?
    .unwrap_or_default();
    Ok(Target { stream, state })
}

/// The stream and partition state `partition` of `stream` in `job`, or
/// the refusal.
pub fn target(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
    stream: &str,
    partition: u32,
) -> io::Result<Result<Target, pb::CommandResponse>> {
    let s = match stream_record(p, job, stream)? {
        Ok(s) => s,
        Err(refused) => return Ok(Err(refused)),
    };
    if let Some(refused) = missing_partition(&s, partition) {
        return Ok(Err(refused));
    }
    partition_target(p, job, s, partition).map(Ok)
}

/// Every stream of `job`, in the order of their ids.
pub fn streams_by_id(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
) -> io::Result<Vec<pb::StreamRecord>> {
    let mut out = Vec::new();
    for (_, raw) in p.scan_prefix(CF_META, &meta::stream_prefix(DEFAULT_SHARD, job.job_id))? {
        out.push(
            pb::StreamRecord::decode(raw.as_slice())
                .map_err(|e| corrupt(format!("stream: {e}")))?,
        );
    }
    out.sort_by_key(|s| s.stream_id);
    Ok(out)
}

/// Appends `records` to the target partition at the entry's time; returns
/// the first record's offset. Retention drops the oldest records past the
/// stream's byte limit.
pub fn append_records(
    p: &mut PendingWrites,
    at: At,
    job: &pb::JobInfo,
    partition: u32,
    t: &mut Target,
    records: &[(&[u8], &[u8])],
) -> io::Result<u64> {
    let job_id = job.job_id;
    let base = t.state.end_offset;
    // Only a damaged store holds a partition this close to the top.
    let end = base
        .checked_add(records.len() as u64)
        .ok_or_else(|| corrupt("a stream partition's offsets pass u64::MAX"))?;
    let sid = t.stream.stream_id;
    for (i, &(key, value)) in records.iter().enumerate() {
        let stored = pb::StoredRecord {
            key: key.to_vec(),
            value: value.to_vec(),
            timestamp_ms: at.time_ms,
        };
        p.put(
            CF_STREAMS,
            &keys::record_key(DEFAULT_SHARD, job_id, sid, partition, base + i as u64),
            stored.encode_to_vec(),
        )?;
        t.state.bytes = t
            .state
            .bytes
            .saturating_add((key.len() + value.len()) as u64);
    }
    t.state.end_offset = end;
    metrics::counter!("streamshield_stream_records_appended_total").increment(records.len() as u64);
    let over_bytes = t.stream.retention_bytes > 0 && t.state.bytes > t.stream.retention_bytes;
    // Records proposed before this: older than the stream keeps. Entries
    // without a leader time (from before the envelope) trim nothing.
    let cutoff = (t.stream.retention_ms > 0 && at.time_ms > 0)
        .then(|| at.time_ms.saturating_sub(t.stream.retention_ms));
    if over_bytes || cutoff.is_some() {
        let mut to = t.state.start_offset;
        let mut dropped = 0;
        while to < t.state.end_offset && dropped < MAX_TRIMMED_PER_APPLY {
            let k = keys::record_key(DEFAULT_SHARD, job_id, sid, partition, to);
            let Some(raw) = p.get(CF_STREAMS, &k)? else {
                to += 1;
                dropped += 1;
                continue;
            };
            let r = pb::StoredRecord::decode(raw.as_slice())
                .map_err(|e| corrupt(format!("stream record: {e}")))?;
            let too_many_bytes =
                t.stream.retention_bytes > 0 && t.state.bytes > t.stream.retention_bytes;
            let too_old = cutoff.is_some_and(|c| r.timestamp_ms < c);
            if !too_many_bytes && !too_old {
                break;
            }
            t.state.bytes = t
                .state
                .bytes
                .saturating_sub((r.key.len() + r.value.len()) as u64);
            to += 1;
            dropped += 1;
        }
        trim_to(p, job_id, partition, t, to)?;
    }
    p.put(
        CF_META,
        &meta::partition(DEFAULT_SHARD, job_id, sid, partition),
        t.state.encode_to_vec(),
    )?;
    p.streams_changed();
    metrics::gauge!(
        "streamshield_stream_end_offset",
        "job" => job.job.clone(),
        "stream" => t.stream.name.clone(),
        "partition" => partition.to_string()
    )
    .set(t.state.end_offset as f64);
    Ok(base)
}

fn trim_to(
    p: &mut PendingWrites,
    job_id: u32,
    partition: u32,
    t: &mut Target,
    to: u64,
) -> io::Result<()> {
    if to <= t.state.start_offset {
        return Ok(());
    }
    let sid = t.stream.stream_id;
    p.delete_range(
        CF_STREAMS,
        &keys::record_key(DEFAULT_SHARD, job_id, sid, partition, t.state.start_offset),
        &keys::record_key(DEFAULT_SHARD, job_id, sid, partition, to),
    )?;
    t.state.start_offset = to;
    Ok(())
}

pub fn append(
    p: &mut PendingWrites,
    at: At,
    a: &pb::StreamAppend,
) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &a.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: a.job.clone() }));
    };
    let mut t = match target(p, &job, &a.stream, a.partition)? {
        Ok(t) => t,
        Err(refused) => return Ok(refused),
    };
    let producer_key = meta::producer(
        DEFAULT_SHARD,
        job.job_id,
        t.stream.stream_id,
        a.partition,
        a.producer_id,
    );
    if a.producer_id != 0 {
        if let Some(last) = load::<pb::ProducerState>(p, &producer_key, "producer")? {
            if last.principal != a.principal {
                return Ok(error_response(
                    Code::PermissionDenied,
                    format!(
                        "producer id {} belongs to another principal; use one of your own",
                        a.producer_id
                    ),
                ));
            }
            if a.producer_seq == last.seq {
                return Ok(appended(last.base_offset, true));
            }
            if a.producer_seq < last.seq {
                return Ok(error_response(
                    Code::FailedPrecondition,
                    format!(
                        "producer {} sent seq {} after {}: seqs of a producer must grow",
                        a.producer_id, a.producer_seq, last.seq
                    ),
                ));
            }
        }
    }
    let records: Vec<(&[u8], &[u8])> = a
        .records
        .iter()
        .map(|r| (r.key.as_slice(), r.value.as_slice()))
        .collect();
    let base = append_records(p, at, &job, a.partition, &mut t, &records)?;
    if a.producer_id != 0 {
        let state = pb::ProducerState {
            principal: a.principal.clone(),
            seq: a.producer_seq,
            base_offset: base,
        };
        p.put(CF_META, &producer_key, state.encode_to_vec())?;
    }
    Ok(appended(base, false))
}

fn appended(base_offset: u64, duplicate: bool) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::Appended(pb::Appended {
            base_offset,
            duplicate,
        })),
    }
}

pub fn trim(p: &mut PendingWrites, t: &pb::StreamTrim) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &t.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: t.job.clone() }));
    };
    let mut target = match target(p, &job, &t.stream, t.partition)? {
        Ok(x) => x,
        Err(refused) => return Ok(refused),
    };
    // Bounded per entry, as retention is: a trim far ahead moves the
    // start by at most that many records and answers where it got to.
    let to = t.before_offset.min(target.state.end_offset).min(
        target
            .state
            .start_offset
            .saturating_add(MAX_TRIMMED_PER_APPLY),
    );
    if to > target.state.start_offset {
        let sid = target.stream.stream_id;
        // The bytes of what goes: read before the range deletion.
        for offset in target.state.start_offset..to {
            let k = keys::record_key(DEFAULT_SHARD, job.job_id, sid, t.partition, offset);
            if let Some(raw) = p.get(CF_STREAMS, &k)? {
                let r = pb::StoredRecord::decode(raw.as_slice())
                    .map_err(|e| corrupt(format!("stream record: {e}")))?;
                target.state.bytes = target
                    .state
                    .bytes
                    .saturating_sub((r.key.len() + r.value.len()) as u64);
            }
        }
        trim_to(p, job.job_id, t.partition, &mut target, to)?;
        p.put(
            CF_META,
            &meta::partition(DEFAULT_SHARD, job.job_id, sid, t.partition),
            target.state.encode_to_vec(),
        )?;
    }
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::TrimmedTo(target.state.start_offset)),
    })
}
