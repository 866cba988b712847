//! `cube nodes`: the workers' nodes as a table or JSON; `drain` and `undrain` one.

use anyhow::Result;
use clap::Args;
use cube_shared::units::format_bytes;

use super::{cube, explain};
use crate::output::{age, print_json, table, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodesAction {
    /// No new work for the node; its tasks move elsewhere (each new copy starts before the
    /// old one stops).
    Drain { name: String },
    /// The node takes work again.
    Undrain { name: String },
    /// Give up on a silent node that will not come back: its tasks are lost now and
    /// restarted elsewhere per their policy (tasks that may not restart fail). Refused for a
    /// node that is heard from.
    Forget { name: String },
}

pub async fn nodes(args: NodesArgs) -> Result<()> {
    let cube = cube(&args.nats).await?;
    if let Some(action) = &args.action {
        let (name, drain) = match action {
            NodesAction::Drain { name } => (name, true),
            NodesAction::Undrain { name } => (name, false),
            NodesAction::Forget { name } => {
                cube.forget(name).await.map_err(explain)?;
                println!("{name} is forgotten; its tasks were restarted elsewhere or failed");
                return Ok(());
            }
        };
        let node = cube.drain(name, drain).await.map_err(explain)?;
        if args.output.json() {
            return print_json(&node);
        }
        println!("{} is {}", node.name, node.state);
        return Ok(());
    }
    let nodes = cube.nodes().await.map_err(explain)?;
    if args.output.json() {
        return print_json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.to_string(),
                format!(
                    "{:.1}/{} ({:.0}% busy)",
                    n.cpu_allocated,
                    n.cores,
                    n.cpu_usage * 100.0
                ),
                format!(
                    "{}/{}",
                    format_bytes(n.memory_allocated),
                    format_bytes(n.memory)
                ),
                format!(
                    "{}/{}",
                    format_bytes(n.disk_allocated),
                    format_bytes(n.disk)
                ),
                n.task_count.to_string(),
                format!("{} ago", age(Some(n.last_heartbeat))),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "CPU",
            "MEMORY",
            "DISK",
            "TASKS",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(())
}
