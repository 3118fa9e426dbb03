//! Job and state-table records in the `meta` column family.

use prost::Message;
use rocksdb::DB;
use streamshield_proto::v1 as pb;

use crate::keys::meta;
use crate::rocks::{self, corrupt, io_err};

pub const CF_DATA: &str = "data";
pub const CF_STAGED: &str = "staged";
pub const CF_META: &str = "meta";
/// Committed stream records, by job, stream, partition and offset.
pub const CF_STREAMS: &str = crate::rocks::STREAMS_CF;
pub const ALL_CFS: &[&str] = &[CF_DATA, CF_STAGED, CF_META, CF_STREAMS];

pub fn load_job(db: &DB, shard: u32, name: &str) -> std::io::Result<Option<pb::JobInfo>> {
    let cf = rocks::cf(db, CF_META)?;
    match db
        .get_pinned_cf(cf, meta::job(shard, name))
        .map_err(io_err)?
    {
        None => Ok(None),
        Some(raw) => decode_job(&raw, name).map(Some),
    }
}

pub fn decode_job(raw: &[u8], name: &str) -> std::io::Result<pb::JobInfo> {
    pb::JobInfo::decode(raw).map_err(|e| corrupt(format!("job record {name}: {e}")))
}

pub fn decode_u32(raw: &[u8]) -> std::io::Result<u32> {
    let b: [u8; 4] = raw
        .try_into()
        .map_err(|_| corrupt("counter is not 4 bytes"))?;
    Ok(u32::from_be_bytes(b))
}

pub fn decode_u64(raw: &[u8]) -> std::io::Result<u64> {
    let b: [u8; 8] = raw
        .try_into()
        .map_err(|_| corrupt("counter is not 8 bytes"))?;
    Ok(u64::from_be_bytes(b))
}

pub fn state_id(job: &pb::JobInfo, state: &str) -> Option<u32> {
    job.states
        .iter()
        .find(|s| s.name == state)
        .map(|s| s.state_id)
}

/// How table `state` of `job` places its keys in key groups; `None` for a
/// value this version does not know (only damage writes one). A table not
/// made yet places by the whole key, as it will once a write makes it.
pub fn placement(job: &pb::JobInfo, state: &str) -> Option<pb::KeyPlacement> {
    match job.states.iter().find(|s| s.name == state) {
        Some(t) => pb::KeyPlacement::try_from(t.placement).ok(),
        None => Some(pb::KeyPlacement::WholeKey),
    }
}

/// The key group of `key` in table `state` of `job`: `None` for a key its
/// table refuses (a prefix-placed table's key that does not start with its
/// placement key, [`streamshield_proto::placement_key`]).
pub fn key_group(job: &pb::JobInfo, state: &str, key: &[u8]) -> Option<u16> {
    streamshield_proto::placed_key_group(key, placement(job, state)?, job.key_groups)
}

/// Why a key was refused by [`key_group`].
pub fn misplaced_key(state: &str) -> String {
    format!(
        "table {state:?} places keys by a length-prefixed placement key \
         ([n: u16 big-endian][n bytes]...), and this key does not start with one"
    )
}

/// Up to `limit` jobs of `shard` in name order after `start_after` that
/// `keep` accepts, and whether more follow.
pub fn list_jobs(
    db: &DB,
    shard: u32,
    start_after: &str,
    limit: usize,
    mut keep: impl FnMut(&pb::JobInfo) -> bool,
) -> std::io::Result<(Vec<pb::JobInfo>, bool)> {
    let cf = rocks::cf(db, CF_META)?;
    let prefix = meta::job(shard, "");
    let from = meta::job(shard, start_after);
    let mut out = Vec::new();
    let it = db.iterator_cf(
        cf,
        rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
    );
    for item in it {
        let (k, v) = item.map_err(io_err)?;
        if !k.starts_with(&prefix) {
            break;
        }
        if *k == *from {
            continue;
        }
        let name = String::from_utf8_lossy(&k[prefix.len()..]);
        let job = decode_job(&v, &name)?;
        if !keep(&job) {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(job);
    }
    Ok((out, false))
}
