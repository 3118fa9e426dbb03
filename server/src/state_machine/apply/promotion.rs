//! Promotion: moving a committed epoch's staged writes into `data` and
//! its staged output records into their stream partitions.
//!
//! An epoch within [`STEP`] (bytes staged and writes) is promoted by its
//! commit, in the commit's own apply. A larger one would hold every entry behind
//! its commit for as long as its promotion takes (0.6 s for 64 MiB before
//! this existed) and hold all of it in memory at once. Its commit records
//! the checkpoint and the outputs and a [`pb::Promotion`] in the task
//! record instead; then `EpochPromote` entries, proposed one after another
//! by the leader (`service::promotion`), each move the next
//! [`STEP`] of staged runs, in seq order, into `data`, and appends the
//! output records among them to their partitions (a step's records come
//! after the previous step's; other producers' may come between). Other
//! entries apply between the steps, and no apply holds more than a step.
//!
//! From the commit to the last step the epoch is committed but not yet all
//! in `data`. So that nobody sees part of it, the job's
//! [`pb::JobPromotions`] record names the task's key groups and the
//! partitions its records went to, and:
//!
//! * reads of those key groups wait until the promotion is over, on every
//!   replica (`SmShared::settled`);
//! * readers of those partitions see records up to where the promotion
//!   began appending, and the rest when it is over ([`hold`],
//!   `SmShared::read_with_promotions`): a consumer gets an epoch's outputs
//!   whole, when its state becomes readable, as with an epoch within a
//!   step;
//! * sync writes to them, the task's next commit and a lease of another
//!   task over them are refused with `UNAVAILABLE` and a pause to retry
//!   after: a later step would overwrite such a write with an older one;
//! * a new lease of the task itself keeps the promotion and the runs it
//!   still needs (the commit stands whoever holds the task next).
//!
//! Steps are entries, so every replica promotes the same runs at the same
//! index; a duplicate step (two leaders) promotes the next part or, when
//! none is left, nothing. A key written in two steps of one epoch gets two
//! versions; readers never see the first.

use std::io;

use bytes::Bytes;
use prost::Message;
use streamshield_proto::v1::{self as pb, command_response, error_detail};
use tonic::Code;

use super::{jobs, leases, refusal, streams, At};
use crate::keys::{self, meta, DEFAULT_SHARD};
use crate::rocks::corrupt;
use crate::state_machine::meta::{self as m, CF_META, CF_STAGED};
use crate::state_machine::pending::PendingWrites;

/// The first state-machine format whose commits promote large epochs in
/// steps: a commit in an older entry promotes inline, as it did when it
/// was written, so a log replayed by a newer node applies alike.
pub const FORMAT: u32 = 4;
/// How much one apply promotes at most: a commit promotes its epoch in
/// its own apply when the epoch is within this, and each step moves at
/// most this much (it stops after the run that reaches it). The writes
/// bound is about 30 ms of apply per replica (`cargo bench -p
/// streamshield-server --bench hot_paths -- "epoch apply"`: 10,000 writes
/// of 64 B staged and promoted in 18 ms); the epoch-commit bench's 1 MiB
/// epoch of 1 KiB values is promoted inline.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Staged bytes (data keys and values, as `StageWrites` counted them;
    /// for a step, the runs read).
    pub bytes: usize,
    pub writes: u64,
}

pub const STEP: Bound = Bound {
    bytes: 2 << 20,
    writes: 16_384,
};

/// No bound: the whole epoch in one apply.
pub const WHOLE: Bound = Bound {
    bytes: usize::MAX,
    writes: u64::MAX,
};

/// Whether a commit of `writes` writes and `bytes` staged bytes, in an
/// entry of `format`, promotes in steps after it.
pub fn in_steps(format: u32, writes: u64, bytes: u64) -> bool {
    format >= FORMAT && (bytes > STEP.bytes as u64 || writes > STEP.writes)
}

/// The first state-machine format whose promotions in steps hold their
/// records back from readers until the last step: an older entry's steps
/// showed them as they came, and a log replayed by a newer node applies
/// alike.
pub const HOLD_FORMAT: u32 = 6;

/// What a refused write or commit is told to wait before it tries again:
/// about one step.
pub const RETRY_AFTER_MS: u32 = 20;

/// Where a promotion left off.
pub struct Progress {
    /// Data keys written.
    pub promoted: u64,
    /// Staged bytes (keys and runs) consumed.
    pub bytes: u64,
    /// The first seq of the next run; `None` when none is left.
    pub next_seq: Option<u64>,
    /// The partitions records were appended to, each from its first
    /// offset.
    pub appended: Vec<pb::HeldPartition>,
}

/// Output records (key, value) per (stream id, partition), in seq order.
type Outputs = Vec<((u32, u32), Vec<(Bytes, Bytes)>)>;

/// One committed epoch's staged runs.
pub struct EpochRuns<'a> {
    /// Where the runs start (`keys::staged_prefix`) and end (the next
    /// epoch's prefix).
    pub prefix: &'a [u8],
    pub end: &'a [u8],
    /// Writes past it are left out (staged beyond what the commit said the
    /// epoch holds).
    pub last_seq: u64,
    /// The index promoted keys record as their change: the commit's.
    pub mod_index: u64,
}

/// Moves the runs from `from_seq` on, in seq order, up to `bound`: into
/// `data` the newest write of each key among them, and to their stream
/// partitions the output records, in seq order, at the time of `at`.
/// The runs it moved are deleted.
pub fn promote_runs(
    p: &mut PendingWrites,
    at: At,
    job: &pb::JobInfo,
    epoch: &EpochRuns,
    from_seq: u64,
    bound: Bound,
) -> io::Result<Progress> {
    let (prefix, end, last_seq) = (epoch.prefix, epoch.end, epoch.last_seq);
    let from = keys::staged_run_key(prefix, from_seq);
    let (runs, mut more) = p.scan_range(CF_STAGED, &from, end, bound.bytes)?;
    // The runs in seq order, each write over the ones before it: the
    // newest write of each key, then one version per key. Keys and values
    // stay slices of the runs read (`bytes` fields).
    let mut newest: foldhash::HashMap<Bytes, Option<Bytes>> = Default::default();
    let mut outputs = Outputs::new();
    // Where each partition's records are in `outputs`.
    let mut partitions: foldhash::HashMap<(u32, u32), usize> = Default::default();
    let mut bytes = 0u64;
    let mut writes = 0u64;
    let mut next = from_seq;
    for (key, raw) in runs {
        let first = keys::first_seq_of_run(&key)
            .ok_or_else(|| corrupt("a staged run's key holds no seq"))?;
        if writes >= bound.writes {
            // The rest of what was read waits for the next step.
            next = first;
            more = true;
            break;
        }
        bytes += (key.len() + raw.len()) as u64;
        let run = pb::StagedRun::decode(Bytes::from(raw))
            .map_err(|e| corrupt(format!("staged run: {e}")))?;
        next = first.saturating_add(run.entries.len() as u64);
        writes += run.entries.len() as u64;
        for (i, e) in run.entries.into_iter().enumerate() {
            if first.saturating_add(i as u64) > last_seq {
                break;
            }
            if let Some(o) = e.output {
                let to = (o.stream_id, o.partition);
                let at = *partitions.entry(to).or_insert_with(|| {
                    outputs.push((to, Vec::new()));
                    outputs.len() - 1
                });
                outputs[at].1.push((o.key, o.value));
            } else if !e.data_key.is_empty() {
                newest.insert(e.data_key, e.value);
            }
        }
    }
    let promoted = newest.len() as u64;
    metrics::counter!("streamshield_promoted_keys_total").increment(promoted);
    // In no particular order: the chunk's data writes reach RocksDB sorted
    // (`PendingWrites::write`).
    p.write_versions(
        newest.iter().map(|(k, v)| (k.as_ref(), v.as_deref())),
        epoch.mod_index,
    )?;
    let appended = append_outputs(p, at, job, outputs)?;
    if more {
        p.delete_range(CF_STAGED, &from, &keys::staged_run_key(prefix, next))?;
    } else {
        p.delete_range(CF_STAGED, prefix, end)?;
    }
    Ok(Progress {
        promoted,
        bytes,
        next_seq: more.then_some(next),
        appended,
    })
}

/// Appends staged output records to their partitions; returns where each
/// partition's records begin. Staging checked each one's partition, so
/// one missing is either a stream deleted since (its outputs are dropped
/// with it) or damage.
fn append_outputs(
    p: &mut PendingWrites,
    at: At,
    job: &pb::JobInfo,
    outputs: Outputs,
) -> io::Result<Vec<pb::HeldPartition>> {
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    let mut appended = Vec::with_capacity(outputs.len());
    let known = streams::streams_by_id(p, job)?;
    for ((stream_id, partition), records) in outputs {
        let found = known
            .iter()
            .find(|s| s.stream_id == stream_id && partition < s.partitions)
            .cloned();
        let stream = match found {
            Some(s) => s,
            None if streams::was_deleted(p, job.job_id, stream_id)? => {
                metrics::counter!("streamshield_stream_records_dropped_total")
                    .increment(records.len() as u64);
                continue;
            }
            None => {
                return Err(corrupt(format!(
                    "a staged output names partition {partition} of stream id {stream_id}, which job {:?} does not have",
                    job.job
                )))
            }
        };
        let mut target = streams::partition_target(p, job, stream, partition)?;
        let records: Vec<(&[u8], &[u8])> = records
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        let from_offset = streams::append_records(p, at, job, partition, &mut target, &records)?;
        appended.push(pb::HeldPartition {
            stream_id,
            partition,
            from_offset,
        });
    }
    Ok(appended)
}

/// Holds back from readers the records a promotion in steps appended at
/// `appended` (and every record after them in those partitions) until
/// its last step. A partition held already keeps its first offset.
pub fn hold(
    p: &mut PendingWrites,
    at: At,
    job: &pb::JobInfo,
    task: u32,
    appended: &[pb::HeldPartition],
) -> io::Result<()> {
    if appended.is_empty() || at.format < HOLD_FORMAT {
        return Ok(());
    }
    let Some(mut list) = load(p, job)? else {
        return Err(corrupt("a promotion's records are held without its record"));
    };
    let Some(entry) = list.tasks.iter_mut().find(|t| t.task == task) else {
        return Err(corrupt("a promotion's records are held without its task"));
    };
    let mut changed = false;
    for a in appended {
        let held = entry
            .held
            .iter()
            .any(|h| h.stream_id == a.stream_id && h.partition == a.partition);
        if !held {
            entry.held.push(*a);
            changed = true;
        }
    }
    if changed {
        store(p, job.job_id, &list)?;
    }
    Ok(())
}

/// Starts the promotion of the task's epoch just committed at `at`: the
/// record the steps follow, and the job's list that readers and writers
/// check.
pub fn start(
    p: &mut PendingWrites,
    at: At,
    job: &pb::JobInfo,
    task: &mut pb::TaskRecord,
    epoch: u64,
    last_seq: u64,
    bytes: u64,
) -> io::Result<()> {
    task.promoting = Some(pb::Promotion {
        generation: task.generation,
        epoch,
        last_seq,
        commit_index: at.index,
        next_seq: 1,
        promoted: 0,
        bytes_left: bytes,
    });
    let mut list = load(p, job)?.unwrap_or_else(|| pb::JobPromotions {
        job: job.job.clone(),
        job_id: job.job_id,
        tasks: Vec::new(),
    });
    list.tasks.retain(|t| t.task != task.task);
    list.tasks.push(pb::PromotingTask {
        task: task.task,
        key_group_start: task.key_group_start,
        key_group_end: task.key_group_end,
        generation: task.generation,
        epoch,
        held: Vec::new(),
    });
    store(p, job.job_id, &list)?;
    metrics::counter!("streamshield_promotions_started_total").increment(1);
    Ok(())
}

/// Applies one `EpochPromote` step.
pub fn step(
    p: &mut PendingWrites,
    at: At,
    s: &pb::EpochPromote,
) -> io::Result<pb::CommandResponse> {
    let answer = |promoted, done| pb::CommandResponse {
        kind: Some(command_response::Kind::PromotionStep(pb::PromotionStep {
            promoted,
            done,
        })),
    };
    let Some(job) = jobs::load_job(p, DEFAULT_SHARD, &s.job)? else {
        return Ok(answer(0, true));
    };
    let Some(mut task) = leases::load_task(p, job.job_id, s.task)? else {
        return Ok(answer(0, true));
    };
    let Some(mut promo) = task
        .promoting
        .filter(|m| m.generation == s.generation && m.epoch == s.epoch)
    else {
        // Over already: a duplicate from another leader.
        return Ok(answer(0, true));
    };
    let prefix = keys::staged_prefix(
        DEFAULT_SHARD,
        job.job_id,
        task.task,
        promo.generation,
        promo.epoch,
    );
    let end = epoch_end(job.job_id, task.task, &promo);
    let runs = EpochRuns {
        prefix: &prefix,
        end: &end,
        last_seq: promo.last_seq,
        mod_index: promo.commit_index,
    };
    let done = promote_runs(p, at, &job, &runs, promo.next_seq, STEP)?;
    metrics::counter!("streamshield_promotion_steps_total").increment(1);
    if done.next_seq.is_some() {
        hold(p, at, &job, task.task, &done.appended)?;
    }
    promo.promoted += done.promoted;
    promo.bytes_left = promo.bytes_left.saturating_sub(done.bytes);
    match done.next_seq {
        Some(next) => {
            promo.next_seq = next;
            task.promoting = Some(promo);
        }
        None => {
            task.promoting = None;
            finish(p, &job, task.task)?;
        }
    }
    let over = task.promoting.is_none();
    leases::store_task(p, job.job_id, &task)?;
    Ok(answer(done.promoted, over))
}

/// The bound of a promoting epoch's runs: the next epoch's prefix.
pub fn epoch_end(job_id: u32, task: u32, promo: &pb::Promotion) -> Vec<u8> {
    // A committed epoch is below u64::MAX (`epochs::commit` refuses it).
    keys::staged_prefix(
        DEFAULT_SHARD,
        job_id,
        task,
        promo.generation,
        promo.epoch.saturating_add(1),
    )
}

fn finish(p: &mut PendingWrites, job: &pb::JobInfo, task: u32) -> io::Result<()> {
    let Some(mut list) = load(p, job)? else {
        return Ok(());
    };
    if list
        .tasks
        .iter()
        .any(|t| t.task == task && !t.held.is_empty())
    {
        // Subscribers of the held partitions wake to what they may read now.
        p.streams_changed();
    }
    list.tasks.retain(|t| t.task != task);
    if list.tasks.is_empty() {
        p.delete(CF_META, &meta::promotions(DEFAULT_SHARD, job.job_id))
    } else {
        store(p, job.job_id, &list)
    }
}

pub fn load(p: &mut PendingWrites, job: &pb::JobInfo) -> io::Result<Option<pb::JobPromotions>> {
    match p.get(CF_META, &meta::promotions(DEFAULT_SHARD, job.job_id))? {
        None => Ok(None),
        Some(raw) => pb::JobPromotions::decode(raw.as_slice())
            .map(Some)
            .map_err(|e| corrupt(format!("promotions record: {e}"))),
    }
}

fn store(p: &mut PendingWrites, job_id: u32, list: &pb::JobPromotions) -> io::Result<()> {
    p.put(
        CF_META,
        &meta::promotions(DEFAULT_SHARD, job_id),
        list.encode_to_vec(),
    )
}

/// The refusal of a sync write with a key in a key group being promoted,
/// if it has one: a later step would overwrite it with an older value. A
/// transient refusal: callers do not record it as the write's answer.
pub fn refuse_write(
    p: &mut PendingWrites,
    w: &pb::SyncWrite,
) -> io::Result<Option<pb::CommandResponse>> {
    let Some(job) = jobs::load_job(p, w.shard, &w.job)? else {
        return Ok(None);
    };
    let Some(list) = load(p, &job)? else {
        return Ok(None);
    };
    for o in &w.ops {
        // A key its table refuses is refused by the write itself.
        let Some(group) = m::key_group(&job, &o.state, &o.key).map(u32::from) else {
            continue;
        };
        if let Some(t) = list
            .tasks
            .iter()
            .find(|t| (t.key_group_start..t.key_group_end).contains(&group))
        {
            return Ok(Some(busy(format!(
                "key group {group} is being promoted (epoch {} of task {}); retry in {RETRY_AFTER_MS} ms",
                t.epoch, t.task
            ))));
        }
    }
    Ok(None)
}

/// A refusal that says to retry after a pause: nothing was applied.
pub fn busy(message: String) -> pb::CommandResponse {
    refusal(
        Code::Unavailable,
        message,
        Some(error_detail::Kind::Overloaded(pb::Overloaded {
            retry_after_ms: RETRY_AFTER_MS,
        })),
    )
}
