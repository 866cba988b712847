//! `cube secret put|ls|rm`: values only the manager can read, which a task names in its
//! environment (`--secret-env VAR=SECRET`) and only the worker it is placed on receives.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use cube_shared::secret::{self, SecretValue, MAX_SECRET_BYTES};

use super::{cube, explain};
use crate::output::{age, print_json, table, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct SecretArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub action: SecretAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum SecretAction {
    /// Store a secret (or replace its value): read from standard input, or from --file. One
    /// trailing newline of standard input is dropped (`echo s3cret | cube secret put db`).
    Put {
        name: String,
        /// Read the value from this file, exactly as it is.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// List the secrets: names, sizes and when each changed, never a value.
    Ls {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove a secret: tasks that name it and are placed later fail, naming it.
    Rm { name: String },
}

pub async fn secret(args: SecretArgs) -> Result<()> {
    match args.action {
        SecretAction::Put { name, file } => {
            secret::check_name(&name).map_err(anyhow::Error::msg)?;
            let value = read_value(file)?;
            secret::check_value(&value).map_err(anyhow::Error::msg)?;
            let cube = cube(&args.nats).await?;
            cube.put_secret(&name, value).await.map_err(explain)?;
            println!("secret {name} stored");
        }
        SecretAction::Ls { output } => {
            let cube = cube(&args.nats).await?;
            let secrets = cube.secrets().await.map_err(explain)?;
            if output.json() {
                return print_json(&secrets);
            }
            let rows = secrets
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        format!("{} B", s.bytes),
                        format!("{} ago", age(Some(s.updated))),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAME", "SIZE", "UPDATED"], &rows);
        }
        SecretAction::Rm { name } => {
            let cube = cube(&args.nats).await?;
            cube.remove_secret(&name).await.map_err(explain)?;
            println!("secret {name} removed");
        }
    }
    Ok(())
}

/// The value, from `file` as it is, or from standard input without its trailing newline.
fn read_value(file: Option<PathBuf>) -> Result<SecretValue> {
    let mut bytes = Vec::new();
    match &file {
        Some(path) => {
            bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("the secret's value, then Ctrl-D:");
            }
            std::io::stdin()
                .take(MAX_SECRET_BYTES as u64 + 2)
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
        }
    }
    let Ok(text) = String::from_utf8(bytes) else {
        bail!("a secret's value must be UTF-8 text (it becomes an environment variable)");
    };
    Ok(SecretValue::new(text))
}
