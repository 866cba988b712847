//! `cube managers`: every manager process that answers on `cube.managers` — the leader, its
//! epoch, and the standbys — as a table or JSON.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use cube_shared::subjects::MANAGERS;
use cube_shared::{ManagerInfo, ManagerRole};

use super::{cube, explain};
use crate::output::{age, print_json, table, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct ManagersArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// How long to gather answers: every manager answers for itself, a standby as promptly
    /// as the leader.
    #[arg(long, default_value = "500ms", value_parser = crate::duration)]
    pub wait: Duration,
}

pub async fn managers(args: ManagersArgs) -> Result<()> {
    let cube = cube(&args.nats).await?;
    let managers = cube.managers(args.wait).await.map_err(explain)?;
    if args.output.json() {
        print_json(&managers)?;
    } else if !managers.is_empty() {
        table(
            &["ROLE", "EPOCH", "ID", "HOST", "PID", "SINCE", "TERMS"],
            &rows(&managers),
        );
    }
    if managers.is_empty() {
        bail!(
            "no manager answered on {MANAGERS} within {:?} — is `cube manager` (or `cube dev`) running against this NATS server? (a slow link may need a longer --wait)",
            args.wait
        );
    }
    if !managers.iter().any(|m| m.role == ManagerRole::Leader) {
        eprintln!(
            "no leader answered: the standbys take over once the lease expires (`cube manager --lease-ttl`)"
        );
    }
    Ok(())
}

fn rows(managers: &[ManagerInfo]) -> Vec<Vec<String>> {
    managers
        .iter()
        .map(|m| {
            vec![
                match m.role {
                    ManagerRole::Leader => "leader".to_string(),
                    ManagerRole::Standby => "standby".to_string(),
                },
                m.epoch.map_or("-".to_string(), |e| e.to_string()),
                m.id.to_string(),
                m.host.clone(),
                m.pid.to_string(),
                format!("{} ago", age(Some(m.since))),
                m.terms.to_string(),
            ]
        })
        .collect()
}
