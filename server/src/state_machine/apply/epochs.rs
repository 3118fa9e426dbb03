//! Staged writes of a task's epochs, and the commit that makes an epoch
//! visible.
//!
//! Staged writes land in the `staged` column family under their task,
//! generation and epoch (`keys::staged_prefix`): one value per run of
//! consecutive new seqs of a batch (`StagedRun`), so staging a batch costs
//! one RocksDB write whatever its size. The commit reads the epoch's runs
//! in seq order, so a later write of a key wins whatever order re-sent
//! batches arrived in. Nobody reads `staged`
//! but the commit: other readers see committed data only, and the task
//! reads its own uncommitted writes from its own buffer (the client holds
//! them until their epoch commits, to re-send them).
//!
//! Which seqs of each open epoch are staged is kept as ranges in the task
//! record, so a commit knows without reading `staged` whether anything is
//! missing, and names what.
//!
//! Records the task emits are staged the same way, as entries of the
//! runs in the epoch's seqs (`StagedEntry.output`, the stream checked at
//! staging), so an epoch's outputs are bounded like its writes.
//!
//! A commit promotes the epoch's writes into `data` and appends the
//! records the epoch produced to their stream partitions (`streams.rs`,
//! offsets assigned then, in seq order; then any the commit itself
//! carries), in the same RocksDB write batch as the
//! checkpoint and the applied index: atomic on every replica, and a crash
//! before that write replays the entry. Its cost is one read and one write
//! per distinct key of the epoch, plus decoding its runs; an epoch of more
//! than `promotion::STEP` is promoted in bounded steps after its commit
//! instead (`promotion.rs`).

use std::io;

use bytes::Bytes;
use streamshield_proto::v1::{self as pb, command_response, error_detail};
use tonic::Code;

use super::leases::{self, held};
use super::promotion;
use super::run_encoder::RunEncoder;
use super::streams;
use super::{error_response, jobs, refusal, At};
use crate::keys::{self, DEFAULT_SHARD};
use crate::rocks::corrupt;
use crate::state_machine::meta::{self as m, CF_STAGED};
use crate::state_machine::pending::PendingWrites;

/// Epochs of one task that may have staged writes and no commit yet: a
/// task pipelines the next epoch while the last commits, and a bound keeps
/// the task record small.
pub const MAX_OPEN_EPOCHS: usize = 8;
/// Disjoint runs of staged seqs one epoch may have (batches that arrived
/// out of order leave gaps until the missing ones come).
pub const MAX_STAGED_RANGES: usize = 64;
/// How far past its epoch's contiguous staged seqs a batch may start: a
/// client's in-flight window is far smaller, so a larger gap is a bug.
pub const MAX_SEQ_GAP: u64 = 1 << 20;

/// The highest n such that seqs 1..=n are staged.
pub fn contiguous_through(ranges: &[pb::StagedRange]) -> u64 {
    match ranges.first() {
        Some(r) if r.first == 1 => r.last,
        _ => 0,
    }
}

fn covered(ranges: &[pb::StagedRange], seq: u64) -> bool {
    ranges.iter().any(|r| r.first <= seq && seq <= r.last)
}

/// `ranges` with first..=last added: sorted, disjoint, never adjacent.
pub fn add_range(ranges: &[pb::StagedRange], first: u64, last: u64) -> Vec<pb::StagedRange> {
    let mut all: Vec<(u64, u64)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    all.push((first, last));
    all.sort_unstable();
    let mut out: Vec<pb::StagedRange> = Vec::with_capacity(all.len());
    for (f, l) in all {
        match out.last_mut() {
            Some(prev) if f <= prev.last.saturating_add(1) => prev.last = prev.last.max(l),
            _ => out.push(pb::StagedRange { first: f, last: l }),
        }
    }
    out
}

/// The seqs of 1..=last_seq not in `ranges`.
pub fn missing(ranges: &[pb::StagedRange], last_seq: u64) -> Vec<pb::SeqRange> {
    let mut out = Vec::new();
    let mut next = 1u64;
    for r in ranges {
        if next > last_seq {
            break;
        }
        if r.first > next {
            out.push(pb::SeqRange {
                first: next,
                last: (r.first - 1).min(last_seq),
            });
        }
        next = next.max(r.last.saturating_add(1));
    }
    if next <= last_seq {
        out.push(pb::SeqRange {
            first: next,
            last: last_seq,
        });
    }
    out
}

fn committed_epoch(t: &pb::TaskRecord) -> u64 {
    t.checkpoint.as_ref().map_or(0, |c| c.epoch)
}

pub fn stage(p: &mut PendingWrites, at: At, s: &pb::StageOps) -> io::Result<pb::CommandResponse> {
    let Some(lease) = &s.lease else {
        return Ok(error_response(
            Code::InvalidArgument,
            "staged writes without a lease",
        ));
    };
    let (mut job, mut task) = match held(p, lease)? {
        Ok(held) => held,
        Err(refused) => return Ok(refused),
    };
    let committed = committed_epoch(&task);
    if s.epoch <= committed || s.epoch == u64::MAX {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "epoch {} is not after the last committed epoch {committed}",
                s.epoch
            ),
        ));
    }
    let n = s.ops.len() as u64;
    let last = match (s.seq_from, n) {
        (0, _) => return Ok(error_response(Code::InvalidArgument, "seqs count from 1")),
        (_, 0) => return Ok(error_response(Code::InvalidArgument, "no ops to stage")),
        (from, n) => match from.checked_add(n - 1) {
            Some(last) => last,
            None => {
                return Ok(error_response(
                    Code::InvalidArgument,
                    "seqs run past u64::MAX",
                ))
            }
        },
    };
    let slot = task.staging.iter().position(|e| e.epoch == s.epoch);
    if slot.is_none() && task.staging.len() >= MAX_OPEN_EPOCHS {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!("{MAX_OPEN_EPOCHS} epochs have staged writes and no commit; commit one first"),
        ));
    }
    let before = slot
        .map(|i| task.staging[i].staged.clone())
        .unwrap_or_default();
    let through = contiguous_through(&before);
    if s.seq_from > through.saturating_add(MAX_SEQ_GAP) {
        return Ok(error_response(
            Code::OutOfRange,
            format!(
                "seq_from {} is more than {MAX_SEQ_GAP} past the staged seqs 1..={through} of epoch {}",
                s.seq_from, s.epoch
            ),
        ));
    }
    let after = add_range(&before, s.seq_from, last);
    if after.len() > MAX_STAGED_RANGES {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!("epoch {} would have more than {MAX_STAGED_RANGES} gaps; re-send the missing seqs first", s.epoch),
        ));
    }
    // Every op is checked before any is staged: a bad one refuses the
    // whole batch and leaves nothing behind. Seqs staged already are left
    // out (a re-send), so what is new falls into runs of consecutive seqs,
    // each stored as one value.
    let mut job_changed = false;
    let mut runs: Vec<RunEncoder> = Vec::new();
    let mut bytes = 0usize;
    let mut outputs = 0u64;
    // The streams the batch emits to, looked up once each.
    let mut streams: Vec<pb::StreamRecord> = Vec::new();
    for (i, o) in s.ops.iter().enumerate() {
        let seq = s.seq_from + i as u64;
        // The run this seq joins: re-sent seqs already staged split runs.
        let run = |runs: &mut Vec<RunEncoder>| -> usize {
            if runs.last().is_none_or(|r| r.next_seq() != seq) {
                runs.push(RunEncoder::new(seq));
            }
            runs.len() - 1
        };
        match &o.kind {
            Some(pb::staged_op::Kind::Emit(e)) => {
                let at = match streams.iter().position(|r| r.name == e.stream) {
                    Some(at) => at,
                    None => match streams::stream_record(p, &job, &e.stream)? {
                        Ok(r) => {
                            streams.push(r);
                            streams.len() - 1
                        }
                        Err(refused) => return Ok(refused),
                    },
                };
                let stream = &streams[at];
                if let Some(refused) = streams::missing_partition(stream, e.partition) {
                    return Ok(refused);
                }
                if covered(&before, seq) {
                    continue;
                }
                bytes += o.key.len() + e.value.len();
                outputs += 1;
                let r = run(&mut runs);
                runs[r].push_entry(&pb::StagedEntry {
                    data_key: Bytes::new(),
                    value: None,
                    output: Some(pb::StagedOutput {
                        stream_id: stream.stream_id,
                        partition: e.partition,
                        key: Bytes::copy_from_slice(&o.key),
                        value: Bytes::copy_from_slice(&e.value),
                    }),
                });
            }
            Some(kind @ (pb::staged_op::Kind::Put(_) | pb::staged_op::Kind::Delete(_))) => {
                let value = match kind {
                    pb::staged_op::Kind::Put(v) => Some(v.as_slice()),
                    _ => None,
                };
                let Some(group) = m::key_group(&job, &o.state, &o.key) else {
                    return Ok(error_response(
                        Code::InvalidArgument,
                        m::misplaced_key(&o.state),
                    ));
                };
                if !leases::owns(&task, group) {
                    return Ok(leases::outside_range(&task, group));
                }
                if covered(&before, seq) {
                    continue;
                }
                // A delete in a table that never existed deletes nothing,
                // but its seq is staged like any other. A refusal leaves
                // nothing behind: runs and the job are written after the loop.
                let sid = match jobs::table_id(
                    &mut job,
                    &o.state,
                    value.is_some(),
                    &mut job_changed,
                    at.format,
                ) {
                    Ok(sid) => sid,
                    Err(jobs::TooManyTables) => return Ok(jobs::too_many_tables(&job.job)),
                };
                let data_key = sid
                    .map(|sid| keys::data_key(DEFAULT_SHARD, job.job_id, group, sid, &o.key))
                    .unwrap_or_default();
                bytes += data_key.len() + value.map_or(0, <[u8]>::len);
                let r = run(&mut runs);
                runs[r].push_write(&data_key, value);
            }
            None => return Ok(error_response(Code::InvalidArgument, "an op has no kind")),
        }
    }
    let prefix = keys::staged_prefix(
        DEFAULT_SHARD,
        job.job_id,
        task.task,
        task.generation,
        s.epoch,
    );
    for run in runs {
        let key = keys::staged_run_key(&prefix, run.first);
        p.put(CF_STAGED, &key, run.into_bytes())?;
    }
    metrics::counter!("streamshield_staged_bytes_total").increment(bytes as u64);
    if job_changed {
        jobs::store_job(p, DEFAULT_SHARD, &job)?;
    }
    let staged_through = contiguous_through(&after);
    match slot {
        Some(i) => {
            task.staging[i].staged = after;
            task.staging[i].bytes = task.staging[i].bytes.saturating_add(bytes as u64);
            task.staging[i].outputs = task.staging[i].outputs.saturating_add(outputs);
        }
        None => {
            task.staging.push(pb::EpochStaging {
                epoch: s.epoch,
                staged: after,
                bytes: bytes as u64,
                outputs,
            });
            task.staging.sort_by_key(|e| e.epoch);
        }
    }
    leases::store_task(p, job.job_id, &task)?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::StagedThrough(staged_through)),
    })
}

pub fn commit(
    p: &mut PendingWrites,
    at: At,
    c: &pb::EpochCommit,
) -> io::Result<pb::CommandResponse> {
    let Some(lease) = &c.lease else {
        return Ok(error_response(
            Code::InvalidArgument,
            "a commit without a lease",
        ));
    };
    let (job, mut task) = match held(p, lease)? {
        Ok(held) => held,
        Err(refused) => return Ok(refused),
    };
    let committed = task.checkpoint.as_ref().map(|c| (c.epoch, c.generation));
    if committed == Some((c.epoch, task.generation)) {
        // A retry of a commit that applied (its answer was lost).
        let promoting = task.promoting.as_ref().is_some_and(|m| m.epoch == c.epoch);
        return Ok(committed_answer(c.epoch, true, 0, promoting));
    }
    if let Some(m) = &task.promoting {
        // Its runs and this epoch's would be promoted out of order.
        return Ok(promotion::busy(format!(
            "epoch {} of task {} is still being promoted; commit epoch {} after it",
            m.epoch, task.task, c.epoch
        )));
    }
    let last_committed = committed.map_or(0, |(e, _)| e);
    if c.epoch <= last_committed || c.epoch == u64::MAX {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "epoch {} is not after the last committed epoch {last_committed}",
                c.epoch
            ),
        ));
    }
    // What the epoch staged: its seqs, bytes and output records.
    let (gaps, staged_bytes, staged_outputs) =
        match task.staging.iter().find(|e| e.epoch == c.epoch) {
            Some(e) => (missing(&e.staged, c.last_seq), e.bytes, e.outputs),
            None => (missing(&[], c.last_seq), 0, 0),
        };
    if !gaps.is_empty() {
        let first = gaps[0];
        return Ok(refusal(
            Code::FailedPrecondition,
            format!(
                "epoch {} is missing {} range(s) of staged seqs, first {}..={}; re-send them and commit again",
                c.epoch,
                gaps.len(),
                first.first,
                first.last
            ),
            Some(error_detail::Kind::MissingSeqs(pb::MissingSeqs { epoch: c.epoch, missing: gaps })),
        ));
    }
    if staged_outputs > 0 && !c.outputs.is_empty() {
        return Ok(error_response(
            Code::InvalidArgument,
            format!(
                "epoch {} staged {staged_outputs} output record(s); its commit cannot carry outputs too (they would reach their partitions before the staged ones): stage them as emit ops",
                c.epoch
            ),
        ));
    }
    // Every output's partition must exist before anything changes.
    for out in &c.outputs {
        if let Err(refused) = streams::target(p, &job, &out.stream, out.partition)? {
            return Ok(refused);
        }
    }
    let prefix = keys::staged_prefix(
        DEFAULT_SHARD,
        job.job_id,
        task.task,
        task.generation,
        c.epoch,
    );
    let end = keys::staged_prefix(
        DEFAULT_SHARD,
        job.job_id,
        task.task,
        task.generation,
        c.epoch + 1,
    );
    // Earlier epochs of the generation that never committed are dropped
    // (one range deletion only when there are some: every range tombstone
    // in the memtable costs the next scans of `staged`).
    if task.staging.iter().any(|e| e.epoch < c.epoch) {
        p.delete_range(
            CF_STAGED,
            &keys::staged_prefix(DEFAULT_SHARD, job.job_id, task.task, task.generation, 0),
            &prefix,
        )?;
    }
    let in_steps = promotion::in_steps(at.format, c.last_seq, staged_bytes);
    let promoted = if in_steps {
        promotion::start(p, at, &job, &mut task, c.epoch, c.last_seq, staged_bytes)?;
        0
    } else {
        let runs = promotion::EpochRuns {
            prefix: &prefix,
            end: &end,
            last_seq: c.last_seq,
            mod_index: at.index,
        };
        promotion::promote_runs(p, at, &job, &runs, 1, promotion::WHOLE)?.promoted
    };
    let mut appended = Vec::new();
    for out in &c.outputs {
        // Loaded again for each: two outputs to one partition see each
        // other's offsets through the pending writes.
        let mut target = match streams::target(p, &job, &out.stream, out.partition)? {
            Ok(t) => t,
            Err(_) => return Err(corrupt("an output's partition vanished within its commit")),
        };
        let records: Vec<(&[u8], &[u8])> = out
            .records
            .iter()
            .map(|r| (r.key.as_slice(), r.value.as_slice()))
            .collect();
        let from_offset =
            streams::append_records(p, at, &job, out.partition, &mut target, &records)?;
        appended.push(pb::HeldPartition {
            stream_id: target.stream.stream_id,
            partition: out.partition,
            from_offset,
        });
    }
    if in_steps {
        // Readable with the epoch's state, after the last step.
        promotion::hold(p, at, &job, task.task, &appended)?;
    }
    task.staging.retain(|e| e.epoch > c.epoch);
    task.checkpoint = Some(pb::CheckpointRecord {
        epoch: c.epoch,
        input_offsets: c.input_offsets.clone(),
        metadata: c.metadata.clone(),
        committed_index: at.index,
        committed_at_ms: at.time_ms,
        generation: task.generation,
    });
    leases::store_task(p, job.job_id, &task)?;
    Ok(committed_answer(c.epoch, false, promoted, in_steps))
}

fn committed_answer(
    epoch: u64,
    already_committed: bool,
    promoted: u64,
    promoting: bool,
) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::EpochCommitted(pb::EpochCommitted {
            epoch,
            already_committed,
            promoted,
            promoting,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64) -> pb::StagedRange {
        pb::StagedRange { first, last }
    }

    #[test]
    fn ranges_merge_and_report_what_is_missing() {
        let a = add_range(&[], 5, 9);
        assert_eq!(contiguous_through(&a), 0);
        assert_eq!(
            missing(&a, 12),
            vec![
                pb::SeqRange { first: 1, last: 4 },
                pb::SeqRange {
                    first: 10,
                    last: 12
                }
            ]
        );
        let b = add_range(&a, 1, 4);
        assert_eq!(b, vec![r(1, 9)], "adjacent runs merge");
        assert_eq!(contiguous_through(&b), 9);
        assert!(missing(&b, 9).is_empty());
        assert!(missing(&b, 0).is_empty(), "an epoch with no writes");
        let c = add_range(&b, 20, 30);
        assert_eq!(
            missing(&c, 25),
            vec![pb::SeqRange {
                first: 10,
                last: 19
            }]
        );
        assert_eq!(
            add_range(&c, 3, 25),
            vec![r(1, 30)],
            "an overlapping re-send"
        );
        assert_eq!(
            add_range(&[r(1, u64::MAX - 1)], u64::MAX, u64::MAX),
            vec![r(1, u64::MAX)]
        );
    }
}
