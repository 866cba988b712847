//! Support for Cube's end-to-end tests: a real nats-server per test (free port, temporary
//! JetStream store, killed on drop), the local busybox image, and a cluster of a manager and
//! Docker workers running in the test's process ([`Cluster`]), or as `cube` child processes
//! that a fault test can kill ([`procs::ProcCluster`]). Every container a test creates carries
//! its workers' unique names, and is removed when the test's cluster is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cube_client::Cube;
use cube_shared::{State, Task};
use cube_worker::runtime::{DockerRuntime, Runtime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod cli;
pub mod clock;
pub mod cluster;
mod events;
pub mod history;
mod nats;
pub mod netns;
pub mod oracle;
mod proc;
pub mod procs;
pub mod proxy;
mod rng;
mod wait;
pub mod web;

pub use cli::{cube, cube_bin, cube_output, cube_output_with_env, cube_with_env, CubeOutput};
pub use cluster::{Nats, NatsCluster};
pub use nats::NatsServer;
pub(crate) use nats::NATS_LOG;
pub use rng::Rng;
pub use wait::{consistently, eventually, in_state, wait_drained, wait_idle, Never, WITHIN};

/// The image every test runs: busybox on `scratch`, built from the host's static busybox.
pub const IMAGE: &str = "cube-busybox:latest";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the test image unless it is already there.
pub fn ensure_image() -> Result<()> {
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running docker")?
        .success();
    if present {
        return Ok(());
    }
    let out = Command::new(root().join("images/busybox/build.sh"))
        .arg(IMAGE)
        .output()
        .context("building the busybox image")?;
    if !out.status.success() {
        bail!("building {IMAGE}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port nobody listens on now (the kernel's choice).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A short random suffix that keeps one test's workers and containers apart from another's.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// What every end-to-end test starts from: tracing, the test image, a Docker connection, and
/// a fresh nats-server with a client connected to it.
pub async fn prepare() -> Result<(NatsServer, async_nats::Client, Arc<DockerRuntime>)> {
    let nats = NatsServer::start().await?;
    let (client, docker) = prepare_on(&nats).await?;
    Ok((nats, client, docker))
}

/// [`prepare`], on a nats-server the test started: tracing, the test image, a Docker
/// connection, and a client connected to `nats`.
pub async fn prepare_on(nats: &NatsServer) -> Result<(async_nats::Client, Arc<DockerRuntime>)> {
    init_tracing();
    ensure_image()?;
    let docker = Arc::new(
        DockerRuntime::connect()
            .await
            .context("Docker must be running")?,
    );
    Ok((nats.connect().await?, docker))
}

/// NATS, a manager and Docker workers in this process.
pub struct Cluster {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub shutdown: CancellationToken,
    manager: Option<JoinHandle<()>>,
    workers: Vec<(String, CancellationToken, JoinHandle<()>)>,
    pub worker_names: Vec<String>,
    pub docker: Arc<DockerRuntime>,
}

impl Cluster {
    /// A cluster with `workers` workers offering the whole machine.
    pub async fn start(workers: usize) -> Result<Cluster> {
        let mut cluster = Cluster::empty().await?;
        cluster.start_manager(cube_manager::Config::default());
        for _ in 0..workers {
            cluster.add_worker(|_| {}).await?;
        }
        Ok(cluster)
    }

    /// A cluster with one worker that lets tasks bind ports on the host's loopback
    /// (`--allow-host-ips 127.0.0.1`): tests publish ports there, not on every interface.
    pub async fn start_allowing_loopback_ports() -> Result<Cluster> {
        let mut cluster = Cluster::empty().await?;
        cluster.start_manager(cube_manager::Config::default());
        cluster
            .add_worker(|c| c.policy.host_ips = vec![std::net::Ipv4Addr::LOCALHOST.into()])
            .await?;
        Ok(cluster)
    }

    /// NATS only: start the parts yourself.
    pub async fn empty() -> Result<Cluster> {
        let (nats, client, docker) = prepare().await?;
        Ok(Cluster {
            nats,
            client,
            shutdown: CancellationToken::new(),
            manager: None,
            workers: Vec::new(),
            worker_names: Vec::new(),
            docker,
        })
    }

    pub fn start_manager(&mut self, cfg: cube_manager::Config) {
        let (client, token) = (self.client.clone(), self.shutdown.child_token());
        self.manager = Some(tokio::spawn(async move {
            if let Err(e) = cube_manager::run(cfg, client, token).await {
                panic!("manager failed: {}", cube_bus::Chain(&e));
            }
        }));
    }

    /// Starts a worker with a unique name; `tweak` adjusts its configuration. Waits until
    /// the manager knows it.
    pub async fn add_worker(
        &mut self,
        tweak: impl FnOnce(&mut cube_worker::Config),
    ) -> Result<String> {
        let name = unique("w");
        let mut cfg = cube_worker::Config::new(&name);
        cfg.heartbeat_interval = Duration::from_millis(500);
        cfg.stop_grace = Duration::from_secs(2);
        tweak(&mut cfg);
        let token = self.shutdown.child_token();
        // The worker's limits apply to its containers, as `cube worker` gives them.
        let runtime: Arc<dyn Runtime> =
            Arc::new((*self.docker).clone().with_limits(cfg.policy.limits));
        let (client, t) = (self.client.clone(), token.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = cube_worker::run(cfg, client, runtime, t).await {
                panic!("worker failed: {e}");
            }
        });
        self.workers.push((name.clone(), token, handle));
        self.worker_names.push(name.clone());
        let cube = self.cube();
        let n = name.clone();
        eventually(Duration::from_secs(10), "the worker joins", move || {
            let (cube, n) = (cube.clone(), n.clone());
            async move {
                let nodes = cube.nodes().await?;
                nodes
                    .iter()
                    .find(|node| node.name == n)
                    .map(|_| ())
                    .ok_or_else(|| anyhow!("not yet"))
            }
        })
        .await?;
        Ok(name)
    }

    /// The cluster's client, as the CLI and the web API use it (every call bounded).
    pub fn cube(&self) -> Cube {
        Cube::new(self.client.clone())
    }

    /// Submits a task the way any NATS client can: a TaskEvent JSON on `tasks.events`.
    pub async fn submit(&self, task: Task) -> Result<Uuid> {
        Ok(self.cube().submit(task).await?.task.id)
    }

    pub async fn stop(&self, id: Uuid) -> Result<()> {
        self.cube().stop(id).await?;
        Ok(())
    }

    pub async fn task(&self, id: Uuid) -> Result<Task> {
        Ok(self.cube().task(&id.to_string()).await?)
    }

    /// Waits until the task is in `state`, failing early if it has ended otherwise (the
    /// client's [`Cube::wait`]).
    pub async fn wait_state(&self, id: Uuid, state: State, within: Duration) -> Result<Task> {
        Ok(self.cube().wait(id, state, within).await?)
    }

    /// Containers with label `key=value`, as Docker lists them (running or not).
    pub async fn containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        containers(&self.docker, key, value).await
    }

    /// Stops one worker (as SIGTERM would), leaving its containers.
    pub async fn stop_worker(&mut self, name: &str) {
        if let Some(pos) = self.workers.iter().position(|(n, _, _)| n == name) {
            let (_, token, handle) = self.workers.remove(pos);
            token.cancel();
            let _ = handle.await;
        }
    }
}

impl Drop for Cluster {
    /// Stops the manager and workers, waits (up to 20 s) for what they have in flight, so that
    /// no container is created after the sweep, then removes the workers' containers. The
    /// wait needs a multi-threaded runtime: tests use `#[tokio::test(flavor = "multi_thread")]`.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let mut handles: Vec<JoinHandle<()>> = self.workers.drain(..).map(|(_, _, h)| h).collect();
        handles.extend(self.manager.take());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                tokio::task::block_in_place(|| {
                    rt.block_on(async {
                        let all = futures::future::join_all(handles);
                        let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
                    })
                });
            }
        }
        for name in &self.worker_names {
            remove_containers(&format!("{}={name}", cube_shared::LABEL_WORKER));
        }
    }
}

/// Removes every container with the label, through the docker CLI (usable from `Drop`).
pub fn remove_containers(label: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

pub async fn containers(
    docker: &DockerRuntime,
    key: &str,
    value: &str,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters = std::collections::HashMap::from([("label", vec![format!("{key}={value}")])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.client().list_containers(Some(options)).await?)
}

/// A `cube.api.*` request with any body, through the client (bounded by its timeout).
pub async fn api<Q: serde::Serialize, T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    body: &Q,
) -> Result<T> {
    Ok(Cube::new(client.clone()).request(subject, body).await?)
}

/// A command that runs until it is stopped and exits 0 on SIGTERM (busybox `sleep` alone
/// ignores TERM as PID 1, which would make every stop wait out the grace period).
pub fn long_running() -> Vec<String> {
    ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]
        .map(String::from)
        .to_vec()
}

/// A task of the test image that runs until it is stopped.
pub fn sleeper() -> Task {
    let mut t = task(&[]);
    t.cmd = long_running();
    t
}

/// A task of the test image running `cmd`.
pub fn task(cmd: &[&str]) -> Task {
    let mut task = Task::new(IMAGE);
    task.cmd = cmd.iter().map(|s| s.to_string()).collect();
    task
}

/// A connection to `nats` as `user` (its role's permissions), and the server's errors (such
/// as permissions violations) as they arrive.
pub async fn connect_as(
    nats: &NatsServer,
    user: &cube_bus::auth::User,
) -> Result<(
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let options = cube_bus::Credentials::user(user.name(), &user.password)
        .options()
        .await?
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    Ok((options.connect(nats.url()).await?, rx))
}

/// Waits for the server to report a permissions violation naming `subject`.
pub async fn denied(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subject: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .map_err(|_| anyhow!("no permissions violation reported for {subject}"))?
            .ok_or_else(|| anyhow!("connection closed"))?;
        if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
            return Ok(());
        }
    }
}
