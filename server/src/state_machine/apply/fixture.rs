//! A store applied to the way the apply path does, for the tests of
//! every apply module.

use std::sync::Mutex;

use rocksdb::{WriteOptions, DB};
use streamshield_proto::v1::{self as pb, command, command_response};

use super::{apply_at, At};
use crate::state_machine::memo::ApplyMemo;
use crate::state_machine::pending::PendingWrites;

/// A store applied to the way the apply path does, memo included.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub db: DB,
    pub memo: Mutex<ApplyMemo>,
    pub index: u64,
    /// The leader time the next entry carries.
    pub time_ms: u64,
    /// The state-machine format the next entry is in.
    pub format: u32,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let mut f = Self {
            _dir: dir,
            db,
            memo: Mutex::default(),
            index: 0,
            time_ms: 1_000,
            format: crate::command::FORMAT,
        };
        let r = f.apply(pb::Command {
            kind: Some(command::Kind::CreateJob(pb::CreateJob {
                job: "j".into(),
                key_groups: 4,
                tables: Vec::new(),
            })),
        });
        assert!(matches!(
            r.kind,
            Some(command_response::Kind::JobCreated(_))
        ));
        f
    }

    fn at(&self) -> At {
        At {
            index: self.index,
            time_ms: self.time_ms,
            format: self.format,
        }
    }

    pub fn apply(&mut self, cmd: pb::Command) -> pb::CommandResponse {
        self.index += 1;
        let mut p = PendingWrites::with_memo(&self.db, &self.memo);
        let r = apply_at(&mut p, self.at(), &cmd).unwrap();
        p.write(&WriteOptions::default()).unwrap();
        r
    }

    /// Applies several commands as one chunk: one RocksDB write.
    pub fn apply_chunk(&mut self, cmds: Vec<pb::Command>) -> Vec<pb::CommandResponse> {
        let mut p = PendingWrites::with_memo(&self.db, &self.memo);
        let mut out = Vec::new();
        for cmd in cmds {
            self.index += 1;
            out.push(apply_at(&mut p, self.at(), &cmd).unwrap());
        }
        p.write(&WriteOptions::default()).unwrap();
        out
    }

    pub fn write(&mut self, w: pb::SyncWrite) -> pb::CommandResponse {
        self.apply(pb::Command {
            kind: Some(command::Kind::Write(w)),
        })
    }

    /// A sync write of one put to job `j`.
    pub fn put(&mut self, state: &str, key: &[u8], value: &[u8]) -> pb::CommandResponse {
        self.write(pb::SyncWrite {
            job: "j".into(),
            ops: vec![pb::SyncOp {
                state: state.into(),
                key: key.to_vec(),
                kind: Some(pb::sync_op::Kind::Put(pb::SyncPut {
                    value: value.to_vec(),
                })),
            }],
            ..Default::default()
        })
    }

    /// A client id handed out to `principal` (`RegisterClient`).
    pub fn register(&mut self, principal: &str) -> u64 {
        let r = self.apply(pb::Command {
            kind: Some(command::Kind::RegisterClient(pb::ClientRegister {
                principal: principal.into(),
            })),
        });
        match r.kind {
            Some(command_response::Kind::ClientRegistered(id)) => id,
            other => panic!("registration answered {other:?}"),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<pb::KeyValue> {
        let info = crate::state_machine::meta::load_job(&self.db, 0, "j").unwrap();
        crate::state_machine::read::get(&self.db, info.as_ref(), 0, "j", "s", key).unwrap()
    }
}
