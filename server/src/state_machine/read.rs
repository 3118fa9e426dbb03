//! Queries against the applied state: point reads and prefix scans.

use rocksdb::{Direction, IteratorMode, DB};
use streamshield_proto::v1 as pb;

use super::meta::{self as m, CF_DATA, CF_META};
use crate::error::ServiceError;
use crate::keys::{self, StoredValue};
use crate::rocks::{self, corrupt, io_err};

/// The state table's id in `job` (as [`SmShared::job`] found it), or the
/// precise NOT_FOUND.
///
/// [`SmShared::job`]: super::SmShared::job
fn resolve<'a>(
    info: Option<&'a pb::JobInfo>,
    job: &str,
    state: &str,
) -> Result<(&'a pb::JobInfo, u32), ServiceError> {
    let info = info.ok_or_else(|| ServiceError::JobNotFound {
        job: job.to_string(),
    })?;
    let sid = m::state_id(info, state).ok_or_else(|| ServiceError::StateNotFound {
        job: job.to_string(),
        state: state.to_string(),
    })?;
    Ok((info, sid))
}

fn to_kv(key: &[u8], v: StoredValue, group: u16) -> pb::KeyValue {
    pb::KeyValue {
        key: key.to_vec(),
        value: v.value,
        version: v.version,
        mod_index: v.mod_index,
        key_group: u32::from(group),
    }
}

pub fn get(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    state: &str,
    key: &[u8],
) -> Result<Option<pb::KeyValue>, ServiceError> {
    let (info, sid) = resolve(info, job, state)?;
    let group = keys::key_group(key, info.key_groups);
    let cf = rocks::cf(db, CF_DATA)?;
    let dk = keys::data_key(shard, info.job_id, group, sid, key);
    match db.get_pinned_cf(cf, dk).map_err(io_err)? {
        None => Ok(None),
        Some(raw) => {
            let v = StoredValue::decode(raw.as_ref()).map_err(corrupt)?;
            Ok(Some(to_kv(key, v, group)))
        }
    }
}

/// Which keys of a state table one scan answer holds.
pub struct Page<'a> {
    pub prefix: &'a [u8],
    pub start_after: &'a [u8],
    pub limit: usize,
}

/// Up to `limit` keys with `prefix`, greater than `start_after`, in key
/// order, whether more follow, and the applied index they reflect. All of
/// it comes from one RocksDB snapshot, so a page is never torn by a
/// concurrent apply (a bank read sees whole transfers or none).
///
/// Keys are stored by key group first, so each group is read in order and
/// the groups are merged: O(groups × limit) at worst, fine for the page
/// sizes a scan serves.
pub fn scan(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    state: &str,
    page: Page<'_>,
) -> Result<(Vec<pb::KeyValue>, bool, u64), ServiceError> {
    let Page {
        prefix,
        start_after,
        limit,
    } = page;
    let (info, sid) = resolve(info, job, state)?;
    let cf = rocks::cf(db, CF_DATA)?;
    let snap = db.snapshot();
    let applied = match snap
        .get_pinned_cf(rocks::cf(db, CF_META)?, crate::keys::meta::APPLIED)
        .map_err(io_err)?
    {
        None => 0,
        Some(raw) => prost::Message::decode(raw.as_ref())
            .map(|l: pb::LogId| l.index)
            .map_err(|e| corrupt(format!("applied: {e}")))?,
    };
    let mut found: Vec<pb::KeyValue> = Vec::new();
    for group in 0..info.key_groups as u16 {
        let base = keys::group_prefix(shard, info.job_id, group, sid);
        let mut seek = base.clone();
        seek.extend_from_slice(if start_after >= prefix {
            start_after
        } else {
            prefix
        });
        let mut taken = 0;
        for item in snap.iterator_cf(cf, IteratorMode::From(&seek, Direction::Forward)) {
            let (k, v) = item.map_err(io_err)?;
            if !k.starts_with(&base) {
                break;
            }
            let user = keys::user_key(&k);
            if !user.starts_with(prefix) {
                break;
            }
            if !start_after.is_empty() && user <= start_after {
                continue;
            }
            let v = StoredValue::decode(&v).map_err(corrupt)?;
            found.push(to_kv(user, v, group));
            taken += 1;
            // One more than the page tells whether more follow.
            if taken > limit {
                break;
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    let more = found.len() > limit;
    found.truncate(limit);
    Ok((found, more, applied))
}
