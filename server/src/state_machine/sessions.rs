//! Deduplication sessions: which principal owns a client id, up to which
//! seq its answers are forgotten, and when it last wrote.
//!
//! A session is opened by `RegisterClient` ([`register`]), as the Raft
//! dissertation's client sessions are (§6.3): the cluster hands out the
//! client id, owned by the principal that asked, and a write under an id
//! it never handed out is refused. Before state-machine format
//! [`REGISTERED_FORMAT`] any id a caller made up opened a session with its
//! first write; such sessions live on until they expire. Another
//! principal's write under an id is refused before any recorded answer is
//! looked up, so nobody can read or spoil someone else's deduplicated
//! answers. A session idle for the configured time
//! (`limits.dedupe_session_ttl_ms`) is expired by an `ExpireSessions`
//! entry the leader proposes now and then; its time is the entries' leader
//! time, so every replica expires the same sessions.
//!
//! Expiry drops a session's answers and leaves a mark, and a write under
//! the id is refused with "dedupe session expired", because a retry whose
//! answer is gone could apply twice: the client registers again and knows
//! which of its writes may have applied. (Before format 7 a write with
//! `acked_below = 0`, saying it follows none, started a new session under
//! the same id.) The mark itself is dropped after another TTL, so what a
//! client id costs is bounded in time either way; the id is never handed
//! out again.
//!
//! Record (`s/<client>`): `forgotten u64 | last_used_ms u64 | expired u8 |
//! owner`. Before owners existed it was `forgotten` alone (8 bytes): such
//! a session is claimed by the next principal that writes under it. Time
//! index: `t/<last_used_ms><client>`, one key per session, moved when the
//! session is touched, which happens at most once per [`TOUCH_MS`].

use std::io;

use rocksdb::{Direction, IteratorMode, DB};

use super::meta::CF_META;
use super::pending::PendingWrites;
use crate::keys::meta;
use crate::rocks::{self, corrupt, io_err};

/// A session's last-use time is rewritten when it is older than this, so
/// a client writing all the time costs one session write a minute, not one
/// per write.
pub const TOUCH_MS: u64 = 60_000;

/// Sessions one `ExpireSessions` entry forgets at most, so its apply stays
/// short; the leader proposes another at once when one was full.
pub const MAX_EXPIRED_PER_ENTRY: u64 = 4096;

/// The first state-machine format whose deduplicated writes need a
/// registered session; entries before it open one with their first write.
pub const REGISTERED_FORMAT: u32 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub forgotten: u64,
    pub last_used_ms: u64,
    /// Expired: its answers are gone; `last_used_ms` is when it expired.
    pub expired: bool,
    /// `None`: a session from before owners, claimed by its next writer.
    pub owner: Option<String>,
}

impl Session {
    pub fn encode(&self) -> Vec<u8> {
        let owner = self.owner.as_deref().unwrap_or("");
        let mut v = Vec::with_capacity(17 + owner.len());
        v.extend_from_slice(&self.forgotten.to_be_bytes());
        v.extend_from_slice(&self.last_used_ms.to_be_bytes());
        v.push(u8::from(self.expired));
        v.extend_from_slice(owner.as_bytes());
        v
    }

    pub fn decode(raw: &[u8]) -> io::Result<Self> {
        let u64_at =
            |at: usize| -> u64 { u64::from_be_bytes(raw[at..at + 8].try_into().expect("8 bytes")) };
        match raw.len() {
            8 => Ok(Self {
                forgotten: u64_at(0),
                last_used_ms: 0,
                expired: false,
                owner: None,
            }),
            n if n >= 17 && raw[16] <= 1 => Ok(Self {
                forgotten: u64_at(0),
                last_used_ms: u64_at(8),
                expired: raw[16] == 1,
                owner: Some(
                    String::from_utf8(raw[17..].to_vec())
                        .map_err(|_| corrupt("a session's owner is not UTF-8"))?,
                ),
            }),
            n => Err(corrupt(format!(
                "client session record of {n} bytes is neither 8 bytes nor 17 or more with a 0/1 flag"
            ))),
        }
    }
}

fn time_key(last_used_ms: u64, client_id: u64) -> Vec<u8> {
    let mut k = TIME_PREFIX.to_vec();
    k.extend_from_slice(&last_used_ms.to_be_bytes());
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

use crate::keys::meta::SESSION_TIME_PREFIX as TIME_PREFIX;

pub fn load(p: &mut PendingWrites, client_id: u64) -> io::Result<Option<Session>> {
    match p.get(CF_META, &meta::session(client_id))? {
        None => Ok(None),
        Some(raw) => Session::decode(&raw).map(Some),
    }
}

/// Stores `new` as the session of `client_id`, keeping the time index in
/// step with it.
pub fn store(
    p: &mut PendingWrites,
    client_id: u64,
    old: Option<&Session>,
    new: &Session,
) -> io::Result<()> {
    p.put(CF_META, &meta::session(client_id), new.encode())?;
    // A session from before owners (8 bytes) has no index key.
    let old_time = old.filter(|o| o.owner.is_some()).map(|o| o.last_used_ms);
    if old_time != Some(new.last_used_ms) {
        if let Some(t) = old_time {
            p.delete(CF_META, &time_key(t, client_id))?;
        }
        p.put(CF_META, &time_key(new.last_used_ms, client_id), Vec::new())?;
    }
    Ok(())
}

/// Opens a session owned by `principal` at leader time `now_ms`, under
/// the counter's next client id that no session holds (ids that callers
/// made up before registration may hold any value); `None` once the
/// counter has run out of ids.
pub fn register(p: &mut PendingWrites, now_ms: u64, principal: &str) -> io::Result<Option<u64>> {
    let mut id = match p.get(CF_META, meta::NEXT_CLIENT_ID)? {
        None => 1,
        Some(raw) => u64::from_be_bytes(
            raw.as_slice()
                .try_into()
                .map_err(|_| corrupt("the next client id is not 8 bytes"))?,
        ),
    };
    while load(p, id)?.is_some() {
        let Some(next) = id.checked_add(1) else {
            return Ok(None);
        };
        id = next;
    }
    let Some(next) = id.checked_add(1) else {
        return Ok(None);
    };
    let session = Session {
        forgotten: 0,
        last_used_ms: now_ms,
        expired: false,
        owner: Some(principal.to_string()),
    };
    store(p, id, None, &session)?;
    p.put(CF_META, meta::NEXT_CLIENT_ID, next.to_be_bytes().to_vec())?;
    metrics::counter!("streamshield_clients_registered_total").increment(1);
    Ok(Some(id))
}

/// Drops every answer recorded for `client_id`.
fn drop_answers(p: &mut PendingWrites, client_id: u64) -> io::Result<()> {
    p.delete_range(
        CF_META,
        &meta::dedupe(client_id, 0),
        &meta::dedupe(client_id, u64::MAX),
    )?;
    p.delete(CF_META, &meta::dedupe(client_id, u64::MAX))
}

/// Expires the sessions unused for `idle_ms` before `now_ms` and drops the
/// marks of sessions expired that long ago, at most
/// [`MAX_EXPIRED_PER_ENTRY`] of both; returns how many. `db` must hold
/// exactly the effects of every earlier entry (the caller writes what is
/// pending first): the time index is iterated there, and every replica
/// must find the same keys.
pub fn expire(p: &mut PendingWrites, db: &DB, now_ms: u64, idle_ms: u64) -> io::Result<u64> {
    let cf = rocks::cf(db, CF_META)?;
    let end = time_key(now_ms.saturating_sub(idle_ms), 0);
    let mut candidates = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(TIME_PREFIX, Direction::Forward)) {
        let (k, _) = item.map_err(io_err)?;
        if !k.starts_with(TIME_PREFIX) || k.as_ref() >= end.as_slice() {
            break;
        }
        if k.len() != TIME_PREFIX.len() + 16 {
            return Err(corrupt("a session time key is not 16 bytes long"));
        }
        candidates.push(k.to_vec());
        if candidates.len() as u64 >= MAX_EXPIRED_PER_ENTRY {
            break;
        }
    }
    let (mut expired, mut dropped) = (0, 0);
    for k in candidates {
        let t = &k[TIME_PREFIX.len()..];
        let last_used = u64::from_be_bytes(t[..8].try_into().expect("8 bytes"));
        let client_id = u64::from_be_bytes(t[8..].try_into().expect("8 bytes"));
        // An index key the session moved away from is only dropped.
        let Some(s) = load(p, client_id)?.filter(|s| s.last_used_ms == last_used) else {
            p.delete(CF_META, &k)?;
            continue;
        };
        if s.expired {
            p.delete(CF_META, &k)?;
            p.delete(CF_META, &meta::session(client_id))?;
            dropped += 1;
        } else {
            drop_answers(p, client_id)?;
            let mark = Session {
                forgotten: 0,
                last_used_ms: now_ms,
                expired: true,
                owner: s.owner.clone(),
            };
            store(p, client_id, Some(&s), &mark)?;
            expired += 1;
        }
    }
    metrics::counter!("streamshield_sessions_expired_total").increment(expired);
    Ok(expired + dropped)
}

#[cfg(test)]
mod tests {
    use rocksdb::WriteOptions;
    use streamshield_proto::v1::{self as pb, command, command_response, sync_op};

    use super::*;
    use crate::state_machine::apply::{apply_at, At, SESSION_EXPIRED};

    struct Store {
        _dir: tempfile::TempDir,
        db: DB,
        index: u64,
        /// The state-machine format of the next entries.
        format: u32,
    }

    impl Store {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::state_machine::open_store(dir.path()).unwrap();
            let mut s = Self {
                _dir: dir,
                db,
                index: 0,
                format: crate::command::FORMAT,
            };
            s.apply(
                0,
                command::Kind::CreateJob(pb::CreateJob {
                    job: "j".into(),
                    key_groups: 4,
                    tables: Vec::new(),
                }),
            );
            s
        }

        /// Applies one entry proposed at leader time `time_ms`, and writes it.
        fn apply(&mut self, time_ms: u64, kind: command::Kind) -> pb::CommandResponse {
            self.index += 1;
            let mut p = PendingWrites::new(&self.db);
            let at = At {
                index: self.index,
                time_ms,
                format: self.format,
            };
            let r = apply_at(&mut p, at, &pb::Command { kind: Some(kind) }).unwrap();
            p.write(&WriteOptions::default()).unwrap();
            r
        }

        /// The answer of one write by `principal` under client id `client`.
        fn write(
            &mut self,
            time_ms: u64,
            principal: &str,
            client: u64,
            seq: u64,
            acked_below: u64,
        ) -> pb::CommandResponse {
            let w = pb::SyncWrite {
                job: "j".into(),
                ops: vec![pb::SyncOp {
                    state: "s".into(),
                    key: format!("k{seq}").into_bytes(),
                    kind: Some(sync_op::Kind::Put(pb::SyncPut {
                        value: principal.as_bytes().to_vec(),
                    })),
                }],
                client_id: client,
                seq,
                acked_below,
                ..Default::default()
            };
            let r = self.apply(
                time_ms,
                command::Kind::OwnedWrites(pb::OwnedWrites {
                    writes: vec![pb::OwnedWrite {
                        principal: principal.into(),
                        write: Some(w),
                    }],
                }),
            );
            match r.kind {
                Some(command_response::Kind::Batch(mut b)) => b.answers.remove(0),
                other => panic!("{other:?}"),
            }
        }

        /// The client id the cluster hands `principal` at `time_ms`.
        fn register(&mut self, time_ms: u64, principal: &str) -> u64 {
            let r = self.apply(
                time_ms,
                command::Kind::RegisterClient(pb::ClientRegister {
                    principal: principal.into(),
                }),
            );
            match r.kind {
                Some(command_response::Kind::ClientRegistered(id)) => id,
                other => panic!("{other:?}"),
            }
        }

        fn expire(&mut self, time_ms: u64, idle_ms: u64) -> u64 {
            match self
                .apply(
                    time_ms,
                    command::Kind::ExpireSessions(pb::ExpireSessions { idle_ms }),
                )
                .kind
            {
                Some(command_response::Kind::SessionsExpired(n)) => n,
                other => panic!("{other:?}"),
            }
        }

        fn session(&self, client: u64) -> Option<Session> {
            let mut p = PendingWrites::new(&self.db);
            load(&mut p, client).unwrap()
        }

        fn has_answer(&self, client: u64, seq: u64) -> bool {
            let cf = rocks::cf(&self.db, CF_META).unwrap();
            self.db
                .get_cf(cf, meta::dedupe(client, seq))
                .unwrap()
                .is_some()
        }
    }

    fn error_of(r: &pb::CommandResponse) -> Option<(tonic::Code, &str)> {
        match &r.kind {
            Some(command_response::Kind::Error(e)) => {
                Some((tonic::Code::from(e.code), e.message.as_str()))
            }
            _ => None,
        }
    }

    #[test]
    fn a_client_id_belongs_to_the_principal_it_was_handed_to() {
        let mut s = Store::new();
        assert_eq!(s.register(1_000, "alice"), 1);
        assert_eq!(s.register(1_000, "alice"), 2);
        let first = s.write(1_000, "alice", 2, 1, 1);
        assert_eq!(error_of(&first), None);
        // Bob retrying alice's seq is refused, not handed alice's answer;
        // a new seq of his under her id is refused too, and changes nothing.
        for seq in [1, 2] {
            let r = s.write(1_001, "bob", 2, seq, 1);
            assert_eq!(
                error_of(&r).map(|e| e.0),
                Some(tonic::Code::PermissionDenied),
                "{r:?}"
            );
        }
        assert!(!s.has_answer(2, 2));
        assert_eq!(s.session(2).unwrap().owner.as_deref(), Some("alice"));
        assert_eq!(
            s.write(1_002, "alice", 2, 1, 1),
            first,
            "her retry is deduplicated"
        );
        // A session from before owners is claimed by its next writer.
        let legacy = Store::new();
        let cf = rocks::cf(&legacy.db, CF_META).unwrap();
        legacy
            .db
            .put_cf(cf, meta::session(8), 0u64.to_be_bytes())
            .unwrap();
        let mut legacy = legacy;
        assert_eq!(error_of(&legacy.write(5, "carol", 8, 1, 1)), None);
        assert_eq!(
            error_of(&legacy.write(6, "dave", 8, 2, 1)).map(|e| e.0),
            Some(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn a_client_id_the_cluster_did_not_hand_out_is_refused_and_none_is_handed_out_twice() {
        let mut s = Store::new();
        for id in [1, 12_345, u64::MAX] {
            let r = s.write(1_000, "alice", id, 1, 0);
            let (code, message) = error_of(&r).expect("refused");
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.starts_with(SESSION_EXPIRED), "{message}");
            assert!(!s.has_answer(id, 1) && s.session(id).is_none());
        }
        // Ids a caller made up before registration (format 6) keep their
        // sessions, and the counter steps over them.
        s.format = REGISTERED_FORMAT - 1;
        assert_eq!(error_of(&s.write(1_000, "bob", 2, 1, 1)), None);
        s.format = crate::command::FORMAT;
        assert_eq!(s.register(1_001, "alice"), 1);
        assert_eq!(s.register(1_001, "alice"), 3, "2 is bob's");
        assert_eq!(error_of(&s.write(1_002, "bob", 2, 2, 2)), None);
        assert_eq!(error_of(&s.write(1_002, "alice", 3, 1, 1)), None);
        // Expired and forgotten, an id is still never handed out again.
        assert_eq!(s.expire(10_000, 500), 3);
        assert_eq!(s.expire(20_000, 500), 3);
        assert_eq!(s.session(1), None);
        assert_eq!(s.register(20_001, "carol"), 4);
        assert!(error_of(&s.write(20_002, "carol", 1, 1, 0)).is_some());
    }

    #[test]
    fn an_idle_session_expires_and_its_client_registers_again() {
        let mut s = Store::new();
        let (alice, bob) = (s.register(1_000, "alice"), s.register(1_000, "bob"));
        assert_eq!(error_of(&s.write(1_000, "alice", alice, 1, 1)), None);
        assert_eq!(s.expire(1_400, 500), 0, "not idle long enough");
        // A session registered and never written under expires as well.
        assert_eq!(s.expire(2_000, 500), 2);
        assert!(!s.has_answer(alice, 1), "answers dropped");
        assert!(s.session(alice).unwrap().expired && s.session(bob).unwrap().expired);
        // Whatever it says of earlier seqs, a write under the expired id is
        // refused: the client registers again.
        for acked_below in [0, 2] {
            let r = s.write(2_100, "alice", alice, 2, acked_below);
            let (code, message) = error_of(&r).expect("refused");
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.starts_with(SESSION_EXPIRED), "{message}");
        }
        assert!(!s.has_answer(alice, 2));
        let again = s.register(2_200, "alice");
        assert!(again > bob);
        assert_eq!(error_of(&s.write(2_200, "alice", again, 2, 2)), None);
    }

    #[test]
    fn before_registration_an_idle_session_expires_and_its_client_starts_anew() {
        let mut s = Store::new();
        s.format = REGISTERED_FORMAT - 1;
        assert_eq!(error_of(&s.write(1_000, "alice", 9, 1, 1)), None);
        assert_eq!(error_of(&s.write(1_000, "bob", 10, 1, 1)), None);
        assert_eq!(s.expire(1_400, 500), 0, "not idle long enough");
        assert!(s.has_answer(9, 1));
        assert_eq!(s.expire(2_000, 500), 2);
        assert!(
            !s.has_answer(9, 1) && !s.has_answer(10, 1),
            "answers dropped"
        );
        assert!(s.session(9).unwrap().expired);

        // A write that follows earlier ones could be a retry of an applied
        // one: refused, nothing written.
        let r = s.write(2_100, "alice", 9, 2, 2);
        let (code, message) = error_of(&r).expect("refused");
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(message.starts_with(SESSION_EXPIRED), "{message}");
        assert!(!s.has_answer(9, 2));
        // Another principal still cannot take the id over.
        assert_eq!(
            error_of(&s.write(2_100, "eve", 9, 1, 0)).map(|e| e.0),
            Some(tonic::Code::PermissionDenied)
        );
        // acked_below 0 starts a new session, which lives on.
        assert_eq!(error_of(&s.write(2_200, "alice", 9, 2, 0)), None);
        let live = s.session(9).unwrap();
        assert!(!live.expired && live.last_used_ms == 2_200);

        // Bob's mark goes a TTL after his session expired; alice's new
        // session expires in its turn.
        assert_eq!(s.expire(2_600, 500), 1);
        assert_eq!(s.session(10), None);
        assert!(!s.session(9).unwrap().expired);
        assert_eq!(s.expire(2_800, 500), 1);
        assert!(s.session(9).unwrap().expired);
        // With the mark gone, the id is new again: anyone may take it.
        assert_eq!(error_of(&s.write(3_000, "eve", 10, 1, 0)), None);
    }

    #[test]
    fn a_busy_session_is_touched_once_a_minute_and_does_not_expire() {
        let mut s = Store::new();
        let id = s.register(100_000, "alice");
        for (i, t) in (0..10u64).map(|i| (i, 100_000 + i * 20_000)) {
            assert_eq!(error_of(&s.write(t, "alice", id, i + 1, i + 1)), None);
            assert_eq!(s.expire(t, 70_000), 0, "at {t}");
        }
        // Touched at 100 s, 160 s, 220 s and 280 s.
        assert_eq!(s.session(id).unwrap().last_used_ms, 280_000);
        // One index key per session, however often it was touched.
        let cf = rocks::cf(&s.db, CF_META).unwrap();
        let keys =
            s.db.prefix_iterator_cf(cf, TIME_PREFIX)
                .take_while(|kv| kv.as_ref().unwrap().0.starts_with(TIME_PREFIX))
                .count();
        assert_eq!(keys, 1);
    }

    #[test]
    fn records_round_trip_and_the_old_form_has_no_owner() {
        let s = Session {
            forgotten: u64::MAX,
            last_used_ms: 7,
            expired: true,
            owner: Some("team-a".into()),
        };
        assert_eq!(Session::decode(&s.encode()).unwrap(), s);
        let old = Session::decode(&5u64.to_be_bytes()).unwrap();
        assert_eq!((old.forgotten, old.owner), (5, None));
        let anonymous = Session {
            owner: Some(String::new()),
            expired: false,
            ..s
        };
        assert_eq!(Session::decode(&anonymous.encode()).unwrap(), anonymous);
        let mut bad_flag = anonymous.encode();
        bad_flag[16] = 2;
        for bad in [&[][..], &[1u8; 9][..], &[0xffu8; 18][..], &bad_flag[..]] {
            assert!(Session::decode(bad).is_err(), "{bad:?}");
        }
    }
}
