//! Deduplication of a task's sync writes, scoped to its lease.
//!
//! A sync write that carries a lease (a task session's SYNC tables) keeps
//! its recorded answer under the lease's generation, not in the writing
//! client's dedupe session: the lease is checked before any answer is
//! looked up, so a replaced holder reads none; the answers live exactly as
//! long as the lease (a new lease of the task drops the older
//! generations', `leases::acquire`), with no TTL of their own; and no
//! client session is made or touched for them. The client id stays in the
//! key, so two clients of one holder never share seqs.
//!
//! Answers below the client's `acked_below` are forgotten in steps of
//! [`FORGET_STEP`], as a session's are; a write below the mark is refused,
//! since its answer may be gone.

use std::io;

use prost::Message;
use streamshield_proto::v1 as pb;

use super::kv::{first_outcome, FORGET_STEP};
use super::{jobs, leases, not_found, At};
use crate::error::ServiceError;
use crate::keys::meta;
use crate::rocks::corrupt;
use crate::state_machine::meta::CF_META;
use crate::state_machine::pending::PendingWrites;

/// The first state-machine format whose leased writes are deduplicated
/// under the lease; older entries used the client's session, and a log
/// replayed by a newer node applies them as they were.
pub const FORMAT: u32 = 4;

pub fn apply(
    p: &mut PendingWrites,
    at: At,
    owner: Option<&str>,
    w: &pb::SyncWrite,
    lease: &pb::SyncLease,
) -> io::Result<pb::CommandResponse> {
    let Some(job) = jobs::load_job(p, w.shard, &w.job)? else {
        return Ok(not_found(ServiceError::JobNotFound { job: w.job.clone() }));
    };
    // The lease before any recorded answer: a replaced holder reads none.
    if let Err(refused) = leases::check_write(p, &job, owner, lease, w)? {
        return Ok(refused);
    }
    let answers = meta::lease_answers(w.shard, job.job_id, lease.task, lease.generation);
    let key = meta::lease_answer(&answers, w.client_id, w.seq);
    if let Some(raw) = p.get(CF_META, &key)? {
        metrics::counter!("streamshield_writes_deduplicated_total").increment(1);
        return pb::CommandResponse::decode(raw.as_ref())
            .map_err(|e| corrupt(format!("lease dedupe record: {e}")));
    }
    let marks = meta::lease_marks(w.shard, job.job_id, lease.task, lease.generation);
    let mark_key = meta::lease_mark(&marks, w.client_id);
    let forgotten = match p.get(CF_META, &mark_key)? {
        None => 0,
        Some(raw) => u64::from_be_bytes(
            raw.as_slice()
                .try_into()
                .map_err(|_| corrupt("a lease dedupe mark is not 8 bytes"))?,
        ),
    };
    let resp = match first_outcome(p, at, owner, w, forgotten)? {
        Ok(resp) => resp,
        Err(unrecorded) => return Ok(unrecorded),
    };
    p.put(CF_META, &key, resp.encode_to_vec())?;
    // A difference, as in `kv`: seqs near `u64::MAX` neither overflow nor
    // move the mark back.
    if w.acked_below.saturating_sub(forgotten) >= FORGET_STEP {
        p.delete_range(
            CF_META,
            &meta::lease_answer(&answers, w.client_id, forgotten),
            &meta::lease_answer(&answers, w.client_id, w.acked_below),
        )?;
        p.put(CF_META, &mark_key, w.acked_below.to_be_bytes().to_vec())?;
    }
    Ok(resp)
}

/// Drops the recorded answers and marks of `task`'s generations `from..to`.
pub fn drop_generations(
    p: &mut PendingWrites,
    job_id: u32,
    task: u32,
    from: u64,
    to: u64,
) -> io::Result<()> {
    let shard = crate::keys::DEFAULT_SHARD;
    p.delete_range(
        CF_META,
        &meta::lease_answers(shard, job_id, task, from),
        &meta::lease_answers(shard, job_id, task, to),
    )?;
    p.delete_range(
        CF_META,
        &meta::lease_marks(shard, job_id, task, from),
        &meta::lease_marks(shard, job_id, task, to),
    )
}

#[cfg(test)]
mod tests {
    use rocksdb::IteratorMode;
    use streamshield_proto::v1::{self as pb, command_response};

    use super::super::fixture::Fixture;
    use super::super::task_tests::{acquire, granted, stale};
    use super::FORGET_STEP;
    use crate::keys::meta;
    use crate::rocks;
    use crate::state_machine::meta::CF_META;

    fn leased_put(
        task: u32,
        generation: u64,
        seq: u64,
        acked_below: u64,
        v: &str,
    ) -> pb::SyncWrite {
        pb::SyncWrite {
            job: "j".into(),
            ops: vec![pb::SyncOp {
                state: "s".into(),
                key: b"k".to_vec(),
                kind: Some(pb::sync_op::Kind::Put(pb::SyncPut {
                    value: v.as_bytes().to_vec(),
                })),
            }],
            client_id: 9,
            seq,
            acked_below,
            lease: Some(pb::SyncLease { task, generation }),
            ..Default::default()
        }
    }

    fn written(r: &pb::CommandResponse) -> pb::WriteResponse {
        match &r.kind {
            Some(command_response::Kind::Write(w)) => w.clone(),
            other => panic!("not a write answer: {other:?}"),
        }
    }

    fn meta_keys(f: &Fixture, prefix: &[u8]) -> usize {
        let cf = rocks::cf(&f.db, CF_META).unwrap();
        f.db.iterator_cf(cf, IteratorMode::Start)
            .filter(|kv| kv.as_ref().unwrap().0.starts_with(prefix))
            .count()
    }

    #[test]
    fn a_leased_write_is_answered_once_under_its_lease_and_its_answer_ends_with_the_lease() {
        let mut f = Fixture::new();
        let g1 = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
        let first = written(&f.write(leased_put(1, g1, 1, 1, "v1")));
        assert!(first.succeeded);
        assert_eq!(first.versions, vec![1]);
        let retry = written(&f.write(leased_put(1, g1, 1, 1, "v1")));
        assert_eq!(retry, first, "the recorded answer, not a second apply");
        assert_eq!(f.get(b"k").unwrap().version, 1);
        assert_eq!(meta_keys(&f, b"la/"), 1);
        assert_eq!(
            meta_keys(&f, &meta::session(9)),
            0,
            "no client session is made for a leased write"
        );
        // A new lease: the old generation's answers go, and its holder's
        // retry is fenced before any answer is looked up.
        let g2 = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
        assert_eq!(meta_keys(&f, b"la/"), 0);
        assert_eq!(stale(&f.write(leased_put(1, g1, 1, 1, "v1"))), (g1, g2));
        // The same client and seq under the new lease is a new write.
        let again = written(&f.write(leased_put(1, g2, 1, 1, "v2")));
        assert_eq!(again.versions, vec![2]);
    }

    #[test]
    fn answers_below_the_acknowledged_mark_are_forgotten_and_their_seqs_refused() {
        let mut f = Fixture::new();
        let g = granted(&acquire(&mut f, 1, (0, 4), "")).generation;
        for seq in 1..=3 {
            assert!(written(&f.write(leased_put(1, g, seq, 1, "v"))).succeeded);
        }
        assert_eq!(meta_keys(&f, b"la/"), 3);
        let mark = FORGET_STEP + 1;
        assert!(written(&f.write(leased_put(1, g, mark, mark, "v"))).succeeded);
        assert_eq!(
            meta_keys(&f, b"la/"),
            1,
            "seqs 1..3 forgotten, the mark's own kept"
        );
        match f.write(leased_put(1, g, 2, mark, "v")).kind {
            Some(command_response::Kind::Error(e)) => {
                assert_eq!(e.code, tonic::Code::FailedPrecondition as i32)
            }
            other => panic!("a forgotten seq applied again: {other:?}"),
        }
    }
}
