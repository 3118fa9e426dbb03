//! Checks on client input, done before anything is proposed: a request
//! that fails them changes nothing and gets INVALID_ARGUMENT naming the
//! field and the limit.

use streamshield_proto::v1::{self as pb, condition, op};

use crate::config::Limits;
use crate::error::ServiceError;

pub fn name(field: &str, value: &str, limits: &Limits) -> Result<(), ServiceError> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if value.len() > limits.max_name_bytes {
        return Err(ServiceError::TooLarge {
            what: field.to_string(),
            size: value.len(),
            limit: limits.max_name_bytes,
        });
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ServiceError::invalid(
            field,
            format!("{value:?} may only contain ASCII letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

pub fn key(field: &str, key: &[u8], limits: &Limits) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ServiceError::TooLarge {
            what: field.to_string(),
            size: key.len(),
            limit: limits.max_key_bytes,
        });
    }
    Ok(())
}

pub fn consistency(raw: i32) -> Result<pb::Consistency, ServiceError> {
    pb::Consistency::try_from(raw)
        .map_err(|_| ServiceError::invalid("consistency", format!("unknown value {raw}")))
}

pub fn write(w: &pb::WriteRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &w.job, limits)?;
    match pb::WriteMode::try_from(w.mode) {
        Ok(pb::WriteMode::Sync) => {}
        Ok(pb::WriteMode::Async) => {
            return Err(ServiceError::invalid(
                "mode",
                "ASYNC writes are staged in a task's epoch: send them with Tasks/StageWrites (a TaskSession)",
            ))
        }
        Err(_) => {
            return Err(ServiceError::invalid(
                "mode",
                format!("unknown value {}", w.mode),
            ))
        }
    }
    if w.ops.is_empty() && w.conditions.is_empty() {
        return Err(ServiceError::invalid(
            "ops",
            "a write needs at least one op",
        ));
    }
    let count = w.ops.len() + w.conditions.len();
    if count > limits.max_ops_per_batch {
        return Err(ServiceError::invalid(
            "ops",
            format!(
                "{count} ops and conditions, above the limit of {}",
                limits.max_ops_per_batch
            ),
        ));
    }
    if w.client_id == 0 && (w.seq != 0 || w.acked_below != 0) {
        return Err(ServiceError::invalid(
            "seq",
            "seq and acked_below need a client_id",
        ));
    }
    if w.client_id != 0 && w.acked_below > w.seq {
        return Err(ServiceError::invalid(
            "acked_below",
            format!("{} is above seq {}", w.acked_below, w.seq),
        ));
    }
    let mut total = ops(&w.ops, OpsOf::SyncWrite, limits)?;
    for (i, c) in w.conditions.iter().enumerate() {
        name(&format!("conditions[{i}].state"), &c.state, limits)?;
        key(&format!("conditions[{i}].key"), &c.key, limits)?;
        total += c.key.len();
        match &c.test {
            None => {
                return Err(ServiceError::invalid(
                    format!("conditions[{i}]"),
                    "needs absent, value_equals or version_equals",
                ))
            }
            Some(condition::Test::ValueEquals(v)) => {
                if v.len() > limits.max_value_bytes {
                    return Err(ServiceError::TooLarge {
                        what: format!("conditions[{i}].value_equals"),
                        size: v.len(),
                        limit: limits.max_value_bytes,
                    });
                }
                total += v.len();
            }
            Some(_) => {}
        }
    }
    batch_bytes(total, limits)
}

fn batch_bytes(total: usize, limits: &Limits) -> Result<(), ServiceError> {
    if total > limits.max_batch_bytes {
        return Err(ServiceError::TooLarge {
            what: "write batch".to_string(),
            size: total,
            limit: limits.max_batch_bytes,
        });
    }
    Ok(())
}

/// Where ops come from: only a task's staged writes may emit records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpsOf {
    SyncWrite,
    StagedWrites,
}

/// Each op well formed; the bytes of their keys and values.
fn ops(ops: &[pb::Op], of: OpsOf, limits: &Limits) -> Result<usize, ServiceError> {
    let mut total = 0usize;
    for (i, o) in ops.iter().enumerate() {
        if let Some(op::Kind::Emit(e)) = &o.kind {
            if of == OpsOf::SyncWrite {
                return Err(ServiceError::invalid(
                    format!("ops[{i}]"),
                    "emit is for a task's staged writes (StageWrites, a commit's ops), not a sync write",
                ));
            }
            if !o.state.is_empty() {
                return Err(ServiceError::invalid(
                    format!("ops[{i}].state"),
                    "an emit names a stream, not a table: leave state empty",
                ));
            }
            name(&format!("ops[{i}].emit.stream"), &e.stream, limits)?;
            total += record(&format!("ops[{i}]"), &o.key, &e.value, limits)?;
            continue;
        }
        name(&format!("ops[{i}].state"), &o.state, limits)?;
        key(&format!("ops[{i}].key"), &o.key, limits)?;
        total += o.key.len();
        match &o.kind {
            None => {
                return Err(ServiceError::invalid(
                    format!("ops[{i}]"),
                    "needs put, delete or (staged) emit",
                ))
            }
            Some(op::Kind::Put(p)) => {
                if p.value.len() > limits.max_value_bytes {
                    return Err(ServiceError::TooLarge {
                        what: format!("ops[{i}].value"),
                        size: p.value.len(),
                        limit: limits.max_value_bytes,
                    });
                }
                total += p.value.len();
            }
            Some(op::Kind::Delete(_) | op::Kind::Emit(_)) => {}
        }
    }
    Ok(total)
}

/// Input partitions and offsets a task may name in one request.
pub const MAX_PARTITIONS_PER_TASK: usize = 1024;

fn partitions<'a>(
    field: &str,
    streams: impl ExactSizeIterator<Item = &'a str>,
    limits: &Limits,
) -> Result<(), ServiceError> {
    if streams.len() > MAX_PARTITIONS_PER_TASK {
        return Err(ServiceError::invalid(
            field,
            format!(
                "{} items, above the limit of {MAX_PARTITIONS_PER_TASK}",
                streams.len()
            ),
        ));
    }
    for (i, s) in streams.enumerate() {
        name(&format!("{field}[{i}].stream"), s, limits)?;
    }
    Ok(())
}

pub fn acquire(r: &pb::AcquireLeaseRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    if r.key_group_start >= r.key_group_end {
        return Err(ServiceError::invalid(
            "key_group_end",
            format!(
                "[{}, {}) is not a non-empty range",
                r.key_group_start, r.key_group_end
            ),
        ));
    }
    partitions(
        "input_partitions",
        r.input_partitions.iter().map(|p| p.stream.as_str()),
        limits,
    )
}

/// A generation is never 0: the first lease is generation 1.
fn generation(g: u64) -> Result<(), ServiceError> {
    if g == 0 {
        return Err(ServiceError::invalid(
            "generation",
            "0 is never granted; acquire a lease",
        ));
    }
    Ok(())
}

/// Epochs count from 1; the top value is kept free so that every epoch
/// has a next one.
fn epoch(e: u64) -> Result<(), ServiceError> {
    if e == 0 || e == u64::MAX {
        return Err(ServiceError::invalid(
            "epoch",
            "must be between 1 and 2^64 - 2",
        ));
    }
    Ok(())
}

pub fn stage(r: &pb::StageWritesRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    generation(r.generation)?;
    epoch(r.epoch)?;
    if r.ops.is_empty() {
        return Err(ServiceError::invalid("ops", "nothing to stage"));
    }
    if r.seq_from == 0 {
        return Err(ServiceError::invalid("seq_from", "seqs count from 1"));
    }
    if r.seq_from.checked_add(r.ops.len() as u64 - 1).is_none() {
        return Err(ServiceError::invalid(
            "seq_from",
            "the batch's seqs pass 2^64 - 1",
        ));
    }
    staged_ops(&r.ops, limits)
}

/// A batch of staged ops (a `StageWrites`, or a commit's tail): within
/// the per-batch count and byte limits, each op valid.
fn staged_ops(batch: &[pb::Op], limits: &Limits) -> Result<(), ServiceError> {
    if batch.len() > limits.max_ops_per_batch {
        return Err(ServiceError::invalid(
            "ops",
            format!(
                "{} ops, above the limit of {}",
                batch.len(),
                limits.max_ops_per_batch
            ),
        ));
    }
    batch_bytes(ops(batch, OpsOf::StagedWrites, limits)?, limits)
}

pub fn commit(r: &pb::CommitEpochRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    generation(r.generation)?;
    epoch(r.epoch)?;
    partitions(
        "input_offsets",
        r.input_offsets.iter().map(|o| o.stream.as_str()),
        limits,
    )?;
    if r.metadata.len() > limits.max_value_bytes {
        return Err(ServiceError::TooLarge {
            what: "metadata".into(),
            size: r.metadata.len(),
            limit: limits.max_value_bytes,
        });
    }
    if !r.ops.is_empty() {
        if r.ops.len() as u64 > r.last_seq {
            return Err(ServiceError::invalid(
                "ops",
                format!(
                    "{} ops end at last_seq {}: seqs count from 1",
                    r.ops.len(),
                    r.last_seq
                ),
            ));
        }
        staged_ops(&r.ops, limits)?;
    }
    outputs(&r.outputs, limits)
}

pub fn release(r: &pb::ReleaseLeaseRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    generation(r.generation)
}

/// Records of one append or one epoch's outputs: each key and value
/// within bounds; their bytes.
fn records(field: &str, records: &[pb::Record], limits: &Limits) -> Result<usize, ServiceError> {
    let mut total = 0usize;
    for (i, r) in records.iter().enumerate() {
        total += record(&format!("{field}[{i}]"), &r.key, &r.value, limits)?;
    }
    Ok(total)
}

/// One record's key and value within bounds; their bytes.
fn record(field: &str, key: &[u8], value: &[u8], limits: &Limits) -> Result<usize, ServiceError> {
    if key.len() > limits.max_key_bytes {
        return Err(ServiceError::TooLarge {
            what: format!("{field}.key"),
            size: key.len(),
            limit: limits.max_key_bytes,
        });
    }
    if value.len() > limits.max_value_bytes {
        return Err(ServiceError::TooLarge {
            what: format!("{field}.value"),
            size: value.len(),
            limit: limits.max_value_bytes,
        });
    }
    Ok(key.len() + value.len())
}

pub fn create_stream(r: &pb::CreateStreamRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    name("stream", &r.stream, limits)?;
    if r.partitions == 0 || r.partitions > MAX_STREAM_PARTITIONS {
        return Err(ServiceError::invalid(
            "partitions",
            format!("must be 1 to {MAX_STREAM_PARTITIONS}, not {}", r.partitions),
        ));
    }
    Ok(())
}

/// Partitions one stream may have.
pub const MAX_STREAM_PARTITIONS: u32 = 4096;

pub fn append(r: &pb::AppendRequest, limits: &Limits) -> Result<(), ServiceError> {
    name("job", &r.job, limits)?;
    name("stream", &r.stream, limits)?;
    if r.records.is_empty() {
        return Err(ServiceError::invalid("records", "nothing to append"));
    }
    if r.records.len() > limits.max_ops_per_batch {
        return Err(ServiceError::invalid(
            "records",
            format!(
                "{} records, above the limit of {}",
                r.records.len(),
                limits.max_ops_per_batch
            ),
        ));
    }
    if r.producer_id == 0 && r.producer_seq != 0 {
        return Err(ServiceError::invalid(
            "producer_seq",
            "a producer seq needs a producer_id",
        ));
    }
    batch_bytes(records("records", &r.records, limits)?, limits)
}

/// A commit's outputs: each partition named well, all records within
/// one batch's bytes.
pub fn outputs(outputs: &[pb::PartitionOutput], limits: &Limits) -> Result<(), ServiceError> {
    let mut total = 0usize;
    let mut count = 0usize;
    for (i, o) in outputs.iter().enumerate() {
        name(&format!("outputs[{i}].stream"), &o.stream, limits)?;
        total += records(&format!("outputs[{i}].records"), &o.records, limits)?;
        count += o.records.len();
    }
    if count > limits.max_ops_per_batch {
        return Err(ServiceError::invalid(
            "outputs",
            format!(
                "{count} records, above the limit of {}",
                limits.max_ops_per_batch
            ),
        ));
    }
    batch_bytes(total, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &str, key: &[u8], value: Vec<u8>) -> pb::Op {
        pb::Op {
            state: state.into(),
            key: key.to_vec(),
            kind: Some(op::Kind::Put(pb::Put { value })),
        }
    }

    fn req(ops: Vec<pb::Op>) -> pb::WriteRequest {
        pb::WriteRequest {
            job: "j".into(),
            ops,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_put() {
        write(
            &req(vec![put("s", b"k", b"v".to_vec())]),
            &Limits::default(),
        )
        .unwrap();
    }

    #[test]
    fn names_each_violation() {
        let l = Limits::default();
        let err = |w: pb::WriteRequest| write(&w, &l).unwrap_err().to_string();
        assert!(err(req(vec![])).contains("at least one op"));
        assert!(err(req(vec![put("", b"k", vec![])])).contains("ops[0].state"));
        assert!(err(req(vec![put("s", b"", vec![])])).contains("ops[0].key"));
        assert!(err(req(vec![put("s", &[0u8; 4097], vec![])])).contains("4097 bytes"));
        assert!(err(req(vec![put("s", b"k", vec![0u8; (1 << 20) + 1])])).contains("ops[0].value"));
        assert!(err(req(vec![put("bad/name", b"k", vec![])])).contains("may only contain"));
        let five = (0..5).map(|i| put("s", &[i], vec![0u8; 1 << 20])).collect();
        assert!(err(req(five)).contains("write batch"));
        let mut unknown_mode = req(vec![put("s", b"k", vec![])]);
        unknown_mode.mode = 7;
        assert!(err(unknown_mode).contains("mode"));
        let no_kind = pb::Op {
            state: "s".into(),
            key: b"k".to_vec(),
            kind: None,
        };
        assert!(err(req(vec![no_kind])).contains("needs put, delete"));
        let emit = |state: &str, stream: &str, value: Vec<u8>| pb::Op {
            state: state.into(),
            key: Vec::new(),
            kind: Some(op::Kind::Emit(pb::Emit {
                stream: stream.into(),
                partition: 0,
                value,
            })),
        };
        assert!(err(req(vec![emit("", "out", vec![])])).contains("not a sync write"));
        let staged = |ops: Vec<pb::Op>| {
            let r = pb::StageWritesRequest {
                job: "j".into(),
                generation: 1,
                epoch: 1,
                seq_from: 1,
                ops,
                ..Default::default()
            };
            stage(&r, &l).map_err(|e| e.to_string())
        };
        // A record's key may be empty; the stream must be named, no table.
        assert_eq!(staged(vec![emit("", "out", b"v".to_vec())]), Ok(()));
        assert!(staged(vec![emit("s", "out", vec![])])
            .unwrap_err()
            .contains("ops[0].state"));
        assert!(staged(vec![emit("", "", vec![])])
            .unwrap_err()
            .contains("ops[0].emit.stream"));
        assert!(staged(vec![emit("", "out", vec![0u8; (1 << 20) + 1])])
            .unwrap_err()
            .contains("ops[0].value"));
    }
}
