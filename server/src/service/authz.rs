//! Who may do what: the one place a request's caller is checked against
//! the grants.
//!
//! The interceptor (`tls::authenticate_client`) says who a request comes
//! from ([`Caller`]); every handler, and every item of a `Session` or of a
//! `*Many` call, names what it is about to do ([`Action`]) and asks
//! [`NodeContext::authorize`] before it does anything. Grants are in the
//! replicated state (`state_machine::auth`), so every node decides alike.
//!
//! Only the leader denies: a follower that finds no grant answers
//! `NotLeader`, since it may lag behind a grant already acknowledged.
//!
//! Roles: a cluster admin (a grant, or a certificate with
//! `OU=streamshield-admin`, or a node's certificate) may do everything; a
//! job writer writes and reads its jobs; a job reader reads them. Status
//! and WhoAmI need only an authenticated caller.

use openraft::async_runtime::WatchReceiver;
use sha2::{Digest, Sha256};
use tonic::Extensions;

use super::NodeContext;
use crate::error::ServiceError;
use crate::state_machine::auth::Role;
use crate::tls::Caller;

/// What a request is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Anything an authenticated caller may do (status, whoami).
    Authenticated,
    /// Membership, snapshots, jobs, grants and tokens.
    Admin,
    Write {
        job: &'a str,
    },
    Read {
        job: &'a str,
    },
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Authenticated => write!(f, "be authenticated"),
            Self::Admin => write!(f, "be a cluster admin"),
            Self::Write { job } => write!(f, "write job {job:?}"),
            Self::Read { job } => write!(f, "read job {job:?}"),
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Certificate,
    Token,
    Insecure,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Token => "token",
            Self::Insecure => "insecure",
        }
    }
}

/// A caller whose identity has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Empty on a node without TLS.
    pub principal: String,
    pub proof: Proof,
    /// May do everything whatever the grants say: a node's or an admin's
    /// certificate, or any caller of a node without TLS.
    pub superuser: bool,
}

/// The SHA-256 of a token's secret: what the cluster keeps of it.
pub fn token_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl NodeContext {
    /// Who the request with `ext` comes from.
    pub fn identify(&self, ext: &Extensions) -> Result<Identity, ServiceError> {
        match ext.get::<Caller>() {
            Some(Caller::Insecure) => Ok(Identity {
                principal: String::new(),
                proof: Proof::Insecure,
                superuser: true,
            }),
            Some(Caller::Certificate { principal, admin }) => Ok(Identity {
                principal: principal.clone(),
                proof: Proof::Certificate,
                superuser: *admin,
            }),
            Some(Caller::Token(secret)) => {
                let auth = self.sm.auth();
                match auth.token_principal(&token_hash(secret)) {
                    Some(p) => Ok(Identity {
                        principal: p.to_string(),
                        proof: Proof::Token,
                        superuser: false,
                    }),
                    // A follower may not have applied a token the leader
                    // already answered for: sent to the leader, as a
                    // follower's denial is (below).
                    None => Err(self.not_leader().unwrap_or(ServiceError::Unauthenticated {
                        reason: "the bearer token is unknown or revoked",
                    })),
                }
            }
            // Every client service is behind an interceptor that sets it;
            // a handler reached without one is refused, not let through.
            None => Err(ServiceError::Unauthenticated {
                reason: "the request carries no caller",
            }),
        }
    }

    /// The caller of the request with `ext`, if it may do `action`;
    /// otherwise UNAUTHENTICATED or PERMISSION_DENIED, and nothing done.
    pub fn authorize(&self, ext: &Extensions, action: Action) -> Result<Identity, ServiceError> {
        let who = self.identify(ext)?;
        if who.superuser {
            return Ok(who);
        }
        let auth = self.sm.auth();
        let allowed = match action {
            Action::Authenticated => true,
            Action::Admin => auth.allows(&who.principal, Role::Admin, ""),
            Action::Write { job } => auth.allows(&who.principal, Role::Writer, job),
            Action::Read { job } => auth.allows(&who.principal, Role::Reader, job),
        };
        if !allowed {
            // A follower may not have applied a grant the leader already
            // acknowledged: its denial is not the cluster's. The caller is
            // sent to the leader, which has applied every grant it
            // answered for, and whose denial is final.
            if let Some(redirect) = self.not_leader() {
                return Err(redirect);
            }
            metrics::counter!("streamshield_requests_denied_total").increment(1);
            return Err(ServiceError::PermissionDenied {
                principal: who.principal,
                needs: action.to_string(),
            });
        }
        Ok(who)
    }

    /// `NotLeader` with the leader's address, unless this node leads.
    fn not_leader(&self) -> Option<ServiceError> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state == openraft::ServerState::Leader {
            return None;
        }
        let membership = m.membership_config.membership();
        Some(ServiceError::NotLeader {
            this: self.id,
            leader_id: m.current_leader,
            leader_addr: m
                .current_leader
                .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone())),
        })
    }
}
