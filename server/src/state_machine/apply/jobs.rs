//! Jobs and their state tables.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command_response};
use tonic::Code;

use super::{error_response, At};
use crate::keys::{self, meta, DEFAULT_KEY_GROUPS, MAX_KEY_GROUPS, MAX_TABLES};
use crate::state_machine::meta::{self as m, CF_META};
use crate::state_machine::pending::PendingWrites;

/// The state-machine format from which a command that would give a job
/// more than [`MAX_TABLES`] tables, more than
/// [`MAX_STREAMS`](crate::keys::MAX_STREAMS) streams or a task at an index
/// not below its key-group count is refused; older entries apply as they
/// did.
pub const JOB_LIMITS_FORMAT: u32 = 8;

/// A command would give its job a table past [`MAX_TABLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTables;

/// The refusal of a command that would give `job` one table too many.
pub fn too_many_tables(job: &str) -> pb::CommandResponse {
    error_response(
        Code::ResourceExhausted,
        format!(
            "job {job:?} has {MAX_TABLES} state tables, the most a job may have: \
             write to one of them"
        ),
    )
}

pub fn load_job(p: &mut PendingWrites, shard: u32, name: &str) -> io::Result<Option<pb::JobInfo>> {
    match p.get(CF_META, &meta::job(shard, name))? {
        None => Ok(None),
        Some(raw) => m::decode_job(&raw, name).map(Some),
    }
}

pub fn create_job(
    p: &mut PendingWrites,
    at: At,
    c: &pb::CreateJob,
) -> io::Result<pb::CommandResponse> {
    let (index, format) = (at.index, at.format);
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
    if let Some(bad) = c.tables.iter().find(|t| known_mode(t.mode).is_none()) {
        return Ok(bad_mode(bad));
    }
    if let Some(bad) = c.tables.iter().find(|t| !known_placement(t.placement)) {
        return Ok(bad_placement(bad));
    }
    let job_id = match p.get(CF_META, meta::NEXT_JOB_ID)? {
        None => 1,
        Some(raw) => m::decode_u32(&raw)?,
    };
    let mut info = pb::JobInfo {
        job: c.job.clone(),
        job_id,
        key_groups,
        states: Vec::new(),
        created_index: index,
    };
    for t in &c.tables {
        if let Err(refused) = declare(&mut info, t, format) {
            return Ok(refused.response(&c.job, &t.state));
        }
    }
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

/// The id of state table `name`, made on its first write: `Ok(None)` only
/// for a table that does not exist and is not to be made (a delete), `Err`
/// for a table past [`MAX_TABLES`] (from
/// [`JOB_LIMITS_FORMAT`]). Sets `changed` when `job` gained a table and
/// must be stored.
pub fn table_id(
    job: &mut pb::JobInfo,
    name: &str,
    create: bool,
    changed: &mut bool,
    format: u32,
) -> Result<Option<u32>, TooManyTables> {
    if let Some(sid) = m::state_id(job, name) {
        return Ok(Some(sid));
    }
    if !create {
        return Ok(None);
    }
    if format >= JOB_LIMITS_FORMAT && job.states.len() >= MAX_TABLES {
        return Err(TooManyTables);
    }
    let sid = job.states.iter().map(|s| s.state_id).max().unwrap_or(0) + 1;
    job.states.push(pb::StateTableInfo {
        name: name.to_string(),
        state_id: sid,
        default_mode: None,
        placement: pb::KeyPlacement::WholeKey as i32,
    });
    *changed = true;
    Ok(Some(sid))
}

pub fn store_job(p: &mut PendingWrites, shard: u32, job: &pb::JobInfo) -> io::Result<()> {
    p.put(CF_META, &meta::job(shard, &job.job), job.encode_to_vec())
}

/// The `WriteMode` of a replicated mode value, if this version knows it.
fn known_mode(mode: i32) -> Option<pb::WriteMode> {
    pb::WriteMode::try_from(mode).ok()
}

fn bad_mode(t: &pb::TableModeSet) -> pb::CommandResponse {
    error_response(
        Code::InvalidArgument,
        format!("table {:?}: {} is not a write mode", t.state, t.mode),
    )
}

/// Whether a replicated placement value is absent or one this version
/// knows.
fn known_placement(placement: Option<i32>) -> bool {
    placement.is_none_or(|p| pb::KeyPlacement::try_from(p).is_ok())
}

fn bad_placement(t: &pb::TableModeSet) -> pb::CommandResponse {
    error_response(
        Code::InvalidArgument,
        format!(
            "table {:?}: {} is not a key placement",
            t.state,
            t.placement.unwrap_or_default()
        ),
    )
}

/// Why a table's declaration was refused.
enum Refusal {
    TooManyTables,
    /// The table exists with placement `has`; the declaration names `asked`.
    PlacementFixed {
        has: i32,
        asked: i32,
    },
}

impl Refusal {
    fn response(&self, job: &str, state: &str) -> pb::CommandResponse {
        match *self {
            Self::TooManyTables => too_many_tables(job),
            Self::PlacementFixed { has, asked } => error_response(
                Code::FailedPrecondition,
                format!(
                    "table {state:?} of job {job:?} places keys by {}, fixed since it was made: \
                     declare a new table to place keys by {}",
                    placement_name(has),
                    placement_name(asked)
                ),
            ),
        }
    }
}

/// Table `t.state` of `job`, made if new, with default mode `t.mode` and
/// (for a new table) placement `t.placement`, both known. A placement
/// other than an existing table's is refused: its keys already sit in the
/// key groups their placement gave them.
fn declare(job: &mut pb::JobInfo, t: &pb::TableModeSet, format: u32) -> Result<(), Refusal> {
    let existing = m::state_id(job, &t.state).is_some();
    let mut changed = false;
    let sid = table_id(job, &t.state, true, &mut changed, format)
        .map_err(|TooManyTables| Refusal::TooManyTables)?
        .expect("made when absent");
    let table = job
        .states
        .iter_mut()
        .find(|s| s.state_id == sid)
        .expect("the table just found or made");
    if let Some(asked) = t.placement {
        if existing && table.placement != asked {
            return Err(Refusal::PlacementFixed {
                has: table.placement,
                asked,
            });
        }
        table.placement = asked;
    }
    table.default_mode = Some(t.mode);
    Ok(())
}

fn placement_name(p: i32) -> &'static str {
    match pb::KeyPlacement::try_from(p) {
        Ok(pb::KeyPlacement::WholeKey) => "the whole key",
        Ok(pb::KeyPlacement::Prefix) => "a length-prefixed placement key",
        Err(_) => "an unknown placement",
    }
}

/// Declares a table of a job, or changes its default write mode.
pub fn set_table_mode(
    p: &mut PendingWrites,
    at: At,
    s: &pb::TableModeSet,
) -> io::Result<pb::CommandResponse> {
    let Some(mut job) = load_job(p, keys::DEFAULT_SHARD, &s.job)? else {
        return Ok(super::not_found(crate::error::ServiceError::JobNotFound {
            job: s.job.clone(),
        }));
    };
    if known_mode(s.mode).is_none() {
        return Ok(bad_mode(s));
    }
    if !known_placement(s.placement) {
        return Ok(bad_placement(s));
    }
    if let Err(refused) = declare(&mut job, s, at.format) {
        return Ok(refused.response(&s.job, &s.state));
    }
    store_job(p, keys::DEFAULT_SHARD, &job)?;
    Ok(pb::CommandResponse {
        kind: Some(command_response::Kind::TableModeSet(job)),
    })
}

/// The job's tables a task session writes synchronously by default.
pub fn sync_tables(job: &pb::JobInfo) -> Vec<String> {
    job.states
        .iter()
        .filter(|t| t.default_mode == Some(pb::WriteMode::Sync as i32))
        .map(|t| t.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use streamshield_proto::v1::{self as pb, command, command_response, WriteMode};
    use tonic::Code;

    use super::super::fixture::Fixture;
    use crate::state_machine::meta::load_job;

    fn set(f: &mut Fixture, job: &str, state: &str, mode: i32) -> pb::CommandResponse {
        f.apply(pb::Command {
            kind: Some(command::Kind::SetTableMode(pb::TableModeSet {
                job: job.into(),
                state: state.into(),
                mode,
                placement: None,
            })),
        })
    }

    fn modes(f: &Fixture, job: &str) -> Vec<(String, u32, Option<i32>)> {
        load_job(&f.db, 0, job)
            .unwrap()
            .unwrap()
            .states
            .into_iter()
            .map(|t| (t.name, t.state_id, t.default_mode))
            .collect()
    }

    fn sync_tables_of_a_lease(f: &mut Fixture, job: &str) -> Vec<String> {
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::AcquireLease(pb::LeaseAcquire {
                job: job.into(),
                task: 0,
                key_group_start: 0,
                key_group_end: 1,
                ..Default::default()
            })),
        });
        match r.kind {
            Some(command_response::Kind::LeaseGranted(g)) => g.sync_tables,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn tables_declared_with_the_job_or_later_keep_their_ids_and_reach_each_new_lease() {
        let mut f = Fixture::new();
        let (sync, not) = (WriteMode::Sync as i32, WriteMode::Async as i32);
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "m".into(),
                key_groups: 4,
                tables: vec![
                    pb::TableModeSet {
                        job: "m".into(),
                        state: "counts".into(),
                        mode: sync,
                        placement: None,
                    },
                    pb::TableModeSet {
                        job: "m".into(),
                        state: "windows".into(),
                        mode: not,
                        placement: None,
                    },
                ],
            })),
        });
        assert!(matches!(
            r.kind,
            Some(command_response::Kind::JobCreated(_))
        ));
        assert_eq!(
            modes(&f, "m"),
            vec![
                ("counts".to_string(), 1, Some(sync)),
                ("windows".to_string(), 2, Some(not))
            ]
        );
        assert_eq!(sync_tables_of_a_lease(&mut f, "m"), vec!["counts"]);
        // A later declaration changes the mode, not the id; a new table
        // gets the next id.
        set(&mut f, "m", "windows", sync);
        set(&mut f, "m", "timers", not);
        assert_eq!(
            modes(&f, "m"),
            vec![
                ("counts".to_string(), 1, Some(sync)),
                ("windows".to_string(), 2, Some(sync)),
                ("timers".to_string(), 3, Some(not))
            ]
        );
        assert_eq!(
            sync_tables_of_a_lease(&mut f, "m"),
            vec!["counts", "windows"]
        );
    }

    #[test]
    fn a_mode_this_version_does_not_know_is_refused_and_changes_nothing() {
        let mut f = Fixture::new();
        let before = modes(&f, "j");
        for mode in [2, 7, -1, i32::MIN, i32::MAX] {
            match set(&mut f, "j", "t", mode).kind {
                Some(command_response::Kind::Error(e)) => {
                    assert_eq!(e.code, Code::InvalidArgument as i32, "{mode}")
                }
                other => panic!("mode {mode}: {other:?}"),
            }
        }
        assert_eq!(modes(&f, "j"), before);
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "bad".into(),
                key_groups: 4,
                tables: vec![pb::TableModeSet {
                    job: "bad".into(),
                    state: "t".into(),
                    mode: 9,
                    placement: None,
                }],
            })),
        });
        assert!(matches!(r.kind, Some(command_response::Kind::Error(_))));
        assert!(load_job(&f.db, 0, "bad").unwrap().is_none());
        match set(&mut f, "nope", "t", 0).kind {
            Some(command_response::Kind::Error(e)) => assert_eq!(e.code, Code::NotFound as i32),
            other => panic!("{other:?}"),
        }
    }

    fn write_to(f: &mut Fixture, tables: &[String], delete: bool) -> pb::CommandResponse {
        let ops = tables
            .iter()
            .map(|t| pb::SyncOp {
                state: t.clone(),
                key: b"k".to_vec(),
                kind: Some(if delete {
                    pb::sync_op::Kind::Delete(pb::SyncDelete {})
                } else {
                    pb::sync_op::Kind::Put(pb::SyncPut {
                        value: b"v".to_vec(),
                    })
                }),
            })
            .collect();
        f.write(pb::SyncWrite {
            job: "j".into(),
            ops,
            ..Default::default()
        })
    }

    fn code(r: &pb::CommandResponse) -> Option<Code> {
        match &r.kind {
            Some(command_response::Kind::Error(e)) => Some(Code::from_i32(e.code)),
            _ => None,
        }
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn a_job_has_at_most_max_tables_and_a_command_past_them_changes_nothing() {
        use super::super::task_tests::{acquire, granted, lease, stage};
        use super::MAX_TABLES;
        let mut f = Fixture::new();
        // One write fills the job; the next that names one more table is
        // refused whole: its op on an existing table does not apply.
        let mut full = names(0..MAX_TABLES - 1);
        full.insert(0, "s".into());
        assert_eq!(code(&write_to(&mut f, &full, false)), None);
        assert_eq!(modes(&f, "j").len(), MAX_TABLES);
        let before = f.get(b"k").unwrap();
        let ops = vec!["s".to_string(), "one-more".to_string()];
        assert_eq!(
            code(&write_to(&mut f, &ops, false)),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(f.get(b"k"), Some(before));
        assert_eq!(modes(&f, "j").len(), MAX_TABLES);
        // A delete in a table that does not exist makes none.
        assert_eq!(
            code(&write_to(&mut f, &names(MAX_TABLES..MAX_TABLES + 5), true)),
            None
        );
        // Declaring one more is refused; a declared one's mode still changes.
        let r = set(&mut f, "j", "one-more", WriteMode::Sync as i32);
        assert_eq!(code(&r), Some(Code::ResourceExhausted));
        assert_eq!(code(&set(&mut f, "j", "t7", WriteMode::Sync as i32)), None);
        // A staged write to a new table is refused at staging, before its
        // epoch could commit it.
        let g = granted(&acquire(&mut f, 0, (0, 4), "")).generation;
        let mut op = super::super::task_tests::put("k", "v");
        op.state = "one-more".into();
        let r = stage(&mut f, lease(0, g), 1, 1, vec![op.clone()]);
        assert_eq!(code(&r), Some(Code::ResourceExhausted));
        op.state = "t3".into();
        assert_eq!(code(&stage(&mut f, lease(0, g), 1, 1, vec![op])), None);
        assert_eq!(modes(&f, "j").len(), MAX_TABLES);
        // A job declared with too many tables is not made.
        let tables = names(0..MAX_TABLES + 1)
            .into_iter()
            .map(|state| pb::TableModeSet {
                job: "big".into(),
                state,
                mode: 0,
                placement: None,
            })
            .collect();
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "big".into(),
                key_groups: 4,
                tables,
            })),
        });
        assert_eq!(code(&r), Some(Code::ResourceExhausted));
        assert!(load_job(&f.db, 0, "big").unwrap().is_none());
    }

    #[test]
    fn entries_from_before_the_table_limit_apply_as_they_did() {
        let mut f = Fixture::new();
        f.format = super::JOB_LIMITS_FORMAT - 1;
        assert_eq!(
            code(&write_to(&mut f, &names(0..super::MAX_TABLES + 3), false)),
            None
        );
        assert_eq!(modes(&f, "j").len(), super::MAX_TABLES + 3);
    }
}
