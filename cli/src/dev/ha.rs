//! `cube dev --ha`: a control plane that survives the loss of a machine, on one machine —
//! three nats-servers clustered on loopback (every stream and bucket with three replicas),
//! two managers (one leads, one stands by) and a worker, each its own process so that any of
//! them can be killed to watch the rest carry on.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cube_bus::auth::{Role, User};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{fresh_users, write_private, DevArgs};
use crate::connect::connect;
use crate::nats_process::{cluster_config, terminate, ClusterMember, NatsProcess, Sync};
use crate::NatsArgs;

/// How many nats-servers, and managers.
const SERVERS: u16 = 3;
const MANAGERS: usize = 2;

/// A killed manager is started again (as a standby) after this, if it had run this long.
const RESTART_AFTER: Duration = Duration::from_secs(3);
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(5);

/// A `cube manager` or `cube worker` child process of this binary.
struct Member {
    label: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    started: Instant,
    /// When it exited by itself (killed, say), if it has.
    down_since: Option<Instant>,
}

impl Member {
    fn new(label: &str, args: Vec<String>, env: Vec<(String, String)>, dir: &Path) -> Member {
        Member {
            label: label.to_string(),
            args,
            env,
            log: dir.join(format!("{label}.log")),
            child: None,
            started: Instant::now(),
            down_since: None,
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("finding the cube binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.label))?;
        info!(pid = child.id().unwrap_or(0), log = %self.log.display(), "{} started", self.label);
        self.child = Some(child);
        self.started = Instant::now();
        self.down_since = None;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Its exit status if it has exited since the last look.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.down_since = Some(Instant::now());
        Some(status)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(8)).await;
        }
    }
}

/// Runs the HA dev cluster until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<()> {
    let dir = args.data_dir.join("ha");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ports: Vec<u16> = (0..SERVERS).map(|i| args.port + i).collect();
    let route_ports: Vec<u16> = (0..SERVERS).map(|i| args.route_port + i).collect();
    for &p in ports.iter().chain(&route_ports) {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!("port {p} on 127.0.0.1 is taken: `cube dev --ha` needs client ports {}-{} and route ports {}-{} (choose others with --port and --route-port)",
                ports[0], ports[ports.len() - 1], route_ports[0], route_ports[route_ports.len() - 1]);
        }
    }
    let users = fresh_users(&args);
    let client_auth = args.data_dir.join("client.auth");
    let _ = std::fs::remove_file(&client_auth);
    if let Some(client) = users.iter().find(|u| u.role == Role::Client) {
        write_private(&client_auth, &format!("client:{}\n", client.password))?;
    }

    let mut servers = Vec::new();
    for (i, (&port, &route_port)) in ports.iter().zip(&route_ports).enumerate() {
        let name = format!("cube-ha-{}", i + 1);
        let store = dir.join(&name).join("jetstream");
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        let member = ClusterMember {
            port,
            route_port,
            name: &name,
            cluster: "cube-dev-ha",
            routes: &route_ports,
        };
        let config = dir.join(format!("{name}.conf"));
        write_private(
            &config,
            &cluster_config(&member, &store, Sync::Always, &users),
        )?;
        let log = dir.join(format!("{name}.log"));
        servers.push((
            name,
            port,
            NatsProcess::spawn(&args.nats_server, &config, &log)?,
        ));
    }
    for (name, port, server) in &mut servers {
        server
            .wait_ready(*port)
            .await
            .with_context(|| format!("nats-server {name}"))?;
    }
    let url = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let password = |role: &Role| {
        users
            .iter()
            .find(|u| &u.role == role)
            .map(|u| u.password.clone())
    };
    let env_for = |role: Role| {
        let mut env = vec![("CUBE_NATS_URL".to_string(), url.clone())];
        if let Some(p) = password(&role) {
            let user = User {
                role,
                password: p.clone(),
            };
            env.push(("CUBE_NATS_USER".into(), user.name().to_string()));
            env.push(("CUBE_NATS_PASSWORD".into(), p));
        }
        env.push(("RUST_LOG".into(), "info,async_nats=warn".into()));
        env
    };

    let lease_ttl = format!("{}ms", args.lease_ttl.as_millis());
    let mut members = Vec::new();
    for i in 1..=MANAGERS {
        members.push(Member::new(
            &format!("manager-{i}"),
            vec![
                "manager".into(),
                "--replicas".into(),
                SERVERS.to_string(),
                "--lease-ttl".into(),
                lease_ttl.clone(),
                "--scheduler".into(),
                args.scheduler.name().into(),
            ],
            env_for(Role::Manager),
            &dir,
        ));
    }
    members.push(Member::new(
        "worker",
        vec!["worker".into(), "--name".into(), args.worker_name.clone()],
        env_for(Role::Worker(args.worker_name.clone())),
        &dir,
    ));

    let result = supervise(
        &args,
        &url,
        &users,
        &client_auth,
        &mut servers,
        &mut members,
        &shutdown,
    )
    .await;

    // Managers first (each releases the lease if it holds it), with the worker; then NATS.
    futures::future::join_all(members.iter_mut().map(Member::stop)).await;
    futures::future::join_all(servers.iter_mut().map(|(_, _, s)| s.stop())).await;
    let _ = std::fs::remove_file(&client_auth);
    info!(
        "the HA dev cluster is stopped; its stores and logs stay in {}",
        dir.display()
    );
    result
}

/// Starts the managers and the worker, tells how to watch a failover, and keeps the
/// managers running (a killed one comes back as a standby) until `shutdown`.
async fn supervise(
    args: &DevArgs,
    url: &str,
    users: &[User],
    client_auth: &Path,
    servers: &mut [(String, u16, NatsProcess)],
    members: &mut [Member],
    shutdown: &CancellationToken,
) -> Result<()> {
    // The first manager first, so that it leads: the demo is easier to follow.
    members[0].spawn()?;
    let manager_password = users
        .iter()
        .find(|u| u.role == Role::Manager)
        .map(|u| cube_bus::Credentials::user(u.name(), &u.password))
        .unwrap_or_default();
    let client = connect(
        &NatsArgs::url(url.to_string(), Duration::from_secs(10), &manager_password),
        "cube-dev-ha",
    )
    .await?;
    let cube = cube_client::Cube::new(client.clone()).with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if let Some(status) = members[0].exited() {
            bail!(
                "manager-1 exited ({status}) before it led; its log: {}",
                members[0].log.display()
            );
        }
        if cube.nodes().await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "manager-1 did not lead within 60 s; its log: {}",
                members[0].log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in members.iter_mut().skip(1) {
        m.spawn()?;
    }
    let web = match args.http_addr {
        addr if !args.no_http => {
            let server = cube_web::Server::bind(addr)
                .await
                .context(
                    "the dashboard's address is taken: pick another with --http-addr, or --no-http",
                )?
                .allow_hosts(args.http_allowed_hosts.clone());
            let dashboard = format!("http://{}/", server.local_addr());
            // The first manager leads already: it answers for the token at once.
            super::announce_dashboard(&client, &dashboard, shutdown).await?;
            Some(crate::serve::spawn_web(
                server,
                client.clone(),
                shutdown.clone(),
            ))
        }
        _ => None,
    };

    let servers_text: Vec<String> = servers
        .iter()
        .map(|(name, port, s)| format!("{name} (port {port}, pid {})", s.pid().unwrap_or(0)))
        .collect();
    let managers_text: Vec<String> = members[..MANAGERS]
        .iter()
        .map(|m| format!("{} (pid {})", m.label, m.pid().unwrap_or(0)))
        .collect();
    let auth = if users.is_empty() {
        String::new()
    } else {
        format!(
            "\n  (NATS requires authentication: `cube` commands run from this directory use {})",
            client_auth.display()
        )
    };
    info!(
        "Cube HA dev cluster is up: nats-servers {}; managers {} with --replicas 3 and --lease-ttl {:?}; worker {}.\n\
         Watch a failover from another terminal in this directory:\n\
         \x20 export CUBE_NATS_URL={url}\n\
         \x20 cube managers                 # the leader, its epoch, the standby\n\
         \x20 kill -9 <the leader's PID>    # SIGKILL the leader\n\
         \x20 cube managers                 # within the lease TTL the standby leads, at a higher epoch\n\
         \x20 cube events | grep leader     # each takeover is in the journal\n\
         A killed manager is started again here as a standby. Ctrl-C stops everything.{auth}",
        servers_text.join(", "),
        managers_text.join(", "),
        args.lease_ttl,
        args.worker_name,
    );

    let mut reported = vec![false; servers.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for m in members.iter_mut() {
            if let Some(status) = m.exited() {
                let ran = m.started.elapsed();
                if ran >= RAN_LONG_ENOUGH {
                    warn!("{} exited ({status}) after {ran:.0?}; starting it again in {RESTART_AFTER:?}", m.label);
                } else {
                    warn!("{} exited ({status}) after only {ran:.0?}; not starting it again (its log: {})", m.label, m.log.display());
                    m.down_since = None;
                }
            }
            if m.child.is_none() && m.down_since.is_some_and(|t| t.elapsed() >= RESTART_AFTER) {
                m.spawn()?;
            }
        }
        for ((name, _, server), reported) in servers.iter_mut().zip(reported.iter_mut()) {
            if *reported {
                continue;
            }
            if let Some(status) = server.exited() {
                *reported = true;
                warn!("nats-server {name} exited ({status}); the cluster carries on with the others (its log: {})", server.log_path().display());
            }
        }
    }
    if let Some(web) = web {
        shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(5), web).await {
            Ok(Ok(Err(e))) => warn!(error = %format!("{e:#}"), "HTTP server"),
            Ok(_) => {}
            Err(_) => warn!("the HTTP server did not stop within 5 s"),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    Ok(())
}
