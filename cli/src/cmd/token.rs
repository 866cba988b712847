//! `cube token`: the HTTP API's bearer tokens. `create` prints the token once; `ls` shows
//! names, roles and ages, never tokens or hashes; `revoke` ends one (the HTTP API refuses it
//! within a few seconds, see `cube_web::CACHE_TTL`).

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use cube_client::Error;
use cube_shared::token::TokenRole;

use super::{cube, explain};
use crate::output::{age, print_json, table, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token for the HTTP API and dashboard; prints it once (keep it: only its hash
    /// is stored).
    Create {
        /// read: GET routes and live updates; submit: also submit and stop tasks and
        /// change services; admin: everything, including tokens.
        #[arg(long, value_parser = role)]
        role: TokenRole,
        /// A unique name (default: ROLE-ID).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a token by name or id: the HTTP API refuses it within 5 seconds.
    Revoke {
        /// The token's name or id (`cube token ls`).
        token: String,
    },
    /// List the tokens: id, name, role, age (never the tokens themselves).
    #[command(alias = "list")]
    Ls,
}

fn role(s: &str) -> Result<TokenRole, String> {
    s.parse()
}

/// The manager's refusal as it is (a taken name, no such token), the rest explained.
fn refusal(e: Error) -> anyhow::Error {
    match e {
        Error::Manager(m) => anyhow!(m),
        other => explain(other),
    }
}

pub async fn token(args: TokenArgs) -> Result<()> {
    let cube = cube(&args.nats).await?;
    match args.action {
        TokenAction::Create { role, name } => {
            let created = cube.create_token(role, name).await.map_err(refusal)?;
            if args.output.json() {
                return print_json(&created);
            }
            eprintln!(
                "token `{}` ({}) made; it is shown only now:",
                created.info.name, created.info.role
            );
            println!("{}", created.token);
        }
        TokenAction::Revoke { token } => {
            let info = cube.revoke_token(&token).await.map_err(refusal)?;
            if args.output.json() {
                return print_json(&info);
            }
            println!(
                "token `{}` ({}) revoked; the HTTP API refuses it within {} s",
                info.name,
                info.id,
                cube_web::CACHE_TTL.as_secs()
            );
        }
        TokenAction::Ls => {
            let tokens = cube.tokens().await.map_err(refusal)?;
            if args.output.json() {
                return print_json(&tokens);
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.to_string(),
                        format!("{} ago", age(Some(t.created))),
                    ]
                })
                .collect();
            table(&["ID", "NAME", "ROLE", "CREATED"], &rows);
        }
    }
    Ok(())
}
