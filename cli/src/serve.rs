//! `cube manager` and `cube worker`: thin wrappers over the library `run` functions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cube_worker::runtime::{DockerRuntime, Runtime, SimConfig, SimRuntime};
use tokio_util::sync::CancellationToken;

use crate::connect::connect_counting;
use crate::metrics;
use crate::{bytes_size, duration, NatsArgs};

#[derive(Args, Clone, Debug)]
pub struct ManagerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Placement algorithm.
    #[arg(long, env = "CUBE_SCHEDULER", value_enum, default_value_t = SchedulerKind::Spread)]
    pub scheduler: SchedulerKind,
    /// A worker silent for longer than this is unreachable: no new work for it, its tasks'
    /// state unknown. Silence is measured by this manager's monotonic clock, from when it
    /// received each heartbeat.
    #[arg(long, env = "CUBE_NODE_TTL", default_value = "10s", value_parser = duration)]
    pub node_ttl: Duration,
    /// After TTL + grace without a heartbeat a worker is down: its tasks whose restart policy
    /// allows it are placed elsewhere; the others wait for it (see --lost-after).
    #[arg(long, env = "CUBE_NODE_GRACE", default_value = "5s", value_parser = duration)]
    pub node_grace: Duration,
    /// How long a task whose restart policy forbids a restart waits for its silent node
    /// before it is declared failed (`cube nodes forget NAME` gives up at once).
    #[arg(long, env = "CUBE_LOST_AFTER", default_value = "10m", value_parser = duration)]
    pub lost_after: Duration,
    /// How long a task that ended for good (completed, or failed with no restart to come)
    /// is kept in the manager's memory and the Task DB; then `cube status ID` shows what the
    /// journal says of it. Its id may then be submitted again.
    #[arg(long, env = "CUBE_KEEP_ENDED", default_value = "24h", value_parser = duration)]
    pub keep_ended: Duration,
    /// The most tasks that ended for good kept at once: beyond it, the longest ended go
    /// first, whatever --keep-ended says.
    #[arg(long, env = "CUBE_KEEP_ENDED_MAX", default_value_t = 50_000)]
    pub keep_ended_max: usize,
    /// The most live tasks (pending, scheduled, running or waiting to restart; services'
    /// copies included): a submission beyond it is refused with the reason, on
    /// tasks.rejected and in the journal, until tasks end. Submissions are refused as well
    /// while the Task DB holds 80 % of its byte limit.
    #[arg(long, env = "CUBE_MAX_TASKS", default_value_t = cube_manager::rules::limits::DEFAULT_MAX_TASKS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tasks: usize,
    /// When more than this share of the nodes is silent at once, the manager takes it for
    /// its own loss of contact and declares no node down until they report again.
    #[arg(long, env = "CUBE_DISRUPTION_THRESHOLD", default_value_t = 0.55, value_parser = share)]
    pub disruption_threshold: f64,
    /// One manager acts at a time, holding a lease in the `cube-admin` bucket that it renews
    /// every third of this; another manager started against the same NATS waits, doing
    /// nothing, until the lease has gone unrenewed this long.
    #[arg(long, env = "CUBE_LEASE_TTL", default_value = "6s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// How many copies JetStream keeps of every Cube stream and bucket: 1 on a single
    /// nats-server, 3 on a cluster of three or more (each survives the loss of one server).
    /// Existing streams and buckets are changed to this on start, so restarting the
    /// managers with `--replicas 3` moves a single-server deployment onto a cluster.
    #[arg(long, env = "CUBE_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// Serve Prometheus metrics on http://ADDR/metrics; ADDR is IP:PORT, e.g. 0.0.0.0:9090.
    /// Off by default.
    #[arg(long, env = "CUBE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Container output kept per task (`cube logs`), e.g. 4m: the newest chunks of at most
    /// 4 KiB each, as many as fit.
    #[arg(long, env = "CUBE_LOGS_PER_TASK", default_value = "4m", value_parser = bytes_size)]
    pub logs_per_task: u64,
    /// Serve the HTTP API and dashboard on this address, e.g. 127.0.0.1:8080 (off by
    /// default). They speak to the cluster through NATS with the manager's credentials.
    #[arg(long, env = "CUBE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Host names, comma-separated, that HTTP requests may name besides IP addresses and
    /// localhost (e.g. the name of a proxy in front); others are refused (DNS rebinding).
    #[arg(long, env = "CUBE_HTTP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub http_allowed_hosts: Vec<String>,
    /// tokens: every HTTP request needs a token (`cube token create`); none: no
    /// authentication, allowed only on a loopback --http-addr.
    #[arg(long, env = "CUBE_HTTP_AUTH", value_enum, default_value_t = HttpAuth::Tokens)]
    pub http_auth: HttpAuth,
    /// How often the dashboard's charts take a sample (tasks by state, placements, each
    /// node's CPU and memory); they keep the last hour, in this process's memory only.
    #[arg(long, env = "CUBE_CHART_INTERVAL", default_value = "10s", value_parser = chart_interval)]
    pub chart_interval: Duration,
}

/// `--http-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpAuth {
    Tokens,
    None,
}

impl From<HttpAuth> for cube_web::AuthMode {
    fn from(a: HttpAuth) -> cube_web::AuthMode {
        match a {
            HttpAuth::Tokens => cube_web::AuthMode::Tokens,
            HttpAuth::None => cube_web::AuthMode::None,
        }
    }
}

impl ManagerArgs {
    pub fn config(&self) -> cube_manager::Config {
        cube_manager::Config {
            timings: cube_manager::rules::Timings {
                node_ttl: self.node_ttl,
                node_grace: self.node_grace,
                lost_after: self.lost_after,
                disruption_threshold: self.disruption_threshold,
                keep_ended: self.keep_ended,
                keep_ended_max: self.keep_ended_max,
                max_tasks: self.max_tasks,
                ..Default::default()
            },
            scheduler: self.scheduler.name().to_string(),
            logs_per_task: self.logs_per_task,
            lease_ttl: self.lease_ttl,
            replicas: self.replicas as usize,
            ..Default::default()
        }
    }
}

/// `--chart-interval`: a duration of at least a second.
fn chart_interval(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(format!("`{s}` is shorter than a second")),
    }
}

/// A share between 0 and 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{s}` is not a share between 0 and 1 (e.g. 0.55)")),
    }
}

/// The placement algorithms (see the README, "Choosing a scheduler").
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedulerKind {
    /// The least-loaded node that fits: tasks spread evenly (default).
    Spread,
    /// The fullest node that fits: as few nodes as possible.
    Binpack,
    /// The book's E-PVM: least marginal cost of memory, cpu and jobs on an exponential scale.
    Epvm,
    /// Each placement to the next node in name order (the book's first scheduler).
    RoundRobin,
    /// Publish to the shared tasks.pending queue: the first worker with room takes it.
    Queue,
}

impl SchedulerKind {
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Spread => "spread",
            SchedulerKind::Binpack => "binpack",
            SchedulerKind::Epvm => "epvm",
            SchedulerKind::RoundRobin => "round-robin",
            SchedulerKind::Queue => "queue",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RuntimeKind {
    /// Real containers through the Docker engine.
    Docker,
    /// Pretend containers, for benchmarks.
    Sim,
}

#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Unique worker name (letters, digits, - and _). Default: the host name.
    #[arg(long, env = "CUBE_WORKER_NAME")]
    pub name: Option<String>,
    /// Labels for placement constraints: k=v,k2=v2.
    #[arg(long, env = "CUBE_WORKER_LABELS", value_delimiter = ',', value_parser = label)]
    pub labels: Vec<(String, String)>,
    /// Cores offered to Cube (default: all).
    #[arg(long, env = "CUBE_WORKER_CPU")]
    pub cpu: Option<f64>,
    /// Memory offered to Cube, e.g. 4g (default: all).
    #[arg(long, env = "CUBE_WORKER_MEMORY", value_parser = bytes_size)]
    pub memory: Option<u64>,
    #[arg(
        long,
        env = "CUBE_WORKER_RUNTIME",
        value_enum,
        default_value = "docker"
    )]
    pub runtime: RuntimeKind,
    /// With `--runtime sim`: how long a simulated container takes to start.
    #[arg(long, env = "CUBE_SIM_START_LATENCY", default_value = "0s", value_parser = duration)]
    pub sim_start_latency: Duration,
    /// With `--runtime sim`: how long a simulated container runs before it exits with code 0
    /// (default: until stopped).
    #[arg(long, env = "CUBE_SIM_RUN_TIME", value_parser = duration)]
    pub sim_run_time: Option<Duration>,
    /// How long a container may take to stop before it is killed.
    #[arg(long, env = "CUBE_STOP_GRACE", default_value = "10s", value_parser = duration)]
    pub stop_grace: Duration,
    #[arg(long, env = "CUBE_HEARTBEAT_INTERVAL", default_value = "3s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// Let tasks run privileged.
    #[arg(long, env = "CUBE_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,
    /// Let tasks use the host's network namespace.
    #[arg(long, env = "CUBE_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// Let tasks use the host's PID namespace.
    #[arg(long, env = "CUBE_ALLOW_HOST_PID")]
    pub allow_host_pid: bool,
    /// Let tasks use the host's IPC namespace.
    #[arg(long, env = "CUBE_ALLOW_HOST_IPC")]
    pub allow_host_ipc: bool,
    /// Let tasks bind-mount host paths (not the Docker socket).
    #[arg(long, env = "CUBE_ALLOW_HOST_MOUNTS")]
    pub allow_host_mounts: bool,
    /// Let tasks mount the Docker socket: root on this host.
    #[arg(long, env = "CUBE_ALLOW_DOCKER_SOCKET")]
    pub allow_docker_socket: bool,
    /// Let tasks add Linux capabilities.
    #[arg(long, env = "CUBE_ALLOW_CAPABILITIES")]
    pub allow_capabilities: bool,
    /// Let tasks use host devices.
    #[arg(long, env = "CUBE_ALLOW_DEVICES")]
    pub allow_devices: bool,
    /// The host ports tasks may bind, e.g. 80,443,30000-32767 (default: no privileged port).
    #[arg(
        long,
        env = "CUBE_ALLOW_HOST_PORTS",
        value_delimiter = ',',
        default_value = "1024-65535"
    )]
    pub allow_host_ports: Vec<cube_worker::policy::PortRange>,
    /// The host addresses a task's port binding may name, e.g. 127.0.0.1 (default: none; a
    /// binding with no address is on all interfaces).
    #[arg(long, env = "CUBE_ALLOW_HOST_IPS", value_delimiter = ',')]
    pub allow_host_ips: Vec<std::net::IpAddr>,
    /// Let tasks share named volumes: `data:/data` is then the one volume `data` of this host
    /// for every task that names it. By default each task's volumes are its own (a service's
    /// copies share theirs).
    #[arg(long, env = "CUBE_ALLOW_SHARED_VOLUMES")]
    pub allow_shared_volumes: bool,
    /// Docker keeps each container's output in json-file logs of at most this size (0: the
    /// Docker daemon's own logging configuration, which may keep everything).
    #[arg(long, env = "CUBE_CONTAINER_LOG_MAX_SIZE", default_value = "10m", value_parser = bytes_size)]
    pub container_log_max_size: u64,
    /// How many json-file logs each container's output is rotated over (the oldest is
    /// dropped; see --container-log-max-size).
    #[arg(long, env = "CUBE_CONTAINER_LOG_MAX_FILES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub container_log_max_files: u32,
    /// Memory limit of a task that sets none (0: none).
    #[arg(long, env = "CUBE_DEFAULT_MEMORY", default_value = "512m", value_parser = bytes_size)]
    pub default_memory: u64,
    /// The most processes one task may run (0: no limit).
    #[arg(long, env = "CUBE_PIDS_LIMIT", default_value_t = 512)]
    pub pids_limit: i64,
    /// On SIGTERM, stop this worker's containers too (their restart policies then place
    /// them elsewhere). By default they keep running, for the next worker of this name.
    #[arg(long, env = "CUBE_STOP_TASKS_ON_EXIT")]
    pub stop_tasks_on_exit: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics; ADDR is IP:PORT, e.g. 0.0.0.0:9091.
    /// Off by default.
    #[arg(long, env = "CUBE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("label `{s}` is not key=value"))
}

impl WorkerArgs {
    pub fn config(&self) -> cube_worker::Config {
        let name = self.name.clone().unwrap_or_else(default_worker_name);
        let mut cfg = cube_worker::Config::new(name);
        cfg.labels = self.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        cfg.cpu = self.cpu;
        cfg.memory = self.memory;
        cfg.stop_grace = self.stop_grace;
        cfg.heartbeat_interval = self.heartbeat_interval;
        cfg.stop_tasks_on_exit = self.stop_tasks_on_exit;
        cfg.policy = cube_worker::policy::Policy {
            allow_privileged: self.allow_privileged,
            allow_host_network: self.allow_host_network,
            allow_host_pid: self.allow_host_pid,
            allow_host_ipc: self.allow_host_ipc,
            allow_host_mounts: self.allow_host_mounts,
            allow_docker_socket: self.allow_docker_socket,
            allow_capabilities: self.allow_capabilities,
            allow_devices: self.allow_devices,
            host_ports: self.allow_host_ports.clone(),
            host_ips: self.allow_host_ips.clone(),
            limits: cube_worker::policy::Limits {
                default_memory: self.default_memory,
                pids_limit: self.pids_limit,
                log_max_size: self.container_log_max_size,
                log_max_files: self.container_log_max_files,
                shared_volumes: self.allow_shared_volumes,
            },
        };
        cfg
    }

    /// The runtime for the worker `cfg` describes: Docker's applies its policy's limits and
    /// counts its failed API calls in its metrics.
    pub async fn runtime(&self, cfg: &cube_worker::Config) -> Result<Arc<dyn Runtime>> {
        Ok(match self.runtime {
            RuntimeKind::Docker => Arc::new(
                DockerRuntime::connect()
                    .await
                    .context("the Docker engine is needed to run containers; is dockerd running?")?
                    .with_limits(cfg.policy.limits)
                    .with_metrics(cfg.metrics.docker_errors.clone()),
            ),
            RuntimeKind::Sim => Arc::new(SimRuntime::new(SimConfig {
                start_latency: self.sim_start_latency,
                run_time: self.sim_run_time,
            })),
        })
    }
}

/// The host name, made into a valid worker name.
pub fn default_worker_name() -> String {
    let host = sysinfo_hostname();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "worker".to_string()
    } else {
        name
    }
}

fn sysinfo_hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn manager(args: ManagerArgs, shutdown: CancellationToken) -> Result<()> {
    // Bound first, so that a busy port (or an address that may not go without tokens) is
    // an error before anything starts.
    let web = match args.http_addr {
        Some(addr) => {
            cube_web::check_mode(args.http_auth.into(), addr)?;
            Some(
                cube_web::Server::bind(addr)
                    .await?
                    .allow_hosts(args.http_allowed_hosts.clone())
                    .chart_interval(args.chart_interval)
                    .auth(args.http_auth.into())?,
            )
        }
        None => None,
    };
    let cfg = args.config();
    let server =
        metrics::serve_if(args.metrics_addr, |r| cfg.metrics.register(r), &shutdown).await?;
    let reconnects = cfg.metrics.nats_reconnects.clone();
    let client = connect_counting(&args.nats, "cube-manager", Some(reconnects)).await?;
    let web = web.map(|server| spawn_web(server, client.clone(), shutdown.clone()));
    let ran = cube_manager::run(cfg, client, shutdown.clone())
        .await
        .context("manager");
    shutdown.cancel();
    stop_server(server, &shutdown).await;
    if let Some(web) = web {
        web.await.context("the HTTP server task")??;
    }
    ran
}

/// Runs the HTTP API and dashboard beside a manager; if it fails, everything stops.
pub fn spawn_web(
    server: cube_web::Server,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let result = server.run(client, shutdown.clone()).await;
        if result.is_err() {
            shutdown.cancel();
        }
        result.context("HTTP API and dashboard")
    })
}

pub async fn worker(args: WorkerArgs, shutdown: CancellationToken) -> Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let server =
        metrics::serve_if(args.metrics_addr, |r| cfg.metrics.register(r), &shutdown).await?;
    let runtime = args.runtime(&cfg).await?;
    let reconnects = cfg.metrics.nats_reconnects.clone();
    let name = format!("cube-worker-{}", cfg.name);
    let client = connect_counting(&args.nats, &name, Some(reconnects)).await?;
    let ran = cube_worker::run(cfg, client, runtime, shutdown.clone())
        .await
        .context("worker");
    stop_server(server, &shutdown).await;
    ran
}

/// Stops the metrics server (if any) with the process: it ends once `shutdown` fires.
async fn stop_server(server: Option<tokio::task::JoinHandle<()>>, shutdown: &CancellationToken) {
    if let Some(server) = server {
        // The process may end on an error, before anyone cancelled the token.
        shutdown.cancel();
        let _ = server.await;
    }
}
