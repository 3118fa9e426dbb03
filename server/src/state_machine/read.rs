//! Queries against the applied state: point reads and prefix scans.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode, DB};
use streamshield_proto::v1 as pb;

use super::meta::{self as m, CF_DATA, CF_META};
use super::promotions;
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

/// The key group of `key` in table `state`, or why its table refuses it.
pub fn placed(info: &pb::JobInfo, state: &str, key: &[u8]) -> Result<u16, ServiceError> {
    m::key_group(info, state, key)
        .ok_or_else(|| ServiceError::invalid("key", m::misplaced_key(state)))
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
    let group = placed(info, state, key)?;
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
    /// Keys and values the page carries at most; the first item always
    /// comes, however large.
    pub max_bytes: usize,
    /// Key groups `[start, end)` only; `(0, 0)` for all of them.
    pub key_groups: (u32, u32),
}

/// Up to `limit` keys with `prefix`, greater than `start_after`, in key
/// order and within `max_bytes`, whether more follow, and the applied
/// index they reflect. All of it comes from one RocksDB snapshot, so a
/// page is never torn by a concurrent apply (a bank read sees whole
/// transfers or none).
///
/// Keys are stored by key group first, so each group is read in order and
/// the groups are merged into [`Candidates`], which never holds more than
/// a page and one item: memory is bounded by the page, not by
/// `groups × limit`.
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
        max_bytes,
        key_groups,
    } = page;
    let (info, sid) = resolve(info, job, state)?;
    let groups = match key_groups {
        (0, 0) => 0..info.key_groups,
        (start, end) if start < end && end <= info.key_groups => start..end,
        (start, end) => {
            return Err(ServiceError::invalid(
                "key_group_start/key_group_end",
                format!(
                    "[{start}, {end}) is not a range within the job's {} key groups",
                    info.key_groups
                ),
            ))
        }
    };
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
    let mut found = Candidates::new(limit.max(1), max_bytes);
    for group in groups.start as u16..groups.end as u16 {
        let base = keys::group_prefix(shard, info.job_id, group, sid);
        let mut seek = base.clone();
        seek.extend_from_slice(if start_after >= prefix {
            start_after
        } else {
            prefix
        });
        let group_keys = rocks::within(&base);
        for item in snap.iterator_cf_opt(
            cf,
            group_keys,
            IteratorMode::From(&seek, Direction::Forward),
        ) {
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
            // The rest of this group sorts after this key: if it was
            // not kept, none of them would be.
            if !found.would_keep(user) {
                break;
            }
            let v = StoredValue::decode(&v).map_err(corrupt)?;
            found.offer(to_kv(user, v, group));
        }
    }
    let (page, more) = found.into_page();
    Ok((page, more, applied))
}

/// The smallest keys seen so far: enough to make a page of at most
/// `limit` items and `max_bytes`, and to tell whether more follow.
struct Candidates {
    items: BTreeMap<Vec<u8>, pb::KeyValue>,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
}

fn size_of(kv: &pb::KeyValue) -> usize {
    kv.key.len() + kv.value.len()
}

impl Candidates {
    fn new(limit: usize, max_bytes: usize) -> Self {
        Self {
            items: BTreeMap::new(),
            bytes: 0,
            limit,
            max_bytes,
        }
    }

    /// Whether `count` items of `bytes` make a page that leaves one of
    /// them out, so that "more" is known without any larger item.
    fn overflows(&self, count: usize, bytes: usize) -> bool {
        count > self.limit || (count >= 2 && bytes > self.max_bytes)
    }

    /// Whether the largest item is not needed beside the others.
    fn largest_is_spare(&self) -> bool {
        match self.items.last_key_value() {
            None => false,
            Some((_, largest)) => {
                self.overflows(self.items.len() - 1, self.bytes - size_of(largest))
            }
        }
    }

    /// Whether an item with `key` would be kept if offered.
    fn would_keep(&self, key: &[u8]) -> bool {
        !self.overflows(self.items.len(), self.bytes)
            || self
                .items
                .last_key_value()
                .is_some_and(|(largest, _)| key < largest.as_slice())
    }

    fn offer(&mut self, kv: pb::KeyValue) {
        self.bytes += size_of(&kv);
        self.items.insert(kv.key.clone(), kv);
        while self.largest_is_spare() {
            if let Some((_, dropped)) = self.items.pop_last() {
                self.bytes -= size_of(&dropped);
            }
        }
    }

    fn into_page(self) -> (Vec<pb::KeyValue>, bool) {
        let total = self.items.len();
        let mut page = Vec::new();
        let mut bytes = 0;
        for kv in self.items.into_values() {
            let n = size_of(&kv);
            if page.len() == self.limit || (!page.is_empty() && bytes + n > self.max_bytes) {
                break;
            }
            bytes += n;
            page.push(kv);
        }
        let more = total > page.len();
        (page, more)
    }
}

/// Every task record of a job, by task index.
/// The job's task records by index after `start_after`, until their
/// stored bytes reach `max_bytes` (at least one), and whether more follow.
pub fn tasks(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    start_after: Option<u32>,
    max_bytes: usize,
) -> Result<(Vec<pb::TaskRecord>, bool), ServiceError> {
    use prost::Message;
    let info = info.ok_or_else(|| ServiceError::JobNotFound {
        job: job.to_string(),
    })?;
    let cf = rocks::cf(db, CF_META)?;
    let prefix = keys::meta::task_prefix(shard, info.job_id);
    let from = match start_after {
        None => prefix.clone(),
        Some(t) => match t.checked_add(1) {
            Some(next) => keys::meta::task(shard, info.job_id, next),
            None => return Ok((Vec::new(), false)),
        },
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
        let (k, v) = item.map_err(io_err)?;
        if !k.starts_with(&prefix) {
            break;
        }
        if bytes >= max_bytes {
            return Ok((out, true));
        }
        bytes += v.len();
        out.push(
            pb::TaskRecord::decode(v.as_ref()).map_err(|e| corrupt(format!("task record: {e}")))?,
        );
    }
    Ok((out, false))
}

/// The job's id and the record of its stream `stream`, or which is missing.
pub fn stream_of(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    stream: &str,
) -> Result<(u32, pb::StreamRecord), ServiceError> {
    use prost::Message;
    let info = info.ok_or_else(|| ServiceError::JobNotFound {
        job: job.to_string(),
    })?;
    let cf = rocks::cf(db, CF_META)?;
    let raw = db
        .get_pinned_cf(cf, keys::meta::stream(shard, info.job_id, stream))
        .map_err(io_err)?
        .ok_or_else(|| ServiceError::StreamNotFound {
            job: job.to_string(),
            stream: stream.to_string(),
        })?;
    let s = pb::StreamRecord::decode(raw.as_ref()).map_err(|e| corrupt(format!("stream: {e}")))?;
    Ok((info.job_id, s))
}

fn partition_state(
    db: &DB,
    shard: u32,
    job_id: u32,
    stream_id: u32,
    partition: u32,
) -> Result<pb::PartitionState, ServiceError> {
    use prost::Message;
    let cf = rocks::cf(db, CF_META)?;
    match db
        .get_pinned_cf(
            cf,
            keys::meta::partition(shard, job_id, stream_id, partition),
        )
        .map_err(io_err)?
    {
        None => Ok(pb::PartitionState::default()),
        Some(raw) => Ok(pb::PartitionState::decode(raw.as_ref())
            .map_err(|e| corrupt(format!("partition: {e}")))?),
    }
}

/// A partition's state with its end where readers stop: before the
/// records a promotion under way holds back.
fn readable_state(
    db: &DB,
    shard: u32,
    job_id: u32,
    stream_id: u32,
    partition: u32,
    promoting: &[promotions::JobPromoting],
) -> Result<pb::PartitionState, ServiceError> {
    let mut st = partition_state(db, shard, job_id, stream_id, partition)?;
    if let Some(held) = promotions::held_from(promoting, shard, job_id, stream_id, partition) {
        st.end_offset = st.end_offset.min(held);
    }
    Ok(st)
}

/// A stream with the bounds of each partition, as readers see them (each
/// end where a promotion under way holds records back).
pub fn describe_stream(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    stream: &str,
    promoting: &[promotions::JobPromoting],
) -> Result<pb::StreamInfo, ServiceError> {
    let (job_id, s) = stream_of(db, info, shard, job, stream)?;
    let mut partition_info = Vec::with_capacity(s.partitions as usize);
    for partition in 0..s.partitions {
        let st = readable_state(db, shard, job_id, s.stream_id, partition, promoting)?;
        partition_info.push(pb::PartitionInfo {
            partition,
            start_offset: st.start_offset,
            end_offset: st.end_offset,
            bytes: st.bytes,
        });
    }
    Ok(pb::StreamInfo {
        stream: s.name,
        partitions: s.partitions,
        retention_bytes: s.retention_bytes,
        partition_info,
        created_index: s.created_index,
        retention_ms: s.retention_ms,
    })
}

/// Where and how much one read of a partition takes.
#[derive(Clone, Copy)]
pub struct RecordRange<'a> {
    pub stream: &'a str,
    pub partition: u32,
    pub from_offset: u64,
    pub max_records: usize,
    pub max_bytes: usize,
    /// The job and stream ids the read must find: a subscription reads
    /// the stream it started on and ends once that is deleted, even when
    /// a job or stream of the same name has been made since.
    pub pinned: Option<(u32, u32)>,
}

/// Every stream of a job, in name order.
pub fn list_streams(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
) -> Result<Vec<pb::StreamRecord>, ServiceError> {
    use prost::Message;
    let info = info.ok_or_else(|| ServiceError::JobNotFound {
        job: job.to_string(),
    })?;
    let prefix = keys::meta::stream_prefix(shard, info.job_id);
    let cf = rocks::cf(db, CF_META)?;
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item.map_err(io_err)?;
        if !k.starts_with(&prefix) {
            break;
        }
        out.push(
            pb::StreamRecord::decode(v.as_ref()).map_err(|e| corrupt(format!("stream: {e}")))?,
        );
    }
    Ok(out)
}

/// Committed records of one partition from `from_offset` (or its start,
/// if that was trimmed) up to where a promotion under way holds them back
/// (`promoting`, [`promotions::held_from`]); a page stops before the
/// record that would pass `max_bytes` (the first always comes). Returns
/// the page and the partition's state as readers see it (its end where
/// the records are held).
pub fn read_records(
    db: &DB,
    info: Option<&pb::JobInfo>,
    shard: u32,
    job: &str,
    r: RecordRange,
    promoting: &[promotions::JobPromoting],
) -> Result<(Vec<pb::RecordAt>, pb::PartitionState), ServiceError> {
    use prost::Message;
    let (job_id, s) = stream_of(db, info, shard, job, r.stream)?;
    if r.pinned.is_some_and(|pin| pin != (job_id, s.stream_id)) {
        return Err(ServiceError::StreamNotFound {
            job: job.to_string(),
            stream: r.stream.to_string(),
        });
    }
    if r.partition >= s.partitions {
        return Err(ServiceError::invalid(
            "partition",
            format!(
                "stream {:?} has partitions 0 to {}",
                r.stream,
                s.partitions - 1
            ),
        ));
    }
    // The bounds first: the records then hold at least up to them.
    let st = readable_state(db, shard, job_id, s.stream_id, r.partition, promoting)?;
    let from = r.from_offset.max(st.start_offset);
    let prefix = keys::record_prefix(shard, job_id, s.stream_id, r.partition);
    let cf = rocks::cf(db, m::CF_STREAMS)?;
    let start = keys::record_key(shard, job_id, s.stream_id, r.partition, from);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let partition = rocks::within(&prefix);
    for item in db.iterator_cf_opt(
        cf,
        partition,
        IteratorMode::From(&start, Direction::Forward),
    ) {
        let (k, v) = item.map_err(io_err)?;
        if !k.starts_with(&prefix) || out.len() >= r.max_records {
            break;
        }
        let offset =
            keys::offset_of_record(&k).ok_or_else(|| corrupt("a record key without an offset"))?;
        if offset >= st.end_offset {
            break;
        }
        let rec = pb::StoredRecord::decode(v.as_ref())
            .map_err(|e| corrupt(format!("stream record: {e}")))?;
        let size = rec.key.len() + rec.value.len();
        if !out.is_empty() && bytes + size > r.max_bytes {
            break;
        }
        bytes += size;
        out.push(pb::RecordAt {
            offset,
            key: rec.key,
            value: rec.value,
            timestamp_ms: rec.timestamp_ms,
        });
    }
    Ok((out, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value_bytes: usize) -> pb::KeyValue {
        pb::KeyValue {
            key: key.as_bytes().to_vec(),
            value: vec![0; value_bytes],
            ..Default::default()
        }
    }

    fn page_of(
        limit: usize,
        max_bytes: usize,
        offered: &[(&str, usize)],
    ) -> (Vec<String>, bool, usize) {
        let mut c = Candidates::new(limit, max_bytes);
        let mut held = 0;
        for (k, n) in offered {
            if c.would_keep(k.as_bytes()) {
                c.offer(kv(k, *n));
            }
            held = held.max(c.items.len());
        }
        let (page, more) = c.into_page();
        let keys = page
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect();
        (keys, more, held)
    }

    #[test]
    fn a_page_is_the_smallest_keys_within_count_and_bytes() {
        // Keys arrive group by group, each group in order, as a scan reads.
        let offered = [("b", 1), ("e", 1), ("f", 1), ("a", 1), ("c", 1), ("d", 1)];
        assert_eq!(
            page_of(3, 1 << 20, &offered),
            (vec!["a".into(), "b".into(), "c".into()], true, 4)
        );
        assert!(!page_of(10, 1 << 20, &offered).1, "everything fits");
        // Bytes: 10 bytes fit "a" (1+4) and "b" (1+4), not "c".
        let sized = [("a", 4), ("b", 4), ("c", 4), ("d", 4)];
        assert_eq!(
            page_of(10, 10, &sized),
            (vec!["a".into(), "b".into()], true, 3)
        );
        // The first item always comes, however large.
        assert_eq!(
            page_of(10, 10, &[("a", 100), ("b", 1)]),
            (vec!["a".into()], true, 2)
        );
        assert_eq!(page_of(10, 10, &[("a", 100)]), (vec!["a".into()], false, 1));
    }

    #[test]
    fn memory_stays_at_a_page_whatever_the_groups_hold() {
        // 100 groups of 1,000 keys each, a page of 10: at most 11 held.
        let keys: Vec<String> = (0..100)
            .flat_map(|g| (0..1000).map(move |i| format!("{:04}-{g:03}", i)))
            .collect();
        let offered: Vec<(&str, usize)> = keys.iter().map(|k| (k.as_str(), 8)).collect();
        let (page, more, held) = page_of(10, 1 << 20, &offered);
        assert!(more && held <= 11, "held {held}");
        assert_eq!(page[0], "0000-000");
        assert_eq!(page[9], "0000-009");
    }
}
