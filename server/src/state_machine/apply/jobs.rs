//! Jobs and their state tables.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response};
use tonic::Code;

use super::error_response;
use crate::keys::{self, meta, DEFAULT_KEY_GROUPS, MAX_KEY_GROUPS};
use crate::state_machine::meta::{self as m, CF_META};
use crate::state_machine::pending::PendingWrites;

pub fn load_job(p: &mut PendingWrites, shard: u32, name: &str) -> io::Result<Option<pb::JobInfo>> {
    match p.get(CF_META, &meta::job(shard, name))? {
        None => Ok(None),
        Some(raw) => m::decode_job(&raw, name).map(Some),
    }
}

pub fn create_job(
    p: &mut PendingWrites,
    index: u64,
    c: &pb::CreateJob,
) -> io::Result<pb::CommandResponse> {
    let shard = keys::DEFAULT_SHARD;
    if load_job(p, shard, &c.job)?.is_some() {
        return Ok(error_response(
            Code::AlreadyExists,
            format!("job {:?} already exists", c.job),
        ));
    }
    let key_groups = if c.key_groups == 0 {
        DEFAULT_KEY_GROUPS
    } else {
        c.key_groups
    };
    if key_groups > MAX_KEY_GROUPS {
        return Ok(error_response(
            Code::InvalidArgument,
            format!("key_groups {key_groups} is above the maximum {MAX_KEY_GROUPS}"),
        ));
    }
    let job_id = match p.get(CF_META, meta::NEXT_JOB_ID)? {
        None => 1,
        Some(raw) => m::decode_u32(&raw)?,
    };
    let info = pb::JobInfo {
        job: c.job.clone(),
        job_id,
        key_groups,
        states: Vec::new(),
        created_index: index,
    };
    p.put(CF_META, &meta::job(shard, &c.job), info.encode_to_vec())?;
    p.put(
        CF_META,
        meta::NEXT_JOB_ID,
        (job_id + 1).to_be_bytes().to_vec(),
    )?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::JobCreated(pb::JobCreated {
            job: c.job.clone(),
            job_id,
            key_groups,
            created_index: index,
        })),
    })
}

/// The id of state table `name`, made on its first write: `None` only
/// for a table that does not exist and is not to be made (a delete).
/// Sets `changed` when `job` gained a table and must be stored.
pub fn state_id(
    job: &mut pb::JobInfo,
    name: &str,
    create: bool,
    changed: &mut bool,
) -> Option<u32> {
    if let Some(sid) = m::state_id(job, name) {
        return Some(sid);
    }
    if !create {
        return None;
    }
    let sid = job.states.iter().map(|s| s.state_id).max().unwrap_or(0) + 1;
    job.states.push(pb::StateTableInfo {
        name: name.to_string(),
        state_id: sid,
    });
    *changed = true;
    Some(sid)
}

pub fn store_job(p: &mut PendingWrites, shard: u32, job: &pb::JobInfo) -> io::Result<()> {
    p.put(CF_META, &meta::job(shard, &job.job), job.encode_to_vec())
}
