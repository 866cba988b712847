//! `cube submit` (alias `cube run`): a task from flags, a task file, or both; prints its id,
//! and with `--wait` follows it until it runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::task_spec::{build_task, TaskFlags};
use super::{cube, explain};
use crate::{duration, NatsArgs};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// A task specification in JSON (the `task` object of the NATS contract); `-` reads
    /// standard input. Flags given as well override its fields.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Wait until the task runs (or ends): on a terminal, show its progress (pending and
    /// why, scheduled on a worker, running) on stderr. Exits non-zero if the task fails, is
    /// refused, or is not running within --wait-timeout, with the reason.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub wait_timeout: Duration,
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let task = build_task(&args)?;
    let cube = cube(&args.nats).await?;
    // Subscribed before publishing: no decision about the task can slip past.
    let journal = match args.wait {
        true => Some(crate::wait::subscribe(cube.nats()).await?),
        false => None,
    };
    let event = cube.submit(task).await.map_err(explain)?;
    println!("{}", event.task.id);
    match journal {
        Some(journal) => crate::wait::wait(&cube, journal, event.task.id, args.wait_timeout).await,
        None => Ok(()),
    }
}
