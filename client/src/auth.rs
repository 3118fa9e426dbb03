//! The client's calls of the `Auth` API: grants, tokens, whoami.

use streamshield_proto::v1::{self as pb, auth_client::AuthClient};

use std::future::Future;

use crate::client::Client;
use crate::error::ClientError;
use crate::transport::Transport;

/// A role a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Membership, snapshots, jobs, grants and tokens.
    Admin,
    /// Writes and reads of a job.
    Writer,
    /// Reads of a job.
    Reader,
}

impl Role {
    fn to_pb(self) -> i32 {
        match self {
            Self::Admin => pb::AccessRole::Admin as i32,
            Self::Writer => pb::AccessRole::Writer as i32,
            Self::Reader => pb::AccessRole::Reader as i32,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Self::Admin),
            "writer" => Ok(Self::Writer),
            "reader" => Ok(Self::Reader),
            other => Err(format!("{other:?} is not a role: admin, writer or reader")),
        }
    }
}

/// The name of a role as the CLI and `Display` show it.
pub fn role_name(r: i32) -> &'static str {
    match pb::AccessRole::try_from(r) {
        Ok(pb::AccessRole::Admin) => "admin",
        Ok(pb::AccessRole::Writer) => "writer",
        Ok(pb::AccessRole::Reader) => "reader",
        _ => "unspecified",
    }
}

fn grant(principal: &str, role: Role, job: Option<&str>) -> pb::GrantRequest {
    pb::GrantRequest {
        grant: Some(pb::Grant {
            principal: principal.into(),
            role: role.to_pb(),
            job: job.unwrap_or_default().into(),
        }),
    }
}

impl Client {
    /// One `Auth` call on the leader, retried as every admin call is.
    async fn auth<Req, Resp, F, Fut>(&self, req: Req, call: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(AuthClient<Transport>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(crate::client::Route::Leader, AuthClient::new, req, call)
            .await
    }

    /// Gives `principal` `role` on `job` (`None` for admin, `Some("*")` for
    /// every job). `changed` is false if it held it already.
    pub async fn grant_role(
        &self,
        principal: &str,
        role: Role,
        job: Option<&str>,
    ) -> Result<pb::GrantResponse, ClientError> {
        let req = grant(principal, role, job);
        self.auth(req, |mut c, r| async move { c.grant_role(r).await })
            .await
    }

    /// Takes a grant back; `changed` is false if there was none.
    pub async fn revoke_role(
        &self,
        principal: &str,
        role: Role,
        job: Option<&str>,
    ) -> Result<pb::GrantResponse, ClientError> {
        let req = grant(principal, role, job);
        self.auth(req, |mut c, r| async move { c.revoke_role(r).await })
            .await
    }

    /// Grants and tokens of `principal`, or of everyone for `None`.
    pub async fn list_grants(
        &self,
        principal: Option<&str>,
    ) -> Result<pb::ListGrantsResponse, ClientError> {
        let req = pb::ListGrantsRequest {
            principal: principal.unwrap_or_default().into(),
        };
        self.auth(req, |mut c, r| async move { c.list_grants(r).await })
            .await
    }

    /// A new bearer token for `principal`: the secret is in this answer
    /// only.
    pub async fn create_token(
        &self,
        principal: &str,
    ) -> Result<pb::CreateTokenResponse, ClientError> {
        let req = pb::CreateTokenRequest {
            principal: principal.into(),
        };
        self.auth(req, |mut c, r| async move { c.create_token(r).await })
            .await
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<pb::GrantResponse, ClientError> {
        let req = pb::RevokeTokenRequest {
            token_id: token_id.into(),
        };
        self.auth(req, |mut c, r| async move { c.revoke_token(r).await })
            .await
    }

    /// Who the cluster takes this client for, and its grants.
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse, ClientError> {
        self.auth(pb::WhoAmIRequest {}, |mut c, r| async move {
            c.who_am_i(r).await
        })
        .await
    }
}
