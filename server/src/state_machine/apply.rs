//! Applying one committed command to the state machine.
//!
//! Runs identically on every replica: it reads only replicated state and
//! the entry, and stages its effects in [`PendingWrites`] that the caller
//! commits together with the applied index. A command that cannot apply
//! (unknown job, failed condition) changes nothing but its answer, which is
//! recorded for deduplication like any other.

use std::io;

use prost::Message;
use streamshield_proto::v1::{self as pb, command, command_response, condition, op};
use tonic::Code;

use super::meta::{self as m, CF_DATA, CF_META};
use super::pending::PendingWrites;
use super::sessions;
use crate::keys::{self, meta, StoredValue, DEFAULT_KEY_GROUPS, MAX_KEY_GROUPS};
use crate::rocks::corrupt;

pub fn error_response(code: Code, message: impl Into<String>) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::Error(pb::CommandError {
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn write_response(w: pb::WriteResponse) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::Write(w)),
    }
}

/// Applies `cmd` carried by the entry at `index`, staging its effects.
/// An `Err` is a storage failure (the node must stop), never a bad command.
pub fn apply_command(
    p: &mut PendingWrites,
    index: u64,
    cmd: &pb::Command,
) -> io::Result<pb::CommandResponse> {
    apply_at(p, At { index, time_ms: 0 }, cmd)
}

/// Like [`apply_command`], at the leader time of the entry. An
/// `ExpireSessions` needs the store itself in step with every earlier
/// entry (see [`sessions::expire`]); the caller sees to that.
pub fn apply_at(
    p: &mut PendingWrites,
    at: At,
    cmd: &pb::Command,
) -> io::Result<pb::CommandResponse> {
    let batch = |answers| pb::CommandResponse {
        kind: Some(command_response::Kind::Batch(pb::BatchAnswers { answers })),
    };
    match &cmd.kind {
        Some(command::Kind::Write(w)) => apply_write(p, at, None, w),
        Some(command::Kind::CreateJob(c)) => create_job(p, at.index, c),
        Some(command::Kind::Batch(b)) => {
            let mut answers = Vec::with_capacity(b.writes.len());
            for w in &b.writes {
                answers.push(apply_write(p, at, None, w)?);
            }
            Ok(batch(answers))
        }
        Some(command::Kind::OwnedWrites(b)) => {
            let mut answers = Vec::with_capacity(b.writes.len());
            for o in &b.writes {
                answers.push(match &o.write {
                    Some(w) => apply_write(p, at, Some(&o.principal), w)?,
                    None => error_response(Code::InvalidArgument, "an owned write without a write"),
                });
            }
            Ok(batch(answers))
        }
        Some(command::Kind::Auth(change)) => super::auth::apply(p, at.index, change),
        Some(command::Kind::ExpireSessions(e)) => {
            let db = p.db();
            let n = sessions::expire(p, db, at.time_ms, e.idle_ms)?;
            Ok(pb::CommandResponse {
                kind: Some(command_response::Kind::SessionsExpired(n)),
            })
        }
        None => Ok(error_response(Code::InvalidArgument, "empty command")),
    }
}

fn load_job(p: &mut PendingWrites, shard: u32, name: &str) -> io::Result<Option<pb::JobInfo>> {
    match p.get(CF_META, &meta::job(shard, name))? {
        None => Ok(None),
        Some(raw) => m::decode_job(&raw, name).map(Some),
    }
}

fn create_job(
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

/// Where in the log a command is applied: its entry's index and the
/// proposing leader's clock (0 in entries from before the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub index: u64,
    pub time_ms: u64,
}

fn apply_write(
    p: &mut PendingWrites,
    at: At,
    owner: Option<&str>,
    w: &pb::WriteRequest,
) -> io::Result<pb::CommandResponse> {
    let index = at.index;
    if w.client_id == 0 {
        return write_outcome(p, index, w);
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
    if w.seq < forgotten {
        // Its answer may have been forgotten; applying it again could
        // apply it twice.
        return Ok(error_response(
            Code::FailedPrecondition,
            format!(
                "seq {} of client {} is below its acknowledged mark {forgotten}",
                w.seq, w.client_id
            ),
        ));
    }
    let resp = write_outcome(p, index, w)?;
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

fn write_outcome(
    p: &mut PendingWrites,
    index: u64,
    w: &pb::WriteRequest,
) -> io::Result<pb::CommandResponse> {
    let shard = w.shard;
    let Some(mut job) = load_job(p, shard, &w.job)? else {
        return Ok(error_response(
            Code::NotFound,
            format!("job {:?} does not exist", w.job),
        ));
    };
    // Nothing is staged before every op is known to be well formed, so a
    // bad op can never leave half a request behind.
    if w.ops.iter().any(|o| o.kind.is_none()) || w.conditions.iter().any(|c| c.test.is_none()) {
        return Ok(error_response(
            Code::InvalidArgument,
            "an op or condition has no kind",
        ));
    }
    let data_key = |job: &pb::JobInfo, state_id: u32, key: &[u8]| {
        let group = keys::key_group(key, job.key_groups);
        keys::data_key(shard, job.job_id, group, state_id, key)
    };

    for (i, c) in w.conditions.iter().enumerate() {
        let current = match m::state_id(&job, &c.state) {
            Some(sid) => read_value(p, &data_key(&job, sid, &c.key))?,
            None => None,
        };
        let holds = match c.test.as_ref().expect("checked above") {
            condition::Test::Absent(_) => current.is_none(),
            condition::Test::ValueEquals(v) => current.as_ref().is_some_and(|cur| &cur.value == v),
            condition::Test::VersionEquals(n) => {
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
                    key_group: u32::from(keys::key_group(&c.key, job.key_groups)),
                }),
            }));
        }
    }

    let mut versions = Vec::with_capacity(w.ops.len());
    let mut job_changed = false;
    for o in &w.ops {
        let is_put = matches!(o.kind, Some(op::Kind::Put(_)));
        let sid = match m::state_id(&job, &o.state) {
            Some(sid) => sid,
            None if is_put => {
                // State tables come into being on their first write.
                let sid = job.states.iter().map(|s| s.state_id).max().unwrap_or(0) + 1;
                job.states.push(pb::StateTableInfo {
                    name: o.state.clone(),
                    state_id: sid,
                });
                job_changed = true;
                sid
            }
            None => {
                versions.push(0);
                continue;
            }
        };
        let dk = data_key(&job, sid, &o.key);
        match o.kind.as_ref().expect("checked above") {
            op::Kind::Put(put) => {
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
            op::Kind::Delete(_) => {
                p.delete(CF_DATA, &dk)?;
                versions.push(0);
            }
        }
    }
    if job_changed {
        p.put(CF_META, &meta::job(shard, &job.job), job.encode_to_vec())?;
    }
    Ok(write_response(pb::WriteResponse {
        succeeded: true,
        index,
        versions,
        failed_condition: None,
        current: None,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rocksdb::{WriteOptions, DB};

    use super::*;
    use crate::rocks;
    use crate::state_machine::memo::ApplyMemo;

    /// A store applied to the way the apply path does, memo included.
    struct Fixture {
        _dir: tempfile::TempDir,
        db: DB,
        memo: Mutex<ApplyMemo>,
        index: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::state_machine::open_store(dir.path()).unwrap();
            let mut f = Self {
                _dir: dir,
                db,
                memo: Mutex::default(),
                index: 0,
            };
            let r = f.apply(pb::Command {
                kind: Some(command::Kind::CreateJob(pb::CreateJob {
                    job: "j".into(),
                    key_groups: 4,
                })),
            });
            assert!(matches!(
                r.kind,
                Some(command_response::Kind::JobCreated(_))
            ));
            f
        }

        fn apply(&mut self, cmd: pb::Command) -> pb::CommandResponse {
            self.index += 1;
            let mut p = PendingWrites::with_memo(&self.db, &self.memo);
            let r = apply_command(&mut p, self.index, &cmd).unwrap();
            p.write(&WriteOptions::default()).unwrap();
            r
        }

        /// Applies several commands as one chunk: one RocksDB write.
        fn apply_chunk(&mut self, cmds: Vec<pb::Command>) -> Vec<pb::CommandResponse> {
            let mut p = PendingWrites::with_memo(&self.db, &self.memo);
            let mut out = Vec::new();
            for cmd in cmds {
                self.index += 1;
                out.push(apply_command(&mut p, self.index, &cmd).unwrap());
            }
            p.write(&WriteOptions::default()).unwrap();
            out
        }

        fn write(&mut self, w: pb::WriteRequest) -> pb::CommandResponse {
            self.apply(pb::Command {
                kind: Some(command::Kind::Write(w)),
            })
        }

        fn get(&self, key: &[u8]) -> Option<pb::KeyValue> {
            let info = crate::state_machine::meta::load_job(&self.db, 0, "j").unwrap();
            crate::state_machine::read::get(&self.db, info.as_ref(), 0, "j", "s", key).unwrap()
        }
    }

    fn put(key: &[u8], value: &[u8]) -> pb::Op {
        pb::Op {
            state: "s".into(),
            key: key.to_vec(),
            kind: Some(op::Kind::Put(pb::Put {
                value: value.to_vec(),
            })),
        }
    }

    fn req(ops: Vec<pb::Op>) -> pb::WriteRequest {
        pb::WriteRequest {
            job: "j".into(),
            ops,
            ..Default::default()
        }
    }

    fn succeeded(r: &pb::CommandResponse) -> bool {
        matches!(&r.kind, Some(command_response::Kind::Write(w)) if w.succeeded)
    }

    #[test]
    fn versions_grow_per_write_and_reset_on_delete() {
        let mut f = Fixture::new();
        f.write(req(vec![put(b"k", b"a")]));
        f.write(req(vec![put(b"k", b"b"), put(b"k", b"c")]));
        let kv = f.get(b"k").unwrap();
        assert_eq!((kv.value.as_slice(), kv.version), (&b"c"[..], 3));
        let del = pb::Op {
            state: "s".into(),
            key: b"k".to_vec(),
            kind: Some(op::Kind::Delete(pb::Delete {})),
        };
        f.write(req(vec![del]));
        assert!(f.get(b"k").is_none());
        f.write(req(vec![put(b"k", b"d")]));
        assert_eq!(f.get(b"k").unwrap().version, 1);
    }

    #[test]
    fn versions_are_the_same_from_the_memo_and_from_the_store() {
        let mut f = Fixture::new();
        let del = || pb::Op {
            state: "s".into(),
            key: b"k".to_vec(),
            kind: Some(op::Kind::Delete(pb::Delete {})),
        };
        let versions = |r: &pb::CommandResponse| match &r.kind {
            Some(command_response::Kind::Write(w)) => w.versions.clone(),
            other => panic!("{other:?}"),
        };
        // Chunk after chunk (memo hits), a delete, and within one chunk.
        assert_eq!(versions(&f.write(req(vec![put(b"k", b"a")]))), [1]);
        assert_eq!(versions(&f.write(req(vec![put(b"k", b"b")]))), [2]);
        assert_eq!(versions(&f.write(req(vec![del()]))), [0]);
        assert_eq!(versions(&f.write(req(vec![put(b"k", b"c")]))), [1]);
        let chunk = f.apply_chunk(vec![
            pb::Command {
                kind: Some(command::Kind::Write(req(vec![put(b"k", b"d")]))),
            },
            pb::Command {
                kind: Some(command::Kind::Write(req(vec![put(b"k", b"e")]))),
            },
        ]);
        assert_eq!(versions(&chunk[1]), [3]);
        // A restart (or an install) starts with an empty memo: the store
        // answers, and the count goes on.
        f.memo = Mutex::default();
        assert_eq!(versions(&f.write(req(vec![put(b"k", b"f")]))), [4]);
        assert_eq!(f.get(b"k").unwrap().version, 4);
    }

    #[test]
    fn a_retry_is_answered_from_its_record_even_after_a_restart_and_newer_writes() {
        let mut f = Fixture::new();
        let write = |seq: u64, value: &[u8]| {
            let mut w = req(vec![put(b"k", value)]);
            w.client_id = 9;
            w.seq = seq;
            w
        };
        let five = f.write(write(5, b"a"));
        let six = f.write(write(6, b"b"));
        // A restart forgets the memo; then seq 4, never applied, comes
        // late. It is new and applies; the retried 6 must not.
        f.memo = Mutex::default();
        assert!(succeeded(&f.write(write(4, b"c"))));
        assert_eq!(
            f.write(write(6, b"b")),
            six,
            "seq 6 answered from its record"
        );
        assert_eq!(f.get(b"k").unwrap().version, 3, "5, 6 and 4: three puts");
        // And with the memo warm: 5 again is a retry, 7 is new.
        assert_eq!(f.write(write(5, b"d")), five);
        assert_eq!(f.get(b"k").unwrap().version, 3);
        assert!(succeeded(&f.write(write(7, b"e"))));
        assert_eq!(f.get(b"k").unwrap().version, 4);
    }

    #[test]
    fn only_creating_a_job_or_a_state_table_marks_job_records_changed() {
        let f = Fixture::new();
        let changed = |cmd: pb::Command, index: u64| {
            let mut p = PendingWrites::new(&f.db);
            apply_command(&mut p, index, &cmd).unwrap();
            let changed = p.jobs_changed();
            p.write(&WriteOptions::default()).unwrap();
            changed
        };
        let write = |w| pb::Command {
            kind: Some(command::Kind::Write(w)),
        };
        assert!(changed(write(req(vec![put(b"k", b"a")])), 2), "new table s");
        assert!(!changed(write(req(vec![put(b"k", b"b")])), 3), "s exists");
        let mut other = put(b"k", b"c");
        other.state = "t".into();
        assert!(changed(write(req(vec![other])), 4), "new table t");
        let job = pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "j2".into(),
                key_groups: 1,
            })),
        };
        assert!(changed(job, 5));
    }

    #[test]
    fn a_retried_request_applies_once() {
        let mut f = Fixture::new();
        let mut w = req(vec![put(b"k", b"x")]);
        w.client_id = 42;
        w.seq = 7;
        let first = f.write(w.clone());
        let again = f.write(w.clone());
        assert_eq!(first, again, "the recorded answer comes back");
        assert_eq!(f.get(b"k").unwrap().version, 1, "applied once");
        // Once acknowledged (acked_below passes it by a step), it is dropped.
        let recorded = |f: &Fixture, seq: u64| {
            let cf = rocks::cf(&f.db, CF_META).unwrap();
            f.db.get_cf(cf, meta::dedupe(42, seq)).unwrap().is_some()
        };
        let mut next = req(vec![put(b"other", b"y")]);
        next.client_id = 42;
        next.seq = 8;
        next.acked_below = 8;
        f.write(next.clone());
        assert!(recorded(&f, 7), "kept until a full step");
        next.seq = FORGET_STEP + 1;
        next.acked_below = FORGET_STEP;
        f.write(next);
        assert!(!recorded(&f, 7));
        assert!(recorded(&f, FORGET_STEP + 1));
        // A seq below the mark cannot be told apart from a replay: refused.
        let mut stale = req(vec![put(b"k", b"again")]);
        stale.client_id = 42;
        stale.seq = 7;
        match f.write(stale).kind {
            Some(command_response::Kind::Error(e)) => {
                assert_eq!(e.code, Code::FailedPrecondition as i32)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.get(b"k").unwrap().version, 1);
    }

    #[test]
    fn seqs_and_marks_at_the_top_of_the_range_apply_and_keep_the_mark() {
        let mut f = Fixture::new();
        let write = |seq: u64, acked_below: u64| {
            let mut w = req(vec![put(b"k", b"v")]);
            w.client_id = 777;
            w.seq = seq;
            w.acked_below = acked_below;
            w
        };
        assert!(succeeded(&f.write(write(u64::MAX - 1, u64::MAX - 1))));
        assert!(succeeded(&f.write(write(u64::MAX, u64::MAX))));
        let mark = sessions::load(&mut PendingWrites::new(&f.db), 777)
            .unwrap()
            .unwrap()
            .forgotten;
        assert_eq!(mark, u64::MAX - 1, "the mark never moves backwards");
        assert_eq!(f.get(b"k").unwrap().version, 2);
        // And a retry of the last one is still answered from its record.
        assert_eq!(
            f.write(write(u64::MAX, u64::MAX)),
            f.write(write(u64::MAX, u64::MAX))
        );
        assert_eq!(f.get(b"k").unwrap().version, 2);
    }

    #[test]
    fn failed_condition_writes_nothing() {
        let mut f = Fixture::new();
        f.write(req(vec![put(b"k", b"a")]));
        let mut w = req(vec![put(b"new", b"1"), put(b"k", b"b")]);
        w.conditions.push(pb::Condition {
            state: "s".into(),
            key: b"k".to_vec(),
            test: Some(condition::Test::ValueEquals(b"zzz".to_vec())),
        });
        let r = f.write(w);
        assert!(!succeeded(&r));
        match r.kind {
            Some(command_response::Kind::Write(w)) => {
                assert_eq!(w.failed_condition, Some(0));
                assert_eq!(w.current.unwrap().value, b"a");
            }
            other => panic!("{other:?}"),
        }
        assert!(f.get(b"new").is_none());
        assert_eq!(f.get(b"k").unwrap().value, b"a");
    }

    #[test]
    fn conditions_on_absent_keys_and_versions() {
        let mut f = Fixture::new();
        let cond = |test| pb::Condition {
            state: "s".into(),
            key: b"k".to_vec(),
            test: Some(test),
        };
        let mut w = req(vec![put(b"k", b"1")]);
        w.conditions.push(cond(condition::Test::Absent(true)));
        assert!(succeeded(&f.write(w.clone())));
        assert!(!succeeded(&f.write(w)), "no longer absent");
        let mut w = req(vec![put(b"k", b"2")]);
        w.conditions.push(cond(condition::Test::VersionEquals(1)));
        assert!(succeeded(&f.write(w.clone())));
        assert!(!succeeded(&f.write(w)), "version moved on");
    }

    #[test]
    fn unknown_job_is_not_found_and_job_names_are_unique() {
        let mut f = Fixture::new();
        let mut w = req(vec![put(b"k", b"1")]);
        w.job = "missing".into();
        match f.write(w).kind {
            Some(command_response::Kind::Error(e)) => assert_eq!(e.code, Code::NotFound as i32),
            other => panic!("{other:?}"),
        }
        let dup = f.apply(pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "j".into(),
                key_groups: 4,
            })),
        });
        match dup.kind {
            Some(command_response::Kind::Error(e)) => {
                assert_eq!(e.code, Code::AlreadyExists as i32)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entries_of_one_chunk_see_each_other() {
        let mut f = Fixture::new();
        let mut retried = req(vec![put(b"k", b"b")]);
        retried.client_id = 9;
        retried.seq = 1;
        retried.acked_below = 1;
        let write = |w: pb::WriteRequest| pb::Command {
            kind: Some(command::Kind::Write(w)),
        };
        let out = f.apply_chunk(vec![
            write(req(vec![put(b"k", b"a")])),
            write(retried.clone()),
            write(retried),
            write(req(vec![put(b"k", b"c")])),
        ]);
        let versions: Vec<Vec<u64>> = out
            .iter()
            .map(|r| match &r.kind {
                Some(command_response::Kind::Write(w)) => w.versions.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // The retry in the same chunk is answered from the dedupe record.
        assert_eq!(versions, vec![vec![1], vec![2], vec![2], vec![3]]);
        let kv = f.get(b"k").unwrap();
        assert_eq!((kv.value.as_slice(), kv.version), (&b"c"[..], 3));
    }

    #[test]
    fn a_batch_applies_each_write_on_its_own_in_order() {
        let mut f = Fixture::new();
        let mut cas = req(vec![put(b"k", b"second")]);
        cas.conditions = vec![pb::Condition {
            state: "s".into(),
            key: b"k".to_vec(),
            test: Some(condition::Test::VersionEquals(1)),
        }];
        let mut stale_cas = cas.clone();
        stale_cas.ops = vec![put(b"k", b"never")];
        let mut unknown_job = req(vec![put(b"x", b"y")]);
        unknown_job.job = "nope".into();
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::Batch(pb::WriteBatch {
                writes: vec![req(vec![put(b"k", b"first")]), cas, stale_cas, unknown_job],
            })),
        });
        let Some(command_response::Kind::Batch(b)) = r.kind else {
            panic!("{r:?}")
        };
        assert_eq!(b.answers.len(), 4);
        assert!(succeeded(&b.answers[0]) && succeeded(&b.answers[1]));
        // The third saw the second's version 2, so its condition failed.
        assert!(!succeeded(&b.answers[2]));
        assert!(matches!(
            &b.answers[3].kind,
            Some(command_response::Kind::Error(e)) if e.code == Code::NotFound as i32
        ));
        let kv = f.get(b"k").unwrap();
        assert_eq!((kv.value.as_slice(), kv.version), (&b"second"[..], 2));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn extreme() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(u64::MAX),
                Just(u64::MAX - 1),
                Just(FORGET_STEP),
                0u64..8,
                any::<u64>(),
            ]
        }

        fn op() -> impl Strategy<Value = pb::Op> {
            (
                prop_oneof![Just("s".to_string()), Just("t".to_string()), ".{0,8}"],
                proptest::collection::vec(any::<u8>(), 0..8),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                any::<bool>(),
            )
                .prop_map(|(state, key, value, has_kind)| pb::Op {
                    state,
                    key,
                    kind: has_kind.then_some(match value {
                        Some(value) => op::Kind::Put(pb::Put { value }),
                        None => op::Kind::Delete(pb::Delete {}),
                    }),
                })
        }

        fn write() -> impl Strategy<Value = pb::WriteRequest> {
            (
                prop_oneof![Just("j".to_string()), ".{0,4}"],
                proptest::collection::vec(op(), 0..4),
                extreme(),
                extreme(),
                extreme(),
                proptest::option::of((extreme(), any::<bool>())),
                any::<u32>(),
            )
                .prop_map(|(job, ops, client_id, seq, acked_below, cond, shard)| {
                    let conditions = cond
                        .map(|(v, absent)| pb::Condition {
                            state: "s".into(),
                            key: b"k".to_vec(),
                            test: Some(if absent {
                                condition::Test::Absent(true)
                            } else {
                                condition::Test::VersionEquals(v)
                            }),
                        })
                        .into_iter()
                        .collect();
                    pb::WriteRequest {
                        job,
                        ops,
                        conditions,
                        client_id,
                        seq,
                        acked_below,
                        shard: shard % 2,
                        ..Default::default()
                    }
                })
        }

        fn command() -> impl Strategy<Value = pb::Command> {
            prop_oneof![
                write().prop_map(|w| pb::Command {
                    kind: Some(command::Kind::Write(w))
                }),
                proptest::collection::vec(write(), 0..4).prop_map(|writes| pb::Command {
                    kind: Some(command::Kind::Batch(pb::WriteBatch { writes }))
                }),
                (".{0,4}", prop_oneof![Just(0u32), Just(u32::MAX), 1u32..64]).prop_map(
                    |(job, key_groups)| pb::Command {
                        kind: Some(command::Kind::CreateJob(pb::CreateJob { job, key_groups }))
                    }
                ),
                Just(pb::Command { kind: None }),
            ]
        }

        type Rows = Vec<(Box<[u8]>, Box<[u8]>)>;

        fn data_cf(f: &Fixture) -> Rows {
            let cf = rocks::cf(&f.db, CF_DATA).unwrap();
            f.db.iterator_cf(cf, rocksdb::IteratorMode::Start)
                .map(|kv| kv.unwrap())
                .collect()
        }

        proptest! {
            /// Whatever the commands, apply answers every one (a storage
            /// error is the only `Err`), and one answered with an error
            /// left the visible data as it was.
            #[test]
            fn any_command_applies_or_is_refused_leaving_data_unchanged(
                cmds in proptest::collection::vec(command(), 1..12)
            ) {
                let mut f = Fixture::new();
                for cmd in cmds {
                    let before = data_cf(&f);
                    let r = f.apply(cmd);
                    if let Some(command_response::Kind::Error(_)) = r.kind {
                        prop_assert_eq!(before, data_cf(&f));
                    }
                }
            }
        }
    }
}
