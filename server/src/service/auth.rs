//! The `Auth` API: grants of roles and bearer tokens, changed through the
//! Raft log so that every node agrees, and `WhoAmI`.

use std::sync::Arc;

use rand::RngCore;
use streamshield_proto::v1::{self as pb, auth_change, auth_server::Auth, command_response};
use tonic::{Request, Response, Status};

use super::authz::{token_hash, Action};
use super::NodeContext;
use crate::error::ServiceError;
use crate::state_machine::auth::{GrantOf, ANY_JOB};
use crate::validate;

/// Longest principal a grant or token may name; certificate common names
/// are at most 64 characters.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

pub struct AuthService {
    ctx: Arc<NodeContext>,
}

impl AuthService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    fn check_principal(&self, principal: &str) -> Result<(), ServiceError> {
        if principal.is_empty() || principal.contains('\0') {
            return Err(ServiceError::invalid(
                "principal",
                "must be non-empty, with no NUL",
            ));
        }
        if principal.len() > MAX_PRINCIPAL_BYTES {
            return Err(ServiceError::TooLarge {
                what: "principal".into(),
                size: principal.len(),
                limit: MAX_PRINCIPAL_BYTES,
            });
        }
        Ok(())
    }

    fn check_grant(&self, g: Option<pb::Grant>) -> Result<pb::Grant, ServiceError> {
        let g = g.ok_or_else(|| ServiceError::invalid("grant", "is required"))?;
        self.check_principal(&g.principal)?;
        if !g.job.is_empty() && g.job != ANY_JOB {
            validate::name("job", &g.job, &self.ctx.limits)?;
        }
        GrantOf::from_pb(&g).map_err(|reason| ServiceError::invalid("grant", reason))?;
        Ok(g)
    }

    /// An admin's GrantRole or RevokeRole.
    async fn grant_change(
        &self,
        request: Request<pb::GrantRequest>,
        change: fn(pb::Grant) -> auth_change::Change,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let g = self.check_grant(request.into_inner().grant)?;
        Ok(Response::new(self.change(change(g)).await?))
    }

    async fn change(&self, change: auth_change::Change) -> Result<pb::GrantResponse, Status> {
        let (index, resp) = self
            .ctx
            .propose_indexed(pb::Command {
                kind: Some(pb::command::Kind::Auth(pb::AuthChange {
                    change: Some(change),
                })),
            })
            .await?;
        match resp.kind {
            Some(command_response::Kind::AuthChanged(changed)) => {
                Ok(pb::GrantResponse { index, changed })
            }
            other => Err(Status::internal(format!(
                "an auth change was answered with {other:?}"
            ))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn grant_role(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let g = self.check_grant(request.into_inner().grant)?;
        Ok(Response::new(
            self.change(auth_change::Change::Grant(g)).await?,
        ))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.grant_change(request, auth_change::Change::Revoke)
            .await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let (_, ext, r) = request.into_parts();
        // Anyone may list their own; everyone's is an admin's to see.
        let who = self.ctx.identify(&ext)?;
        if who.principal != r.principal || r.principal.is_empty() {
            self.ctx.authorize(&ext, Action::Admin)?;
        }
        self.ctx.linearize().await?;
        let auth = self.ctx.sm.auth();
        let wanted = |p: &str| r.principal.is_empty() || p == r.principal;
        let grants = auth
            .grants()
            .filter(|g| wanted(&g.principal))
            .map(GrantOf::to_pb)
            .collect();
        let mut tokens: Vec<_> = auth
            .tokens()
            .filter(|t| wanted(&t.principal))
            .map(|t| pb::TokenInfo {
                token_id: t.token_id.clone(),
                principal: t.principal.clone(),
                created_index: t.created_index,
            })
            .collect();
        tokens.sort_by(|a, b| a.token_id.cmp(&b.token_id));
        Ok(Response::new(pb::ListGrantsResponse { grants, tokens }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let principal = request.into_inner().principal;
        self.check_principal(&principal)?;
        // 256 random bits: guessing one is out of reach. Only its hash is
        // replicated; the secret exists in this answer alone.
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("sst_{}", hex(&secret));
        let hash = token_hash(&token);
        let token_id = hex(&hash[..8]);
        self.change(auth_change::Change::AddToken(pb::TokenRecord {
            token_id: token_id.clone(),
            principal,
            hash,
            created_index: 0,
        }))
        .await?;
        Ok(Response::new(pb::CreateTokenResponse { token, token_id }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.ctx.authorize(request.extensions(), Action::Admin)?;
        let id = request.into_inner().token_id;
        if id.is_empty() || id.len() > 64 {
            return Err(ServiceError::invalid("token_id", "must be 1 to 64 bytes").into());
        }
        Ok(Response::new(
            self.change(auth_change::Change::RevokeToken(id)).await?,
        ))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.ctx.identify(request.extensions())?;
        let auth = self.ctx.sm.auth();
        let grants = auth.grants_of(&who.principal).map(GrantOf::to_pb).collect();
        Ok(Response::new(pb::WhoAmIResponse {
            principal: who.principal,
            authenticated_by: who.proof.as_str().into(),
            grants,
            superuser: who.superuser,
        }))
    }
}
