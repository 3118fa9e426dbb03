//! Client writes: conditions, versions, and exactly-once retries through
//! the dedupe records of `sessions`.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response, sync_condition, sync_op};
use tonic::Code;

use super::{error_response, jobs, leased_writes, leases, not_found, promotion, At};
use crate::error::ServiceError;
use crate::keys::{self, meta, StoredValue};
use crate::rocks::corrupt;
use crate::state_machine::meta::{self as m, CF_DATA, CF_META};
use crate::state_machine::pending::PendingWrites;
use crate::state_machine::sessions;

fn write_response(w: pb::WriteResponse) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::Write(w)),
    }
}

pub fn apply_write(
    p: &mut PendingWrites,
    at: At,
    owner: Option<&str>,
    w: &pb::SyncWrite,
) -> io::Result<pb::CommandResponse> {
    if w.client_id == 0 {
        if let Some(busy) = promotion::refuse_write(p, w)? {
            return Ok(busy);
        }
        return write_outcome(p, at, owner, w);
    }
    if let Some(lease) = w
        .lease
        .as_ref()
        .filter(|_| at.format >= leased_writes::FORMAT)
    {
        return leased_writes::apply(p, at, owner, w, lease);
    }
    let stored = sessions::load(p, w.client_id)?;
    // Before any recorded answer is looked at: another principal's
    // answers are not this one's to read. A session of nobody (made on a
    // node without TLS, or before owners) is the next writer's to claim.
    let held = stored
        .as_ref()
        .and_then(|s| s.owner.as_deref())
        .unwrap_or("");
    if let Some(owner) = owner {
        if !held.is_empty() && held != owner {
            return Ok(error_response(
                Code::PermissionDenied,
                format!(
                    "client id {} belongs to another principal; use a client id of your own",
                    w.client_id
                ),
            ));
        }
    }
    if at.format >= sessions::REGISTERED_FORMAT {
        match &stored {
            None => {
                return Ok(error_response(
                    Code::FailedPrecondition,
                    format!(
                        "{SESSION_EXPIRED}: client id {} was not handed out by this cluster, \
                         or its session expired and was forgotten; register a client \
                         (RegisterClient) and write under its id",
                        w.client_id
                    ),
                ))
            }
            Some(s) if s.expired => {
                return Ok(error_response(
                    Code::FailedPrecondition,
                    format!(
                        "{SESSION_EXPIRED}: client {} was idle past the dedupe session TTL; \
                         register a client again (RegisterClient)",
                        w.client_id
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if stored.as_ref().is_some_and(|s| s.expired) && w.acked_below > 0 {
        // The client says it sent seqs before this one, but their answers
        // expired with the session: this could be a retry of one that
        // applied, and applying it again would apply it twice.
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "{SESSION_EXPIRED}: client {} was idle past the dedupe session TTL; \
                 write again with acked_below 0 to start a new session",
                w.client_id
            ),
        ));
    }
    if p.may_have_answer(w.client_id, w.seq)? {
        if let Some(raw) = p.get(CF_META, &meta::dedupe(w.client_id, w.seq))? {
            metrics::counter!("streamshield_writes_deduplicated_total").increment(1);
            return pb::CommandResponse::decode(raw.as_ref())
                .map_err(|e| corrupt(format!("dedupe record: {e}")));
        }
    }
    // The live session, if any: an expired one is replaced by a new one.
    let live = stored.clone().filter(|s| !s.expired);
    let forgotten = live.as_ref().map_or(0, |s| s.forgotten);
    let resp = match first_outcome(p, at, owner, w, forgotten)? {
        Ok(resp) => resp,
        Err(unrecorded) => return Ok(unrecorded),
    };
    p.put(
        CF_META,
        &meta::dedupe(w.client_id, w.seq),
        resp.encode_to_vec(),
    )?;
    p.answer_staged(w.client_id, w.seq);
    let mut next = live.unwrap_or(sessions::Session {
        forgotten: 0,
        last_used_ms: at.time_ms,
        expired: false,
        owner: Some(held.to_string()),
    });
    // Written as a difference: seqs are the client's to choose, and a mark
    // near `u64::MAX` must neither overflow here (a panic on every replica,
    // again on each replay) nor wrap and move the mark backwards.
    if w.acked_below.saturating_sub(forgotten) >= FORGET_STEP {
        p.delete_range(
            CF_META,
            &meta::dedupe(w.client_id, forgotten),
            &meta::dedupe(w.client_id, w.acked_below),
        )?;
        next.forgotten = w.acked_below;
    }
    if let Some(owner) = owner {
        if held.is_empty() {
            next.owner = Some(owner.to_string());
        }
        if at.time_ms.saturating_sub(next.last_used_ms) >= sessions::TOUCH_MS {
            next.last_used_ms = at.time_ms;
        }
    }
    if stored.as_ref() != Some(&next) {
        sessions::store(p, w.client_id, stored.as_ref(), &next)?;
    }
    Ok(resp)
}

/// Starts the message of a write refused because its session expired;
/// clients recognise it by this.
pub const SESSION_EXPIRED: &str = "dedupe session expired";

/// Answers below a client's `acked_below` are never asked for again. They
/// are dropped in steps of [`FORGET_STEP`], one range deletion per step,
/// so a writing client keeps at most about that many answers (~60 bytes
/// each). Steps are not small because the first read of a column family
/// after a new range deletion re-fragments every range tombstone in its
/// memtable: with a step of 256, 64 writers of one client spent ~6 % of a
/// node's CPU there (`perf`); the work grows with the square of the
/// tombstone rate, so 2,048 cuts it ~64-fold.
pub const FORGET_STEP: u64 = 2048;

fn read_value(p: &mut PendingWrites, dk: &[u8]) -> io::Result<Option<StoredValue>> {
    match p.get(CF_DATA, dk)? {
        None => Ok(None),
        Some(raw) => StoredValue::decode(&raw).map(Some).map_err(corrupt),
    }
}

/// The outcome of a deduplicated write that has no recorded answer:
/// `Ok` the answer to record, `Err` a refusal not to record, since the same
/// seq must not apply later (below the acknowledged mark `forgotten`, its
/// answer may have been forgotten, so it may have applied) or may apply
/// later (its key groups are being promoted).
pub(super) fn first_outcome(
    p: &mut PendingWrites,
    at: At,
    owner: Option<&str>,
    w: &pb::SyncWrite,
    forgotten: u64,
) -> io::Result<Result<pb::CommandResponse, pb::CommandResponse>> {
    if w.seq < forgotten {
        return Ok(Err(error_response(
            Code::FailedPrecondition,
            format!(
                "seq {} of client {} is below its acknowledged mark {forgotten}",
                w.seq, w.client_id
            ),
        )));
    }
    if let Some(busy) = promotion::refuse_write(p, w)? {
        return Ok(Err(busy));
    }
    write_outcome(p, at, owner, w).map(Ok)
}

/// What a write does to `data` and answers, whoever's dedupe record keeps
/// the answer.
pub(super) fn write_outcome(
    p: &mut PendingWrites,
    at: At,
    owner: Option<&str>,
    w: &pb::SyncWrite,
) -> io::Result<pb::CommandResponse> {
    let (shard, index) = (w.shard, at.index);
    let Some(mut job) = jobs::load_job(p, shard, &w.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: w.job.clone() }));
    };
    // Nothing is staged before every op is known to be well formed, so a
    // bad op can never leave half a request behind.
    // A kind this format does not know decodes as none (an emit, which
    // validation refuses in a sync write, among them).
    if w.ops.iter().any(|o| o.kind.is_none()) || w.conditions.iter().any(|c| c.test.is_none()) {
        return Ok(error_response(
            Code::InvalidArgument,
            "an op or condition has no kind",
        ));
    }
    // Each key's group, once: the ops' then the conditions'.
    let mut groups = Vec::with_capacity(w.ops.len() + w.conditions.len());
    let keys = w
        .ops
        .iter()
        .map(|o| (&o.state, &o.key))
        .chain(w.conditions.iter().map(|c| (&c.state, &c.key)));
    for (state, key) in keys {
        match m::key_group(&job, state, key) {
            Some(g) => groups.push(g),
            None => {
                return Ok(error_response(
                    Code::InvalidArgument,
                    m::misplaced_key(state),
                ))
            }
        }
    }
    let (op_groups, condition_groups) = groups.split_at(w.ops.len());
    if let Some(lease) = &w.lease {
        if let Err(refused) = leases::check_write(p, &job, owner, lease, w)? {
            return Ok(refused);
        }
    }
    let data_key = |job: &pb::JobInfo, group: u16, state_id: u32, key: &[u8]| {
        keys::data_key(shard, job.job_id, group, state_id, key)
    };

    for (i, (c, &group)) in w.conditions.iter().zip(condition_groups).enumerate() {
        let current = match crate::state_machine::meta::state_id(&job, &c.state) {
            Some(sid) => read_value(p, &data_key(&job, group, sid, &c.key))?,
            None => None,
        };
        let holds = match c.test.as_ref().expect("checked above") {
            sync_condition::Test::Absent(_) => current.is_none(),
            sync_condition::Test::ValueEquals(v) => {
                current.as_ref().is_some_and(|cur| &cur.value == v)
            }
            sync_condition::Test::VersionEquals(n) => {
                current.as_ref().map_or(0, |cur| cur.version) == *n
            }
        };
        if !holds {
            return Ok(write_response(pb::WriteResponse {
                succeeded: false,
                index,
                versions: Vec::new(),
                failed_condition: Some(i as u32),
                current: current.map(|cur| pb::KeyValue {
                    key: c.key.clone(),
                    value: cur.value,
                    version: cur.version,
                    mod_index: cur.mod_index,
                    key_group: u32::from(group),
                }),
            }));
        }
    }

    // Every op's table before the first op writes, so that a table past
    // the job's limit refuses the whole request.
    let mut job_changed = false;
    let mut tables = Vec::with_capacity(w.ops.len());
    for o in &w.ops {
        let is_put = matches!(o.kind, Some(sync_op::Kind::Put(_)));
        match jobs::table_id(&mut job, &o.state, is_put, &mut job_changed, at.format) {
            Ok(sid) => tables.push(sid),
            Err(jobs::TooManyTables) => return Ok(jobs::too_many_tables(&w.job)),
        }
    }
    let mut versions = Vec::with_capacity(w.ops.len());
    for ((o, sid), &group) in w.ops.iter().zip(tables).zip(op_groups) {
        let Some(sid) = sid else {
            // A delete in a table that never existed.
            versions.push(0);
            continue;
        };
        let dk = data_key(&job, group, sid, &o.key);
        match o.kind.as_ref().expect("checked above") {
            sync_op::Kind::Put(put) => {
                // Earlier ops of this request and earlier entries of this
                // chunk are visible through the pending writes.
                let version = p.version(&dk)? + 1;
                let stored = StoredValue {
                    version,
                    mod_index: index,
                    value: put.value.clone(),
                };
                p.put(CF_DATA, &dk, stored.encode())?;
                versions.push(version);
            }
            sync_op::Kind::Delete(_) => {
                p.delete(CF_DATA, &dk)?;
                versions.push(0);
            }
        }
    }
    if job_changed {
        jobs::store_job(p, shard, &job)?;
    }
    Ok(write_response(pb::WriteResponse {
        succeeded: true,
        index,
        versions,
        failed_condition: None,
        current: None,
    }))
}
