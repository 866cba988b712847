//! `cube`: one binary for the whole orchestrator — a local dev cluster, the manager, a
//! worker, and the client commands.

mod client;
mod connect;
mod dev;
mod output;
mod serve;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use cube_shared::units::{parse_bytes, parse_duration};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cube",
    version,
    about = "A small container orchestrator: NATS for messages, Docker for containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a local cluster in one go: nats-server (JetStream), a manager and a worker.
    Dev(dev::DevArgs),
    /// Run the manager (control plane).
    Manager(serve::ManagerArgs),
    /// Run a worker (data plane): runs tasks as Docker containers.
    Worker(serve::WorkerArgs),
    /// Submit a task; prints its id.
    #[command(alias = "run")]
    Submit(client::SubmitArgs),
    /// Stop a task.
    Stop(client::StopArgs),
    /// Show tasks, or one task in detail.
    Status(client::StatusArgs),
    /// Show the workers' nodes.
    Nodes(client::NodesArgs),
    /// Show the journal of decisions (submitted, scheduled, rejected, failed, …).
    Events(client::EventsArgs),
}

/// How to reach NATS; every command takes these.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(
        long,
        env = "CUBE_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// How long to wait for the first connection.
    #[arg(long, env = "CUBE_NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, global = true)]
    pub nats_connect_timeout: Duration,
}

pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

pub fn bytes_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(args) => {
            init_tracing("info,async_nats=warn");
            dev::run(args, shutdown_on_signals()).await
        }
        Command::Manager(args) => {
            init_tracing("info,async_nats=warn");
            serve::manager(args, shutdown_on_signals()).await
        }
        Command::Worker(args) => {
            init_tracing("info,async_nats=warn");
            serve::worker(args, shutdown_on_signals()).await
        }
        Command::Submit(args) => {
            init_tracing("warn");
            client::submit(args).await
        }
        Command::Stop(args) => {
            init_tracing("warn");
            client::stop(args).await
        }
        Command::Status(args) => {
            init_tracing("warn");
            client::status(args).await
        }
        Command::Nodes(args) => {
            init_tracing("warn");
            client::nodes(args).await
        }
        Command::Events(args) => {
            init_tracing("warn");
            client::events(args).await
        }
    }
}
