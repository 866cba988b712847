//! Cube's processes as children of the test, so that a fault test can kill them for real:
//! the manager and the workers are the `cube` binary of this build (`cargo build --bins`),
//! each with its log in a temporary directory; a [`CreateEvents`] recorder counts the
//! containers Docker itself saw created (and die), per task id, independently of what Cube
//! believes. Gray faults (partitions through a proxy, pauses, clock steps) are in
//! [`gray`]'s methods; several managers (leader and standbys) in [`ha`]'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_nats::jetstream;
use cube_client::Cube;
use cube_shared::subjects::{heartbeat_for, API_NODES_LIST};
use cube_shared::{NodeState, State, Task, TaskListQuery, LABEL_WORKER};
use cube_worker::runtime::DockerRuntime;
use futures::StreamExt;
use uuid::Uuid;

use crate::clock::FakeClock;
use crate::cluster::Nats;
use crate::events::first;
pub use crate::events::CreateEvents;
pub use crate::proc::Proc;
use crate::proc::TAIL_LINES;
use crate::proxy::Proxy;
use crate::{cube_bin, remove_containers, tail, unique};
use crate::{in_state, NatsServer, Never, NATS_LOG};

mod gray;
mod ha;

pub use ha::{describe as describe_managers, LeaseView, Takeovers, GATHER};

/// The label (log name, and key of its proxy) of the manager's process.
const MANAGER: &str = "manager";

/// The label of a worker's process.
fn worker_label(name: &str) -> String {
    format!("worker-{name}")
}

/// NATS (in this process's test), and the manager and workers as `cube` child processes.
/// Dropping it kills them and removes every container labelled with a worker it started.
/// Their logs are kept (and their path printed) when the test fails, or always with
/// `CUBE_KEEP_LOGS=1`. They log at `RUST_LOG=info`, or at `CUBE_TEST_RUST_LOG` if it is set.
/// NATS is one [`NatsServer`], or a [`crate::NatsCluster`] ([`ProcCluster::on`]).
pub struct ProcCluster<N: Nats = NatsServer> {
    pub nats: N,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub docker: Arc<DockerRuntime>,
    /// Docker's own record of the containers created by this cluster's workers.
    pub creates: CreateEvents,
    manager: Option<Proc>,
    /// More managers ([`ProcCluster::spawn_manager`]): standbys, or leaders after a takeover.
    extra_managers: Vec<Proc>,
    workers: HashMap<String, Proc>,
    /// Every worker name started, for the sweep.
    worker_names: Vec<String>,
    /// Extra arguments for `cube manager` (e.g. a short `--node-ttl`).
    pub manager_args: Vec<String>,
    /// Extra arguments for every `cube worker` started from now on (e.g. `--metrics-addr`).
    pub worker_args: Vec<String>,
    logs: Option<tempfile::TempDir>,
    kept_logs: Option<PathBuf>,
    spawned: usize,
    /// Process label → the proxy it reaches NATS through (the others connect directly).
    proxies: HashMap<String, Proxy>,
    /// The manager's steppable wall clock, if it runs on one.
    manager_clock: Option<FakeClock>,
    /// Process label → the NATS URL it gets instead of every server's (see
    /// [`ProcCluster::connect_manager_to`]).
    nats_urls: HashMap<String, String>,
}

impl ProcCluster {
    /// NATS only; start the manager and workers yourself.
    pub async fn new() -> Result<ProcCluster> {
        // Fails now, with the remedy, if `cargo build --bins` has not been run.
        cube_bin();
        let (nats, client, docker) = crate::prepare().await?;
        ProcCluster::assemble(nats, client, docker)
    }

    /// A manager and `workers` workers (unique names), all ready.
    pub async fn start(workers: usize) -> Result<ProcCluster> {
        let mut cluster = ProcCluster::new().await?;
        cluster.start_manager().await?;
        for _ in 0..workers {
            cluster.add_worker().await?;
        }
        Ok(cluster)
    }
}

impl<N: Nats> ProcCluster<N> {
    /// On `nats` (a [`crate::NatsCluster`], say), which is ready; start the manager and
    /// workers yourself.
    pub async fn on(nats: N) -> Result<ProcCluster<N>> {
        cube_bin();
        crate::init_tracing();
        crate::ensure_image()?;
        let docker = Arc::new(
            DockerRuntime::connect()
                .await
                .context("Docker must be running")?,
        );
        let client = nats.connect().await?;
        ProcCluster::assemble(nats, client, docker)
    }

    fn assemble(
        nats: N,
        client: async_nats::Client,
        docker: Arc<DockerRuntime>,
    ) -> Result<ProcCluster<N>> {
        Ok(ProcCluster {
            js: jetstream::new(client.clone()),
            client,
            nats,
            docker,
            creates: CreateEvents::default(),
            manager: None,
            extra_managers: Vec::new(),
            workers: HashMap::new(),
            worker_names: Vec::new(),
            manager_args: Vec::new(),
            worker_args: Vec::new(),
            logs: Some(tempfile::Builder::new().prefix("cube-faults-").tempdir()?),
            kept_logs: None,
            spawned: 0,
            proxies: HashMap::new(),
            manager_clock: None,
            nats_urls: HashMap::new(),
        })
    }

    /// From its next start on, the manager connects to `url` (one server of a cluster, say)
    /// instead of every server.
    pub fn connect_manager_to(&mut self, url: &str) {
        self.nats_urls.insert(MANAGER.to_string(), url.to_string());
    }

    /// Starts a worker with a fresh unique name that connects to `url` (one server of a
    /// cluster, say) instead of every server, and waits until it is ready (see
    /// [`ProcCluster::start_worker`]).
    pub async fn add_worker_connected_to(&mut self, url: &str) -> Result<String> {
        let name = unique("w");
        self.nats_urls.insert(worker_label(&name), url.to_string());
        self.start_worker(&name).await?;
        Ok(name)
    }

    fn logs_dir(&self) -> PathBuf {
        match (&self.kept_logs, &self.logs) {
            (Some(kept), _) => kept.clone(),
            (None, Some(dir)) => dir.path().to_path_buf(),
            (None, None) => std::env::temp_dir(),
        }
    }

    fn command(&mut self, label: &str, args: &[&str]) -> (tokio::process::Command, PathBuf) {
        self.spawned += 1;
        let log = self
            .logs_dir()
            .join(format!("{:02}-{label}.log", self.spawned));
        let url = match (self.proxies.get(label), self.nats_urls.get(label)) {
            (Some(proxy), _) => proxy.url(),
            (None, Some(url)) => url.clone(),
            (None, None) => self.nats.url(),
        };
        let mut cmd = tokio::process::Command::new(cube_bin());
        cmd.args(args)
            .env("CUBE_NATS_URL", url)
            .env(
                "RUST_LOG",
                std::env::var("CUBE_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .env("NO_COLOR", "1");
        if let (MANAGER, Some(clock)) = (label, &self.manager_clock) {
            cmd.envs(clock.env());
        }
        (cmd, log)
    }

    /// Starts `cube manager` and waits until it answers queries.
    pub async fn start_manager(&mut self) -> Result<()> {
        if let Some(old) = self.manager.as_mut() {
            if old.exited().is_none() {
                bail!("a manager (pid {}) is already running", old.pid());
            }
        }
        // A manager restarted after a kill waits out its predecessor's lease: keep that short,
        // unless the test sets it.
        let mut args = vec!["manager".to_string()];
        if !self
            .manager_args
            .iter()
            .any(|a| a.starts_with("--lease-ttl"))
        {
            args.extend(["--lease-ttl".into(), "2s".into()]);
        }
        args.extend(self.manager_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cmd, log) = self.command(MANAGER, &args);
        self.manager = Some(Proc::spawn("the manager", cmd, log)?);
        let cube = self.cube().with_timeout(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            match cube.nodes().await {
                Ok(_) => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    bail!(
                    "the manager did not answer {API_NODES_LIST} within 30 s; its log ends:\n{}",
                    self.manager.as_ref().map(|m| m.log_tail(TAIL_LINES)).unwrap_or_default()
                )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGKILLs the manager.
    pub async fn kill_manager(&mut self) -> Result<()> {
        let mut manager = self.manager.take().context("no manager to kill")?;
        manager.kill().await?;
        Ok(())
    }

    /// SIGTERMs the manager and waits up to 10 s for it to exit.
    pub async fn term_manager(&mut self) -> Result<ExitStatus> {
        let mut manager = self.manager.take().context("no manager to stop")?;
        manager.term(Duration::from_secs(10)).await
    }

    pub fn manager_running(&mut self) -> bool {
        self.manager.as_mut().is_some_and(|m| m.exited().is_none())
    }

    /// Starts a worker with a fresh unique name; see [`ProcCluster::start_worker`].
    pub async fn add_worker(&mut self) -> Result<String> {
        let name = unique("w");
        self.start_worker(&name).await?;
        Ok(name)
    }

    /// Starts `cube worker --name NAME` (a new worker, or the same one again after a kill) and
    /// waits until it heartbeats and, if a manager runs, the manager lists it as ready.
    /// Docker's create events for the name are recorded from before the first start.
    pub async fn start_worker(&mut self, name: &str) -> Result<()> {
        if let Some(old) = self.workers.get_mut(name) {
            if old.exited().is_none() {
                bail!("worker {name} (pid {}) is already running", old.pid());
            }
        }
        if !self.worker_names.iter().any(|n| n == name) {
            self.worker_names.push(name.to_string());
            self.creates.watch(&self.docker, name).await?;
        }
        let mut heartbeats = self.client.subscribe(heartbeat_for(name)).await?;
        self.client.flush().await?;
        let mut args = vec![
            "worker",
            "--name",
            name,
            "--heartbeat-interval",
            "500ms",
            "--stop-grace",
            "2s",
        ];
        let extra = self.worker_args.clone();
        args.extend(extra.iter().map(String::as_str));
        let (cmd, log) = self.command(&worker_label(name), &args);
        self.workers.insert(
            name.to_string(),
            Proc::spawn(&format!("worker {name}"), cmd, log)?,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            match tokio::time::timeout(Duration::from_millis(250), heartbeats.next()).await {
                Ok(Some(_)) => break,
                Ok(None) => bail!("the heartbeat subscription for {name} ended"),
                Err(_) if tokio::time::Instant::now() >= deadline => bail!(
                    "worker {name} sent no heartbeat within 30 s; its log ends:\n{}",
                    self.workers[name].log_tail(TAIL_LINES)
                ),
                Err(_) => {}
            }
        }
        if self.manager_running() || self.spawned_managers_running() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                self.check_alive()?;
                let nodes = self.cube().nodes().await;
                let state = match &nodes {
                    Ok(nodes) => nodes.iter().find(|n| n.name == name).map(|n| n.state),
                    Err(_) => None,
                };
                if state == Some(NodeState::Ready) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("the manager does not list worker {name} as ready within 30 s: {state:?}, {nodes:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs a worker; its containers stay.
    pub async fn kill_worker(&mut self, name: &str) -> Result<()> {
        let mut worker = self
            .workers
            .remove(name)
            .with_context(|| format!("no worker {name} to kill"))?;
        worker.kill().await?;
        Ok(())
    }

    /// SIGTERMs a worker and waits up to 10 s for it to exit.
    pub async fn term_worker(&mut self, name: &str) -> Result<ExitStatus> {
        let mut worker = self
            .workers
            .remove(name)
            .with_context(|| format!("no worker {name} to stop"))?;
        worker.term(Duration::from_secs(10)).await
    }

    /// Every worker name this cluster has started.
    pub fn worker_names(&self) -> &[String] {
        &self.worker_names
    }

    /// Fails, with the end of its log, if a process this cluster runs (and did not kill) has
    /// exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let procs = self
            .manager
            .iter_mut()
            .chain(self.extra_managers.iter_mut())
            .chain(self.workers.values_mut());
        for proc in procs {
            if let Some(status) = proc.exited() {
                bail!(
                    "{} (pid {}) exited by itself: {status}; its log ends:\n{}",
                    proc.label(),
                    proc.pid(),
                    proc.log_tail(TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// Submits a task the way any NATS client can: a TaskEvent JSON on `tasks.events`.
    pub async fn submit(&self, task: Task) -> Result<Uuid> {
        let cube = self.cube().with_timeout(Duration::from_secs(10));
        Ok(cube.submit(task).await?.task.id)
    }

    /// Publishes `payload` on `tasks.events` (no `Nats-Msg-Id`: the server stores every copy)
    /// and waits for JetStream's acknowledgement.
    pub async fn publish_event(
        &self,
        payload: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck> {
        let ack = tokio::time::timeout(Duration::from_secs(10), async {
            self.js
                .publish(cube_shared::subjects::EVENTS, payload)
                .await?
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .context("JetStream did not acknowledge a submission within 10 s")??;
        Ok(ack)
    }

    /// The cluster's client, each call bounded by 5 s: a fault test asks often, and an
    /// answer that slow means something is wrong.
    pub fn cube(&self) -> Cube {
        Cube::new(self.client.clone()).with_timeout(Duration::from_secs(5))
    }

    /// The manager's view of one task (`cube.api.tasks.get`).
    pub async fn task(&self, id: Uuid) -> Result<Task> {
        Ok(self.cube().task(&id.to_string()).await?)
    }

    /// The manager's view of all tasks (`cube.api.tasks.list`).
    pub async fn tasks(&self) -> Result<HashMap<Uuid, Task>> {
        let query = TaskListQuery {
            state: None,
            limit: Some(1_000_000),
        };
        let list = self.cube().tasks(&query).await?;
        anyhow::ensure!(
            list.tasks.len() == list.total,
            "the task list is truncated: {} of {}",
            list.tasks.len(),
            list.total
        );
        Ok(list.tasks.into_iter().map(|t| (t.id, t)).collect())
    }

    /// Waits until the task is in `state`; fails at once if it has ended otherwise (see
    /// [`in_state`]), or if a process exits.
    pub async fn wait_state(&mut self, id: Uuid, state: State, within: Duration) -> Result<Task> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.check_alive()?;
            let last = match self.task(id).await.and_then(|t| in_state(t, state)) {
                Ok(task) => return Ok(task),
                Err(e) if e.downcast_ref::<Never>().is_some() => {
                    bail!("task {id} will not become {state}: {e:#}")
                }
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting until task {id} becomes {state}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every task of `tasks` ran (it has a container and a start time), exited 0 with no
    /// error, on one of this cluster's workers.
    pub fn ensure_ran_cleanly_here(&self, tasks: &HashMap<Uuid, Task>) -> Result<()> {
        let workers: HashSet<&str> = self.worker_names().iter().map(String::as_str).collect();
        for (id, t) in tasks {
            ensure!(
                t.start_time.is_some() && t.container_id.is_some(),
                "task {id} completed without having run: {t:?}"
            );
            ensure!(
                t.exit_code == Some(0) && t.error.is_none(),
                "task {id} did not exit cleanly: exit code {:?}, error {:?}",
                t.exit_code,
                t.error
            );
            ensure!(
                t.worker.as_deref().is_some_and(|w| workers.contains(w)),
                "task {id} ran on {:?}",
                t.worker
            );
        }
        Ok(())
    }

    /// Waits until every task of `ids` is in `state`, and returns them. Fails early if a
    /// process exits, or if the tasks not there yet have all been `completed` or `failed`
    /// (so nothing more will happen to them) for 10 s.
    pub async fn wait_all(
        &mut self,
        ids: &[Uuid],
        state: State,
        within: Duration,
    ) -> Result<HashMap<Uuid, Task>> {
        let start = tokio::time::Instant::now();
        let deadline = start + within;
        let mut stuck_since: Option<tokio::time::Instant> = None;
        loop {
            self.check_alive()?;
            let (listed, why) = match self.tasks().await {
                Ok(all) => {
                    let missing: Vec<Uuid> = ids
                        .iter()
                        .filter(|id| !all.contains_key(id))
                        .copied()
                        .collect();
                    let behind: Vec<&Task> = ids
                        .iter()
                        .filter_map(|id| all.get(id))
                        .filter(|t| t.state != state)
                        .collect();
                    if missing.is_empty() && behind.is_empty() {
                        return Ok(ids.iter().map(|id| (*id, all[id].clone())).collect());
                    }
                    let settled = missing.is_empty()
                        && behind
                            .iter()
                            .all(|t| matches!(t.state, State::Completed | State::Failed));
                    stuck_since = if settled {
                        stuck_since.or(Some(tokio::time::Instant::now()))
                    } else {
                        None
                    };
                    (true, summarize(ids.len(), state, &missing, &behind))
                }
                Err(e) => (false, format!("the task list is unavailable: {e:#}")),
            };
            let now = tokio::time::Instant::now();
            if listed && stuck_since.is_some_and(|s| now - s >= Duration::from_secs(10)) {
                bail!(
                    "after {:?}, the tasks that are not {state} have ended otherwise: {why}",
                    now - start
                );
            }
            if now >= deadline {
                bail!("timed out after {within:?} waiting until all tasks are {state}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Containers with label `key=value`, as Docker lists them (running or not).
    pub async fn containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        crate::containers(&self.docker, key, value).await
    }

    /// The end of every process's log (manager and workers, in the order they were started,
    /// then nats-server's).
    pub fn logs_tail(&self, lines: usize) -> String {
        let dir = self.logs_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        // nats-server's logs (copies kept with the others) come last.
        files.retain(|f| !is_nats_log(f));
        files.sort();
        let mut out = String::new();
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push_str(&format!("\n----- {name} (last {lines} lines) -----\n"));
            out.push_str(&tail(&f, lines));
            out.push('\n');
        }
        // Its start-up banner is long; the last lines say whether it had trouble.
        out.push_str(&self.nats.log_tail(lines.min(12)));
        out
    }

    /// Keeps the log directory after the test (it is deleted otherwise), with a copy of
    /// nats-server's log, and returns its path.
    pub fn keep_logs(&mut self) -> PathBuf {
        if let Some(dir) = self.logs.take() {
            self.kept_logs = Some(dir.keep());
        }
        let dir = self.logs_dir();
        self.nats.copy_logs(&dir);
        dir
    }

    /// Passes `result` through; an error gets the path of the (kept) logs and their ends.
    pub fn explain<T>(&mut self, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            let dir = self.keep_logs();
            anyhow!(
                "{e:#}\n\nlogs kept in {}{}",
                dir.display(),
                self.logs_tail(TAIL_LINES)
            )
        })
    }
}

/// A copy of a nats-server's log: `nats-server.log`, or `nats-server-n0.log` for a cluster's.
fn is_nats_log(f: &std::path::Path) -> bool {
    f.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .starts_with(NATS_LOG.trim_end_matches(".log"))
    })
}

fn summarize(total: usize, state: State, missing: &[Uuid], behind: &[&Task]) -> String {
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for t in behind {
        *by_state.entry(t.state.to_string()).or_default() += 1;
    }
    let examples: Vec<String> = behind
        .iter()
        .take(5)
        .map(|t| {
            format!(
                "{} {} on {:?} exit {:?} error {:?}",
                t.id, t.state, t.worker, t.exit_code, t.error
            )
        })
        .collect();
    format!(
        "{} of {total} are {state}; {} unknown to the manager {}; the others by state: \
         {by_state:?}; for example: {examples:?}",
        total - missing.len() - behind.len(),
        missing.len(),
        first(missing),
    )
}

impl<N: Nats> Drop for ProcCluster<N> {
    /// Kills the manager and workers, then removes every container of the workers it started.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = self.keep_logs();
            eprintln!(
                "logs kept in {}{}",
                dir.display(),
                self.logs_tail(TAIL_LINES)
            );
        } else if std::env::var_os("CUBE_KEEP_LOGS").is_some() {
            eprintln!("logs kept in {}", self.keep_logs().display());
        }
        if let Some(mut m) = self.manager.take() {
            m.kill_blocking();
        }
        for mut m in self.extra_managers.drain(..) {
            m.kill_blocking();
        }
        for (_, mut w) in self.workers.drain() {
            w.kill_blocking();
        }
        // A create the Docker engine received from a worker just before its death.
        std::thread::sleep(Duration::from_millis(300));
        for name in &self.worker_names {
            remove_containers(&format!("{LABEL_WORKER}={name}"));
        }
    }
}
