//! `cube submit` (alias `cube run`): a task from flags, a task file, or both; prints its id,
//! and with `--wait` follows it until it runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use cube_shared::RestartPolicy;

use super::{cube, explain, task_spec::build_task};
use crate::{bytes_size, duration, NatsArgs};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// A task specification in JSON (the `task` object of the NATS contract); `-` reads
    /// standard input. Flags given as well override its fields.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// The Docker image to run.
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Cores to reserve, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory limit and reservation, e.g. 256m.
    #[arg(long, value_parser = bytes_size)]
    pub memory: Option<u64>,
    /// Disk to reserve, e.g. 1g.
    #[arg(long, value_parser = bytes_size)]
    pub disk: Option<u64>,
    /// Publish a port: HOST:CONTAINER[/proto], IP:HOST:CONTAINER[/proto], or CONTAINER to
    /// only expose it. Repeatable.
    #[arg(short = 'p', long = "port")]
    pub ports: Vec<String>,
    /// An environment variable, K=V. Repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// no, on-failure or always.
    #[arg(long)]
    pub restart: Option<RestartPolicy>,
    /// A mount, SOURCE:TARGET[:ro]: a volume name, or a host path if the worker allows it.
    /// Repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// bridge (default), none, or host (if the worker allows it).
    #[arg(long)]
    pub network: Option<String>,
    /// host: share the host's PID namespace (if the worker allows it).
    #[arg(long)]
    pub pid: Option<String>,
    /// host: share the host's IPC namespace (if the worker allows it).
    #[arg(long)]
    pub ipc: Option<String>,
    /// Run privileged (if the worker allows it).
    #[arg(long)]
    pub privileged: bool,
    /// Add a Linux capability (if the worker allows it). Repeatable.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// A host device, /dev/… (if the worker allows it). Repeatable.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Run only on workers whose labels match: key=value or key!=value. Repeatable.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// How many restarts before the task stays failed (default 3 for on-failure, no limit
    /// for always).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// `/path` (HTTP GET on the first exposed port) or a command run in the container.
    #[arg(long)]
    pub health_check: Option<String>,
    /// How often the health check runs [default: 5s].
    #[arg(long, value_parser = duration)]
    pub health_interval: Option<Duration>,
    /// How long one check may take [default: 2s].
    #[arg(long, value_parser = duration)]
    pub health_timeout: Option<Duration>,
    /// Failed checks in a row that make the task unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// How long a new task has to pass its first check [default: 30s].
    #[arg(long, value_parser = duration)]
    pub health_grace: Option<Duration>,
    /// Wait until the task runs (or ends): on a terminal, show its progress (pending and
    /// why, scheduled on a worker, running) on stderr. Exits non-zero if the task fails, is
    /// refused, or is not running within --wait-timeout, with the reason.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub wait_timeout: Duration,
    /// The command to run instead of the image's default, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
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
