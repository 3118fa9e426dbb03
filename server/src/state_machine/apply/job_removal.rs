//! A job's deletion: one entry removes the job's record and everything
//! stored under its id.
//!
//! Every key a job owns starts with its id: data, staged writes and stream
//! records begin `[shard][job_id]`, and its `meta` records sit under the
//! prefixes of `keys::meta::job_record_prefixes`. So the deletion is one
//! RocksDB range deletion per prefix, whatever the job holds: the apply
//! costs the same for a job of a few keys as for one of terabytes, and
//! compactions reclaim the space later. Job ids come from a counter and
//! are never handed out again, so nothing under the old id is reachable
//! from a job made later under the same name.
//!
//! What the id does not fence is a task of the deleted job still running
//! (a deletion with `force`): its writes and commits name the job, its
//! task and its generation, and a new job of the same name numbers its
//! tasks' generations afresh. The deletion therefore leaves a tombstone
//! under the name holding the highest generation any of its tasks reached,
//! and a first lease in a job of that name starts above it
//! ([`first_generation`]): a zombie's generation is stale in every later
//! incarnation of the job.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response};
use tonic::Code;

use super::{error_response, jobs, not_found};
use crate::error::ServiceError;
use crate::keys::{self, meta, DEFAULT_SHARD};
use crate::rocks::corrupt;
use crate::state_machine::meta::{CF_DATA, CF_META, CF_STAGED, CF_STREAMS};
use crate::state_machine::pending::PendingWrites;

pub fn delete_job(p: &mut PendingWrites, d: &pb::JobDelete) -> io::Result<pb::CommandResponse> {
    let shard = DEFAULT_SHARD;
    let Some(job) = jobs::load_job(p, shard, &d.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: d.job.clone() }));
    };
    let mut leased = Vec::new();
    let mut top_generation = first_generation(p, shard, &d.job)?;
    for (_, raw) in p.scan_prefix(CF_META, &meta::task_prefix(shard, job.job_id))? {
        let t = pb::TaskRecord::decode(raw.as_slice())
            .map_err(|e| corrupt(format!("task record: {e}")))?;
        top_generation = top_generation.max(t.generation);
        if !t.released {
            leased.push(t.task);
        }
    }
    if !leased.is_empty() && !d.force {
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "tasks {leased:?} of job {:?} hold leases; release them first, or delete with force",
                d.job
            ),
        ));
    }
    p.delete(CF_META, &meta::job(shard, &d.job))?;
    let scoped = keys::job_prefix(shard, job.job_id);
    for cf in [CF_DATA, CF_STAGED, CF_STREAMS] {
        p.delete_range(cf, &scoped, &end_of(&scoped)?)?;
    }
    for prefix in meta::job_record_prefixes(shard, job.job_id) {
        p.delete_range(CF_META, &prefix, &end_of(&prefix)?)?;
    }
    if top_generation > 0 {
        p.put(
            CF_META,
            &meta::deleted_job(shard, &d.job),
            top_generation.to_be_bytes().to_vec(),
        )?;
    }
    p.streams_changed();
    metrics::counter!("streamshield_jobs_deleted_total").increment(1);
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::JobDeleted(pb::JobDeleted {
            job_id: job.job_id,
            leased_tasks: leased,
        })),
    })
}

/// The generation a task of job `name` holds before its first lease: 0,
/// or the highest any task of an earlier job of that name reached.
pub fn first_generation(p: &mut PendingWrites, shard: u32, name: &str) -> io::Result<u64> {
    match p.get(CF_META, &meta::deleted_job(shard, name))? {
        None => Ok(0),
        Some(raw) => crate::state_machine::meta::decode_u64(&raw),
    }
}

fn end_of(prefix: &[u8]) -> io::Result<Vec<u8>> {
    keys::prefix_end(prefix).ok_or_else(|| corrupt("a job prefix of 0xff bytes only"))
}
