//! The benchmarks' private cluster: nats-server (one, or a cluster on loopback, each with its
//! monitoring port) and `cube manager` processes, in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use cube_shared::subjects::*;
use cube_shared::wire::encode;
use cube_shared::{Node, NodeState};
use tokio::process::Child;

use super::{connect, cost, Common};
use crate::nats_process::{free_port, server_config, tail, terminate, NatsProcess};

/// A private cluster: nats-server (one, or several clustered) and manager processes.
pub struct Harness {
    dir: tempfile::TempDir,
    nats: Vec<NatsProcess>,
    /// Each server's monitoring port (`/jsz`, `/varz`), on loopback.
    monitor_ports: Vec<u16>,
    managers: Vec<Option<Child>>,
    spec: HarnessSpec,
    /// Passed to every manager besides what `spec` says.
    manager_args: Vec<String>,
    keep: bool,
    pub url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// What a [`Harness`] runs.
#[derive(Debug, Clone)]
pub struct HarnessSpec {
    pub scheduler: String,
    /// nats-servers: 1, or a cluster of several on loopback.
    pub servers: usize,
    /// `cube manager --replicas`.
    pub replicas: usize,
    /// `cube manager --lease-ttl`, if not the default.
    pub lease_ttl: Option<Duration>,
}

impl HarnessSpec {
    pub fn single(scheduler: &str) -> HarnessSpec {
        HarnessSpec {
            scheduler: scheduler.to_string(),
            servers: 1,
            replicas: 1,
            lease_ttl: None,
        }
    }
}

impl Harness {
    pub async fn start(common: &Common, scheduler: &str) -> Result<Harness> {
        Harness::start_with(common, HarnessSpec::single(scheduler)).await
    }

    /// The servers of `spec` and one manager, set up and leading.
    pub async fn start_with(common: &Common, spec: HarnessSpec) -> Result<Harness> {
        Harness::start_with_args(common, spec, Vec::new()).await
    }

    /// [`Harness::start_with`], each manager started with `manager_args` as well (e.g.
    /// `--keep-ended 30s`).
    pub async fn start_with_args(
        common: &Common,
        spec: HarnessSpec,
        manager_args: Vec<String>,
    ) -> Result<Harness> {
        let dir = tempfile::Builder::new().prefix("cube-bench-").tempdir()?;
        let ports = (0..spec.servers)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>>>()?;
        let route_ports = (0..spec.servers)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>>>()?;
        let monitor_ports = (0..spec.servers)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>>>()?;
        let mut nats = Vec::with_capacity(spec.servers);
        for (i, port) in ports.iter().enumerate() {
            let name = if spec.servers == 1 {
                "cube-bench".to_string()
            } else {
                format!("cube-bench-{}", i + 1)
            };
            let store = dir.path().join(&name).join("jetstream");
            std::fs::create_dir_all(&store)?;
            let config = dir.path().join(format!("{name}.conf"));
            let text = if spec.servers == 1 {
                server_config(*port, &name, &store, common.sync, &[])
            } else {
                let member = crate::nats_process::ClusterMember {
                    port: *port,
                    route_port: route_ports[i],
                    name: &name,
                    cluster: "cube-bench",
                    routes: &route_ports,
                };
                crate::nats_process::cluster_config(&member, &store, common.sync, &[])
            };
            let text = format!("{text}http: \"127.0.0.1:{}\"\n", monitor_ports[i]);
            std::fs::write(&config, text)?;
            let log = if spec.servers == 1 {
                dir.path().join("nats-server.log")
            } else {
                dir.path().join(format!("{name}.log"))
            };
            nats.push(NatsProcess::spawn(&common.nats_server, &config, &log)?);
        }
        for (server, port) in nats.iter_mut().zip(&ports) {
            server.wait_ready(*port).await?;
        }
        let url = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let client = connect(&url, "cube-bench").await?;
        let js = jetstream::new(client.clone());
        let mut harness = Harness {
            dir,
            nats,
            monitor_ports,
            managers: Vec::new(),
            spec,
            manager_args,
            keep: common.keep,
            url,
            client,
            js,
        };
        harness.start_manager().await?;
        Ok(harness)
    }

    /// nats-server's counters now (see [`cost`]).
    pub async fn counters(&self) -> Result<cost::Counters> {
        cost::Counters::read(&self.monitor_ports).await
    }

    /// `cube manager` number `index`, its log appended to that manager's.
    fn spawn_manager(&self, index: usize) -> Result<Child> {
        let exe = std::env::current_exe().context("finding the cube binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.manager_log(index))?;
        let mut args = vec![
            "manager".to_string(),
            "--nats-url".into(),
            self.url.clone(),
            "--scheduler".into(),
            self.spec.scheduler.clone(),
            "--replicas".into(),
            self.spec.replicas.to_string(),
        ];
        if let Some(ttl) = self.spec.lease_ttl {
            args.extend(["--lease-ttl".into(), format!("{}ms", ttl.as_millis())]);
        }
        args.extend(self.manager_args.iter().cloned());
        let child = tokio::process::Command::new(exe)
            .args(&args)
            .env_remove("CUBE_NATS_USER")
            .env_remove("CUBE_NATS_PASSWORD")
            .env_remove("CUBE_NATS_PASSWORD_FILE")
            .env_remove("CUBE_LEASE_TTL")
            .env_remove("CUBE_REPLICAS")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the manager")?;
        Ok(child)
    }

    /// Starts another `cube manager` (this binary) against the private servers, its log in
    /// the temporary directory (`manager.log`, then `manager-2.log`, …), and returns its
    /// index. The first is waited for until it has created its streams and buckets.
    pub async fn start_manager(&mut self) -> Result<usize> {
        let index = self.managers.len();
        let child = self.spawn_manager(index)?;
        self.managers.push(Some(child));
        if index > 0 {
            return Ok(index);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.js.get_key_value(ADMIN_DB).await.is_err()
            || self.js.get_stream(EVENTS_STREAM).await.is_err()
        {
            if let Some(status) = self.managers[0].as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!(
                    "the manager exited ({status}):\n{}",
                    self.manager_log_tail(10)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the manager did not set up JetStream within 60 s:\n{}\nnats-server: {}",
                    self.manager_log_tail(10),
                    self.nats
                        .first()
                        .map(|n| n.log_tail(10))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(index)
    }

    fn manager_log(&self, index: usize) -> PathBuf {
        match index {
            0 => self.dir.path().join("manager.log"),
            i => self.dir.path().join(format!("manager-{}.log", i + 1)),
        }
    }

    /// The first manager's pid, while it runs.
    pub fn manager_pid(&self) -> Option<u32> {
        self.managers
            .first()
            .and_then(|c| c.as_ref())
            .and_then(|c| c.id())
    }

    /// The first nats-server's pid, while it runs.
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.first().and_then(NatsProcess::pid)
    }

    /// The pid of manager `index`, while it runs.
    pub fn pid_of(&self, index: usize) -> Option<u32> {
        self.managers
            .get(index)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.id())
    }

    /// SIGKILLs manager `index` and reaps it.
    pub async fn kill_manager(&mut self, index: usize) -> Result<()> {
        let mut child = self.managers[index]
            .take()
            .with_context(|| format!("manager {index} is not running"))?;
        child.kill().await.context("killing a manager")?;
        Ok(())
    }

    /// Starts manager `index` again (after [`Harness::kill_manager`]).
    pub async fn restart_manager(&mut self, index: usize) -> Result<()> {
        anyhow::ensure!(self.managers[index].is_none(), "manager {index} runs");
        self.managers[index] = Some(self.spawn_manager(index)?);
        Ok(())
    }

    /// The last `lines` warnings and errors of every manager.
    pub fn manager_log_tail(&self, lines: usize) -> String {
        (0..self.managers.len().max(1))
            .map(|i| {
                tail(&self.manager_log(i), lines, |l| {
                    l.contains("WARN") || l.contains("ERROR")
                })
            })
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Nodes the manager considers ready, whose name starts with `prefix`.
    pub async fn ready_nodes(&self, prefix: &str) -> Result<usize> {
        let reply = self
            .client
            .request(API_NODES_LIST, bytes::Bytes::new())
            .await?;
        let nodes: cube_shared::ApiReply<Vec<Node>> = serde_json::from_slice(&reply.payload)?;
        let nodes = match nodes {
            cube_shared::ApiReply::Ok(n) => n,
            cube_shared::ApiReply::Error(e) => bail!("listing nodes: {e}"),
        };
        Ok(nodes
            .iter()
            .filter(|n| n.name.starts_with(prefix) && n.state == NodeState::Ready)
            .count())
    }

    /// How many tasks the manager counts as running.
    pub async fn running_tasks(&self) -> Result<usize> {
        self.tasks_in(cube_shared::State::Running).await
    }

    /// How many tasks the manager counts as pending, scheduled or running.
    pub async fn live_tasks(&self) -> Result<usize> {
        use cube_shared::State::*;
        let mut live = 0;
        for state in [Pending, Scheduled, Running] {
            live += self.tasks_in(state).await?;
        }
        Ok(live)
    }

    /// How many tasks the manager counts in `state`.
    pub async fn tasks_in(&self, state: cube_shared::State) -> Result<usize> {
        let query = cube_shared::TaskListQuery {
            state: Some(state),
            limit: Some(0),
        };
        let reply = self.client.request(API_TASKS_LIST, encode(&query)).await?;
        match serde_json::from_slice(&reply.payload)? {
            cube_shared::ApiReply::<cube_shared::TaskList>::Ok(list) => Ok(list.total),
            cube_shared::ApiReply::Error(e) => bail!("listing tasks: {e}"),
        }
    }

    /// Waits until `count` workers named `prefix…` are ready in the manager's eyes.
    pub async fn wait_for_nodes(&self, prefix: &str, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.ready_nodes(prefix).await.unwrap_or(0);
            if ready >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {ready} of {count} workers registered within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(mut self) {
        let managers: Vec<Child> = self.managers.iter_mut().filter_map(Option::take).collect();
        futures::future::join_all(
            managers
                .into_iter()
                .map(|mut m| async move { terminate(&mut m, Duration::from_secs(10)).await }),
        )
        .await;
        self.client.flush().await.ok();
        futures::future::join_all(self.nats.iter_mut().map(NatsProcess::stop)).await;
        if self.keep {
            let dir = self.dir.keep();
            eprintln!("kept the run's logs and store in {}", dir.display());
        }
    }
}
