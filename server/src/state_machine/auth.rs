//! Grants and tokens in the replicated state, and the node's table of them.
//!
//! An `AuthChange` entry adds or removes one grant or token under the
//! `a/` keys of the meta column family. Every node keeps all of them in an
//! [`AuthTable`] read again after each chunk that changed one and after a
//! snapshot install, so a check costs a hash lookup, never a read of the
//! store; they are few (one per principal and job), unlike keys.

use std::collections::{BTreeSet, HashMap};
use std::io;

use prost::Message;
use rocksdb::{Direction, IteratorMode, DB};
use streamshield_proto::v1::{self as pb, auth_change, command_response};
use tonic::Code;

use super::apply::error_response;
use super::meta::CF_META;
use super::pending::PendingWrites;
use crate::keys::meta;
use crate::rocks::{self, corrupt, io_err};

/// A role as the table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Admin,
    Writer,
    Reader,
}

impl Role {
    pub fn from_pb(r: i32) -> Option<Self> {
        match pb::AccessRole::try_from(r).ok()? {
            pb::AccessRole::Admin => Some(Self::Admin),
            pb::AccessRole::Writer => Some(Self::Writer),
            pb::AccessRole::Reader => Some(Self::Reader),
            pb::AccessRole::Unspecified => None,
        }
    }

    pub fn to_pb(self) -> pb::AccessRole {
        match self {
            Self::Admin => pb::AccessRole::Admin,
            Self::Writer => pb::AccessRole::Writer,
            Self::Reader => pb::AccessRole::Reader,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Admin => b'a',
            Self::Writer => b'w',
            Self::Reader => b'r',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'a' => Some(Self::Admin),
            b'w' => Some(Self::Writer),
            b'r' => Some(Self::Reader),
            _ => None,
        }
    }
}

/// The job every job-scoped grant with this name covers.
pub const ANY_JOB: &str = "*";

/// One grant, checked: admin grants have no job, the others one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantOf {
    pub principal: String,
    pub role: Role,
    pub job: String,
}

impl GrantOf {
    /// The grant `g` means, or why it means none.
    pub fn from_pb(g: &pb::Grant) -> Result<Self, String> {
        let role = Role::from_pb(g.role).ok_or("role must be admin, writer or reader")?;
        if g.principal.is_empty() || g.principal.contains('\0') {
            return Err("principal must be non-empty, with no NUL".into());
        }
        match (role, g.job.is_empty()) {
            (Role::Admin, false) => {
                return Err("an admin grant covers the cluster, not a job".into())
            }
            (Role::Writer | Role::Reader, true) => {
                return Err("a writer or reader grant names a job, or \"*\" for every job".into())
            }
            _ => {}
        }
        Ok(Self {
            principal: g.principal.clone(),
            role,
            job: g.job.clone(),
        })
    }

    pub fn to_pb(&self) -> pb::Grant {
        pb::Grant {
            principal: self.principal.clone(),
            role: self.role.to_pb() as i32,
            job: self.job.clone(),
        }
    }

    fn key(&self) -> Vec<u8> {
        meta::grant(&self.principal, self.role.byte(), &self.job)
    }
}

/// Every grant and token of the cluster, as of the last applied chunk.
#[derive(Debug, Default, Clone)]
pub struct AuthTable {
    grants: BTreeSet<GrantOf>,
    /// Token hash to its record.
    tokens: HashMap<Vec<u8>, pb::TokenRecord>,
}

impl AuthTable {
    /// Reads every grant and token of `db`.
    pub fn load(db: &DB) -> io::Result<Self> {
        let cf = rocks::cf(db, CF_META)?;
        let mut t = Self::default();
        let from = IteratorMode::From(meta::AUTH_PREFIX, Direction::Forward);
        for item in db.iterator_cf(cf, from) {
            let (k, v) = item.map_err(io_err)?;
            if !meta::is_auth(&k) {
                break;
            }
            if let Some(rest) = k.strip_prefix(b"a/g/") {
                t.grants.insert(parse_grant(rest)?);
            } else if k.starts_with(b"a/t/") {
                let r = pb::TokenRecord::decode(v.as_ref())
                    .map_err(|e| corrupt(format!("token record: {e}")))?;
                t.tokens.insert(r.hash.clone(), r);
            }
        }
        Ok(t)
    }

    pub fn grants_of<'a>(&'a self, principal: &'a str) -> impl Iterator<Item = &'a GrantOf> + 'a {
        self.grants.iter().filter(move |g| g.principal == principal)
    }

    pub fn grants(&self) -> impl Iterator<Item = &GrantOf> {
        self.grants.iter()
    }

    pub fn tokens(&self) -> impl Iterator<Item = &pb::TokenRecord> {
        self.tokens.values()
    }

    /// Whether `principal` holds `role` for `job` (admin: `job` is "").
    /// An admin may do everything, a writer also read.
    pub fn allows(&self, principal: &str, role: Role, job: &str) -> bool {
        self.grants_of(principal).any(|g| match g.role {
            Role::Admin => true,
            Role::Writer => role != Role::Admin && (g.job == job || g.job == ANY_JOB),
            Role::Reader => role == Role::Reader && (g.job == job || g.job == ANY_JOB),
        })
    }

    /// The principal of the token whose hash is `hash`.
    pub fn token_principal(&self, hash: &[u8]) -> Option<&str> {
        self.tokens.get(hash).map(|r| r.principal.as_str())
    }
}

fn parse_grant(rest: &[u8]) -> io::Result<GrantOf> {
    let bad = || corrupt("a grant key is not principal\\0<role><job>");
    let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let principal = std::str::from_utf8(&rest[..nul]).map_err(|_| bad())?;
    let role = rest
        .get(nul + 1)
        .copied()
        .and_then(Role::from_byte)
        .ok_or_else(bad)?;
    let job = std::str::from_utf8(&rest[nul + 2..]).map_err(|_| bad())?;
    Ok(GrantOf {
        principal: principal.to_string(),
        role,
        job: job.to_string(),
    })
}

fn changed(c: bool) -> pb::CommandResponse {
    pb::CommandResponse {
        kind: Some(command_response::Kind::AuthChanged(c)),
    }
}

/// Applies one grant or token change. A malformed change (which a node
/// never proposes) is refused as the services would refuse it.
pub fn apply(
    p: &mut PendingWrites,
    index: u64,
    change: &pb::AuthChange,
) -> io::Result<pb::CommandResponse> {
    use auth_change::Change;
    match &change.change {
        Some(Change::Grant(g)) | Some(Change::Revoke(g)) => {
            let grant = match GrantOf::from_pb(g) {
                Ok(grant) => grant,
                Err(reason) => return Ok(error_response(Code::InvalidArgument, reason)),
            };
            let key = grant.key();
            let present = p.get(CF_META, &key)?.is_some();
            let adding = matches!(change.change, Some(Change::Grant(_)));
            if adding == present {
                return Ok(changed(false));
            }
            if adding {
                p.put(CF_META, &key, Vec::new())?;
            } else {
                p.delete(CF_META, &key)?;
            }
            Ok(changed(true))
        }
        Some(Change::AddToken(t)) => {
            if t.token_id.is_empty() || t.principal.is_empty() || t.hash.len() != 32 {
                return Ok(error_response(
                    Code::InvalidArgument,
                    "a token needs an id, a principal and a 32-byte hash",
                ));
            }
            let key = meta::token(&t.token_id);
            if p.get(CF_META, &key)?.is_some() {
                return Ok(error_response(
                    Code::AlreadyExists,
                    format!("token {} already exists", t.token_id),
                ));
            }
            let record = pb::TokenRecord {
                created_index: index,
                ..t.clone()
            };
            p.put(CF_META, &key, record.encode_to_vec())?;
            Ok(changed(true))
        }
        Some(Change::RevokeToken(id)) => {
            let key = meta::token(id);
            if p.get(CF_META, &key)?.is_none() {
                return Ok(changed(false));
            }
            p.delete(CF_META, &key)?;
            Ok(changed(true))
        }
        None => Ok(error_response(
            Code::InvalidArgument,
            "an auth change needs a change",
        )),
    }
}

#[cfg(test)]
mod tests {
    use rocksdb::WriteOptions;

    use super::*;

    fn grant(principal: &str, role: pb::AccessRole, job: &str) -> pb::Grant {
        pb::Grant {
            principal: principal.into(),
            role: role as i32,
            job: job.into(),
        }
    }

    fn apply_one(db: &DB, change: auth_change::Change) -> pb::CommandResponse {
        let mut p = PendingWrites::new(db);
        let r = apply(
            &mut p,
            1,
            &pb::AuthChange {
                change: Some(change),
            },
        )
        .unwrap();
        assert!(
            !matches!(r.kind, Some(command_response::Kind::AuthChanged(true))) || p.auth_changed()
        );
        p.write(&WriteOptions::default()).unwrap();
        r
    }

    #[test]
    fn roles_cover_what_they_say_and_no_more() {
        use auth_change::Change;
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        apply_one(&db, Change::Grant(grant("w", pb::AccessRole::Writer, "j")));
        apply_one(&db, Change::Grant(grant("r", pb::AccessRole::Reader, "*")));
        apply_one(&db, Change::Grant(grant("boss", pb::AccessRole::Admin, "")));
        let again = apply_one(&db, Change::Grant(grant("w", pb::AccessRole::Writer, "j")));
        assert_eq!(again.kind, Some(command_response::Kind::AuthChanged(false)));
        let bad = apply_one(&db, Change::Grant(grant("w", pb::AccessRole::Admin, "j")));
        assert!(matches!(bad.kind, Some(command_response::Kind::Error(_))));

        let t = AuthTable::load(&db).unwrap();
        assert!(t.allows("w", Role::Writer, "j") && t.allows("w", Role::Reader, "j"));
        assert!(!t.allows("w", Role::Writer, "k") && !t.allows("w", Role::Admin, ""));
        assert!(t.allows("r", Role::Reader, "any") && !t.allows("r", Role::Writer, "any"));
        assert!(t.allows("boss", Role::Admin, "") && t.allows("boss", Role::Writer, "j"));
        assert!(!t.allows("nobody", Role::Reader, "j"));
        // A principal that is a prefix of another holds none of its grants.
        assert!(!t.allows("", Role::Reader, "j") && !t.allows("bos", Role::Admin, ""));

        apply_one(&db, Change::Revoke(grant("w", pb::AccessRole::Writer, "j")));
        assert!(!AuthTable::load(&db).unwrap().allows("w", Role::Reader, "j"));
    }

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        use auth_change::Change;
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_store(dir.path()).unwrap();
        let record = pb::TokenRecord {
            token_id: "t1".into(),
            principal: "bot".into(),
            hash: vec![7; 32],
            created_index: 0,
        };
        apply_one(&db, Change::AddToken(record.clone()));
        let dup = apply_one(&db, Change::AddToken(record));
        assert!(matches!(dup.kind, Some(command_response::Kind::Error(_))));
        assert_eq!(
            AuthTable::load(&db).unwrap().token_principal(&[7; 32]),
            Some("bot")
        );
        apply_one(&db, Change::RevokeToken("t1".into()));
        assert_eq!(
            AuthTable::load(&db).unwrap().token_principal(&[7; 32]),
            None
        );
    }
}
