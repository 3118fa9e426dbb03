//! `streamshield auth ...`: grants of roles, bearer tokens, whoami.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use streamshield_client::{pb, role_name, Role};

use super::{emit, Args};

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Give a principal a role: admin (the cluster), writer or reader (of
    /// --job, or of every job with --job '*').
    Grant(GrantArgs),
    /// Take a grant back.
    Revoke(GrantArgs),
    /// Grants and tokens (of --principal, else everyone's).
    List {
        #[arg(long)]
        principal: Option<String>,
    },
    /// Bearer tokens, for clients that cannot present a certificate.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Who the cluster takes this client for, and its grants.
    Whoami,
}

#[derive(clap::Args, Debug)]
pub struct GrantArgs {
    /// A client certificate's common name, or a token's principal.
    #[arg(long)]
    pub principal: String,
    /// admin, writer or reader.
    #[arg(long)]
    pub role: Role,
    /// The job a writer or reader grant covers ("*": every job).
    #[arg(long)]
    pub job: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// A new token for a principal; its secret is printed this once.
    Create {
        #[arg(long)]
        principal: String,
    },
    /// Revoke a token by its id.
    Revoke { token_id: String },
}

fn grant_json(g: &pb::Grant) -> serde_json::Value {
    json!({"principal": g.principal, "role": role_name(g.role), "job": g.job})
}

fn grant_line(g: &pb::Grant) -> String {
    match g.job.as_str() {
        "" => format!("{} {}", g.principal, role_name(g.role)),
        job => format!("{} {} {}", g.principal, role_name(g.role), job),
    }
}

pub async fn run(args: &Args, cmd: &AuthCmd) -> anyhow::Result<ExitCode> {
    let client = args.client()?;
    match cmd {
        AuthCmd::Grant(g) | AuthCmd::Revoke(g) => {
            let granting = matches!(cmd, AuthCmd::Grant(_));
            let r = if granting {
                client
                    .grant_role(&g.principal, g.role, g.job.as_deref())
                    .await?
            } else {
                client
                    .revoke_role(&g.principal, g.role, g.job.as_deref())
                    .await?
            };
            emit(
                args.json,
                json!({"changed": r.changed, "index": r.index}),
                || match (granting, r.changed) {
                    (true, true) => format!("granted (index {})", r.index),
                    (true, false) => "already granted".into(),
                    (false, true) => format!("revoked (index {})", r.index),
                    (false, false) => "no such grant".into(),
                },
            );
        }
        AuthCmd::List { principal } => {
            let r = client.list_grants(principal.as_deref()).await?;
            emit(
                args.json,
                json!({
                    "grants": r.grants.iter().map(grant_json).collect::<Vec<_>>(),
                    "tokens": r.tokens.iter().map(|t| json!({
                        "token_id": t.token_id, "principal": t.principal,
                        "created_index": t.created_index,
                    })).collect::<Vec<_>>(),
                }),
                || {
                    let mut lines: Vec<String> = r.grants.iter().map(grant_line).collect();
                    lines.extend(
                        r.tokens
                            .iter()
                            .map(|t| format!("{} token {}", t.principal, t.token_id)),
                    );
                    if lines.is_empty() {
                        "no grants".into()
                    } else {
                        lines.join("\n")
                    }
                },
            );
        }
        AuthCmd::Token(TokenCmd::Create { principal }) => {
            let r = client.create_token(principal).await?;
            emit(
                args.json,
                json!({"token": r.token, "token_id": r.token_id}),
                || format!("{}\n(token id {}; shown this once)", r.token, r.token_id),
            );
        }
        AuthCmd::Token(TokenCmd::Revoke { token_id }) => {
            let r = client.revoke_token(token_id).await?;
            emit(args.json, json!({"changed": r.changed}), || {
                if r.changed {
                    "revoked"
                } else {
                    "no such token"
                }
                .into()
            });
        }
        AuthCmd::Whoami => {
            let r = client.who_am_i().await?;
            emit(
                args.json,
                json!({
                    "principal": r.principal, "authenticated_by": r.authenticated_by,
                    "superuser": r.superuser,
                    "grants": r.grants.iter().map(grant_json).collect::<Vec<_>>(),
                }),
                || {
                    let mut out = format!(
                        "{} (by {}{})",
                        if r.principal.is_empty() {
                            "anyone"
                        } else {
                            &r.principal
                        },
                        r.authenticated_by,
                        if r.superuser {
                            ", may do everything"
                        } else {
                            ""
                        }
                    );
                    for g in &r.grants {
                        out.push_str(&format!("\n  {}", grant_line(g)));
                    }
                    out
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
