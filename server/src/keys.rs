//! How state lives in RocksDB: key layout, key groups and value encoding.
//!
//! Data keys are prefix-ordered so that one task's key groups (a range,
//! as in Flink) are contiguous, and one range scan reads them:
//! `[shard:u32][job_id:u32][key_group:u16][state_id:u32][user key]`, all
//! big-endian. Values carry the key's version and the log index that wrote
//! them in front of the user's bytes.

/// The only shard this release serves; the API carries it from the start.
pub const DEFAULT_SHARD: u32 = 0;
/// Key groups a job gets when it asks for none (Flink's default max parallelism).
pub const DEFAULT_KEY_GROUPS: u32 = 128;
/// Key groups must fit the u16 in the key layout; 32768 is Flink's ceiling too.
pub const MAX_KEY_GROUPS: u32 = 32768;

/// The most state tables a job may have. Every write looks its tables up
/// in the job's record, linearly, so a job of tens of thousands of tables
/// made one write of 10,000 new tables hold the apply of every replica long
/// enough to cost the leader its term (a client generated from `proto/`
/// in Python, `interop/`). Flink and Kafka Streams jobs declare a handful
/// of state stores per operator.
pub const MAX_TABLES: usize = 1024;

/// The most streams a job may have. A stream's creation and every commit
/// that appends outputs read all of the job's stream records (streams are
/// found by name, outputs name them by id), so each costs in proportion to
/// their number: 54 ms per `CreateStream` at 20,000 streams in a debug
/// build, against 6 ms at 2,000 (`interop/`, one job).
pub const MAX_STREAMS: usize = 1024;

const DATA_PREFIX_LEN: usize = 4 + 4 + 2 + 4;

/// The key group of a user key: a stable hash, fixed forever, so a key
/// never moves between groups (defined with the protocol, so clients
/// place keys alike).
pub use streamshield_proto::key_group;

/// Where every key of one job starts in the `data`, `staged` and `streams`
/// column families: each of their layouts begins `[shard][job_id]`, so a
/// job's deletion is one range deletion per family.
pub fn job_prefix(shard: u32, job_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&job_id.to_be_bytes());
    k
}

/// The first key past every key that starts with `prefix`: the prefix
/// without its trailing 0xff bytes, its last byte raised by one. `None`
/// for a prefix of 0xff bytes only, which nothing here builds.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    *end.last_mut()? += 1;
    Some(end)
}

/// Where one state table's keys of one key group start.
pub fn group_prefix(shard: u32, job_id: u32, group: u16, state_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(DATA_PREFIX_LEN + 32);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&job_id.to_be_bytes());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&state_id.to_be_bytes());
    k
}

pub fn data_key(shard: u32, job_id: u32, group: u16, state_id: u32, user_key: &[u8]) -> Vec<u8> {
    let mut k = group_prefix(shard, job_id, group, state_id);
    k.extend_from_slice(user_key);
    k
}

/// The user key inside a data key that starts with a known group prefix.
pub fn user_key(data_key: &[u8]) -> &[u8] {
    data_key.get(DATA_PREFIX_LEN..).unwrap_or(&[])
}

/// Where the staged writes of one task generation's epoch start, in the
/// `staged` column family: `[shard][job_id][task:u32][generation:u64]
/// [epoch:u64]`, then the first seq of a run of them ([`staged_run_key`]).
/// Every epoch of a task is contiguous, so a commit reads one range and a
/// new lease drops older generations with one range deletion.
pub fn staged_prefix(shard: u32, job_id: u32, task: u32, generation: u64, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(STAGED_PREFIX_LEN + 32);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&job_id.to_be_bytes());
    k.extend_from_slice(&task.to_be_bytes());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

const STAGED_PREFIX_LEN: usize = 4 + 4 + 4 + 8 + 8;

/// The key of a run of staged writes whose first seq is `first_seq`,
/// under `prefix` ([`staged_prefix`]): an epoch's runs sort by seq.
pub fn staged_run_key(prefix: &[u8], first_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

/// The first seq of a staged run's key; `None` if it holds none (the disk
/// handed us garbage).
pub fn first_seq_of_run(key: &[u8]) -> Option<u64> {
    key.get(STAGED_PREFIX_LEN..)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

/// Where the records of one stream partition start, in the `streams`
/// column family: `[shard][job_id][stream_id][partition]`, then the
/// record's offset.
pub fn record_prefix(shard: u32, job_id: u32, stream_id: u32, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&job_id.to_be_bytes());
    k.extend_from_slice(&stream_id.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Where every record of one stream starts, in the `streams` column
/// family: `[shard][job_id][stream_id]`, then partition and offset.
pub fn stream_records_prefix(shard: u32, job_id: u32, stream_id: u32) -> Vec<u8> {
    let mut k = job_prefix(shard, job_id);
    k.extend_from_slice(&stream_id.to_be_bytes());
    k
}

pub fn record_key(shard: u32, job_id: u32, stream_id: u32, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = record_prefix(shard, job_id, stream_id, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The offset in a record key ([`record_key`]); `None` if it holds none.
pub fn offset_of_record(key: &[u8]) -> Option<u64> {
    key.get(16..24)?.try_into().ok().map(u64::from_be_bytes)
}

/// A value as stored: version and writer's log index, then the user bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub version: u64,
    pub mod_index: u64,
    pub value: Vec<u8>,
}

/// A stored value shorter than its header: the disk handed us garbage.
#[derive(Debug, thiserror::Error)]
#[error("corrupt stored value: {len} bytes do not hold its header")]
pub struct CorruptValue {
    pub len: usize,
}

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        Self::encode_parts(self.version, self.mod_index, &self.value)
    }

    /// What [`StoredValue::encode`] makes of these parts, without a
    /// `StoredValue` holding a copy of `value` first.
    pub fn encode_parts(version: u64, mod_index: u64, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + value.len());
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(&mod_index.to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    /// The version alone, from the header: no copy of the user's bytes.
    pub fn version_of(raw: &[u8]) -> Result<u64, CorruptValue> {
        match raw.first_chunk::<8>() {
            Some(v) if raw.len() >= 16 => Ok(u64::from_be_bytes(*v)),
            _ => Err(CorruptValue { len: raw.len() }),
        }
    }

    pub fn decode(raw: &[u8]) -> Result<Self, CorruptValue> {
        if raw.len() < 16 {
            return Err(CorruptValue { len: raw.len() });
        }
        let (version, rest) = raw.split_at(8);
        let (mod_index, value) = rest.split_at(8);
        Ok(Self {
            version: u64::from_be_bytes(version.try_into().expect("8 bytes")),
            mod_index: u64::from_be_bytes(mod_index.try_into().expect("8 bytes")),
            value: value.to_vec(),
        })
    }
}

/// Keys of the `meta` column family.
pub mod meta {
    pub const APPLIED: &[u8] = b"m/applied";
    pub const MEMBERSHIP: &[u8] = b"m/membership";
    pub const NEXT_JOB_ID: &[u8] = b"m/next_job_id";
    /// The counter `RegisterClient` hands client ids out from.
    pub const NEXT_CLIENT_ID: &[u8] = b"m/next_client_id";
    /// The newest state-machine format of any entry applied into the
    /// store (`state_machine/format.rs`).
    pub const FORMAT: &[u8] = b"m/format";

    const JOB_PREFIX: &[u8] = b"j/";

    pub fn job(shard: u32, name: &str) -> Vec<u8> {
        let mut k = JOB_PREFIX.to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// Whether any key in `[from, to)` is a job record.
    pub fn range_has_jobs(from: &[u8], to: &[u8]) -> bool {
        // Job keys are exactly those from "j/" up to (excluding) "j0".
        const JOB_END: &[u8] = b"j0";
        from < JOB_END && to > JOB_PREFIX
    }

    pub fn is_job(key: &[u8]) -> bool {
        key.starts_with(JOB_PREFIX)
    }

    /// A deleted job's tombstone: the highest lease generation its tasks
    /// reached, which a later job of the same name starts above
    /// (`apply/job_removal.rs`): `jd/<shard><name>`.
    pub fn deleted_job(shard: u32, name: &str) -> Vec<u8> {
        let mut k = b"jd/".to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// Grants and tokens: `a/g/<principal>\0<role><job>` and
    /// `a/t/<token id>`.
    pub const AUTH_PREFIX: &[u8] = b"a/";

    pub fn is_auth(key: &[u8]) -> bool {
        key.starts_with(AUTH_PREFIX)
    }

    pub fn grant(principal: &str, role: u8, job: &str) -> Vec<u8> {
        let mut k = b"a/g/".to_vec();
        k.extend_from_slice(principal.as_bytes());
        k.push(0);
        k.push(role);
        k.extend_from_slice(job.as_bytes());
        k
    }

    pub fn token(token_id: &str) -> Vec<u8> {
        let mut k = b"a/t/".to_vec();
        k.extend_from_slice(token_id.as_bytes());
        k
    }

    /// The dedupe sessions' index by last use (`state_machine::sessions`),
    /// which an expiry walks by this prefix: no other record may start
    /// with it.
    pub const SESSION_TIME_PREFIX: &[u8] = b"t/";

    /// Every task record of one job: `tk/<shard><job_id>`.
    pub fn task_prefix(shard: u32, job_id: u32) -> Vec<u8> {
        let mut k = b"tk/".to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(&job_id.to_be_bytes());
        k
    }

    /// A task's lease and checkpoint (`TaskRecord`).
    pub fn task(shard: u32, job_id: u32, task: u32) -> Vec<u8> {
        let mut k = task_prefix(shard, job_id);
        k.extend_from_slice(&task.to_be_bytes());
        k
    }

    /// Every job's promotions under way (`JobPromotions`), one record a
    /// job: `pm/<shard><job_id>`.
    pub const PROMOTIONS_PREFIX: &[u8] = b"pm/";

    pub fn promotions(shard: u32, job_id: u32) -> Vec<u8> {
        let mut k = PROMOTIONS_PREFIX.to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(&job_id.to_be_bytes());
        k
    }

    pub fn is_promotions(key: &[u8]) -> bool {
        key.starts_with(PROMOTIONS_PREFIX)
    }

    /// Whether any key in `[from, to)` is a job's promotions record.
    pub fn range_has_promotions(from: &[u8], to: &[u8]) -> bool {
        // They are exactly the keys from "pm/" up to (excluding) "pm0".
        const END: &[u8] = b"pm0";
        from < END && to > PROMOTIONS_PREFIX
    }

    /// Every stream of one job: `st/<shard><job_id>`.
    pub fn stream_prefix(shard: u32, job_id: u32) -> Vec<u8> {
        let mut k = b"st/".to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(&job_id.to_be_bytes());
        k
    }

    /// A stream's record (`StreamRecord`).
    pub fn stream(shard: u32, job_id: u32, name: &str) -> Vec<u8> {
        let mut k = stream_prefix(shard, job_id);
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// A stream partition's bounds (`PartitionState`).
    pub fn partition(shard: u32, job_id: u32, stream_id: u32, partition: u32) -> Vec<u8> {
        let mut k = b"sp/".to_vec();
        k.extend_from_slice(&super::record_prefix(shard, job_id, stream_id, partition));
        k
    }

    /// A producer's last append to a partition (`ProducerState`).
    pub fn producer(
        shard: u32,
        job_id: u32,
        stream_id: u32,
        partition: u32,
        producer: u64,
    ) -> Vec<u8> {
        let mut k = b"pr/".to_vec();
        k.extend_from_slice(&super::record_prefix(shard, job_id, stream_id, partition));
        k.extend_from_slice(&producer.to_be_bytes());
        k
    }

    /// Recorded answers of a task's leased sync writes, by generation:
    /// `la/<shard><job_id><task><generation>`, then `<client><seq>`
    /// ([`lease_answer`]). A new lease drops the older generations' with
    /// one range deletion.
    pub fn lease_answers(shard: u32, job_id: u32, task: u32, generation: u64) -> Vec<u8> {
        let mut k = b"la/".to_vec();
        k.extend_from_slice(&shard.to_be_bytes());
        k.extend_from_slice(&job_id.to_be_bytes());
        k.extend_from_slice(&task.to_be_bytes());
        k.extend_from_slice(&generation.to_be_bytes());
        k
    }

    pub fn lease_answer(scope: &[u8], client: u64, seq: u64) -> Vec<u8> {
        let mut k = scope.to_vec();
        k.extend_from_slice(&client.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// Up to which seq a client's answers under a lease are forgotten:
    /// `lm/<shard><job_id><task><generation><client>`.
    pub fn lease_marks(shard: u32, job_id: u32, task: u32, generation: u64) -> Vec<u8> {
        let mut k = b"lm/".to_vec();
        k.extend_from_slice(&lease_answers(shard, job_id, task, generation)[3..]);
        k
    }

    pub fn lease_mark(marks: &[u8], client: u64) -> Vec<u8> {
        let mut k = marks.to_vec();
        k.extend_from_slice(&client.to_be_bytes());
        k
    }

    /// Where every `meta` record that belongs to one job starts, besides
    /// the job's own record: its tasks, streams, partitions, producers,
    /// leased-write answers and marks, and promotions. A job's deletion
    /// drops each range; a new kind of per-job record must be added here
    /// (`every_record_of_a_job_is_under_one_of_its_prefixes`).
    pub fn job_record_prefixes(shard: u32, job_id: u32) -> Vec<Vec<u8>> {
        let scoped = super::job_prefix(shard, job_id);
        let under = |kind: &[u8]| [kind, scoped.as_slice()].concat();
        vec![
            task_prefix(shard, job_id),
            stream_prefix(shard, job_id),
            under(b"sp/"),
            under(b"pr/"),
            under(b"la/"),
            under(b"lm/"),
            promotions(shard, job_id),
            under(b"sn/"),
            under(b"sd/"),
        ]
    }

    /// Where every `meta` record of one stream starts besides the
    /// stream's own: its partitions' bounds and its producers.
    pub fn stream_record_prefixes(shard: u32, job_id: u32, stream_id: u32) -> Vec<Vec<u8>> {
        let scoped = super::stream_records_prefix(shard, job_id, stream_id);
        vec![
            [b"sp/".as_slice(), &scoped].concat(),
            [b"pr/".as_slice(), &scoped].concat(),
        ]
    }

    /// The id below which a job's stream ids may have been handed out
    /// (a stream deleted keeps its id from being used again):
    /// `sn/<shard><job_id>`, a big-endian u32.
    pub fn next_stream_id(shard: u32, job_id: u32) -> Vec<u8> {
        [b"sn/".as_slice(), &super::job_prefix(shard, job_id)].concat()
    }

    /// A deleted stream's tombstone: outputs staged for it before its
    /// deletion are dropped at promotion, where a stream id nobody
    /// deleted but that is missing is damage. `sd/<shard><job_id><stream_id>`.
    pub fn deleted_stream(shard: u32, job_id: u32, stream_id: u32) -> Vec<u8> {
        [
            b"sd/".as_slice(),
            &super::stream_records_prefix(shard, job_id, stream_id),
        ]
        .concat()
    }

    /// A client's dedupe session (`state_machine::sessions`).
    pub fn session(client_id: u64) -> Vec<u8> {
        let mut k = b"s/".to_vec();
        k.extend_from_slice(&client_id.to_be_bytes());
        k
    }

    /// The recorded answer of one deduplicated request.
    pub fn dedupe(client_id: u64, seq: u64) -> Vec<u8> {
        let mut k = b"d/".to_vec();
        k.extend_from_slice(&client_id.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_records_are_told_apart_from_other_meta_keys() {
        let j = meta::job(0, "j");
        assert!(meta::is_job(&j));
        assert!(!meta::is_job(&meta::session(7)) && !meta::is_job(meta::APPLIED));
        assert!(!meta::is_job(&meta::deleted_job(0, "j")));
        let (t1, t2) = (meta::deleted_job(0, "a"), meta::deleted_job(0, "z"));
        assert!(
            !meta::range_has_jobs(&t1, &t2),
            "tombstones are not job records"
        );
        assert!(meta::range_has_jobs(&j, &meta::job(0, "k")));
        assert!(meta::range_has_jobs(b"a", b"z"), "spans the job keys");
        let (d1, d2) = (meta::dedupe(7, 1), meta::dedupe(7, 9));
        assert!(!meta::range_has_jobs(&d1, &d2), "a client's dedupe range");
    }

    #[test]
    fn no_kind_of_meta_record_starts_with_another_kinds_prefix() {
        use super::meta::*;
        // Each kind with a sample key; walks by prefix (session expiry,
        // grants, tasks, streams) must meet only their own kind.
        let kinds: Vec<(&str, Vec<u8>)> = vec![
            ("m/", APPLIED.to_vec()),
            ("j/", job(0, "j")),
            ("jd/", deleted_job(0, "j")),
            ("a/", grant("p", 1, "j")),
            ("t/", [SESSION_TIME_PREFIX, &[0u8; 16]].concat()),
            ("tk/", task(0, 1, 2)),
            ("st/", stream(0, 1, "s")),
            ("sp/", partition(0, 1, 2, 3)),
            ("pr/", producer(0, 1, 2, 3, 4)),
            ("sn/", next_stream_id(0, 1)),
            ("sd/", deleted_stream(0, 1, 2)),
            ("s/", session(7)),
            ("d/", dedupe(7, 8)),
        ];
        for (prefix, key) in &kinds {
            assert!(key.starts_with(prefix.as_bytes()), "{prefix}");
            for (other, _) in &kinds {
                if other != prefix {
                    assert!(
                        !key.starts_with(other.as_bytes()),
                        "a {prefix} key starts with {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_record_of_a_job_is_under_one_of_its_prefixes() {
        use super::meta::*;
        let (shard, job) = (0, 0x0102_03ff);
        let prefixes = job_record_prefixes(shard, job);
        let records = [
            task(shard, job, u32::MAX),
            stream(shard, job, "s"),
            partition(shard, job, 7, 3),
            producer(shard, job, 7, 3, u64::MAX),
            lease_answer(&lease_answers(shard, job, 2, 9), 1, 1),
            lease_mark(&lease_marks(shard, job, 2, 9), 1),
            promotions(shard, job),
            next_stream_id(shard, job),
            deleted_stream(shard, job, 7),
        ];
        for r in &records {
            assert!(
                prefixes.iter().any(|p| r.starts_with(p)),
                "{r:?} is under none of the job's prefixes"
            );
        }
        // Nothing of the next job, or of the job's neighbours in name
        // order, is under them.
        for other in [job + 1, job - 1] {
            for r in [task(shard, other, 0), partition(shard, other, 0, 0)] {
                assert!(!prefixes.iter().any(|p| r.starts_with(p)));
            }
        }
        assert!(!prefixes.iter().any(|p| is_job(p) || is_auth(p)));
        let data = data_key(shard, job, u16::MAX, u32::MAX, &[0xff; 4]);
        let end = prefix_end(&job_prefix(shard, job)).unwrap();
        assert!(data.as_slice() < end.as_slice() && data.starts_with(&job_prefix(shard, job)));
        assert!(job_prefix(shard, job + 1) >= end);
        // A stream's records and meta records are under its own prefixes,
        // and nothing of the stream after it.
        let of_stream = stream_record_prefixes(shard, job, 7);
        for r in [partition(shard, job, 7, 3), producer(shard, job, 7, 3, 1)] {
            assert!(of_stream.iter().any(|p| r.starts_with(p)));
        }
        for r in [partition(shard, job, 8, 0), producer(shard, job, 6, 0, 1)] {
            assert!(!of_stream.iter().any(|p| r.starts_with(p)));
        }
        assert!(record_key(shard, job, 7, 3, 9).starts_with(&stream_records_prefix(shard, job, 7)));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    #[test]
    fn key_group_is_stable_and_in_range() {
        // Fixed forever: if these change, every stored key moves group.
        // Computed once with Python's `xxhash.xxh3_64_intdigest` (an
        // implementation independent of ours), modulo each count.
        let counts = [1, 7, 128, 32768];
        let golden: [(&[u8], [u16; 4]); 5] = [
            (b"user42", [0, 1, 124, 9852]),
            (b"", [0, 4, 66, 5314]),
            (b"a", [0, 1, 31, 19999]),
            (b"order-1000017", [0, 6, 124, 26236]),
            (
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                [0, 5, 91, 28891],
            ),
        ];
        for (key, groups) in golden {
            for (n, want) in counts.iter().zip(groups) {
                assert_eq!(key_group(key, *n), want, "key {key:?}, {n} groups");
            }
        }
        for k in 0..1000u32 {
            assert!(key_group(&k.to_be_bytes(), 7) < 7);
        }
        assert_eq!(key_group(b"anything", 1), 0);
    }

    #[test]
    fn groups_of_a_job_are_contiguous_and_ordered() {
        let a = data_key(0, 1, 3, 9, b"zzz");
        let b = data_key(0, 1, 4, 1, b"aaa");
        let other_job = data_key(0, 2, 0, 0, b"");
        assert!(a < b && b < other_job);
        assert_eq!(user_key(&a), b"zzz");
    }

    #[test]
    fn staged_runs_sort_by_seq_within_an_epoch_and_epochs_are_contiguous() {
        let e1 = staged_prefix(0, 3, 5, 2, 1);
        let (a, b) = (staged_run_key(&e1, 9), staged_run_key(&e1, 300));
        assert!(a.starts_with(&e1) && a < b);
        assert_eq!(
            (first_seq_of_run(&a), first_seq_of_run(&b)),
            (Some(9), Some(300))
        );
        assert_eq!(first_seq_of_run(&e1), None);
        // Epoch 1 of generation 2 sorts before epoch 2, and both before
        // generation 3: one range per epoch, one per older generations.
        let e2 = staged_prefix(0, 3, 5, 2, 2);
        assert!(b < e2 && e2 < staged_prefix(0, 3, 5, 3, 0));
    }

    #[test]
    fn value_round_trip_and_corruption() {
        let v = StoredValue {
            version: 3,
            mod_index: 77,
            value: b"hello".to_vec(),
        };
        assert_eq!(StoredValue::decode(&v.encode()).unwrap(), v);
        assert!(StoredValue::decode(&[1, 2, 3]).is_err());
        assert_eq!(StoredValue::version_of(&v.encode()).unwrap(), 3);
        assert!(StoredValue::version_of(&[0; 15]).is_err());
    }
}
