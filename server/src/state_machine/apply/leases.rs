//! Task leases: the generation that fences a replaced task.
//!
//! `AcquireLease` is one entry: the task's generation goes up by one and
//! the staged writes of every older generation are dropped. Every later
//! staged write, commit and leased sync write names its generation, and
//! apply refuses any that is not the task's current one, with a
//! `StaleLease` detail. The check runs here, in apply, so every replica
//! decides alike whatever the network did; no clock is involved (a lease
//! does not expire: a newer generation is what ends it).

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response, error_detail};
use tonic::Code;

use super::{error_response, job_removal, jobs, leased_writes, not_found, promotion, refusal, At};
use crate::error::ServiceError;
use crate::keys::{self, meta, DEFAULT_SHARD};
use crate::rocks::corrupt;
use crate::state_machine::meta::{self as m, CF_META, CF_STAGED};
use crate::state_machine::pending::PendingWrites;

/// A refusal to answer instead of applying, or what was asked for.
pub type Checked<T> = Result<T, pb::CommandResponse>;

pub fn load_task(
    p: &mut PendingWrites,
    job_id: u32,
    task: u32,
) -> io::Result<Option<pb::TaskRecord>> {
    match p.get(CF_META, &meta::task(DEFAULT_SHARD, job_id, task))? {
        None => Ok(None),
        Some(raw) => pb::TaskRecord::decode(raw.as_slice())
            .map(Some)
            .map_err(|e| corrupt(format!("task record: {e}"))),
    }
}

pub fn store_task(p: &mut PendingWrites, job_id: u32, t: &pb::TaskRecord) -> io::Result<()> {
    p.put(
        CF_META,
        &meta::task(DEFAULT_SHARD, job_id, t.task),
        t.encode_to_vec(),
    )
}

/// What generations `from..to` of `task` left behind: their staged writes
/// (but the runs a promotion of a committed epoch still needs,
/// `promotion.rs`) and the recorded answers of their leased writes
/// (`leased_writes.rs`).
fn drop_generations(
    p: &mut PendingWrites,
    job_id: u32,
    task: u32,
    from: u64,
    to: u64,
    keep: Option<&pb::Promotion>,
) -> io::Result<()> {
    let start = keys::staged_prefix(DEFAULT_SHARD, job_id, task, from, 0);
    let end = keys::staged_prefix(DEFAULT_SHARD, job_id, task, to, 0);
    match keep.filter(|m| (from..to).contains(&m.generation)) {
        Some(m) => {
            let kept = keys::staged_prefix(DEFAULT_SHARD, job_id, task, m.generation, m.epoch);
            p.delete_range(CF_STAGED, &start, &kept)?;
            p.delete_range(CF_STAGED, &promotion::epoch_end(job_id, task, m), &end)?;
        }
        None => p.delete_range(CF_STAGED, &start, &end)?,
    }
    leased_writes::drop_generations(p, job_id, task, from, to)
}

fn stale(job: &str, task: u32, held: u64, current: u64, why: &str) -> pb::CommandResponse {
    metrics::counter!("streamshield_stale_lease_rejections_total").increment(1);
    refusal(
        Code::FailedPrecondition,
        format!("stale lease: task {task} of job {job:?} at generation {held}: {why} (current generation {current})"),
        Some(error_detail::Kind::StaleLease(pb::StaleLease { held, current })),
    )
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

pub fn acquire(
    p: &mut PendingWrites,
    at: At,
    a: &pb::LeaseAcquire,
) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &a.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: a.job.clone() }));
    };
    // A job runs at most one task per key group (Flink's parallelism is
    // at most its max parallelism), so task records stay as few as key
    // groups: every acquire reads them all, released ones included.
    if at.format >= jobs::JOB_LIMITS_FORMAT && a.task >= job.key_groups {
        return Ok(error_response(
            Code::InvalidArgument,
            format!(
                "task {} is not below the job's {} key groups, the most tasks it may have",
                a.task, job.key_groups
            ),
        ));
    }
    let range = (a.key_group_start, a.key_group_end);
    if range.0 >= range.1 || range.1 > job.key_groups {
        return Ok(error_response(
            Code::InvalidArgument,
            format!(
                "key groups [{}, {}) are not a non-empty range within the job's {}",
                range.0, range.1, job.key_groups
            ),
        ));
    }
    let others = p.scan_prefix(CF_META, &meta::task_prefix(DEFAULT_SHARD, job.job_id))?;
    for (_, raw) in others {
        let other = pb::TaskRecord::decode(raw.as_slice())
            .map_err(|e| corrupt(format!("task record: {e}")))?;
        if other.task == a.task {
            continue;
        }
        let groups = (other.key_group_start, other.key_group_end);
        if let Some(m) = other.promoting.as_ref().filter(|_| overlaps(range, groups)) {
            // Even a released task's: its steps would overwrite the new
            // task's writes with older ones.
            return Ok(promotion::busy(format!(
                "key groups [{}, {}) of task {} are being promoted (epoch {}); retry after",
                groups.0, groups.1, other.task, m.epoch
            )));
        }
        if other.released {
            continue;
        }
        if overlaps(range, groups) {
            return Ok(error_response(
                Code::FailedPrecondition,
                format!(
                    "key groups [{}, {}) overlap those of live task {} ([{}, {})); release it first",
                    range.0, range.1, other.task, other.key_group_start, other.key_group_end
                ),
            ));
        }
        if let Some(shared) = a
            .input_partitions
            .iter()
            .find(|x| other.input_partitions.contains(x))
        {
            return Ok(error_response(
                Code::FailedPrecondition,
                format!(
                    "input partition {:?}/{} is read by live task {}; release it first",
                    shared.stream, shared.partition, other.task
                ),
            ));
        }
    }
    let previous = load_task(p, job.job_id, a.task)?;
    let held = match &previous {
        Some(t) => t.generation,
        // Above every generation of a deleted job of this name, so none of
        // its zombies holds a generation of this one.
        None => job_removal::first_generation(p, DEFAULT_SHARD, &a.job)?,
    };
    // The top generation is never handed out, so `generation + 1` is
    // always the bound of a generation's staged range.
    let Some(generation) = held.checked_add(1).filter(|g| *g < u64::MAX) else {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "task {} of job {:?} has used up its generations",
                a.task, a.job
            ),
        ));
    };
    let promoting = previous.as_ref().and_then(|t| t.promoting);
    drop_generations(p, job.job_id, a.task, 0, generation, promoting.as_ref())?;
    let record = pb::TaskRecord {
        task: a.task,
        generation,
        key_group_start: range.0,
        key_group_end: range.1,
        input_partitions: a.input_partitions.clone(),
        principal: a.principal.clone(),
        released: false,
        checkpoint: previous.and_then(|t| t.checkpoint),
        staging: Vec::new(),
        acquired_index: at.index,
        acquired_at_ms: at.time_ms,
        promoting,
    };
    store_task(p, job.job_id, &record)?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::LeaseGranted(pb::LeaseGranted {
            generation,
            checkpoint: record.checkpoint,
            key_groups: job.key_groups,
            sync_tables: jobs::sync_tables(&job),
        })),
    })
}

/// The job and the task record, if `lease` is the task's current one and
/// its holder is who claims it.
pub fn held(
    p: &mut PendingWrites,
    lease: &pb::LeaseRef,
) -> io::Result<Checked<(pb::JobInfo, pb::TaskRecord)>> {
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &lease.job)? else {
        return Ok(Err(not_found(ServiceError::JobNotFound {
            job: lease.job.clone(),
        })));
    };
    let task = match check(
        p,
        &job,
        Some(&lease.principal),
        lease.task,
        lease.generation,
    )? {
        Ok(t) => t,
        Err(refused) => return Ok(Err(refused)),
    };
    Ok(Ok((job, task)))
}

fn check(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
    principal: Option<&str>,
    task: u32,
    generation: u64,
) -> io::Result<Checked<pb::TaskRecord>> {
    let Some(record) = load_task(p, job.job_id, task)? else {
        return Ok(Err(not_found(ServiceError::TaskNotFound {
            job: job.job.clone(),
            task,
        })));
    };
    if generation != record.generation {
        let why = if generation > record.generation {
            "never granted"
        } else {
            "fenced by a newer lease"
        };
        return Ok(Err(stale(
            &job.job,
            task,
            generation,
            record.generation,
            why,
        )));
    }
    if record.released {
        return Ok(Err(stale(
            &job.job,
            task,
            generation,
            record.generation,
            "released",
        )));
    }
    if let Some(principal) = principal {
        if principal != record.principal {
            return Ok(Err(error_response(
                Code::PermissionDenied,
                format!(
                    "the lease of task {task} of job {:?} belongs to another principal",
                    job.job
                ),
            )));
        }
    }
    Ok(Ok(record))
}

/// For a sync write that carries a lease: the lease must be the task's
/// current one, and every key it writes or tests in its key groups.
pub fn check_write(
    p: &mut PendingWrites,
    job: &pb::JobInfo,
    principal: Option<&str>,
    lease: &pb::SyncLease,
    w: &pb::SyncWrite,
) -> io::Result<Checked<()>> {
    let record = match check(p, job, principal, lease.task, lease.generation)? {
        Ok(r) => r,
        Err(refused) => return Ok(Err(refused)),
    };
    // Every key is placeable: `kv::write_outcome` refused the write otherwise.
    let mut groups = w
        .ops
        .iter()
        .map(|o| (&o.state, &o.key))
        .chain(w.conditions.iter().map(|c| (&c.state, &c.key)))
        .filter_map(|(state, key)| m::key_group(job, state, key));
    if let Some(outside) = groups.find(|g| !owns(&record, *g)) {
        return Ok(Err(outside_range(&record, outside)));
    }
    Ok(Ok(()))
}

pub fn owns(t: &pb::TaskRecord, group: u16) -> bool {
    (t.key_group_start..t.key_group_end).contains(&u32::from(group))
}

pub fn outside_range(t: &pb::TaskRecord, group: u16) -> pb::CommandResponse {
    error_response(
        Code::InvalidArgument,
        format!(
            "a key of key group {group} is outside task {}'s key groups [{}, {})",
            t.task, t.key_group_start, t.key_group_end
        ),
    )
}

pub fn release(p: &mut PendingWrites, r: &pb::LeaseRelease) -> io::Result<pb::CommandResponse> {
    let Some(lease) = &r.lease else {
        return Ok(error_response(
            Code::InvalidArgument,
            "a release without a lease",
        ));
    };
    let (job, mut task) = match held(p, lease)? {
        Ok(held) => held,
        Err(refused) => return Ok(refused),
    };
    drop_generations(
        p,
        job.job_id,
        task.task,
        task.generation,
        task.generation + 1,
        task.promoting.as_ref(),
    )?;
    task.released = true;
    task.staging.clear();
    store_task(p, job.job_id, &task)?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::LeaseReleased(true)),
    })
}
